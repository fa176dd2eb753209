#!/usr/bin/env bash
# Dynamics (flows -> masks) speed: Euler, seeds, flow QC, fill holes, per stage,
# on the golden 512x512 GT flows and on a 2048x2048 image tiled from dense
# DSB2018 label images (~4,000 cells; flows made with masks_to_flows), for the
# v3 and v4 variants, with the ratio to Cellpose 3 (~0.3 s for a 512x512 image
# with 40 cells on this machine, per megapixel). The bench is a mode of the
# dynamics unit-test binary (CP_BENCH=1).
# Then the same step as a whole process, as a Makefile pipeline pays it once
# per image: wall time and peak RSS (median of 5 runs) of `cpseg --version`
# and of `cpseg --from-flows` on a 512x512 flow field (the built-in model's
# flows of testdata/demo/nuclei.tif, 107 nuclei), next to the dynamics time
# inside that run (from its manifest). libtorch is loaded only when a network
# runs, so neither pays its start-up. Usage: dynamics.sh BUILD_DIR
set -eu
BUILD=${1:-build}
cd "$(dirname "$0")/../.."
export CP_SHARED=${CP_SHARED:-$(cd .. && pwd)/shared}
BIN=$BUILD/tests/test_dynamics
[ -x "$BIN" ] || make -s BUILD="$BUILD" "$BIN"
for t in 1 2; do
    echo "== OMP_NUM_THREADS=$t"
    OMP_NUM_THREADS=$t CP_BENCH=1 "$BIN"
done

T=$(mktemp -d "${TMPDIR:-/tmp}/dynbench.XXXXXX")
trap 'rm -rf "$T"' EXIT
SEG=$BUILD/bin/cpseg
"$SEG" -q --save flows --savedir "$T/in" testdata/demo/nuclei.tif 2> /dev/null  # untimed: makes the input
# median5 CMD...: "wall_s rss_kb dynamics_s" (each the median of 5 runs)
median5() {
    local i
    for i in 1 2 3 4 5; do
        rm -f "$T/m.jsonl"
        local t0 t1
        t0=$(date +%s%N)
        /usr/bin/time -f '%M' -o "$T/rss" "$@" > /dev/null || return 1
        t1=$(date +%s%N)
        local dyn=0
        [ -s "$T/m.jsonl" ] && dyn=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["seconds"]["dynamics"])' "$T/m.jsonl")
        echo "$(( (t1 - t0) / 1000 )) $(cat "$T/rss") $dyn"
    done > "$T/runs"
    local c
    for c in 1 2 3; do cut -d' ' -f$c "$T/runs" | sort -g | sed -n 3p; done | tr '\n' ' ' |
        awk '{ printf "%.4f %d %.4f\n", $1 / 1e6, $2, $3 }'
}
echo "== whole process (OMP_NUM_THREADS unset: all cores; load average $(cut -d' ' -f1 /proc/loadavg))"
read -r vw vr _ <<< "$(median5 "$SEG" --version)"
read -r fw fr fd <<< "$(median5 "$SEG" -q --force --savedir "$T/out" --manifest "$T/m.jsonl" --from-flows "$T/in/nuclei_flows.npy")"
awk -v vw="$vw" -v vr="$vr" -v fw="$fw" -v fr="$fr" -v fd="$fd" 'BEGIN {
    printf "cpseg --version, whole process: %.3f s wall, peak RSS %.1f MB (median of 5)\n", vw, vr / 1024
    printf "cpseg --from-flows, 512x512 flows of testdata/demo/nuclei.tif (107 nuclei), whole process: %.3f s wall, peak RSS %.1f MB; dynamics inside it %.3f s: process / dynamics %.1fx; Cellpose 3 dynamics alone (~0.3 s) / this process %.1fx (median of 5)\n", fw, fr / 1024, fd, fw / fd, 0.3 / fw
}'
