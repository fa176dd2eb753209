# scripts/pipelines/blocks: blockwise 3D segmentation of one small volume by
# three engines -- cpseg's plan / block / merge steps in a loop, the Snakemake
# workflow, and the Slurm array script on a real one-node Slurm cluster that
# this test starts (tests/cmd/slurm_local.sh) -- with byte-identical label
# volumes and cell tables. Where the cluster cannot start (not root, no
# slurm-wlm/munge) that part says why and is skipped, never imitated.
# Golden test weights, stitch mode: masks meaningless but deterministic, and
# one network pass per plane keeps the blocks cheap.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/slurm_local.sh"
P=$CP_ROOT/scripts/pipelines/blocks
W=$SHARED/golden/weights/cpnet_nucleilike_s2_legacy.pth
SAN=${CP_SANITIZERS:-0}
cd "$T" || exit 1
cp "$SHARED/golden/3d/inputs/synth3d_s5_z2.tif" vol.tif          # (16, 80, 80)
# 2x2 blocks in Y, X; the sanitizer build (a slower cpseg) 2 blocks
BS=16,48,48; NB=4; [ "$SAN" = 1 ] && { BS=16,48,80; NB=2; }
# The settings of blocks.sbatch, as the environment gives them to every step.
export IN=$T/vol.tif BLOCK_SIZE=$BS OVERLAP=8 MODEL=$W DIAMETER=17 STITCH=0.5 \
    SEG_FLAGS="--flow-threshold 1" CPSEG=$BIN/cpseg THREADS=1
SEG=(--model "$W" --diameter 17 --flow-threshold 1 --stitch-threshold 0.5)
# every file under a folder with its modification time (ns)
snap() { (cd "$1" && find . -type f -printf '%p %T@\n' | LC_ALL=C sort); }

# ---- the local loop: plan, each block, merge ----------------------------
n=$("$BIN/cpseg" -q --plan --blocks loop --block-size "$BS" --overlap 8 "${SEG[@]}" vol.tif)
check_eq "plan: the number of blocks" "$n" "$NB"
for k in $(seq 0 $((NB - 1))); do
    check "block $k/$NB" "$BIN/cpseg" -q --blocks loop --block "$k/$NB" --threads 1
done
check "merge" "$BIN/cpseg" -q --merge loop -o loop.tif --table loop.csv
check "the merged labels have cells" /usr/bin/python3 -c "
import sys, tifffile, numpy as np
m = tifffile.imread('loop.tif')
assert m.shape == (16, 80, 80), m.shape
n = len(np.unique(m)) - 1
assert n > 10 and m.max() == n, (n, m.max())
rows = open('loop.csv').read().splitlines()
assert len(rows) == n + 1, (len(rows), n)"
# a finished block run again is skipped: nothing rewritten
snap loop > snap1
check "rerun of block 0" sh -c '"$@" 2> rerun.err' sh "$BIN/cpseg" -v --blocks loop --block "0/$NB" "${SEG[@]}"
check "the rerun says it skipped" grep -q "block 0/$NB: done before, skipped" rerun.err
snap loop > snap2
check_same "the rerun rewrote nothing" snap1 snap2

# ---- blocks.sbatch outside Slurm: settings refused ----------------------
check_fails "blocks.sbatch outside an array" 2 bash "$P/blocks.sbatch"
check_fails "blocks.sbatch plan without IN" 2 env -u IN bash "$P/blocks.sbatch" plan
check_fails "blocks.sbatch, unknown step" 2 bash "$P/blocks.sbatch" plna

# The engines below run this same cpseg through shell scripts, Snakemake and
# Slurm (polling, mostly waiting): the sanitizer build has nothing more to find
# there that the loop above and test_cpseg_blocks do not exercise, so it stops
# here and keeps make check's time for code that runs under it.
[ "$SAN" = 1 ] && { finish; exit; }

# ---- Snakemake --------------------------------------------------------------
if command -v snakemake > /dev/null; then
    SM=(snakemake -s "$P/Snakefile" -j2 --directory "$T/smk" --config in="$T/vol.tif" block_size="$BS"
        overlap=8 model="$W" diameter=17 stitch=0.5 seg_flags="--flow-threshold 1" cpseg="$BIN/cpseg")
    check "snakemake -j2" sh -c '"$@" -q > sm1.out 2>&1' sh "${SM[@]}"
    check_same "snakemake labels = the loop's" loop.tif smk/labels.tif
    check_same "snakemake table = the loop's" loop.csv smk/labels_cells.csv
    check_eq "snakemake: one job per block" "$(ls smk/blocks/blocks | LC_ALL=C sort -n | tr '\n' ' ')" \
        "$(seq 0 $((NB - 1)) | tr '\n' ' ')"
    snap smk/blocks > snap3
    "${SM[@]}" > sm2.out 2>&1
    check "second snakemake does nothing" grep -q "Nothing to be done" sm2.out
    snap smk/blocks > snap4
    check_same "second snakemake rewrote nothing" snap3 snap4
    check_fails "snakemake without a volume" 1 snakemake -s "$P/Snakefile" -j1 --directory "$T/smk2" \
        --config in="$T/none.tif"
    grep -q "none.tif: set --config in=VOLUME" "$T/last.err" && ok ||
        bad "snakemake's message names the volume: $(head -c 300 "$T/last.err")"
else
    bad "snakemake is not installed (scripts/install-deps installs it)"
fi

# ---- Slurm, for real --------------------------------------------------------
if slurm_local_start "$T/cluster"; then
    # the cluster itself: a 4-task array, each task its index and environment
    printf '#!/bin/sh\necho "$SLURM_ARRAY_TASK_ID $SLURM_ARRAY_TASK_COUNT $PROBE" > "%s/probe.out.$SLURM_ARRAY_TASK_ID"\n' \
        "$T" > probe.sh
    check "sbatch --array=0-3 --wait" env PROBE=seen sbatch -Q --wait -c 1 --array=0-3 -o /dev/null probe.sh
    check_eq "each array task ran once, with the environment" "$(cat probe.out.* 2>/dev/null | tr '\n' ' ')" \
        "0 4 seen 1 4 seen 2 4 seen 3 4 seen "

    # submit.sh: the plan, the array (one CPU a task: two blocks at once on
    # two cores), the merge after it (afterok)
    export WORK=$T/sl OUT=$T/sl.tif
    mid=$(sh "$P/submit.sh" -c 1 -o "$T/sl-%A_%a.log" 2> sl.err)
    check "submit.sh" test -n "$mid"
    slurm_local_wait_job 120 "$mid" || bad "the merge job $mid did not end"
    check_eq "the merge job completed" "$(slurm_local_job_state "$mid")" "COMPLETED 0:0"
    aid=$(sed -n 's/^submitted array \([0-9]*\) .*/\1/p' sl.err)
    check_eq "one array task per block, each completed" "$(slurm_local_job_state "$aid" | sort | uniq -c | xargs)" \
        "$NB COMPLETED 0:0"
    check_same "slurm labels = the loop's" loop.tif sl.tif
    check_same "slurm table = the loop's" loop.csv sl_cells.csv

    # one block lost: resubmitted alone, then the merge after it; only that
    # block is redone
    snap sl > snap5
    rm -r sl/blocks/1
    jid=$(NBLOCKS=$NB sbatch --parsable -c 1 --array=1 -o "$T/sl-r.log" "$P/blocks.sbatch")
    mid=$(sbatch --parsable -c 1 --dependency=afterok:"$jid" -o "$T/sl-rm.log" "$P/blocks.sbatch" merge)
    slurm_local_wait_job 120 "$mid" || bad "the second merge job $mid did not end"
    check_eq "block 1 resubmitted alone, merged again" "$(slurm_local_job_state "$jid") $(slurm_local_job_state "$mid")" \
        "COMPLETED 0:0 COMPLETED 0:0"
    snap sl > snap6
    check_eq "only block 1 was rewritten" "$(diff snap5 snap6 | sed -n 's/^> \.\/blocks\/\([0-9]*\)\/.*/\1/p' | sort -u)" 1
    check "the merge rewrote the labels" test sl.tif -nt sl/plan.json
    check_same "slurm labels after the resubmission" loop.tif sl.tif

    # a block that fails: the merge job never runs (cancelled, as its
    # dependency cannot be met)
    printf '#!/bin/sh\ncase " $* " in *" --block "[0-9]*) echo "block refused" >&2; exit 1 ;; esac\nexec "%s" "$@"\n' \
        "$BIN/cpseg" > failseg && chmod +x failseg
    export WORK=$T/fail OUT=$T/fail.tif CPSEG=$T/failseg
    mid=$(sh "$P/submit.sh" -c 1 -o /dev/null 2> fail.err)
    check "submit.sh with failing blocks" test -n "$mid"
    slurm_local_wait_job 120 "$mid" || bad "the merge job $mid was not cancelled"
    check_eq "merge job cancelled after the failed array" "$(slurm_local_job_state "$mid" | cut -d' ' -f1)" CANCELLED
    check "no merged labels after failed blocks" test ! -e fail.tif
    CPSEG=false check_fails "submit.sh with a failing plan" 1 sh "$P/submit.sh"
    slurm_local_stop
else
    echo "SKIP slurm: $SLURM_LOCAL_WHY" >&2
    # the Slurm script still runs, as array tasks by hand
    task() { env SLURM_ARRAY_TASK_ID="$1" SLURM_ARRAY_TASK_COUNT="$2" WORK=sh bash "$P/blocks.sbatch"; }
    check_eq "blocks.sbatch plan" "$(WORK=sh bash "$P/blocks.sbatch" plan)" "$NB"
    for k in $(seq 0 $((NB - 1))); do check "blocks.sbatch task $k" task "$k" "$NB"; done
    check "blocks.sbatch merge" env WORK=sh OUT=sh.tif bash "$P/blocks.sbatch" merge
    check_same "blocks.sbatch labels = the loop's" loop.tif sh.tif
    check_same "blocks.sbatch table = the loop's" loop.csv sh_cells.csv
fi
finish
