#!/usr/bin/env bash
# Dynamics (flows -> masks) speed: Euler, seeds, flow QC, fill holes, per stage,
# on the golden 512x512 GT flows and on a 2048x2048 image tiled from dense
# DSB2018 label images (~4,000 cells; flows made with masks_to_flows), for the
# v3 and v4 variants, with the ratio to Cellpose 3 (~0.3 s for a 512x512 image
# with 40 cells on this machine, per megapixel). The bench is a mode of the
# dynamics unit-test binary (CP_BENCH=1). Usage: dynamics.sh BUILD_DIR
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
