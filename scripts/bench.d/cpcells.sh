#!/usr/bin/env bash
# cpcells: 20,000 cells of a 4096x4096 u16 image (synthetic, made by
# test_cells --make-bench-input), written as a folder and as a ZIP.
# The goal is "I/O bound", so each run is compared with plain copies of the
# same output: `cp -r` of the finished folder (creating the same 20,001 files)
# and Info-ZIP `zip -r -6` of that folder (the same archive work). A ratio near
# 1 (or above) means cpcells costs no more than that I/O; user/sys CPU seconds
# show where the time goes (sys = the kernel creating files).
set -u
BUILD=${1:-build}
B=$(cd "$BUILD" && pwd)
W=$(mktemp -d "${TMPDIR:-/tmp}/cpcells-bench.XXXXXX")
trap 'rm -rf "$W"' EXIT
N=20000 S=4096
"$B/tests/test_cells" --make-bench-input "$W" $N $S || exit 1
# timed LABEL CMD...: "wall user sys" into $W/LABEL.t
timed() { local l=$1; shift; /usr/bin/time -f "%e %U %S" -o "$W/$l.t" "$@"; }

# Warm-up (not timed, not deleted until the end): the first run creating
# thousands of files after a big deletion pays ext4's recently-deleted inode
# scans, whichever program it is (seen here: cp -r first 4.1 s sys, after 0.7 s).
"$B/bin/cpcells" "$W/bench_img.tif" "$W/bench_masks.tif" -o "$W/warm"
line=$(timed dir "$B/bin/cpcells" -v "$W/bench_img.tif" "$W/bench_masks.tif" -o "$W/out" 2>&1 | grep ' cells, ')
cells=$(echo "$line" | sed -n 's/.*: \([0-9]*\) cells, .*/\1/p')
mb=$(echo "$line" | sed -n 's/.* files, \([0-9.]*\) MB .*/\1/p')
timed cp cp -r "$W/out" "$W/copy"
timed zip "$B/bin/cpcells" "$W/bench_img.tif" "$W/bench_masks.tif" --zip "$W/out.zip"
(cd "$W/out" && timed peer zip -q -r -X -6 "$W/peer.zip" .)
timed one "$B/bin/cpcells" "$W/bench_img.tif" "$W/bench_masks.tif" --labels 1 -o "$W/one"
zb=$(stat -c %s "$W/out.zip")
read -r td ud sd < "$W/dir.t"; read -r tc uc sc < "$W/cp.t"; read -r tz uz sz < "$W/zip.t"
read -r tp up sp < "$W/peer.t"; read -r t1 _ _ < "$W/one.t"
awk -v c="$cells" -v mb="$mb" -v td="$td" -v ud="$ud" -v sd="$sd" -v tc="$tc" -v sc="$sc" \
    -v tz="$tz" -v uz="$uz" -v tp="$tp" -v up="$up" -v zb="$zb" -v t1="$t1" -v load="$(cut -d' ' -f1 /proc/loadavg)" 'BEGIN {
    printf "(load average %s on %d cores; reading the inputs alone: %.2f s)\n", load, 2, t1
    printf "cpcells folder, %d cells of a 4096x4096 u16 image: %.2f s (user %.2f, sys %.2f), %.0f cells/s, %.1f MB/s of cell files (%.1f MB); cp -r of the result %.2f s (sys %.2f): ratio to I/O %.2f\n", c, td, ud, sd, c / td, mb / td, mb, tc, sc, tc / td
    printf "cpcells --zip, same input: %.2f s (user %.2f), %.0f cells/s, %.1f MB/s of cell files (archive %.1f MB); zip -r -6 of the folder %.2f s (user %.2f): ratio to peer %.2f\n", tz, uz, c / tz, mb / tz, zb / 1e6, tp, up, tp / tz
}'
