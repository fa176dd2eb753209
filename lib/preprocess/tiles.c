/* Padding, tile layout and the taper mask (spec 4.4-4.7). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/core.h"
#include "cellpose/preprocess.h"
#include "core/internal.h"

void cp_pad_amounts(int len, cp_arch arch, int bsize, int *before, int *after)
{
    int lpad = 16 * ((len + 15) / 16) - len;
    if (arch == CP_ARCH_CPSAM && len < bsize) {
        lpad = bsize - len - 16;
        if (lpad < 0)
            lpad = 0;
    }
    *before = 8 + lpad / 2;
    *after = 8 + lpad - lpad / 2;
}

/* trunc(numpy.linspace(0, stop, n)) */
static void linspace_starts(int stop, int n, int *out)
{
    if (n == 1) {
        out[0] = 0;
        return;
    }
    double step = (double)stop / (double)(n - 1);
    for (int k = 0; k < n - 1; k++)
        out[k] = (int)((double)k * step + 0.0);
    out[n - 1] = stop;
}

static int count_tiles(int len, int bsize, double overlap, int augment)
{
    if (augment) {
        int n = (int)ceil(2.0 * len / bsize);
        return n > 2 ? n : 2;
    }
    if (len <= bsize)
        return 1;
    return (int)ceil((1.0 + 2 * overlap) * len / bsize);
}

int cp_tiling_make(cp_tiling *t, int height, int width, int bsize, double overlap, int augment)
{
    memset(t, 0, sizeof *t);
    if (height <= 0 || width <= 0 || bsize <= 0)
        return cp_error(CP_EINVAL, "tiles: bad size %d x %d (tile %d)", height, width, bsize);
    if (!(overlap == overlap))
        return cp_error(CP_EINVAL, "tiles: tile overlap is not a number");
    overlap = overlap < 0.05 ? 0.05 : (overlap > 0.5 ? 0.5 : overlap);
    t->augment = augment ? 1 : 0;
    if (augment) {
        /* zeros appended at the bottom/right up to one full tile */
        t->height = height < bsize ? bsize : height;
        t->width = width < bsize ? bsize : width;
        t->ty = t->tx = bsize;
    } else {
        t->height = height;
        t->width = width;
        t->ty = height < bsize ? height : bsize;
        t->tx = width < bsize ? width : bsize;
    }
    t->ny = count_tiles(t->height, bsize, overlap, augment);
    t->nx = count_tiles(t->width, bsize, overlap, augment);
    t->ystart = cp_malloc_array((size_t)t->ny, sizeof(int), "tiles");
    t->xstart = cp_malloc_array((size_t)t->nx, sizeof(int), "tiles");
    if (!t->ystart || !t->xstart) {
        cp_tiling_free(t);
        return CP_ENOMEM;
    }
    linspace_starts(t->height - t->ty, t->ny, t->ystart);
    linspace_starts(t->width - t->tx, t->nx, t->xstart);
    return CP_OK;
}

void cp_tiling_free(cp_tiling *t)
{
    if (!t)
        return;
    free(t->ystart);
    free(t->xstart);
    t->ystart = t->xstart = NULL;
}

void cp_taper_1d(int ty, int tx, int len, double *out)
{
    int B = 224;
    if (ty > B)
        B = ty;
    if (tx > B)
        B = tx;
    double c = (B - 1) / 2.0;
    double mid = B / 2.0 - 20.0;
    int off = B / 2 - len / 2;
    for (int i = 0; i < len; i++) {
        double xm = fabs((double)(i + off) - c);
        out[i] = 1.0 / (1.0 + exp((xm - mid) / 7.5));
    }
}
