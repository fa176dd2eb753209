# Failing disks and killed processes, for every command that writes:
#   full disk  - a tiny tmpfs as the output folder (a real ENOSPC; skipped,
#                and said so, where this process may not mount), and a
#                file-size limit (ulimit -f: writes past it fail with EFBIG
#                partway through a file) for every command;
#   read-only  - the output folder is a read-only bind mount (skipped, and
#                said so, where this process may not mount);
#   SIGKILL    - a batch killed at several points.
# Each time: no partial file under a final name (every output present equals
# the clean run's byte for byte), no temporary left behind where the process
# could clean up, inputs unchanged, and a rerun completes with the same bytes.
. "$(dirname "$0")/lib.sh"
W=$SHARED/golden/weights/cpnet_nucleilike_s2_legacy.pth
SEG="$BIN/cpseg -q --model $W --diameter 30 --save flows,rois"

mkdir -p "$T/in" && cp "$TESTDATA"/seg/*.png "$T/in/"
inputs_sum() { (cd "$T/in" && sha256sum ./*); }
IN_SUM=$(inputs_sum)

# limited KB CMD...: CMD with a file-size limit of KB kilobytes. Its output
# goes through a pipe, since the limit would also stop the test's own log.
limited() {
    local kb=$1; shift
    (ulimit -f "$kb"; trap '' XFSZ; exec "$@") 2>&1 | cat > "$T/limited.err"
    return "${PIPESTATUS[0]}"
}
# readonly DIR CMD...: CMD with DIR mounted read-only (exit 99: cannot mount)
readonly_dir() {
    local d=$1; shift
    unshare -m sh -c 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 99; shift; exec "$@"' \
        sh "$d" "$@" > "$T/ro.out" 2> "$T/ro.err"
}
# tinyfs KB DIR SNAP CMD...: CMD with DIR a tmpfs of KB kilobytes; what DIR
# holds afterwards is copied to SNAP, stderr to SNAP.err (99: cannot mount)
tinyfs() {
    local kb=$1 d=$2 snap=$3; shift 3
    mkdir -p "$d" "$snap"
    unshare -m sh -c 'mount -t tmpfs -o size="$1"k tmpfs "$2" || exit 99; d=$2 snap=$3; shift 3
        "$@" 2> "$snap.err"; rc=$?; cp -a "$d/." "$snap/"; exit $rc' sh "$kb" "$d" "$snap" "$@" > /dev/null 2>&1
}
# visible files of DIR, one a line, sorted (temporaries start with a dot)
listing() { (cd "$1" && find . -type f ! -name '.*' ! -path '*/.*' | sort); }
temps() { (cd "$1" && find . -name '.*' ! -name . | sort); }
# complete DESC DIR REF: every visible file of DIR equals REF's
complete() {
    local f bad=0
    while read -r f; do
        cmp -s "$2/$f" "$3/$f" || { bad=1; echo "partial or wrong: $2/$f" >&2; }
    done < <(listing "$2")
    if [ $bad -eq 0 ]; then ok; else bad "$1: a file under a final name is not the finished output"; fi
}
# same_tree DESC DIR REF: same visible files, same bytes
same_tree() {
    check_eq "$1: file list" "$(listing "$2")" "$(listing "$3")"
    complete "$1" "$2" "$3"
}
no_temps() { check_eq "$1: no temporary left" "$(temps "$2")" ""; }
# killed DESC OUT REF CMD...: CMD killed by SIGKILL after 2 ms, 6 ms, ...
# each run resuming or redoing the last, until one finishes; after every
# kill, what OUT holds under final names equals REF's. Under the sanitizers
# (which a killed process never gets to report from) two kills are enough
# to run the resume paths sanitized; the many kill points are the normal
# build's.
KILLS=60; [ "${CP_SANITIZERS:-0}" = 1 ] && KILLS=2
killed() {
    local desc=$1 out=$2 ref=$3 d=0.002 n=0 pid; shift 3
    while [ $n -lt $KILLS ]; do
        "$@" > /dev/null 2>&1 & pid=$!
        sleep $d
        if ! kill -9 $pid 2> /dev/null; then
            wait $pid
            echo "$desc: killed $n times before a run finished" >&2
            return
        fi
        wait $pid 2> /dev/null
        n=$((n + 1))
        complete "$desc killed after ${d}s" "$out" "$ref"
        d=$(awk "BEGIN { print $d + 0.004 }")
    done
    echo "$desc: killed $n times, no run finished in time" >&2
}
# read_only DESC DIR CMD...: CMD writing into a read-only DIR fails, says so
read_only() {
    local desc=$1 d=$2; shift 2
    mkdir -p "$d"
    readonly_dir "$d" "$@"
    local rc=$?
    [ $rc -eq 99 ] && return
    check "$desc read-only folder: fails" test $rc -ne 0
    check "$desc read-only folder: one line says so" sh -c \
        "[ \$(wc -l < '$T/ro.err') -eq 1 ] && grep -q 'Read-only file system' '$T/ro.err'"
}

# ---- cpseg: a batch of four images, three outputs each ----------------------
check "cpseg clean run" $SEG --savedir "$T/seg_ref" "$T/in"
mkdir -p "$T/seg_full"
limited 16 $SEG --savedir "$T/seg_full" "$T/in"
check_eq "cpseg full disk: exit 1 (images failed)" $? 1
check "cpseg full disk: the error names the file" grep -q "seg_full/a_flows.npy: write failed: File too large" \
    "$T/limited.err"
complete "cpseg full disk" "$T/seg_full" "$T/seg_ref"
no_temps "cpseg full disk" "$T/seg_full"
check "cpseg after the full disk" $SEG --savedir "$T/seg_full" "$T/in"
same_tree "cpseg rerun after the full disk" "$T/seg_full" "$T/seg_ref"

tinyfs 64 "$T/seg_tiny" "$T/seg_tiny_after" $SEG --savedir "$T/seg_tiny" "$T/in"
rc=$?
if [ $rc -eq 99 ]; then
    echo "SKIP tmpfs: this process cannot mount one" >&2
else
    check_eq "cpseg on a full tmpfs: exit 1" $rc 1
    check "cpseg on a full tmpfs: the error names the file" \
        grep -q "seg_tiny/[a-d]_[a-z_]*\.[a-z]*: .*No space left on device" "$T/seg_tiny_after.err"
    complete "cpseg on a full tmpfs" "$T/seg_tiny_after" "$T/seg_ref"
    no_temps "cpseg on a full tmpfs" "$T/seg_tiny_after"
fi

mkdir -p "$T/seg_ro"
readonly_dir "$T/seg_ro" $SEG --savedir "$T/seg_ro" "$T/in"
rc=$?
if [ $rc -eq 99 ]; then
    echo "SKIP read-only outputs: this process cannot make a read-only bind mount" >&2
else
    check_eq "cpseg read-only folder: exit 1" $rc 1
    check "cpseg read-only folder: the error says so" grep -q "seg_ro/a_[a-z_]*\.[a-z]*: cannot create output: Read-only file system" \
        "$T/ro.err"
fi

# killed again and again, each run resuming the last, until one finishes:
# masks from 12 saved flow fields of the 512x512 demo image, so the kills
# land among the writes and not only in start-up
check "cpseg demo flows" $BIN/cpseg -q --model $W --diameter 17 --save flows --savedir "$T/demo" \
    "$TESTDATA/demo/nuclei.tif"
mkdir -p "$T/ff" "$T/ff_ref" "$T/ff_kill"
FLOWS=()
for i in $(seq -w 1 12); do
    cp "$T/demo/nuclei_flows.npy" "$T/ff/n${i}_flows.npy"
    FLOWS+=(--from-flows "$T/ff/n${i}_flows.npy")
done
FF="$BIN/cpseg -q --diameter 17 --save rois,png"
check "cpseg from flows, clean run" $FF --savedir "$T/ff_ref" "${FLOWS[@]}"
d=0.05 kills=0
while [ $kills -lt $((KILLS / 2)) ]; do
    $FF --savedir "$T/ff_kill" "${FLOWS[@]}" & pid=$!
    sleep $d
    kill -9 $pid 2> /dev/null || { wait $pid; break; }
    wait $pid 2> /dev/null
    kills=$((kills + 1))
    complete "cpseg killed after ${d}s" "$T/ff_kill" "$T/ff_ref"
    d=$(awk "BEGIN { print $d + 0.06 }")
done
echo "cpseg: killed $kills times, $(listing "$T/ff_kill" | wc -l) of $(listing "$T/ff_ref" | wc -l) files then" >&2
check "cpseg after the kills" $FF --savedir "$T/ff_kill" "${FLOWS[@]}"
same_tree "cpseg rerun after the kills" "$T/ff_kill" "$T/ff_ref"

# ---- cpmetrics: one table --------------------------------------------------
M="$BIN/cpmetrics -q"
check "cpmetrics clean run" $M -o "$T/cells_ref.csv" "$T"/seg_ref/*_cp_masks.tif
mkdir -p "$T/met"
limited 0 $M -o "$T/met/cells.csv" "$T"/seg_ref/*_cp_masks.tif
check_eq "cpmetrics full disk: exit 3" $? 3
check_eq "cpmetrics full disk: no table" "$(listing "$T/met")" ""
no_temps "cpmetrics full disk" "$T/met"
read_only "cpmetrics" "$T/met" $M -o "$T/met/cells.csv" "$T"/seg_ref/*_cp_masks.tif
mkdir -p "$T/met_ref" "$T/met_kill" && cp "$T/cells_ref.csv" "$T/met_ref/cells.csv"
killed "cpmetrics" "$T/met_kill" "$T/met_ref" $M -o "$T/met_kill/cells.csv" "$T"/seg_ref/*_cp_masks.tif
check "cpmetrics after the faults" $M -o "$T/met/cells.csv" "$T"/seg_ref/*_cp_masks.tif
check_same "cpmetrics table after the faults" "$T/met/cells.csv" "$T/cells_ref.csv"

# ---- cpcells: a folder and a ZIP of cells -----------------------------------
C="$BIN/cpcells -q"
check "cpcells clean run" $C "$T/in/c.png" "$T/seg_ref/c_cp_masks.tif" -o "$T/cells_ref"
check "cpcells clean ZIP" $C "$T/in/c.png" "$T/seg_ref/c_cp_masks.tif" --zip "$T/cells_ref.zip"
mkdir -p "$T/cc"
limited 1 $C "$T/in/c.png" "$T/seg_ref/c_cp_masks.tif" -o "$T/cc/cells"
check_eq "cpcells full disk: exit 3" $? 3
limited 0 $C "$T/in/c.png" "$T/seg_ref/c_cp_masks.tif" --zip "$T/cc/cells.zip"
check_eq "cpcells full disk, ZIP: exit 3" $? 3
check_eq "cpcells full disk: nothing under a final name" "$(listing "$T/cc")" ""
no_temps "cpcells full disk" "$T/cc"
tinyfs 4 "$T/cc_tiny" "$T/cc_tiny_after" $C "$T/in/c.png" "$T/seg_ref/c_cp_masks.tif" -o "$T/cc_tiny/cells"
rc=$?
if [ $rc -ne 99 ]; then
    check_eq "cpcells on a full tmpfs: exit 3" $rc 3
    check "cpcells on a full tmpfs: says so" grep -q "No space left on device" "$T/cc_tiny_after.err"
    check_eq "cpcells on a full tmpfs: no folder of cells" "$(listing "$T/cc_tiny_after")" ""
    no_temps "cpcells on a full tmpfs" "$T/cc_tiny_after"
fi
check "cpcells after the full disk" $C "$T/in/c.png" "$T/seg_ref/c_cp_masks.tif" -o "$T/cc/cells"
check "cpcells ZIP after the full disk" $C "$T/in/c.png" "$T/seg_ref/c_cp_masks.tif" --zip "$T/cc/cells.zip"
same_tree "cpcells rerun after the full disk" "$T/cc/cells" "$T/cells_ref"
check_same "cpcells ZIP after the full disk" "$T/cc/cells.zip" "$T/cells_ref.zip"
read_only "cpcells" "$T/cc_ro" $C "$T/in/c.png" "$T/seg_ref/c_cp_masks.tif" -o "$T/cc_ro/cells"
read_only "cpcells ZIP" "$T/cc_ro" $C "$T/in/c.png" "$T/seg_ref/c_cp_masks.tif" --zip "$T/cc_ro/cells.zip"
# a batch (--from-seg: every NAME_cp_masks.tif with NAME.png) killed again and again
mkdir -p "$T/pairs" "$T/ccb_ref" "$T/ccb_kill"
for n in a b c d; do ln -s "$T/in/$n.png" "$T/seg_ref/${n}_cp_masks.tif" "$T/pairs/"; done
check "cpcells batch, clean run" $C --from-seg "$T/pairs" -o "$T/ccb_ref" --zip
killed "cpcells batch" "$T/ccb_kill" "$T/ccb_ref" $C --from-seg "$T/pairs" -o "$T/ccb_kill" --zip
check "cpcells batch after the kills" $C --from-seg "$T/pairs" -o "$T/ccb_kill" --zip
same_tree "cpcells batch rerun after the kills" "$T/ccb_kill" "$T/ccb_ref"

# ---- spotquery: a table ----------------------------------------------------
S="$BIN/spotquery spots -q"
# a dataset big enough that the kills below land inside the run
check "spotquery generate" sh -c "$BIN/spotquery gen-synthetic --spots 5000 --seed 3 '$T/bigds' > /dev/null 2>&1"
check "spotquery clean run" $S -o "$T/spots_ref.csv" "$TESTDATA/spots/csv_dataset"
mkdir -p "$T/sq"
limited 2 $S -o "$T/sq/spots.csv" "$TESTDATA/spots/csv_dataset"
rc=$?
check "spotquery full disk: fails" test $rc -ne 0
check_eq "spotquery full disk: no table" "$(listing "$T/sq")" ""
no_temps "spotquery full disk" "$T/sq"
read_only "spotquery" "$T/sq_ro" $S -o "$T/sq_ro/spots.csv" "$TESTDATA/spots/csv_dataset"
mkdir -p "$T/sq_ref" "$T/sq_kill" && cp "$T/spots_ref.csv" "$T/sq_ref/spots.csv"
check "spotquery clean run, big" $S -o "$T/sq_ref/big.csv" "$T/bigds"
killed "spotquery" "$T/sq_kill" "$T/sq_ref" $S -o "$T/sq_kill/big.csv" "$T/bigds"
check "spotquery after the full disk" $S -o "$T/sq/spots.csv" "$TESTDATA/spots/csv_dataset"
check_same "spotquery table after the full disk" "$T/sq/spots.csv" "$T/spots_ref.csv"

# ---- cptrain: checkpoints and model ----------------------------------------
DSB=$SHARED/data/dsb2018
mkdir -p "$T/tr"
for id in $(ls "$DSB" | sed -n 's/_img\.png$//p' | head -n 3); do
    ln -sf "$DSB/${id}_img.png" "$DSB/${id}_masks.tif" "$T/tr/"
done
TR="$BIN/cptrain -q --train $T/tr --nbase 2,8,16,32 --bsize 64 --batch-size 2 --epochs 4 --nimg-per-epoch 2
    --lr 0.02 --seed 3 --threads 1 --diam-mean 17 --checkpoint-every 1 --min-masks 1"
mkdir -p "$T/trref" "$T/trfull"
check "cptrain clean run" $TR -o "$T/trref/m.pth"
limited 8 $TR -o "$T/trfull/m.pth"
check "cptrain full disk: fails" test $? -ne 0
check_eq "cptrain full disk: nothing under a final name" "$(listing "$T/trfull")" ""
no_temps "cptrain full disk" "$T/trfull"
check "cptrain after the full disk" $TR -o "$T/trfull/m.pth"
check_same "cptrain model after the full disk" "$T/trfull/m.pth" "$T/trref/m.pth"

read_only "cptrain" "$T/trro" $TR -o "$T/trro/m.pth"
# killed by SIGKILL once a checkpoint exists, then resumed from it
mkdir -p "$T/trkill"
$TR -o "$T/trkill/m.pth" & pid=$!
while [ ! -e "$T/trkill/m.pth.ckpt" ] && kill -0 $pid 2> /dev/null; do sleep 0.05; done
kill -9 $pid 2> /dev/null
wait $pid 2> /dev/null
# the model saved with the checkpoint is an earlier epoch's, but whole
check "cptrain killed: the saved model is a whole zip" sh -c "unzip -tq \"$T/trkill/m.pth\" > /dev/null"
check "cptrain resumed after SIGKILL" $TR -o "$T/trkill/m.pth" --resume "$T/trkill/m.pth.ckpt"
check_same "cptrain resumed model" "$T/trkill/m.pth" "$T/trref/m.pth"

check_eq "inputs unchanged" "$(inputs_sum)" "$IN_SUM"
finish
