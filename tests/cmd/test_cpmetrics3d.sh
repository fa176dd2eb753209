#!/usr/bin/env bash
# cpmetrics on label volumes: every column against scikit-image 0.19
# regionprops_table (and marching_cubes + mesh_surface_area) computed here,
# on the real platynereis nuclei and on a synthetic volume of odd shapes;
# quality against the golden Cellpose 3D AP values.
. "$(dirname "$0")/lib.sh"
M=$BIN/cpmetrics
PY=/usr/bin/python3
G=$SHARED/golden/3d
cd "$T" || exit 1

# synthetic volume (ImageJ calibration: 2 x 0.5 x 0.25 micron) and a
# two-channel intensity hyperstack
$PY - <<'EOF'
import numpy as np, tifffile
rng = np.random.default_rng(7)
D, H, W = 18, 40, 44
lab = np.zeros((D, H, W), np.uint32)
n = [0]
def put(mask):
    n[0] += 1
    lab[mask & (lab == 0)] = n[0]
z, y, x = np.mgrid[:D, :H, :W]
for c in [(0, 0, 0), (17, 39, 43), (5, 20, 20), (9, 2, 40)]:      # single voxels, two in corners
    m = np.zeros_like(lab, bool); m[c] = True; put(m)
put((z == 3) & ((y - 10) ** 2 + (x - 30) ** 2 <= 16))              # flat disc in one plane
put((y == 35) & (z >= 2) & (z < 9) & (x >= 3) & (x < 12))          # flat in a row plane
put((x == 0) & (z >= 10) & (z < 14) & (y >= 5) & (y < 15))         # flat on the volume's face
put((z == 12) & (y == 30) & (x >= 20) & (x < 31))                  # a line
put((z == 15) & (y >= 20) & (y < 27) & (x == y + 5))               # a diagonal line in a plane
put((np.abs(z - 8) + np.abs(y - 12) + np.abs(x - 8) == 0) | ((z == 9) & (y == 13) & (x == 9)))  # corner-touching pair
r = np.sqrt((z - 12.0) ** 2 + (y - 12.0) ** 2 + (x - 12.0) ** 2)
put((r <= 4.5) & (r > 2.5))                                         # hollow ball: a cavity
t = (np.sqrt((y - 28.0) ** 2 + (x - 32.0) ** 2) - 6) ** 2 + (z - 7.0) ** 2
put(t <= 3)                                                         # torus: a handle
blk = (z >= 13) & (z < 17) & (y >= 2) & (y < 12) & (x >= 28) & (x < 40)
holes = ((y == 5) | (y == 8)) & (x >= 30) & (x < 38) & (z >= 14) & (z < 16)
put(blk & ~holes & ~((x == 33) & (y >= 2) & (y < 12) & (z == 14)))  # slab with tunnels
for i in range(6):                                                  # tilted ellipsoids
    c = rng.uniform([3, 5, 5], [D - 3, H - 5, W - 5]); a = rng.uniform(1.5, 6, 3)
    R = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    p = np.stack([z - c[0], y - c[1], x - c[2]], -1) @ R
    put(((p / a) ** 2).sum(-1) <= 1)
put(rng.random((D, H, W)) < 0.01)                                   # scattered voxels: many objects
lab[lab == 3] = 1000                                                # labels need not be consecutive
tifffile.imwrite("synth.tif", lab.astype(np.uint16), imagej=True, resolution=(4.0, 2.0),
                 metadata={'spacing': 2.0, 'unit': 'micron', 'axes': 'ZYX'})
inten = rng.integers(0, 65535, (D, 2, H, W), dtype=np.uint16)
tifffile.imwrite('inten.tif', inten, imagej=True, metadata={'axes': 'ZCYX'})
np.save('synth.npy', lab)
small = np.zeros((3, 10, 10), np.uint16); small[1, 2:5, 2:5] = 1
tifffile.imwrite('mu.tif', small, imagej=True, resolution=(2.0, 2.0),
                 metadata={'axes': 'ZYX', 'unit': '\\u00B5m', 'spacing': 0.5})
tifffile.imwrite('chan.tif', small, imagej=True)  # tifffile calls these pages channels
tifffile.imwrite('pixel.tif', small, imagej=True, resolution=(2.0, 2.0),
                 metadata={'axes': 'ZYX', 'unit': 'pixel', 'spacing': 0.5})
EOF

check "cpmetrics on a calibrated TIFF volume with intensities" $M -i inten.tif -o synth.csv synth.tif
check "cpmetrics on the platynereis GT" $M -o platy.csv "$G/inputs/platynereis_tp7_gt.tif"

# every column against scikit-image; prints the checks' results as lines
$PY - synth.csv synth.tif inten.tif platy.csv "$G/inputs/platynereis_tp7_gt.tif" > cmp.txt 2> cmp.err <<'EOF'
import sys, warnings
import numpy as np, pandas as pd, tifffile
from scipy.spatial import ConvexHull
from skimage.measure import regionprops, marching_cubes, mesh_surface_area
warnings.simplefilter('ignore')

def hull_voxels(img):
    # skimage's second stage on every voxel centre: its Qhull pre-pass on the
    # centres fails when they are coplanar (empty hull, convex_area 0)
    pts = np.transpose(np.nonzero(img)).astype(float)
    off = np.array([[s * 0.5 if a == b else 0 for b in range(3)] for a in range(3) for s in (-1, 1)])
    pts = np.unique((pts[:, None, :] + off).reshape(-1, 3), axis=0)
    h = ConvexHull(pts)
    g = np.reshape(np.mgrid[tuple(map(slice, img.shape))], (3, -1)).astype(float)
    return int(np.all(h.equations[:, :3] @ g + h.equations[:, 3:] < 1e-10, axis=0).sum())

def close(a, b, tol=1e-9):
    return a == b or abs(a - b) <= tol * max(abs(a), abs(b))

def compare(csv, lab, inten, spacing):
    df = pd.read_csv(csv, keep_default_na=False, na_values=['nan'])
    props = regionprops(lab, intensity_image=inten)
    assert len(df) == len(props), (len(df), len(props))
    bad, loose, n = [], 0, 0
    for (_, row), p in zip(df.iterrows(), props):
        ev = p.inertia_tensor_eigvals
        ref = {'label': p.label, 'volume': p.area, 'bbox_min_plane': p.bbox[0],
               'bbox_min_row': p.bbox[1], 'bbox_min_col': p.bbox[2], 'bbox_max_plane': p.bbox[3],
               'bbox_max_row': p.bbox[4], 'bbox_max_col': p.bbox[5], 'centroid_z': p.centroid[0],
               'centroid_y': p.centroid[1], 'centroid_x': p.centroid[2],
               'equivalent_diameter': p.equivalent_diameter, 'extent': p.extent,
               'euler_number': p.euler_number, 'inertia_eigval_0': ev[0],
               'inertia_eigval_1': ev[1], 'inertia_eigval_2': ev[2],
               'major_axis_length': p.major_axis_length, 'minor_axis_length': p.minor_axis_length}
        cv = p.convex_area if p.convex_area > 0 else hull_voxels(p.image)
        ref['convex_volume'] = cv
        ref['solidity'] = p.area / cv
        # marching_cubes gives float32 vertices (exact here: edge midpoints) and
        # mesh_surface_area then sums in float32; the reference is that mesh's
        # area in float64
        padded = np.pad(p.image, 1).astype(np.float64)
        def area(**kw):
            v, f = marching_cubes(padded, 0.5, **kw)[:2]
            return mesh_surface_area(v.astype(np.float64), f)
        ref['surface_area'] = area()
        if spacing:
            ref['surface_area_physical'] = area(spacing=spacing)
            ref['volume_physical'] = p.area * spacing[0] * spacing[1] * spacing[2]
        if inten is not None:
            vals = inten[p.slice][p.image]
            for c in range(inten.shape[-1]):
                v = vals[:, c].astype(np.float64)
                ref[f'intensity_mean_c{c}'] = p.intensity_mean[c]
                ref[f'intensity_min_c{c}'] = p.intensity_min[c]
                ref[f'intensity_max_c{c}'] = p.intensity_max[c]
                ref[f'intensity_sum_c{c}'] = v.sum()
                ref[f'intensity_std_c{c}'] = v.std()
        major = p.major_axis_length
        for k, want in ref.items():
            got = row[k]
            n += 1
            if isinstance(want, (int, np.integer)):
                ok = got == want
            elif k in ('minor_axis_length',) or k.startswith('inertia_eigval'):
                # skimage gets minor = sqrt(10 (e1 + e2 - e0)) by cancellation: for thin
                # cells its error is ~1e-16 major^2, not relative to minor
                w = 0.0 if np.isnan(want) else want
                sq = k == 'minor_axis_length'
                ok = close(got, w) or abs(got ** (2 if sq else 1) - w ** (2 if sq else 1)) <= 1e-12 * major ** 2
                loose += ok and not close(got, w)
            elif k.startswith('intensity_mean') or k.startswith('intensity_std') or k.startswith('intensity_sum'):
                ok = close(got, want, 1e-12)
            else:
                ok = close(got, want)
            if not ok:
                bad.append(f'label {p.label} {k}: {got!r} vs {want!r}')
        # aspect ratio follows from the axes
        mj, mn = row['major_axis_length'], row['minor_axis_length']
        n += 1
        if not close(row['aspect_ratio'], mj / mn if mn > 0 else (np.inf if mj > 0 else 1.0)):
            bad.append(f'label {p.label} aspect_ratio')
        if spacing is None:
            n += 1
            if not (np.isnan(row['volume_physical']) and row['unit'] == ''):
                bad.append(f'label {p.label}: physical columns without a voxel size')
        elif row['unit'] != 'micron':
            bad.append(f'label {p.label}: unit {row["unit"]!r}')
    print(f'{csv}: {len(props)} cells, {n} values, {loose} thin-cell axes at 1e-12 major^2, {len(bad)} bad')
    for b in bad[:20]:
        print('BAD', b)
    return not bad

lab = tifffile.imread(sys.argv[2])
inten = np.moveaxis(tifffile.imread(sys.argv[3]), 1, -1)
ok1 = compare(sys.argv[1], lab, inten, (2.0, 0.5, 0.25))
ok2 = compare(sys.argv[4], tifffile.imread(sys.argv[5]), None, None)
print('ALLOK' if ok1 and ok2 else 'FAILED')
EOF
check_eq "every column = scikit-image (synthetic, platynereis)" "$(tail -n 1 cmp.txt)" "ALLOK"
[ "$(tail -n 1 cmp.txt)" = ALLOK ] || cat cmp.txt cmp.err >&2

# the same volume as NPY: same table except the physical columns, which come
# from --voxel-size
$M synth.npy --voxel-size 2,0.5,0.25 | sed 's/,micron$/,/; s/,micron,/,,/' > npy.csv
$M synth.tif | sed 's/,micron$/,/' > tif.csv
check_same "NPY + --voxel-size = calibrated TIFF" npy.csv tif.csv
check_eq "ImageJ unit \\u00B5m, spacing 0.5, 2 pixels per unit" "$($M mu.tif | sed -n 2p | cut -d, -f3,25,27)" "9,1.125,µm"
check_eq "unit=pixel is uncalibrated" "$($M pixel.tif | sed -n 2p | cut -d, -f25-)" "nan,nan,"
check_eq "label pages are planes whatever ImageJ calls them" "$($M chan.tif | sed -n 2p | cut -d, -f3,8,11)" "9,1,2"
check_eq "2D image with --3d: one-plane volume" \
    "$($M --3d "$TESTDATA/metrics/shapes.npy" | cut -d, -f2,3,8,11 | sed -n 2p)" "2,5,0,1"
OMP_NUM_THREADS=1 $M -i inten.tif synth.tif > t1.csv
check_same "same table with 1 thread" t1.csv synth.csv
$M --summary synth.tif > sum.csv
check_eq "3D summary columns" "$(head -n 1 sum.csv | cut -d, -f1-4,8)" "image,total_cells,volume_mean,volume_std,surface_area_mean"
check_eq "summary total = rows" "$(sed -n 2p sum.csv | cut -d, -f2)" "$(($(wc -l < synth.csv) - 1))"
check_eq "--min-area on voxels" "$($M --min-area 2 synth.tif | awk -F, 'NR > 1 && $3 < 2' | wc -l)" 0
check_eq "--exclude-edges in 3D drops cells on any face" \
    "$($M --exclude-edges synth.tif | awk -F, 'NR > 1 && ($8 == 0 || $9 == 0 || $10 == 0 || $11 == 18 || $12 == 40 || $13 == 44)' | wc -l)" 0

# errors: a volume in a 2D table, mismatched intensity, boundary scores in 3D
check_fails "volume after a 2D image" 1 $M "$TESTDATA/metrics/shapes.npy" synth.tif
check_fails "intensity planes differ" 1 $M -i "$TESTDATA/metrics/shapes_intensity.npy" synth.tif
check_fails "--boundary-scales on volumes" 1 $M --truth synth.tif --boundary-scales 1 synth.tif
check_fails "--voxel-size needs three values" 2 $M --voxel-size 1,2 synth.tif

# quality over voxels: the golden Cellpose AP of the 3D runs, and an
# independent AJI (cellpose.metrics.aggregated_jaccard_index's definition)
P=$G/dynamics3d/platy
RUNS="v3/niter84 v3/stitch v4/niter84"
for run in $RUNS; do
    $M --truth "$P/gt_renum.tif" "$P/$run/masks.tif" > "q_${run//\//_}.csv"
done
$PY - "$P" $RUNS > q.txt <<'EOF'
import sys, json
import numpy as np, pandas as pd, tifffile
from scipy.optimize import linear_sum_assignment
P = sys.argv[1]
t = tifffile.imread(f'{P}/gt_renum.tif').astype(np.int64)
for run in sys.argv[2:]:
    q = pd.read_csv('q_%s.csv' % run.replace('/', '_'))
    p = tifffile.imread(f'{P}/{run}/masks.tif').astype(np.int64)
    ap = json.load(open(f'{P}/{run}/run.json'))['ap_vs_gt_renum']
    ov = np.zeros((t.max() + 1, p.max() + 1), np.int64)
    np.add.at(ov, (t.ravel(), p.ravel()), 1)
    iou = (ov / (ov.sum(0, keepdims=True) + ov.sum(1, keepdims=True) - ov))[1:, 1:]
    cost = -(iou >= 0.5).astype(float) - iou / (2 * min(iou.shape))
    ti, pi = linear_sum_assignment(cost)
    aji = ov[1:, 1:][ti, pi].sum() / np.logical_or(t > 0, p > 0).sum()
    rows = q[q.image != 'ALL']
    ok = np.allclose(rows.ap.values, ap, rtol=0, atol=1e-7) and abs(rows.aji.values[0] - aji) <= 1e-12
    print(run, 'ok' if ok else f'BAD {rows[["ap", "aji"]].values.tolist()} {ap} {aji}')
EOF
check_eq "AP (golden Cellpose 3D runs) and AJI over voxels" "$(cat q.txt)" "$(printf '%s ok\n' $RUNS)"
check_fails "truth and prediction of different depth" 1 $M --truth "$P/gt_renum.tif" synth.tif

finish
