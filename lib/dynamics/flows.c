/* Flows from labels by heat diffusion (spec 5.5) and the flow-error QC (5.4).
 *
 * Both Cellpose variants diffuse each label independently: v3 by design
 * (per-mask boxes), v4 because a pixel only averages heat of its own label
 * (isneighbor), so v4's global iteration is the same as running every label
 * alone in its box for the global iteration count. We therefore diffuse label
 * by label in a small box (parallel over labels), keep the per-pixel sum order
 * (centre, up, down, left, right, up-left, up-right, down-left, down-right) and
 * skip cells the heat front cannot have reached yet (they are exactly 0). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/dynamics.h"
#include "core/internal.h"
#include "dynamics/internal.h"

/* Diffuse in a (gh x gw) box (label pixels have mask 1, others 0; the box has a
 * 0 border of at least one cell) from centre (cy, cx) for niter steps.
 * T and T2 are gh*gw scratch; the result is in the returned buffer. */
static double *diffuse(const double *mask, int gh, int gw, int cy, int cx, long niter,
                       int v3, double *T, double *T2)
{
    size_t gn = (size_t)gh * gw;
    memset(T, 0, gn * sizeof *T);
    memset(T2, 0, gn * sizeof *T2);
    const double ninth = 1.0 / 9.;
    for (long t = 1; t <= niter; t++) {
        T[(size_t)cy * gw + cx] += 1.0;
        /* after this step heat reaches at most t cells (Chebyshev) from the
         * centre; update that square only (the rest stays exactly 0) */
        long r = t;
        int y0 = cy - r < 1 ? 1 : (int)(cy - r), y1 = cy + r > gh - 2 ? gh - 2 : (int)(cy + r);
        int x0 = cx - r < 1 ? 1 : (int)(cx - r), x1 = cx + r > gw - 2 ? gw - 2 : (int)(cx + r);
        for (int y = y0; y <= y1; y++) {
            const double *up = T + (size_t)(y - 1) * gw, *md = T + (size_t)y * gw,
                         *dn = T + (size_t)(y + 1) * gw;
            const double *m = mask + (size_t)y * gw;
            double *out = T2 + (size_t)y * gw;
            if (v3) {
                for (int x = x0; x <= x1; x++) {
                    double s = md[x] + up[x] + dn[x] + md[x - 1] + md[x + 1] + up[x - 1] +
                               up[x + 1] + dn[x - 1] + dn[x + 1];
                    out[x] = (ninth * s) * m[x];
                }
            } else {
                for (int x = x0; x <= x1; x++) {
                    double s = md[x] + up[x] + dn[x] + md[x - 1] + md[x + 1] + up[x - 1] +
                               up[x + 1] + dn[x - 1] + dn[x + 1];
                    out[x] = (s / 9.0) * m[x];
                }
            }
        }
        double *tmp = T;
        T = T2;
        T2 = tmp;
        /* T2 (the old buffer) still holds values inside the square that the next
         * step overwrites, and zeros outside it: consistent. */
    }
    return T;
}

/* Centre of one label, in box coordinates (box origin = bbox origin - 1). */
static void centre_v3(const uint32_t *labels, int Lx, const dyn_bbox *b, uint32_t l, int *cy,
                      int *cx)
{
    /* y, x are 1-based in the padded box as in Cellpose; mean in double. */
    long long sy = 0, sx = 0;
    size_t n = 0;
    for (int y = b->r0; y < b->r1; y++)
        for (int x = b->c0; x < b->c1; x++)
            if (labels[(size_t)y * Lx + x] == l) {
                sy += y - b->r0 + 1;
                sx += x - b->c0 + 1;
                n++;
            }
    double ym = (double)sy / (double)n, xm = (double)sx / (double)n;
    double best = INFINITY;
    for (int y = b->r0; y < b->r1; y++)
        for (int x = b->c0; x < b->c1; x++)
            if (labels[(size_t)y * Lx + x] == l) {
                double dx = (double)(x - b->c0 + 1) - xm, dy = (double)(y - b->r0 + 1) - ym;
                double d = dx * dx + dy * dy;
                if (d < best) {
                    best = d;
                    *cy = y - b->r0 + 1;
                    *cx = x - b->c0 + 1;
                }
            }
}

static void centre_v4(const uint32_t *labels, int Lx, const dyn_bbox *b, uint32_t l, int *cy,
                      int *cx)
{
    long long sy = 0, sx = 0;
    size_t n = 0;
    for (int y = b->r0; y < b->r1; y++)
        for (int x = b->c0; x < b->c1; x++)
            if (labels[(size_t)y * Lx + x] == l) {
                sy += y - b->r0;
                sx += x - b->c0;
                n++;
            }
    long long ym = (long long)nearbyint((double)sy / (double)n);
    long long xm = (long long)nearbyint((double)sx / (double)n);
    if (ym >= 0 && ym < b->r1 - b->r0 && xm >= 0 && xm < b->c1 - b->c0 &&
        labels[(size_t)(b->r0 + ym) * Lx + (b->c0 + xm)] == l) {
        *cy = (int)ym + 1;
        *cx = (int)xm + 1;
        return;
    }
    long long best = -1;
    for (int y = b->r0; y < b->r1; y++)
        for (int x = b->c0; x < b->c1; x++)
            if (labels[(size_t)y * Lx + x] == l) {
                long long dx = (x - b->c0) - xm, dy = (y - b->r0) - ym;
                long long d = dx * dx + dy * dy;
                if (best < 0 || d < best) {
                    best = d;
                    *cy = y - b->r0 + 1;
                    *cx = x - b->c0 + 1;
                }
            }
}

int cp_masks_to_flows(const uint32_t *labels, int Ly, int Lx, cp_dyn_variant variant,
                      int threads, double *mu)
{
    if (Ly <= 0 || Lx <= 0)
        return cp_error(CP_EINVAL, "masks_to_flows: bad image size %dx%d", Lx, Ly);
    if (variant != CP_DYN_V3 && variant != CP_DYN_V4)
        return cp_error(CP_EINVAL, "masks_to_flows: unknown variant %d", (int)variant);
    size_t npix = (size_t)Ly * Lx;
    memset(mu, 0, 2 * npix * sizeof *mu);
    uint32_t nlab = dyn_max_label(labels, npix);
    if (nlab == 0)
        return CP_OK;
    dyn_bbox *bb = dyn_bboxes(labels, Ly, Lx, nlab);
    if (!bb)
        return CP_ENOMEM;
    int v3 = variant == CP_DYN_V3;
    size_t maxbox = 0;
    long gext = 0;
    for (uint32_t l = 1; l <= nlab; l++) {
        if (!bb[l].npix)
            continue;
        int h = bb[l].r1 - bb[l].r0, w = bb[l].c1 - bb[l].c0;
        size_t box = (size_t)(h + 2) * (w + 2);
        if (box > maxbox)
            maxbox = box;
        if (h + w + 2 > gext)
            gext = h + w + 2;
    }
    /* v4: heat of every label on the (unpadded) image, for the raw gradient */
    double *H = NULL;
    if (!v3) {
        H = cp_calloc(npix, sizeof *H, "heat map");
        if (!H) {
            free(bb);
            return CP_ENOMEM;
        }
    }
    int nt = dyn_threads(threads);
    int fail = 0;
#pragma omp parallel num_threads(nt)
    {
        double *buf = malloc(3 * maxbox * sizeof *buf);
        if (!buf) {
#pragma omp atomic write
            fail = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (uint32_t l = 1; l <= nlab; l++) {
            const dyn_bbox *b = bb + l;
            if (!b->npix || !buf)
                continue;
            int h = b->r1 - b->r0, w = b->c1 - b->c0;
            int gh = h + 2, gw = w + 2;
            double *mask = buf, *T = buf + maxbox, *T2 = buf + 2 * maxbox;
            memset(mask, 0, (size_t)gh * gw * sizeof *mask);
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++)
                    if (labels[(size_t)(b->r0 + y) * Lx + b->c0 + x] == l)
                        mask[(size_t)(y + 1) * gw + x + 1] = 1.0;
            int cy = 1, cx = 1;
            long niter;
            if (v3) {
                centre_v3(labels, Lx, b, l, &cy, &cx);
                niter = 2L * (gh + gw);
            } else {
                centre_v4(labels, Lx, b, l, &cy, &cx);
                niter = 2 * gext;
            }
            double *R = diffuse(mask, gh, gw, cy, cx, niter, v3, T, T2);
            for (int y = 1; y <= h; y++)
                for (int x = 1; x <= w; x++) {
                    if (mask[(size_t)y * gw + x] == 0.0)
                        continue;
                    size_t i = (size_t)(b->r0 + y - 1) * Lx + (b->c0 + x - 1);
                    if (v3) {
                        double dy = R[(size_t)(y + 1) * gw + x] - R[(size_t)(y - 1) * gw + x];
                        double dx = R[(size_t)y * gw + x + 1] - R[(size_t)y * gw + x - 1];
                        double nrm = 1e-60 + sqrt(dy * dy + dx * dx);
                        mu[i] = dy / nrm;
                        mu[npix + i] = dx / nrm;
                    } else {
                        H[i] = R[(size_t)y * gw + x];
                    }
                }
        }
        free(buf);
    }
    if (fail) {
        free(bb);
        free(H);
        return cp_error(CP_ENOMEM, "out of memory: diffusion boxes");
    }
    if (!v3) {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int y = 0; y < Ly; y++) {
            for (int x = 0; x < Lx; x++) {
                size_t i = (size_t)y * Lx + x;
                if (!labels[i] || !bb[labels[i]].npix)
                    continue;
                double yp = y + 1 < Ly ? H[i + Lx] : 0.0, ym = y > 0 ? H[i - Lx] : 0.0;
                double xp = x + 1 < Lx ? H[i + 1] : 0.0, xm = x > 0 ? H[i - 1] : 0.0;
                double dy = yp - ym, dx = xp - xm;
                double nrm = 1e-60 + sqrt(dy * dy + dx * dx);
                mu[i] = dy / nrm;
                mu[npix + i] = dx / nrm;
            }
        }
    }
    free(H);
    free(bb);
    return CP_OK;
}

int cp_dyn_flow_errors(const uint32_t *labels, int Ly, int Lx, const float *dP,
                       cp_dyn_variant variant, int threads, double **err, uint32_t *nerr)
{
    *err = NULL;
    *nerr = 0;
    size_t npix = (size_t)Ly * Lx;
    uint32_t nlab = dyn_max_label(labels, npix);
    if (nlab == 0)
        return CP_OK;
    double *mu = cp_malloc_array(npix, 2 * sizeof *mu, "QC flows");
    double *sum = cp_calloc((size_t)nlab + 1, 2 * sizeof *sum, "flow errors");
    size_t *cnt = cp_calloc((size_t)nlab + 1, sizeof *cnt, "flow error counts");
    double *e = cp_malloc_array(nlab, sizeof *e, "flow errors");
    if (!mu || !sum || !cnt || !e) {
        free(mu), free(sum), free(cnt), free(e);
        return CP_ENOMEM;
    }
    int rc = cp_masks_to_flows(labels, Ly, Lx, variant, threads, mu);
    if (rc != CP_OK) {
        free(mu), free(sum), free(cnt), free(e);
        return rc;
    }
    /* scipy.ndimage.mean per component: raster-order double sums. */
    for (size_t i = 0; i < npix; i++) {
        uint32_t l = labels[i];
        if (!l)
            continue;
        double dy = mu[i] - (double)(dP[i] / 5.0f);
        double dx = mu[npix + i] - (double)(dP[npix + i] / 5.0f);
        sum[2 * l] += dy * dy;
        sum[2 * l + 1] += dx * dx;
        cnt[l]++;
    }
    for (uint32_t l = 1; l <= nlab; l++) {
        double c = (double)cnt[l];
        e[l - 1] = sum[2 * l] / c + sum[2 * l + 1] / c;
    }
    free(mu), free(sum), free(cnt);
    *err = e;
    *nerr = nlab;
    return CP_OK;
}

int cp_dyn_remove_bad_flow_masks(uint32_t *labels, int Ly, int Lx, const float *dP,
                                 cp_dyn_variant variant, double threshold, int threads,
                                 int *removed)
{
    if (removed)
        *removed = 0;
    double *e;
    uint32_t ne;
    int rc = cp_dyn_flow_errors(labels, Ly, Lx, dP, variant, threads, &e, &ne);
    if (rc != CP_OK || ne == 0)
        return rc;
    int nrem = 0;
    unsigned char *bad = cp_calloc((size_t)ne + 1, 1, "bad masks");
    if (!bad) {
        free(e);
        return CP_ENOMEM;
    }
    for (uint32_t l = 1; l <= ne; l++)
        if (e[l - 1] > threshold) {
            bad[l] = 1;
            nrem++;
        }
    size_t npix = (size_t)Ly * Lx;
    if (nrem)
        for (size_t i = 0; i < npix; i++)
            if (bad[labels[i]])
                labels[i] = 0;
    free(bad);
    free(e);
    if (removed)
        *removed = nrem;
    return CP_OK;
}
