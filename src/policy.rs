//! What retention keeps: the window every instant of which stays restorable, the tiers of
//! older restore points, and the live grace. Plain data and its parsing, read by `config`
//! and applied by `retention`; it knows nothing of replicas or plans.

use serde::Serialize;
use std::time::Duration;

/// Extra restore points kept beyond the window: the newest snapshot in each of the last
/// `n` buckets of that length that hold one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Tiers {
    #[serde(default)]
    pub hourly: u32,
    #[serde(default)]
    pub twelve_hourly: u32,
    #[serde(default)]
    pub daily: u32,
    #[serde(default)]
    pub weekly: u32,
}

impl Tiers {
    /// Bucket length and count for each tier that is set.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u32)> {
        const H: u64 = 3_600_000;
        [
            (H, self.hourly),
            (12 * H, self.twelve_hourly),
            (24 * H, self.daily),
            (7 * 24 * H, self.weekly),
        ]
        .into_iter()
        .filter(|&(_, n)| n > 0)
    }

    pub fn is_empty(&self) -> bool {
        self.buckets().next().is_none()
    }

    /// `hourly=24,daily=7` (the `--tiers` flag).
    pub fn parse(s: &str) -> Result<Tiers, String> {
        let mut t = Tiers::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("tier {part:?} is not NAME=COUNT"))?;
            let n: u32 = v
                .trim()
                .parse()
                .map_err(|_| format!("tier {k}: {v:?} is not a count"))?;
            match k.trim() {
                "hourly" => t.hourly = n,
                "twelve-hourly" => t.twelve_hourly = n,
                "daily" => t.daily = n,
                "weekly" => t.weekly = n,
                other => {
                    return Err(format!(
                        "unknown tier {other:?} (hourly, twelve-hourly, daily, weekly)"
                    ));
                }
            }
        }
        Ok(t)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// How far back every instant stays restorable.
    pub window: Duration,
    pub tiers: Tiers,
    /// A generation with a write (by its object names) this recent is live.
    pub live_grace: Duration,
}

pub const DEFAULT_LIVE_GRACE: Duration = Duration::from_secs(15 * 60);

impl Policy {
    pub fn new(window: Duration) -> Self {
        Policy {
            window,
            tiers: Tiers::default(),
            live_grace: DEFAULT_LIVE_GRACE,
        }
    }
}
