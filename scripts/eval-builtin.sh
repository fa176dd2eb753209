#!/bin/sh
# AP of a model (default: the built-in one) on the DSB2018 fluorescence images
# of the val split, as reported for cptools' built-in model:
#
#   scripts/eval-builtin.sh [BUILD [OUTDIR [cpseg options...]]]
#
# Writes OUTDIR/masks/*_cp_masks.tif and OUTDIR/ap.csv (cpmetrics --truth rows:
# one per image and threshold, then the pooled ALL rows) and prints, per IoU
# threshold, the pooled AP (ALL row) and the mean of the per-image APs.
set -eu
BUILD=${1:-build}
OUT=${2:-builtin-eval}
[ $# -ge 2 ] && shift 2 || shift $#
SHARED=${CP_SHARED:-$(cd "$(dirname "$0")/../.." && pwd)/shared}
DSB=$SHARED/data/dsb2018
mkdir -p "$OUT/img" "$OUT/gt"
awk -F'\t' 'NR > 1 && $2 == "fluorescence" && $6 == "val" { print $1 }' "$DSB/index.tsv" |
while read -r id; do
    ln -sf "$DSB/${id}_img.png" "$OUT/img/"
    # named so that the truth pairs with cpseg's NAME_img_cp_masks.tif
    ln -sf "$DSB/${id}_masks.tif" "$OUT/gt/${id}_img_masks.tif"
done
"$BUILD/bin/cpseg" -q --savedir "$OUT/masks" "$@" "$OUT/img"
"$BUILD/bin/cpmetrics" --truth "$OUT/gt" -o "$OUT/ap.csv" "$OUT/masks"
awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
    $c["image"] == "ALL" { pooled[$c["threshold"]] = $c["ap"]; next }
    { s[$c["threshold"]] += $c["ap"]; n[$c["threshold"]]++ }
    END { for (t in pooled) printf "IoU %s: AP pooled %.4f, mean over %d images %.4f\n", t, pooled[t], n[t], s[t] / n[t] }' \
    "$OUT/ap.csv" | sort
