#!/usr/bin/env bash
# Blockwise 3D segmentation (cpseg --plan / --block K/N / --merge), stitch
# mode, the nuclei-like CPnet of the golden set at diameter 17: two volumes
# of synthetic nuclei (make_golden_3d.py synth3d, seed 7), 32x192x192 and
# 32x384x384 (4x the voxels), the same blocks (32,96,96, overlap 24). Per
# volume: plan seconds, blocks per minute (one job at a time, 1 thread each,
# then two jobs at once), the largest peak RSS of a block job (goal: the same
# for both volumes, since it is bounded by the block), and the merge
# (OME-Zarr output) seconds and peak RSS.
# Usage: scripts/bench.d/blocks.sh BUILD_DIR
set -eu
BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SHARED=${CP_SHARED:-$(cd "$ROOT/.." && pwd)/shared}
SEG=$ROOT/$BUILD/bin/cpseg
W=$SHARED/golden/weights/cpnet_nucleilike_s2_legacy.pth
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

for size in 192 384; do
    n=$((size * size * 120 / (256 * 256)))
    /usr/bin/python3 "$SHARED/ref/make_golden_3d.py" synth3d "$T" --shape 32,$size,$size --n $n --seed 7 \
        --diam 17 --name v$size > /dev/null
    V=$T/v$size.tif
    [ -f "$V" ] || { echo "blocks: no volume made (make_golden_3d.py synth3d)"; exit 1; }
    t0=$(date +%s.%N)
    N=$("$SEG" -q --plan --blocks "$T/w$size" --block-size 32,96,96 --overlap 24 --model "$W" --diameter 17 \
        --stitch-threshold 0.5 "$V")
    t1=$(date +%s.%N)
    rss=0
    for k in $(seq 0 $((N - 1))); do
        /usr/bin/time -f '%M' -o "$T/time" "$SEG" -q --threads 1 --blocks "$T/w$size" --block "$k/$N"
        r=$(cat "$T/time"); [ "$r" -gt "$rss" ] && rss=$r
    done
    t2=$(date +%s.%N)
    rm -rf "$T/w$size/blocks"
    k=0
    while [ $k -lt "$N" ]; do
        "$SEG" -q --threads 1 --blocks "$T/w$size" --block "$k/$N" &
        [ $((k + 1)) -lt "$N" ] && "$SEG" -q --threads 1 --blocks "$T/w$size" --block "$((k + 1))/$N" &
        wait
        k=$((k + 2))
    done
    t3=$(date +%s.%N)
    /usr/bin/time -f '%M %e' -o "$T/mtime" "$SEG" -q --merge "$T/w$size" -o "$T/out$size.zarr"
    read -r mrss mwall < "$T/mtime"
    awk -v s=$size -v N="$N" -v p="$(echo "$t1 - $t0" | bc)" -v one="$(echo "$t2 - $t1" | bc)" \
        -v two="$(echo "$t3 - $t2" | bc)" -v rss="$rss" -v mw="$mwall" -v mr="$mrss" 'BEGIN {
        printf "blocks 32x%dx%d, %d blocks of 32x96x96 (+24): plan %.2f s; %.1f blocks/min with 1 job, %.1f with 2 jobs (x%.2f); peak RSS per block job %.0f MB; merge to OME-Zarr %.2f s, %.0f MB\n",
            s, s, N, p, N * 60 / one, N * 60 / two, one / two, rss / 1024, mw, mr / 1024 }'
done
