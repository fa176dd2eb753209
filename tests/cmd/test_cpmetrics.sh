#!/usr/bin/env bash
# cpmetrics on real files: byte-exact tables, formats, filters, quality against
# the golden Cellpose values, bad input, thread-count independence.
. "$(dirname "$0")/lib.sh"
M=$BIN/cpmetrics
D=$TESTDATA/metrics
G=$SHARED/golden
GT=$G/inputs/stardist_img2d_gt.tif
PRED=$G/dynamics/stardist_img2d/noisy/v4_niter157/masks.npy.gz

# per-cell table, byte-exact against values worked out by hand (testdata/README.md)
check "cells csv" $M -o "$T/cells.csv" "$D/shapes.npy"
check_same "cells csv byte-exact" "$T/cells.csv" "$D/shapes_cells.csv"
$M "$D/shapes.npy" > "$T/stdout.csv"
check_same "stdout = -o" "$T/stdout.csv" "$D/shapes_cells.csv"
$M -i "$D/shapes_intensity.npy" "$D/shapes.npy" | cut -d, -f2,21- > "$T/int.csv"
check_same "intensity columns" "$T/int.csv" "$D/shapes_intensity.csv"
mkdir -p "$T/idir" "$T/mdir"
cp "$D/shapes_intensity.npy" "$T/idir/shapes.npy"
cp "$D/shapes.npy" "$T/mdir/shapes_cp_masks.npy"
$M --intensity-dir "$T/idir" "$T/mdir/shapes_cp_masks.npy" | cut -d, -f2,21- > "$T/int2.csv"
check_same "--intensity-dir pairs NAME_cp_masks with NAME" "$T/int2.csv" "$D/shapes_intensity.csv"

# formats
$M -f tsv "$D/shapes.npy" > "$T/c.tsv"
check_eq "tsv = csv with tabs" "$(tr '\t' ',' < "$T/c.tsv")" "$(cat "$D/shapes_cells.csv")"
$M -f ndjson "$D/shapes.npy" > "$T/c.ndjson"
check_eq "ndjson lines" "$(wc -l < "$T/c.ndjson")" 4
check_eq "ndjson inf is null" "$(grep -c '"aspect_ratio": null' "$T/c.ndjson")" 1
$M -f json "$D/shapes.npy" > "$T/c.json"
if command -v python3 > /dev/null; then
    check_eq "json parses, 4 rows" "$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$T/c.json")" 4
    $M -f json --summary "$D/shapes.npy" > "$T/s.json"
    check_eq "summary json" "$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d[0]["summary"]["total_cells"], d[0]["summary"]["area"]["max"])' "$T/s.json")" "4 16.0"
fi

# filters: 1000 and 2 touch the border; 9 has one pixel
check_eq "--exclude-edges" "$($M --exclude-edges "$D/shapes.npy" | cut -d, -f2 | tail -n +2 | tr '\n' ' ')" "5 9 "
check_eq "--min-area" "$($M --min-area 2 "$D/shapes.npy" | cut -d, -f2 | tail -n +2 | tr '\n' ' ')" "2 5 1000 "
check_eq "--max-area" "$($M --max-area 5 "$D/shapes.npy" | cut -d, -f2 | tail -n +2 | tr '\n' ' ')" "2 9 "

# summary: areas 5 16 1 16 -> mean 9.5, std sqrt(177/4), median 10.5; aspect_ratio skips inf
$M --summary "$D/shapes.npy" > "$T/sum.csv"
check_eq "summary header" "$(head -n 1 "$T/sum.csv" | cut -d, -f1-8)" "image,total_cells,area_mean,area_std,area_median,area_min,area_max,perimeter_mean"
check_eq "summary values" "$(sed -n 2p "$T/sum.csv" | cut -d, -f1-7)" "shapes,4,9.5,6.652067347825035,10.5,1.0,16.0"
check_eq "summary aspect (finite only)" "$(sed -n 2p "$T/sum.csv" | cut -d, -f13,16)" "1.0,1.0"

# empty image: header only, exit 0
check "empty image" $M -o "$T/empty.csv" "$D/empty.npy"
check_eq "empty: header only" "$(wc -l < "$T/empty.csv")" 1

# folders, stdin lists, merge, manifest
mkdir -p "$T/two"
cp "$D/shapes.npy" "$T/two/b.npy"
cp "$D/shapes.npy" "$T/two/a.npy"
$M "$T/two" > "$T/two.csv"
check_eq "folder: sorted, both" "$(cut -d, -f1 "$T/two.csv" | uniq | tr '\n' ' ')" "image a b "
printf '%s\n' "$T/two/a.npy" "$T/two/b.npy" | $M - > "$T/stdin.csv"
check_same "stdin list = folder" "$T/stdin.csv" "$T/two.csv"
$M "$T/two/a.npy" > "$T/pa.csv"
$M "$T/two/b.npy" --manifest "$T/man.jsonl" > "$T/pb.csv"
$M --merge "$T/pa.csv" "$T/pb.csv" > "$T/merged.csv"
check_same "--merge of two runs = one run" "$T/merged.csv" "$T/two.csv"
check_eq "manifest line" "$(cat "$T/man.jsonl")" "{\"input\": \"$T/two/b.npy\", \"image\": \"b\", \"status\": \"ok\", \"rows\": 4}"

# quality against the golden Cellpose values (match_v4.json, first pair)
$M --truth "$GT" "$PRED" --boundary-scales 0.25,0.5,1 > "$T/q.csv"
check_eq "quality TP/FP/FN" "$(cut -d, -f3,6-8 "$T/q.csv" | sed -n 2,4p | tr '\n' ' ')" "0.5,122,0,3 0.75,121,1,4 0.9,115,7,10 "
check_eq "one pair: ALL rows repeat it" "$(grep -c '^ALL,,' "$T/q.csv")" 3
check_eq "quality AJI, boundary F" "$(sed -n 2p "$T/q.csv" | cut -d, -f14,17)" "0.9616985057688671,0.9867956012976379"
check_eq "v3 counts" "$($M --truth "$GT" --v3-counts "$PRED" | sed -n 2p | cut -d, -f4,8)" "183,61"
mkdir -p "$T/gt" "$T/pred"
cp "$GT" "$T/gt/x.tif"
cp "$PRED" "$T/pred/x_cp_masks.npy.gz"
cp "$PRED" "$T/pred/y_cp_masks.npy.gz"
cp "$GT" "$T/gt/y.tif"
$M --truth "$T/gt" "$T/pred" --thresholds 0.5 > "$T/q2.csv"
check_eq "pooled ALL row: summed counts" "$(tail -n 1 "$T/q2.csv" | cut -d, -f1,4-8)" "ALL,250,244,244,0,6"

# threads: identical bytes
OMP_NUM_THREADS=1 $M "$GT" "$PRED" > "$T/t1.csv"
OMP_NUM_THREADS=2 $M "$GT" "$PRED" > "$T/t2.csv"
check_same "1 vs 2 threads" "$T/t1.csv" "$T/t2.csv"
check_eq "golden GT rows" "$(grep -c '^stardist_img2d_gt,' "$T/t1.csv")" 125

# bad input: one-line error naming the file, non-zero exit, other inputs still done
check_fails "float labels" 1 $M "$D/float.npy"
check_eq "float message" "$(grep -c 'float.npy.*floating-point' "$T/last.err")" 1
check_fails "negative labels" 1 $M "$D/negative.npy"
check_eq "negative message" "$(grep -c 'negative.npy.*negative' "$T/last.err")" 1
check_fails "missing file" 1 $M "$T/nope.tif" "$D/shapes.npy"
check_eq "missing named" "$(grep -c 'nope.tif' "$T/last.err")" 1
check_eq "others still measured" "$(wc -l < "$T/last.out")" 5
check_fails "GT/PRED size mismatch" 1 $M --truth "$GT" "$D/shapes.npy"
check_eq "mismatch message" "$(grep -c 'shapes.npy: 12 x 12, but the ground truth' "$T/last.err")" 1
check_fails "mask/intensity size mismatch" 1 $M -i "$GT" "$D/shapes.npy"
check_fails "bad format" 2 $M -f xml "$D/shapes.npy"
check_fails "bad min-area" 2 $M --min-area -3 "$D/shapes.npy"
check_fails "unknown flag" 2 $M --frobnicate "$D/shapes.npy"
check_fails "no input" 2 $M
check_fails "bad thresholds" 2 $M --truth "$GT" --thresholds 0.5,abc "$PRED"
check_fails "unwritable output" 3 $M -o /nonexistent/dir/x.csv "$D/shapes.npy"
check_eq "--version" "$($M --version | cut -d" " -f1-2)" "cpmetrics (cptools)"
check_eq "--help" "$($M --help | head -c 16)" "Usage: cpmetrics"
finish
