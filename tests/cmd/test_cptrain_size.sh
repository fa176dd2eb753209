# cptrain --train-size: a size model for a tiny network on real DSB2018
# pairs, in Cellpose's file format (read back by numpy), the same bytes for
# any thread count and alone or after training, then used by cpseg
# --diameter 0; the built-in model's compiled-in size model; usage errors.
. "$(dirname "$0")/lib.sh"
DSB=$SHARED/data/dsb2018
PY=/usr/bin/python3
mkdir -p "$T/tr" "$T/va"
for id in 00071198d059ba7f5914a526d124d28e6d010c92466da21d4a04cd5413362552 \
          003cee89357d9fe13516167fd67b609a164651b21934585648c740d2c3d86dc1 \
          0280fa8f60f6bcae0f97d93c28f60be194f9309ff610dc5845e60455b0f87c21; do
    ln -sf "$DSB/${id}_img.png" "$DSB/${id}_masks.tif" "$T/tr/"
done
V=0287e7ee5b007c91ae2bd7628d09735e70496bc6127ecb7f3dd043e04ce37426
ln -sf "$DSB/${V}_img.png" "$DSB/${V}_masks.tif" "$T/va/"
SZ="--size-epochs 3 --size-bsize 64 --seed 5"
TR="$BIN/cptrain --train $T/tr --nbase 2,8,16,32 --bsize 64 --batch-size 3
    --epochs 2 --nimg-per-epoch 3 --lr 0.02 --seed 5 --diam-mean 17"

# usage errors
check "--help" sh -c "$BIN/cptrain --help | grep -q -- --train-size"
check_fails "size flags without --train-size" 2 $BIN/cptrain --train "$T/tr" -o "$T/x.pth" --size-epochs 2
check_fails "--train-size without a model" 2 $BIN/cptrain --train "$T/tr" --train-size
check_fails "built-in model: no file to write beside" 2 $BIN/cptrain --train "$T/tr" --pretrained cptools_nuclei --train-size
[ ! -e "$T/x.pth" ] && ok || bad "no output after usage errors"

# the network, then its size model beside it (MODEL.pth_size.npy, as Cellpose)
check "train with --train-size" $TR --val "$T/va" $SZ --threads 1 --train-size -o "$T/a.pth" 2> "$T/a.err"
[ -s "$T/a.pth" ] && [ -s "$T/a.pth_size.npy" ] && ok || bad "model and size model written"
grep -q "size model: 9 crops, train correlation .*, test correlation .* (1 images).* -> $T/a.pth_size.npy" "$T/a.err" &&
    ok || bad "size model summary: $(cat "$T/a.err")"
check_eq "no temporaries" "$(ls -A "$T" | grep -c '^\.')" 0

# numpy reads it as Cellpose does: keys, types, shapes; diam_mean from the
# network; exp(ymean) * diam_mean (the estimate at the mean style) among the
# scaled training diameters, which numpy measures from the label images
ymean=$(sed -n 's/.*ymean \([-0-9.]*\) ->.*/\1/p' "$T/a.err")
check "numpy loads the size model" $PY - "$T/a.pth_size.npy" "$T/tr" "$ymean" <<'PY'
import glob, math, sys
import numpy as np, tifffile
path, tr, ymean_log = sys.argv[1], sys.argv[2], float(sys.argv[3])
d = np.load(path, allow_pickle=True).item()
ok = sorted(d) == ['A', 'diam_mean', 'smean', 'ymean']
ok &= d['A'].dtype == np.float64 and d['A'].shape == (32,) and d['smean'].dtype == np.float32
ok &= d['smean'].shape == (32,) and type(d['diam_mean']) is float and d['diam_mean'] == 17.0
ok &= type(d['ymean']) is np.float32 and abs(float(d['ymean']) - ymean_log) <= 5e-5
ok &= bool(np.all(np.isfinite(d['A']))) and float(np.abs(d['A']).max()) > 0
diams = []
for f in glob.glob(tr + '/*_masks.tif'):
    m = tifffile.imread(f)
    _, counts = np.unique(m, return_counts=True)
    diams.append(max(5.0, np.median(np.sqrt(counts[1:])) / (math.sqrt(math.pi) / 2)))
est = d['diam_mean'] * math.exp(float(d['ymean']))
print('diameters', diams, 'estimate at smean', est, file=sys.stderr)
ok &= 0.5 * min(diams) <= est <= 1.5 * max(diams)
sys.exit(0 if ok else 1)
PY

# the size model of a given model alone: the same bytes, for 1 or 2 threads
cp "$T/a.pth" "$T/b.pth"
check "size model alone" $BIN/cptrain -q --train "$T/tr" --val "$T/va" --pretrained "$T/b.pth" --train-size $SZ --threads 1
check_same "alone = after training" "$T/a.pth_size.npy" "$T/b.pth_size.npy"
if [ "${CP_SANITIZERS:-0}" != 1 ]; then
    check "size model, 2 threads" $BIN/cptrain -q --train "$T/tr" --pretrained "$T/b.pth" --train-size $SZ --threads 2 \
        --size-output "$T/c_size.npy"
    check_same "thread count does not matter" "$T/a.pth_size.npy" "$T/c_size.npy"
fi

# cpseg --diameter 0 finds it beside the model and uses it
check "cpseg --diameter 0" $BIN/cpseg --threads 1 --model "$T/a.pth" --diameter 0 --manifest "$T/m.jsonl" \
    --savedir "$T/seg" "$T/va/${V}_img.png" 2> "$T/seg.err"
grep -q "estimated diameter" "$T/seg.err" && ok || bad "no estimate printed: $(cat "$T/seg.err")"
check "manifest names the size model" $PY - "$T/m.jsonl" "$T/a.pth_size.npy" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).readline())
e = r['diameter_estimate']
sys.exit(0 if e['size_model'] == sys.argv[2] and e['diameter'] > 0 else 1)
PY
[ -s "$T/seg/${V}_img_cp_masks.tif" ] && ok || bad "no masks"

# the built-in model: its size model is compiled in (no file), numpy reads the shipped one
check "built-in model, --diameter 0" sh -c "cd '$T' && env -u CELLPOSE_MODEL_PATH HOME='$T' $BIN/cpseg --threads 1 \
    --diameter 0 --savedir '$T/seg2' '$T/va/${V}_img.png' 2> '$T/b.err'"
grep -q "estimated diameter" "$T/b.err" && ok || bad "built-in: no estimate: $(cat "$T/b.err")"
check "shipped size model loads in numpy" $PY -c "
import sys, numpy as np
d = np.load('$CP_ROOT/lib/net/models/cptools_nuclei.pth_size.npy', allow_pickle=True).item()
sys.exit(0 if d['A'].shape == (128,) and d['diam_mean'] == 30.0 and np.abs(d['A']).max() > 0 else 1)"
finish
