#!/usr/bin/env bash
# Start a throw-away PostgreSQL server for the store tests (Debian's package).
#
#   eval "$(scripts/start_postgres.sh)"      # exports MEMGAUGE_TEST_PG_URL
#   scripts/start_postgres.sh --stop         # stops the server started here
#
# Installs postgresql with apt-get when no server binaries are found, initialises a cluster in
# a data folder owned by the postgres user, starts it on 127.0.0.1 (port $PGPORT_TEST, else a
# free one), creates a role with a random password and a database, then prints
# `export MEMGAUGE_TEST_PG_URL=...` on stdout and writes the URL to $MEMGAUGE_PG_URL_FILE
# (default: $PGBASE/url, mode 600).  Logs go to stderr.  Safe to run twice: a running server
# started here is reused.
set -euo pipefail

PGBASE="${MEMGAUGE_PG_BASE:-/tmp/memgauge-pg}"
DATA="$PGBASE/data"
URL_FILE="${MEMGAUGE_PG_URL_FILE:-$PGBASE/url}"
DB="${MEMGAUGE_PG_DB:-memgauge_test}"
ROLE="${MEMGAUGE_PG_ROLE:-memgauge}"

log() { echo "start_postgres: $*" >&2; }

find_bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
  done
  return 1
}

BINDIR="$(find_bindir || true)"
if [ "${1:-}" = "--stop" ]; then
  if [ -n "$BINDIR" ] && [ -f "$DATA/postmaster.pid" ]; then
    su postgres -s /bin/sh -c "'$BINDIR/pg_ctl' -D '$DATA' -m fast stop" >&2 || true
  fi
  exit 0
fi

if [ -z "$BINDIR" ]; then
  log "installing postgresql (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
  BINDIR="$(find_bindir)"
fi
id postgres >/dev/null 2>&1 || useradd --system --home-dir "$PGBASE" --shell /bin/sh postgres

as_pg() { su postgres -s /bin/sh -c "$1"; }

mkdir -p "$PGBASE"
chown postgres "$PGBASE"
chmod 700 "$PGBASE"

running_port() {
  # postmaster.pid line 4 is the port; line 1 the pid
  [ -f "$DATA/postmaster.pid" ] || return 1
  local pid port
  pid="$(sed -n 1p "$DATA/postmaster.pid")"
  port="$(sed -n 4p "$DATA/postmaster.pid")"
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$port"
}

if [ -f "$URL_FILE" ] && PORT="$(running_port)"; then
  log "reusing the server on 127.0.0.1:$PORT"
  URL="$(cat "$URL_FILE")"
  echo "export MEMGAUGE_TEST_PG_URL='$URL'"
  exit 0
fi

if [ ! -f "$DATA/PG_VERSION" ]; then
  rm -rf "$DATA"
  mkdir -p "$DATA"
  chown postgres "$DATA"
  chmod 700 "$DATA"
  as_pg "'$BINDIR/initdb' -D '$DATA' --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 -U postgres" >&2 \
    || as_pg "'$BINDIR/initdb' -D '$DATA' --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C -U postgres" >&2
fi

PORT="${PGPORT_TEST:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"
SOCKDIR="$PGBASE"
as_pg "'$BINDIR/pg_ctl' -D '$DATA' -l '$PGBASE/server.log' -w -t 60 \
  -o \"-c listen_addresses=127.0.0.1 -p $PORT -k $SOCKDIR -c max_connections=200 -c fsync=off\" start" >&2

PASSWORD="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
psql_pg() { as_pg "'$BINDIR/psql' -h '$SOCKDIR' -p $PORT -U postgres -v ON_ERROR_STOP=1 -qAt $*"; }
if [ "$(psql_pg "-c \"SELECT 1 FROM pg_roles WHERE rolname='$ROLE'\"")" = "1" ]; then
  psql_pg "-c \"ALTER ROLE $ROLE WITH LOGIN PASSWORD '$PASSWORD'\"" >&2
else
  psql_pg "-c \"CREATE ROLE $ROLE WITH LOGIN CREATEDB PASSWORD '$PASSWORD'\"" >&2
fi
if [ "$(psql_pg "-c \"SELECT 1 FROM pg_database WHERE datname='$DB'\"")" != "1" ]; then
  psql_pg "-c \"CREATE DATABASE $DB OWNER $ROLE\"" >&2
fi

URL="postgresql://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DB"
umask 077
printf '%s\n' "$URL" > "$URL_FILE"
log "PostgreSQL on 127.0.0.1:$PORT, database $DB, role $ROLE; URL in $URL_FILE"
echo "export MEMGAUGE_TEST_PG_URL='$URL'"
