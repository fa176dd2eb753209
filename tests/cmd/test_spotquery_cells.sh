# spotquery --labels: spots assigned to the cells of a label volume. The
# expected cells and count matrices come from numpy/pandas over the generated
# CSVs and the label arrays written by tifffile (an independent reading of the
# same files: pandas joins the tables, numpy indexes the volume).
. "$(dirname "$0")/lib.sh"
SQ=$BIN/spotquery
PY=/usr/bin/python3
cd "$T" || exit 1

# Under the sanitizers only the small hand-worked table, one matrix and the
# bad inputs run (each start of a sanitized binary costs seconds).
FULL=1; [ "${CP_SANITIZERS:-0}" = 1 ] && FULL=0

$SQ gen-synthetic --spots 3000 --seed 11 ds > /dev/null 2>&1; check "generate" test $? -eq 0
U=ds/image_spot_spectral_unmixing

err1() { # name, expected message of the last check_fails
    check_eq "$1 message" "$(cat "$T/last.err")" "$2"
}

# --- hand-worked spots on a volume whose label is 1 + the voxel's index, so
# the label names the voxel: rounding, edges and outside show directly.
# scale 1,0.5,2: voxel = floor(z + 0.5), floor(y/2 + 0.5), floor(2x + 0.5);
# the volume is 4 x 5 x 6.
cat > hand.csv <<'CSV'
spot_id,chan,chan_spot_id,z,y,x
1,488,1,0,0,0
2,488,2,-0.5,0,0
3,488,3,-0.50001,0,0
4,561,1,3.4999998,8.9,2.74
5,561,2,3.5,0,0
6,561,3,2,9.4,1
7,488,4,1,3,2.75
8,488,5,1,2.9999998,0.25
9,561,4,,1,1
10,638,1,1e30,1,1
11,638,2,2.2,-0.9,1.2
12,638,3,0.7,6.1,2.2
CSV
$PY - > py.log 2>&1 <<'PYEOF'
import numpy as np, pandas as pd, tifffile
def voxel(df, scale, shape):
    """label voxel of each spot (float32 coordinates), -1 outside"""
    v = []
    for a, ax in enumerate("zyx"):
        c = df[ax].astype(np.float32).astype(np.float64).to_numpy()
        with np.errstate(invalid="ignore"):
            p = np.floor(c * scale[a] + 0.5)
            v.append(np.where((p >= 0) & (p < shape[a]), p, -1))
    inside = (v[0] >= 0) & (v[1] >= 0) & (v[2] >= 0)
    return [np.where(inside, x, 0).astype(np.int64) for x in v], inside
def cells(df, lab, scale):
    (z, y, x), inside = voxel(df, scale, lab.shape)
    return np.where(inside, lab[z, y, x].astype(np.int64), 0)
def write_cells(name, df, cell):
    with open(name, "w") as f:
        f.write("spot_id,cell\n" + "".join("%d,%d\n" % r for r in zip(df.spot_id, cell)))
def write_counts(name, cell, chan, channels, extra=(0,), sep=","):
    t = pd.crosstab(pd.Series(cell, name="cell"), pd.Categorical(chan, categories=channels), dropna=False)
    t = t.reindex(sorted(set(t.index) | set(int(e) for e in extra)), fill_value=0)
    with open(name, "w") as f:
        f.write(sep.join(["cell"] + list(channels)) + "\n")
        for k, row in t.iterrows():
            f.write(sep.join(str(int(v)) for v in [k] + list(row)) + "\n")

# hand-worked
hand = pd.read_csv("hand.csv", dtype={"chan": str})
hl = (1 + np.arange(4 * 5 * 6)).reshape(4, 5, 6).astype(np.uint8)
tifffile.imwrite("hand_lab.tif", hl)
hc = cells(hand, hl, (1, 0.5, 2))
write_cells("hand_cells.want", hand, hc)
write_counts("hand_counts.want", hc, hand.chan, ["488", "561", "638"])

# the generated dataset: mixed <- unmixed as SeeSpot merges them
m = pd.read_csv("ds/image_spot_spectral_unmixing/mixed_spots_R1.csv", dtype={"chan": str})
u = pd.read_csv("ds/image_spot_spectral_unmixing/unmixed_spots_R1_minDist_3.csv",
                dtype={"chan": str, "unmixed_chan": str})
df = m.merge(u[["chan", "chan_spot_id", "unmixed_chan", "valid_spot"]], on=["chan", "chan_spot_id"], how="left")
df["spot_id"] = np.arange(1, len(df) + 1)
chans = ["488", "514", "561", "594", "638"]
# labels: boxes of cells in a volume a bit smaller than the spots' extent
# (z 0..199, y, x 0..1999 at scale 0.05 -> voxels up to 10, 100, 100), a
# lone label no spot reaches and one past 2^16 in the 32-bit volume
rng = np.random.default_rng(3)
lab = np.zeros((11, 97, 101), np.uint16)
for i in range(1, 31):
    z, y, x = rng.integers(0, 11), rng.integers(0, 97), rng.integers(0, 101)
    lab[max(0, z - 2):z + 3, max(0, y - 9):y + 9, max(0, x - 9):x + 9] = i * 7
(vz, vy, vx), inside = voxel(df, (0.05,) * 3, lab.shape)
hit = np.zeros(lab.shape, bool)
hit[vz[inside], vy[inside], vx[inside]] = True
free = np.argwhere(~hit)[len(np.argwhere(~hit)) // 2]
lab[tuple(free)] = 999
tifffile.imwrite("lab.tif", lab)
cell = cells(df, lab, (0.05,) * 3)
write_cells("ds_cells.want", df, cell)
valid = (df.valid_spot == True) & df.unmixed_chan.isin(chans)
write_counts("ds_counts.want", cell[valid], df.unmixed_chan[valid], chans)
write_counts("ds_counts_all_labels.want", cell[valid], df.unmixed_chan[valid], chans, extra=np.unique(lab))
write_counts("ds_counts_mixed.want", cell, df.chan, chans, sep="\t")
sel = (cell > 0) & (df.chan == "561")
write_cells("ds_where.want", df[sel], cell[sel])
sel = np.isin(cell, [7, 14])
write_cells("ds_cell_filter.want", df[sel], cell[sel])
# the fitted centres instead of the detected voxels
fit = df.rename(columns={"z": "zd", "y": "yd", "x": "xd", "z_center": "z", "y_center": "y", "x_center": "x"})
cfit = cells(fit, lab, (0.05,) * 3)
write_cells("ds_cells_fit.want", df, cfit)
# anisotropic scale and labels beyond int32
l32 = np.where(lab > 0, lab.astype(np.uint32) + 3000000000, 0).astype(np.uint32)
tifffile.imwrite("lab32.tif", l32)
c32 = cells(df, l32, (0.06, 0.05, 0.045))
write_counts("ds_counts32.want", c32[valid], df.unmixed_chan[valid], chans)
# the same labels as OME-Zarr (blosc, chunks across the spots' regions) and
# as a plain Zarr array (zlib, '/' separator)
import zarr, numcodecs
g = zarr.open_group("lab.zarr", mode="w")
g.create_dataset("0", data=lab, chunks=(4, 32, 40), compressor=numcodecs.Blosc("zstd", 3, numcodecs.Blosc.BITSHUFFLE))
g.attrs["multiscales"] = [{"version": "0.4", "name": "labels",
    "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
    "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [20.0, 4.8, 4.8]}]}]}]
# ome-zarr-py's layout: t, c, z, y, x with t and c of size 1
g5 = zarr.open_group("lab5d.zarr", mode="w")
g5.create_dataset("0", data=lab[None, None], chunks=(1, 1, 4, 32, 40))
g5.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}]
    + [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
    "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 20.0, 4.8, 4.8]}]}]}]
zarr.open_array("lab_plain.zarr", mode="w", shape=lab.shape, chunks=(5, 50, 50), dtype=lab.dtype,
                compressor=numcodecs.Zlib(1), dimension_separator="/")[:] = lab
# --label-scale auto: the spots' voxel size (generated .zattrs: 1, 0.24,
# 0.24 um) over the labels' (lab.zarr above: 20, 4.8, 4.8 um; an ImageJ TIFF
# of 20, 4, 4 um)
tifffile.imwrite("lab_ij.tif", lab, imagej=True, resolution=(0.25, 0.25), metadata={"spacing": 20.0, "unit": "um"})
cij = cells(df, lab, (1.0 / 20.0, 0.24 / 4.0, 0.24 / 4.0))
write_counts("ds_counts_ij.want", cij[valid], df.unmixed_chan[valid], chans)
# bad volumes
tifffile.imwrite("labf.tif", lab.astype(np.float32))
tifffile.imwrite("labneg.tif", np.full((3, 4, 5), -1, np.int16))
tifffile.imwrite("lab2d.tif", lab[0])
print("ok")
PYEOF
check "numpy/pandas reference ($(tail -1 py.log))" test -s ds_counts32.want

# --- hand-worked: the voxel of each spot, byte for byte
$SQ spots --labels hand_lab.tif --label-scale 1,0.5,2 --columns spot_id,cell hand.csv > hand_cells.got
check_same "hand cells = numpy" hand_cells.got hand_cells.want
check_eq "hand cells by hand" "$(tail -n +2 hand_cells.got | cut -d, -f2 | tr '\n' ' ')" "1 1 0 120 0 0 0 38 0 0 63 53 "
$SQ counts --all --by mixed --labels hand_lab.tif --label-scale 1,0.5,2 hand.csv > hand_counts.got
check_same "hand counts = pandas" hand_counts.got hand_counts.want
$SQ spots --labels hand_lab.tif --label-scale 1,0.5,2 --label-region 4096 --columns spot_id,cell hand.csv > hand_cells_r.got
check_same "hand cells, small regions" hand_cells_r.got hand_cells.want

# --- the generated dataset
$SQ counts --labels lab.tif --label-scale 0.05 ds > ds_counts.got
check_same "count matrix = pandas" ds_counts.got ds_counts.want
$SQ counts --labels lab.zarr --label-scale 0.05 ds > ds_counts_zarr.got
check_same "OME-Zarr labels = pandas" ds_counts_zarr.got ds_counts.want
$SQ counts --all-labels --labels lab_plain.zarr --label-scale 0.05 --label-region 5000 ds > ds_counts_plain.got
check_same "plain Zarr array, --all-labels, small regions" ds_counts_plain.got ds_counts_all_labels.want
if [ $FULL = 1 ]; then
$SQ spots --labels lab.tif --label-scale 0.05,0.05,0.05 --columns spot_id,cell ds > ds_cells.got
check_same "cell of every spot = numpy" ds_cells.got ds_cells.want
$SQ spots --labels lab.tif --label-scale 0.05 --label-region 4096 --columns spot_id,cell ds > ds_cells_r.got
check_same "small regions, same cells" ds_cells_r.got ds_cells.want
$SQ counts --all-labels --labels lab.tif --label-scale 0.05 ds > ds_counts_all.got
check_same "--all-labels = pandas" ds_counts_all.got ds_counts_all_labels.want
check_eq "--all-labels has the lone label" "$(grep -c '^999,0,0,0,0,0$' ds_counts_all.got)" 1
$SQ counts --all --by mixed --format tsv --labels lab.tif --label-scale 0.05 ds > ds_counts_mixed.got
check_same "--all --by mixed --format tsv = pandas" ds_counts_mixed.got ds_counts_mixed.want
$SQ spots --labels lab.tif --label-scale 0.05 --where 'cell > 0' --channel 561 --columns spot_id,cell ds > ds_where.got
check_same "--where on cell" ds_where.got ds_where.want
$SQ spots --labels lab.tif --label-scale 0.05 --cell 7,14 --columns spot_id,cell ds > ds_cell_filter.got
check_same "--cell reads the label volume's cells" ds_cell_filter.got ds_cell_filter.want
$SQ counts --labels lab32.tif --label-scale 0.06,0.05,0.045 ds > ds_counts32.got
check_same "32-bit labels past 2^31, anisotropic scale" ds_counts32.got ds_counts32.want
$SQ counts --labels lab.zarr --label-scale auto ds > ds_counts_auto.got
check_same "--label-scale auto from OME-Zarr = 0.05" ds_counts_auto.got ds_counts.want
$SQ counts --labels lab5d.zarr --label-scale auto ds > ds_counts_5d.got
check_same "OME-Zarr t,c,z,y,x, --label-scale auto" ds_counts_5d.got ds_counts.want
$SQ counts --labels lab_ij.tif --label-scale auto ds > ds_counts_ij.got
check_same "--label-scale auto from an ImageJ TIFF = pandas" ds_counts_ij.got ds_counts_ij.want
check_fails "--label-scale auto, uncalibrated TIFF" 3 $SQ counts --labels lab.tif --label-scale auto ds
err1 "uncalibrated TIFF" "spotquery: lab.tif: no voxel size (OME-NGFF scale or ImageJ calibration)"
check_fails "--label-scale auto, single table" 3 $SQ counts --all --by mixed --labels lab.zarr --label-scale auto hand.csv
$SQ spots --labels lab.tif --label-scale 0.05 --label-coords z_center,y_center,x_center --columns spot_id,cell ds > ds_cells_fit.got
check_same "--label-coords z_center,y_center,x_center = numpy" ds_cells_fit.got ds_cells_fit.want
check_eq "fitted centres change some cells" "$(cmp -s ds_cells_fit.got ds_cells.want; echo $?)" 1
check_eq "--genes header" "$($SQ counts --genes --labels lab.tif --label-scale 0.05 ds | head -1)" "cell,Gene1,Gene2,Gene3,Gene4,Gene5"
check_eq "default columns end with cell" "$($SQ spots --labels lab.tif --sample 1 ds | head -1 | awk -F, '{print $NF}')" cell
# memory: a 173 MB (uint32) Zarr volume, mostly missing chunks, read whole by
# --all-labels in regions of 1M voxels, stays far below its size
$PY -c '
import zarr
z = zarr.open_array("big.zarr", mode="w", shape=(120, 600, 600), chunks=(40, 200, 200), dtype="u4", fill_value=0)
z[0:10, 0:10, 0:10] = 1
z[110:120, 590:600, 590:600] = 2
z[60:70, 300:310, 300:310] = 4000000000'
printf 'spot_id,chan,chan_spot_id,z,y,x\n1,488,1,0,0,0\n2,488,2,119,599,599\n3,561,1,65,305,305\n4,561,2,65,305,315\n5,561,3,120,0,0\n' > big.csv
/usr/bin/time -f %M -o big.rss $SQ counts --all --by mixed --all-labels --labels big.zarr --label-region 1000000 big.csv > big.got
check_eq "big sparse volume" "$(tr '\n' ' ' < big.got)" "cell,488,561 0,0,2 1,1,0 2,1,0 4000000000,0,1 "
check "peak RSS $(cat big.rss) KB < 80 MB for a 173 MB volume" test "$(cat big.rss)" -lt 80000
# interrupted while reading the volume (small regions: ~1.5 s whole): 130, no output
$SQ counts --all --by mixed --all-labels --labels big.zarr --label-region 100000 -o intr.csv big.csv &
pid=$!; sleep 0.2; kill -INT $pid; wait $pid
check_eq "interrupted: exit 130" $? 130
check "interrupted: no output" test ! -e intr.csv
fi # FULL

# --- bad input: one line naming the problem; exit 2 for flags, 3 for files
check_fails "missing label file" 3 $SQ counts --labels nope.tif ds
check_eq "missing label file: one line naming it" "$(grep -c 'nope.tif' "$T/last.err")/$(wc -l < "$T/last.err")" 1/1
check_fails "float labels" 3 $SQ counts --labels labf.tif ds
err1 "float labels" "spotquery: labf.tif: labels must be integers, not f32"
check_fails "negative label" 3 $SQ spots --labels labneg.tif --columns spot_id hand.csv
err1 "negative label" "spotquery: labneg.tif: the label at z=0 y=0 x=0 is negative or too large"
check_fails "2-D label image" 3 $SQ spots --labels lab2d.tif hand.csv
check_eq "2-D label image: one line" "$(wc -l < "$T/last.err")" 1
check_fails "--label-scale 0" 2 $SQ counts --labels lab.tif --label-scale 0 ds
check_fails "--label-scale two values" 2 $SQ counts --labels lab.tif --label-scale 1,2 ds
err1 "--label-scale two values" "spotquery: --label-scale: expected S or SZ,SY,SX, not '1,2' (see 'spotquery --help')"
check_fails "--label-scale not a number" 2 $SQ counts --labels lab.tif --label-scale 1,x,1 ds
check_fails "--label-scale without --labels" 2 $SQ counts --label-scale 2 ds
check_fails "--label-coords two columns" 2 $SQ counts --labels lab.tif --label-coords z,y ds
check_fails "--label-coords unknown column" 3 $SQ counts --labels lab.tif --label-coords z,y,nope ds
check_eq "--label-coords unknown column: one line" "$(grep -c nope "$T/last.err")/$(wc -l < "$T/last.err")" 1/1
check_fails "--labels on summary" 2 $SQ summary --labels lab.tif ds
check_fails "--all-labels on spots" 2 $SQ spots --all-labels --labels lab.tif ds
printf 'spot_id,chan,chan_spot_id,y,x\n1,488,1,2,3\n' > one.csv
check_fails "no z column" 3 $SQ spots --labels hand_lab.tif one.csv
err1 "no z column" "spotquery: spots to cells need a numeric 'z' column"
check_eq "no temp left" "$(ls -A | grep -c '^\.')" 0
finish
