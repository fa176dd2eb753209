#!/usr/bin/env bash
# spotquery on a generated 8-million-spot round (about one real round):
# wall time and peak RSS of summary, spots --valid-only --sample 5000, counts.
# Goal: each well under 10 s on 2 cores and under 1 GB RSS.
#   scripts/bench.d/spotquery.sh BUILD_DIR
set -u
BUILD=${1:-build}
SQ=$BUILD/bin/spotquery
N=${SPOTQUERY_BENCH_SPOTS:-8000000}
DIR=${TMPDIR:-/tmp}/spotquery-bench-$N
[ -x "$SQ" ] || { echo "spotquery: $SQ not built"; exit 1; }
if [ ! -s "$DIR/image_spot_spectral_unmixing/unmixed_spots_R1_minDist_3.csv" ]; then
    t0=$(date +%s.%N)
    "$SQ" gen-synthetic --spots "$N" --seed 1 --cells 100000 "$DIR" || exit 1
    echo "spotquery bench: generated $N spots in $(awk -v a="$t0" -v b="$(date +%s.%N)" "BEGIN{printf \"%.1f\", b-a}") s ($(du -sh "$DIR" | cut -f1))"
fi
run() { # label, command...
    local label=$1; shift
    local tf; tf=$(mktemp)
    /usr/bin/time -f '%e %U %S %M' -o "$tf" "$@" > /dev/null || { echo "spotquery bench: $label failed"; rm -f "$tf"; return; }
    read -r sec us ss kb < "$tf"; rm -f "$tf"
    # CPU time is printed too: on a shared machine the wall time depends on load
    awk -v l="$label" -v s="$sec" -v c="$us $ss" -v k="$kb" -v n="$N" -v ld="$(cut -d' ' -f1 /proc/loadavg)" 'BEGIN{
        split(c, cc, " ");
        printf "spotquery %-34s %d spots: %6.2f s wall (%.2fx of the 10 s goal), %6.2f s CPU, peak RSS %4.0f MB (%.2fx of 1 GB), load %s\n",
               l, n, s, s/10, cc[1]+cc[2], k/1024, k/1048576, ld}'
}
run "summary --recompute" "$SQ" summary --recompute "$DIR"
run "summary (summary CSV)" "$SQ" summary "$DIR"
run "spots --valid-only --sample 5000" "$SQ" spots --valid-only --sample 5000 "$DIR"
run "counts" "$SQ" counts "$DIR"
if python3 -c 'import pandas' 2> /dev/null; then
    echo "spotquery bench: python3-pandas present; a pandas comparison is not scripted yet"
else
    echo "spotquery bench: python3-pandas not installed: no pandas ratio"
fi
