# scripts/pipelines: the Makefile, the Slurm array script (every task index
# run in a loop) and the Snakemake workflow on the bundled DSB crops, with the
# golden test weights as the model (masks meaningless but deterministic).
. "$(dirname "$0")/lib.sh"
P=$CP_ROOT/scripts/pipelines
W=$SHARED/golden/weights/cpnet_nucleilike_s2_legacy.pth
TOOLS="CPSEG=$BIN/cpseg CPMETRICS=$BIN/cpmetrics CPCELLS=$BIN/cpcells"
# The pipelines run as a user's top-level make would, not as a sub-make of
# `make check` (no inherited jobserver, no "make[2]:" prefixes).
unset MAKELEVEL MAKEFLAGS MFLAGS
MK="make --no-print-directory -f $P/Makefile IN=in EXT=png MODEL=$W DIAMETER=30 $TOOLS"

cd "$T" || exit 1
# under the sanitizers (a slower cpseg) 3 images and one clean make run
NAMES="a b c d"; [ "${CP_SANITIZERS:-0}" = 1 ] && NAMES="b c d"
mkdir -p in && for x in $NAMES; do cp "$TESTDATA/seg/$x.png" in/; done
NIMG=$(echo $NAMES | wc -w); FIRST=${NAMES%% *}
# every output file of a run, with its modification time (ns)
snap() { (cd "$1" && find . -type f ! -name '*.jsonl' -printf '%p %T@\n' | LC_ALL=C sort); }
# all outputs of run $2 byte-identical to those of run $1 (same file set)
same_tree() {
    local d=$1 a=$2 b=$3 f
    check_eq "$d: same files" "$(cd "$b" && find . -type f ! -name '*.jsonl' | LC_ALL=C sort)" \
        "$(cd "$a" && find . -type f | LC_ALL=C sort)"
    for f in $(cd "$a" && find . -type f | LC_ALL=C sort); do check_same "$d: $f" "$a/$f" "$b/$f"; done
}

# ---- Makefile -----------------------------------------------------------
check "make -j2" $MK OUT=mk1 -j2 -s
n=0; for x in $NAMES; do
    for f in masks/${x}_cp_masks.tif metrics/$x.csv cells/$x.zip; do [ -s "mk1/$f" ] && n=$((n + 1)); done
done
check_eq "make wrote 3 outputs per image" $n $((3 * NIMG))
check "cells.csv has a header and the cells of every table" sh -c \
    "[ \$(wc -l < mk1/cells.csv) -eq \$((\$(cat mk1/metrics/*.csv | wc -l) - $NIMG + 1)) ] && head -1 mk1/cells.csv | grep -q '^image,label,area,'"
check "merged table = header + rows of the tables in name order" sh -c \
    "{ head -1 mk1/metrics/$FIRST.csv; for x in $NAMES; do tail -n +2 mk1/metrics/\$x.csv; done; } | cmp -s - mk1/cells.csv"
check "cell archives hold cells.csv" sh -c "unzip -l mk1/cells/c.zip | grep -q cells.csv"
check "the masks have cells" sh -c "[ \$(tail -n +2 mk1/cells.csv | wc -l) -gt 0 ]"
snap mk1 > snap1
check "make -q: up to date" $MK OUT=mk1 -q
check_eq "second make does nothing" "$($MK OUT=mk1 -j2 2>&1)" "make: Nothing to be done for 'all'."
snap mk1 > snap2
check_same "second make rewrote no file" snap1 snap2

# touch one input: only its three outputs and the merged table are redone
mkdir -p keep && cp -r mk1 keep/
sleep 0.05; touch in/c.png
check "make after touch" $MK OUT=mk1 -j2 -s
snap mk1 > snap3
check_eq "only c's outputs and cells.csv rebuilt" \
    "$(diff snap1 snap3 | sed -n 's/^> \.\/\([^ ]*\) .*/\1/p' | tr '\n' ' ')" \
    "cells.csv cells/c.zip masks/c_cp_masks.tif metrics/c.csv "
same_tree "rebuilt outputs unchanged" keep/mk1 mk1

# a second clean run gives the same bytes
if [ "${CP_SANITIZERS:-0}" != 1 ]; then
    check "second clean make -j2" $MK OUT=mk2 -j2 -s
    same_tree "clean runs" mk1 mk2
fi

# an image that cannot be read: make stops with an error, leaves no target
mkdir -p bad && cp in/$FIRST.png bad/ && printf 'not a png' > bad/z.png
check_fails "make fails on a bad image" 2 make --no-print-directory -f "$P/Makefile" IN=bad EXT=png \
    MODEL="$W" $TOOLS OUT=mkbad -k -s
grep -q "bad/z.png" "$T/last.err" && ok || bad "make's error names the image: $(head -c 300 "$T/last.err")"
check "no output for the bad image" test ! -e mkbad/masks/z_cp_masks.tif -a ! -e mkbad/cells.csv
check "the good image was done" test -s mkbad/cells/$FIRST.zip

# no IN: the images of the folder make runs in (same outputs as IN=in)
if [ "${CP_SANITIZERS:-0}" != 1 ]; then
    check "make in the image folder, no IN" sh -c \
        "cd in && make --no-print-directory -f '$P/Makefile' EXT=png MODEL='$W' DIAMETER=30 $TOOLS OUT=../mkhere -j2 -s"
    same_tree "make without IN vs IN=in" mk1 mkhere
fi
# no image: one message naming the folder, nothing written
mkdir -p empty
check_fails "make on a folder without images" 2 make --no-print-directory -f "$P/Makefile" IN=empty EXT=png \
    $TOOLS OUT=mkempty
check_eq "make's message names the folder" "$(head -1 "$T/last.err")" \
    "make: no *.png image in $T/empty (set IN=folder, EXT=extension)"
check "nothing written for no image" test ! -e mkempty

# ---- Slurm array, every task index in a loop ----------------------------
slurm() { env IN=in OUT=sl EXT=png MODEL="$W" DIAMETER=30 $TOOLS bash "$P/slurm/pipeline.sbatch" "$@"; }
task() { env SLURM_ARRAY_TASK_ID="$1" SLURM_ARRAY_TASK_COUNT="$2" ${3:+NSHARDS=$3} IN=in OUT=sl EXT=png MODEL="$W" \
    DIAMETER=30 $TOOLS bash "$P/slurm/pipeline.sbatch"; }
for k in 0 1 2; do check "array task $k/3" task $k 3; done
check "merge job" slurm merge
same_tree "3 shards vs make" mk1 sl
check_eq "each image segmented once" \
    "$(grep -o '"input": *"[^"]*"' sl/cpseg.jsonl | sed 's/.*"in\///; s/"//' | LC_ALL=C sort | tr '\n' ' ')" \
    "$(for x in $NAMES; do printf '%s.png ' $x; done)"
# one cpseg over the whole folder, no shards: the same masks
check "single cpseg run" "$BIN/cpseg" -q --model "$W" --diameter 30 --savedir single in
for x in $NAMES; do check_same "shard vs single run: $x" "single/${x}_cp_masks.tif" "sl/masks/${x}_cp_masks.tif"; done
# a task resubmitted alone (sbatch --array=1, NSHARDS=3) redoes nothing
snap sl > snap4
check "task rerun" task 1 1 3
snap sl > snap5
check_same "rerun rewrote nothing" snap4 snap5
check "rerun skipped in the manifest" sh -c "tail -1 sl/cpseg.jsonl | grep -q '\"skipped\"'"
check_fails "outside an array" 2 slurm
check_fails "no image in the folder" 2 env IN=in EXT=tif bash "$P/slurm/pipeline.sbatch"
rm sl/metrics/b.csv
check_fails "merge with a missing table" 1 slurm merge
grep -q "sl/metrics/b.csv" "$T/last.err" && ok || bad "merge error names the table"
check_same "failed merge kept the old table" mk1/cells.csv sl/cells.csv

# submit.sh, with a stand-in sbatch that logs its arguments and NSHARDS
mkdir -p fake && cat > fake/sbatch <<'EOS'
#!/bin/sh
echo "NSHARDS=$NSHARDS $*" >> "$SBATCH_LOG"; echo "4242;cluster"
EOS
chmod +x fake/sbatch
check "submit.sh" env PATH="$T/fake:$PATH" SBATCH_LOG="$T/sbatch.log" IN=in sh "$P/slurm/submit.sh" 5 --partition=cpu
check_eq "submit.sh: array, then merge after it" "$(cat sbatch.log)" \
"NSHARDS=5 --parsable --array=0-4 --partition=cpu $P/slurm/pipeline.sbatch
NSHARDS=5 --parsable --dependency=afterok:4242 --job-name=cptools-merge --cpus-per-task=1 --partition=cpu $P/slurm/pipeline.sbatch merge"
check_fails "submit.sh without a count" 2 env IN=in sh "$P/slurm/submit.sh"

# ---- Snakemake ------------------------------------------------------------
if command -v snakemake > /dev/null; then
    SM="snakemake -s $P/Snakefile --cores 2 --config in=in out=sm ext=png model=$W diameter=30"
    SM="$SM cpseg=$BIN/cpseg cpmetrics=$BIN/cpmetrics cpcells=$BIN/cpcells"
    check "snakemake --cores 2" sh -c "$SM -q > sm1.out 2>&1"
    same_tree "snakemake vs make" mk1 sm
    snap sm > snap6
    $SM > sm.out 2>&1
    check "second snakemake does nothing" grep -q "Nothing to be done" sm.out
    snap sm > snap7
    check_same "second snakemake rewrote nothing" snap6 snap7
    check_fails "snakemake on a folder without images" 1 snakemake -s "$P/Snakefile" --cores 1 \
        --config in=empty out=smempty ext=png
    grep -q "no \*.png image in $T/empty" "$T/last.err" && ok ||
        bad "snakemake's message names the folder: $(head -c 300 "$T/last.err")"
else
    bad "snakemake is not installed (scripts/install-deps installs it)"
fi
finish
