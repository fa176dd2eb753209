#!/usr/bin/env bash
# Throughput of the scripts/pipelines recipes (images/min) on the first
# BENCH_IMAGES (default 40) fluorescence images of /work/shared/data/dsb2018
# (sorted by id; 256x256 to 1024x1024), segmented with the golden test weights
# cpnet_nucleilike_s2_legacy.pth at --diameter 30 as a stand-in model.
# Measured: cpseg alone with -j 1 / -j 2 (2 threads in all), two shards run
# concurrently (1 thread each), and the whole pipeline (segment, metrics, cell
# ZIPs, merge) through make -j2, the Slurm script's two tasks run
# concurrently, and snakemake --cores 2. Each line gives the ratio to the first
# (cpseg -j 1): the goal is that engines add little to cpseg's own time and
# that 2 processes or shards use both cores (ideal ratio <= 2 on 2 cores).
# The load average is printed: the figures mean little on a busy machine.
set -u
BUILD=${1:-build}
B=$(cd "$BUILD" && pwd)/bin
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
P=$ROOT/scripts/pipelines
SHARED=${CP_SHARED:-$(cd "$ROOT/.." && pwd)/shared}
DSB=$SHARED/data/dsb2018
W8=$SHARED/golden/weights/cpnet_nucleilike_s2_legacy.pth
N=${BENCH_IMAGES:-40}
[ -f "$DSB/index.tsv" ] && [ -f "$W8" ] || { echo "pipelines bench: $DSB or $W8 missing" >&2; exit 1; }
T=$(mktemp -d "${TMPDIR:-/tmp}/pipelines-bench.XXXXXX")
trap 'rm -rf "$T"' EXIT
cd "$T" || exit 1

mkdir in
awk -F'\t' '$2 == "fluorescence" {print $1}' "$DSB/index.tsv" | LC_ALL=C sort | head -n "$N" |
    while read -r id; do ln -s "$DSB/${id}_img.png" "in/$id.png"; done
px=$(awk -F'\t' '$2 == "fluorescence" {print $1, $3 * $4}' "$DSB/index.tsv" | LC_ALL=C sort | head -n "$N" |
    awk '{s += $2} END {printf "%.0f", s / NR}')
echo "pipelines: $N DSB fluorescence images (mean $px pixels), model cpnet_nucleilike_s2_legacy --diameter 30, $(nproc) cores"
echo "pipelines: load average before: $(uptime | sed 's/.*load average: //')"

TOOLS="CPSEG=$B/cpseg CPMETRICS=$B/cpmetrics CPCELLS=$B/cpcells"
SEG="$B/cpseg -q --model $W8 --diameter 30"
base=
run() { # LABEL CMD...: time a clean run, print images/min and the ratio
    local label=$1; shift
    rm -rf out
    local t0 t1
    t0=$(date +%s.%N)
    "$@" > log 2>&1 || { echo "pipelines: $label failed: $(tail -3 log)"; return; }
    t1=$(date +%s.%N)
    local got
    got=$(find out -name '*_cp_masks.tif' | wc -l)
    [ "$got" = "$N" ] || { echo "pipelines: $label wrote $got masks, not $N"; return; }
    local s rate
    s=$(echo "$t1 - $t0" | bc -l)
    rate=$(echo "$N * 60 / $s" | bc -l)
    [ -z "$base" ] && base=$rate
    printf 'pipelines: %-44s %6.1f s  %6.1f images/min  x%.2f vs cpseg -j 1\n' "$label" "$s" "$rate" \
        "$(echo "$rate / $base" | bc -l)"
}
two_shards() { $SEG --threads 1 --shard 0/2 --savedir out in & $SEG --threads 1 --shard 1/2 --savedir out in; local r=$?; wait $! && return $r; }
slurm_two() {
    local k rc=0
    for k in 0 1; do
        env IN=in OUT=out EXT=png MODEL="$W8" THREADS=1 $TOOLS SLURM_ARRAY_TASK_ID=$k SLURM_ARRAY_TASK_COUNT=2 \
            bash "$P/slurm/pipeline.sbatch" &
    done
    wait -n || rc=1; wait -n || rc=1
    [ $rc = 0 ] && env IN=in OUT=out EXT=png $TOOLS bash "$P/slurm/pipeline.sbatch" merge
}

# warm-up, untimed: libtorch, the model and the images into the page cache
$SEG -j 2 --threads 2 --savedir out in > /dev/null 2>&1
run "cpseg -j 1 --threads 2 (masks only)" $SEG -j 1 --threads 2 --savedir out in
run "cpseg -j 2 --threads 2 (masks only)" $SEG -j 2 --threads 2 --savedir out in
run "2 cpseg shards at once, 1 thread each" two_shards
run "make -j2 (whole pipeline)" make -s -f "$P/Makefile" IN=in OUT=out EXT=png MODEL="$W8" $TOOLS -j2
run "Slurm script, 2 tasks at once + merge" slurm_two
run "snakemake --cores 2 (whole pipeline)" snakemake -s "$P/Snakefile" --cores 2 -q \
    --config in=in out=out ext=png model="$W8" cpseg="$B/cpseg" cpmetrics="$B/cpmetrics" cpcells="$B/cpcells"
echo "pipelines: load average after: $(uptime | sed 's/.*load average: //')"
