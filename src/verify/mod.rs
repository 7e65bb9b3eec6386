//! `walship verify`: prove a replica restorable. Restores its newest state into a scratch
//! directory (every CRC, SQLite's checksum chain, the position chain, `integrity_check`),
//! then decodes every other snapshot and segment of that generation, so a damaged older
//! restore point is found before someone needs it. Beside the live database it also
//! compares the restored copy with it at the same WAL position (`live.rs`). Above
//! `restore`, whose steps it reuses; never writes the live database or the replica. Any problem is
//! an error naming it.

pub mod live;

use crate::error::{Error, Result};
use crate::format::segment::Segment;
use crate::restore::plan::{self, Obj, Target};
use crate::restore::{Progress, RestoreOptions, apply_snapshot, restore_plan};
use crate::storage::Replica;
use crate::storage::get_retrying;
use crate::storage::layout::{self, GenerationId};
use futures::StreamExt;
use serde::Serialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub replica: String,
    pub generation: GenerationId,
    pub txid: u64,
    pub commit_ms: u64,
    pub pages: u32,
    /// Objects read and checked, and their bytes.
    pub objects: usize,
    pub bytes: u64,
    pub seconds: f64,
    /// The comparison with the live database, when one was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<live::LiveComparison>,
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How long to wait before verifying once more when the live database had moved past the
/// replica's newest state (the sidecar ships within its sync interval).
const LIVE_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// Verify; when an object named by the LIST vanishes before it is read (retention deleted
/// it meanwhile), start again from a fresh LIST. With `live`, also compare with the live
/// database at the same position, trying once more if it was not at that position.
pub async fn verify(
    replica: &Replica,
    generation: Option<&GenerationId>,
    scratch_parent: &Path,
    parallelism: usize,
    live: Option<&Path>,
) -> Result<VerifyReport> {
    let (mut attempt, mut live_attempt) = (1, 1);
    loop {
        match verify_once(replica, generation, scratch_parent, parallelism, live).await {
            Err(e) if e.is_not_found() && attempt < 3 => {
                tracing::warn!("{e}; it was deleted after the listing: verifying again");
                attempt += 1;
            }
            Ok(VerifyReport {
                live: Some(live::LiveComparison::NotCompared { reason }),
                ..
            }) if live_attempt < 2 => {
                tracing::info!("not compared with the live database ({reason}); trying again");
                live_attempt += 1;
                tokio::time::sleep(LIVE_RETRY_AFTER).await;
            }
            r => return r,
        }
    }
}

async fn verify_once(
    replica: &Replica,
    generation: Option<&GenerationId>,
    scratch_parent: &Path,
    parallelism: usize,
    live: Option<&Path>,
) -> Result<VerifyReport> {
    let started = Instant::now();
    let objects = replica.list(layout::GENERATIONS).await?;
    let mut gens = plan::group(&objects);
    // Damage anywhere on the way to the newest state (a missing segment, snapshot or
    // manifest) is an error: verify never falls back to an older state.
    let plan =
        crate::restore::plan_checked(replica, &mut gens, generation, Target::Latest, false).await?;
    let scratch = Scratch(scratch_parent.join(format!(
        "walship-verify-{}-{}",
        std::process::id(),
        plan.generation
    )));
    std::fs::create_dir_all(&scratch.0).map_err(|e| Error::io(&scratch.0, e))?;
    let used: HashSet<String> = std::iter::once(plan.snapshot.key.clone())
        .chain(plan.segments.iter().map(|s| s.key.clone()))
        .collect();
    let mut checked = used.len();
    let mut bytes = plan.bytes();
    let g = gens[&plan.generation].clone();
    let restored = scratch.0.join("verify.db");
    let report = restore_plan(
        replica,
        plan,
        &RestoreOptions {
            output: restored.clone(),
            parallelism,
            integrity_check: true,
            progress: false,
        },
        started,
    )
    .await?;
    let live = match (live, &report.end) {
        (Some(db), Some(end)) => Some(tokio::task::block_in_place(|| {
            live::compare(db, &restored, end)
        })?),
        _ => None,
    };
    // The rest of the generation: older snapshots (decoded into /dev/null: every chunk's
    // CRC and the payload CRC are checked as they stream, nothing is kept) and segments.
    let sink = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .map_err(|e| Error::io("/dev/null", e))?;
    // Objects retention deletes while this runs are skipped: they are no restore point
    // any more.
    for s in g.snapshots.iter().filter(|s| !used.contains(&s.key)) {
        let mut progress = Progress::new(false, 0);
        match apply_snapshot(replica, s, &sink, parallelism, &mut progress).await {
            Err(e) if e.is_not_found() => continue,
            r => r?,
        };
        checked += 1;
        bytes += s.size;
    }
    let rest: Vec<&Obj<layout::SegmentName>> = g
        .segments
        .iter()
        .filter(|s| !used.contains(&s.key))
        .collect();
    let mut segs = futures::stream::iter(rest)
        .map(|s| async move { (s, get_retrying(replica, &s.key, None).await) })
        .buffered(parallelism.max(1));
    while let Some((s, b)) = segs.next().await {
        let b = match b {
            Err(e) if e.is_not_found() => continue,
            b => b?,
        };
        let seg = Segment::decode(&b).map_err(|r| Error::corrupt(&s.key, r))?;
        if seg.meta.first_txid != s.name.first_txid || seg.meta.last_txid != s.name.last_txid {
            return Err(Error::corrupt(&s.key, "header does not match its name"));
        }
        checked += 1;
        bytes += b.len() as u64;
    }
    Ok(VerifyReport {
        replica: replica.url().to_string(),
        generation: report.plan.generation,
        txid: report.txid,
        commit_ms: report.commit_ms,
        pages: report.pages,
        objects: checked,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        live,
    })
}
