//! `pg-restore`: a base backup into an empty data directory, set up to recover from the
//! archive (`recovery.signal`, `restore_command` = `walship wal-fetch`, the latest
//! timeline, an optional `recovery_target_time`). Built in a temporary directory beside
//! the target and renamed into place, so a crash leaves no half-restored data directory.

mod wal;
use wal::check_wal;
pub use wal::{WalChecked, last_archived_xact_ms};

use super::backup::BackupManifest;
use crate::error::{Error, Result};
use crate::format::container;
use crate::pgformat::walname::WalFile;
use crate::pgformat::walrecords::LastXact;
use crate::storage::Replica;
use crate::storage::layout::{self, BackupName, GenerationId};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Options {
    /// Recover up to this Unix time in ms (`None`: to the end of the archive).
    pub target_ms: Option<u64>,
    /// The `restore_command` written into the restored cluster's configuration.
    pub restore_command: String,
    /// Restore this cluster's generation only (`None`: the newest cluster with a backup).
    pub generation: Option<GenerationId>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub generation: GenerationId,
    pub backup: BackupName,
    pub files: usize,
    pub bytes: u64,
    pub timelines: Vec<u32>,
    /// The target was after the archive's last transaction (at this Unix ms): restored to
    /// the newest state instead.
    pub newest_instead: Option<u64>,
    /// The WAL checked before handing over.
    pub wal: WalChecked,
}

pub use crate::catalog::Catalog;

/// The backup to start from: the newest backup started at or before the target, in the
/// newest cluster that has one (a cluster that replaced another here holds no instant
/// before its creation; retention keeps the older one's backups for such instants).
pub fn choose(c: &Catalog, target_ms: Option<u64>) -> Result<(GenerationId, BackupName), String> {
    choose_in(c, None, target_ms)
}

/// `choose` within one cluster's generation when `only` names it (the configured
/// cluster's, `--generation`, or the path's `cluster.json`): never another cluster's.
pub fn choose_in(
    c: &Catalog,
    only: Option<&GenerationId>,
    target_ms: Option<u64>,
) -> Result<(GenerationId, BackupName), String> {
    let with_backups: Vec<(&GenerationId, Vec<BackupName>)> = c
        .generations
        .iter()
        .map(|(id, g)| (id, g.complete_backups()))
        .filter(|(_, b)| !b.is_empty())
        .collect();
    if let Some(g) = only
        && !with_backups.iter().any(|(id, _)| *id == g)
    {
        let others: Vec<&str> = with_backups.iter().map(|(k, _)| k.as_str()).collect();
        return Err(format!(
            "generation {g} (the cluster to restore) has no base backup here{}",
            if others.is_empty() {
                String::new()
            } else {
                format!(
                    "; other clusters' generations with backups: {} (choose one with \
                     --generation)",
                    others.join(", ")
                )
            }
        ));
    }
    if with_backups.is_empty() {
        return Err(
            "no base backup in this replica: run `walship pg-backup` (or let the \
                    sidecar take one) first"
                .into(),
        );
    }
    c.backup_at_or_before(only, target_ms).ok_or_else(|| {
        let oldest = with_backups
            .iter()
            .filter(|(id, _)| only.is_none_or(|o| o == *id))
            .flat_map(|(_, b)| b.iter().map(|b| b.start_ms))
            .min();
        let at = crate::clock::rfc3339(oldest.unwrap_or(0));
        match only {
            Some(g) => format!(
                "the oldest base backup started at {at}, after the target: this replica \
                 cannot restore generation {g} earlier"
            ),
            None => format!(
                "the oldest base backup started at {at}, after the target: this replica \
                 cannot restore earlier"
            ),
        }
    })
}

/// Writes a backup's files as its parts arrive, in order: each file starts at its entry's
/// part and offset and continues into the following parts until its size is reached; its
/// CRC32 is checked when it is complete.
struct Unpacker<'a> {
    root: &'a Path,
    files: std::iter::Peekable<std::slice::Iter<'a, super::backup::FileEntry>>,
    open: Option<(
        &'a super::backup::FileEntry,
        std::fs::File,
        u64,
        crc32fast::Hasher,
    )>,
}

impl<'a> Unpacker<'a> {
    fn new(root: &'a Path, files: &'a [super::backup::FileEntry]) -> Self {
        Unpacker {
            root,
            files: files.iter().peekable(),
            open: None,
        }
    }

    fn part(&mut self, part: u32, raw: &[u8]) -> Result<(), String> {
        let mut at = 0usize;
        loop {
            if self.open.is_none() {
                let Some(f) = self.files.next_if(|f| f.part == part) else {
                    break;
                };
                let offset = f.offset as usize;
                if offset < at || offset > raw.len() {
                    return Err(format!("{} does not start inside the part", f.path));
                }
                at = offset;
                let path = self.root.join(&f.path);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                }
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(f.mode)
                    .open(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                self.open = Some((f, file, f.size, crc32fast::Hasher::new()));
            }
            let (f, file, left, crc) = self.open.as_mut().expect("a file is open");
            let take = (*left).min((raw.len() - at) as u64) as usize;
            let data = &raw[at..at + take];
            file.write_all(data)
                .map_err(|e| format!("{}: {e}", f.path))?;
            crc.update(data);
            *left -= take as u64;
            at += take;
            if *left > 0 {
                break; // continues in the next part
            }
            let (f, _, _, crc) = self.open.take().expect("a file is open");
            if crc.finalize() != f.crc {
                return Err(format!("{}: CRC32 mismatch", f.path));
            }
        }
        if at < raw.len() && self.open.is_none() && self.files.peek().is_none_or(|f| f.part != part)
        {
            // Bytes no file names: harmless padding would be odd; say so rather than guess.
            return Err(format!(
                "{} bytes at the end of the part belong to no file",
                raw.len() - at
            ));
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), String> {
        match (self.open.take(), self.files.next()) {
            (None, None) => Ok(()),
            (Some((f, ..)), _) | (None, Some(f)) => {
                Err(format!("{} continues past the backup's last part", f.path))
            }
        }
    }
}

/// `postgresql.auto.conf` with the recovery settings a restore writes commented out.
fn without_recovery_settings(text: &str) -> String {
    const KEYS: &[&str] = &[
        "restore_command",
        "recovery_target",
        "recovery_target_name",
        "recovery_target_time",
        "recovery_target_xid",
        "recovery_target_lsn",
        "recovery_target_inclusive",
        "recovery_target_timeline",
        "recovery_target_action",
        "recovery_end_command",
    ];
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let key = line
            .trim_start()
            .split(|c: char| c == '=' || c.is_whitespace())
            .next()
            .unwrap_or("");
        if KEYS.contains(&key.to_ascii_lowercase().as_str()) {
            out.push_str("# removed by walship pg-restore: ");
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Whether a backup taken on `timeline` and ending at `stop_lsn` can start a recovery that
/// follows timeline `latest`, whose history (`ancestry`: each ancestor and where `latest`'s
/// line left it) is given: it is on `latest`, or on an ancestor left after the backup ended.
fn on_lineage(timeline: u32, stop_lsn: u64, latest: u32, ancestry: &[(u32, u64)]) -> bool {
    timeline == latest
        || ancestry
            .iter()
            .any(|&(tli, switch)| tli == timeline && stop_lsn <= switch)
}

/// The backup to restore and its manifest: `newest` (from `choose`) unless the latest
/// timeline branched off its timeline before it ended, as after a restore from an older
/// backup and a promotion. Recovery follows the latest timeline, and PostgreSQL refuses
/// ("requested timeline is not a child of this server's history") to start it from a
/// backup that is not on that timeline's history; then an older backup of the cluster is.
async fn on_latest_timeline(
    replica: &Replica,
    cat: &Catalog,
    generation: &GenerationId,
    newest: BackupName,
    target_ms: Option<u64>,
) -> Result<(BackupName, BackupManifest)> {
    let g = &cat.generations[generation];
    let latest = g.history_timelines().max().unwrap_or(1);
    let ancestry = if latest > 1 {
        crate::catalog::read_history(replica, generation, latest).await?
    } else {
        Vec::new()
    };
    let backups = g.complete_backups();
    let candidates = backups
        .iter()
        .rev()
        .filter(|b| b.start_ms <= newest.start_ms)
        .filter(|b| target_ms.is_none_or(|t| b.start_ms <= t));
    let mut skipped = Vec::new();
    for b in candidates {
        let mkey = format!("{}/manifest.json", layout::format_backup_dir(generation, b));
        let m = crate::catalog::read_backup_manifest(replica, &mkey).await?;
        let stop = crate::pgformat::lsn::parse_lsn(&m.stop_lsn)
            .ok_or_else(|| Error::corrupt(&mkey, format!("stop LSN {:?}", m.stop_lsn)))?;
        if on_lineage(m.timeline, stop, latest, &ancestry) {
            if !skipped.is_empty() {
                tracing::info!(skipped = ?skipped, timeline = latest,
                    "newer base backups are not on the latest timeline's history; using an older one");
            }
            return Ok((*b, m));
        }
        skipped.push(format!("{} (timeline {})", m.start_lsn, m.timeline));
    }
    Err(Error::Replica {
        replica: replica.url().to_string(),
        reason: format!(
            "no base backup of generation {generation} before the target is on timeline \
             {latest}'s history (newer ones skipped: {}); take a base backup \
             (`walship pg-backup`) on the current timeline",
            skipped.join(", ")
        ),
    })
}

fn empty_or_absent(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut rd) => Ok(rd.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(Error::io(dir, e)),
    }
}

pub fn is_empty_pgdata(dir: &Path) -> Result<bool> {
    empty_or_absent(dir)
}

/// Restore into `pgdata`, which must be absent or empty.
pub async fn restore(replica: &Replica, pgdata: &Path, opts: &Options) -> Result<Outcome> {
    if !empty_or_absent(pgdata)? {
        return Err(Error::Refused(format!(
            "{} is not empty; pg-restore only restores into an empty data directory",
            pgdata.display()
        )));
    }
    let cat = Catalog::of(&replica.list(layout::GENERATIONS).await?);
    let (generation, newest) =
        choose_in(&cat, opts.generation.as_ref(), opts.target_ms).map_err(|reason| {
            Error::Replica {
                replica: replica.url().to_string(),
                reason,
            }
        })?;
    let (backup, manifest) =
        on_latest_timeline(replica, &cat, &generation, newest, opts.target_ms).await?;
    // PostgreSQL fails a recovery whose target is after the archive's last transaction
    // ("recovery ended before configured recovery target was reached"); such a target
    // means the newest state, as it does for SQLite.
    let mut target_ms = opts.target_ms;
    let mut newest_instead = None;
    if let Some(t) = target_ms
        && let Some(last) = last_archived_xact_ms(replica, &cat, &generation).await?
        && t >= last
    {
        target_ms = None;
        newest_instead = Some(last);
    }
    let wal = check_wal(replica, &cat, &generation, &manifest, target_ms).await?;
    tracing::info!(segments = wal.segments, first = %wal.first, last = %wal.last,
        bytes = wal.bytes, "the WAL recovery needs is archived and sound");
    let dir = layout::format_backup_dir(&generation, &backup);
    let mkey = format!("{dir}/manifest.json");
    let name = pgdata
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pgdata".into());
    let tmp = pgdata.with_file_name(format!(".{name}.walship-tmp"));
    if tmp.exists() {
        // Left by a restore that crashed: start over.
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    let mkdir = |p: &Path| -> Result<()> {
        std::fs::create_dir_all(p).map_err(|e| Error::io(p, e))?;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(p, e))
    };
    mkdir(&tmp)?;
    for d in &manifest.dirs {
        mkdir(&tmp.join(d))?;
    }
    mkdir(&tmp.join("pg_wal").join("archive_status"))?;
    if manifest.format > super::backup::MANIFEST_FORMAT {
        return Err(Error::corrupt(
            &mkey,
            format!(
                "backup manifest format {} is newer than this walship reads ({}); upgrade \
                 walship to restore it",
                manifest.format,
                super::backup::MANIFEST_FORMAT
            ),
        ));
    }
    // Parts are fetched a few ahead, in order; files are written as their bytes stream by
    // (a file may continue into the next parts).
    let keys: Vec<String> = (0..manifest.parts)
        .map(|part| format!("{dir}/{}", layout::format_backup_part(part)))
        .collect();
    use futures::StreamExt;
    let mut parts = futures::stream::iter(keys.iter().map(|key| async move {
        let obj = replica.get(key).await?;
        let n = obj.len() as u64;
        let (_, raw) = tokio::task::spawn_blocking(move || {
            container::decode_all(&obj, super::backup::PART_MAGIC)
        })
        .await
        .expect("decode task")
        .map_err(|r| Error::corrupt(key, r))?;
        Ok::<_, Error>((n, raw))
    }))
    .buffered(3);
    let mut unpack = Unpacker::new(&tmp, &manifest.files);
    let mut bytes = 0u64;
    let mut part = 0u32;
    while let Some(r) = parts.next().await {
        let (n, raw) = r?;
        bytes += n;
        unpack
            .part(part, &raw)
            .map_err(|reason| Error::corrupt(&keys[part as usize], reason))?;
        part += 1;
    }
    unpack
        .finish()
        .map_err(|reason| Error::corrupt(&mkey, reason))?;
    write_file(
        &tmp.join("backup_label"),
        manifest.backup_label.as_bytes(),
        0o600,
    )?;
    if let Some(map) = &manifest.tablespace_map {
        write_file(&tmp.join("tablespace_map"), map.as_bytes(), 0o600)?;
    }
    write_file(&tmp.join("recovery.signal"), b"", 0o600)?;
    let mut conf = format!(
        "\n# written by walship pg-restore\nrestore_command = '{}'\nrecovery_target_timeline = 'latest'\n",
        opts.restore_command.replace('\'', "''")
    );
    if let Some(t) = target_ms {
        conf.push_str(&format!(
            "recovery_target_time = '{}'\nrecovery_target_action = 'promote'\n",
            pg_timestamp(t)
        ));
    }
    let auto = tmp.join("postgresql.auto.conf");
    // A backup of a cluster that was itself restored carries that restore's settings
    // (an old recovery_target_time would stop this recovery early): drop them first.
    let inherited = match std::fs::read_to_string(&auto) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(&auto, e)),
    };
    let text = without_recovery_settings(&inherited) + &conf;
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(true)
        .mode(0o600)
        .open(&auto)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| Error::io(&auto, e))?;
    if pgdata.exists() {
        std::fs::remove_dir(pgdata).map_err(|e| Error::io(pgdata, e))?;
    }
    std::fs::rename(&tmp, pgdata).map_err(|e| Error::io(pgdata, e))?;
    Ok(Outcome {
        timelines: cat.generations[&generation].history_timelines().collect(),
        generation,
        backup,
        files: manifest.files.len(),
        bytes,
        newest_instead,
        wal,
    })
}

/// A timestamp PostgreSQL parses: `2026-11-22 09:54:04.274+00` (it rejects the `T…Z` form).
fn pg_timestamp(ms: u64) -> String {
    let t = crate::clock::rfc3339(ms);
    format!("{}+00", t.trim_end_matches('Z').replacen('T', " ", 1))
}

fn write_file(path: &PathBuf, data: &[u8], mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(data))
        .map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests;
