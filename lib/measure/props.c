/* Per-cell shape and intensity properties (scikit-image 0.19 regionprops).
 *
 * Pass 1 over the image finds each label's bounding box; pass 2 works on each
 * cell's bounding-box crop (cells in parallel, each cell in raster order, so
 * results do not depend on the thread count). Moments are summed as exact
 * integers, so centroids and central moments carry one rounding only. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/measure.h"
#include "core/internal.h"
#include "measure/measure_internal.h"

typedef __int128 i128;

/* Per-thread scratch, grown on demand. */
typedef struct scratch {
    uint8_t *mask;      /* (h+2)*(w+2) padded cell mask */
    uint8_t *border;    /* same layout */
    int *left, *right;  /* per crop row: first/last column, -1 if empty */
    int64_t *pts;       /* hull candidate points (x, y) pairs, doubled coordinates */
    int64_t *hull;
    double *acc;        /* intensity accumulators */
    size_t mask_cap, border_cap, left_cap, right_cap, pts_cap, hull_cap, acc_cap;
} scratch;

int measure_grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t n = need + need / 2 + 16;
    void *q = realloc(*p, n * elem);
    if (!q)
        return -1;
    *p = q;
    *cap = n;
    return 0;
}

static void scratch_free(scratch *s)
{
    free(s->mask);
    free(s->border);
    free(s->left);
    free(s->right);
    free(s->pts);
    free(s->hull);
    free(s->acc);
}


static int64_t cross(const int64_t *o, const int64_t *a, const int64_t *b)
{
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]);
}

size_t measure_hull2d(const int64_t *pts, size_t n, int64_t *hull)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        while (k >= 2 && cross(hull + 2 * (k - 2), hull + 2 * (k - 1), pts + 2 * i) <= 0)
            k--;
        hull[2 * k] = pts[2 * i];
        hull[2 * k + 1] = pts[2 * i + 1];
        k++;
    }
    size_t lower = k + 1;
    for (size_t i = n - 1; i-- > 0;) {
        while (k >= lower && cross(hull + 2 * (k - 2), hull + 2 * (k - 1), pts + 2 * i) <= 0)
            k--;
        hull[2 * k] = pts[2 * i];
        hull[2 * k + 1] = pts[2 * i + 1];
        k++;
    }
    return k - 1; /* the last point repeats the first */
}

/* Pixels of the crop (h x w) whose centre is inside or on the hull; hull in
 * doubled coordinates (x = 2*col, y = 2*row). Row by row, every edge bounds
 * the admissible x exactly in integers. */
static int64_t hull_pixels(const int64_t *hull, size_t k, int h, int w)
{
    int64_t count = 0;
    for (int r = 0; r < h; r++) {
        int64_t Y = 2 * (int64_t)r, lo = 0, hi = 2 * (int64_t)(w - 1);
        int empty = 0;
        for (size_t i = 0; i < k && !empty; i++) {
            const int64_t *A = hull + 2 * i, *B = hull + 2 * ((i + 1) % k);
            int64_t dx = B[0] - A[0], dy = B[1] - A[1];
            /* inside: dx*(Y-Ay) - dy*(X-Ax) >= 0  <=>  dy*X <= dx*(Y-Ay) + dy*Ax */
            int64_t rhs = dx * (Y - A[1]) + dy * A[0];
            if (dy == 0) {
                if (dx * (Y - A[1]) < 0)
                    empty = 1;
            } else if (dy > 0) {
                int64_t m = measure_floordiv(rhs, dy);
                if (m < hi)
                    hi = m;
            } else {
                int64_t m = measure_ceildiv(rhs, dy);
                if (m > lo)
                    lo = m;
            }
        }
        if (empty)
            continue;
        int64_t clo = measure_ceildiv(lo, 2), chi = measure_floordiv(hi, 2);
        if (chi >= clo)
            count += chi - clo + 1;
    }
    return count;
}

/* Eigenvalues of the inertia tensor [[a, b], [b, c]] given as exact integer
 * numerators over n^2: A = n*mu02, C = n*mu20, B = -n*mu11. The smaller one
 * comes from the determinant, so thin cells keep their relative precision. */
static void inertia_eigen(i128 A, i128 B, i128 C, int64_t n, double *l1, double *l2, double *a,
                          double *b, double *c)
{
    double n2 = (double)n * (double)n;
    *a = (double)A / n2;
    *b = (double)B / n2;
    *c = (double)C / n2;
    double s = (*a + *c) / 2, d = hypot((*a - *c) / 2, *b);
    double e1 = s + d;
    double e2 = 0;
    if (e1 > 0) {
        long double det;
        i128 p, q;
        if (!__builtin_mul_overflow(A, C, &p) && !__builtin_mul_overflow(B, B, &q))
            det = (long double)(p - q);
        else
            det = (long double)A * (long double)C - (long double)B * (long double)B;
        e2 = (double)(det / ((long double)n2 * (long double)n2) / (long double)e1);
    }
    if (e1 < 0)
        e1 = 0;
    if (e2 < 0)
        e2 = 0;
    if (e2 > e1)
        e2 = e1;
    *l1 = e1;
    *l2 = e2;
}

static const double SQRT2 = 1.4142135623730951;

static int measure_one(const uint32_t *lab, int H, int W, uint32_t L, cell_box bb,
                       const cp_image *img, scratch *s, cp_cell_props *p, cp_intensity_stats *ist)
{
    int h = bb.r1 - bb.r0, w = bb.c1 - bb.c0;
    int pw = w + 2;
    size_t psz = (size_t)(h + 2) * pw;
    if (measure_grow((void **)&s->mask, &s->mask_cap, psz, 1) ||
        measure_grow((void **)&s->border, &s->border_cap, psz, 1) ||
        measure_grow((void **)&s->left, &s->left_cap, (size_t)h, sizeof(int)) ||
        measure_grow((void **)&s->right, &s->right_cap, (size_t)h, sizeof(int)) ||
        measure_grow((void **)&s->pts, &s->pts_cap, (size_t)h * 8 + 8, 2 * sizeof(int64_t)) ||
        measure_grow((void **)&s->hull, &s->hull_cap, (size_t)h * 16 + 8, 2 * sizeof(int64_t)))
        return CP_ENOMEM;
    uint8_t *m = s->mask;
    memset(m, 0, psz);

    int64_t n = 0, sr = 0, sc = 0, srr = 0, src = 0, scc = 0;
    for (int r = 0; r < h; r++) {
        const uint32_t *row = lab + (size_t)(bb.r0 + r) * W + bb.c0;
        uint8_t *mr = m + (size_t)(r + 1) * pw + 1;
        int lft = -1, rgt = -1;
        for (int c = 0; c < w; c++) {
            if (row[c] != L)
                continue;
            mr[c] = 1;
            if (lft < 0)
                lft = c;
            rgt = c;
            n++;
            sr += r;
            sc += c;
            srr += (int64_t)r * r;
            src += (int64_t)r * c;
            scc += (int64_t)c * c;
        }
        s->left[r] = lft;
        s->right[r] = rgt;
    }

    p->label = L;
    p->area = n;
    p->bbox_min_row = bb.r0;
    p->bbox_min_col = bb.c0;
    p->bbox_max_row = bb.r1;
    p->bbox_max_col = bb.c1;
    p->touches_edge = bb.r0 == 0 || bb.c0 == 0 || bb.r1 == H || bb.c1 == W;
    p->centroid_y = (double)(sr + n * (int64_t)bb.r0) / (double)n;
    p->centroid_x = (double)(sc + n * (int64_t)bb.c0) / (double)n;

    /* n * central moments, exact */
    i128 N20 = (i128)n * srr - (i128)sr * sr;
    i128 N02 = (i128)n * scc - (i128)sc * sc;
    i128 N11 = (i128)n * src - (i128)sr * sc;
    double l1, l2, a, b, c;
    inertia_eigen(N02, -N11, N20, n, &l1, &l2, &a, &b, &c);
    p->major_axis_length = 4 * sqrt(l1);
    p->minor_axis_length = 4 * sqrt(l2);
    p->eccentricity = l1 == 0 ? 0 : sqrt(1 - l2 / l1);
    if (N02 == N20)
        p->orientation = N11 > 0 ? -M_PI / 4 : M_PI / 4; /* b = -N11/n^2 < 0 */
    else
        p->orientation = 0.5 * atan2(-2 * b, c - a);
    if (p->minor_axis_length > 0)
        p->aspect_ratio = p->major_axis_length / p->minor_axis_length;
    else
        p->aspect_ratio = p->major_axis_length > 0 ? INFINITY : 1.0;
    p->equivalent_diameter = sqrt(4 * (double)n / M_PI);
    p->extent = (double)n / ((double)h * (double)w);

    /* perimeter: border = mask minus its 4-erosion; codes of the 3x3 weights */
    uint8_t *bd = s->border;
    memset(bd, 0, psz);
    for (int r = 1; r <= h; r++)
        for (int x = 1; x <= w; x++) {
            size_t i = (size_t)r * pw + x;
            if (m[i] && !(m[i - 1] && m[i + 1] && m[i - pw] && m[i + pw]))
                bd[i] = 1;
        }
    int64_t cnt[50] = {0};
    for (int r = 1; r <= h; r++)
        for (int x = 1; x <= w; x++) {
            size_t i = (size_t)r * pw + x;
            if (!bd[i])
                continue;
            int code = 1 + 2 * (bd[i - 1] + bd[i + 1] + bd[i - pw] + bd[i + pw]) +
                       10 * (bd[i - pw - 1] + bd[i - pw + 1] + bd[i + pw - 1] + bd[i + pw + 1]);
            cnt[code]++;
        }
    double per = 0;
    for (int k = 0; k < 50; k++) {
        double wt = 0;
        if (k == 5 || k == 7 || k == 15 || k == 17 || k == 25 || k == 27)
            wt = 1;
        else if (k == 21 || k == 33)
            wt = SQRT2;
        else if (k == 13 || k == 23)
            wt = (1 + SQRT2) / 2;
        per += (double)cnt[k] * wt;
    }
    p->perimeter = per;

    /* Euler number from 2x2 bit quads of the padded mask (8-connectivity):
     * E = (Q1 - Q3 - 2 QD) / 4 */
    int64_t q1 = 0, q3 = 0, qd = 0;
    for (int r = 0; r <= h; r++)
        for (int x = 0; x <= w; x++) {
            size_t i = (size_t)r * pw + x;
            int tl = m[i], tr = m[i + 1], bl = m[i + pw], br = m[i + pw + 1];
            int k = tl + tr + bl + br;
            if (k == 1)
                q1++;
            else if (k == 3)
                q3++;
            else if (k == 2 && tl == br)
                qd++;
        }
    p->euler_number = (int)((q1 - q3 - 2 * qd) / 4);

    /* convex hull of the edge midpoints of each row's end pixels */
    size_t np = 0;
    /* Only the extreme x at each y level can be hull vertices, so keep the
     * min and max per level; levels come in increasing y, giving the
     * (y, x) order the monotone chain needs without sorting. */
    for (int64_t Y = -1; Y <= 2 * (int64_t)h - 1; Y++) {
        int64_t lo = INT64_MAX, hi = INT64_MIN;
        if (Y % 2 == 0) {
            int r = (int)(Y / 2);
            if (s->left[r] >= 0) {
                lo = 2 * (int64_t)s->left[r] - 1;
                hi = 2 * (int64_t)s->right[r] + 1;
            }
        } else {
            for (int r = (int)((Y - 1) / 2); r <= (int)((Y + 1) / 2); r++) {
                if (r < 0 || r >= h || s->left[r] < 0)
                    continue;
                if (2 * (int64_t)s->left[r] < lo)
                    lo = 2 * (int64_t)s->left[r];
                if (2 * (int64_t)s->right[r] > hi)
                    hi = 2 * (int64_t)s->right[r];
            }
        }
        if (lo > hi)
            continue;
        int64_t *q = s->pts + 2 * np;
        q[0] = Y;
        q[1] = lo;
        np++;
        if (hi != lo) {
            q[2] = Y;
            q[3] = hi;
            np++;
        }
    }
    size_t k = measure_hull2d(s->pts, np, s->hull);
    /* back to (x, y): swapping the axes mirrors the polygon, so also reverse
     * the order to keep it counter-clockwise */
    for (size_t i = 0; i < k; i++) {
        s->pts[2 * i] = s->hull[2 * (k - 1 - i) + 1];
        s->pts[2 * i + 1] = s->hull[2 * (k - 1 - i)];
    }
    p->convex_area = hull_pixels(s->pts, k, h, w);
    p->solidity = (double)n / (double)p->convex_area;

    if (img && ist && measure_intensity(img, m + pw + 1, psz, pw, (cell_box){0, bb.r0, bb.c0, 1, bb.r1, bb.c1},
                                        n, &s->acc, &s->acc_cap, ist))
        return CP_ENOMEM;
    return CP_OK;
}

int measure_intensity(const cp_image *img, const uint8_t *m, size_t plane_stride, size_t row_stride,
                      cell_box bb, int64_t n, double **acc, size_t *acc_cap, cp_intensity_stats *ist)
{
    int C = img->channels, H = img->height, W = img->width;
    if (measure_grow((void **)acc, acc_cap, (size_t)C * 4, sizeof(double)))
        return CP_ENOMEM;
    double *sum = *acc, *mn = sum + C, *mx = mn + C, *sq = mx + C;
    for (int ch = 0; ch < C; ch++) {
        sum[ch] = 0;
        sq[ch] = 0;
        mn[ch] = INFINITY;
        mx[ch] = -INFINITY;
    }
    /* two passes: the mean first, then squared deviations from it */
    for (int pass = 0; pass < 2; pass++)
        for (int z = bb.z0; z < bb.z1; z++)
            for (int r = bb.r0; r < bb.r1; r++) {
                const uint8_t *mr = m + (size_t)(z - bb.z0) * plane_stride + (size_t)(r - bb.r0) * row_stride;
                for (int x = 0; x < bb.c1 - bb.c0; x++) {
                    if (!mr[x])
                        continue;
                    size_t base = (((size_t)z * H + r) * W + bb.c0 + x) * C;
                    for (int ch = 0; ch < C; ch++) {
                        double v = cp_sample_f64(img->data, img->dtype, base + ch);
                        if (pass) {
                            double d = v - sum[ch] / (double)n;
                            sq[ch] += d * d;
                            continue;
                        }
                        sum[ch] += v;
                        if (v < mn[ch])
                            mn[ch] = v;
                        if (v > mx[ch])
                            mx[ch] = v;
                    }
                }
            }
    for (int ch = 0; ch < C; ch++) {
        ist[ch].sum = sum[ch];
        ist[ch].mean = sum[ch] / (double)n;
        ist[ch].min = mn[ch];
        ist[ch].max = mx[ch];
        ist[ch].std = sqrt(sq[ch] / (double)n);
    }
    return CP_OK;
}

/* Bounding boxes of every label, blocks of rows (z, y) in parallel, merged exactly. */
int measure_boxes(const uint32_t *lab, int D, int H, int W, const label_index *ix, cell_box *box)
{
    int64_t R = (int64_t)D * H;
    int nt = omp_get_max_threads();
    if (nt < 1)
        nt = 1;
    if ((int64_t)nt > R)
        nt = (int)R;
    /* per-thread boxes cost threads x labels: keep that below ~256 MB */
    while (nt > 1 && (size_t)nt * ix->n > ((size_t)1 << 23))
        nt--;
    cell_box *tb = cp_malloc_array((size_t)nt * ix->n, sizeof *tb, "bounding boxes");
    if (!tb)
        return CP_ENOMEM;
    for (size_t i = 0; i < (size_t)nt * ix->n; i++)
        tb[i] = (cell_box){D, H, W, -1, -1, -1};
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num();
        cell_box *b = tb + (size_t)t * ix->n;
        int64_t rs = R * t / nt, re = R * (t + 1) / nt;
        for (int64_t zr = rs; zr < re; zr++) {
            int z = (int)(zr / H), r = (int)(zr % H);
            const uint32_t *row = lab + (size_t)zr * W;
            for (int c = 0; c < W;) {
                uint32_t v = row[c];
                int e = c + 1;
                while (e < W && row[e] == v)
                    e++;
                if (v) {
                    cell_box *q = b + label_index_of(ix, v);
                    if (z < q->z0) q->z0 = z;
                    if (z > q->z1) q->z1 = z;
                    if (r < q->r0) q->r0 = r;
                    if (r > q->r1) q->r1 = r;
                    if (c < q->c0) q->c0 = c;
                    if (e - 1 > q->c1) q->c1 = e - 1;
                }
                c = e;
            }
        }
    }
    for (size_t i = 0; i < ix->n; i++) {
        cell_box q = tb[i];
        for (int t = 1; t < nt; t++) {
            cell_box o = tb[(size_t)t * ix->n + i];
            if (o.z0 < q.z0) q.z0 = o.z0;
            if (o.r0 < q.r0) q.r0 = o.r0;
            if (o.c0 < q.c0) q.c0 = o.c0;
            if (o.z1 > q.z1) q.z1 = o.z1;
            if (o.r1 > q.r1) q.r1 = o.r1;
            if (o.c1 > q.c1) q.c1 = o.c1;
        }
        q.z1++;
        q.r1++;
        q.c1++;
        box[i] = q;
    }
    free(tb);
    return CP_OK;
}

int cp_measure_cells(const uint32_t *labels, int height, int width, const cp_image *intensity,
                     cp_cell_table *out)
{
    memset(out, 0, sizeof *out);
    if (!labels || height <= 0 || width <= 0)
        return cp_error(CP_EINVAL, "cp_measure_cells: empty label image");
    if (intensity && (intensity->width != width || intensity->height != height || intensity->planes != 1))
        return cp_error(CP_EINVAL,
                        "intensity image is %d x %d (%d planes) but the label image is %d x %d",
                        intensity->height, intensity->width, intensity->planes, height, width);
    size_t npix = (size_t)height * width;
    label_index ix;
    int rc = label_index_build(labels, npix, &ix);
    if (rc)
        return rc;
    if (ix.n == 0) {
        out->channels = intensity ? intensity->channels : 0;
        label_index_free(&ix);
        return CP_OK;
    }
    cell_box *box = cp_malloc_array(ix.n, sizeof *box, "bounding boxes");
    out->cells = cp_calloc(ix.n, sizeof *out->cells, "cell table");
    if (intensity) {
        out->channels = intensity->channels;
        out->intensity = cp_calloc(ix.n * (size_t)intensity->channels, sizeof *out->intensity,
                                   "intensity table");
    }
    if (!box || !out->cells || (intensity && !out->intensity)) {
        free(box);
        label_index_free(&ix);
        cp_cell_table_free(out);
        return CP_ENOMEM;
    }
    rc = measure_boxes(labels, 1, height, width, &ix, box);
    int fail = rc;
    if (!rc) {
#pragma omp parallel
        {
            scratch s;
            memset(&s, 0, sizeof s);
#pragma omp for schedule(dynamic, 8)
            for (size_t i = 0; i < ix.n; i++) {
                if (fail)
                    continue;
                int r = measure_one(labels, height, width, ix.labels[i], box[i], intensity, &s,
                                    out->cells + i,
                                    intensity ? out->intensity + i * (size_t)intensity->channels : NULL);
                if (r) {
#pragma omp atomic write
                    fail = r;
                }
            }
            scratch_free(&s);
        }
    }
    free(box);
    out->n = ix.n;
    label_index_free(&ix);
    if (fail) {
        cp_cell_table_free(out);
        return fail == CP_ENOMEM ? cp_error(CP_ENOMEM, "out of memory measuring cells") : fail;
    }
    return CP_OK;
}

void cp_cell_table_free(cp_cell_table *t)
{
    if (!t)
        return;
    free(t->cells);
    free(t->intensity);
    memset(t, 0, sizeof *t);
}
