#!/bin/sh
# AP of a model (default: the built-in one) on the DSB2018 fluorescence images
# of the val split, as reported for cptools' built-in model:
#
#   scripts/eval-builtin.sh [BUILD [OUTDIR [cpseg options...]]]
#
# SPLIT=train evaluates on the train split instead (for tuning options
# without looking at val), EVERY=N on every N-th image only.
# SCALE=F in the environment evaluates on the images resized by F (linear,
# anti-aliased when shrinking) and their labels resized likewise (nearest),
# written as TIFFs into OUTDIR: how a model copes with objects of another size.
#
# Writes OUTDIR/masks/*_cp_masks.tif and OUTDIR/ap.csv (cpmetrics --truth rows:
# one per image and threshold, then the pooled ALL rows) and prints, per IoU
# threshold, the pooled AP (ALL row) and the mean of the per-image APs.
set -eu
BUILD=${1:-build}
OUT=${2:-builtin-eval}
[ $# -ge 2 ] && shift 2 || shift $#
SHARED=${CP_SHARED:-$(cd "$(dirname "$0")/../.." && pwd)/shared}
DSB=$SHARED/data/dsb2018
mkdir -p "$OUT/img" "$OUT/gt"
SCALE=${SCALE:-1}
awk -F'\t' -v want="${SPLIT:-val}" -v every="${EVERY:-1}" \
    'NR > 1 && $2 == "fluorescence" && $6 == want && n++ % every == 0 { print $1 }' "$DSB/index.tsv" > "$OUT/ids.txt"
if [ "$SCALE" = 1 ]; then
    while read -r id; do
        ln -sf "$DSB/${id}_img.png" "$OUT/img/"
        # named so that the truth pairs with cpseg's NAME_img_cp_masks.tif
        ln -sf "$DSB/${id}_masks.tif" "$OUT/gt/${id}_img_masks.tif"
    done < "$OUT/ids.txt"
else
    /usr/bin/python3 - "$DSB" "$OUT" "$SCALE" <<'PY'
import sys
import numpy as np, tifffile
from skimage import io, transform
dsb, out, f = sys.argv[1], sys.argv[2], float(sys.argv[3])
for id in open(out + '/ids.txt').read().split():
    img = io.imread(f'{dsb}/{id}_img.png')
    img = img[..., :3].mean(axis=2) if img.ndim == 3 else img.astype(float)  # the gray cpseg reads
    lab = tifffile.imread(f'{dsb}/{id}_masks.tif')
    shape = (max(1, round(img.shape[0] * f)), max(1, round(img.shape[1] * f)))
    im2 = transform.resize(img, shape, order=1, anti_aliasing=f < 1, preserve_range=True)
    lab2 = transform.resize(lab, shape, order=0, anti_aliasing=False, preserve_range=True)
    tifffile.imwrite(f'{out}/img/{id}_img.tif', np.clip(np.round(im2), 0, 255).astype(np.uint8))
    tifffile.imwrite(f'{out}/gt/{id}_img_masks.tif', lab2.astype(np.uint16))
PY
fi
"$BUILD/bin/cpseg" -q --savedir "$OUT/masks" "$@" "$OUT/img"
"$BUILD/bin/cpmetrics" --truth "$OUT/gt" -o "$OUT/ap.csv" "$OUT/masks"
awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
    $c["image"] == "ALL" { pooled[$c["threshold"]] = $c["ap"]; next }
    { s[$c["threshold"]] += $c["ap"]; n[$c["threshold"]]++ }
    END { for (t in pooled) printf "IoU %s: AP pooled %.4f, mean over %d images %.4f\n", t, pooled[t], n[t], s[t] / n[t] }' \
    "$OUT/ap.csv" | sort
