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
 * cycles of period <= 32 within about two save intervals of entering them.
 * Fixed points and 2-cycles (the usual end of a trajectory) are caught at
 * once by comparing with the two previous states. */
static inline int next_save(int t)
{
    return t < 32 ? 2 * t : t + 32;
}

#define FOLLOW(STEP_CALL, A, B)                                                 \
    do {                                                                        \
        uint32_t sa = fbits(A), sb = fbits(B);                                  \
        uint32_t a1 = sa, b1 = sb, a2 = 0, b2 = 0;                              \
        int tsave = 0, nsave = 1;                                               \
        for (int t = 1; t <= niter; t++) {                                      \
            STEP_CALL;                                                          \
            uint32_t ua = fbits(A), ub = fbits(B);                              \
            int period = 0;                                                     \
            if (ua == a1 && ub == b1)                                           \
                period = 1;                                                     \
            else if (t > 1 && ua == a2 && ub == b2)                             \
                period = 2;                                                     \
            else if (ua == sa && ub == sb)                                      \
                period = t - tsave;                                             \
            if (period) {                                                       \
                int rem = (niter - t) % period;                                 \
                for (int r = 0; r < rem; r++)                                   \
                    STEP_CALL;                                                  \
                break;                                                          \
            }                                                                   \
            a2 = a1;                                                            \
            b2 = b1;                                                            \
            a1 = ua;                                                            \
            b1 = ub;                                                            \
            if (t == nsave) {                                                   \
                sa = ua;                                                        \
                sb = ub;                                                        \
                tsave = t;                                                      \
                nsave = next_save(t);                                           \
            }                                                                   \
        }                                                                       \
    } while (0)

/* ---- AVX2 lanes: the same float/double operations on 4 (v3) or 8 (v4)
 * pixels at once. Each lane follows its own pixel; the period bookkeeping is
 * per lane and scalar, and a lane that finishes takes the next pixel. Lane
 * results are bit-identical to the scalar steps (same IEEE operations, no
 * contraction: -ffp-contract=off, explicit FMAs only where torch has them). */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define DYN_HAVE_AVX2 1

typedef struct lane {
    int active;
    size_t j;                /* output index */
    int t, tsave, nsave;
    uint32_t sa, sb, a1, b1, a2, b2;
} lane;

static inline void lane_start(lane *L, size_t j, float A, float B)
{
    L->active = 1;
    L->j = j;
    L->t = 0;
    L->tsave = 0;
    L->nsave = 1;
    L->sa = L->a1 = fbits(A);
    L->sb = L->b1 = fbits(B);
    L->a2 = L->b2 = 0;
}

/* Lanes need niter > 0 (the caller uses the scalar path otherwise). */

/* After one step of this lane to state (A, B): returns the remaining steps to
 * take (>= 0) once the lane is finished, or -1 to keep stepping. */
static inline int lane_after_step(lane *L, float A, float B, int niter)
{
    int t = ++L->t;
    uint32_t ua = fbits(A), ub = fbits(B);
    int period = 0;
    if (ua == L->a1 && ub == L->b1)
        period = 1;
    else if (t > 1 && ua == L->a2 && ub == L->b2)
        period = 2;
    else if (ua == L->sa && ub == L->sb)
        period = t - L->tsave;
    if (period)
        return (niter - t) % period;
    if (t >= niter)
        return 0;
    L->a2 = L->a1;
    L->b2 = L->b1;
    L->a1 = ua;
    L->b1 = ub;
    if (t == L->nsave) {
        L->sa = ua;
        L->sb = ub;
        L->tsave = t;
        L->nsave = next_save(t);
    }
    return -1;
}

__attribute__((target("avx2,fma"))) static void follow_v3_avx2(
    const float *F, int Ly, int Lx, const uint32_t *idx, size_t j0, size_t j1, int niter,
    float *py, float *px)
{
    lane L[4];
    float Y[4], X[4];
    size_t next = j0;
    int nact = 0;
    for (int k = 0; k < 4; k++) {
        L[k].active = 0;
        Y[k] = X[k] = 0.0f;
        if (next < j1) {
            Y[k] = (float)(idx[next] / (uint32_t)Lx);
            X[k] = (float)(idx[next] % (uint32_t)Lx);
            lane_start(&L[k], next++, Y[k], X[k]);
            nact++;
        }
    }
    const __m128i zero = _mm_setzero_si128(), one = _mm_set1_epi32(1);
    const __m128i lym1 = _mm_set1_epi32(Ly - 1), lxm1 = _mm_set1_epi32(Lx - 1);
    const __m128i vLx = _mm_set1_epi32(Lx);
    const __m128 fzero = _mm_setzero_ps();
    const __m128 fLy1 = _mm_set1_ps((float)(Ly - 1)), fLx1 = _mm_set1_ps((float)(Lx - 1));
    const __m256d done = _mm256_set1_pd(1.0);
    while (nact > 0) {
        __m128 y = _mm_loadu_ps(Y), x = _mm_loadu_ps(X);
        __m128i y0 = _mm_cvttps_epi32(y), x0 = _mm_cvttps_epi32(x);
        __m128 a = _mm_sub_ps(y, _mm_cvtepi32_ps(y0)), b = _mm_sub_ps(x, _mm_cvtepi32_ps(x0));
        __m128i yf = _mm_min_epi32(_mm_max_epi32(y0, zero), lym1);
        __m128i xf = _mm_min_epi32(_mm_max_epi32(x0, zero), lxm1);
        __m128i yf1 = _mm_min_epi32(_mm_add_epi32(yf, one), lym1);
        __m128i xf1 = _mm_min_epi32(_mm_add_epi32(xf, one), lxm1);
        __m128i r0 = _mm_mullo_epi32(yf, vLx), r1 = _mm_mullo_epi32(yf1, vLx);
        __m128i i00 = _mm_slli_epi32(_mm_add_epi32(r0, xf), 1);
        __m128i i01 = _mm_slli_epi32(_mm_add_epi32(r0, xf1), 1);
        __m128i i10 = _mm_slli_epi32(_mm_add_epi32(r1, xf), 1);
        __m128i i11 = _mm_slli_epi32(_mm_add_epi32(r1, xf1), 1);
        __m256d ad = _mm256_cvtps_pd(a), bd = _mm256_cvtps_pd(b);
        __m256d oma = _mm256_sub_pd(done, ad), omb = _mm256_sub_pd(done, bd);
        __m128 s[2];
        for (int c = 0; c < 2; c++) {
            const float *Fc = F + c;
            __m128 f00 = _mm_i32gather_ps(Fc, i00, 4), f01 = _mm_i32gather_ps(Fc, i01, 4);
            __m128 f10 = _mm_i32gather_ps(Fc, i10, 4), f11 = _mm_i32gather_ps(Fc, i11, 4);
            __m256d t0 = _mm256_mul_pd(_mm256_mul_pd(_mm256_cvtps_pd(f00), oma), omb);
            __m256d t1 = _mm256_mul_pd(_mm256_mul_pd(_mm256_cvtps_pd(f01), oma), bd);
            __m256d t2 = _mm256_mul_pd(_mm256_cvtps_pd(_mm_mul_ps(f10, a)), omb);
            __m128 t3 = _mm_mul_ps(_mm_mul_ps(f11, a), b);
            __m256d sum = _mm256_add_pd(_mm256_add_pd(_mm256_add_pd(t0, t1), t2),
                                        _mm256_cvtps_pd(t3));
            s[c] = _mm256_cvtpd_ps(sum);
        }
        __m128 ny = _mm_add_ps(y, s[0]), nx = _mm_add_ps(x, s[1]);
        ny = _mm_and_ps(_mm_cmp_ps(ny, fzero, _CMP_GT_OQ), ny);
        nx = _mm_and_ps(_mm_cmp_ps(nx, fzero, _CMP_GT_OQ), nx);
        ny = _mm_blendv_ps(fLy1, ny, _mm_cmp_ps(ny, fLy1, _CMP_LT_OQ));
        nx = _mm_blendv_ps(fLx1, nx, _mm_cmp_ps(nx, fLx1, _CMP_LT_OQ));
        _mm_storeu_ps(Y, ny);
        _mm_storeu_ps(X, nx);
        for (int k = 0; k < 4; k++) {
            if (!L[k].active)
                continue;
            int rem = lane_after_step(&L[k], Y[k], X[k], niter);
            if (rem < 0)
                continue;
            for (int r = 0; r < rem; r++)
                step_v3(F, Ly, Lx, &Y[k], &X[k]);
            py[L[k].j] = Y[k];
            px[L[k].j] = X[k];
            if (next < j1) {
                Y[k] = (float)(idx[next] / (uint32_t)Lx);
                X[k] = (float)(idx[next] % (uint32_t)Lx);
                lane_start(&L[k], next++, Y[k], X[k]);
            } else {
                L[k].active = 0;
                nact--;
            }
        }
    }
}

__attribute__((target("avx2,fma"))) static void follow_v4_avx2(
    const v4ctx *c, const uint32_t *idx, size_t j0, size_t j1, int niter, float *py,
    float *px)
{
    int Ly = c->Ly, Lx = c->Lx;
    float Wn = (float)(Lx - 1), Hn = (float)(Ly - 1);
    lane L[8];
    float GX[8], GY[8];
    size_t next = j0;
    int nact = 0;
#define V4_INIT(k)                                                                  \
    do {                                                                            \
        float gy_ = (float)(idx[next] / (uint32_t)Lx), gx_ = (float)(idx[next] % (uint32_t)Lx); \
        GX[k] = (gx_ / Wn) * 2.0f - 1.0f;                                           \
        GY[k] = (gy_ / Hn) * 2.0f - 1.0f;                                           \
    } while (0)
    for (int k = 0; k < 8; k++) {
        L[k].active = 0;
        GX[k] = GY[k] = 0.0f;
        if (next < j1) {
            V4_INIT(k);
            lane_start(&L[k], next++, GX[k], GY[k]);
            nact++;
        }
    }
    const __m256 one = _mm256_set1_ps(1.0f), mhalf = _mm256_set1_ps(-0.5f);
    const __m256 hx = _mm256_set1_ps(c->hx), hy = _mm256_set1_ps(c->hy);
    const __m256 mone = _mm256_set1_ps(-1.0f), fz = _mm256_setzero_ps();
    const __m256i ione = _mm256_set1_epi32(1);
    const __m256i vLx = _mm256_set1_epi32(Lx), vLy = _mm256_set1_epi32(Ly);
    const float *G = c->G;
    while (nact > 0) {
        __m256 gx = _mm256_loadu_ps(GX), gy = _mm256_loadu_ps(GY);
        __m256 ix = _mm256_fmadd_ps(_mm256_add_ps(gx, one), hx, mhalf);
        __m256 iy = _mm256_fmadd_ps(_mm256_add_ps(gy, one), hy, mhalf);
        __m256 fx0 = _mm256_floor_ps(ix), fy0 = _mm256_floor_ps(iy);
        __m256i x0 = _mm256_cvttps_epi32(fx0), y0 = _mm256_cvttps_epi32(fy0);
        __m256 w = _mm256_sub_ps(ix, fx0), e = _mm256_sub_ps(one, w);
        __m256 n = _mm256_sub_ps(iy, fy0), s = _mm256_sub_ps(one, n);
        __m256 wnw = _mm256_mul_ps(s, e), wne = _mm256_mul_ps(s, w);
        __m256 wsw = _mm256_mul_ps(n, e), wse = _mm256_mul_ps(n, w);
        __m256i x1 = _mm256_add_epi32(x0, ione), y1 = _mm256_add_epi32(y0, ione);
        /* 0 <= v < L as (v > -1) & (L > v) */
        __m256i mone_i = _mm256_set1_epi32(-1);
        __m256i vx0 = _mm256_and_si256(_mm256_cmpgt_epi32(x0, mone_i), _mm256_cmpgt_epi32(vLx, x0));
        __m256i vx1 = _mm256_and_si256(_mm256_cmpgt_epi32(x1, mone_i), _mm256_cmpgt_epi32(vLx, x1));
        __m256i vy0 = _mm256_and_si256(_mm256_cmpgt_epi32(y0, mone_i), _mm256_cmpgt_epi32(vLy, y0));
        __m256i vy1 = _mm256_and_si256(_mm256_cmpgt_epi32(y1, mone_i), _mm256_cmpgt_epi32(vLy, y1));
        __m256i mnw = _mm256_and_si256(vy0, vx0), mne = _mm256_and_si256(vy0, vx1);
        __m256i msw = _mm256_and_si256(vy1, vx0), mse = _mm256_and_si256(vy1, vx1);
        __m256i r0 = _mm256_mullo_epi32(y0, vLx), r1 = _mm256_mullo_epi32(y1, vLx);
        __m256i inw = _mm256_slli_epi32(_mm256_add_epi32(r0, x0), 1);
        __m256i ine = _mm256_slli_epi32(_mm256_add_epi32(r0, x1), 1);
        __m256i isw = _mm256_slli_epi32(_mm256_add_epi32(r1, x0), 1);
        __m256i ise = _mm256_slli_epi32(_mm256_add_epi32(r1, x1), 1);
        inw = _mm256_and_si256(inw, mnw); /* keep masked-off indices harmless */
        ine = _mm256_and_si256(ine, mne);
        isw = _mm256_and_si256(isw, msw);
        ise = _mm256_and_si256(ise, mse);
        __m256 v[2];
        for (int k = 0; k < 2; k++) {
            const float *Gk = G + k;
            __m256 vnw = _mm256_mask_i32gather_ps(fz, Gk, inw, _mm256_castsi256_ps(mnw), 4);
            __m256 vne = _mm256_mask_i32gather_ps(fz, Gk, ine, _mm256_castsi256_ps(mne), 4);
            __m256 vsw = _mm256_mask_i32gather_ps(fz, Gk, isw, _mm256_castsi256_ps(msw), 4);
            __m256 vse = _mm256_mask_i32gather_ps(fz, Gk, ise, _mm256_castsi256_ps(mse), 4);
            __m256 acc = _mm256_mul_ps(wnw, vnw);
            acc = _mm256_fmadd_ps(wne, vne, acc);
            acc = _mm256_fmadd_ps(wsw, vsw, acc);
            acc = _mm256_fmadd_ps(wse, vse, acc);
            v[k] = acc;
        }
        __m256 nx = _mm256_add_ps(gx, v[0]), ny = _mm256_add_ps(gy, v[1]);
        nx = _mm256_blendv_ps(nx, mone, _mm256_cmp_ps(nx, mone, _CMP_LT_OQ));
        nx = _mm256_blendv_ps(nx, one, _mm256_cmp_ps(nx, one, _CMP_GT_OQ));
        ny = _mm256_blendv_ps(ny, mone, _mm256_cmp_ps(ny, mone, _CMP_LT_OQ));
        ny = _mm256_blendv_ps(ny, one, _mm256_cmp_ps(ny, one, _CMP_GT_OQ));
        _mm256_storeu_ps(GX, nx);
        _mm256_storeu_ps(GY, ny);
        for (int k = 0; k < 8; k++) {
            if (!L[k].active)
                continue;
            int rem = lane_after_step(&L[k], GX[k], GY[k], niter);
            if (rem < 0)
                continue;
            for (int r = 0; r < rem; r++)
                step_v4(c, &GX[k], &GY[k]);
            px[L[k].j] = ((GX[k] + 1.0f) * 0.5f) * Wn;
            py[L[k].j] = ((GY[k] + 1.0f) * 0.5f) * Hn;
            if (next < j1) {
                V4_INIT(k);
                lane_start(&L[k], next++, GX[k], GY[k]);
            } else {
                L[k].active = 0;
                nact--;
            }
        }
    }
#undef V4_INIT
}
#endif

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
#ifdef DYN_HAVE_AVX2
    /* gathers take int32 indices: 2*npix must fit */
    if (niter > 0 && !getenv("CP_DYN_SCALAR") && npix < (size_t)1 << 29 && __builtin_cpu_supports("avx2") &&
        __builtin_cpu_supports("fma")) {
        const size_t chunk = 2048;
        size_t nchunk = (n + chunk - 1) / chunk;
        v4ctx c = {F, Ly, Lx, (float)Lx / 2.0f, (float)Ly / 2.0f};
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
        for (size_t ch = 0; ch < nchunk; ch++) {
            size_t j0 = ch * chunk, j1 = j0 + chunk < n ? j0 + chunk : n;
            if (variant == CP_DYN_V3)
                follow_v3_avx2(F, Ly, Lx, idx, j0, j1, niter, py, px);
            else
                follow_v4_avx2(&c, idx, j0, j1, niter, py, px);
        }
        free(F);
        free(idx);
        return CP_OK;
    }
#endif
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
