/* Euler integration in 3D (golden/3d README, "The 3D pipeline" step 7), bit
 * for bit: trilinear steps as torch 1.13's scalar 3D grid sampler computes
 * them (zeros padding, align_corners=False; each float32 operation in its
 * order, no fused multiply-adds), used by v3 (interp=True) and v4 alike, and
 * v3's nearest-voxel steps3D. Voxels are independent: each is followed
 * through all its steps, in parallel, with the cycle shortcut of the 2D steps. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/dynamics.h"
#include "core/internal.h"
#include "dynamics/internal.h"

/* The field the steps read, F = dP * [cellprob > thr] / 5 in float32 as numpy
 * computes it, 3 floats a voxel. Trilinear: (fx, fy, fz) scaled to grid_sample
 * units (x 2/(L-1), in float32 as torch) with a zero border of one voxel (the
 * zero padding), so corner reads need no bounds tests. Nearest: (fz, fy, fx)
 * unpadded (positions stay inside). */
typedef struct field3 {
    float *F;
    int Lz, Ly, Lx, pad;
    size_t rs, ps; /* floats a padded row, a padded plane */
} field3;

static inline void flow3_at(const float *dP, const float *cellprob, size_t nvox, size_t i,
                            float threshold, int interp, const float sc[3], float out[3])
{
    float m = cellprob[i] > threshold ? 1.0f : 0.0f;
    float f[3]; /* z, y, x */
    for (int k = 0; k < 3; k++) {
        f[k] = (dP[k * nvox + i] * m) / 5.0f;
        if (interp)
            f[k] *= sc[k];
        if (!isfinite(f[k])) /* a broken network: states stay finite */
            f[k] = 0.0f;
    }
    for (int k = 0; k < 3; k++)
        out[k] = f[interp ? 2 - k : k];
}

/* Builds the field and the C-order list of followed voxels, row by row in
 * parallel (count, then fill at each row's prefix offset). */
static int field3_build(const float *dP, const float *cellprob, int Lz, int Ly, int Lx,
                        float threshold, int interp, int nt, field3 *g, size_t **pidx, size_t *pn)
{
    size_t nvox = (size_t)Lz * Ly * Lx, nrows = (size_t)Lz * Ly;
    int pad = interp ? 1 : 0;
    size_t PZ = (size_t)Lz + 2 * pad, PY = (size_t)Ly + 2 * pad, PX = (size_t)Lx + 2 * pad;
    g->Lz = Lz, g->Ly = Ly, g->Lx = Lx, g->pad = pad;
    g->rs = 3 * PX;
    g->ps = g->rs * PY;
    size_t *rowoff = cp_malloc_array(nrows + 1, sizeof *rowoff, "dynamics row offsets");
    g->F = pad ? cp_calloc(PZ * PY, g->rs * sizeof(float), "dynamics flow field")
               : cp_malloc_array(PZ * PY, g->rs * sizeof(float), "dynamics flow field");
    *pidx = NULL;
    if (!rowoff || !g->F)
        goto oom;
    dyn_count_followed(cellprob, nvox, threshold, nrows, nt, rowoff);
    *pn = rowoff[nrows];
    *pidx = cp_malloc_array(*pn ? *pn : 1, sizeof **pidx, "dynamics followed voxels");
    if (!*pidx)
        goto oom;
    /* im[:, k] *= 2 / (L - 1): the double factor rounded to float32 */
    float sc[3] = {1.0f, 1.0f, 1.0f};
    if (interp) {
        sc[0] = (float)(2.0 / (double)(Lz - 1));
        sc[1] = (float)(2.0 / (double)(Ly - 1));
        sc[2] = (float)(2.0 / (double)(Lx - 1));
    }
    size_t *idx = *pidx;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t r = 0; r < nrows; r++) {
        size_t z = r / (size_t)Ly, y = r % (size_t)Ly, k = rowoff[r];
        float *row = g->F + (z + pad) * g->ps + (y + pad) * g->rs + 3 * pad;
        for (int x = 0; x < Lx; x++) {
            size_t i = r * Lx + x;
            flow3_at(dP, cellprob, nvox, i, threshold, interp, sc, row + 3 * x);
            if (cellprob[i] > threshold)
                idx[k++] = i;
        }
    }
    free(rowoff);
    return CP_OK;
oom:
    free(rowoff);
    free(g->F);
    free(*pidx);
    g->F = NULL;
    *pidx = NULL;
    return CP_ENOMEM;
}

static inline int clampi(int v, int lo, int hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

/* grid_sampler_compute_source_index (zeros padding, align_corners=False):
 * the voxel coordinate a normalised position g is read at. */
static inline float unnormalize(float g, int L)
{
    return ((g + 1.0f) * (float)L - 1.0f) / 2.0f;
}

/* One grid_sample step of s = (gx, gy, gz), clamped to [-1, 1]. */
static inline void step_tri(const field3 *g, float s[3])
{
    float ix = unnormalize(s[0], g->Lx), iy = unnormalize(s[1], g->Ly),
          iz = unnormalize(s[2], g->Lz);
    /* states stay in [-1, 1], so the lower corners are in [-1, L-1]; the
     * clamps only guard that */
    int x0 = clampi((int)floorf(ix), -1, g->Lx - 1), y0 = clampi((int)floorf(iy), -1, g->Ly - 1),
        z0 = clampi((int)floorf(iz), -1, g->Lz - 1);
    /* ATen subtracts the integer corners (converted to float) from ix */
    float wx1 = (float)(x0 + 1) - ix, wx0 = ix - (float)x0;
    float wy1 = (float)(y0 + 1) - iy, wy0 = iy - (float)y0;
    float wz1 = (float)(z0 + 1) - iz, wz0 = iz - (float)z0;
    float w[8] = {wx1 * wy1 * wz1, wx0 * wy1 * wz1, wx1 * wy0 * wz1, wx0 * wy0 * wz1,
                  wx1 * wy1 * wz0, wx0 * wy1 * wz0, wx1 * wy0 * wz0, wx0 * wy0 * wz0};
    const float *c = g->F + (size_t)(z0 + 1) * g->ps + (size_t)(y0 + 1) * g->rs + 3 * (size_t)(x0 + 1);
    /* corners tnw, tne, tsw, tse, bnw, bne, bsw, bse (z, then y, then x) */
    const float *q0 = c, *q2 = c + g->rs, *q4 = c + g->ps, *q6 = q4 + g->rs;
    for (int k = 0; k < 3; k++) {
        float acc = 0.0f;
        acc += q0[k] * w[0];
        acc += q0[k + 3] * w[1];
        acc += q2[k] * w[2];
        acc += q2[k + 3] * w[3];
        acc += q4[k] * w[4];
        acc += q4[k + 3] * w[5];
        acc += q6[k] * w[6];
        acc += q6[k + 3] * w[7];
        float v = s[k] + acc;
        s[k] = v < -1.0f ? -1.0f : (v > 1.0f ? 1.0f : v);
    }
}

/* One steps3D step of s = (z, y, x): the flow at the truncated position
 * added in float32, then clamped to [0, L-1] as numba's min/max do. */
static inline void step_nearest(const field3 *g, float s[3])
{
    const float *f = g->F + (size_t)(int)s[0] * g->ps + (size_t)(int)s[1] * g->rs +
                     3 * (size_t)(int)s[2];
    const int L[3] = {g->Lz, g->Ly, g->Lx};
    for (int k = 0; k < 3; k++) {
        float v = s[k] + f[k];
        v = v > 0 ? v : 0;
        s[k] = v < (float)(L[k] - 1) ? v : (float)(L[k] - 1);
    }
}

int cp_dyn_euler3d(const float *dP, const float *cellprob, int Lz, int Ly, int Lx, float threshold,
                   int interp, int niter, int threads, float *p)
{
    size_t nvox;
    int rc = dyn_dims3(Lz, Ly, Lx, "euler3d", &nvox);
    if (rc != CP_OK)
        return rc;
    if (!dP || !cellprob || !p)
        return cp_error(CP_EINVAL, "euler3d: NULL argument");
    if (interp && (Lz < 2 || Ly < 2 || Lx < 2))
        return cp_error(CP_EINVAL, "euler3d: trilinear steps need a volume at least 2x2x2, got %dx%dx%d",
                        Lx, Ly, Lz);
    if (niter < 0)
        return cp_error(CP_EINVAL, "euler3d: negative niter %d", niter);
    int nt = dyn_threads(threads);
    field3 g;
    size_t *idx, n;
    if (field3_build(dP, cellprob, Lz, Ly, Lx, threshold, interp ? 1 : 0, nt, &g, &idx, &n) !=
        CP_OK)
        return CP_ENOMEM;
    float *pz = p, *py = p + n, *px = p + 2 * n;
    const float Zn = (float)(Lz - 1), Yn = (float)(Ly - 1), Xn = (float)(Lx - 1);
    size_t plane = (size_t)Ly * Lx;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 256)
    for (size_t j = 0; j < n; j++) {
        size_t i = idx[j];
        float z = (float)(i / plane), y = (float)(i % plane / (size_t)Lx),
              x = (float)(i % (size_t)Lx);
        if (interp) {
            /* pt /= (L - 1); pt *= 2; pt -= 1 and back: (pt + 1) * 0.5 * (L - 1) */
            float s[3] = {(x / Xn) * 2.0f - 1.0f, (y / Yn) * 2.0f - 1.0f, (z / Zn) * 2.0f - 1.0f};
            DYN_FOLLOW(step_tri(&g, s), s, 3, niter);
            px[j] = ((s[0] + 1.0f) * 0.5f) * Xn;
            py[j] = ((s[1] + 1.0f) * 0.5f) * Yn;
            pz[j] = ((s[2] + 1.0f) * 0.5f) * Zn;
        } else {
            float s[3] = {z, y, x};
            DYN_FOLLOW(step_nearest(&g, s), s, 3, niter);
            pz[j] = s[0];
            py[j] = s[1];
            px[j] = s[2];
        }
    }
    free(g.F);
    free(idx);
    return CP_OK;
}
