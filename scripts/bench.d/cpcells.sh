#!/usr/bin/env bash
# cpcells: 20,000 cells of a 4096x4096 u16 image (synthetic, made by
# test_cells --make-bench-input), written as a folder and as a ZIP.
# The goal is "I/O bound", so each figure is compared with a plain copy of the
# same output: `cp -r` of the finished folder (creating the same 20,001 files)
# and Info-ZIP `zip -r` of that folder (the same archive work, same level 6).
# A ratio near 1 or above means cpcells costs no more than the I/O it does.
set -u
BUILD=${1:-build}
B=$(cd "$BUILD" && pwd)
W=$(mktemp -d "${TMPDIR:-/tmp}/cpcells-bench.XXXXXX")
trap 'rm -rf "$W"' EXIT
N=20000 S=4096
"$B/tests/test_cells" --make-bench-input "$W" $N $S || exit 1
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }

t0=$(now)
line=$("$B/bin/cpcells" -v "$W/bench_img.tif" "$W/bench_masks.tif" -o "$W/out" 2>&1 | grep ' cells, ')
t1=$(now); tdir=$(secs "$t0" "$t1")
cells=$(echo "$line" | sed -n 's/.*: \([0-9]*\) cells, .*/\1/p')
mb=$(echo "$line" | sed -n 's/.* files, \([0-9.]*\) MB .*/\1/p')
t0=$(now); cp -r "$W/out" "$W/copy"; sync -f "$W/copy" 2>/dev/null; t1=$(now); tcp=$(secs "$t0" "$t1")
t0=$(now); "$B/bin/cpcells" "$W/bench_img.tif" "$W/bench_masks.tif" --zip "$W/out.zip"; t1=$(now); tzip=$(secs "$t0" "$t1")
t0=$(now); (cd "$W/out" && zip -q -r -X -6 "$W/peer.zip" .); t1=$(now); tpeer=$(secs "$t0" "$t1")
zmb=$(stat -c %s "$W/out.zip")
awk -v c="$cells" -v mb="$mb" -v td="$tdir" -v tc="$tcp" -v tz="$tzip" -v tp="$tpeer" -v zb="$zmb" 'BEGIN {
    printf "cpcells folder, %d cells of a 4096x4096 u16 image (incl. reading it): %.2f s, %.0f cells/s, %.1f MB/s of cell files (%.1f MB); cp -r of the result %.2f s: ratio to I/O %.2f\n", c, td, c / td, mb / td, mb, tc, tc / td
    printf "cpcells --zip, same input: %.2f s, %.0f cells/s, %.1f MB/s of cell files (archive %.1f MB); zip -r of the folder %.2f s: ratio to peer %.2f\n", tz, c / tz, mb / tz, zb / 1e6, tp, tp / tz
}'
