//! `pg-restore`: a base backup into an empty data directory, set up to recover from the
//! archive (`recovery.signal`, `restore_command` = `walship wal-fetch`, the latest
//! timeline, an optional `recovery_target_time`). Built in a temporary directory beside
//! the target and renamed into place, so a crash leaves no half-restored data directory.

use super::backup::BackupManifest;
use crate::error::{Error, Result};
use crate::format::container;
use crate::pgformat::walname::WalFile;
use crate::pgformat::walrecords::LastXact;
use crate::storage::Replica;
use crate::storage::layout::{self, BackupFile, BackupName, GenerationId, ObjectName};
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

/// The complete base backups (with a manifest) of every cluster in a listing, and the
/// timelines whose history is archived.
pub struct Catalog {
    pub backups: BTreeMap<GenerationId, Vec<BackupName>>,
    pub histories: BTreeMap<GenerationId, Vec<u32>>,
}

pub fn catalog(listing: &[crate::storage::Listed]) -> Catalog {
    let mut backups: BTreeMap<GenerationId, Vec<BackupName>> = BTreeMap::new();
    let mut histories: BTreeMap<GenerationId, Vec<u32>> = BTreeMap::new();
    for o in listing {
        match layout::parse_object(&o.name) {
            Some(ObjectName::PgBackup(g, b, BackupFile::Manifest)) => {
                backups.entry(g).or_default().push(b)
            }
            Some(ObjectName::PgWal(g, WalFile::History { timeline })) => {
                histories.entry(g).or_default().push(timeline)
            }
            _ => {}
        }
    }
    // By start time: after a restore and promotion, positions on the new timeline start
    // below the old timeline's newest backup.
    for v in backups.values_mut() {
        v.sort_by_key(|b| (b.start_ms, b.start_lsn));
    }
    Catalog { backups, histories }
}

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
    if let Some(g) = only {
        let Some(list) = c.backups.get(g) else {
            let others: Vec<&str> = c.backups.keys().map(|k| k.as_str()).collect();
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
        };
        return list
            .iter()
            .rev()
            .find(|b| target_ms.is_none_or(|t| b.start_ms <= t))
            .map(|b| (g.clone(), *b))
            .ok_or_else(|| {
                format!(
                    "the oldest base backup started at {}, after the target: this replica \
                     cannot restore generation {g} earlier",
                    crate::clock::rfc3339(list.first().map_or(0, |b| b.start_ms))
                )
            });
    }
    if c.backups.is_empty() {
        return Err(
            "no base backup in this replica: run `walship pg-backup` (or let the \
                    sidecar take one) first"
                .into(),
        );
    }
    c.backups
        .iter()
        .rev()
        .find_map(|(g, list)| {
            list.iter()
                .rev()
                .find(|b| target_ms.is_none_or(|t| b.start_ms <= t))
                .map(|b| (g.clone(), *b))
        })
        .ok_or_else(|| {
            let oldest = c.backups.values().flatten().map(|b| b.start_ms).min();
            format!(
                "the oldest base backup started at {}, after the target: this replica cannot \
                 restore earlier",
                crate::clock::rfc3339(oldest.unwrap_or(0))
            )
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
    let latest = cat
        .histories
        .get(generation)
        .and_then(|t| t.iter().max().copied())
        .unwrap_or(1);
    let ancestry = if latest > 1 {
        crate::catalog::read_history(replica, generation, latest).await?
    } else {
        Vec::new()
    };
    let candidates = cat.backups[generation]
        .iter()
        .rev()
        .filter(|b| b.start_ms <= newest.start_ms)
        .filter(|b| target_ms.is_none_or(|t| b.start_ms <= t));
    let mut skipped = Vec::new();
    for b in candidates {
        let mkey = format!("{}/manifest.json", layout::format_backup_dir(generation, b));
        let m: BackupManifest = serde_json::from_slice(&replica.get(&mkey).await?)
            .map_err(|e| Error::corrupt(&mkey, e.to_string()))?;
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
    let listing = replica.list(layout::GENERATIONS).await?;
    let cat = catalog(&listing);
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
        && let Some(last) = last_archived_xact_ms(replica, &listing, &generation).await?
        && t >= last
    {
        target_ms = None;
        newest_instead = Some(last);
    }
    let wal = check_wal(replica, &listing, &generation, &manifest, target_ms).await?;
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
        timelines: cat.histories.get(&generation).cloned().unwrap_or_default(),
        generation,
        backup,
        files: manifest.files.len(),
        bytes,
        newest_instead,
        wal,
    })
}

/// The WAL `check_wal` read.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WalChecked {
    pub segments: usize,
    pub bytes: u64,
    pub first: String,
    pub last: String,
}

/// The segment the backup's WAL starts in, from its label's `START WAL LOCATION: … (file
/// <name>)` line.
fn start_file(label: &str) -> Option<WalFile> {
    let line = label
        .lines()
        .find(|l| l.starts_with("START WAL LOCATION:"))?;
    let name = line.split("(file ").nth(1)?.split(')').next()?;
    match WalFile::parse(name)? {
        f @ WalFile::Segment { .. } => Some(f),
        _ => None,
    }
}

/// Before anything is handed to PostgreSQL: every WAL segment recovery will read, from
/// the backup's start along the latest timeline's line to the target (or the archive's
/// end), is archived, and each decodes (CRC, its own name inside). A gap or a damaged
/// object is refused by name: recovery would end there and promote without the rest.
async fn check_wal(
    replica: &Replica,
    listing: &[crate::storage::Listed],
    generation: &GenerationId,
    manifest: &BackupManifest,
    target_ms: Option<u64>,
) -> Result<WalChecked> {
    use futures::StreamExt;
    let refuse = |reason: String| Error::Replica {
        replica: replica.url().to_string(),
        reason,
    };
    let first = start_file(&manifest.backup_label)
        .ok_or_else(|| refuse("the backup's label names no START WAL LOCATION file".to_string()))?;
    let mut archived: BTreeMap<u32, std::collections::BTreeSet<(u32, u32)>> = BTreeMap::new();
    for o in listing {
        if let Some(ObjectName::PgWal(g, WalFile::Segment { timeline, log, seg })) =
            layout::parse_object(&o.name)
            && &g == generation
        {
            archived.entry(timeline).or_default().insert((log, seg));
        }
    }
    // The latest timeline, as recovery (`recovery_target_timeline = 'latest'`) finds it.
    let latest = listing
        .iter()
        .filter_map(|o| match layout::parse_object(&o.name) {
            Some(ObjectName::PgWal(g, f)) if &g == generation => Some(f.timeline()),
            _ => None,
        })
        .chain([first.timeline()])
        .max()
        .unwrap_or(1);
    let ancestry = if latest > first.timeline() {
        crate::catalog::read_history(replica, generation, latest).await?
    } else {
        Vec::new()
    };
    // The segment size, from the start segment's own page header.
    let fetch = |f: WalFile| async move {
        let key = layout::format_pg_wal(generation, &f);
        let obj = crate::restore::get_retrying(replica, &key, None).await;
        let obj = match obj {
            Err(e) if e.is_not_found() => {
                return Err(Error::Replica {
                    replica: replica.url().to_string(),
                    reason: format!(
                        "WAL segment {f} ({key}) is listed but cannot be read: deleted \
                         meanwhile?"
                    ),
                });
            }
            r => r?,
        };
        let n = obj.len() as u64;
        let raw = tokio::task::spawn_blocking(move || crate::format::pgwal::decode(&f, &obj))
            .await
            .expect("decode task")
            .map_err(|r| Error::corrupt(&key, r))?;
        Ok::<_, Error>((f, n, raw))
    };
    let WalFile::Segment { log, seg, .. } = first else {
        unreachable!("start_file returns segments")
    };
    if !archived
        .get(&first.timeline())
        .is_some_and(|s| s.contains(&(log, seg)))
    {
        return Err(refuse(format!(
            "WAL segment {first} ({}), where the base backup's recovery starts, is not \
             archived. Nothing was restored",
            layout::format_pg_wal(generation, &first)
        )));
    }
    // Read once: its page header gives the segment size, and it is the first checked.
    let mut head = Some(fetch(first).await?);
    let seg_size = head
        .as_ref()
        .and_then(|(_, _, raw)| raw.get(32..36))
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .filter(|s| s.is_power_of_two() && (1 << 20..=1 << 30).contains(s))
        .ok_or_else(|| {
            Error::corrupt(
                layout::format_pg_wal(generation, &first),
                "no valid WAL segment size in its first page header",
            )
        })? as u64;
    let per_log = (1u64 << 32) / seg_size;
    let abs = |log: u32, seg: u32| log as u64 * per_log + seg as u64;
    // The line recovery follows: the backup's timeline and each later one of the latest
    // timeline's history, each from where the previous one left (segment numbers).
    let mut line: Vec<(u32, u64)> = vec![(first.timeline(), abs(log, seg))];
    for (i, &(tli, switch)) in ancestry.iter().enumerate() {
        if tli >= first.timeline() {
            let child = ancestry.get(i + 1).map_or(latest, |&(t, _)| t);
            line.push((child, switch / seg_size));
        }
    }
    let mut expected: Vec<WalFile> = Vec::new();
    for (i, &(tli, from)) in line.iter().enumerate() {
        let to = match line.get(i + 1) {
            Some(&(_, next_from)) => next_from.saturating_sub(1),
            None => archived
                .get(&tli)
                .and_then(|s| s.iter().next_back())
                .map_or(0, |&(l, s)| abs(l, s)),
        };
        if from <= to {
            expected.extend((from..=to).map(|n| WalFile::Segment {
                timeline: tli,
                log: (n / per_log) as u32,
                seg: (n % per_log) as u32,
            }));
        }
    }
    let mut checked = WalChecked {
        segments: 0,
        bytes: 0,
        first: first.to_string(),
        last: first.to_string(),
    };
    let mut prev = first;
    let archived = &archived;
    let mut reads = futures::stream::iter(expected.iter().filter(|f| **f != first).map(|f| {
        let f = *f;
        async move {
            let WalFile::Segment { timeline, log, seg } = f else {
                unreachable!()
            };
            if !archived
                .get(&timeline)
                .is_some_and(|s| s.contains(&(log, seg)))
            {
                return Ok(None);
            }
            fetch(f).await.map(Some)
        }
    }))
    .buffered(4);
    for f in &expected {
        let got = match head.take_if(|(h, _, _)| h == f) {
            Some(h) => Some(h),
            None => reads.next().await.expect("one result per file")?,
        };
        let Some((_, n, raw)) = got else {
            let upto = expected.last().expect("non-empty");
            return Err(refuse(format!(
                "WAL segment {f} ({}) is missing from the archive: recovery from the base \
                 backup (WAL from {first}) needs every segment to {upto}, and would stop \
                 after {prev} and promote without the transactions after it. Nothing was \
                 restored",
                layout::format_pg_wal(generation, f)
            )));
        };
        checked.segments += 1;
        checked.bytes += n;
        checked.last = f.to_string();
        prev = *f;
        if let (Some(t), WalFile::Segment { log, seg, .. }) = (target_ms, *f)
            && let LastXact::At(ms) = crate::pgformat::walrecords::last_xact_end(&raw, log, seg)
            && ms >= t
        {
            break; // recovery stops in this segment
        }
    }
    Ok(checked)
}

/// Archived segments read, newest first, looking for the last transaction end.
const LAST_XACT_SEGMENTS: usize = 4;

/// The time of the last commit or abort in `generation`'s archive, on its newest timeline
/// with segments: read from its newest segments, newest first. `None` when that cannot be
/// told for sure (then the target is left to PostgreSQL).
pub async fn last_archived_xact_ms(
    replica: &Replica,
    listing: &[crate::storage::Listed],
    generation: &GenerationId,
) -> Result<Option<u64>> {
    let mut segs: Vec<WalFile> = listing
        .iter()
        .filter_map(|o| match layout::parse_object(&o.name) {
            Some(ObjectName::PgWal(g, f @ WalFile::Segment { .. })) if &g == generation => Some(f),
            _ => None,
        })
        .collect();
    segs.sort();
    let Some(newest_tl) = segs.last().map(WalFile::timeline) else {
        return Ok(None);
    };
    for f in segs
        .iter()
        .rev()
        .filter(|f| f.timeline() == newest_tl)
        .take(LAST_XACT_SEGMENTS)
    {
        let key = layout::format_pg_wal(generation, f);
        let raw = crate::format::pgwal::decode(f, &replica.get(&key).await?)
            .map_err(|r| Error::corrupt(&key, r))?;
        let WalFile::Segment { log, seg, .. } = *f else {
            continue;
        };
        let found = crate::pgformat::walrecords::last_xact_end(&raw, log, seg);
        tracing::debug!(file = %f, ?found, "last transaction end");
        match found {
            LastXact::At(ms) => return Ok(Some(ms)),
            LastXact::NoneHere => continue,
            LastXact::Unknown => return Ok(None),
        }
    }
    Ok(None)
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
