#!/usr/bin/env bash
# cptrain speed: training throughput (samples/s) and time per epoch on the
# DSB2018 fluorescence train split, from a few steps extrapolated, for the
# built-in model's network (nbase 16..128, 128 tiles) and Cellpose's default
# (32..256, 224 tiles). Goal: the built-in recipe (100 epochs x 112 samples)
# in about an hour on 2 cores.
set -u
BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
B=$ROOT/$BUILD
DSB=${CP_SHARED:-$ROOT/../shared}/data/dsb2018
TMP=$(mktemp -d "${TMPDIR:-/tmp}/cptbench.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/train"
awk -F'\t' 'NR > 1 && $2 == "fluorescence" && $6 == "train" { print $1 }' "$DSB/index.tsv" |
while read -r id; do ln -s "$DSB/${id}_img.png" "$DSB/${id}_masks.tif" "$TMP/train/"; done
ntrain=$(ls "$TMP/train" | grep -c '_img\.png$')
load=$(cut -d' ' -f1 /proc/loadavg)
run() { # label threads nsamples cptrain-options...
    local label=$1 th=$2 ns=$3; shift 3
    local t0 t1 out rate
    t0=$(date +%s.%N)
    out=$("$B/bin/cptrain" --train "$TMP/train" -o "$TMP/m.pth" --epochs 1 --nimg-per-epoch "$ns" \
          --threads "$th" --seed 1 "$@" 2>&1) || { echo "cptrain $label: failed: $out"; return; }
    t1=$(date +%s.%N)
    rate=$(sed -n 's/.* \([0-9.]*\) samples\/s.*/\1/p' <<< "$out")
    awk -v l="$label" -v th="$th" -v r="$rate" -v n="$ntrain" -v w="$(awk "BEGIN{print $t1 - $t0}")" -v ld="$load" 'BEGIN {
        printf "cptrain %s, %d thread(s): %.2f samples/s, %.0f s per epoch of the %d DSB fluorescence train images", l, th, r, n / r, n
        printf " (run incl. loading %d images and their flows: %.0f s); load average %s\n", n, w, ld
        if (l ~ /built-in/) printf "cptrain built-in recipe (100 x 112 samples) extrapolated: %.0f min (goal ~60: ratio %.2f)\n", 11200 / r / 60, 11200 / r / 3600
    }'
}
for th in 1 2; do
    run "built-in net (nbase 16,32,64,128, bsize 128, batch 8)" $th 32 --nbase 16,32,64,128 --bsize 128 --no-rescale
done
run "Cellpose default net (nbase 32,64,128,256, bsize 224, batch 8)" 1 16 --bsize 224
