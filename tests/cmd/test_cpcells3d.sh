# cpcells on label volumes (issue 19): one ImageJ hyperstack per cell. Every
# cell file is read back with tifffile and compared with its crop computed
# here in numpy (3D bounding box grown by --pad in Y, X and --pad-z in Z,
# clipped), as an array, as ImageJ metadata (axes, images, channels, slices),
# as one contiguous block of pixel data at the series' data offset, and for
# its calibration; cells.csv is checked with pandas against numpy's boxes.
. "$(dirname "$0")/lib.sh"
C=$BIN/cpcells
G=$SHARED/golden/3d/inputs
PY=/usr/bin/python3
cd "$T" || exit 1

# Inputs: the golden synthetic volume (32 x 80 x 80, u16, uncalibrated) as it
# is and as a calibrated 2-channel ImageJ hyperstack; a small label volume
# with edge cases (one voxel, a cell in one plane, one in two separate planes,
# a 5-digit label, cells on every edge, neighbours inside a box) with a
# 3-channel u8 hyperstack and a float32 volume (scaled); a 3-plane image
# without metadata next to 3-plane labels calibrated in \u00B5m.
$PY - "$G" <<'EOF'
import sys, numpy as np, tifffile
G = sys.argv[1]
img = tifffile.imread(G + '/synth3d_s5.tif')
two = np.stack([img, (img[:, ::-1, :] // 3 + 7).astype(np.uint16)], 1)       # Z C Y X
tifffile.imwrite('two.tif', two, imagej=True, resolution=(1 / 0.25, 1 / 0.5),
                 metadata={'axes': 'ZCYX', 'spacing': 2.0, 'unit': 'micron'})
np.save('two_truth.npy', two)
np.save('one_truth.npy', img[:, None])
lab = np.zeros((6, 20, 24), np.uint32)
lab[0, 0, 0] = 1
lab[1:4, 4:7, 4:8] = 2
lab[2, 5, 8:10] = 5                  # touching 2, inside its padded box
lab[1:3, 8:10, 4:6] = 6
lab[5, 10:13, 2:9] = 3               # one plane, the last
lab[0, 15, 15:18] = 70000            # two pieces, planes 0 and 4
lab[4, 17, 20] = 70000
lab[5, 19, 23] = 7                   # last voxel
lab[2:6, 0:2, 20:24] = 8             # top-right edge, down to the last plane
tifffile.imwrite('syn_labels.tif', lab.astype(np.uint32))
rng = np.random.default_rng(19)
rgb = rng.integers(0, 256, (6, 3, 20, 24), dtype=np.uint8)
tifffile.imwrite('syn_rgb.tif', rgb, imagej=True, metadata={'axes': 'ZCYX'})
np.save('syn_rgb_truth.npy', rgb)
f = rng.normal(100, 30, (6, 20, 24)).astype(np.float32)
f[3, 3, 3] = np.nan
tifffile.imwrite('syn_f32.tif', f, imagej=True, metadata={'axes': 'ZYX'})
v = f.astype(np.float64)
lo, hi = np.nanmin(v), np.nanmax(v)
u = np.clip(np.floor((v - lo) * 65535.0 / (hi - lo) + 0.5), 0, 65535)
u[np.isnan(v)] = 0
np.save('syn_f32_truth.npy', u.astype(np.uint16)[:, None])
open('syn_f32.scale', 'w').write('%r,%r' % (lo, hi))
small = np.zeros((3, 8, 9), np.uint16)
small[1:3, 2:5, 3:7] = 4
small[0, 7, 8] = 9
tifffile.imwrite('mu_labels.tif', small, imagej=True, resolution=(2.0, 4.0),
                 metadata={'axes': 'ZYX', 'spacing': 0.3, 'unit': '\\u00B5m'})
plain = (np.arange(3 * 8 * 9).reshape(3, 8, 9) + 100).astype(np.uint16)
tifffile.imwrite('plain3.tif', plain, photometric='minisblack', metadata=None)
np.save('plain3_truth.npy', plain[:, None])
tifffile.imwrite('lab2d.tif', tifffile.imread(G + '/synth3d_s5_labels.tif')[16])
tifffile.imwrite('lab_narrow.tif', tifffile.imread(G + '/synth3d_s5_labels.tif')[:, :, :79])
EOF
check "3D inputs made" [ -f plain3_truth.npy ]

cat > check3d.py <<'EOF'
# check3d.py [LABELS TRUTH.npy OUT PAD PAD_Z KEEP MASK SCALE CAL]...: prints
# "OUT ok" when every cell file of OUT (folder or .zip) and cells.csv are what
# numpy says, else "OUT bad" (the differences on stderr). TRUTH is (Z, C, Y, X)
# u16 as the cells must hold it; SCALE is "lo,hi" or "-"; CAL is "z,y,x,unit"
# or "-".
import io, os, sys, zipfile
import numpy as np, pandas as pd, tifffile

def check_one(lab_path, truth, out, pad, pad_z, keep, mask, scale, cal):
    lab = tifffile.imread(lab_path)
    img = np.load(truth)
    pad, pad_z, keep, mask = int(pad), int(pad_z), int(keep), int(mask)
    Z, C, H, W = img.shape
    assert lab.shape == (Z, H, W), (lab.shape, img.shape)
    if out.endswith('.zip'):
        z = zipfile.ZipFile(out)
        files = {n: z.read(n) for n in z.namelist()}
    else:
        files = {n: open(os.path.join(out, n), 'rb').read() for n in os.listdir(out)}
    labels = [int(v) for v in np.unique(lab) if v]
    digits = max(4, len(str(max(labels))))
    name = lambda v, s='': 'cell_%0*d%s.tif' % (digits, v, s)
    bad = []
    want_files = sorted([name(v) for v in labels] + ([name(v, '_mask') for v in labels] if mask else []) + ['cells.csv'])
    if sorted(files) != want_files:
        bad.append('files %s' % sorted(files))
    cols = ('label,file,bbox_min_plane,bbox_min_row,bbox_min_col,bbox_max_plane,bbox_max_row,bbox_max_col,area,pad,'
            'pad_z,crop_min_plane,crop_min_row,crop_min_col,crop_max_plane,crop_max_row,crop_max_col,scale_lo,scale_hi').split(',')
    csv = pd.read_csv(io.BytesIO(files['cells.csv']), float_precision='round_trip')
    if list(csv.columns) != cols or list(csv['label']) != labels:
        bad.append('cells.csv columns %s labels %s' % (list(csv.columns), list(csv['label'])))
        csv = None

    def block(data, t, want):
        """The series' pixels as one block at its data offset, as ImageJ reads them."""
        s = t.series[0]
        off = s.dataoffset
        return off is not None and off == t.pages[0].dataoffsets[0] and \
            data[off: off + want.nbytes] == want.astype('<' + want.dtype.str[1:]).tobytes()

    def calibration(t, v, what):
        ij = t.imagej_metadata or {}
        p = t.pages[0]
        if cal == '-':
            if 'unit' in ij or 'spacing' in ij or 'XResolution' in p.tags:
                bad.append('label %d %s: calibrated (%s)' % (v, what, ij))
            return
        cz, cy, cx, unit = cal.split(',')
        xr, yr = p.tags['XResolution'].value, p.tags['YResolution'].value
        ok = (ij.get('unit') == unit and abs(ij.get('spacing', 0) - float(cz)) < 1e-12 and
              abs(xr[1] / xr[0] - float(cx)) < 1e-6 * float(cx) and abs(yr[1] / yr[0] - float(cy)) < 1e-6 * float(cy) and
              p.tags['ResolutionUnit'].value == 1)
        if not ok:
            bad.append('label %d %s: calibration %s %s %s' % (v, what, ij, xr, yr))

    for i, v in enumerate(labels):
        zz, rr, cc = np.nonzero(lab == v)
        box = [zz.min(), rr.min(), cc.min(), zz.max() + 1, rr.max() + 1, cc.max() + 1]
        z0, z1 = max(box[0] - pad_z, 0), min(box[3] + pad_z, Z)
        r0, r1 = max(box[1] - pad, 0), min(box[4] + pad, H)
        c0, c1 = max(box[2] - pad, 0), min(box[5] + pad, W)
        inside = lab[z0:z1, r0:r1, c0:c1] == v
        want = img[z0:z1, :, r0:r1, c0:c1]
        if not keep:
            want = np.where(inside[:, None], want, 0)
        want = want.astype(np.uint16)
        d = z1 - z0
        axes = ('Z' if d > 1 else '') + ('C' if C > 1 else '') + 'YX'
        shape = ((d,) if d > 1 else ()) + ((C,) if C > 1 else ()) + (r1 - r0, c1 - c0)   # tifffile drops Z, C of 1
        data = files.get(name(v))
        if csv is not None:
            row = csv.iloc[i]
            got = [int(row[k]) for k in cols[2:17] if k != 'pad' and k != 'pad_z' and k != 'area']
            exp = box + [z0, r0, c0, z1, r1, c1]
            sc = '-' if pd.isna(row['scale_lo']) else '%r,%r' % (row['scale_lo'], row['scale_hi'])
            if (got != exp or row['file'] != name(v) or int(row['area']) != len(zz) or int(row['pad']) != pad or
                    int(row['pad_z']) != pad_z or sc != scale):
                bad.append('label %d: csv %s, want %s area %d scale %s' % (v, list(row), exp, len(zz), scale))
        if data is None:
            continue
        with tifffile.TiffFile(io.BytesIO(data)) as t:
            ij, s = t.imagej_metadata or {}, t.series[0]
            got = s.asarray()
            if (ij.get('images') != d * C or ij.get('channels', 1) != C or ij.get('slices', 1) != d or
                    s.axes != axes or got.dtype != np.uint16):
                bad.append('label %d: imagej %s, axes %s %s; want %d x %d, %s' % (v, ij, s.axes, got.dtype, d, C, axes))
            if got.shape != shape or not np.array_equal(got, want.reshape(shape)):
                bad.append('label %d: read %s, want %s' % (v, got.shape, want.shape))
            if not block(data, t, want):
                bad.append('label %d: pixel data not one block at the series offset' % v)
            calibration(t, v, 'cell')
        if mask:
            mdata = files.get(name(v, '_mask'))
            with tifffile.TiffFile(io.BytesIO(mdata)) as t:
                m = (inside * 255).astype(np.uint8)
                got = t.series[0].asarray()
                if got.dtype != np.uint8 or got.shape != shape[:1] * (d > 1) + shape[-2:] or \
                        not np.array_equal(got, m.reshape(got.shape)) or not block(mdata, t, m) or \
                        t.series[0].axes != ('ZYX' if d > 1 else 'YX'):
                    bad.append('label %d: mask %s %s' % (v, got.dtype, got.shape))
                calibration(t, v, 'mask')
    for b in bad:
        print(out + ': ' + b, file=sys.stderr)
    print(out, 'bad' if bad else 'ok')

for i in range(1, len(sys.argv), 9):
    check_one(*sys.argv[i:i + 9])
EOF

runs() { # NAME IMAGE LABELS TRUTH PAD PADZ KEEP MASK SCALE CAL [options...]
    local n=$1 img=$2 lab=$3 truth=$4 pad=$5 padz=$6 keep=$7 mask=$8 scale=$9 cal=${10}
    shift 10
    check "$n: folder" "$C" "$img" "$lab" -o "$n" "$@"
    check "$n: zip" "$C" "$img" "$lab" --zip "$n.zip" "$@"
    printf '%s\0' "$lab" "$truth" "$n" "$pad" "$padz" "$keep" "$mask" "$scale" "$cal" \
        "$lab" "$truth" "$n.zip" "$pad" "$padz" "$keep" "$mask" "$scale" "$cal" >> check3d.args
    outs="$outs $n $n.zip"
    mkdir "unz_$n" && (cd "unz_$n" && unzip -q "../$n.zip")
    check "$n: zip entries = folder files" diff -r "unz_$n" "$n"
}
L=$G/synth3d_s5_labels.tif
outs=
runs two two.tif "$L" two_truth.npy 2 1 0 1 - 2.0,0.5,0.25,micron --pad 2 --pad-z 1 --mask-too
runs one "$G/synth3d_s5.tif" "$L" one_truth.npy 3 3 1 0 - - --pad 3 --keep-background
runs rgb syn_rgb.tif syn_labels.tif syn_rgb_truth.npy 0 0 0 1 - - --mask-too
runs rgbp syn_rgb.tif syn_labels.tif syn_rgb_truth.npy 1 4 0 0 - - --pad 1 --pad-z 4
runs f32 syn_f32.tif syn_labels.tif syn_f32_truth.npy 1 0 0 1 "$(cat syn_f32.scale)" - --pad 1 --pad-z 0 --mask-too
runs plain plain3.tif mu_labels.tif plain3_truth.npy 1 1 0 0 - '0.3,0.25,0.5,\u00B5m' --pad 1
xargs -0 $PY check3d.py < check3d.args > check3d.out
for o in $outs; do
    check_eq "$o: cells = numpy crops, cells.csv = numpy boxes" "$(grep "^$o " check3d.out)" "$o ok"
done

check_eq "3D cells.csv header" "$(head -1 two/cells.csv)" \
    "label,file,bbox_min_plane,bbox_min_row,bbox_min_col,bbox_max_plane,bbox_max_row,bbox_max_col,area,pad,pad_z,crop_min_plane,crop_min_row,crop_min_col,crop_max_plane,crop_max_row,crop_max_col,scale_lo,scale_hi"
check_eq "5-digit label names" "$(ls rgb | grep -c '^cell_[0-9]\{5\}\.tif$')" 8
check_eq "selection by voxels" "$("$C" syn_rgb.tif syn_labels.tif --min-area 5 --labels 1,2,3,70000 -o - | $PY -c \
    "import sys, io, zipfile; print(' '.join(zipfile.ZipFile(io.BytesIO(sys.stdin.buffer.read())).namelist()))")" \
    "cell_00002.tif cell_00003.tif cells.csv"
OMP_NUM_THREADS=1 "$C" two.tif "$L" --zip two_1t.zip --pad 2 --pad-z 1 --mask-too
check_same "same bytes with one thread" two.zip two_1t.zip

# Batch over cpseg-style output: a volume and its masks.
mkdir seg
cp two.tif seg/vol.tif; cp "$L" seg/vol_cp_masks.tif
check "from-seg volume" "$C" --from-seg seg -o root --pad 2 --pad-z 1 --mask-too
check "from-seg = single run" diff -r root/vol two

# Mismatched dimensions: exit 1, one line naming both files, nothing written.
check_fails "Z mismatch" 1 "$C" "$G/synth3d_s5.tif" "$G/synth3d_s5_z2_labels.tif" -o zm
check_eq "Z mismatch message" "$(cat "$T/last.err")" \
    "cpcells: $G/synth3d_s5_z2_labels.tif: masks are 16 x 80 x 80 but the image is 32 x 80 x 80 (planes x height x width; image: $G/synth3d_s5.tif)"
check_fails "X mismatch" 1 "$C" "$G/synth3d_s5.tif" lab_narrow.tif --zip xm.zip
check_eq "X mismatch message" "$(cat "$T/last.err")" \
    "cpcells: lab_narrow.tif: masks are 32 x 80 x 79 but the image is 32 x 80 x 80 (planes x height x width; image: $G/synth3d_s5.tif)"
check_fails "2D masks, volume image" 1 "$C" "$G/synth3d_s5.tif" lab2d.tif -o m2
grep -q "lab2d.tif: masks are 1 x 80 x 80 but the image is 32 x 80 x 80 (planes x height x width; image: $G/synth3d_s5.tif)" "$T/last.err"
check "2D masks message" [ $? -eq 0 ]
check_fails "volume masks, 2D image" 1 "$C" "$SHARED/data/nogt/bpae_actin.tif" "$L" -o m3
grep -q "synth3d_s5_labels.tif: masks are 32 x 80 x 80 but the image is 1 x 680 x 1100 .*image: .*bpae_actin.tif)" "$T/last.err"
check "2D image message" [ $? -eq 0 ]
check "nothing written after failures" [ ! -e zm ] && [ ! -e xm.zip ] && [ ! -e m2 ] && [ ! -e m3 ]
check_eq "no temporaries" "$(ls -A | grep -c '^\.')" 0
check_fails "bad --pad-z" 2 "$C" two.tif "$L" -o x --pad-z -1

finish
