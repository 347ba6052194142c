#!/usr/bin/env bash
# Runs a command with the pinned libtorch installed (scripts/setup-libtorch.sh) and the LIBTORCH*
# variables that torch-sys reads. Keep these values stable: any change re-triggers a multi-minute
# rebuild of torch-sys.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$here/setup-libtorch.sh"

CACHE_DIR="${GAPMETER_CACHE:-$HOME/.cache/gapmeter}"
export GAPMETER_VENV="$CACHE_DIR/venv-torch-2.11.0"
site=$(echo "$GAPMETER_VENV"/lib/python3*/site-packages)
export LIBTORCH="$site/torch"
export LIBTORCH_CXX11_ABI=1
unset LIBTORCH_USE_PYTORCH LIBTORCH_INCLUDE LIBTORCH_LIB LIBTORCH_STATIC TORCH_CUDA_VERSION
export GAPMETER_PYTHON="$GAPMETER_VENV/bin/python"
export GAPMETER_MODELS_DIR="${GAPMETER_MODELS_DIR:-$CACHE_DIR/models}"
exec "$@"
