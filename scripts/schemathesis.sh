#!/usr/bin/env bash
# Runs schemathesis (PyPI) against a live gapmeter server built from this tree: every documented
# operation is fuzzed and every response checked against openapi/openapi.json (no 5xx, status
# codes, content types, schemas, auth). Uses a throwaway database and blob directory.
# Usage: scripts/schemathesis.sh [extra schemathesis arguments]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cache="${GAPMETER_CACHE:-$HOME/.cache/gapmeter}"
venv="$cache/venv-schemathesis"
if [[ ! -x "$venv/bin/schemathesis" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis>=4,<5"
fi
scripts/with-libtorch.sh cargo build --quiet
base="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
db="gapmeter_schemathesis_$$"
psql "$base" -qc "CREATE DATABASE $db"
work=$(mktemp -d)
port=18080
export DATABASE_URL="${base%/*}/$db"
export GAPMETER_SERVER__BIND="127.0.0.1:$port"
export GAPMETER_STORAGE__URL="file://$work/blobs"
export GAPMETER_AUTH__ADMIN_KEY="schemathesis-admin"
# Fuzzed dataset URIs must not make the server reach out: no http(s), no object stores.
export GAPMETER_INGEST__ALLOW_HTTP=false
export GAPMETER_INGEST__ALLOW_OBJECT_STORE=false
cleanup() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  psql "$base" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  rm -rf "$work"
}
trap cleanup EXIT
target/debug/gapmeter migrate
team=$(target/debug/gapmeter admin create-team schemathesis)
# One key for every operation: a team key with the admin scope reaches both the team's datasets
# and the admin routes.
key=$(target/debug/gapmeter admin create-key --team "$team" --scopes read,write,admin)
target/debug/gapmeter serve --models-dir "${GAPMETER_MODELS_DIR:-$cache/models}" > "$work/server.log" 2>&1 &
server=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.2; done
"$venv/bin/schemathesis" run "http://127.0.0.1:$port/openapi.json" \
  -H "Authorization: Bearer $key" --checks all --workers 2 --max-time "${SCHEMATHESIS_MAX_TIME:-180}" "$@"
