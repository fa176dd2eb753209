/* Cellpose's boundary_scores. Cellpose "convolves" the boolean outline image
 * with a disk of ones (scipy.ndimage.convolve, mode 'reflect'). The output
 * keeps the input's bool type: scipy stores the count of outline pixels under
 * the disk with a C cast to an unsigned char, so a pixel is "on" when that
 * count is not a multiple of 256 (checked against the golden scores: large
 * disks on dense outlines do wrap). While the disk has fewer than 256 pixels
 * this is a plain dilation, read off an exact squared Euclidean distance
 * transform (Felzenszwalb-Huttenlocher; reflected borders add nothing to a
 * dilation: a mirrored pixel is never closer than the pixel itself). Larger
 * disks count, with the reflected borders, by row prefix sums. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/measure.h"
#include "cellpose/outline.h"
#include "core/internal.h"
#include "measure/measure_internal.h"

/* 1D lower envelope of parabolas: d[i] = min_q (f[q] + (i-q)^2). */
static void edt1d(const int64_t *f, int64_t *d, int n, int *v, double *z)
{
    int k = 0;
    v[0] = 0;
    z[0] = -INFINITY;
    z[1] = INFINITY;
    for (int q = 1; q < n; q++) {
        double s;
        for (;;) {
            int p = v[k];
            s = ((double)(f[q] + (int64_t)q * q) - (double)(f[p] + (int64_t)p * p)) / (2.0 * (q - p));
            if (s > z[k])
                break;
            k--; /* z[0] = -inf ends the loop */
        }
        k++;
        v[k] = q;
        z[k] = s;
        z[k + 1] = INFINITY;
    }
    k = 0;
    for (int q = 0; q < n; q++) {
        while (z[k + 1] < q)
            k++;
        int64_t dq = q - v[k];
        d[q] = dq * dq + f[v[k]];
    }
}

/* Squared distance of every pixel to the nearest set pixel of src; "far" (a
 * value larger than any distance in the image) when src is empty. */
static int edt2(const uint8_t *src, int H, int W, int64_t *out)
{
    int64_t far = 2 * ((int64_t)H * H + (int64_t)W * W) + 1;
    int n = H > W ? H : W;
    int64_t *f = cp_malloc_array((size_t)n, sizeof *f, "distance transform");
    int64_t *d = cp_malloc_array((size_t)n, sizeof *d, "distance transform");
    int *v = cp_malloc_array((size_t)n, sizeof *v, "distance transform");
    double *z = cp_malloc_array((size_t)n + 1, sizeof *z, "distance transform");
    if (!f || !d || !v || !z) {
        free(f);
        free(d);
        free(v);
        free(z);
        return CP_ENOMEM;
    }
    for (int x = 0; x < W; x++) {
        for (int y = 0; y < H; y++)
            f[y] = src[(size_t)y * W + x] ? 0 : far;
        edt1d(f, d, H, v, z);
        for (int y = 0; y < H; y++)
            out[(size_t)y * W + x] = d[y] < far ? d[y] : far;
    }
    for (int y = 0; y < H; y++) {
        int64_t *row = out + (size_t)y * W;
        memcpy(f, row, (size_t)W * sizeof *f);
        edt1d(f, d, W, v, z);
        for (int x = 0; x < W; x++)
            row[x] = d[x] < far ? d[x] : far;
    }
    free(f);
    free(d);
    free(v);
    free(z);
    return CP_OK;
}

/* scipy's 'reflect' (d c b a | a b c d | d c b a) */
static int reflect(int64_t i, int n)
{
    int64_t p = 2 * (int64_t)n;
    i %= p;
    if (i < 0)
        i += p;
    return (int)(i < n ? i : p - 1 - i);
}

/* on[i] = (outline pixels within the disk around i, borders reflected) mod 256 != 0 */
static int dilate_count(const uint8_t *src, int H, int W, int64_t R, int64_t d2max, uint8_t *on)
{
    size_t ew = (size_t)W + 2 * (size_t)R + 1, total;
    if (cp_mul_overflow((size_t)H, ew, &total))
        return CP_ENOMEM;
    /* prefix sums of every row extended by R reflected pixels on each side */
    int32_t *pre = cp_malloc_array(total, sizeof *pre, "boundary");
    int64_t *hw = cp_malloc_array(2 * (size_t)R + 1, sizeof *hw, "boundary");
    if (!pre || !hw) {
        free(pre);
        free(hw);
        return CP_ENOMEM;
    }
    for (int64_t dy = -R; dy <= R; dy++) {
        int64_t h = -1;
        while (h + 1 <= R && dy * dy + (h + 1) * (h + 1) <= d2max)
            h++;
        hw[dy + R] = h;
    }
    for (int y = 0; y < H; y++) {
        const uint8_t *row = src + (size_t)y * W;
        int32_t *p = pre + (size_t)y * ew;
        p[0] = 0;
        for (size_t e = 0; e + 1 < ew; e++)
            p[e + 1] = p[e] + (row[reflect((int64_t)e - R, W)] != 0);
    }
    for (int y = 0; y < H; y++) {
        uint8_t *o = on + (size_t)y * W;
        for (int x = 0; x < W; x++) {
            int64_t cnt = 0;
            for (int64_t dy = -R; dy <= R; dy++) {
                int64_t h = hw[dy + R];
                if (h < 0)
                    continue;
                const int32_t *p = pre + (size_t)reflect(y + dy, H) * ew;
                cnt += p[x + R + h + 1] - p[x + R - h];
            }
            o[x] = (cnt % 256) != 0;
        }
    }
    free(pre);
    free(hw);
    return CP_OK;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* cellpose.utils.diameters: median of sqrt(area) over the labels, divided by
 * sqrt(pi)/2. Like Cellpose, the first value of the sorted unique list is
 * dropped as "background" (it is a label when the image has no 0). */
static int median_diameter(const uint32_t *lab, size_t npix, double *out)
{
    label_index ix;
    int rc = label_index_build(lab, npix, &ix);
    if (rc)
        return rc;
    int64_t *area = cp_calloc(ix.n + 1, sizeof *area, "diameters");
    double *s = cp_malloc_array(ix.n + 1, sizeof *s, "diameters");
    if (!area || !s) {
        free(area);
        free(s);
        label_index_free(&ix);
        return CP_ENOMEM;
    }
    int64_t bg = 0;
    for (size_t i = 0; i < npix; i++) {
        if (lab[i])
            area[label_index_of(&ix, lab[i])]++;
        else
            bg++;
    }
    size_t first = bg ? 0 : 1, m = 0;
    for (size_t i = first; i < ix.n; i++)
        s[m++] = sqrt((double)area[i]);
    double md = 0;
    if (m) {
        qsort(s, m, sizeof *s, cmp_double);
        md = m % 2 ? s[m / 2] : (s[m / 2 - 1] + s[m / 2]) / 2;
    }
    *out = md / (sqrt(M_PI) / 2);
    free(area);
    free(s);
    label_index_free(&ix);
    return CP_OK;
}

void cp_boundary_finish(cp_boundary_score *s)
{
    double tp = (double)s->tp;
    s->precision = tp / (tp + (double)s->fp);
    s->recall = tp / (tp + (double)s->fn);
    s->fscore = 2 * s->precision * s->recall / (s->precision + s->recall);
}

int cp_boundary_scores(const uint32_t *truth, const uint32_t *pred, int height, int width,
                       const double *scales, int n_scales, cp_boundary_score *out)
{
    if (!truth || !pred || height <= 0 || width <= 0)
        return cp_error(CP_EINVAL, "boundary scores: empty image");
    size_t npix = (size_t)height * width;
    double diam;
    int rc = median_diameter(truth, npix, &diam);
    if (rc)
        return rc;
    uint8_t *ot = cp_malloc(npix, "outlines"), *op = cp_malloc(npix, "outlines");
    int64_t *dt = cp_malloc_array(npix, sizeof *dt, "outlines");
    int64_t *dp = cp_malloc_array(npix, sizeof *dp, "outlines");
    uint8_t *bt = NULL, *bp = NULL;
    if (!ot || !op || !dt || !dp)
        rc = CP_ENOMEM;
    if (!rc)
        rc = cp_masks_to_outlines(truth, height, width, ot);
    if (!rc)
        rc = cp_masks_to_outlines(pred, height, width, op);
    if (!rc)
        rc = edt2(ot, height, width, dt);
    if (!rc)
        rc = edt2(op, height, width, dp);
    for (int k = 0; k < n_scales && !rc; k++) {
        double r = scales[k] * diam;
        if (!(r >= 1))
            r = 1;
        /* Cellpose's disk: offsets on a (2*ceil(r)+1)^2 grid with sqrt(dy^2+dx^2) <= r */
        int64_t R = (int64_t)ceil(r), d2max = -1;
        for (int64_t q = 0; q <= 2 * R * R; q++)
            if (sqrt((double)q) <= r)
                d2max = q;
        int64_t disk = 0;
        for (int64_t dy = -R; dy <= R; dy++)
            for (int64_t dx = -R; dx <= R; dx++)
                disk += dy * dy + dx * dx <= d2max;
        int wraps = disk >= 256;
        if (wraps) {
            if (!bt && !(bt = cp_malloc(npix, "outlines")))
                rc = CP_ENOMEM;
            if (!rc && !bp && !(bp = cp_malloc(npix, "outlines")))
                rc = CP_ENOMEM;
            if (!rc)
                rc = dilate_count(ot, height, width, R, d2max, bt);
            if (!rc)
                rc = dilate_count(op, height, width, R, d2max, bp);
            if (rc)
                break;
        }
        cp_boundary_score *s = out + k;
        memset(s, 0, sizeof *s);
        s->scale = scales[k];
        for (size_t i = 0; i < npix; i++) {
            int a = wraps ? bt[i] : dt[i] <= d2max, b = wraps ? bp[i] : dp[i] <= d2max;
            s->tp += a && b;
            s->fp += !a && b;
            s->fn += a && !b;
        }
        cp_boundary_finish(s);
    }
    free(ot);
    free(op);
    free(dt);
    free(dp);
    free(bt);
    free(bp);
    return rc == CP_ENOMEM ? cp_error(CP_ENOMEM, "out of memory in boundary scores") : rc;
}
