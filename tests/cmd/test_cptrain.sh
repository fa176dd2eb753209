# cptrain: a tiny network on real DSB2018 pairs, determinism, resume,
# fine-tuning, the model in cpseg, bad input; the built-in model in cpseg.
. "$(dirname "$0")/lib.sh"
DSB=$SHARED/data/dsb2018
mkdir -p "$T/tr" "$T/va"
for id in 00071198d059ba7f5914a526d124d28e6d010c92466da21d4a04cd5413362552 \
          003cee89357d9fe13516167fd67b609a164651b21934585648c740d2c3d86dc1 \
          0280fa8f60f6bcae0f97d93c28f60be194f9309ff610dc5845e60455b0f87c21; do
    ln -sf "$DSB/${id}_img.png" "$DSB/${id}_masks.tif" "$T/tr/"
done
V=0287e7ee5b007c91ae2bd7628d09735e70496bc6127ecb7f3dd043e04ce37426
ln -sf "$DSB/${V}_img.png" "$DSB/${V}_masks.tif" "$T/va/"
TR="$BIN/cptrain -q --train $T/tr --val $T/va --nbase 2,8,16,32 --bsize 64 --batch-size 3
    --epochs 8 --nimg-per-epoch 6 --lr 0.02 --seed 3 --threads 1 --diam-mean 17"

# help, version, usage errors
check "--help" sh -c "$BIN/cptrain --help | grep -q -- --nimg-per-epoch"
check_eq "--version" "$($BIN/cptrain --version)" "cptrain (cptools) $(sed -n 's/^#define CP_VERSION_STRING "\(.*\)"/\1/p' "$CP_ROOT/include/cellpose/core.h")"
check_fails "bad flag" 2 $BIN/cptrain --bogus
check_fails "no --train" 2 $BIN/cptrain -o "$T/x.pth"
check_fails "no -o" 2 $BIN/cptrain --train "$T/tr"
check_fails "bad number" 2 $BIN/cptrain --train "$T/tr" -o "$T/x.pth" --epochs 0
check_fails "bad nbase" 2 $BIN/cptrain --train "$T/tr" -o "$T/x.pth" --nbase 8,,16
check_fails "tile not a multiple" 2 $BIN/cptrain --train "$T/tr" -o "$T/x.pth" --nbase 8,16,32 --bsize 66
mkdir -p "$T/empty"
check_fails "no pairs" 3 $BIN/cptrain --train "$T/empty" -o "$T/x.pth"
grep -q "empty: no image/label pairs" "$T/last.err" && ok || bad "no-pairs message names the folder"
mkdir -p "$T/mis"
ln -sf "$DSB/${V}_img.png" "$T/mis/a_img.png"
ln -sf "$DSB/0121d6759c5adb290c8e828fc882f37dfaf3663ec885c663859948c154a443ed_masks.tif" "$T/mis/a_masks.tif"
check_fails "label size mismatch" 3 $BIN/cptrain --train "$T/mis" -o "$T/x.pth"
grep -q "a_masks.tif: labels are 320x256" "$T/last.err" && ok || bad "mismatch message names the file"
check_fails "missing pretrained" 3 $BIN/cptrain --train "$T/tr" -o "$T/x.pth" --pretrained /nonexistent/m.pth
[ ! -e "$T/x.pth" ] && ok || bad "no output after errors"

# two runs: identical bytes and losses; the loss goes down
check "train" $TR -o "$T/a.pth" --log "$T/a.csv" --checkpoint-every 4
# (the sanitizer build skips the repeat: libtorch is slow to start there, and
# tests/unit/test_train.c checks determinism too)
if [ "${CP_SANITIZERS:-0}" != 1 ]; then
    check "train again" $TR -o "$T/b.pth" --log "$T/b.csv" --checkpoint-every 0
    check_same "deterministic model" "$T/a.pth" "$T/b.pth"
    check_eq "deterministic losses" "$(cut -d, -f1-4 "$T/a.csv")" "$(cut -d, -f1-4 "$T/b.csv")"
fi
check_eq "log header" "$(head -1 "$T/a.csv")" "epoch,train_loss,val_loss,lr,seconds"
check_eq "log rows" "$(wc -l < "$T/a.csv")" 9
check "loss goes down" awk -F, 'NR == 2 { a = $2 } NR == 9 { b = $2 } END { exit !(b < 0.8 * a) }' "$T/a.csv"
check "val loss logged" awk -F, 'NR > 1 && $3 == "" { exit 1 }' "$T/a.csv"

# interrupted after its epoch-4 checkpoint, then resumed
$TR -o "$T/d.pth" --checkpoint "$T/d.ckpt" --checkpoint-every 4 --log "$T/d.csv" &
pid=$!
while [ ! -e "$T/d.ckpt" ]; do sleep 0.2; done
kill -INT $pid; wait $pid; rc=$?
check_eq "interrupted (or already finished)" "$([ $rc -eq 130 ] || [ $rc -eq 0 ] && echo ok)" ok
check_eq "no temporaries after interrupt" "$(ls -A "$T" | grep -c '^\.')" 0
check "resume" $TR -o "$T/d.pth" --checkpoint "$T/d.ckpt" --resume "$T/d.ckpt" --log "$T/d.csv"
check_same "resumed = uninterrupted" "$T/a.pth" "$T/d.pth"
check_eq "resumed log" "$(cut -d, -f1-4 "$T/a.csv")" "$(cut -d, -f1-4 "$T/d.csv")"
check_fails "resume with other options" 3 $TR -o "$T/e.pth" --resume "$T/d.ckpt" --lr 0.1
grep -q -- "--lr" "$T/last.err" && ok || bad "resume mismatch names the option"

# the model segments with cpseg; a fine-tune keeps the network's shape
check "cpseg with the trained model" $BIN/cpseg -q --threads 1 --model "$T/a.pth" --diameter 17 --savedir "$T/seg" "$T/va/${V}_img.png"
[ -s "$T/seg/${V}_img_cp_masks.tif" ] && ok || bad "trained model wrote no masks"
check "fine-tune" $BIN/cptrain -q --train "$T/tr" --pretrained "$T/a.pth" --bsize 64 --batch-size 2 --epochs 2 --threads 1 -o "$T/f.pth"
check "fine-tuned model segments" $BIN/cpseg -q --threads 1 --model "$T/f.pth" --diameter 17 --savedir "$T/seg2" "$T/va/${V}_img.png"

# the built-in model: used without --model, also by name
check "built-in model" sh -c "cd '$T' && env -u CELLPOSE_MODEL_PATH HOME='$T' $BIN/cpseg --threads 1 --savedir '$T/seg3' '$T/va/${V}_img.png' 2> '$T/b.err'"
grep -q "built-in model (cptools_nuclei)" "$T/b.err" && ok || bad "built-in model not announced"
check "built-in by name" $BIN/cpseg -q --threads 1 --model cptools_nuclei --savedir "$T/seg4" "$T/va/${V}_img.png"
check_same "built-in by name = default" "$T/seg3/${V}_img_cp_masks.tif" "$T/seg4/${V}_img_cp_masks.tif"
finish
