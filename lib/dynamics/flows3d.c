/* Unit flows from 3D labels (golden/3d README, "v3 versus v4 in 3D").
 * V3, dynamics.masks_to_flows: the 2D flows (masks_to_flows_cpu) of every Z
 * plane, Y slice and X slice, added into a float32 volume in that order.
 * V4, masks_to_flows_gpu_3d: heat diffusion on the volume (self + 6 face
 * neighbours of the same label, mean of 7) from each label's centre for
 * 6 * max(sum of bbox sizes + 3) steps, then the raw heat gradient
 * normalised. As in 2D (flows.c), a voxel only averages heat of its own
 * label, so each label diffuses alone in its box, in parallel. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/dynamics.h"
#include "core/internal.h"
#include "dynamics/internal.h"

/* ---- v3: sum of 2D flows ---- */

/* Plane k of orientation o (0: Z plane Ly x Lx, 1: Y slice Lz x Lx, 2: X
 * slice Lz x Ly) copied into out; its rows and columns in *H, *W. */
static void get_plane(const uint32_t *lab, int Lz, int Ly, int Lx, int o, int k, uint32_t *out,
                      int *H, int *W)
{
    size_t plane = (size_t)Ly * Lx;
    if (o == 0) {
        *H = Ly, *W = Lx;
        memcpy(out, lab + (size_t)k * plane, plane * sizeof *out);
    } else if (o == 1) {
        *H = Lz, *W = Lx;
        for (int z = 0; z < Lz; z++)
            memcpy(out + (size_t)z * Lx, lab + (size_t)z * plane + (size_t)k * Lx,
                   (size_t)Lx * sizeof *out);
    } else {
        *H = Lz, *W = Ly;
        for (int z = 0; z < Lz; z++)
            for (int y = 0; y < Ly; y++)
                out[(size_t)z * Ly + y] = lab[(size_t)z * plane + (size_t)y * Lx + k];
    }
}

/* Volume index of pixel (r, c) of plane k of orientation o. */
static inline size_t plane_vox(int Ly, int Lx, int o, int k, int r, int c)
{
    if (o == 0)
        return ((size_t)k * Ly + r) * Lx + c;
    if (o == 1)
        return ((size_t)r * Ly + k) * Lx + c;
    return ((size_t)r * Ly + c) * Lx + k;
}

static int flows3d_v3(const uint32_t *labels, int Lz, int Ly, int Lx, int threads, double *mu)
{
    size_t nvox = (size_t)Lz * Ly * Lx;
    float *acc = cp_calloc(3 * nvox, sizeof *acc, "3D flows");
    if (!acc)
        return CP_ENOMEM;
    int maxd = Lz > Ly ? (Lz > Lx ? Lz : Lx) : (Ly > Lx ? Ly : Lx);
    size_t maxp = (size_t)maxd * maxd; /* >= any plane */
    /* the two volume components each orientation's (row, column) flows add to */
    const int comp[3][2] = {{1, 2}, {0, 2}, {0, 1}};
    const int count[3] = {Lz, Ly, Lx};
    int rc = CP_OK;
    for (int o = 0; o < 3 && rc == CP_OK; o++) {
#pragma omp parallel num_threads(dyn_threads(threads))
        {
            uint32_t *pl = cp_malloc_array(maxp, sizeof *pl, "3D flow plane");
            double *m = cp_malloc_array(maxp, 2 * sizeof *m, "3D flow plane");
            if (!pl || !m) {
#pragma omp atomic write
                rc = CP_ENOMEM;
            }
#pragma omp for schedule(dynamic, 1)
            for (int k = 0; k < count[o]; k++) {
                int H, W, r2;
                if (!pl || !m)
                    continue;
                get_plane(labels, Lz, Ly, Lx, o, k, pl, &H, &W);
                if ((r2 = cp_masks_to_flows(pl, H, W, CP_DYN_V3, 1, m)) != CP_OK) {
#pragma omp atomic write
                    rc = r2;
                    continue;
                }
                size_t n = (size_t)H * W;
                for (int r = 0; r < H; r++)
                    for (int c = 0; c < W; c++) {
                        size_t v = plane_vox(Ly, Lx, o, k, r, c), q = (size_t)r * W + c;
                        for (int j = 0; j < 2; j++) {
                            float *a = acc + comp[o][j] * nvox + v;
                            /* numpy: float32 += float64 is computed in float64 */
                            *a = (float)((double)*a + m[j * n + q]);
                        }
                    }
            }
            free(pl);
            free(m);
        }
    }
    if (rc == CP_OK)
        for (size_t i = 0; i < 3 * nvox; i++)
            mu[i] = acc[i];
    free(acc);
    return rc;
}

/* ---- v4: 3D diffusion ---- */

/* Centre of label l in box b, in padded box coordinates (bbox origin - 1):
 * the voxel nearest the mean, first in C order on ties, distances summed
 * z, x, y as Cellpose does. */
static void centre3(const uint32_t *labels, int Ly, int Lx, const dyn_bbox *b, uint32_t l, int c[3])
{
    long long s[3] = {0, 0, 0};
    size_t n = 0;
    for (int z = b->p0; z < b->p1; z++)
        for (int y = b->r0; y < b->r1; y++)
            for (int x = b->c0; x < b->c1; x++)
                if (labels[((size_t)z * Ly + y) * Lx + x] == l) {
                    s[0] += z - b->p0 + 1, s[1] += y - b->r0 + 1, s[2] += x - b->c0 + 1;
                    n++;
                }
    double m[3];
    for (int k = 0; k < 3; k++)
        m[k] = (double)s[k] / (double)n;
    double best = INFINITY;
    for (int z = b->p0; z < b->p1; z++)
        for (int y = b->r0; y < b->r1; y++)
            for (int x = b->c0; x < b->c1; x++)
                if (labels[((size_t)z * Ly + y) * Lx + x] == l) {
                    double dz = (double)(z - b->p0 + 1) - m[0], dy = (double)(y - b->r0 + 1) - m[1],
                           dx = (double)(x - b->c0 + 1) - m[2];
                    double d = dz * dz + dx * dx + dy * dy;
                    if (d < best) {
                        best = d;
                        c[0] = z - b->p0 + 1, c[1] = y - b->r0 + 1, c[2] = x - b->c0 + 1;
                    }
                }
}

/* Diffuse label l alone in its padded box for niter steps; its heat goes to
 * H (volume). vox/T/T2 are scratch of the box size. */
static void diffuse3(const uint32_t *labels, int Ly, int Lx, const dyn_bbox *b, uint32_t l,
                     long niter, size_t *vox, double *T, double *T2, double *H)
{
    int d = b->p1 - b->p0 + 2, h = b->r1 - b->r0 + 2, w = b->c1 - b->c0 + 2;
    size_t rs = (size_t)w, ps = (size_t)h * w, nb = (size_t)d * ps, nv = 0;
    memset(T, 0, nb * sizeof *T);
    memset(T2, 0, nb * sizeof *T2);
    for (int z = 1; z < d - 1; z++)
        for (int y = 1; y < h - 1; y++)
            for (int x = 1; x < w - 1; x++)
                if (labels[((size_t)(b->p0 + z - 1) * Ly + (b->r0 + y - 1)) * Lx + b->c0 + x - 1] ==
                    l)
                    vox[nv++] = (size_t)z * ps + (size_t)y * rs + x;
    int c[3] = {1, 1, 1};
    centre3(labels, Ly, Lx, b, l, c);
    size_t ci = (size_t)c[0] * ps + (size_t)c[1] * rs + c[2];
    for (long t = 0; t < niter; t++) {
        T[ci] += 1.0;
        for (size_t k = 0; k < nv; k++) {
            size_t v = vox[k];
            /* torch sums the 7 neighbours in this order, then divides */
            double s = T[v] + T[v + ps] + T[v - ps] + T[v + rs] + T[v - rs] + T[v + 1] + T[v - 1];
            T2[v] = s / 7.0;
        }
        double *tmp = T;
        T = T2;
        T2 = tmp;
    }
    for (size_t k = 0; k < nv; k++) {
        size_t v = vox[k];
        int z = (int)(v / ps), y = (int)(v % ps / rs), x = (int)(v % rs);
        H[((size_t)(b->p0 + z - 1) * Ly + (b->r0 + y - 1)) * Lx + b->c0 + x - 1] = T[v];
    }
}

static int flows3d_v4(const uint32_t *labels, int Lz, int Ly, int Lx, int threads, double *mu)
{
    size_t nvox = (size_t)Lz * Ly * Lx;
    int nt = dyn_threads(threads);
    uint32_t nlab = dyn_max_label(labels, nvox, nt);
    if (nlab == 0)
        return CP_OK;
    dyn_census cs;
    if (dyn_census_make(&cs, labels, nvox, Ly, Lx, nlab, nt) != CP_OK)
        return CP_ENOMEM;
    const dyn_bbox *bb = cs.box;
    size_t maxbox = 0;
    long ext = 0;
    for (uint32_t l = 1; l <= nlab; l++) {
        const dyn_bbox *b = bb + l;
        if (!b->npix)
            continue;
        size_t box = (size_t)(b->p1 - b->p0 + 2) * (b->r1 - b->r0 + 2) * (b->c1 - b->c0 + 2);
        maxbox = box > maxbox ? box : maxbox;
        long e = (long)(b->p1 - b->p0 + 1) + (b->r1 - b->r0 + 1) + (b->c1 - b->c0 + 1);
        ext = e > ext ? e : ext;
    }
    long niter = 6 * ext;
    double *H = cp_calloc(nvox, sizeof *H, "heat volume");
    int fail = !H;
#pragma omp parallel num_threads(nt)
    {
        size_t *vox = malloc(maxbox * sizeof *vox);
        double *T = malloc(2 * maxbox * sizeof *T);
        if (!vox || !T) {
#pragma omp atomic write
            fail = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (uint32_t l = 1; l <= nlab; l++)
            if (bb[l].npix && vox && T && H)
                diffuse3(labels, Ly, Lx, bb + l, l, niter, vox, T, T + maxbox, H);
        free(vox);
        free(T);
    }
    if (fail) {
        free(H);
        dyn_census_free(&cs);
        return cp_error(CP_ENOMEM, "out of memory: diffusion boxes");
    }
    size_t plane = (size_t)Ly * Lx;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t i = 0; i < nvox; i++) {
        if (!labels[i])
            continue;
        int z = (int)(i / plane), y = (int)(i % plane / (size_t)Lx), x = (int)(i % (size_t)Lx);
        double g[3];
        g[0] = (z + 1 < Lz ? H[i + plane] : 0.0) - (z > 0 ? H[i - plane] : 0.0);
        g[1] = (y + 1 < Ly ? H[i + Lx] : 0.0) - (y > 0 ? H[i - Lx] : 0.0);
        g[2] = (x + 1 < Lx ? H[i + 1] : 0.0) - (x > 0 ? H[i - 1] : 0.0);
        double nrm = 1e-60 + sqrt(g[0] * g[0] + g[1] * g[1] + g[2] * g[2]);
        for (int k = 0; k < 3; k++)
            mu[k * nvox + i] = g[k] / nrm;
    }
    free(H);
    dyn_census_free(&cs);
    return CP_OK;
}

int cp_masks_to_flows3d(const uint32_t *labels, int Lz, int Ly, int Lx, cp_dyn_variant variant,
                        int threads, double *mu)
{
    size_t nvox;
    int rc = dyn_dims3(Lz, Ly, Lx, "masks_to_flows3d", &nvox);
    if (rc != CP_OK)
        return rc;
    if (!labels || !mu)
        return cp_error(CP_EINVAL, "masks_to_flows3d: NULL argument");
    if (variant != CP_DYN_V3 && variant != CP_DYN_V4)
        return cp_error(CP_EINVAL, "masks_to_flows3d: unknown variant %d", (int)variant);
    memset(mu, 0, 3 * nvox * sizeof *mu);
    return variant == CP_DYN_V3 ? flows3d_v3(labels, Lz, Ly, Lx, threads, mu)
                                : flows3d_v4(labels, Lz, Ly, Lx, threads, mu);
}
