#!/usr/bin/env bash
# Installs the client (`pip install ./clients/python[test]`, plus tqdm) into a cached venv and
# runs its pytest suite against the service at $GAPMETER_URL with the team key $GAPMETER_KEY.
# The Rust suite (tests/api/client.rs) starts a service and calls this; by hand, point it at
# `make run`'s service and demo key.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${GAPMETER_URL:?set GAPMETER_URL}" "${GAPMETER_KEY:?set GAPMETER_KEY}"
cache="${GAPMETER_CACHE:-$HOME/.cache/gapmeter}"
venv="$cache/venv-python-client"
stamp="$venv/.installed-$(cat "$here/pyproject.toml" "$here"/gapmeter_client/*.py | sha256sum | cut -c1-16)"
mkdir -p "$cache"
exec 9>"$cache/.setup-python-client.lock"
flock 9
if [[ ! -f "$stamp" ]]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  # Built from a copy, so pip's build/ and egg-info never land in the checkout.
  src="$(mktemp -d)"
  cp -r "$here/pyproject.toml" "$here/README.md" "$here/gapmeter_client" "$src/"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$src[test]" tqdm >&2
  rm -rf "$src"
  touch "$stamp"
fi
flock -u 9
# From outside the source tree, so the tests import the installed package.
cd "$venv"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$here/tests" "$@"
