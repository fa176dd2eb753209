#!/usr/bin/env bash
# Cellpose-SAM at full size: the ViT-L architecture (24 blocks, width 1024,
# 1024 tokens per 256x256 tile) with seeded weights (../shared/ref/
# make_weights.py cpsam --config vit_l, 1.2 GB, made once and kept in
# $CP_BENCH_CPSAM, default /tmp/cptools_bench_cpsam_vitl.pth).
# 1. The network alone (test_net in CP_BENCH=vit mode), fp32 and bf16, each
#    in its own process: seconds per tile, GFLOP/s, the ratio to the fp32
#    matrix-multiply peak measured in the same process, peak RSS.
# 2. End to end on the 256x256 DSB image of cpseg.sh (2x2 tiles): cpseg
#    --precision fp32 and bf16, and, when the reference sources are set up,
#    Python Cellpose 4 (../shared/ref/peer/cellpose4_eval.py, 2 threads) on
#    the same image and weights in the same run (rounds alternating, best of
#    CP_BENCH_E2E_REPS=2 each), with the ratios
#    (goals: fp32 >= 2x, bf16 >= 4x Python Cellpose 4 fp32).
# Usage: scripts/bench.d/cpsam.sh BUILD_DIR
set -eu
BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SHARED=${CP_SHARED:-$(cd "$ROOT/.." && pwd)/shared}
export CP_SHARED=$SHARED
BIN=$ROOT/$BUILD/bin
W=${CP_BENCH_CPSAM:-/tmp/cptools_bench_cpsam_vitl.pth}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
. "$ROOT/scripts/bench.d/peer.inc"

if [ ! -s "$W" ]; then
    if [ $peer4_ok = 0 ] || ! /usr/bin/python3 "$SHARED/ref/make_weights.py" cpsam "$W.tmp" --config vit_l \
        > "$T/mkw.log" 2>&1; then
        rm -f "$W.tmp"
        echo "cpsam: no ViT-L weights ($W) and cannot make them (reference sources: ../shared/ref/README.md)"
        exit 0
    fi
    mv "$W.tmp" "$W"
fi

for p in fp32 bf16; do
    CP_BENCH_REPS=${CP_BENCH_REPS:-3} CP_BENCH=vit CP_BENCH_WEIGHTS=$W CP_BENCH_PRECISION=$p "$ROOT/$BUILD/tests/test_net"
done

dsb=$(awk -F'\t' '$2=="fluorescence" && $3==256 && $4==256 {print $1; exit}' "$SHARED/data/dsb2018/index.tsv")
# as TIFF (Python Cellpose 4's loader here is tifffile), the same pixels for both
img=$T/dsb.tif
/usr/bin/python3 -c 'import sys, skimage.io, tifffile; tifffile.imwrite(sys.argv[2], skimage.io.imread(sys.argv[1]))' \
    "$SHARED/data/dsb2018/${dsb}_img.png" "$img"
# Rounds of cpseg fp32, cpseg bf16 and Python alternate, and each keeps its
# fastest round: the host's speed drifts over minutes, and alternating lets
# the drift touch both sides alike.
REPS=${CP_BENCH_E2E_REPS:-2}
# Each run leaves one record "rss wall user sys inner", inner being the
# network seconds (cpseg's manifest) or the eval seconds (Python's output).
best() { # FILES...: the record with the least wall time
    cat "$@" 2> /dev/null | sort -k2,2g | head -1
}
for rep in $(seq "$REPS"); do
    for p in fp32 bf16; do
        rm -rf "$T/out" "$T/m.jsonl"
        /usr/bin/time -f '%M %e %U %S' -o "$T/time" "$BIN/cpseg" -q --model "$W" --precision $p \
            --savedir "$T/out" --manifest "$T/m.jsonl" "$img"
        echo "$(cat "$T/time") $(/usr/bin/python3 -c 'import json,sys
print(json.loads(open(sys.argv[1]).readline())["seconds"]["network"])' "$T/m.jsonl")" > "$T/run.$p.$rep"
    done
    if [ $peer4_ok = 1 ] && /usr/bin/time -f '%M %e %U %S' -o "$T/time" /usr/bin/python3 \
        "$SHARED/ref/peer/cellpose4_eval.py" "$img" "$W" fp32 > "$T/peer.out" 2> "$T/peer.err"; then
        echo "$(cat "$T/time") $(sed -n 's/.* eval \([0-9.]*\)s.*/\1/p' "$T/peer.out")" > "$T/run.peer.$rep"
    fi
done
pwall=0 prss=0 peval=0 pcpu=0
if [ -n "$(best "$T"/run.peer.*)" ]; then
    read -r prss pwall pu ps peval <<< "$(best "$T"/run.peer.*)"
    pcpu=$(awk -v u="$pu" -v s="$ps" 'BEGIN {print u + s}')
fi
pbf16="not run (reference sources not set up)"
if [ $peer4_ok = 1 ]; then
    if /usr/bin/time -f '%M %e' -o "$T/ptime16" /usr/bin/python3 "$SHARED/ref/peer/cellpose4_eval.py" \
        "$img" "$W" bf16 > "$T/peer16.out" 2> "$T/peer16.err"; then
        read -r r16 w16 < "$T/ptime16"
        pbf16="$w16 s, peak RSS $((r16 / 1024)) MB"
    else
        pbf16="fails on this torch ($(/usr/bin/python3 -c 'import torch; print(torch.__version__)' 2> /dev/null)): $(grep -v '^ ' "$T/peer16.err" | tail -1 | cut -c1-100)"
    fi
fi
for p in fp32 bf16; do
    read -r rss wall user sys net <<< "$(best "$T"/run.$p.*)"
    awk -v p="$p" -v d="$dsb" -v r="$rss" -v w="$wall" -v u="$user" -v s="$sys" -v n="$net" \
        -v reps="$REPS" -v pw="$pwall" -v pr="$prss" -v pe="${peval:-0}" -v pc="$pcpu" 'BEGIN {
        printf "cpsam end to end, DSB 256x256 (%s, 4 tiles), best of %d alternating rounds, cpseg --precision %s: %.2f s wall (network %.2f s, CPU %.1f s), peak RSS %.0f MB", d, reps, p, w, n, u + s, r / 1024
        if (pw > 0)
            printf "; Python Cellpose 4 fp32 in this run %.2f s (eval %.2f s, CPU %.1f s), peak RSS %.0f MB -> %.2fx faster (goal %s; %.2fx in CPU time), RSS %.2fx lower\n", pw, pe, pc, pr / 1024, pw / w, p == "fp32" ? ">= 2x" : ">= 4x", pc / (u + s), pr / r
        else
            printf "; peer not available (reference sources or python3-torch missing: ../shared/ref/README.md)\n"
    }'
done
echo "cpsam: Python Cellpose 4 bf16 (its default): $pbf16"
echo "load average while measuring: $(cut -d' ' -f1-3 /proc/loadavg)"
