//! Retention for the Litestream backups left at a walship path after the switch
//! (`cleanup --include-litestream` only; the replicator never runs it): which may go
//! (`plan`, pure) and deleting them, then listing again to prove they are gone. Deletes
//! only names Litestream's parsers claim; walship's own objects are `plan`'s.

use crate::catalog::litestream::{self, Backup, Format};
use crate::error::{Error, Result};
use crate::storage::{Listed, Replica};
use serde::Serialize;
use std::collections::HashSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Keep,
    Delete,
}

/// What happens to one Litestream backup (a 0.3 generation, or 0.5's LTX files).
#[derive(Debug, Clone, Serialize)]
pub struct BackupPlan {
    pub format: Format,
    pub generation: String,
    pub action: Action,
    pub why: String,
    pub objects: usize,
    pub bytes: u64,
    pub last_written: String,
    #[serde(skip)]
    pub keys: Vec<String>,
}

/// What `--include-litestream` did (or would do) at one path.
#[derive(Debug, Clone, Serialize)]
pub struct LitestreamOutcome {
    pub backups: Vec<BackupPlan>,
    pub deleted_objects: usize,
    pub deleted_bytes: u64,
}

/// A backup goes only when both hold: walship keeps a restorable generation at the path
/// (so the path never ends with nothing to restore), and the store wrote none of the
/// backup's objects inside the window (so no state inside it is lost, and a Litestream
/// still writing there keeps its backup).
pub fn plan(backups: &[Backup], walship_restorable: bool, window_start_ms: u64) -> Vec<BackupPlan> {
    backups
        .iter()
        .map(|b| {
            let last = crate::clock::rfc3339(b.last_ms());
            let (action, why) = if !walship_restorable {
                (
                    Action::Keep,
                    "walship holds no restorable generation here yet: this is the only backup"
                        .to_string(),
                )
            } else if b.last_ms() >= window_start_ms {
                (
                    Action::Keep,
                    format!("written inside the retention window (last at {last})"),
                )
            } else {
                (
                    Action::Delete,
                    format!("last written {last}, before the retention window"),
                )
            };
            BackupPlan {
                format: b.format,
                generation: b.name.clone(),
                action,
                why,
                objects: b.objects.len(),
                bytes: b.bytes(),
                last_written: last,
                keys: b.objects.iter().map(|o| o.name.clone()).collect(),
            }
        })
        .collect()
}

/// Plan from one LIST of the path's root and, unless `dry_run`, delete. `walship_deleted`
/// is what walship's own retention deletes (or would) in this run: a generation it removes
/// does not count as restorable.
pub async fn apply(
    replica: &Replica,
    walship_deleted: &HashSet<String>,
    window_start_ms: u64,
    dry_run: bool,
) -> Result<LitestreamOutcome> {
    let listing = replica.list("").await?;
    let kept: Vec<Listed> = listing
        .iter()
        .filter(|o| !walship_deleted.contains(&o.name))
        .cloned()
        .collect();
    let restorable = crate::catalog::Catalog::of(&kept)
        .generations
        .values()
        .any(|g| g.restorable());
    let backups = plan(&litestream::backups(&listing), restorable, window_start_ms);
    let doomed: Vec<String> = backups
        .iter()
        .filter(|b| b.action == Action::Delete)
        .flat_map(|b| b.keys.iter().cloned())
        .collect();
    let deleted_bytes = backups
        .iter()
        .filter(|b| b.action == Action::Delete)
        .map(|b| b.bytes)
        .sum();
    if !dry_run && !doomed.is_empty() {
        replica.delete_many(&doomed).await?;
        let gone: HashSet<&str> = doomed.iter().map(String::as_str).collect();
        let after = replica.list("").await?;
        if let Some(o) = after.iter().find(|o| gone.contains(o.name.as_str())) {
            return Err(Error::Replica {
                replica: replica.url().to_string(),
                reason: format!(
                    "the store accepted the deletion of Litestream's objects but {} is still \
                     listed: it answered success without deleting",
                    o.name
                ),
            });
        }
    }
    Ok(LitestreamOutcome {
        deleted_objects: doomed.len(),
        deleted_bytes,
        backups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_goes_only_when_walship_holds_data_and_it_is_older_than_the_window() {
        let l = |name: &str, ms: u64| Listed {
            name: name.into(),
            size: 5,
            modified_ms: ms,
        };
        let listing = vec![
            l(
                "generations/00000000000000aa/snapshots/00000000.snapshot.lz4",
                100,
            ),
            l(
                "generations/00000000000000aa/wal/00000000_00000000.wal.lz4",
                200,
            ),
            l(
                "generations/00000000000000bb/snapshots/00000000.snapshot.lz4",
                900,
            ),
            l("ltx/9/0000000000000001-0000000000000004.ltx", 300),
            l("ltx/0/0000000000000005-0000000000000005.ltx", 1200),
        ];
        let b = litestream::backups(&listing);
        let actions = |p: &[BackupPlan]| p.iter().map(|b| b.action).collect::<Vec<_>>();
        // Window from 1000: the 0.3 generations (last written 200 and 900) go; the LTX
        // files were written at 1200, inside it.
        let p = plan(&b, true, 1000);
        assert_eq!(actions(&p), [Action::Delete, Action::Delete, Action::Keep]);
        assert_eq!(p[0].keys.len(), 2);
        assert!(
            p[2].why.contains("inside the retention window"),
            "{}",
            p[2].why
        );
        // Window from 500: only the one written at 200.
        assert_eq!(
            actions(&plan(&b, true, 500)),
            [Action::Delete, Action::Keep, Action::Keep]
        );
        // Without a restorable walship generation nothing goes, however old.
        let p = plan(&b, false, u64::MAX);
        assert_eq!(actions(&p), [Action::Keep; 3]);
        assert!(p[0].why.contains("only backup"), "{}", p[0].why);
    }
}
