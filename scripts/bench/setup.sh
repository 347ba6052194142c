#!/usr/bin/env bash
# Creates ~/.cache/gapmeter/venv-bench with clean-fid 0.1.35 and pytorch-fid 0.3.0 (for
# `make bench-e2e`, and for the tests that check .npz statistics against pytorch-fid) and prints
# its python's path. It reuses the torch of the libtorch venv (a .pth file points at it) instead of
# installing a second 4.7 GB torch, so both sides of the comparison run the very same libtorch.
# Run through scripts/with-libtorch.sh (it sets GAPMETER_VENV).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${GAPMETER_CACHE:-$HOME/.cache/gapmeter}"
venv="$cache/venv-bench"
stamp="$venv/.requirements-$(sha256sum "$here/requirements.txt" | cut -c1-16)"
: "${GAPMETER_VENV:?run through scripts/with-libtorch.sh}"
mkdir -p "$cache"
exec 9>"$cache/.setup-bench.lock"
flock 9
if [[ ! -f "$stamp" ]]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  site=$(echo "$venv"/lib/python3*/site-packages)
  echo "$(echo "$GAPMETER_VENV"/lib/python3*/site-packages)" > "$site/gapmeter-torch.pth"
  # --no-deps: clean-fid and torchvision would otherwise pull a second torch.
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    -r "$here/requirements.txt" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "numpy>=1.26,<3" "scipy>=1.11,<1.18" "pillow>=10" tqdm requests >&2
  "$venv/bin/python" -c "import torch, cleanfid.fid, pytorch_fid.fid_score" >&2
  touch "$stamp"
fi
echo "$venv/bin/python"
