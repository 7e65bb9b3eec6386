#!/usr/bin/env python3
"""The application side of walship's tests: a separate process with its own SQLite
connection (Python's sqlite3, i.e. the system SQLite, not walship's bundled one), a normal
busy_timeout, and its own checkpoints.

It commits transactions of random sizes to two tables, optionally one transaction larger
than 1,000 pages, optionally `PRAGMA wal_checkpoint(TRUNCATE)` at random moments, and
writes a JSON report: commit latencies, every checkpoint's (busy, log, checkpointed,
seconds, WAL bytes after), and, with --record, the commit time and a content hash after
every transaction (for point-in-time tests). The content hash is the XOR of a hash of every
row, kept up to date from the rows each transaction touches, so recording it costs
O(rows changed) per commit; `writer.py --hash DB` computes the same value from scratch.

    writer.py --db app.db --tx 20000 --seed 1 --big-tx-at 5000 --checkpoint-every 400 \
              --rate 1500 --report report.json
    writer.py --hash restored.db
"""
import argparse
import hashlib
import json
import os
import random
import sqlite3
import sys
import time

SCHEMA = """
CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, k TEXT NOT NULL, v BLOB, n INTEGER);
CREATE INDEX IF NOT EXISTS items_k ON items(k);
CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


ROW_QUERIES = {
    "items": "SELECT id, k, v, n FROM items WHERE id = ?",
    "counters": "SELECT name, value FROM counters WHERE name = ?",
}


def row_hash(table, row):
    return int.from_bytes(hashlib.sha256(repr((table,) + tuple(row)).encode()).digest()[:16], "big")


def rowset_hash(conn):
    """XOR of row_hash over every row of both tables (order-free, so it can be updated)."""
    acc = 0
    for row in conn.execute("SELECT id, k, v, n FROM items"):
        acc ^= row_hash("items", row)
    for row in conn.execute("SELECT name, value FROM counters"):
        acc ^= row_hash("counters", row)
    return f"{acc:032x}"


class Changes:
    """Rows one transaction touches: old versions are hashed out before they change, the
    new versions hashed in at the end. Disabled (no reads) when nothing is recorded."""

    def __init__(self, conn, enabled):
        self.conn, self.enabled, self.keys, self.delta = conn, enabled, set(), 0

    def before(self, table, key):
        if not self.enabled or (table, key) in self.keys:
            return
        self.keys.add((table, key))
        row = self.conn.execute(ROW_QUERIES[table], (key,)).fetchone()
        if row is not None:
            self.delta ^= row_hash(table, row)

    def inserted(self, table, key):
        if self.enabled:
            self.keys.add((table, key))

    def finish(self):
        for table, key in self.keys:
            row = self.conn.execute(ROW_QUERIES[table], (key,)).fetchone()
            if row is not None:
                self.delta ^= row_hash(table, row)
        return self.delta


def one_tx(conn, rng, big, ch):
    def insert(k, v, n):
        cur = conn.execute("INSERT INTO items(k, v, n) VALUES (?, ?, ?)", (k, v, n))
        ch.inserted("items", cur.lastrowid)

    if big:
        # > 1,000 pages at 4 KiB: 1,500 rows of 3 KiB each.
        for _ in range(1500):
            insert(f"big{rng.random()}", rng.randbytes(3000), 0)
        return
    shape = rng.random()
    if shape < 0.6:
        insert(f"k{rng.randrange(1 << 30)}", rng.randbytes(rng.randrange(8, 200)), 1)
    elif shape < 0.85:
        for _ in range(rng.randrange(2, 12)):
            insert(f"m{rng.randrange(1 << 30)}", rng.randbytes(rng.randrange(8, 1500)), 2)
    else:
        top = conn.execute("SELECT coalesce(max(id), 0) FROM items").fetchone()[0]
        start = rng.randrange(top + 1)
        limit = 5 if shape < 0.95 else 8
        ids = [r[0] for r in conn.execute("SELECT id FROM items WHERE id >= ? LIMIT ?", (start, limit))]
        for i in ids:
            ch.before("items", i)
        marks = ",".join("?" * len(ids))
        if ids and shape < 0.95:
            conn.execute(f"UPDATE items SET n = n + 1, v = ? WHERE id IN ({marks})",
                         [rng.randbytes(64)] + ids)
        elif ids:
            conn.execute(f"DELETE FROM items WHERE id IN ({marks})", ids)
    ch.before("counters", "tx")
    conn.execute("INSERT INTO counters(name, value) VALUES ('tx', 1) "
                 "ON CONFLICT(name) DO UPDATE SET value = value + 1")


def pct(xs, p):
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * p))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--db")
    ap.add_argument("--tx", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--big-tx-at", type=int, default=-1, help="index of the >1000-page transaction")
    ap.add_argument("--checkpoint-every", type=int, default=0,
                    help="on average one TRUNCATE checkpoint per this many transactions (0: none)")
    ap.add_argument("--rate", type=float, default=0, help="transactions per second (0: as fast as possible)")
    ap.add_argument("--single-row", action="store_true", help="every transaction inserts one small row")
    ap.add_argument("--record", help="append 'commit_unix_ms hash' lines after every commit")
    ap.add_argument("--report", help="write the JSON report here")
    ap.add_argument("--pause-file", help="while this file exists, stop writing")
    ap.add_argument("--quiet-every", type=int, default=0,
                    help="after about one commit in this many, write nothing for --quiet-ms")
    ap.add_argument("--quiet-ms", type=int, default=500)
    ap.add_argument("--hash", help="print the content hash of this database and exit")
    ap.add_argument("--synchronous", default="NORMAL",
                    help="PRAGMA synchronous (FULL, SQLite's default, fsyncs the WAL at each commit)")
    ap.add_argument("--fill-mb", type=int, default=0,
                    help="first insert about this many MB of 4 KB rows (half random), in big transactions")
    a = ap.parse_args()
    if a.hash:
        conn = sqlite3.connect(f"file:{a.hash}?mode=ro", uri=True)
        print(rowset_hash(conn))
        return 0
    if not a.db:
        ap.error("--db is required")

    rng = random.Random(a.seed)
    conn = sqlite3.connect(a.db, timeout=5.0, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 5000")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    assert mode == "wal", mode
    conn.execute(f"PRAGMA synchronous = {a.synchronous}")
    conn.executescript(SCHEMA)
    if a.fill_mb:
        rows = a.fill_mb * 1024 * 1024 // 4200
        for start in range(0, rows, 20000):
            n = min(20000, rows - start)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(f"""WITH RECURSIVE s(i) AS (SELECT {start} UNION ALL SELECT i + 1 FROM s WHERE i < {start + n - 1})
                INSERT INTO items(k, v, n) SELECT 'fill-' || i,
                CAST(randomblob(2000) || printf('%.2000c', 'a' || i) AS BLOB), i FROM s""")
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    record = open(a.record, "a") if a.record else None
    acc = int(rowset_hash(conn), 16) if record else 0

    latencies, checkpoints = [], []
    start = time.monotonic()
    for i in range(a.tx):
        while a.pause_file and os.path.exists(a.pause_file):
            time.sleep(0.05)
        if a.rate > 0:
            due = start + i / a.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        t0 = time.perf_counter()
        # IMMEDIATE, as an application that reads then writes must: a deferred transaction
        # whose read snapshot another connection's commit has overtaken (Litestream writes
        # its own tables into the database) fails its first write at once with "database is
        # locked", without waiting for busy_timeout.
        conn.execute("BEGIN IMMEDIATE")
        ch = Changes(conn, record is not None)
        if a.single_row:
            cur = conn.execute("INSERT INTO items(k, v, n) VALUES (?, ?, ?)", (f"s{i}", b"x" * 32, i))
            ch.inserted("items", cur.lastrowid)
        else:
            one_tx(conn, rng, i == a.big_tx_at, ch)
        delta = ch.finish()
        conn.execute("COMMIT")
        latencies.append(time.perf_counter() - t0)
        if record:
            acc ^= delta
            record.write(f"{int(time.time() * 1000)} {i + 1} {acc:032x}\n")
            record.flush()
        if a.quiet_every and rng.randrange(a.quiet_every) == 0:
            time.sleep(a.quiet_ms / 1000)
            if a.rate > 0:
                start += a.quiet_ms / 1000
        if a.checkpoint_every and rng.randrange(a.checkpoint_every) == 0:
            t1 = time.perf_counter()
            busy, log, ckpt = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            secs = time.perf_counter() - t1
            wal = a.db + "-wal"
            size = os.path.getsize(wal) if os.path.exists(wal) else 0
            checkpoints.append({"busy": busy, "log": log, "checkpointed": ckpt,
                                "seconds": secs, "wal_bytes_after": size})

    report = {
        "transactions": a.tx,
        "seconds": time.monotonic() - start,
        "latency_p50_ms": 1000 * pct(latencies, 0.50) if latencies else None,
        "latency_p99_ms": 1000 * pct(latencies, 0.99) if latencies else None,
        "latency_max_ms": 1000 * max(latencies) if latencies else None,
        "checkpoints": checkpoints,
    }
    conn.close()
    out = json.dumps(report)
    if a.report:
        with open(a.report, "w") as f:
            f.write(out)
    else:
        print(out)


if __name__ == "__main__":
    sys.exit(main())
