#!/usr/bin/env bash
# Rebuild fuzz/seeds/ from real objects: replicate a small database written by
# tests/writer.py to a file:// replica, SIGKILL walship mid-run (so a capture journal is
# left), and copy each kind of object into its target's seed directory. Text seeds
# (names, times, settings, config) are written from the same run's listing. Needs a built
# walship (target/debug or WALSHIP) and python3.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${WALSHIP:-$ROOT/target/debug/walship}
SEEDS=$ROOT/fuzz/seeds
T=$(mktemp -d); trap 'kill $PID 2>/dev/null || true; rm -rf "$T"' EXIT
python3 -c "import sqlite3; c=sqlite3.connect('$T/app.db'); c.execute('pragma journal_mode=wal'); c.close()"
"$BIN" replicate --sync-interval 200ms "$T/app.db" "file://$T/replica" >"$T/log" 2>&1 & PID=$!
sleep 1
# Small transactions in bursts longer apart than the sync interval: several small segments.
python3 - "$T/app.db" <<'PY'
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("create table if not exists t(id integer primary key, v text)")
for burst in range(4):
    for i in range(12):
        c.execute("insert into t(v) values (?)", (f"row {burst}-{i}",))
    time.sleep(0.6)
PY
kill -9 $PID; wait $PID 2>/dev/null || true
# The ltx seeds are Litestream's own files, not made here: kept across the rebuild.
[ -d "$SEEDS/ltx" ] && cp -r "$SEEDS/ltx" "$T/ltx-seeds"
rm -rf "$SEEDS"; mkdir -p "$SEEDS"
[ -d "$T/ltx-seeds" ] && cp -r "$T/ltx-seeds" "$SEEDS/ltx"
seed() { mkdir -p "$SEEDS/$1"; cp "$2" "$SEEDS/$1/$(basename "$2" | tr -c 'A-Za-z0-9._\n-' _)"; }
for f in $(find "$T/replica" -name '*.seg' | sort | head -3); do seed segment "$f"; seed container "$f"; done
for f in $(find "$T/replica" -name '*.snap' | sort | head -2); do seed snapshot "$f"; seed container "$f"; done
for f in $(find "$T/replica" -name manifest.json | head -1); do seed manifest "$f"; done
# The journal is overwritten in place: keep its first whole record only.
find "$T" -path '*walship*' -name '*journal*' -type f | head -1 | while read -r f; do
  python3 -c "import sys,struct; b=open(sys.argv[1],'rb').read(); n=24+struct.unpack('>I',b[16:20])[0]; open(sys.argv[2],'wb').write(b[:n])" "$f" "$T/journal.wjnl"
  seed journal "$T/journal.wjnl"; done
head -c $((32 + 12 * 4120)) "$T/app.db-wal" > "$T/wal-head"; seed wal "$T/wal-head"
head -c 136 "$T/app.db-shm" > "$T/shm-head"; seed shm "$T/shm-head"
mkdir -p "$SEEDS/names" "$SEEDS/time" "$SEEDS/settings" "$SEEDS/config" "$SEEDS/planner" "$SEEDS/pg_records" "$SEEDS/pg_objects"
(cd "$T/replica" && find . -type f | sed 's|^\./||' | sort) > "$SEEDS/names/listing"
printf '000000010000000000000001\n00000002.history\n000000010000000000000002.00000028.backup\n' > "$SEEDS/names/pgwal"
for s in 2026-11-21T14:02:00Z '2026-12-01 18:30:01.123456+00' 14:02 15m 2026-11-21T14:02:00.5+05:30; do
  printf '%s' "$s" > "$SEEDS/time/$(printf '%s' "$s" | tr -c 'A-Za-z0-9' _)"; done
for s in 64MiB 1GB 1s 250ms 24h 127.0.0.1:9090 s3://bucket/p file:///tmp/r 1h:24,1d:7; do
  printf '%s' "$s" > "$SEEDS/settings/$(printf '%s' "$s" | tr -c 'A-Za-z0-9' _)"; done
cp "$ROOT/sidecar-examples"/*.yaml "$SEEDS/config/" 2>/dev/null || true
printf 'dbs:\n  - path: /tmp/x/app.db\n    replica:\n      url: s3://b/p\n      sync-interval: 1s\n' > "$SEEDS/config/minimal.yml"
python3 - "$SEEDS/planner/chain" <<'PY'
import struct, sys
recs = [(0x10, 0, 100, 0, 0), (0x11, 1, 5, 110, 150), (0x12, 6, 9, 160, 190), (0x11, 12, 20, 200, 300), (0x13, 0, 0, 0, 0), (0x20, 0, 400, 0, 0), (0x21, 1, 3, 410, 430)]
open(sys.argv[1], "wb").write(b"".join(struct.pack("<B4Q", *r) for r in recs))
PY

# PostgreSQL: a fresh cluster's first WAL segment (its head: the fuzzer works on short
# inputs), as archived by wal-push, and a base backup manifest. Skipped without initdb.
PGBIN=/usr/lib/postgresql/15/bin
if [ -x "$PGBIN/initdb" ]; then
  mkdir -p "$T/pgrep"; RUN=(); [ "$(id -u)" = 0 ] && { chown -R nobody "$T"; RUN=(runuser -u nobody --); }
  "${RUN[@]}" "$PGBIN/initdb" -D "$T/pg" -A trust -U postgres >/dev/null
  cp "$BIN" "$T/walship"; "${RUN[@]}" env -u WALSHIP_CONFIG "$T/walship" wal-push --pgdata "$T/pg" pg_wal/000000010000000000000001 "file://$T/pgrep" 2>/dev/null || true
  head -c 32768 "$T/pg/pg_wal/000000010000000000000001" > "$T/pgseg"; seed pg_records "$T/pgseg"
  # An archived segment is ~2 MB: its head (header, first chunks) keeps the fuzzer fast.
  find "$T/pgrep" -type f | head -1 | while read -r f; do head -c 8192 "$f" > "$T/pgobj"; seed pg_objects "$T/pgobj"; done
fi
printf '{"format":1,"system_identifier":"7300000000000000001","timeline":1,"start_lsn":"0/2000028","stop_lsn":"0/2000100","start_ms":1,"stop_ms":2,"backup_label":"START WAL LOCATION: 0/2000028","tablespace_map":null,"dirs":["base"],"files":[],"parts":1,"bytes":0}' > "$SEEDS/pg_objects/backup-manifest.json"
# fuzz/seeds/ltx holds files Litestream 0.5.17 wrote (its L9 snapshot and an L0 file) and a
# listing; they are kept as they are, this script does not make them.
du -sh "$SEEDS"/*
