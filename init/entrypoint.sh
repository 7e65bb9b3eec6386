#!/bin/sh
# Init-container entrypoint: restore the newest replicated state of DB_PATH if, and only
# if, the database does not exist yet and the replica holds one. Semantics: README.md here.
#   entrypoint.sh /data/app.db [--config /etc/walship/walship.yml] [restore flags...]
set -eu
if [ $# -lt 1 ]; then
    echo "usage: $0 DB_PATH [walship restore flags...]" >&2
    exit 2
fi
db=$1
shift
exec walship restore --if-db-not-exists --if-replica-exists "$@" "$db"
