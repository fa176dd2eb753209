#!/usr/bin/env bash
# Network speed: the cyto3-shaped CPnet on batches of 8 tiles of 224 (what a
# diameter-30 image costs), its convolution FLOPs, the GFLOP/s achieved and
# the ratio to the best 3x3 convolution this libtorch runs on this machine
# (timed in the same process), in float32 and in bfloat16 (the ratio is to
# the float32 peak either way), with the process's peak RSS.
# Usage: scripts/bench.d/net.sh BUILD_DIR
# CP_THREADS=n sets the thread count (default: all cores); CP_BENCH_REPS=n.
set -eu
BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export CP_SHARED=${CP_SHARED:-$(cd "$ROOT/.." && pwd)/shared}
exe=$BUILD/tests/test_net
[ -x "$exe" ] || { echo "net.sh: $exe not built (make tests)" >&2; exit 2; }
for p in fp32 bf16; do
    CP_BENCH=1 CP_BENCH_PRECISION=$p "$exe"
done
