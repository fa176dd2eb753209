/* Euler integration of the flow field (spec 5.1-5.2), both Cellpose variants,
 * bit for bit. Every pixel is independent, so pixels are integrated one at a
 * time through all steps (cache-friendly, parallel, thread-count invariant).
 *
 * Speed-up that keeps exact results: the step is a pure function of the float32
 * state, so once a trajectory revisits an earlier state (bit-identical) it is
 * periodic and the final state follows from the period without stepping on.
 * Most pixels end up cycling around their sink long before niter. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/dynamics.h"
#include "core/internal.h"
#include "dynamics/internal.h"

void cp_dyn_params_default(cp_dyn_params *p, cp_dyn_variant variant)
{
    memset(p, 0, sizeof *p);
    p->variant = variant;
    p->niter = 0;
    p->diameter = 0;
    p->diam_mean = 30;
    p->cellprob_threshold = 0.0f;
    p->flow_threshold = 0.4;
    p->min_size = 15;
    p->max_size_fraction = 0.4;
    p->v3_label_bug = 0;
    p->threads = 0;
}

int cp_dyn_niter(cp_dyn_variant variant, double diameter, double diam_mean)
{
    if (!(diameter > 0))
        return 200;
    double n;
    if (variant == CP_DYN_V3) {
        if (!(diam_mean > 0))
            diam_mean = 30;
        double rescale = diam_mean / diameter;
        n = (1.0 / rescale) * 200.0;
    } else {
        n = 200.0 / (30.0 / diameter);
    }
    if (!(n < 2147483647.0))
        return 2147483647;
    return (int)n;
}

size_t cp_dyn_count_followed(const float *cellprob, size_t npix, float threshold)
{
    size_t n = 0;
    for (size_t i = 0; i < npix; i++)
        n += cellprob[i] > threshold;
    return n;
}

static inline uint32_t fbits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* ---- v3: numba map_coordinates + clamp (spec 5.2b) ----
 * F is interleaved (y, x) per pixel. */
static inline void step_v3(const float *F, int Ly, int Lx, float *py, float *px)
{
    float y = *py, x = *px;
    int y0 = (int)y, x0 = (int)x;
    float a = y - (float)y0, b = x - (float)x0;
    int yf = y0 < 0 ? 0 : (y0 > Ly - 1 ? Ly - 1 : y0);
    int xf = x0 < 0 ? 0 : (x0 > Lx - 1 ? Lx - 1 : x0);
    int yf1 = yf + 1 > Ly - 1 ? Ly - 1 : yf + 1;
    int xf1 = xf + 1 > Lx - 1 ? Lx - 1 : xf + 1;
    double oma = 1.0 - (double)a, omb = 1.0 - (double)b, bd = (double)b;
    const float *f00 = F + 2 * ((size_t)yf * Lx + xf);
    const float *f01 = F + 2 * ((size_t)yf * Lx + xf1);
    const float *f10 = F + 2 * ((size_t)yf1 * Lx + xf);
    const float *f11 = F + 2 * ((size_t)yf1 * Lx + xf1);
    float s[2];
    for (int c = 0; c < 2; c++) {
        double t0 = (double)f00[c] * oma * omb;
        double t1 = (double)f01[c] * oma * bd;
        float p2 = f10[c] * a;
        double t2 = (double)p2 * omb;
        float t3 = (f11[c] * a) * b;
        s[c] = (float)(((t0 + t1) + t2) + (double)t3);
    }
    float ny = y + s[0], nx = x + s[1];
    ny = ny > 0 ? ny : 0; /* numba max(0, v): v unless v < 0 ... */
    nx = nx > 0 ? nx : 0;
    ny = ny < (float)(Ly - 1) ? ny : (float)(Ly - 1);
    nx = nx < (float)(Lx - 1) ? nx : (float)(Lx - 1);
    *py = ny;
    *px = nx;
}

/* ---- v4: torch grid_sample (align_corners=False, zeros padding), AVX2 FMA order ----
 * G is interleaved (fx, fy) per pixel, already scaled to normalised units. */
typedef struct v4ctx {
    const float *G;
    int Ly, Lx;
    float hx, hy; /* Lx/2, Ly/2 */
} v4ctx;

static inline void step_v4(const v4ctx *c, float *pgx, float *pgy)
{
    float gx = *pgx, gy = *pgy;
    float ix = fmaf(gx + 1.0f, c->hx, -0.5f);
    float iy = fmaf(gy + 1.0f, c->hy, -0.5f);
    float fx0 = floorf(ix), fy0 = floorf(iy);
    int x0 = (int)fx0, y0 = (int)fy0;
    float w = ix - fx0, e = 1.0f - w;
    float n = iy - fy0, s = 1.0f - n;
    float wnw = s * e, wne = s * w, wsw = n * e, wse = n * w;
    int Lx = c->Lx, Ly = c->Ly;
    int vx0 = x0 >= 0 && x0 < Lx, vx1 = x0 + 1 >= 0 && x0 + 1 < Lx;
    int vy0 = y0 >= 0 && y0 < Ly, vy1 = y0 + 1 >= 0 && y0 + 1 < Ly;
    float nw[2] = {0, 0}, ne[2] = {0, 0}, sw[2] = {0, 0}, se[2] = {0, 0};
    const float *G = c->G;
    if (vy0 && vx0) memcpy(nw, G + 2 * ((size_t)y0 * Lx + x0), sizeof nw);
    if (vy0 && vx1) memcpy(ne, G + 2 * ((size_t)y0 * Lx + x0 + 1), sizeof ne);
    if (vy1 && vx0) memcpy(sw, G + 2 * ((size_t)(y0 + 1) * Lx + x0), sizeof sw);
    if (vy1 && vx1) memcpy(se, G + 2 * ((size_t)(y0 + 1) * Lx + x0 + 1), sizeof se);
    float v[2];
    for (int k = 0; k < 2; k++) {
        float acc = wnw * nw[k];
        acc = fmaf(wne, ne[k], acc);
        acc = fmaf(wsw, sw[k], acc);
        acc = fmaf(wse, se[k], acc);
        v[k] = acc;
    }
    float nx = gx + v[0], ny = gy + v[1];
    nx = nx < -1.0f ? -1.0f : (nx > 1.0f ? 1.0f : nx);
    ny = ny < -1.0f ? -1.0f : (ny > 1.0f ? 1.0f : ny);
    *pgx = nx;
    *pgy = ny;
}

/* Save the state at steps 1, 2, 4, ..., 32 and then every 32 steps: detects
 * cycles of period <= 32 within about two save intervals of entering them. */
static inline int next_save(int t)
{
    return t < 32 ? 2 * t : t + 32;
}

#define FOLLOW(STEP_CALL, A, B)                                                 \
    do {                                                                        \
        uint32_t sa = fbits(A), sb = fbits(B);                                  \
        int tsave = 0, nsave = 1;                                               \
        for (int t = 1; t <= niter; t++) {                                      \
            STEP_CALL;                                                          \
            uint32_t ua = fbits(A), ub = fbits(B);                              \
            if (ua == sa && ub == sb) {                                         \
                int rem = (niter - t) % (t - tsave);                            \
                for (int r = 0; r < rem; r++)                                   \
                    STEP_CALL;                                                  \
                break;                                                          \
            }                                                                   \
            if (t == nsave) {                                                   \
                sa = ua;                                                        \
                sb = ub;                                                        \
                tsave = t;                                                      \
                nsave = next_save(t);                                           \
            }                                                                   \
        }                                                                       \
    } while (0)

int cp_dyn_euler(const float *dP, const float *cellprob, int Ly, int Lx, float threshold,
                 cp_dyn_variant variant, int niter, int threads, float *p)
{
    if (Ly <= 0 || Lx <= 0)
        return cp_error(CP_EINVAL, "dynamics: bad image size %dx%d", Lx, Ly);
    if (variant != CP_DYN_V3 && variant != CP_DYN_V4)
        return cp_error(CP_EINVAL, "dynamics: unknown variant %d", (int)variant);
    if (variant == CP_DYN_V4 && (Ly < 2 || Lx < 2))
        return cp_error(CP_EINVAL, "dynamics: v4 needs an image at least 2x2, got %dx%d", Lx, Ly);
    if (niter < 0)
        return cp_error(CP_EINVAL, "dynamics: negative niter %d", niter);
    size_t npix = (size_t)Ly * Lx;
    size_t n = cp_dyn_count_followed(cellprob, npix, threshold);
    if (n == 0)
        return CP_OK;
    float *F = cp_malloc_array(npix, 2 * sizeof(float), "dynamics flow field");
    uint32_t *idx = cp_malloc_array(n, sizeof(uint32_t), "dynamics followed pixels");
    if (!F || !idx) {
        free(F);
        free(idx);
        return CP_ENOMEM;
    }
    /* F = dP * [cellprob > thr] / 5 in float32, as numpy does it. */
    float sy = 1.0f, sx = 1.0f;
    if (variant == CP_DYN_V4) {
        sx = (float)(2.0 / (double)(Lx - 1));
        sy = (float)(2.0 / (double)(Ly - 1));
    }
    const float *dY = dP, *dX = dP + npix;
    size_t k = 0;
    for (size_t i = 0; i < npix; i++) {
        float m = cellprob[i] > threshold ? 1.0f : 0.0f;
        float fy = (dY[i] * m) / 5.0f, fx = (dX[i] * m) / 5.0f;
        if (variant == CP_DYN_V3) {
            F[2 * i] = fy;
            F[2 * i + 1] = fx;
        } else {
            F[2 * i] = fx * sx;
            F[2 * i + 1] = fy * sy;
        }
        if (m != 0.0f)
            idx[k++] = (uint32_t)i;
    }
    float *py = p, *px = p + n;
    int nt = dyn_threads(threads);
    if (variant == CP_DYN_V3) {
#pragma omp parallel for num_threads(nt) schedule(dynamic, 512)
        for (size_t j = 0; j < n; j++) {
            float y = (float)(idx[j] / (uint32_t)Lx), x = (float)(idx[j] % (uint32_t)Lx);
            FOLLOW(step_v3(F, Ly, Lx, &y, &x), y, x);
            py[j] = y;
            px[j] = x;
        }
    } else {
        v4ctx c = {F, Ly, Lx, (float)Lx / 2.0f, (float)Ly / 2.0f};
        float Wn = (float)(Lx - 1), Hn = (float)(Ly - 1);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 512)
        for (size_t j = 0; j < n; j++) {
            float gy = (float)(idx[j] / (uint32_t)Lx), gx = (float)(idx[j] % (uint32_t)Lx);
            gx = (gx / Wn) * 2.0f - 1.0f;
            gy = (gy / Hn) * 2.0f - 1.0f;
            FOLLOW(step_v4(&c, &gx, &gy), gx, gy);
            px[j] = ((gx + 1.0f) * 0.5f) * Wn;
            py[j] = ((gy + 1.0f) * 0.5f) * Hn;
        }
    }
    free(F);
    free(idx);
    return CP_OK;
}
