# cpseg --plan / --block K/N / --merge: blockwise stitch-mode segmentation of
# a synthetic volume against the whole-volume run (built-in model), two block
# grids, reruns, a killed block, OME-Zarr in and out read by python.
. "$(dirname "$0")/lib.sh"
PY=/usr/bin/python3
SEG="$BIN/cpseg"
MODE="--stitch-threshold 0.5"
# nuclei of diameter ~16-22 on a jittered grid, 2 layers in Z apart (stitching
# joins touching layers on a whim), 1 layer under the sanitizers
SHAPE=50,112,112; BS_A=50,56,56; BS_B=30,112,56; OV_B=10,30,30
[ "${CP_SANITIZERS:-0}" = 1 ] && { SHAPE=24,84,84; BS_A=24,42,42; }
$PY - "$T/vol.tif" "$SHAPE" <<'EOF'
import sys, numpy as np, tifffile
from scipy import ndimage
Z, Y, X = (int(v) for v in sys.argv[2].split(','))
rng = np.random.default_rng(1)
v = np.zeros((Z, Y, X), np.float32)
zz, yy, xx = np.mgrid[0:Z, 0:Y, 0:X]
for cz in range(10, Z - 5, 28):
    for cy in range(14, Y - 8, 28):
        for cx in range(14, X - 8, 28):
            c = np.array([cz, cy, cx]) + rng.uniform(-3, 3, 3) * [0.3, 1, 1]
            r = rng.uniform(8, 11)
            d = ((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) / r ** 2
            v = np.maximum(v, (d <= 1) * rng.uniform(0.6, 1.0))
v = ndimage.gaussian_filter(v, 1.5) * 1000 + 100 + rng.normal(0, 20, v.shape)
tifffile.imwrite(sys.argv[1], np.clip(v, 0, 65535).astype(np.uint16), imagej=True)
EOF

# usage errors
check_fails "--plan without a 3D mode" 2 $SEG --plan --blocks "$T/x" "$T/vol.tif"
check_fails "--plan without --blocks" 2 $SEG --plan $MODE "$T/vol.tif"
check_fails "--plan and --merge" 2 $SEG --plan --merge "$T/x" $MODE "$T/vol.tif"
check_fails "bad --block-size" 2 $SEG --plan --blocks "$T/x" --block-size 4,4 $MODE "$T/vol.tif"
check_fails "-o without --merge" 2 $SEG -o "$T/x.tif" $MODE "$T/vol.tif"
check_fails "--block without a plan" 3 $SEG --blocks "$T/none" --block 0/1

# the whole volume at once: the reference
check "whole-volume run" $SEG -q --threads 1 $MODE --savedir "$T/whole" "$T/vol.tif"

# plan_run WORK BLOCK-SIZE OVERLAP: plan (prints N), every block 2 at a time
plan_run() {
    N=$($SEG -q --plan --blocks "$1" --block-size "$2" --overlap "$3" $MODE "$T/vol.tif" 2>/dev/null)
    local k=0
    while [ "$k" -lt "${N:-0}" ]; do
        $SEG -q --threads 1 --blocks "$1" --block "$k/$N" &
        [ $((k % 2)) = 1 ] && wait
        k=$((k + 1))
    done
    wait
}
plan_run "$T/A" $BS_A 30
check_eq "plan prints N" "$N" 4
check "plan.json: shape, grid, whole-volume percentiles (numpy)" $PY - "$T/A/plan.json" "$T/vol.tif" "$SHAPE" <<'EOF'
import sys, json, numpy as np, tifffile
p = json.load(open(sys.argv[1])); v = tifffile.imread(sys.argv[2]).astype(np.float32)
assert p['shape'] == [int(s) for s in sys.argv[3].split(',')] and p['grid'] == [1, 2, 2] and p['blocks'] == 4, p
n = p['normalization']
assert n[0]['lo'] == np.percentile(v, 1) and n[0]['hi'] == np.percentile(v, 99), (n, np.percentile(v, [1, 99]))
assert n[1]['skip'] is True, n
EOF

# above 224^3 voxels the plan samples as norm3D does: every Z/50-th plane,
# every L/224-th row and column
$PY -c "
import numpy as np, tifffile
rng = np.random.default_rng(3)
tifffile.imwrite('$T/big.tif', rng.gamma(2, 30, (120, 460, 460)).astype(np.uint8), imagej=True,
                metadata={'axes': 'ZYX'})"
check "plan of a 120x460x460 volume" $SEG -q --plan --blocks "$T/big" $MODE "$T/big.tif"
check "its percentiles: numpy's on v[::2, ::2, ::2]" $PY -c "
import json, numpy as np, tifffile
v = tifffile.imread('$T/big.tif')[::2, ::2, ::2].astype(np.float32)
n = json.load(open('$T/big/plan.json'))['normalization']
assert [n[0]['lo'], n[0]['hi']] == list(np.percentile(v, [1, 99])), (n, np.percentile(v, [1, 99]))"

# a rerun skips finished blocks (the labels are not rewritten)
m0=$(stat -c %Y.%y "$T/A/blocks/0/labels.npy")
$SEG -v --blocks "$T/A" --block 0/4 2> "$T/rerun.err"
check "rerun says skipped" grep -q "block 0/4: done before, skipped" "$T/rerun.err"
check_eq "rerun left block 0 alone" "$(stat -c %Y.%y "$T/A/blocks/0/labels.npy")" "$m0"
LD_DEBUG=files $SEG -q --blocks "$T/A" --block 0/4 > /dev/null 2> "$T/ld.log"
grep -q 'file=libtorch_cpu\.so' "$T/ld.log" && bad "a finished block loaded libtorch" || ok
check_fails "--block K/N with another N" 2 $SEG --blocks "$T/A" --block 0/5
grep -q "has 4 blocks" "$T/last.err" && ok || bad "N mismatch message: $(cat "$T/last.err")"
check_fails "--block with other settings" 2 $SEG --blocks "$T/A" --block 0/4 --flow-threshold 0.3
grep -q "flow_threshold 0.3 differs from the plan's 0.4" "$T/last.err" && ok || bad "settings message: $(cat "$T/last.err")"

# a killed block: the merge refuses, naming it; rerun alone, then it merges
rm -rf "$T/A/blocks/1"
$SEG -q --threads 1 --blocks "$T/A" --block 1/4 & pid=$!
sleep 0.3; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
check_fails "merge with a killed block" 1 $SEG --merge "$T/A" -o "$T/A.tif"
grep -q "1 of 4 blocks missing or failed, rerun them: 1$" "$T/last.err" && ok || bad "missing message: $(cat "$T/last.err")"
[ ! -e "$T/A.tif" ] && ok || bad "a refused merge wrote output"
check "rerun the killed block" $SEG -q --threads 1 --blocks "$T/A" --block 1/4
check "merge to TIFF" $SEG -q --merge "$T/A" -o "$T/A.tif"
check "merge to OME-Zarr" $SEG -q --merge "$T/A" -o "$T/A.zarr" --table "$T/A_zarr.csv"

# outputs read back by tifffile and python zarr; the table from the labels (numpy)
check "TIFF = OME-Zarr, table = labels" $PY - "$T/A.tif" "$T/A.zarr" "$T/A_cells.csv" "$T/A_zarr.csv" <<'EOF'
import sys, numpy as np, tifffile, zarr, pandas as pd
from scipy import ndimage
t = tifffile.imread(sys.argv[1]); g = zarr.open_group(sys.argv[2], mode='r')
z = g['0'][:]
assert t.dtype == np.uint32 and z.dtype == np.uint32 and (t == z).all()
assert g.attrs['multiscales'][0]['version'] == '0.4'
tab = pd.read_csv(sys.argv[3])
assert pd.read_csv(sys.argv[4]).equals(tab)
n = int(t.max()); assert list(tab['label']) == list(range(1, n + 1))
assert (tab['voxels'].values == np.bincount(t.ravel())[1:]).all()
for l, sl in enumerate(ndimage.find_objects(t.astype(np.int64)), 1):
    r = tab.iloc[l - 1]
    assert [r.z0, r.y0, r.x0, r.z1, r.y1, r.x1] == [s.start for s in sl] + [s.stop for s in sl], (l, r, sl)
# labels numbered by first voxel in raster order
_, first = np.unique(t.ravel(), return_index=True)
assert (np.diff(first[1:]) > 0).all()
EOF

# agree A B: cells of >= 200 voxels matched at IoU >= 0.9 (the rest are
# fragments one voxel of flow decides), none split or merged
cat > "$T/agree.py" <<'EOF'
import sys, json, numpy as np, tifffile
a = tifffile.imread(sys.argv[1]).astype(np.int64); b = tifffile.imread(sys.argv[2]).astype(np.int64)
MIN = 200
sa, sb = np.bincount(a.ravel()), np.bincount(b.ravel())
m = (a > 0) & (b > 0)
u, c = np.unique(a[m] * (b.max() + 1) + b[m], return_counts=True)
pa, pb = u // (b.max() + 1), u % (b.max() + 1)
iou = c / (sa[pa] + sb[pb] - c)
best = np.zeros(len(sa)); np.maximum.at(best, pa, iou)
big = np.nonzero(sa >= MIN)[0]; big = big[big > 0]
split = [int(x) for x in big if ((pa == x) & (c >= 0.2 * sa[pa])).sum() >= 2]
bigb = np.nonzero(sb >= MIN)[0]; bigb = bigb[bigb > 0]
merged = [int(y) for y in bigb if ((pb == y) & (c >= 0.2 * sb[pb])).sum() >= 2]
low = [int(x) for x in big if best[x] < 0.9]
print(json.dumps(dict(cells=len(big), min_iou=round(float(best[big].min()), 4), mean_iou=round(float(best[big].mean()), 4),
                      below_0_9=low, split=split, merged=merged)))
sys.exit(0 if not low and not split and not merged and len(big) >= 8 else 1)
EOF
check "blockwise = whole volume (grid 1x2x2)" $PY "$T/agree.py" "$T/whole/vol_cp_masks.tif" "$T/A.tif"

if [ "${CP_SANITIZERS:-0}" != 1 ]; then
    # another grid, split in Z too: the same cells
    plan_run "$T/B" $BS_B $OV_B
    check_eq "grid B has 4 blocks" "$N" 4
    check "merge grid B" $SEG -q --merge "$T/B" -o "$T/B.tif"
    check "grid 2x1x2 = whole volume" $PY "$T/agree.py" "$T/whole/vol_cp_masks.tif" "$T/B.tif"
    check "grid 2x1x2 = grid 1x2x2" $PY "$T/agree.py" "$T/A.tif" "$T/B.tif"

    # a block's labels do not depend on the thread count
    mkdir -p "$T/A2" && cp "$T/A/plan.json" "$T/A2/"
    check "block 0 on 2 threads" $SEG -q --threads 2 --blocks "$T/A2" --block 0/4
    check_same "block 0: 1 and 2 threads" "$T/A/blocks/0/labels.npy" "$T/A2/blocks/0/labels.npy"

    # OME-Zarr input (written by python zarr): the same plan values, the same block labels
    $PY -c "
import sys, zarr, tifffile
v = tifffile.imread('$T/vol.tif')
g = zarr.open_group('$T/vol.zarr', mode='w')
g.create_dataset('0', data=v, chunks=(8, 32, 32))
g.attrs['multiscales'] = [{'version': '0.4', 'axes': [{'name': n, 'type': 'space'} for n in 'zyx'],
    'datasets': [{'path': '0', 'coordinateTransformations': [{'type': 'scale', 'scale': [1, 1, 1]}]}]}]"
    Nz=$($SEG -q --plan --blocks "$T/Z" --block-size $BS_A --overlap 30 $MODE "$T/vol.zarr" 2>/dev/null)
    check_eq "plan of the OME-Zarr" "$Nz" 4
    check "OME-Zarr plan: TIFF's normalisation" $PY -c "
import json; a = json.load(open('$T/A/plan.json')); b = json.load(open('$T/Z/plan.json'))
assert a['normalization'] == b['normalization'] and a['grid'] == b['grid']"
    check "block 3 from the OME-Zarr" $SEG -q --threads 1 --blocks "$T/Z" --block 3/4
    check_same "its labels = the TIFF's" "$T/A/blocks/3/labels.npy" "$T/Z/blocks/3/labels.npy"
fi
finish
