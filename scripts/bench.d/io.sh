#!/usr/bin/env bash
# Image I/O speed: decode time of real files through cp_image_read, and the
# same decode in Python (tifffile / PIL / numpy) as the peer when installed.
# Usage: scripts/bench.d/io.sh BUILD   (run by `make bench`)
set -u
BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SHARED=${CP_SHARED:-$(cd "$ROOT/.." && pwd)/shared}
LIB=$ROOT/$BUILD/libcellpose.a
[ -f "$LIB" ] || { echo "io bench: $LIB not built"; exit 1; }
TMP=$(mktemp -d "${TMPDIR:-/tmp}/cpbench-io.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

cat > "$TMP/readbench.c" <<'C'
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "cellpose/cellpose.h"
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
int main(int argc, char **argv)
{
    int reps = atoi(argv[1]);
    for (int i = 2; i < argc; i++) {
        cp_image *img = NULL;
        double ms = 1e30; /* best of reps: the machine is shared */
        for (int r = 0; r < reps; r++) {
            cp_image_free(img);
            double t0 = now();
            if (cp_image_read(argv[i], NULL, &img) != CP_OK) { fprintf(stderr, "%s\n", cp_errmsg()); return 1; }
            double t = (now() - t0) * 1e3;
            ms = t < ms ? t : ms;
        }
        double mb = cp_image_samples(img) * cp_dtype_size(img->dtype) / 1e6;
        printf("%s\t%dx%dx%dx%d %s\t%.2f\t%.0f\n", argv[i], img->planes, img->height, img->width, img->channels,
               cp_dtype_name(img->dtype), ms, mb / (ms / 1e3));
        cp_image_free(img);
    }
    return 0;
}
C
${CC:-cc} -O2 -std=c11 -I"$ROOT/include" "$TMP/readbench.c" "$LIB" -ltiff -lpng -lz -lm -fopenmp -lstdc++ \
    -o "$TMP/readbench" 2>"$TMP/cc.err" || { echo "io bench: cannot build the reader"; cat "$TMP/cc.err"; exit 1; }

FILES="data/nogt/cellprofiler_speckles_1-162hrh2ax2.tif data/nogt/bpae_actin.tif data/nogt/instanseg_HE_example.tif
data/nogt/ebimage_cells.tif data/wholecell/neurips_cell_00849_img.png golden/dynamics/stardist_img2d/flows_v3.npy.gz"
REPS=10
PEER=0
/usr/bin/python3 -c 'import numpy, tifffile, PIL' 2>/dev/null && PEER=1

for f in $FILES; do
    line=$("$TMP/readbench" $REPS "$SHARED/$f") || { echo "io bench: $f failed"; exit 1; }
    IFS=$'\t' read -r _ shape ms mbs <<< "$line"
    peer=""
    if [ $PEER = 1 ]; then
        pms=$(/usr/bin/python3 - "$SHARED/$f" $REPS <<'PY' 2>/dev/null
import sys, time, gzip, numpy as np
path, reps = sys.argv[1], int(sys.argv[2])
def load():
    if path.endswith('.npy.gz'):
        return np.load(gzip.open(path))
    if path.endswith('.png'):
        from PIL import Image
        return np.asarray(Image.open(path))
    import tifffile
    try:
        return tifffile.imread(path)
    except Exception:          # JPEG without imagecodecs: PIL's libtiff path, every page
        from PIL import Image
        im = Image.open(path)
        pages = []
        for i in range(getattr(im, 'n_frames', 1)):
            im.seek(i)
            pages.append(np.asarray(im))
        return np.stack(pages)
best = 1e30
for _ in range(reps):
    t0 = time.perf_counter()
    load()
    best = min(best, time.perf_counter() - t0)
print('%.2f' % (best * 1e3))
PY
)
        [ -n "$pms" ] && peer=$(awk -v a="$ms" -v b="$pms" 'BEGIN { printf "; Python peer %.2f ms, speed ratio %.2fx (>1: we are faster)", b, b / a }')
    fi
    echo "io: read $f ($shape): $ms ms per read (best of $REPS), $mbs MB/s decoded$peer"
done
