#!/usr/bin/env bash
# The GPU benchmark: one prepared script for a lent GPU machine, under 8 minutes. Build here, carry
# the binary, run it there (docs/performance.md, "GPU"):
#
#   make gpu-bench-binary          # here: gpu-bench/gapmeter, stripped, linked against torch 2.11.0
#   scripts/gpu-bench.sh gpu-bench/gapmeter "$OUT"    # there, in the repository root
#
# There it links the machine's own PyTorch 2.11.0+cu130 (the same build PyPI's torch==2.11.0 is),
# writes the seeded test models with that PyTorch, generates JPEGs and features, and measures:
#   1. JPEG folder -> features, images/s, batch 64 and 256, on cuda:0 and on all GPUs;
#   2. the largest relative difference between CPU and GPU features of the same images;
#   3. FID, KID and PRDC on synthetic float32 features at d = 2048, on the CPU and on cuda:0
#      (--metrics-device), wall time each and the largest relative difference of the values;
#   4. --precision fp16 and bf16: images/s, and the deviation the run itself reports.
# Every figure printed is measured in this run; the table also goes to $OUT/gpu-bench.md.
set -euo pipefail
BIN="$(realpath "${1:-gpu-bench/gapmeter}")"
OUT="$(mkdir -p "${2:-${OUT:-/tmp/gpu-bench}}" && realpath "${2:-${OUT:-/tmp/gpu-bench}}")"
PY="${PYTHON:-python3}"
IMAGES="${GPU_BENCH_IMAGES:-1024}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
started=$SECONDS

torch_lib="$("$PY" - <<'PY'
import os, torch
assert torch.__version__.split("+")[0] == "2.11.0", f"need torch 2.11.0, found {torch.__version__}"
print(os.path.join(os.path.dirname(torch.__file__), "lib"))
PY
)"
export LD_LIBRARY_PATH="$torch_lib:${LD_LIBRARY_PATH:-}"
export GAPMETER_MODELS_DIR="$OUT/models"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpus.txt"
gpus=$(wc -l < "$OUT/gpus.txt")
"$BIN" --version

echo "== models and data"
"$PY" "$here/make_test_models.py" --out "$GAPMETER_MODELS_DIR" --only inception-v3-fid-untrained >&2
"$PY" "$here/bench/e2e.py" --make-sets-only --images "$IMAGES" --cache "$OUT/data" > "$OUT/sets.txt"
read -r A B < "$OUT/sets.txt"

table="$OUT/gpu-bench.md"
{
  echo "| measurement | value |"
  echo "|---|---|"
} > "$table"
row() { echo "| $1 | $2 |" | tee -a "$table"; }

echo "== 1. JPEG folder -> features"
extract_rate() { # devices batch
  local t0 t1
  t0=$(date +%s.%N)
  "$BIN" extract "$A" -o "$OUT/tmp.npy" --extractor inception-v3-fid-untrained \
    --devices "$1" --batch-size "$2" --no-progress >/dev/null
  t1=$(date +%s.%N)
  "$PY" -c "print(f'{$IMAGES / ($t1 - $t0):.1f}')"
}
"$BIN" extract "$A" -o "$OUT/warm.npy" --extractor inception-v3-fid-untrained --devices cuda:0 \
  --batch-size 64 --no-progress >/dev/null
for batch in 64 256; do
  row "features, $IMAGES JPEGs, cuda:0, batch $batch (images/s, whole run)" "$(extract_rate cuda:0 "$batch")"
  if (( gpus > 1 )); then
    row "features, $IMAGES JPEGs, all $gpus GPUs, batch $batch (images/s, whole run)" "$(extract_rate all "$batch")"
  fi
done

echo "== 2. CPU vs GPU features (first 64 images)"
mkdir -p "$OUT/sub"
find "$A" -name '*.jpg' | sort | head -64 | xargs -I{} cp {} "$OUT/sub/"
"$BIN" extract "$OUT/sub" -o "$OUT/cpu.npy" --extractor inception-v3-fid-untrained --devices cpu --batch-size 16 --no-progress >/dev/null
"$BIN" extract "$OUT/sub" -o "$OUT/gpu.npy" --extractor inception-v3-fid-untrained --devices cuda:0 --batch-size 64 --no-progress >/dev/null
row "largest relative difference, CPU vs GPU features" "$("$PY" - "$OUT" <<'PY'
import sys, numpy as np
c, g = np.load(f"{sys.argv[1]}/cpu.npy").astype(np.float64), np.load(f"{sys.argv[1]}/gpu.npy").astype(np.float64)
print(f"{(np.abs(c - g) / np.maximum(np.abs(c), 1e-6)).max():.1e} (max abs {np.abs(c - g).max():.1e})")
PY
)"
echo "== 3. metrics on the device, d = 2048"
N_METRICS="${GPU_BENCH_METRIC_N:-10000}"
"$PY" - "$OUT" "$N_METRICS" <<'PY'
import sys, numpy as np
out, n = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(7)
np.save(f"{out}/fa.npy", rng.standard_normal((n, 2048), dtype=np.float32))
np.save(f"{out}/fb.npy", (rng.standard_normal((n, 2048), dtype=np.float32) * 1.1 + 0.05).astype(np.float32))
PY
for metric in fid kid prdc; do
  for dev in cpu cuda:0; do
    t0=$(date +%s.%N)
    "$BIN" score "$OUT/fa.npy" "$OUT/fb.npy" --metrics "$metric" --metrics-device "$dev" \
      --format json --no-progress > "$OUT/m-$metric-${dev/:/}.json"
    t1=$(date +%s.%N)
    row "$metric, $N_METRICS vs $N_METRICS x 2048, metrics on $dev (s, whole run)" "$("$PY" -c "print(f'{$t1 - $t0:.2f}')")"
  done
  row "$metric: largest relative difference, cuda:0 vs cpu values" "$("$PY" - "$OUT/m-$metric-cpu.json" "$OUT/m-$metric-cuda0.json" <<'PY'
import json, sys
a, b = (json.load(open(p))["metrics"] for p in sys.argv[1:3])
def leaves(x, path=""):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from leaves(v, f"{path}.{k}")
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        yield path, float(x)
la, lb = dict(leaves(a)), dict(leaves(b))
worst = max((abs(la[k] - lb[k]) / max(abs(la[k]), 1e-300), k) for k in la)
print(f"{worst[0]:.1e} ({worst[1][1:]})")
PY
)"
done

echo "== 4. reduced precision"
for precision in fp16 bf16; do
  t0=$(date +%s.%N)
  "$BIN" extract "$A" -o "$OUT/tmp.npy" --extractor inception-v3-fid-untrained --devices cuda:0 \
    --batch-size 256 --precision "$precision" --no-progress 2> "$OUT/precision-$precision.txt" >/dev/null
  t1=$(date +%s.%N)
  row "features, $IMAGES JPEGs, cuda:0, batch 256, $precision (images/s, whole run)" "$("$PY" -c "print(f'{$IMAGES / ($t1 - $t0):.1f}')")"
  row "$precision: what the run reports" "$(grep -o 'on the first batch.*' "$OUT/precision-$precision.txt" | head -1)"
done

echo "gpu-bench: done in $((SECONDS - started)) s; table in $table"
