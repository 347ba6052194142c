#!/usr/bin/env bash
# An S3-compatible server for tests and local runs: moto's server mode, from PyPI, in a venv
# cached under ~/.cache/gapmeter (installed once; a marker file is written only after a complete
# install). `scripts/s3-server.sh --python` prints the venv's python and exits; otherwise the
# arguments go to moto's server, e.g. `scripts/s3-server.sh -H 127.0.0.1 -p 5000`.
set -euo pipefail

MOTO_VERSION="5.2.5"
CACHE_DIR="${GAPMETER_CACHE:-$HOME/.cache/gapmeter}"
VENV="$CACHE_DIR/venv-moto-$MOTO_VERSION"
MARKER="$VENV/.gapmeter-complete"

if [[ ! -f "$MARKER" ]]; then
  mkdir -p "$CACHE_DIR"
  exec 9>"$CACHE_DIR/.setup-moto.lock"
  flock 9
  if [[ ! -f "$MARKER" ]]; then
    echo "s3-server: installing moto[server]==$MOTO_VERSION into $VENV (one time)" >&2
    rm -rf "$VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
      "moto[server]==$MOTO_VERSION" >&2
    touch "$MARKER"
  fi
  exec 9>&-
fi

if [[ "${1:-}" == "--python" ]]; then
  echo "$VENV/bin/python"
  exit 0
fi
exec "$VENV/bin/python" -m moto.server "$@"
