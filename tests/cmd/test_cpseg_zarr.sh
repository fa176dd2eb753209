# cpseg on OME-Zarr and plain Zarr folders (written by python zarr): the
# same masks as from the same planes in a TIFF; a Zarr folder without a 3D
# flag is refused, naming it.
. "$(dirname "$0")/lib.sh"
PY=/usr/bin/python3
G=$SHARED/golden/3d
W=$SHARED/golden/weights/cpnet_nucleilike_s2_legacy.pth
SEG="$BIN/cpseg -q --threads 1 --model $W --diameter 17 --stitch-threshold 0.5 --flow-threshold 1.0"
mkdir -p "$T/in"
check "python writes the volume as TIFF, OME-Zarr and a plain array" $PY - "$G/inputs/synth3d_s5.tif" "$T/in" <<'PYEOF'
import sys, numcodecs, numpy as np, tifffile, zarr
v = tifffile.imread(sys.argv[1])[8:12]
o = sys.argv[2]
tifffile.imwrite(o + "/vol.tif", v)
g = zarr.open_group(o + "/vol.zarr", mode="w")
g.create_dataset("0", data=v[None, None], chunks=(1, 1, 2, 32, 32))
g.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}]
                           + [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"],
                           "datasets": [{"path": "0", "coordinateTransformations": [
                               {"type": "scale", "scale": [1, 1, 2.0, 0.5, 0.5]}]}]}]
zarr.open(o + "/plain.zarr", mode="w", shape=v.shape, chunks=(3, 40, 40), dtype=v.dtype,
          compressor=numcodecs.Zstd(3), dimension_separator="/")[...] = v
PYEOF
check "cpseg on the TIFF" $SEG --savedir "$T/o_tif" "$T/in/vol.tif"
check "cpseg on the OME-Zarr group" $SEG --savedir "$T/o_zarr" "$T/in/vol.zarr"
check "the TIFF's masks hold cells" $PY -c "
import sys, tifffile
m = tifffile.imread(sys.argv[1])
assert m.shape == (4, 80, 80) and m.max() >= 3, (m.shape, m.max())" "$T/o_tif/vol_cp_masks.tif"
check_same "OME-Zarr masks = TIFF masks" "$T/o_tif/vol_cp_masks.tif" "$T/o_zarr/vol_cp_masks.tif"
# the plain array adds little under the sanitizers: the same reader path
if [ "${CP_SANITIZERS:-0}" != 1 ]; then
    check "cpseg on the plain array (trailing slash)" $SEG --savedir "$T/o_plain" "$T/in/plain.zarr/"
    check_same "plain Zarr masks = TIFF masks" "$T/o_tif/vol_cp_masks.tif" "$T/o_plain/plain_cp_masks.tif"
fi
check_fails "a Zarr folder without a 3D flag" 1 $BIN/cpseg -q --model "$W" --savedir "$T/no" "$T/in/vol.zarr"
grep -q "vol.zarr: a Zarr volume: give --do-3d or --stitch-threshold" "$T/last.err" && ok ||
    bad "the refusal names the folder and the flags: $(cat "$T/last.err")"
finish
