#!/bin/sh
# Train cptools' built-in nuclei model (lib/net/models/cptools_nuclei.pth)
# with cptrain on the DSB2018 fluorescence images of the train split.
#
#   scripts/train-builtin.sh [BUILD [OUTDIR [STEP]]]
#
# BUILD: build folder with bin/cptrain (default build). OUTDIR: where the
# model, checkpoint and loss log go (default builtin-run). STEP: all
# (default), seg (the network) or size (its size model,
# OUTDIR/cptools_nuclei.pth_size.npy, for the network already in
# OUTDIR/cptools_nuclei.pth: copy lib/net/models/cptools_nuclei.pth there to
# remake the shipped size model). RECIPE=scale in the environment: the
# scale-augmented fine-tune of the shipped model (issue 22, see
# lib/net/models/README.md) instead of the training from scratch;
# RECIPE=scale-long the same with 112 tiles per epoch (1,400 steps). A run
# that was interrupted continues from OUTDIR/cptools_nuclei.pth.ckpt
# (the same command again). Data:
# $CP_SHARED/data/dsb2018 (default ../shared). Deterministic for this seed
# and thread count: the run that made the shipped model used exactly this.
set -eu
BUILD=${1:-build}
OUT=${2:-builtin-run}
STEP=${3:-all}
SHARED=${CP_SHARED:-$(cd "$(dirname "$0")/../.." && pwd)/shared}
DSB=$SHARED/data/dsb2018
mkdir -p "$OUT/train" "$OUT/val"
# the fluorescence pairs of each split, as links
awk -F'\t' 'NR > 1 && $2 == "fluorescence" { print $1, $6 }' "$DSB/index.tsv" |
while read -r id split; do
    ln -sf "$DSB/${id}_img.png" "$OUT/$split/"
    ln -sf "$DSB/${id}_masks.tif" "$OUT/$split/"
done
# Cellpose's schedule: warm-up over 10 epochs, halvings every 5 over the
# last 50 of 100
if [ "${RECIPE:-base}" = scale ] || [ "${RECIPE:-base}" = scale-long ]; then
    # fine-tune the shipped model with scales 0.5..2 (log-symmetric), so
    # that nuclei half and twice DSB's size are found at the fixed scale
    START="--pretrained $(dirname "$0")/../lib/net/models/cptools_nuclei.pth"
    RECIPE_OPTS="--scale-max 2 --epochs 100 --nimg-per-epoch 24 --val-every 50 --lr 0.003 --seed 3"
    [ "$RECIPE" = scale-long ] && RECIPE_OPTS="--scale-max 2 --epochs 100 --nimg-per-epoch 112 --val-every 25 --lr 0.003 --seed 3"
else  # the shipped model: 100 epochs of 112 tiles from scratch
    START="--nbase 2,16,32,64,128 --diam-mean 30"
    RECIPE_OPTS="--epochs 100 --nimg-per-epoch 112 --val-every 10 --lr 0.005 --seed 1"
fi
if [ -f "$OUT/cptools_nuclei.pth.ckpt" ]; then
    START="--resume $OUT/cptools_nuclei.pth.ckpt"
fi
if [ "$STEP" != size ]; then
    # shellcheck disable=SC2086
    "$BUILD/bin/cptrain" -v \
        --train "$OUT/train" --val "$OUT/val" $START \
        --bsize 128 --batch-size 8 --no-rescale $RECIPE_OPTS \
        --weight-decay 1e-5 --threads 1 \
        --checkpoint-every 5 --log "$OUT/loss.csv" \
        -o "$OUT/cptools_nuclei.pth"
fi
# The size model (Cellpose's train_size: styles of randomly scaled crops, ridge
# regression of the log diameter): 5 passes over the training images with
# 224-pixel crops, the tile size cpseg's size pass computes styles on
# (Cellpose: 10 passes, 512-pixel crops); the val images give the test
# correlation.
if [ "$STEP" != seg ]; then
    "$BUILD/bin/cptrain" -v \
        --train "$OUT/train" --val "$OUT/val" \
        --pretrained "$OUT/cptools_nuclei.pth" --train-size \
        --size-epochs 5 --size-bsize 224 --seed 1 --threads 1
fi
