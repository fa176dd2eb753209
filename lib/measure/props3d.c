/* Per-cell properties of label volumes (scikit-image 0.19 regionprops in 3D).
 *
 * As in props.c: one pass finds the bounding boxes, then each cell is measured
 * on its own zero-padded crop (cells in parallel, each in raster order, so the
 * results do not depend on the thread count). Moments, the convex hull, the
 * Euler number and the marching-cubes configurations are exact integer
 * computations; only the final values are rounded. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/measure.h"
#include "core/internal.h"
#include "measure/mc_table.h"
#include "measure/measure_internal.h"

typedef __int128 i128;

/* Crop sizes below this keep every hull quantity in int64: doubled coordinates
 * c <= 2^19, normals <= 2 (c + 1)^2, n.p <= 6 (c + 1)^3 < 2^63. */
#define HULL_MAX_SIDE (1 << 18)

/* A hull facet: outward normal n and offset d, a point p is outside when
 * n.p > d. Vertices index the point array; z0, z1 its extent in Z. */
typedef struct facet {
    int v[3];
    int64_t n[3];
    int64_t d;
    int64_t z0, z1;
    int alive;
} facet;

typedef struct scratch3 {
    uint8_t *mask;      /* (d+2)(h+2)(w+2) padded cell mask */
    int *left, *right;  /* per (z, y) row of the crop: first/last x, -1 if empty */
    int64_t *lvl;       /* one level's (Y, X) hull candidates */
    int64_t *h2;        /* its 2D hull */
    int64_t *pts;       /* 3D hull candidates (Z, Y, X), doubled coordinates */
    facet *fc;
    size_t *plane_fc;   /* facets crossing one plane */
    uint64_t *edges;    /* directed edges of the facets one point sees */
    double *acc;
    size_t mask_cap, left_cap, right_cap, lvl_cap, h2_cap, pts_cap, fc_cap, plane_fc_cap, edges_cap, acc_cap;
} scratch3;

static void scratch3_free(scratch3 *s)
{
    free(s->mask);
    free(s->left);
    free(s->right);
    free(s->lvl);
    free(s->h2);
    free(s->pts);
    free(s->fc);
    free(s->plane_fc);
    free(s->edges);
    free(s->acc);
}

/* Tables per marching-cubes window configuration (bit i = corner
 * (i>>2 & 1, i>>1 & 1, i & 1) in (z, y, x)). */
typedef struct cube_tables {
    int euler8[256];        /* 8 x the window's share of the Euler characteristic */
    double area[256];       /* Lewiner triangles' area, unit voxels */
    double area_phys[256];  /* the same with the voxel size */
} cube_tables;

static int bit(int cfg, int z, int y, int x) { return cfg >> (z * 4 + y * 2 + x) & 1; }

/* The closed cubes of the foreground voxels form a cell complex whose Euler
 * characteristic is the 26-connected Euler number. Each lattice vertex owns
 * the 2x2x2 window around it; a k-cell at the vertex is shared by 2^k
 * vertices: 8 chi = sum over windows of 8 [vertex] - 4 edges + 2 faces - cubes. */
static int euler8(int cfg)
{
    if (!cfg)
        return 0;
    int e = 0, f = 0;
    for (int a = 0; a < 3; a++)
        for (int sa = 0; sa < 2; sa++) {
            /* edge along axis a: the 4 voxels with coordinate a = sa */
            int any = 0;
            for (int i = 0; i < 8; i++) {
                int c[3] = {i >> 2 & 1, i >> 1 & 1, i & 1};
                if (c[a] == sa && bit(cfg, c[0], c[1], c[2]))
                    any = 1;
            }
            e += any;
            for (int b = a + 1; b < 3; b++)
                for (int sb = 0; sb < 2; sb++) {
                    /* face spanned by axes a, b: the 2 voxels with a = sa, b = sb */
                    int anyf = 0;
                    for (int i = 0; i < 8; i++) {
                        int c[3] = {i >> 2 & 1, i >> 1 & 1, i & 1};
                        if (c[a] == sa && c[b] == sb && bit(cfg, c[0], c[1], c[2]))
                            anyf = 1;
                    }
                    f += anyf;
                }
        }
    return 8 - 4 * e + 2 * f - __builtin_popcount((unsigned)cfg);
}

static double tri_area(const unsigned char *t, const double *sp)
{
    double p[3][3];
    for (int k = 0; k < 3; k++) {
        p[k][0] = (t[k] / 9) * 0.5 * sp[0];
        p[k][1] = (t[k] / 3 % 3) * 0.5 * sp[1];
        p[k][2] = (t[k] % 3) * 0.5 * sp[2];
    }
    double u[3], v[3];
    for (int i = 0; i < 3; i++) {
        u[i] = p[1][i] - p[0][i];
        v[i] = p[2][i] - p[0][i];
    }
    double cx = u[1] * v[2] - u[2] * v[1], cy = u[2] * v[0] - u[0] * v[2], cz = u[0] * v[1] - u[1] * v[0];
    return 0.5 * sqrt(cx * cx + cy * cy + cz * cz);
}

static void cube_tables_init(cube_tables *t, const double *voxel)
{
    static const double unit[3] = {1, 1, 1};
    for (int c = 0; c < 256; c++) {
        t->euler8[c] = euler8(c);
        t->area[c] = t->area_phys[c] = 0;
        for (int k = 0; k < MC_NTRI[c]; k++) {
            t->area[c] += tri_area(MC_TRI[c] + 3 * k, unit);
            t->area_phys[c] += voxel ? tri_area(MC_TRI[c] + 3 * k, voxel) : NAN;
        }
    }
}

/* ---- eigenvalues ------------------------------------------------------------ */

/* Eigenvalues of a symmetric 3x3 matrix by cyclic Jacobi rotations in long
 * double (accurate also for the small eigenvalues of thin cells). */
static void sym3_eigen(long double a[3][3], long double ev[3])
{
    for (int sweep = 0; sweep < 60; sweep++) {
        long double off = fabsl(a[0][1]) + fabsl(a[0][2]) + fabsl(a[1][2]);
        if (off == 0)
            break;
        for (int p = 0; p < 2; p++)
            for (int q = p + 1; q < 3; q++) {
                long double apq = a[p][q];
                if (apq == 0)
                    continue;
                if (fabsl(apq) < 1e-30L * (fabsl(a[p][p]) + fabsl(a[q][q]))) {
                    a[p][q] = a[q][p] = 0;
                    continue;
                }
                long double th = (a[q][q] - a[p][p]) / (2 * apq);
                long double t = (th >= 0 ? 1 : -1) / (fabsl(th) + sqrtl(th * th + 1));
                long double c = 1 / sqrtl(t * t + 1), s = t * c;
                a[p][p] -= t * apq;
                a[q][q] += t * apq;
                a[p][q] = a[q][p] = 0;
                int r = 3 - p - q;
                long double arp = a[r][p], arq = a[r][q];
                a[r][p] = a[p][r] = c * arp - s * arq;
                a[r][q] = a[q][r] = s * arp + c * arq;
            }
    }
    for (int i = 0; i < 3; i++)
        ev[i] = a[i][i];
}

/* ---- convex hull ---------------------------------------------------------- */

static void sub3(const int64_t *a, const int64_t *b, int64_t *r)
{
    for (int i = 0; i < 3; i++)
        r[i] = a[i] - b[i];
}

static void cross3(const int64_t *u, const int64_t *v, int64_t *r)
{
    r[0] = u[1] * v[2] - u[2] * v[1];
    r[1] = u[2] * v[0] - u[0] * v[2];
    r[2] = u[0] * v[1] - u[1] * v[0];
}

static int64_t dot3(const int64_t *n, const int64_t *p)
{
    return n[0] * p[0] + n[1] * p[1] + n[2] * p[2];
}

static int add_facet(scratch3 *s, size_t *nf, const int64_t *P, int a, int b, int c)
{
    if (measure_grow((void **)&s->fc, &s->fc_cap, *nf + 1, sizeof *s->fc))
        return CP_ENOMEM;
    facet *f = s->fc + (*nf)++;
    f->v[0] = a;
    f->v[1] = b;
    f->v[2] = c;
    int64_t u[3], v[3];
    sub3(P + 3 * b, P + 3 * a, u);
    sub3(P + 3 * c, P + 3 * a, v);
    cross3(u, v, f->n);
    f->d = dot3(f->n, P + 3 * a);
    f->z0 = f->z1 = P[3 * a];
    for (int k = 1; k < 3; k++) {
        int64_t z = P[3 * f->v[k]];
        f->z0 = z < f->z0 ? z : f->z0;
        f->z1 = z > f->z1 ? z : f->z1;
    }
    f->alive = 1;
    return CP_OK;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Incremental convex hull of P[n] (distinct points, not coplanar) in exact
 * integer arithmetic. A facet sees a point only when it is strictly outside,
 * so points on the hull's boundary never change it and coplanar facets stay
 * triangulated. Live facets end up packed in s->fc[0 .. *nf). */
static int hull3d(const int64_t *P, size_t n, scratch3 *s, size_t *nf)
{
    *nf = 0;
    size_t i1 = 1, i2, i3;
    int64_t u[3], v[3], w[3], nrm[3];
    sub3(P + 3, P, u);
    for (i2 = 2; i2 < n; i2++) {
        sub3(P + 3 * i2, P, v);
        cross3(u, v, nrm);
        if (nrm[0] || nrm[1] || nrm[2])
            break;
    }
    for (i3 = i2 + 1; i3 < n; i3++) {
        sub3(P + 3 * i3, P, w);
        if (dot3(nrm, w) != 0)
            break;
    }
    if (i3 >= n)
        return CP_EINVAL; /* cannot happen: face centres of voxels span 3D */
    int tet[4] = {0, (int)i1, (int)i2, (int)i3};
    static const int fv[4][3] = {{0, 1, 2}, {0, 3, 1}, {1, 3, 2}, {2, 3, 0}};
    for (int k = 0; k < 4; k++) {
        int a = tet[fv[k][0]], b = tet[fv[k][1]], c = tet[fv[k][2]], o = tet[6 - fv[k][0] - fv[k][1] - fv[k][2]];
        if (add_facet(s, nf, P, a, b, c))
            return CP_ENOMEM;
        facet *f = s->fc + *nf - 1;
        if (dot3(f->n, P + 3 * o) > f->d) { /* flip to face away from the fourth vertex */
            (*nf)--;
            if (add_facet(s, nf, P, a, c, b))
                return CP_ENOMEM;
        }
    }
    size_t dead = 0;
    for (size_t p = 1; p < n; p++) {
        if (p == i1 || p == i2 || p == i3)
            continue;
        const int64_t *q = P + 3 * p;
        size_t ne = 0;
        for (size_t k = 0; k < *nf; k++) {
            facet *f = s->fc + k;
            if (!f->alive || dot3(f->n, q) <= f->d)
                continue;
            if (measure_grow((void **)&s->edges, &s->edges_cap, ne + 3, sizeof *s->edges))
                return CP_ENOMEM;
            for (int e = 0; e < 3; e++)
                s->edges[ne++] = (uint64_t)f->v[e] << 32 | (uint32_t)f->v[(e + 1) % 3];
            f->alive = 0;
            dead++;
        }
        if (!ne)
            continue;
        qsort(s->edges, ne, sizeof *s->edges, cmp_u64);
        /* horizon: seen edges whose reverse belongs to a facet that does not see q */
        for (size_t e = 0; e < ne; e++) {
            uint32_t a = (uint32_t)(s->edges[e] >> 32), b = (uint32_t)s->edges[e];
            uint64_t rev = (uint64_t)b << 32 | a;
            if (bsearch(&rev, s->edges, ne, sizeof *s->edges, cmp_u64))
                continue;
            if (add_facet(s, nf, P, (int)a, (int)b, (int)p))
                return CP_ENOMEM;
        }
        if (dead > *nf / 2) {
            size_t k = 0;
            for (size_t j = 0; j < *nf; j++)
                if (s->fc[j].alive)
                    s->fc[k++] = s->fc[j];
            *nf = k;
            dead = 0;
        }
    }
    size_t k = 0;
    for (size_t j = 0; j < *nf; j++)
        if (s->fc[j].alive)
            s->fc[k++] = s->fc[j];
    *nf = k;
    return CP_OK;
}

/* Voxel centres of the d x h x w crop inside or on the hull (doubled
 * coordinates): per (z, y) row every facet bounds x exactly. skimage's test
 * (facet equations < 1e-10) agrees, as a centre off a facet plane is at least
 * 1/|n| away, far above that tolerance. A plane strictly inside the hull's Z
 * range cuts it in a polygon bounded by the facets that reach the plane, so
 * only those are tested there. */
static int hull_voxels(scratch3 *s, size_t nf, int d, int h, int w, int64_t *out)
{
    const facet *fc = s->fc;
    if (measure_grow((void **)&s->plane_fc, &s->plane_fc_cap, nf, sizeof *s->plane_fc))
        return CP_ENOMEM;
    int64_t count = 0;
    for (int z = 0; z < d; z++) {
        int64_t Z = 2 * (int64_t)z;
        size_t np = 0;
        for (size_t k = 0; k < nf; k++)
            if (fc[k].z0 <= Z && Z <= fc[k].z1)
                s->plane_fc[np++] = k;
        for (int y = 0; y < h; y++) {
            int64_t lo = 0, hi = 2 * (int64_t)(w - 1), Y = 2 * (int64_t)y;
            for (size_t j = 0; j < np && lo <= hi; j++) {
                const facet *f = fc + s->plane_fc[j];
                int64_t r = f->d - f->n[0] * Z - f->n[1] * Y; /* need n[2] X <= r */
                if (f->n[2] > 0) {
                    int64_t m = measure_floordiv(r, f->n[2]);
                    hi = m < hi ? m : hi;
                } else if (f->n[2] < 0) {
                    int64_t m = measure_ceildiv(r, f->n[2]);
                    lo = m > lo ? m : lo;
                } else if (r < 0) {
                    hi = lo - 1;
                }
            }
            if (lo > hi)
                continue;
            int64_t clo = measure_ceildiv(lo, 2), chi = measure_floordiv(hi, 2);
            if (chi >= clo)
                count += chi - clo + 1;
        }
    }
    *out = count;
    return CP_OK;
}

/* Convex-hull voxel count of the cell whose rows are s->left/right. The hull
 * of the voxels' face centres (skimage's offset coordinates) has its vertices
 * among the row ends' face centres; each plane Z of the doubled grid is a 2D
 * problem whose hull vertices are the only 3D candidates there. */
static int convex_volume(scratch3 *s, int d, int h, int w, int64_t *out)
{
    size_t np = 0;
    if (measure_grow((void **)&s->lvl, &s->lvl_cap, (size_t)h * 4 + 8, 2 * sizeof(int64_t)) ||
        measure_grow((void **)&s->h2, &s->h2_cap, (size_t)h * 4 + 8, 2 * sizeof(int64_t)))
        return CP_ENOMEM;
    for (int64_t Z = -1; Z <= 2 * (int64_t)d - 1; Z++) {
        size_t nl = 0;
        for (int64_t Y = -1; Y <= 2 * (int64_t)h - 1; Y++) {
            int64_t lo = INT64_MAX, hi = INT64_MIN;
            /* rows (z, y) contributing at (Z, Y): the voxel's own plane and row
             * give its x-face centres, the next plane or row (one step away
             * in doubled coordinates) its y- or z-face centres */
            int oddz = (int)(Z & 1), oddy = (int)(Y & 1);
            if (oddz && oddy)
                continue;
            for (int64_t z = (Z - oddz) / 2; z <= (Z + oddz) / 2; z++)
                for (int64_t y = (Y - oddy) / 2; y <= (Y + oddy) / 2; y++) {
                    if (z < 0 || z >= d || y < 0 || y >= h)
                        continue;
                    const int *L = s->left + (size_t)z * h, *R = s->right + (size_t)z * h;
                    if (L[y] < 0)
                        continue;
                    int64_t a = 2 * (int64_t)L[y], b = 2 * (int64_t)R[y];
                    if (!oddz && !oddy) {
                        a--;
                        b++;
                    }
                    if (a < lo)
                        lo = a;
                    if (b > hi)
                        hi = b;
                }
            if (lo > hi)
                continue;
            s->lvl[2 * nl] = Y;
            s->lvl[2 * nl + 1] = lo;
            nl++;
            if (hi != lo) {
                s->lvl[2 * nl] = Y;
                s->lvl[2 * nl + 1] = hi;
                nl++;
            }
        }
        if (!nl)
            continue;
        size_t k = nl == 1 ? 1 : measure_hull2d(s->lvl, nl, s->h2);
        const int64_t *hv = nl == 1 ? s->lvl : s->h2;
        if (measure_grow((void **)&s->pts, &s->pts_cap, np + k, 3 * sizeof(int64_t)))
            return CP_ENOMEM;
        for (size_t i = 0; i < k; i++) {
            s->pts[3 * np] = Z;
            s->pts[3 * np + 1] = hv[2 * i];
            s->pts[3 * np + 2] = hv[2 * i + 1];
            np++;
        }
    }
    size_t nf;
    int rc = hull3d(s->pts, np, s, &nf);
    if (rc)
        return rc;
    return hull_voxels(s, nf, d, h, w, out);
}

/* ---- one cell --------------------------------------------------------------- */

static int measure_one3d(const uint32_t *lab, int D, int H, int W, uint32_t L, cell_box bb,
                         const double *voxel, const cube_tables *ct, const cp_image *img,
                         scratch3 *s, cp_cell_props3d *p, cp_intensity_stats *ist)
{
    int d = bb.z1 - bb.z0, h = bb.r1 - bb.r0, w = bb.c1 - bb.c0;
    size_t pw = (size_t)w + 2, pp = pw * ((size_t)h + 2), psz = pp * ((size_t)d + 2);
    size_t rows = (size_t)d * h;
    if (measure_grow((void **)&s->mask, &s->mask_cap, psz, 1) ||
        measure_grow((void **)&s->left, &s->left_cap, rows, sizeof(int)) ||
        measure_grow((void **)&s->right, &s->right_cap, rows, sizeof(int)))
        return CP_ENOMEM;
    uint8_t *m = s->mask;
    memset(m, 0, psz);

    int64_t n = 0, sz = 0, sy = 0, sx = 0, szz = 0, syy = 0, sxx = 0, szy = 0, szx = 0, syx = 0;
    for (int z = 0; z < d; z++)
        for (int y = 0; y < h; y++) {
            const uint32_t *row = lab + ((size_t)(bb.z0 + z) * H + bb.r0 + y) * W + bb.c0;
            uint8_t *mr = m + (size_t)(z + 1) * pp + (size_t)(y + 1) * pw + 1;
            int lft = -1, rgt = -1;
            for (int x = 0; x < w; x++) {
                if (row[x] != L)
                    continue;
                mr[x] = 1;
                if (lft < 0)
                    lft = x;
                rgt = x;
                n++;
                sz += z;
                sy += y;
                sx += x;
                szz += (int64_t)z * z;
                syy += (int64_t)y * y;
                sxx += (int64_t)x * x;
                szy += (int64_t)z * y;
                szx += (int64_t)z * x;
                syx += (int64_t)y * x;
            }
            s->left[(size_t)z * h + y] = lft;
            s->right[(size_t)z * h + y] = rgt;
        }

    p->label = L;
    p->volume = n;
    p->bbox_min_plane = bb.z0;
    p->bbox_min_row = bb.r0;
    p->bbox_min_col = bb.c0;
    p->bbox_max_plane = bb.z1;
    p->bbox_max_row = bb.r1;
    p->bbox_max_col = bb.c1;
    p->touches_edge = bb.z0 == 0 || bb.r0 == 0 || bb.c0 == 0 || bb.z1 == D || bb.r1 == H || bb.c1 == W;
    p->centroid_z = (double)(sz + n * (int64_t)bb.z0) / (double)n;
    p->centroid_y = (double)(sy + n * (int64_t)bb.r0) / (double)n;
    p->centroid_x = (double)(sx + n * (int64_t)bb.c0) / (double)n;

    /* n^2 x covariance, exact; skimage's inertia tensor is trace(C) I - C */
    long double a[3][3];
    a[0][0] = (long double)((i128)n * szz - (i128)sz * sz);
    a[1][1] = (long double)((i128)n * syy - (i128)sy * sy);
    a[2][2] = (long double)((i128)n * sxx - (i128)sx * sx);
    a[0][1] = a[1][0] = (long double)((i128)n * szy - (i128)sz * sy);
    a[0][2] = a[2][0] = (long double)((i128)n * szx - (i128)sz * sx);
    a[1][2] = a[2][1] = (long double)((i128)n * syx - (i128)sy * sx);
    long double ev[3], n2 = (long double)n * (long double)n;
    sym3_eigen(a, ev);
    for (int i = 0; i < 3; i++)
        ev[i] = ev[i] < 0 ? 0 : ev[i] / n2;
    for (int i = 0; i < 2; i++) /* descending */
        for (int j = i + 1; j < 3; j++)
            if (ev[j] > ev[i]) {
                long double t = ev[i];
                ev[i] = ev[j];
                ev[j] = t;
            }
    p->inertia_eigvals[0] = (double)(ev[0] + ev[1]);
    p->inertia_eigvals[1] = (double)(ev[0] + ev[2]);
    p->inertia_eigvals[2] = (double)(ev[1] + ev[2]);
    p->major_axis_length = (double)sqrtl(20 * ev[0]);
    p->minor_axis_length = (double)sqrtl(20 * ev[2]);
    if (p->minor_axis_length > 0)
        p->aspect_ratio = p->major_axis_length / p->minor_axis_length;
    else
        p->aspect_ratio = p->major_axis_length > 0 ? INFINITY : 1.0;
    p->equivalent_diameter = cbrt(6 * (double)n / M_PI);
    p->extent = (double)n / ((double)d * (double)h * (double)w);

    /* one scan of the 2x2x2 windows gives the Euler number and the surface */
    int64_t cnt[256] = {0};
    for (int z = 0; z <= d; z++)
        for (int y = 0; y <= h; y++) {
            const uint8_t *r0 = m + (size_t)z * pp + (size_t)y * pw, *r1 = r0 + pw, *r2 = r0 + pp,
                          *r3 = r2 + pw;
            for (int x = 0; x <= w; x++) {
                int c = r0[x] | r0[x + 1] << 1 | r1[x] << 2 | r1[x + 1] << 3 | r2[x] << 4 |
                        r2[x + 1] << 5 | r3[x] << 6 | r3[x + 1] << 7;
                cnt[c]++;
            }
        }
    int64_t e8 = 0;
    double area = 0, area_phys = 0;
    for (int c = 1; c < 256; c++) {
        if (!cnt[c])
            continue;
        e8 += cnt[c] * ct->euler8[c];
        area += (double)cnt[c] * ct->area[c];
        area_phys += (double)cnt[c] * ct->area_phys[c];
    }
    p->euler_number = (int)(e8 / 8);
    p->surface_area = area;
    p->surface_area_physical = voxel ? area_phys : NAN;
    p->volume_physical = voxel ? (double)n * voxel[0] * voxel[1] * voxel[2] : NAN;

    int rc = convex_volume(s, d, h, w, &p->convex_volume);
    if (rc)
        return rc;
    p->solidity = (double)n / (double)p->convex_volume;

    if (img && ist &&
        measure_intensity(img, m + pp + pw + 1, pp, pw, bb, n, &s->acc, &s->acc_cap, ist))
        return CP_ENOMEM;
    return CP_OK;
}

int cp_measure_cells3d(const uint32_t *labels, int planes, int height, int width,
                       const double *voxel_size, const cp_image *intensity, cp_cell_table3d *out)
{
    memset(out, 0, sizeof *out);
    if (!labels || planes <= 0 || height <= 0 || width <= 0)
        return cp_error(CP_EINVAL, "cp_measure_cells3d: empty label volume");
    if (intensity && (intensity->width != width || intensity->height != height ||
                      intensity->planes != planes))
        return cp_error(CP_EINVAL,
                        "intensity image is %d x %d x %d (planes x height x width) but the label volume is %d x %d x %d",
                        intensity->planes, intensity->height, intensity->width, planes, height, width);
    if (voxel_size)
        for (int i = 0; i < 3; i++)
            if (!(voxel_size[i] > 0) || !isfinite(voxel_size[i]))
                return cp_error(CP_EINVAL, "voxel size %g is not a positive number", voxel_size[i]);
    label_index ix;
    int rc = label_index_build(labels, (size_t)planes * height * width, &ix);
    if (rc)
        return rc;
    out->channels = intensity ? intensity->channels : 0;
    if (ix.n == 0) {
        label_index_free(&ix);
        return CP_OK;
    }
    cell_box *box = cp_malloc_array(ix.n, sizeof *box, "bounding boxes");
    out->cells = cp_calloc(ix.n, sizeof *out->cells, "cell table");
    if (intensity)
        out->intensity = cp_calloc(ix.n * (size_t)intensity->channels, sizeof *out->intensity,
                                   "intensity table");
    cube_tables *ct = malloc(sizeof *ct);
    if (!box || !out->cells || (intensity && !out->intensity) || !ct) {
        free(box);
        free(ct);
        label_index_free(&ix);
        cp_cell_table3d_free(out);
        return cp_error(CP_ENOMEM, "out of memory measuring cells");
    }
    cube_tables_init(ct, voxel_size);
    rc = measure_boxes(labels, planes, height, width, &ix, box);
    for (size_t i = 0; i < ix.n && !rc; i++)
        if (box[i].z1 - box[i].z0 >= HULL_MAX_SIDE || box[i].r1 - box[i].r0 >= HULL_MAX_SIDE ||
            box[i].c1 - box[i].c0 >= HULL_MAX_SIDE)
            rc = cp_error(CP_ELIMIT, "cell %u spans %d voxels or more along an axis: too large for the 3D convex hull",
                          ix.labels[i], HULL_MAX_SIDE);
    int fail = rc;
    if (!rc) {
#pragma omp parallel
        {
            scratch3 s;
            memset(&s, 0, sizeof s);
#pragma omp for schedule(dynamic, 1)
            for (size_t i = 0; i < ix.n; i++) {
                if (fail)
                    continue;
                int r = measure_one3d(labels, planes, height, width, ix.labels[i], box[i],
                                      voxel_size, ct, intensity, &s, out->cells + i,
                                      intensity ? out->intensity + i * (size_t)intensity->channels : NULL);
                if (r) {
#pragma omp atomic write
                    fail = r;
                }
            }
            scratch3_free(&s);
        }
    }
    free(box);
    free(ct);
    out->n = ix.n;
    label_index_free(&ix);
    if (fail) {
        cp_cell_table3d_free(out);
        return fail == CP_ENOMEM ? cp_error(CP_ENOMEM, "out of memory measuring cells") : fail;
    }
    return CP_OK;
}

void cp_cell_table3d_free(cp_cell_table3d *t)
{
    if (!t)
        return;
    free(t->cells);
    free(t->intensity);
    memset(t, 0, sizeof *t);
}
