#!/usr/bin/env bash
# `make run`: starts gapmeter serve on 127.0.0.1:8080 with a local PostgreSQL, creating on first
# start the database, an admin key and a demo team with a key, and printing an example to paste.
#
# Database: $DATABASE_URL if set; else the local server at 127.0.0.1:5432 (database `gapmeter`,
# created if missing); else, when PostgreSQL's binaries are installed, a private cluster under
# .data/postgres on port 5499.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
mkdir -p .data
bin="${GAPMETER_BIN:-target/debug/gapmeter}"

if [[ -z "${DATABASE_URL:-}" ]]; then
  if command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; then
    export DATABASE_URL="postgres://postgres@127.0.0.1:5432/gapmeter"
    psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'gapmeter'" | grep -q 1 ||
      psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE gapmeter"
  else
    pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -z "$pgbin" ]]; then
      echo "no PostgreSQL at 127.0.0.1:5432 and no PostgreSQL binaries: set DATABASE_URL" >&2
      exit 1
    fi
    if [[ ! -f .data/postgres/PG_VERSION ]]; then
      "$pgbin/initdb" -D .data/postgres -U postgres --auth=trust >/dev/null
    fi
    "$pgbin/pg_ctl" -D .data/postgres -o "-p 5499 -k /tmp -c listen_addresses=127.0.0.1" -l .data/postgres.log status >/dev/null ||
      "$pgbin/pg_ctl" -D .data/postgres -o "-p 5499 -k /tmp -c listen_addresses=127.0.0.1" -l .data/postgres.log -w start >/dev/null
    "$pgbin/psql" -h 127.0.0.1 -p 5499 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'gapmeter'" | grep -q 1 ||
      "$pgbin/psql" -h 127.0.0.1 -p 5499 -U postgres -qc "CREATE DATABASE gapmeter"
    export DATABASE_URL="postgres://postgres@127.0.0.1:5499/gapmeter"
  fi
fi

export GAPMETER_STORAGE__URL="${GAPMETER_STORAGE__URL:-file://$root/.data/blobs}"
if [[ ! -f .data/admin-key ]]; then
  (umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=' > .data/admin-key)
fi
export GAPMETER_AUTH__ADMIN_KEY="$(cat .data/admin-key)"

"$bin" migrate
if [[ ! -f .data/demo-key ]]; then
  team=$("$bin" admin create-team demo)
  (umask 077; "$bin" admin create-key --team "$team" --name demo --scopes read,write > .data/demo-key)
fi
key=$(cat .data/demo-key)
cat <<MSG
gapmeter: http://127.0.0.1:8080  (database $(echo "$DATABASE_URL" | sed 's#//[^@]*@#//#'))
admin key: .data/admin-key    demo team key: .data/demo-key

In a browser: http://127.0.0.1:8080/ (the dashboard; sign in with the demo team key $key)

In another terminal (an in-process worker runs the jobs):
  export GAPMETER_URL=http://127.0.0.1:8080 GAPMETER_KEY=$key
  $bin client upload synthetic examples/A
  $bin client upload real examples/B
  $bin client score synthetic real --metrics fid,kid,prdc --top 5

or with curl:
  curl -s -X POST http://127.0.0.1:8080/v1/datasets -H "Authorization: Bearer $key" \\
       -H 'Content-Type: application/json' -d '{"name": "examples-a"}'
  curl -s -X POST http://127.0.0.1:8080/v1/datasets/<ID>/images -H "Authorization: Bearer $key" \\
       $(for f in examples/A/a00{0,1,2}*; do printf -- "-F file=@%s " "$f"; done)
  curl -s http://127.0.0.1:8080/openapi.json | head -c 200

MSG
exec "$bin" serve
