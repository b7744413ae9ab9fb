#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests and benchmarks of the PostgreSQL store, from
# Debian's `postgresql` package, on 127.0.0.1 only:
#
#   scripts/postgres.sh start   installs the package if needed (apt-get), creates a cluster in
#                               target/postgres (trust authentication, loopback only) unless one
#                               is there, starts it and prints the URL of its `flexrun` database
#   scripts/postgres.sh url     prints that URL
#   scripts/postgres.sh stop    stops the server (the cluster stays for the next start)
#
# The port is FLEXRUN_PG_PORT (54329 by default), the directory FLEXRUN_PG_DIR. The server runs
# as the `postgres` system user the package creates when this script runs as root (PostgreSQL
# refuses to run as root), else as the calling user. Tests name the URL in
# FLEXRUN_TEST_POSTGRES (scripts/test.sh sets it) and create a database of their own in it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${FLEXRUN_PG_DIR:-$ROOT/target/postgres}"
PORT="${FLEXRUN_PG_PORT:-54329}"
URL="postgres://postgres@127.0.0.1:$PORT/flexrun"

bin_dir() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

install() {
    if [ -n "$(bin_dir)" ] && [ -x "$(bin_dir)/initdb" ]; then
        return
    fi
    echo "postgres.sh: installing Debian's postgresql" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! as_root apt-get install -y -q --no-install-recommends postgresql >/dev/null; then
        as_root apt-get update -q >/dev/null
        as_root apt-get install -y -q --no-install-recommends postgresql >/dev/null
    fi
}

# Runs a server program as the cluster's owner.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start() {
    install
    local bin
    bin="$(bin_dir)"
    mkdir -p "$DIR"
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres: "$DIR"
    fi
    if [ ! -f "$DIR/data/PG_VERSION" ]; then
        as_owner "$bin/initdb" -D "$DIR/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
        cat >>"$DIR/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DIR'
max_connections = 300
shared_buffers = 128MB
EOF
    fi
    if ! as_owner "$bin/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
        as_owner "$bin/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 start >/dev/null
    fi
    if ! as_owner "$bin/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'flexrun'" | grep -q 1; then
        as_owner "$bin/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -qc "CREATE DATABASE flexrun" >/dev/null
    fi
    echo "$URL"
}

stop() {
    local bin
    bin="$(bin_dir)"
    if [ -n "$bin" ] && [ -f "$DIR/data/PG_VERSION" ]; then
        as_owner "$bin/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    url) echo "$URL" ;;
    *)
        echo "usage: $0 start|stop|url" >&2
        exit 2
        ;;
esac
