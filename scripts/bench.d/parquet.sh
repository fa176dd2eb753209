#!/usr/bin/env bash
# spotquery reading an 8-million-row snappy Parquet table (SeeSpot's merged
# <dataset>.parquet cache, 28 columns): wall time and peak RSS of `summary`
# (reads only the columns it needs) and of `spots --valid-only --sample 5000`.
# Goal: summary under 2 s on 2 cores.
# The table is written once: by parquet_gen.mjs with node and the npm package
# parquet-wasm (an independent writer, dictionary pages) when
# PARQUET_BENCH_NODE_PATH names a node_modules folder holding parquet-wasm and
# apache-arrow; otherwise by `spotquery spots --format parquet` from the
# generated 8M-spot dataset of spotquery.sh (PLAIN pages). PARQUET_BENCH_FILE
# names an existing table instead.
#   scripts/bench.d/parquet.sh BUILD_DIR
set -u
BUILD=${1:-build}
SQ=$BUILD/bin/spotquery
N=${PARQUET_BENCH_ROWS:-8000000}
F=${PARQUET_BENCH_FILE:-${TMPDIR:-/tmp}/spotquery-bench-$N.parquet}
[ -x "$SQ" ] || { echo "parquet: $SQ not built"; exit 1; }
if [ ! -s "$F" ]; then
    NP=${PARQUET_BENCH_NODE_PATH:-}
    t0=$(date +%s.%N)
    if [ -n "$NP" ] && command -v node > /dev/null && [ -d "$NP/parquet-wasm" ]; then
        how="parquet-wasm"
        NODE_PATH=$NP node "$(dirname "$0")/parquet_gen.mjs" "$N" "$F" || exit 1
    else
        how="spotquery spots --format parquet"
        DS=${TMPDIR:-/tmp}/spotquery-bench-$N
        if [ ! -s "$DS/image_spot_spectral_unmixing/unmixed_spots_R1_minDist_3.csv" ]; then
            "$SQ" gen-synthetic --spots "$N" --seed 1 --cells 100000 "$DS" || exit 1
        fi
        "$SQ" spots --format parquet -o "$F" "$DS" || exit 1
    fi
    echo "parquet bench: wrote $N rows with $how in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s ($(du -h "$F" | cut -f1))"
fi
run() { # label goal command...
    local label=$1 goal=$2; shift 2
    local tf; tf=$(mktemp)
    /usr/bin/time -f '%e %U %S %M' -o "$tf" "$@" > /dev/null || { echo "parquet bench: $label failed"; rm -f "$tf"; return; }
    read -r sec us ss kb < "$tf"; rm -f "$tf"
    awk -v l="$label" -v s="$sec" -v c="$us $ss" -v k="$kb" -v n="$N" -v g="$goal" -v ld="$(cut -d' ' -f1 /proc/loadavg)" 'BEGIN{
        split(c, cc, " ");
        printf "parquet %-34s %d rows: %6.2f s wall (%.2fx of the %g s goal), %6.2f s CPU, peak RSS %4.0f MB, load %s\n",
               l, n, s, s/g, g, cc[1]+cc[2], k/1024, ld}'
}
run "summary" 2 "$SQ" summary "$F"
run "counts" 10 "$SQ" counts "$F"
run "spots --valid-only --sample 5000" 10 "$SQ" spots --valid-only --sample 5000 "$F"
