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

/* One row of a diffusion step: out[x] = (sum of the 3x3 heat, in Cellpose's
 * order) * (1/9) (v3) or / 9 (v4), times the label mask (1 or 0). */
static inline void diffuse_row(const double *up, const double *md, const double *dn,
                               const double *m, double *out, int x0, int x1, int v3)
{
    const double ninth = 1.0 / 9.;
    for (int x = x0; x <= x1; x++) {
        double s = md[x] + up[x] + dn[x] + md[x - 1] + md[x + 1] + up[x - 1] + up[x + 1] +
                   dn[x - 1] + dn[x + 1];
        out[x] = (v3 ? ninth * s : s / 9.0) * m[x];
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FLOWS_HAVE_AVX2 1
/* The same per-element operations on 4 cells at once (bit-identical); x1 - x0
 * + 1 is a multiple of 4. */
__attribute__((target("avx2"))) static inline void diffuse_row_avx2(const double *up,
                                                                    const double *md,
                                                                    const double *dn,
                                                                    const double *m, double *out,
                                                                    int x0, int x1, int v3)
{
    const __m256d ninth = _mm256_set1_pd(1.0 / 9.), nine = _mm256_set1_pd(9.0);
    for (int x = x0; x + 3 <= x1; x += 4) {
        __m256d s = _mm256_add_pd(_mm256_loadu_pd(md + x), _mm256_loadu_pd(up + x));
        s = _mm256_add_pd(s, _mm256_loadu_pd(dn + x));
        s = _mm256_add_pd(s, _mm256_loadu_pd(md + x - 1));
        s = _mm256_add_pd(s, _mm256_loadu_pd(md + x + 1));
        s = _mm256_add_pd(s, _mm256_loadu_pd(up + x - 1));
        s = _mm256_add_pd(s, _mm256_loadu_pd(up + x + 1));
        s = _mm256_add_pd(s, _mm256_loadu_pd(dn + x - 1));
        s = _mm256_add_pd(s, _mm256_loadu_pd(dn + x + 1));
        s = v3 ? _mm256_mul_pd(ninth, s) : _mm256_div_pd(s, nine);
        _mm256_storeu_pd(out + x, _mm256_mul_pd(s, _mm256_loadu_pd(m + x)));
    }
}
#endif

/* Row stride of a diffusion box gw cells wide: room for whole 4-cell vectors
 * from any start column (the extra cells are outside the label: mask 0). */
static inline int box_stride(int gw)
{
    return (gw + 3 + 3) & ~3;
}

/* Diffuse in a box of gh rows (gw cells wide, row stride box_stride(gw);
 * label cells have mask 1, others 0; a 0 border of at least one cell) from
 * centre (cy, cx) for niter steps. Row y has label cells only in columns
 * [rlo[y], rhi[y]] (cells outside stay 0). T and T2 are scratch of gh rows;
 * the result is in the returned buffer. One body for both instruction sets,
 * so the row kernel inlines into the step loop. */
__attribute__((always_inline)) static inline double *
diffuse_impl(const double *mask, const int *rlo, const int *rhi, int gh, int gw, int cy, int cx,
             long niter, int v3, double *T, double *T2, int avx2)
{
    int S = box_stride(gw);
    size_t gn = (size_t)gh * S;
    memset(T, 0, gn * sizeof *T);
    memset(T2, 0, gn * sizeof *T2);
    for (long t = 1; t <= niter; t++) {
        T[(size_t)cy * S + cx] += 1.0;
        /* after this step heat reaches at most t cells (Chebyshev) from the
         * centre; update that square only (the rest stays exactly 0) */
        long r = t;
        int y0 = cy - r < 1 ? 1 : (int)(cy - r), y1 = cy + r > gh - 2 ? gh - 2 : (int)(cy + r);
        int x0 = cx - r < 1 ? 1 : (int)(cx - r), x1 = cx + r > gw - 2 ? gw - 2 : (int)(cx + r);
        for (int y = y0; y <= y1; y++) {
            const double *up = T + (size_t)(y - 1) * S, *md = T + (size_t)y * S,
                         *dn = T + (size_t)(y + 1) * S;
            const double *m = mask + (size_t)y * S;
            double *out = T2 + (size_t)y * S;
            int lo = rlo[y] > x0 ? rlo[y] : x0, hi = rhi[y] < x1 ? rhi[y] : x1;
            if (lo > hi)
                continue;
            /* round the run up to whole vectors: extra cells are either
             * outside the label (mask 0 -> 0) or beyond the heat front (0) */
            hi = lo + ((hi - lo + 4) & ~3) - 1;
#ifdef FLOWS_HAVE_AVX2
            if (avx2)
                diffuse_row_avx2(up, md, dn, m, out, lo, hi, v3);
            else
#endif
                diffuse_row(up, md, dn, m, out, lo, hi, v3);
        }
        double *tmp = T;
        T = T2;
        T2 = tmp;
        /* T2 (the old buffer) still holds values inside the square that the next
         * step overwrites, and zeros outside it: consistent. */
    }
    (void)avx2;
    return T;
}

static double *diffuse_plain(const double *mask, const int *rlo, const int *rhi, int gh, int gw,
                             int cy, int cx, long niter, int v3, double *T, double *T2)
{
    return diffuse_impl(mask, rlo, rhi, gh, gw, cy, cx, niter, v3, T, T2, 0);
}

#ifdef FLOWS_HAVE_AVX2
__attribute__((target("avx2"))) static double *diffuse_avx2(const double *mask, const int *rlo,
                                                            const int *rhi, int gh, int gw,
                                                            int cy, int cx, long niter, int v3,
                                                            double *T, double *T2)
{
    return diffuse_impl(mask, rlo, rhi, gh, gw, cy, cx, niter, v3, T, T2, 1);
}
#endif

static double *diffuse(const double *mask, const int *rlo, const int *rhi, int gh, int gw,
                       int cy, int cx, long niter, int v3, double *T, double *T2)
{
#ifdef FLOWS_HAVE_AVX2
    if (__builtin_cpu_supports("avx2"))
        return diffuse_avx2(mask, rlo, rhi, gh, gw, cy, cx, niter, v3, T, T2);
#endif
    return diffuse_plain(mask, rlo, rhi, gh, gw, cy, cx, niter, v3, T, T2);
}

/* Pixel count of label l in box b and the sums of its 0-based box coordinates. */
static size_t label_sums(const uint32_t *labels, int Lx, const dyn_bbox *b, uint32_t l,
                         long long *sy, long long *sx)
{
    size_t n = 0;
    *sy = *sx = 0;
    for (int y = b->r0; y < b->r1; y++)
        for (int x = b->c0; x < b->c1; x++)
            if (labels[(size_t)y * Lx + x] == l) {
                *sy += y - b->r0;
                *sx += x - b->c0;
                n++;
            }
    return n;
}

/* Centre of one label, in box coordinates (box origin = bbox origin - 1). */
static void centre_v3(const uint32_t *labels, int Lx, const dyn_bbox *b, uint32_t l, int *cy,
                      int *cx)
{
    /* y, x are 1-based in the padded box as in Cellpose; mean in double. */
    long long sy, sx;
    size_t n = label_sums(labels, Lx, b, l, &sy, &sx);
    sy += (long long)n;
    sx += (long long)n;
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
    long long sy, sx;
    size_t n = label_sums(labels, Lx, b, l, &sy, &sx);
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

/* Normalise one gradient as Cellpose does (mu / (1e-60 + |mu|)) and store it
 * or add its squared difference to dP/5 (float32 dP/5 as numpy computes it). */
static inline void unit_flow(double dy, double dx, size_t i, size_t npix, uint32_t l,
                             double *mu, const float *dP, double *sum, size_t *cnt)
{
    double nrm = 1e-60 + sqrt(dy * dy + dx * dx);
    double my = dy / nrm, mx = dx / nrm;
    if (mu) {
        mu[i] = my;
        mu[npix + i] = mx;
    }
    if (dP) {
        double ey = my - (double)(dP[i] / 5.0f), ex = mx - (double)(dP[npix + i] / 5.0f);
        sum[2 * l] += ey * ey;
        sum[2 * l + 1] += ex * ex;
        cnt[l]++;
    }
}

/* Flows of every label; for each label pixel (row-major within the label, as
 * a raster scan visits them) either store mu (mu != NULL) or add
 * (mu - dP/5)^2 to the label's sums (dP != NULL: sum[2l], sum[2l+1], cnt[l]),
 * so the QC never needs the full mu field. */
static int flows_core(const uint32_t *labels, int Ly, int Lx, cp_dyn_variant variant,
                      int threads, double *mu, const float *dP, double *sum, size_t *cnt)
{
    if (Ly <= 0 || Lx <= 0)
        return cp_error(CP_EINVAL, "masks_to_flows: bad image size %dx%d", Lx, Ly);
    if (variant != CP_DYN_V3 && variant != CP_DYN_V4)
        return cp_error(CP_EINVAL, "masks_to_flows: unknown variant %d", (int)variant);
    size_t npix = (size_t)Ly * Lx;
    if (mu)
        memset(mu, 0, 2 * npix * sizeof *mu);
    int nt = dyn_threads(threads);
    uint32_t nlab = dyn_max_label(labels, npix, nt);
    if (nlab == 0)
        return CP_OK;
    dyn_census census;
    if (dyn_census_make(&census, labels, npix, Ly, Lx, nlab, nt) != CP_OK)
        return CP_ENOMEM;
    const dyn_bbox *bb = census.box;
    int v3 = variant == CP_DYN_V3;
    size_t maxbox = 0;
    long gext = 0;
    for (uint32_t l = 1; l <= nlab; l++) {
        if (!bb[l].npix)
            continue;
        int h = bb[l].r1 - bb[l].r0, w = bb[l].c1 - bb[l].c0;
        size_t box = (size_t)(h + 2) * box_stride(w + 2);
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
            dyn_census_free(&census);
            return CP_ENOMEM;
        }
    }
    int fail = 0;
#pragma omp parallel num_threads(nt)
    {
        double *buf = malloc(3 * maxbox * sizeof *buf);
        int *rlo = malloc(2 * ((size_t)Ly + 2) * sizeof *rlo), *rhi = rlo + Ly + 2;
        if (!buf || !rlo) {
            free(buf);
            buf = NULL;
#pragma omp atomic write
            fail = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (uint32_t l = 1; l <= nlab; l++) {
            const dyn_bbox *b = bb + l;
            if (!b->npix || !buf)
                continue;
            int h = b->r1 - b->r0, w = b->c1 - b->c0;
            int gh = h + 2, gw = w + 2, S = box_stride(gw);
            double *mask = buf, *T = buf + maxbox, *T2 = buf + 2 * maxbox;
            memset(mask, 0, (size_t)gh * S * sizeof *mask);
            for (int y = 0; y < gh; y++) {
                rlo[y] = gw;
                rhi[y] = -1;
            }
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++)
                    if (labels[(size_t)(b->r0 + y) * Lx + b->c0 + x] == l) {
                        mask[(size_t)(y + 1) * S + x + 1] = 1.0;
                        if (x + 1 < rlo[y + 1])
                            rlo[y + 1] = x + 1;
                        rhi[y + 1] = x + 1;
                    }
            int cy = 1, cx = 1;
            long niter;
            if (v3) {
                centre_v3(labels, Lx, b, l, &cy, &cx);
                niter = 2L * (gh + gw);
            } else {
                centre_v4(labels, Lx, b, l, &cy, &cx);
                niter = 2 * gext;
            }
            double *R = diffuse(mask, rlo, rhi, gh, gw, cy, cx, niter, v3, T, T2);
            for (int y = 1; y <= h; y++)
                for (int x = 1; x <= w; x++) {
                    if (mask[(size_t)y * S + x] == 0.0)
                        continue;
                    size_t i = (size_t)(b->r0 + y - 1) * Lx + (b->c0 + x - 1);
                    if (v3) {
                        double dy = R[(size_t)(y + 1) * S + x] - R[(size_t)(y - 1) * S + x];
                        double dx = R[(size_t)y * S + x + 1] - R[(size_t)y * S + x - 1];
                        unit_flow(dy, dx, i, npix, l, mu, dP, sum, cnt);
                    } else {
                        H[i] = R[(size_t)y * S + x];
                    }
                }
        }
        free(buf);
        free(rlo);
    }
    if (fail) {
        dyn_census_free(&census);
        free(H);
        return cp_error(CP_ENOMEM, "out of memory: diffusion boxes");
    }
    if (!v3) {
        /* gradient of the raw heat (neighbouring labels included), per label */
#pragma omp parallel for num_threads(nt) schedule(dynamic, 16)
        for (uint32_t l = 1; l <= nlab; l++) {
            const dyn_bbox *b = bb + l;
            for (int y = b->r0; b->npix && y < b->r1; y++)
                for (int x = b->c0; x < b->c1; x++) {
                    size_t i = (size_t)y * Lx + x;
                    if (labels[i] != l)
                        continue;
                    double yp = y + 1 < Ly ? H[i + Lx] : 0.0, ym = y > 0 ? H[i - Lx] : 0.0;
                    double xp = x + 1 < Lx ? H[i + 1] : 0.0, xm = x > 0 ? H[i - 1] : 0.0;
                    unit_flow(yp - ym, xp - xm, i, npix, l, mu, dP, sum, cnt);
                }
        }
    }
    free(H);
    dyn_census_free(&census);
    return CP_OK;
}

int cp_masks_to_flows(const uint32_t *labels, int Ly, int Lx, cp_dyn_variant variant,
                      int threads, double *mu)
{
    return flows_core(labels, Ly, Lx, variant, threads, mu, NULL, NULL, NULL);
}

int cp_dyn_flow_errors(const uint32_t *labels, int Ly, int Lx, const float *dP,
                       cp_dyn_variant variant, int threads, double **err, uint32_t *nerr)
{
    *err = NULL;
    *nerr = 0;
    size_t npix = (size_t)Ly * Lx;
    uint32_t nlab = dyn_max_label(labels, npix, threads);
    if (nlab == 0)
        return CP_OK;
    double *sum = cp_calloc((size_t)nlab + 1, 2 * sizeof *sum, "flow errors");
    size_t *cnt = cp_calloc((size_t)nlab + 1, sizeof *cnt, "flow error counts");
    double *e = cp_malloc_array(nlab, sizeof *e, "flow errors");
    if (!sum || !cnt || !e) {
        free(sum), free(cnt), free(e);
        return CP_ENOMEM;
    }
    /* scipy.ndimage.mean per component: double sums in raster order */
    int rc = flows_core(labels, Ly, Lx, variant, threads, NULL, dP, sum, cnt);
    if (rc != CP_OK) {
        free(sum), free(cnt), free(e);
        return rc;
    }
    for (uint32_t l = 1; l <= nlab; l++) {
        double c = (double)cnt[l];
        e[l - 1] = sum[2 * l] / c + sum[2 * l + 1] / c;
    }
    free(sum), free(cnt);
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
