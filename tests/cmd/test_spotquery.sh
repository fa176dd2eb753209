# spotquery on generated SeeSpot datasets; expected values from awk over the
# generated CSVs (an independent reading of the same files) or hand-worked tables.
. "$(dirname "$0")/lib.sh"
SQ=$BIN/spotquery
cd "$T" || exit 1

$SQ gen-synthetic --spots 3000 --seed 7 ds > gen.out 2>&1; check "generate" test $? -eq 0
U=ds/image_spot_spectral_unmixing
check_fails "no command" 2 $SQ
check_fails "unknown option" 2 $SQ spots --bogus ds
check_eq "version" "$($SQ --version)" "spotquery (cptools) $(sed -n 's/^#define CP_VERSION_STRING "\(.*\)"/\1/p' "$CP_ROOT/include/cellpose/core.h")"

# --- merge: row count, removed, reassigned (awk joins the two CSVs itself)
awk -F, 'FNR==1{next} FILENAME~/unmixed/{u[$2","$3]=$30; next} {k=$2","$3; if(!(k in u)||u[k]==""||u[k]=="none") rem++; else if(u[k]!=$2) re++; n++} END{print n, rem+0, re+0}' \
    $U/unmixed_spots_R1_minDist_3.csv $U/mixed_spots_R1.csv > want.txt
n=$($SQ spots --columns spot_id ds | tail -n +2 | wc -l)
rem=$($SQ spots --removed yes --columns spot_id ds | tail -n +2 | wc -l)
re=$($SQ spots --reassigned yes --columns spot_id ds | tail -n +2 | wc -l)
check_eq "merge counts" "$n $rem $re" "$(cat want.txt)"
check_eq "spot_id 1..n" "$($SQ spots --columns spot_id ds | tail -n +2 | awk '$1!=NR{bad=1} END{print bad+0}')" 0

# Under the sanitizers every run costs seconds (start-up of the sanitized
# binary linked with libtorch): there only the hand-worked table and the bad
# inputs run (test_spots covers reader, merge and sampling in-process).
FULL=1; [ "${CP_SANITIZERS:-0}" = 1 ] && FULL=0
if [ $FULL = 1 ]; then
# --- filters against awk
want=$(awk -F, 'FNR>1 && $31=="True"' $U/unmixed_spots_R1_minDist_3.csv | wc -l)
check_eq "--valid-only" "$($SQ spots --valid-only --columns spot_id ds | tail -n +2 | wc -l)" "$want"
want=$(awk -F, 'NR>1 && $13>0.9' $U/mixed_spots_R1.csv | wc -l)
check_eq "--where r > 0.9" "$($SQ spots --where 'r > 0.9' --columns r ds | tail -n +2 | wc -l)" "$want"
want=$(awk -F, 'NR>1 && $2=="561" && $6>=10 && $6<=50' $U/mixed_spots_R1.csv | wc -l)
check_eq "--channel --z" "$($SQ spots --channel 561 --z 10:50 --columns spot_id ds | tail -n +2 | wc -l)" "$want"
want=$(awk -F, 'NR>1 && ($4==3 || $4==5)' $U/mixed_spots_R1.csv | wc -l)
check_eq "--cell" "$($SQ spots --cell 3,5 --columns cell_id ds | tail -n +2 | wc -l)" "$want"
want=$(awk -F, 'NR>1 && $30=="638"' $U/unmixed_spots_R1_minDist_3.csv | wc -l)
check_eq "--unmixed-channel" "$($SQ spots --unmixed-channel 638 --columns spot_id ds | tail -n +2 | wc -l)" "$want"
check_eq "--where on strings" "$($SQ spots --where 'unmixed_chan = none' --columns unmixed_chan ds | tail -n +2 | sort -u)" "none"

# --- sampling: deterministic, no duplicates, class balanced
$SQ spots --valid-only --sample 50 --columns spot_id,chan,valid_spot ds > s1.csv
$SQ spots --valid-only --sample 50 --columns spot_id,chan,valid_spot ds > s2.csv
$SQ spots --valid-only --sample 50 --seed 99 --columns spot_id,chan,valid_spot ds > s3.csv
check_same "sample deterministic" s1.csv s2.csv
if cmp -s s1.csv s3.csv; then bad "seed changes the sample"; else ok; fi
check_eq "sample size, no duplicate" "$(tail -n +2 s1.csv | cut -d, -f1 | sort -u | wc -l)" 50
check_eq "sampled rows pass the filter" "$(tail -n +2 s1.csv | cut -d, -f3 | sort -u)" "True"
check_eq "class balanced" "$(tail -n +2 s1.csv | cut -d, -f2 | sort | uniq -c | awk '{print $1}' | sort -u)" 10
$SQ spots --sample 2999 --sampling random --columns spot_id ds > s4.csv
check_eq "random sample, no duplicate" "$(tail -n +2 s4.csv | sort -u | wc -l)" 2999

# --- counts: cell x unmixed channel over valid spots, cells != 0 (awk)
awk -F, 'NR>1 && $31=="True" && $4!=0 {c[$4","$30]++; cells[$4]=1}
  END{for (k in cells) {printf "%d", k; n=split("488 514 561 594 638", ch, " ");
      for (i=1;i<=n;i++) printf ",%d", c[k","ch[i]]+0; printf "\n"}}' \
    $U/unmixed_spots_R1_minDist_3.csv | sort -t, -k1,1n > counts.want
$SQ counts ds | tail -n +2 > counts.got
check_same "counts matrix" counts.got counts.want
check_eq "counts --genes header" "$($SQ counts --genes ds | head -1)" "cell_id,Gene1,Gene2,Gene3,Gene4,Gene5"

# --- summary: files vs recomputed from the tables
$SQ summary ds > sum1.csv; $SQ summary --recompute ds > sum2.csv
check_same "summary files = recomputed" sum1.csv sum2.csv
check_eq "summary removed+unchanged" "$(awk -F, 'NR>1 && $8+$9+$5!=$3{bad=1} END{print bad+0}' sum1.csv)" 0

# --- pairs, ratios, sankey
check_eq "pairs" "$($SQ pairs ds | wc -l)" 11
check_eq "pairs json" "$($SQ pairs --format json ds | tr -d ' \n\t' | head -c 29)" '[["488","514"],["488","561"],'
check_same "ratios" <($SQ ratios ds | tail -n +2 | tr , ' ') $U/r1_ratios.txt
$SQ sankey --format csv ds > sk.csv
check_eq "sankey total = rows" "$(awk -F, 'NR>1{s+=$3} END{print s}' sk.csv)" "$(awk -F, 'NR>1 && $3>=5{s+=$3} END{print s}' sk.csv)"

# --- JSON / NDJSON and the api document
$SQ spots --valid-only --sample 20 --format ndjson ds > s.ndjson
check_eq "ndjson lines" "$(wc -l < s.ndjson)" 20
if command -v python3 > /dev/null; then
    $SQ api --sample 100 ds > api.json
    check_eq "api keys and shapes" "$(python3 -c '
import json,sys
d=json.load(open("api.json"))
print(sorted(d.keys()), len(d["channel_pairs"]), len(d["spots_data"]), len(d["spot_details"]), len(d["fused_s3_paths"]),
      len(d["ratios"]), len(d["summary_stats"]), sorted(d["sankey_data"].keys()), sorted(d["spots_data"][0].keys())[:3],
      sorted(d["summary_stats"][0].keys())[-2:], type(next(iter(d["spot_details"].values()))["round"]).__name__)')" \
      "['channel_pairs', 'fused_s3_paths', 'ratios', 'sankey_data', 'spot_details', 'spots_data', 'summary_stats'] 10 100 100 5 5 5 ['links', 'nodes', 'threshold_used', 'total_spots'] ['chan', 'chan_488_intensity', 'chan_514_intensity'] ['total_spots', 'unchanged_spots'] str"
    $SQ spots --format json --columns spot_id,r,valid_spot --sample 7 ds > s.json
    check_eq "json records" "$(python3 -c 'import json;d=json.load(open("s.json"));print(len(d),sorted(d[0]))')" "7 ['r', 'spot_id', 'valid_spot']"
    url=$($SQ neuroglancer --spot 17 ds)
    want=$(awk -F, 'NR==18{printf "[%g, %g, %g, 0.5, 0]", $8, $7, $6}' $U/mixed_spots_R1.csv)
    check_eq "neuroglancer point" "$(python3 -c '
import json,sys,urllib.parse
u=sys.argv[1]; assert u.startswith("https://neuroglancer-demo.appspot.com/#!")
s=json.loads(urllib.parse.unquote(u.split("#!",1)[1]))
a=s["layers"][-1]; print(a["annotations"][0]["point"], a["annotations"][0]["id"], len(s["layers"]), s["dimensions"]["x"])' "$url")" \
      "$want 17 6 [2.4e-07, 'm']"
fi

# --- threads, gzip, tiles, missing optional files, derived manifest
$SQ gen-synthetic --spots 60000 --channels 3 --seed 5 big > /dev/null
$SQ spots --threads 1 big > t1.csv; $SQ spots --threads 2 big > t2.csv
check_same "threads 1 = 2" t1.csv t2.csv
$SQ gen-synthetic --spots 3000 --seed 7 --gzip dsgz > /dev/null
$SQ spots ds > plain.csv; $SQ spots dsgz > gz.csv
check_same "gzip = plain" plain.csv gz.csv
$SQ gen-synthetic --spots 500 --tiles 3 --rounds 2 --no-optional --derived tiled > /dev/null
check_eq "tiled rows" "$($SQ spots --columns spot_id tiled | tail -n +2 | wc -l)" 3000
check_eq "round filter" "$($SQ spots --round 2 --columns round tiled | tail -n +2 | sort -u)" 2
check_fails "no ratios" 3 $SQ ratios tiled
check "summary without files" $SQ summary tiled -o tiled_sum.csv
check_eq "summary from tables" "$(awk -F, 'NR>1{s+=$3} END{print s}' tiled_sum.csv)" 3000
$SQ api --sample 10 tiled > tiled_api.json; check "api without optional files" test -s tiled_api.json
check_eq "datasets" "$($SQ datasets . | tail -n +2 | cut -d, -f1,3 | sort | grep -v -e ^big -e ^dsgz | tr '\n' ' ')" "ds,True tiled,True "

fi # FULL
# --- a hand-worked table: merge semantics byte for byte
mkdir -p hand/image_spot_spectral_unmixing
cat > hand/image_spot_spectral_unmixing/mixed_spots_R2.csv <<'CSV'
spot_id,chan,chan_spot_id,cell_id,round,z,y,x,dist,r,chan_488_intensity,chan_561_intensity
1,488,1,7,2,1.5,2.25,3,0.5,0.9,100.1,3
2,488,2,7,2,4,5,6,0.25,0.6,"1e3",0.1
1,561,1,0,2,7,8,9,2,0.3,5,250.5
2,561,2,9,2,10,11,12,0.1,0.99,6,300
CSV
cat > hand/image_spot_spectral_unmixing/unmixed_spots_R2_minDist_3.csv <<'CSV'
spot_id,chan,chan_spot_id,unmixed_chan,valid_spot,dye_line_dist_ratio
9,561,2,488,True,5.5
8,488,1,488,True,4.5
7,561,1,none,False,1.25
CSV
cat > hand.want <<'CSV'
spot_id,chan,chan_spot_id,cell_id,round,unmixed_chan,valid_spot,dye_line_dist_ratio,unmixed_removed,reassigned,chan_488_intensity
1,488,1,7,2,488,True,4.5,False,False,100.1
2,488,2,7,2,,,,True,False,1000
3,561,1,0,2,none,False,1.25,False,False,5
4,561,2,9,2,488,True,5.5,False,True,6
CSV
$SQ spots --columns spot_id,chan,chan_spot_id,cell_id,round,unmixed_chan,valid_spot,dye_line_dist_ratio,unmixed_removed,reassigned,chan_488_intensity hand > hand.got
check_same "hand-worked merge" hand.got hand.want
check_eq "hand counts" "$($SQ counts hand | tr '\n' ' ')" "cell_id,488,561 7,1,0 9,1,0 "
check_eq "hand counts all" "$($SQ counts --all --background hand | tr '\n' ' ')" "cell_id,488,561 0,0,0 7,1,0 9,1,0 "
check_eq "hand counts mixed" "$($SQ counts --all --by mixed hand | tr '\n' ' ')" "cell_id,488,561 7,2,0 9,0,1 "
check_eq "hand sankey json" "$($SQ sankey hand --format json | tr -d ' \n\t' | head -c 59)" '{"nodes":[{"name":"488(Original)","category":"original","ch'
check_eq "float32 round trip" "$($SQ spots --columns r,chan_561_intensity --format tsv hand | tail -1)" "0.99	300"
tr , '\t' < hand/image_spot_spectral_unmixing/mixed_spots_R2.csv | tr -d '"' > one.tsv
check_eq "single TSV table" "$($SQ spots --columns spot_id,chan,r,unmixed_removed one.tsv | tr '\n' ' ')" \
    "spot_id,chan,r,unmixed_removed 1,488,0.9,True 2,488,0.6,True 3,561,0.3,True 4,561,0.99,True "
$SQ spots --columns spot_id -o out.csv hand; check_eq "-o" "$(wc -l < out.csv)" 5
check_eq "no temp left" "$(ls -A | grep -c '^\.')" 0

# --- --where at the column's precision: the rows pandas selects from the same
# table loaded with SeeSpot's dtypes (float32 values, int32 ids, int8 round).
# Literals sit on float32 boundaries: 0.8 is 0.800000012 as a float32, the
# values one ulp either side, NaN, 2^24, FLT_MAX; integer columns get
# fractional and out-of-range literals.
PY=/usr/bin/python3
cat > prec.csv <<'CSV'
spot_id,chan,chan_spot_id,cell_id,round,z,x,r,valid_spot
1,488,1,2,1,0.1,0.3,0.8,True
2,488,2,3,2,0.10000001,0.3,0.8000001,False
3,488,3,0,3,0.099999994,0.29999998,0.79999995,True
4,561,1,2147483647,127,10,0.30000001,,False
5,561,2,-5,-128,50,1,0.5,True
6,561,3,2,2,50.000004,2,1,True
7,638,1,3,1,49.999996,0.3,16777216,False
8,638,2,7,2,0,0.3,3.4028235e38,True
9,638,3,2,3,-0.1,0.3,0.80000001,False
10,488,4,9,2,1,5,0.9,True
11,561,4,9,1,2,5,0.90000004,True
CSV
cat > prec.q <<'Q'
r > 0.8
r >= 0.8
r < 0.8
r <= 0.8
r == 0.8
r = 0.8
r != 0.8
r > 0.80000001
r <= 0.9
r > 0.9
r == 16777217
r == 16777217.0
r >= 16777216.5
r == 3.4028235e38
r < 1e39
round < 300
round > -200
round == 2.5
round >= 2.0001
round != 2
cell_id > 2.5
cell_id < 3000000000
cell_id == 2147483647
valid_spot == True
valid_spot != 1
chan != 488
chan > 5
z <= 0.1
z > 0.1
Q
# pandas: df[df[col] OP literal], the literal as Python reads it
$PY - prec.csv prec.q > prec.log 2>&1 <<'PYEOF'
import sys, re
import numpy as np, pandas as pd
df = pd.read_csv(sys.argv[1], dtype={"chan": str, "cell_id": np.int32, "round": np.int8, "z": np.float32,
                                     "x": np.float32, "r": np.float32, "valid_spot": bool})
def out(name, mask):
    with open(name, "w") as f:
        f.write("spot_id\n" + "".join("%d\n" % i for i in df.spot_id[mask]))
for k, line in enumerate(open(sys.argv[2]).read().splitlines()):
    col, op, lit = re.match(r"(\w+) *(==|!=|<=|>=|<|>|=) *(.*)", line).groups()
    lit = repr(lit) if df[col].dtype == object else lit
    out("prec.want%d" % k, eval("df[col] %s %s" % ("==" if op == "=" else op, lit)))
out("prec.want_z", (df.z >= 0.1) & (df.z <= 50))
out("prec.want_zx", (df.z <= 0.1) & (df.x >= 0.3) & (df.x <= 0.3))
PYEOF
check "pandas reference ($(tail -1 prec.log))" test -s prec.want_zx
k=0
while IFS= read -r q; do
    # the sanitized build runs the first few (each start costs seconds there)
    if [ $FULL = 1 ] || [ $k -lt 4 ]; then
        $SQ spots --columns spot_id --where "$q" prec.csv > prec.got$k
        check_same "--where '$q' = pandas" prec.got$k prec.want$k
    fi
    k=$((k + 1))
done < prec.q
$SQ spots --columns spot_id --z 0.1:50 prec.csv > prec.got_z
check_same "--z 0.1:50 = pandas" prec.got_z prec.want_z
$SQ spots --columns spot_id --z :0.1 --x 0.3:0.3 prec.csv > prec.got_zx
check_same "--z :0.1 --x 0.3:0.3 = pandas" prec.got_zx prec.want_zx
check_fails "--where not a number" 3 $SQ spots --where 'r > 0.8x' prec.csv
check_eq "--where not a number message" "$(cat "$T/last.err")" "spotquery: --where r: '0.8x' is not a number"

# --- bad input: one line naming file:line:column, exit 3
B=bad/image_spot_spectral_unmixing; mkdir -p $B
bad_input() { # name, mixed csv text, expected message part
    cp hand/image_spot_spectral_unmixing/unmixed_spots_R2_minDist_3.csv $B/
    printf '%s' "$2" > $B/mixed_spots_R2.csv
    check_fails "$1" 3 $SQ spots bad
    check_eq "$1 message" "$(grep -c -- "$3" "$T/last.err")" 1
    check_eq "$1 one line" "$(wc -l < "$T/last.err")" 1
}
bad_input "ragged row" $'spot_id,chan,chan_spot_id,r\n1,488,1,0.5\n2,488,2\n' "mixed_spots_R2.csv:3:8: 3 fields, the header has 4"
bad_input "non-numeric" $'spot_id,chan,chan_spot_id,r\n1,488,1,0.5\n2,488,2,abc\n' "mixed_spots_R2.csv:3:9: column 'r': 'abc' is not a number"
bad_input "bad id" $'spot_id,chan,chan_spot_id,r\n1,488,x1,0.5\n' "mixed_spots_R2.csv:2:7: column 'chan_spot_id': 'x1' is not a whole number"
bad_input "missing column" $'spot_id,chan,r\n1,488,0.5\n' "missing column 'chan_spot_id'"
bad_input "empty table" '' "mixed_spots_R2.csv: empty file"
bad_input "quote" $'spot_id,chan,chan_spot_id,r\n1,"488,1,0.5\n' "unterminated quoted field"
printf 'spot_id,chan,chan_spot_id,r\n' > $B/mixed_spots_R2.csv
check "header-only table" $SQ spots bad -o empty.csv
check_eq "header-only output" "$(wc -l < empty.csv)" 1
check_fails "unknown channel" 3 $SQ spots --channel 999 ds
check_eq "unknown channel message" "$(grep -c "unknown channel '999' (channels: 488,514,561,594,638)" "$T/last.err")" 1
check_fails "unknown column" 3 $SQ spots --columns nope ds
check_fails "missing source" 3 $SQ spots does-not-exist
check_fails "bad where" 2 $SQ spots --where 'r ~ 1' ds
check_fails "bad sampling" 2 $SQ spots --sampling best ds
printf 'spot_id,chan\n1,488\n' | $SQ spots --columns spot_id,chan - > stdin.csv
check_eq "stdin" "$(tail -1 stdin.csv)" "1,488"
finish
