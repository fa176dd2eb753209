# spotquery on pandas pickles and Parquet files: every fixture gives the same
# CSV/JSON bytes as its CSV twin (testdata/spots, made by make_fixtures.py with
# pandas 1.5.3 and make_parquet.mjs with parquet-wasm and hyparquet-writer).
. "$(dirname "$0")/lib.sh"
SQ=$BIN/spotquery
S=$TESTDATA/spots
cd "$T" || exit 1

# --- single pickles (protocols 2, 4, 5; compact dtypes; multi-block; sliced)
for f in compact_p2 compact_p4 blocks sliced; do
    $SQ spots "$S/$f.pkl" > a.csv 2> a.err; check "$f.pkl reads" test $? -eq 0
    $SQ spots "$S/$f.csv" > b.csv 2> b.err
    check_same "$f.pkl = its CSV twin" a.csv b.csv
done
check_eq "blocks.pkl rows" "$($SQ spots "$S/blocks.pkl" | tail -n +2 | wc -l)" 22

# --- pickle and Parquet dataset folders against the same folder in CSV, every command
mkdir -p p/ds q/ds c/ds
cp "$S"/pkl_dataset/*.pkl p/ds/
cp "$S"/pq_dataset/*.parquet q/ds/
cp "$S"/csv_dataset/*.csv c/ds/
for cmd in "spots" "spots --valid-only --sample 5 --seed 3" "spots --format json --columns spot_id,chan,unmixed_chan,r" \
           "api" "summary" "pairs" "sankey" "counts" "counts --all" "spots --where dist<0.5 --removed no" \
           "neuroglancer --spot 4 --json"; do
    # shellcheck disable=SC2086
    (cd p && $SQ $cmd ds > ../a.out 2> ../a.err); ra=$?
    # shellcheck disable=SC2086
    (cd q && $SQ $cmd ds > ../q.out 2> ../q.err); rq=$?
    # shellcheck disable=SC2086
    (cd c && $SQ $cmd ds > ../b.out 2> ../b.err)
    check "pkl dataset: $cmd runs" test $ra -eq 0
    check_same "pkl dataset = CSV dataset: $cmd" a.out b.out
    check "parquet dataset: $cmd runs" test $rq -eq 0
    check_same "parquet dataset = CSV dataset: $cmd" q.out b.out
done

# --- Parquet: each writer, codec, page version, dictionary or plain
$SQ spots "$S/merged.csv" > ref.csv
for f in "$S"/*.parquet; do
    b=$(basename "$f")
    $SQ spots "$f" > a.csv 2> a.err; check "$b reads: $(head -c 200 a.err)" test $? -eq 0
    check_same "$b = merged.csv" a.csv ref.csv
done
for cmd in "summary" "counts" "api" "sankey" "spots --valid-only --columns chan,unmixed_chan,r,cell_id,round"; do
    # shellcheck disable=SC2086
    $SQ $cmd "$S/pw_zstd_v2.parquet" > a.out 2>&1
    # shellcheck disable=SC2086
    $SQ $cmd "$S/merged.csv" > b.out 2>&1
    check_same "parquet = csv: $cmd" a.out b.out
done
# a dataset named <dataset>.parquet, read as a table
cp "$S/hp_snappy.parquet" HCR_1_2025-01-01.parquet
check_eq "cached table rows" "$($SQ spots --columns spot_id HCR_1_2025-01-01.parquet | tail -n +2 | wc -l)" 24

# --- writing Parquet (spots --format parquet): read back = the CSV path
$SQ spots --format parquet -o w.parquet "$S/merged.csv"; check "write parquet" test $? -eq 0
$SQ spots w.parquet > a.csv; $SQ spots "$S/merged.csv" > b.csv
check_same "written parquet reads back" a.csv b.csv
(cd c && $SQ spots --format parquet -o ../d.parquet ds); $SQ spots d.parquet > a.csv
check_same "dataset written as parquet reads back" a.csv b.csv
check_eq "parquet magic" "$(head -c 4 w.parquet)$(tail -c 4 w.parquet)" "PAR1PAR1"
check_fails "parquet needs -o" 2 $SQ spots --format parquet "$S/merged.csv"
check_fails "parquet only for spots" 2 $SQ api --format parquet -o x.parquet "$S/merged.csv"

# --- bad input: one line naming the file, exit 3 (bad data), no crash
printf '\200\002cos\nsystem\n(S"echo hacked"\ntR.' > evil.pkl
check_fails "os.system pickle refused" 3 $SQ spots evil.pkl
check_eq "evil.pkl message" "$(wc -l < "$T/last.err") $(grep -c 'evil.pkl.*os.system' "$T/last.err")" "1 1"
head -c 3000 "$S/pw_snappy.parquet" > cut.parquet
check_fails "truncated parquet" 3 $SQ summary cut.parquet
check_eq "cut.parquet message" "$(wc -l < "$T/last.err") $(grep -c 'cut.parquet' "$T/last.err")" "1 1"
head -c 2000 "$S/compact_p4.pkl" > cut.pkl
check_fails "truncated pickle" 3 $SQ counts cut.pkl
check_eq "cut.pkl message" "$(grep -cE 'cut.pkl: (truncated pickle|pickle string .* past the end)' "$T/last.err")" 1
finish
