//! Restoring a replica that Litestream 0.5 wrote (its LTX files: `ltx/<level>/`, or
//! `<level as 4 hex>/` on S3), so that the
//! first pod after the switch gets its data back: the plan from one listing (the newest
//! snapshot, then the file that reaches furthest at each step, as Litestream's own restore
//! does), downloads, pages applied in transaction order, checks. Only reads the replica.

use super::TempFile;
use super::plan::Target;
use crate::error::{Error, Result};
use crate::format::ltx;
use crate::storage::{Listed, Replica};
use futures::StreamExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

/// Litestream's level of full snapshots.
const SNAPSHOT_LEVEL: u8 = 9;

/// One LTX object of the listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LtxFile {
    pub rel: String,
    pub level: u8,
    pub min: u64,
    pub max: u64,
    pub size: u64,
    /// The header's timestamp (its last transaction's), read only for a time target.
    pub ts_ms: Option<u64>,
}

/// The LTX files of a listing of the replica path; other names are not Litestream's and are skipped.
pub fn files(listing: &[Listed]) -> Vec<LtxFile> {
    let mut v: Vec<LtxFile> = listing
        .iter()
        .filter_map(|o| {
            let (level, min, max) = ltx::parse_name(&o.name)?;
            Some(LtxFile {
                rel: o.name.clone(),
                level,
                min,
                max,
                size: o.size,
                ts_ms: None,
            })
        })
        .collect();
    v.sort_by_key(|f| (f.level, f.min, f.max));
    v
}

/// What a restore applies, in order, and the transaction it ends at.
#[derive(Debug, Clone)]
pub struct LtxPlan {
    pub files: Vec<LtxFile>,
    pub txid: u64,
    /// Set only with `allow_older`: why this is an older state than asked.
    pub older: Option<String>,
}

fn when(ms: Option<u64>) -> String {
    ms.map_or("an unknown time".into(), crate::clock::rfc3339)
}

/// The plan for `target`: exactly that state, or an error saying what is missing and what
/// `allow_older` would restore. For `Target::Time` every file's `ts_ms` must be set.
pub fn plan(all: &[LtxFile], target: Target, allow_older: bool) -> Result<LtxPlan, String> {
    let eligible = |f: &LtxFile| match target {
        Target::Latest => true,
        Target::Txid(n) => f.max <= n,
        Target::Time(t) => f.ts_ms.is_some_and(|ts| ts <= t),
    };
    let mut chain: Vec<LtxFile> = Vec::new();
    let mut cur = 0;
    if let Some(s) = all
        .iter()
        .filter(|f| f.level == SNAPSHOT_LEVEL && f.min == 1 && eligible(f))
        .max_by_key(|f| f.max)
    {
        chain.push(s.clone());
        cur = s.max;
    }
    loop {
        let next = all
            .iter()
            .filter(|f| f.level < SNAPSHOT_LEVEL && eligible(f) && f.min <= cur + 1 && f.max > cur)
            .max_by_key(|f| (f.max, std::cmp::Reverse(f.min), f.level));
        let Some(f) = next else { break };
        chain.push(f.clone());
        cur = f.max;
    }
    let newest = all.iter().map(|f| f.max).max().unwrap_or(0);
    let oldest_ms = all
        .iter()
        .filter(|f| f.min == 1)
        .filter_map(|f| f.ts_ms)
        .min();
    let newest_ms = all
        .iter()
        .filter(|f| f.max == newest)
        .filter_map(|f| f.ts_ms)
        .max();
    if chain.is_empty() {
        return Err(match target {
            Target::Time(t) => format!(
                "{} is before the oldest state Litestream's replica holds ({}, to {})",
                when(Some(t)),
                when(oldest_ms),
                when(newest_ms)
            ),
            _ => format!(
                "Litestream's replica holds no snapshot (ltx/9/) and no file starting at \
                 transaction 1 (it holds {} LTX file(s) up to transaction {newest}); nothing \
                 can be restored from it",
                all.len()
            ),
        });
    }
    let end_ms = chain.last().and_then(|f| f.ts_ms);
    // The first file past the chain: a gap, or (for a target) the state after it.
    let beyond = all
        .iter()
        .filter(|f| f.max > cur)
        .min_by_key(|f| (f.min, f.max));
    let missing: Option<String> = match target {
        Target::Latest => beyond.map(|f| {
            format!(
                "the newest state (transaction {newest}) cannot be assembled: the files reach \
                 transaction {cur}, and the next one, {}, starts at {}",
                f.rel, f.min
            )
        }),
        Target::Txid(n) if cur == n => None,
        Target::Txid(n) if n > newest => Some(format!(
            "transaction {n} is past the newest one Litestream's replica holds, {newest}"
        )),
        Target::Txid(n) => Some(format!(
            "transaction {n} cannot be restored exactly: the files reach {cur}, and the next \
             one ({}) covers {}..{} as one step (Litestream compacted them)",
            beyond.map_or("none", |f| f.rel.as_str()),
            beyond.map_or(0, |f| f.min),
            beyond.map_or(0, |f| f.max)
        )),
        // Litestream's transaction IDs are syncs, not commits: what committed between the
        // sync at or before t and t itself is merged into the next sync's pages.
        Target::Time(t) => Some(format!(
            "Litestream records a state once per sync, not per commit: the last sync at or \
             before {} is transaction {cur} ({}); commits after it and by {} are merged into \
             {}",
            when(Some(t)),
            when(end_ms),
            when(Some(t)),
            beyond.map_or(
                "no later sync (the replica ends there)".to_string(),
                |f| format!("{}, replicated at {}", f.rel, when(f.ts_ms))
            )
        )),
    };
    let older = match missing {
        None => None,
        Some(why) if allow_older => Some(format!(
            "{why}; restoring transaction {cur} ({})",
            when(end_ms)
        )),
        Some(why) => {
            return Err(format!(
                "{why}. Nothing was restored; pass --allow-older to restore transaction {cur} \
                 ({}) instead",
                when(end_ms)
            ));
        }
    };
    Ok(LtxPlan {
        files: chain,
        txid: cur,
        older,
    })
}

/// Read each file's header timestamp (one ranged GET each), for a time target.
pub async fn read_times(
    replica: &Replica,
    files: &mut [LtxFile],
    parallelism: usize,
) -> Result<()> {
    let heads: Vec<Result<u64>> = futures::stream::iter(files.iter().map(|f| async move {
        let b = replica
            .get_range(&f.rel, 0..ltx::HEADER_SIZE as u64)
            .await?;
        ltx::parse_header(&b)
            .map(|h| h.timestamp_ms)
            .map_err(|reason| corrupt(replica, &f.rel, reason))
    }))
    .buffered(parallelism.max(1))
    .collect()
    .await;
    for (f, ts) in files.iter_mut().zip(heads) {
        f.ts_ms = Some(ts?);
    }
    Ok(())
}

fn corrupt(replica: &Replica, rel: &str, reason: String) -> Error {
    Error::Corrupt {
        object: replica.path(rel).to_string(),
        reason: format!("Litestream LTX file: {reason}"),
    }
}

/// What a restore did.
#[derive(Debug)]
pub struct LtxReport {
    pub txid: u64,
    pub commit_ms: u64,
    pub pages: u32,
    pub downloaded: u64,
    pub files: usize,
}

/// Download the plan's files (`parallelism` at a time), apply their pages in order into a
/// temporary file beside `output`, check (file checksums, the database checksum when the
/// files carry one, `integrity_check`), and move it into place.
pub async fn restore(
    replica: &Replica,
    plan: &LtxPlan,
    output: &Path,
    parallelism: usize,
    integrity_check: bool,
) -> Result<LtxReport> {
    let started = Instant::now();
    let tmp = TempFile::create(output)?;
    let mut downloads = futures::stream::iter(
        plan.files
            .iter()
            .map(|f| async move { Ok::<_, Error>((f, replica.get(&f.rel).await?)) }),
    )
    .buffered(parallelism.max(1));
    let (mut page_size, mut commit, mut last) = (0u32, 0u32, None);
    let mut downloaded = 0;
    while let Some(got) = downloads.next().await {
        let (f, bytes) = got?;
        downloaded += bytes.len() as u64;
        let l = ltx::parse(&bytes).map_err(|r| corrupt(replica, &f.rel, r))?;
        let h = &l.header;
        if (h.min_txid, h.max_txid) != (f.min, f.max) {
            return Err(corrupt(
                replica,
                &f.rel,
                format!("its header covers {}..{}", h.min_txid, h.max_txid),
            ));
        }
        if page_size != 0 && h.page_size != page_size {
            return Err(corrupt(
                replica,
                &f.rel,
                format!("page size {} after files of {page_size}", h.page_size),
            ));
        }
        page_size = h.page_size;
        let ps = page_size as u64;
        let file = tmp.file();
        if h.commit < commit {
            // A shrinking database (VACUUM): pages past the end must not come back later.
            file.set_len(h.commit as u64 * ps)
                .map_err(|e| Error::io(tmp.path(), e))?;
        }
        commit = h.commit;
        for (pgno, data) in l.pages.iter().filter(|(n, _)| *n <= commit) {
            file.write_all_at(data, (*pgno as u64 - 1) * ps)
                .map_err(|e| Error::io(tmp.path(), e))?;
        }
        last = Some((f.rel.clone(), l.header.clone(), l.post_apply));
    }
    let (rel, h, post_apply) = last.ok_or_else(|| Error::Replica {
        replica: replica.url().to_string(),
        reason: "the restore plan holds no LTX file".into(),
    })?;
    let len = commit as u64 * page_size as u64;
    tmp.file()
        .set_len(len)
        .map_err(|e| Error::io(tmp.path(), e))?;
    if h.has_checksums() && post_apply != 0 {
        let db = std::fs::read(tmp.path()).map_err(|e| Error::io(tmp.path(), e))?;
        let sum = ltx::database_checksum(&db, page_size);
        if sum != post_apply {
            return Err(corrupt(
                replica,
                &rel,
                format!(
                    "the restored database's checksum is {sum:016x}, the file says it must be \
                     {post_apply:016x}"
                ),
            ));
        }
    }
    tmp.finish(len, integrity_check, output)?;
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        "restored from LTX files"
    );
    Ok(LtxReport {
        txid: plan.txid,
        commit_ms: h.timestamp_ms,
        pages: commit,
        downloaded,
        files: plan.files.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(level: u8, min: u64, max: u64, ts: u64) -> LtxFile {
        LtxFile {
            rel: format!("ltx/{level}/{min:016x}-{max:016x}.ltx"),
            level,
            min,
            max,
            size: 1,
            ts_ms: Some(ts),
        }
    }

    fn txids(p: &LtxPlan) -> Vec<(u8, u64, u64)> {
        p.files.iter().map(|f| (f.level, f.min, f.max)).collect()
    }

    #[test]
    fn the_newest_snapshot_then_the_furthest_file_at_each_step() {
        let all = vec![
            f(9, 1, 5, 50),
            f(9, 1, 10, 100),
            f(1, 1, 10, 100),
            f(1, 11, 14, 140),
            f(0, 11, 11, 110),
            f(0, 12, 12, 120),
            f(0, 13, 13, 130),
            f(0, 14, 14, 140),
            f(0, 15, 15, 150),
        ];
        let p = plan(&all, Target::Latest, false).unwrap();
        assert_eq!(txids(&p), [(9, 1, 10), (1, 11, 14), (0, 15, 15)]);
        assert_eq!(p.txid, 15);
        let p = plan(&all, Target::Txid(12), false).unwrap();
        assert_eq!(txids(&p), [(9, 1, 10), (0, 11, 11), (0, 12, 12)]);
        // A time: the last sync at or before it, only as an older state (a sync merges the
        // commits since the one before).
        let e = plan(&all, Target::Time(125), false).unwrap_err();
        assert!(
            e.contains("once per sync") && e.contains("--allow-older"),
            "{e}"
        );
        let p = plan(&all, Target::Time(125), true).unwrap();
        assert_eq!(p.txid, 12);
        assert!(p.older.unwrap().contains("transaction 12"));
    }

    #[test]
    fn what_cannot_be_restored_exactly_is_refused_and_named() {
        let all = vec![f(9, 1, 10, 100), f(1, 11, 14, 140), f(0, 16, 16, 160)];
        // A gap: 15 is missing, so the newest state (16) cannot be assembled.
        let e = plan(&all, Target::Latest, false).unwrap_err();
        assert!(
            e.contains("reach transaction 14") && e.contains("starts at 16"),
            "{e}"
        );
        let p = plan(&all, Target::Latest, true).unwrap();
        assert_eq!(p.txid, 14);
        assert!(p.older.unwrap().contains("restoring transaction 14"));
        // Inside a compacted file.
        let e = plan(&all, Target::Txid(12), false).unwrap_err();
        assert!(e.contains("11..14"), "{e}");
        assert!(
            plan(&all, Target::Txid(99), false)
                .unwrap_err()
                .contains("past the newest")
        );
        assert!(
            plan(&all, Target::Time(50), false)
                .unwrap_err()
                .contains("before the oldest")
        );
        let e = plan(&[f(0, 3, 4, 1)], Target::Latest, false).unwrap_err();
        assert!(e.contains("no snapshot"), "{e}");
    }
}
