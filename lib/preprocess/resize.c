/* OpenCV's cv::resize(INTER_LINEAR) on float32, reproduced operation by
 * operation (OpenCV 4.x, imgproc/src/resize.cpp, non-IPP path): float
 * coefficients from (d + 0.5) * scale - 0.5 computed in double and rounded to
 * float, a horizontal pass S[x]*a0 + S[x+1]*a1 per source row, then a vertical
 * pass R0*b0 + R1*b1, every product and sum rounded to float. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/core.h"
#include "cellpose/preprocess.h"
#include "core/internal.h"

double cp_rescale(double diameter, double diam_mean, double diam_labels, cp_arch arch)
{
    if (arch == CP_ARCH_CPSAM)
        return diameter > 0 ? 30.0 / diameter : 1.0;
    if (diameter > 0)
        return diam_mean / diameter;
    return diam_labels > 0 ? diam_mean / diam_labels : 1.0;
}

int cp_rescaled_len(int len, double s)
{
    return (int)((double)len * s);
}

typedef struct axis_tab {
    int *ofs;     /* first source index */
    float *w;     /* 2 weights per output */
    int lim;      /* horizontal: outputs from here on copy the source (xmax) */
} axis_tab;

/* Coefficients along one axis, as OpenCV computes them. clamp: the x axis
 * clamps out-of-range positions (and records xmax); the y axis keeps the raw
 * floor and lets the row fetch clamp. */
static void make_tab(int slen, int dlen, int clamp, axis_tab *t)
{
    double inv = (double)dlen / slen;
    double scale = 1.0 / inv;
    t->lim = dlen;
    for (int d = 0; d < dlen; d++) {
        float f = (float)((d + 0.5) * scale - 0.5);
        int s = (int)floorf(f);
        f -= (float)s;
        if (clamp) {
            if (s < 0) {
                f = 0;
                s = 0;
            }
            if (s + 1 >= slen) {
                if (d < t->lim)
                    t->lim = d;
                if (s >= slen - 1) {
                    f = 0;
                    s = slen - 1;
                }
            }
        }
        t->ofs[d] = s;
        t->w[2 * d] = 1.f - f;
        t->w[2 * d + 1] = f;
    }
}

static void hresize(const float *S, int sw, const axis_tab *tx, int dw, float *D)
{
    int dx = 0;
    for (; dx < tx->lim; dx++) {
        int sx = tx->ofs[dx];
        D[dx] = S[sx] * tx->w[2 * dx] + S[sx + 1] * tx->w[2 * dx + 1];
    }
    for (; dx < dw; dx++)
        D[dx] = S[tx->ofs[dx]];
    (void)sw;
}

static int clampi(int v, int hi)
{
    return v < 0 ? 0 : (v >= hi ? hi - 1 : v);
}

static void resize_plane(const float *src, int sh, int sw, float *dst, int dh, int dw,
                         const axis_tab *tx, const axis_tab *ty, float *rows)
{
    float *R0 = rows, *R1 = rows + dw;
    int r0 = -1, r1 = -1;
    for (int dy = 0; dy < dh; dy++) {
        int sy0 = clampi(ty->ofs[dy], sh), sy1 = clampi(ty->ofs[dy] + 1, sh);
        if (sy0 != r0) {
            if (sy0 == r1) {
                float *t = R0;
                R0 = R1;
                R1 = t;
                r0 = r1;
                r1 = -1;
            } else {
                hresize(src + (size_t)sy0 * sw, sw, tx, dw, R0);
                r0 = sy0;
            }
        }
        if (sy1 != r1) {
            if (sy1 == r0)
                memcpy(R1, R0, (size_t)dw * sizeof(float));
            else
                hresize(src + (size_t)sy1 * sw, sw, tx, dw, R1);
            r1 = sy1;
        }
        float b0 = ty->w[2 * dy], b1 = ty->w[2 * dy + 1];
        float *D = dst + (size_t)dy * dw;
        for (int x = 0; x < dw; x++)
            D[x] = R0[x] * b0 + R1[x] * b1;
    }
}

/* OpenCV turns an exact 2x downscale into INTER_AREA; for 2-3 channel
 * images (Cellpose's case) its scalar loop sums ((a + b) + c) + d. */
static void area2_plane(const float *src, int sw, float *dst, int dh, int dw)
{
    for (int y = 0; y < dh; y++) {
        const float *s0 = src + (size_t)(2 * y) * sw, *s1 = s0 + sw;
        float *D = dst + (size_t)y * dw;
        for (int x = 0; x < dw; x++) {
            float sum = 0.f;
            sum += s0[2 * x] + s0[2 * x + 1] + s1[2 * x] + s1[2 * x + 1];
            D[x] = sum * 0.25f;
        }
    }
}

int cp_resize_linear(const cp_planes *in, int out_h, int out_w, cp_planes **out)
{
    *out = NULL;
    cp_planes *o;
    int rc = cp_planes_create(&o, in->channels, out_h, out_w);
    if (rc)
        return rc;
    int sh = in->height, sw = in->width;
    size_t sn = (size_t)sh * sw, dn = (size_t)out_h * out_w;
    if (sh == out_h && sw == out_w) {
        memcpy(o->data, in->data, sn * in->channels * sizeof(float));
        *out = o;
        return CP_OK;
    }
    double scale_x = 1.0 / ((double)out_w / sw), scale_y = 1.0 / ((double)out_h / sh);
    if (fabs(scale_x - 2.0) < DBL_EPSILON && fabs(scale_y - 2.0) < DBL_EPSILON) {
        for (int c = 0; c < in->channels; c++)
            area2_plane(in->data + c * sn, sw, o->data + c * dn, out_h, out_w);
        *out = o;
        return CP_OK;
    }
    axis_tab tx, ty;
    tx.ofs = cp_malloc_array((size_t)out_w, sizeof(int), "resize table");
    tx.w = cp_malloc_array((size_t)out_w * 2, sizeof(float), "resize table");
    ty.ofs = cp_malloc_array((size_t)out_h, sizeof(int), "resize table");
    ty.w = cp_malloc_array((size_t)out_h * 2, sizeof(float), "resize table");
    if (!tx.ofs || !tx.w || !ty.ofs || !ty.w) {
        rc = CP_ENOMEM;
        goto done;
    }
    make_tab(sw, out_w, 1, &tx);
    make_tab(sh, out_h, 0, &ty);
    int nch = in->channels;
    int fail = 0;
#pragma omp parallel for schedule(static) if (nch > 1 && dn > 65536)
    for (int c = 0; c < nch; c++) {
        float *rows = malloc((size_t)out_w * 2 * sizeof(float));
        if (!rows) {
#pragma omp atomic write
            fail = 1;
            continue;
        }
        resize_plane(in->data + c * sn, sh, sw, o->data + c * dn, out_h, out_w, &tx, &ty, rows);
        free(rows);
    }
    if (fail)
        rc = cp_error(CP_ENOMEM, "resize: out of memory");
done:
    free(tx.ofs);
    free(tx.w);
    free(ty.ofs);
    free(ty.w);
    if (rc) {
        cp_planes_free(o);
        return rc;
    }
    *out = o;
    return CP_OK;
}
