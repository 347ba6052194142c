#!/usr/bin/env bash
# Builds the fuzz targets (fuzz/, cargo fuzz) and runs each for FUZZ_SECONDS (default 60), then
# prints per target the executions, the corpus size and the findings (docs/reliability.md,
# "Fuzzing"). Exits non-zero when a target found something: the input is under
# fuzz/artifacts/<target>/, `cargo fuzz run <target> <file>` replays it.
#
#   scripts/fuzz.sh                      every target, FUZZ_SECONDS each
#   scripts/fuzz.sh decode_image         one target
#   FUZZ_SANITIZER=none scripts/fuzz.sh  without AddressSanitizer (faster; Rust code is safe anyway,
#                                        ASan watches the C decoders: libjpeg, zlib...)
#
# Only the stable toolchain is installed: cargo fuzz's nightly flags are allowed through
# RUSTC_BOOTSTRAP=1. cargo-fuzz is installed on first use. The build goes to fuzz/target.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-60}"
sanitizer="${FUZZ_SANITIZER:-address}"
# Seconds one input may take before libFuzzer calls it a hang (its default is 1200).
timeout="${FUZZ_TIMEOUT:-10}"
all=(decode_image walk_archive parse_manifest read_npy_npz multipart_upload)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
# -a: debug assertions and overflow checks, as the dev build has them.
flags=(-a --sanitizer "$sanitizer")

scripts/with-libtorch.sh cargo fuzz build "${flags[@]}"

logs="fuzz/target/logs"
mkdir -p "$logs"
status=0
summary=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    before=$(find "fuzz/artifacts/$t" -type f | wc -l)
    echo "== $t: ${seconds}s"
    set +e
    # The targets link libtorch (through gapmeter) and load it at start.
    scripts/with-libtorch.sh bash -c 'export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; exec "$@"' _ \
        cargo fuzz run "${flags[@]}" "$t" -- \
        -max_total_time="$seconds" -timeout="$timeout" -print_final_stats=1 \
        >"$logs/$t.log" 2>&1
    rc=$?
    set -e
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logs/$t.log" | grep -o '[0-9]*$' | tail -1)
    rate=$(grep -o 'exec/s: *[0-9]*' "$logs/$t.log" | tail -1 | grep -o '[0-9]*$')
    corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
    after=$(find "fuzz/artifacts/$t" -type f | wc -l)
    found=$((after - before))
    line="$t: ${execs:-?} executions in ${seconds}s (last exec/s ${rate:-?}), corpus $corpus, new findings $found, exit $rc"
    echo "$line"
    summary+=("$line")
    if [ "$rc" -ne 0 ] || [ "$found" -ne 0 ]; then
        status=1
        tail -40 "$logs/$t.log"
        ls -t "fuzz/artifacts/$t" | head -n "$found"
    fi
done
echo
echo "== summary (logs under $logs)"
printf '%s\n' "${summary[@]}"
exit $status
