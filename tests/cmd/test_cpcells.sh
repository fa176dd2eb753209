# cpcells on real images: folder and ZIP outputs, batch mode, selection,
# refusals, and no leftovers after failures. (Pixel values of the crops are
# checked against the source in tests/unit/test_cells.c, and below, as
# tifffile reads multi-channel cells, against crops computed in numpy.)
. "$(dirname "$0")/lib.sh"
C=$BIN/cpcells
D=$SHARED/data
DSB=$D/dsb2018/00ae65c1c6631ae6f2be1a449902976e6eb8483bf6b0740d00530220832c6d3e
SD=$D/nuclei-extra/stardist_img2d
NI=$D/wholecell/neurips_cell_00528
PY=/usr/bin/python3
cd "$T" || exit 1

check "--help" "$C" --help > /dev/null
check_eq "--version" "$("$C" --version)" "cpcells (cptools) $(sed -n 's/^#define CP_VERSION_STRING "\(.*\)"/\1/p' "$CP_ROOT/include/cellpose/core.h")"
check_fails "no arguments" 2 "$C"
check_fails "bad --pad" 2 "$C" "${DSB}_img.png" "${DSB}_masks.tif" -o x --pad -1
check_fails "bad --range" 2 "$C" "${DSB}_img.png" "${DSB}_masks.tif" -o x --range 5 5
check_fails "bad --labels" 2 "$C" "${DSB}_img.png" "${DSB}_masks.tif" -o x --labels 3,x

# Folder: one file per label (70 nuclei) plus cells.csv, label order.
check "dsb folder" "$C" "${DSB}_img.png" "${DSB}_masks.tif" -o dsb
check_eq "dsb file count" "$(ls dsb | wc -l)" 71
check_eq "dsb first/last" "$(ls dsb | head -1) $(ls dsb | grep cell_ | tail -1)" "cell_0001.tif cell_0070.tif"
check_eq "csv rows" "$(tail -n +2 dsb/cells.csv | wc -l)" 70
check_eq "csv header" "$(head -1 dsb/cells.csv)" \
    "label,file,bbox_min_row,bbox_min_col,bbox_max_row,bbox_max_col,area,pad,crop_min_row,crop_min_col,crop_max_row,crop_max_col,scale_lo,scale_hi"
# every cell a 16-bit TIFF, one page per channel (RGBA PNG -> 4 pages), shape = crop
$PY - dsb <<'EOF'
import csv, struct, sys, os
d = sys.argv[1]
def pages(path):  # (width, height, bits) of every IFD of a little-endian classic TIFF
    b = open(path, 'rb').read()
    assert b[:4] == b'II*\0', path
    off, out = struct.unpack('<I', b[4:8])[0], []
    while off:
        n = struct.unpack('<H', b[off:off+2])[0]
        tags = {}
        for i in range(n):
            t, ty, cnt, v = struct.unpack('<HHII', b[off+2+12*i: off+14+12*i])
            tags[t] = v & 0xFFFF if ty == 3 else v
        if len(out) == 0:  # ImageJ hyperstack description on the first page
            desc = b[tags[270]: b.index(b'\0', tags[270])] if 270 in tags else b''
            if b'channels=4' not in desc or b'ImageJ=' not in desc: return []
        out.append((tags[256], tags[257], tags[258]))
        off = struct.unpack('<I', b[off+2+12*n: off+6+12*n])[0]
    return out
bad = 0
for r in csv.DictReader(open(os.path.join(d, 'cells.csv'))):
    w = int(r['crop_max_col']) - int(r['crop_min_col']); h = int(r['crop_max_row']) - int(r['crop_min_row'])
    if pages(os.path.join(d, r['file'])) != [(w, h, 16)] * 4: bad += 1
sys.exit(1 if bad else 0)
EOF
check "every cell: 4 pages of u16 with the crop's shape, ImageJ channels=4" [ $? -eq 0 ]

# ZIP: same entries, same bytes, valid for unzip and Python, reproducible.
check "dsb zip" "$C" "${DSB}_img.png" "${DSB}_masks.tif" --zip dsb.zip
check "unzip -t" unzip -tq dsb.zip
check_eq "zip lists the folder's files" "$(unzip -Z1 dsb.zip | sort | tr '\n' ' ')" "$(ls dsb | sort | tr '\n' ' ')"
check_eq "zip order: labels, cells.csv last" "$(unzip -Z1 dsb.zip | head -2 | tr '\n' ' ')$(unzip -Z1 dsb.zip | tail -1)" "cell_0001.tif cell_0002.tif cells.csv"
mkdir unz && (cd unz && unzip -q ../dsb.zip)
check "zip contents = folder" diff -r unz dsb
check "python zipfile" $PY -c "import zipfile,sys; z=zipfile.ZipFile(sys.argv[1]); sys.exit(z.testzip() is not None or len(z.namelist())!=71)" dsb.zip
check "second run" "$C" "${DSB}_img.png" "${DSB}_masks.tif" --zip=dsb2.zip
check_same "zip byte-identical between runs" dsb.zip dsb2.zip
OMP_NUM_THREADS=1 "$C" "${DSB}_img.png" "${DSB}_masks.tif" --zip dsb1t.zip
check_same "same bytes with one thread" dsb.zip dsb1t.zip
"$C" -o - --zip - "${DSB}_img.png" "${DSB}_masks.tif" > stdout.zip
check_eq "stdout exit" $? 0
check_same "stdout zip = file zip" stdout.zip dsb.zip
"$C" -o - "${DSB}_img.png" "${DSB}_masks.tif" | cat > pipe.zip
check_same "-o - alone streams the zip" pipe.zip dsb.zip

# Multi-channel cells as Fiji and tifffile read them (issue 17): ImageJ takes
# an uncompressed hyperstack's pixels as one block from the first page's
# data, so pages interleaved with directories gave IFD bytes (256, 257, ...
# the tag numbers) as channels 2 and up. Inputs: RGB u8 TIFF, 2-channel u16
# NPY, 4-channel u8 and 5-channel u16 ImageJ TIFFs (C,Y,X), with cells of 1,
# 2, 3 and 4 pixels, cells on the edges and cells inside others' boxes. Every
# cell is compared with its crop computed here in numpy: the bounding box
# grown by the pad and clipped at the edge, other labels' pixels 0, values
# kept as u16, one page per channel.
$PY - <<'EOF'
import numpy as np, tifffile
rng = np.random.default_rng(17)
H, W = 23, 31
lab = np.zeros((H, W), np.uint16)
lab[0, 0] = 1                       # one pixel, in the corner
lab[5:7, 4:6] = 2                   # 2 x 2
lab[6, 6:9] = 3                     # a row of 3, next to 2
lab[22, 30] = 4                     # one pixel, the other corner
lab[10:20, 10:25] = 5               # large, with 6 and 7 inside its box
lab[12:14, 12:14] = 6
lab[15, 16] = 7
lab[0:3, 28] = 8                    # a column on the top edge
lab[18:23, 0:3] = 9                 # on the bottom-left edge
lab[8, 20:22] = 10
lab[9, 21] = 10                     # an L of 3 pixels touching 5's box
tifffile.imwrite('mc_masks.tif', lab)
rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
tifffile.imwrite('mc_rgb.tif', rgb, photometric='rgb')
two = rng.integers(0, 65536, (H, W, 2), dtype=np.uint16)
np.save('mc_two.npy', two)
four = rng.integers(0, 256, (4, H, W), dtype=np.uint8)
tifffile.imwrite('mc_four.tif', four, imagej=True, metadata={'axes': 'CYX'})
five = rng.integers(0, 65536, (5, H, W), dtype=np.uint16)
tifffile.imwrite('mc_five.tif', five, imagej=True, metadata={'axes': 'CYX'})
for name, a in (('rgb', rgb), ('two', two), ('four', four.transpose(1, 2, 0)), ('five', five.transpose(1, 2, 0))):
    np.save('mc_%s_truth.npy' % name, a)   # (Y, X, C), as generated
EOF
check "multi-channel inputs made" [ -f mc_five_truth.npy ]
cat > mc_check.py <<'EOF'
# mc_check.py MASKS.tif [TRUTH.npy OUT PAD]...: prints "OUT ok" when every
# cell_*.tif of OUT (a folder or a .zip), as tifffile reads it, equals its
# crop computed here, else "OUT bad" (the differences go to stderr).
import io, os, sys, zipfile
import numpy as np, tifffile
lab = tifffile.imread(sys.argv[1])
labels = [int(v) for v in np.unique(lab) if v]
def check(img, out, pad):
    H, W, C = img.shape
    if out.endswith('.zip'):
        z = zipfile.ZipFile(out)
        files = {n: z.read(n) for n in z.namelist()}
    else:
        files = {n: open(os.path.join(out, n), 'rb').read() for n in os.listdir(out)}
    bad = []
    names = sorted(n for n in files if n.startswith('cell_'))
    if names != ['cell_%04d.tif' % v for v in labels]:
        bad.append('files %s' % names)
    for v in labels:
        rr, cc = np.nonzero(lab == v)
        r0, r1 = max(rr.min() - pad, 0), min(rr.max() + 1 + pad, H)
        c0, c1 = max(cc.min() - pad, 0), min(cc.max() + 1 + pad, W)
        inside = (lab[r0:r1, c0:c1] == v)[..., None]
        want = np.where(inside, img[r0:r1, c0:c1], 0).astype(np.uint16).transpose(2, 0, 1)
        data = files.get('cell_%04d.tif' % v)
        if data is None:
            continue
        with tifffile.TiffFile(io.BytesIO(data)) as t:
            ij, series = t.imagej_metadata or {}, t.series[0]
            got = series.asarray()
        if ij.get('channels') != C or ij.get('images') != C or series.axes != 'CYX':
            bad.append('label %d: imagej %s, axes %s; want channels=images=%d, CYX' % (v, ij, series.axes, C))
        if not np.array_equal(tifffile.imread(io.BytesIO(data)), got):
            bad.append('label %d: imread differs from the series' % v)
        if got.dtype != np.uint16 or got.shape != want.shape or not np.array_equal(got, want):
            bad.append('label %d: read %s %s\n%s\nwant %s\n%s' % (v, got.dtype, got.shape, got, want.shape, want))
    for b in bad:
        print(out + ': ' + b, file=sys.stderr)
    print(out, 'bad' if bad else 'ok')
for i in range(2, len(sys.argv), 3):
    check(np.load(sys.argv[i]), sys.argv[i + 1], int(sys.argv[i + 2]))
EOF
runs= outs=
for img in mc_rgb.tif mc_two.npy mc_four.tif mc_five.tif; do
    n=${img%.*}
    for pad in 0 2; do
        check "$img pad $pad: folder" "$C" "$img" mc_masks.tif --pad $pad -o "${n}_p$pad"
        check "$img pad $pad: zip" "$C" "$img" mc_masks.tif --pad $pad --zip "${n}_p$pad.zip"
        runs="$runs ${n}_truth.npy ${n}_p$pad $pad ${n}_truth.npy ${n}_p$pad.zip $pad"
        outs="$outs ${n}_p$pad ${n}_p$pad.zip"
    done
done
# shellcheck disable=SC2086
$PY mc_check.py mc_masks.tif $runs > mc_check.out
for out in $outs; do
    check_eq "$out: cells read by tifffile = numpy crops" "$(grep "^$out " mc_check.out)" "$out ok"
done

# 16-bit image, options.
check "u16 + options" "$C" "${NI}_img.tif" "${NI}_masks.tif" -o ni --pad 4 --mask-too --min-area 70 --labels 3,7,10,11
check "u16 all cells" "$C" "${NI}_img.tif" "${NI}_masks.tif" -o ni_all --pad 4
check_eq "all 44 cells" "$(ls ni_all | wc -l)" 45
check_eq "selection by label and area" "$(cut -d, -f1 ni/cells.csv | tr '\n' ' ')" \
    "label $(awk -F, 'NR>1 && ($1==3||$1==7||$1==10||$1==11) && $7>=70 {printf "%s ", $1}' ni_all/cells.csv)"
check_same "selected cell = same cell of the full run" ni/cell_0007.tif ni_all/cell_0007.tif
check "mask files" [ -f ni/cell_0007_mask.tif ] 
check_eq "pad recorded" "$(awk -F, 'NR==2{print $8}' ni/cells.csv)" 4
check_eq "missing label is a warning" "$("$C" "${NI}_img.tif" "${NI}_masks.tif" -o ni_w --labels 3,9999 2>&1 >/dev/null | grep -c 9999)" 1

# Refusals, with nothing left behind.
check_fails "existing output" 3 "$C" "${DSB}_img.png" "${DSB}_masks.tif" -o dsb
grep -q "dsb: exists" "$T/last.err"; check "message names the output" [ $? -eq 0 ]
check_fails "existing zip" 3 "$C" "${DSB}_img.png" "${DSB}_masks.tif" --zip dsb.zip
check "--force replaces" "$C" "${DSB}_img.png" "${DSB}_masks.tif" -o dsb --force --labels 5
check_eq "replaced, not merged" "$(ls dsb | tr '\n' ' ')" "cell_0005.tif cells.csv "
check_fails "size mismatch" 1 "$C" "${DSB}_img.png" "${SD}_masks.tif" -o mism
grep -q "stardist_img2d_masks.tif: masks are 512 x 512 but the image is 256 x 320" "$T/last.err"
check "mismatch message" [ $? -eq 0 ]
check_fails "float masks" 1 "$C" "$D/nogt/bpae_actin.tif" "$D/nogt/bpae_nuclei.tif" -o flt
grep -q "bpae_nuclei.tif: label image has floating-point pixels" "$T/last.err"; check "float message" [ $? -eq 0 ]
check_fails "float masks (zip)" 1 "$C" "$D/nogt/bpae_actin.tif" "$D/nogt/bpae_nuclei.tif" --zip flt.zip
check_fails "missing image" 1 "$C" nothere.png "${DSB}_masks.tif" -o miss
touch afile
check_fails "unwritable output" 3 "$C" "${DSB}_img.png" "${DSB}_masks.tif" -o afile/sub
check_fails "unwritable zip" 3 "$C" "${DSB}_img.png" "${DSB}_masks.tif" --zip afile/x.zip
check "no outputs after failures" [ ! -e mism ] && [ ! -e flt ] && [ ! -e flt.zip ] && [ ! -e miss ]
check_eq "no temporaries" "$(ls -A | grep '^\.' | wc -l)" 0

# Interrupted: either finished whole or absent, and no temporaries, whenever
# the signal lands.
"$BIN/../tests/test_cells" --make-bench-input "$T" 3000 2048
for sig in INT TERM; do
    "$C" bench_img.tif bench_masks.tif -o big_$sig & pid=$!
    sleep 0.4; kill -$sig $pid; wait $pid; rc=$?
    if [ $rc -eq 130 ]; then check "interrupted ($sig): no output" [ ! -e big_$sig ]
    else check_eq "finished before the signal ($sig)" "$rc $(wc -l < big_$sig/cells.csv)" "0 3001"; fi
    check_eq "interrupted ($sig): no temporaries" "$(ls -A | grep -c '^\.')" 0
done
"$C" bench_img.tif bench_masks.tif --zip big.zip & pid=$!
sleep 0.4; kill -INT $pid; wait $pid; rc=$?
[ $rc -eq 130 ] && check "interrupted zip: no archive" [ ! -e big.zip ]
check_eq "interrupted zip: no temporaries" "$(ls -A | grep -c '^\.')" 0

# Batch over cpseg output.
mkdir seg
cp "${SD}_img.tif" seg/sd.tif; cp "${SD}_masks.tif" seg/sd_cp_masks.tif
cp "${NI}_img.tif" seg/ni.tif; cp "${NI}_masks.tif" seg/ni_cp_masks.tif
cp "${DSB}_img.png" seg/dsb.png; cp "${DSB}_masks.tif" seg/dsb_cp_masks.tif
check "from-seg" "$C" --from-seg seg -o root
check_eq "from-seg outputs" "$(ls root | tr '\n' ' ')" "dsb ni sd "
check_eq "from-seg sd cells" "$(ls root/sd | wc -l)" 126
check "from-seg = single run" diff -r root/dsb unz
touch -d '2001-01-01' root/sd/cells.csv
check "rerun skips finished work" "$C" --from-seg seg -o root
check_eq "untouched" "$(date -r root/sd/cells.csv +%Y)" 2001
check "--force redoes" "$C" --from-seg seg -o root --force
check "redone" [ "$(date -r root/sd/cells.csv +%Y)" != 2001 ]
check "from-seg zip" "$C" --from-seg seg -o zroot --zip
check_same "from-seg zip = single zip" zroot/dsb.zip dsb.zip
ls seg/*_cp_masks.tif | "$C" --from-seg - -o sroot --zip
check_eq "stdin list" "$(ls sroot | tr '\n' ' ')" "dsb.zip ni.zip sd.zip "
cp "${SD}_masks.tif" seg/orphan_cp_masks.tif
check_fails "image missing in batch: partial" 1 "$C" --from-seg seg -o root
grep -q "orphan_cp_masks.tif: no image" "$T/last.err"; check "orphan message" [ $? -eq 0 ]
check_fails "zip file with --from-seg" 2 "$C" --from-seg seg -o root --zip=x.zip
check_eq "no temporaries in batch roots" "$(ls -A root zroot sroot | grep -c '^\.')" 0

finish
