#!/bin/sh
# Train cptools' built-in nuclei model (lib/net/models/cptools_nuclei.pth)
# with cptrain on the DSB2018 fluorescence images of the train split.
#
#   scripts/train-builtin.sh [BUILD [OUTDIR]]
#
# BUILD: build folder with bin/cptrain (default build). OUTDIR: where the
# model, checkpoint and loss log go (default builtin-run). Data:
# $CP_SHARED/data/dsb2018 (default ../shared). Deterministic for this seed
# and thread count: the run that made the shipped model used exactly this.
set -eu
BUILD=${1:-build}
OUT=${2:-builtin-run}
SHARED=${CP_SHARED:-$(cd "$(dirname "$0")/../.." && pwd)/shared}
DSB=$SHARED/data/dsb2018
mkdir -p "$OUT/train" "$OUT/val"
# the fluorescence pairs of each split, as links
awk -F'\t' 'NR > 1 && $2 == "fluorescence" { print $1, $6 }' "$DSB/index.tsv" |
while read -r id split; do
    ln -sf "$DSB/${id}_img.png" "$OUT/$split/"
    ln -sf "$DSB/${id}_masks.tif" "$OUT/$split/"
done
# 100 epochs of 112 tiles (Cellpose's schedule: warm-up over 10 epochs,
# halvings every 5 over the last 50)
exec "$BUILD/bin/cptrain" -v \
    --train "$OUT/train" --val "$OUT/val" \
    --nbase 2,16,32,64,128 --bsize 128 --batch-size 8 \
    --no-rescale --diam-mean 30 \
    --epochs 100 --nimg-per-epoch 112 --val-every 10 \
    --lr 0.005 --weight-decay 1e-5 --seed 1 --threads 1 \
    --checkpoint-every 5 --log "$OUT/loss.csv" \
    -o "$OUT/cptools_nuclei.pth"
