#!/usr/bin/env bash
# Creates ~/.cache/gapmeter/venv-reference with the reference packages (requirements.txt) and
# prints its python's path. Used to regenerate fixtures (make fixtures) and by make test-reference.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${GAPMETER_CACHE:-$HOME/.cache/gapmeter}/venv-reference"
stamp="$venv/.requirements-$(sha256sum "$here/requirements.txt" | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
  touch "$stamp"
fi
echo "$venv/bin/python"
