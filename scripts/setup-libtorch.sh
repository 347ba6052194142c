#!/usr/bin/env bash
# Installs the pinned PyTorch (which carries libtorch) into a venv cached outside the repo, and
# prints nothing but errors when it is already there. Idempotent: a marker file is written only
# after a complete install, so an interrupted run is redone rather than trusted.
#
# Why PyPI's torch wheel: tch/torch-sys =0.24.0 build against PyTorch 2.11.0, and PyPI's
# torch==2.11.0 is the same cu130 build the GPU machines carry, so a binary built here runs there.
set -euo pipefail

TORCH_VERSION="2.11.0"
CACHE_DIR="${GAPMETER_CACHE:-$HOME/.cache/gapmeter}"
VENV="$CACHE_DIR/venv-torch-$TORCH_VERSION"
MARKER="$VENV/.gapmeter-complete"
PYTHON="${PYTHON:-python3}"

if [[ -f "$MARKER" ]]; then
  exit 0
fi

# Several builds may start at once (parallel make targets, two checkouts): one installs, the
# others wait for it and then find the marker, instead of deleting the venv under each other.
mkdir -p "$CACHE_DIR"
exec 9>"$CACHE_DIR/.setup-libtorch.lock"
flock 9
if [[ -f "$MARKER" ]]; then
  exit 0
fi

echo "setup-libtorch: installing torch==$TORCH_VERSION into $VENV (one time, ~1.5 min, ~4.7 GB)" >&2
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  "torch==$TORCH_VERSION" "numpy>=1.26,<3" "pillow>=10"
"$VENV/bin/python" - <<PY
import torch
assert torch.__version__.split("+")[0] == "$TORCH_VERSION", torch.__version__
PY
touch "$MARKER"
echo "setup-libtorch: done" >&2
