/* get_masks (spec 5.3), 2D and 3D as Cellpose's get_masks_torch: histogram
 * of final positions, seeds at 5x5(x5) maxima with count > 10, torch-ordered
 * seed growth in 11x11(x11) windows, big-mask removal and first-appearance
 * renumbering. */
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/dynamics.h"
#include "core/internal.h"
#include "dynamics/internal.h"

#define RPAD 20

/* Below this many pixels a pass is not worth a thread team. */
#define PAR_MIN 65536

static size_t chunk_at(size_t n, int P, int c)
{
    return dyn_chunk_at(n, (size_t)P, (size_t)c);
}

uint32_t dyn_max_label(const uint32_t *labels, size_t npix, int threads)
{
    uint32_t m = 0;
#pragma omp parallel for num_threads(dyn_threads(threads)) schedule(static) \
    reduction(max : m) if (npix >= PAR_MIN)
    for (size_t i = 0; i < npix; i++)
        if (labels[i] > m)
            m = labels[i];
    return m;
}

void dyn_apply_map(uint32_t *labels, size_t npix, const uint32_t *map, int threads)
{
#pragma omp parallel for num_threads(dyn_threads(threads)) schedule(static) if (npix >= PAR_MIN)
    for (size_t i = 0; i < npix; i++)
        labels[i] = map[labels[i]];
}

/* Tally a run of `run` pixels of label l in plane z, row y, columns [x0, x1)
 * (boxes only if withbox). Runs keep consecutive increments of one counter
 * out of a store-to-load dependency chain: most pixels continue the previous
 * run. Raster order makes the first plane the first seen, the last the last. */
static inline void census_run(dyn_bbox *box, uint32_t *order, uint32_t *n, uint32_t l,
                              size_t run, int withbox, int z, int y, int x0, int x1)
{
    dyn_bbox *q = box + l;
    if (!l) {
        q->npix += run;
        return;
    }
    if (q->npix == 0) {
        order[(*n)++] = l;
        if (withbox) {
            q->p0 = z;
            q->r0 = y;
            q->r1 = y + 1;
            q->c0 = x0;
            q->c1 = x1;
        }
    } else if (withbox) {
        if (y < q->r0)
            q->r0 = y;
        if (y + 1 > q->r1)
            q->r1 = y + 1;
        if (x0 < q->c0)
            q->c0 = x0;
        if (x1 > q->c1)
            q->c1 = x1;
    }
    if (withbox)
        q->p1 = z + 1;
    q->npix += run;
}

/* Census of pixels [a, b) (rows of Lx, planes of Ly rows when Lx > 0, else
 * one flat run). */
static uint32_t census_chunk(const uint32_t *labels, size_t a, size_t b, int Ly, int Lx,
                             dyn_bbox *box, uint32_t *order)
{
    uint32_t n = 0;
    if (Lx <= 0) {
        size_t i = a;
        while (i < b) {
            uint32_t l = labels[i];
            size_t s = i++;
            while (i < b && labels[i] == l)
                i++;
            census_run(box, order, &n, l, i - s, 0, 0, 0, 0, 0);
        }
        return n;
    }
    size_t i = a;
    while (i < b) { /* row by row, so runs stay within a row */
        size_t row = i / (size_t)Lx;
        int z = (int)(row / (size_t)Ly), y = (int)(row % (size_t)Ly), x = (int)(i % (size_t)Lx);
        size_t e = row * Lx + Lx < b ? row * Lx + Lx : b;
        const uint32_t *rp = labels + row * Lx;
        int xe = (int)(e - row * Lx);
        while (x < xe) {
            uint32_t l = rp[x];
            int s = x++;
            while (x < xe && rp[x] == l)
                x++;
            census_run(box, order, &n, l, (size_t)(x - s), 1, z, y, s, x);
        }
        i = e;
    }
    return n;
}

/* Fold chunk census (box, order[0..n)) into the running total in c. */
static void census_merge(dyn_census *c, const dyn_bbox *box, const uint32_t *order, uint32_t n)
{
    c->box[0].npix += box[0].npix;
    for (uint32_t k = 0; k < n; k++) {
        uint32_t l = order[k];
        dyn_bbox *q = c->box + l;
        const dyn_bbox *s = box + l;
        if (q->npix == 0) {
            *q = *s;
            c->order[c->norder++] = l;
            continue;
        }
        if (s->p1 > q->p1) /* later chunks: p0 stays the first plane seen */
            q->p1 = s->p1;
        if (s->r0 < q->r0)
            q->r0 = s->r0;
        if (s->r1 > q->r1)
            q->r1 = s->r1;
        if (s->c0 < q->c0)
            q->c0 = s->c0;
        if (s->c1 > q->c1)
            q->c1 = s->c1;
        q->npix += s->npix;
    }
}

int dyn_census_make(dyn_census *c, const uint32_t *labels, size_t npix, int Ly, int Lx,
                    uint32_t nlab, int threads)
{
    memset(c, 0, sizeof *c);
    int P = dyn_threads(threads);
    /* per-chunk tables cost P * nlab: only worth it for dense labels */
    if (npix < PAR_MIN || (size_t)nlab > npix / 4)
        P = 1;
    size_t nl = (size_t)nlab + 1;
    dyn_bbox *box = cp_calloc(nl, (size_t)P * sizeof *box, "label census");
    uint32_t *order = cp_malloc_array(nl, (size_t)P * sizeof *order, "label order");
    uint32_t *nord = cp_malloc_array((size_t)P, sizeof *nord, "label order sizes");
    if (!box || !order || !nord) {
        free(box), free(order), free(nord);
        return CP_ENOMEM;
    }
#pragma omp parallel for num_threads(P) schedule(static)
    for (int k = 0; k < P; k++)
        nord[k] = census_chunk(labels, chunk_at(npix, P, k), chunk_at(npix, P, k + 1), Ly, Lx,
                               box + (size_t)k * nl, order + (size_t)k * nl);
    /* chunk 0's tables become the total; later chunks fold in, in order */
    c->box = box;
    c->order = order;
    c->norder = nord[0];
    for (int k = 1; k < P; k++)
        census_merge(c, box + (size_t)k * nl, order + (size_t)k * nl, nord[k]);
    free(nord);
    return CP_OK;
}

void dyn_census_free(dyn_census *c)
{
    free(c->box);
    free(c->order);
    memset(c, 0, sizeof *c);
}

static int renumber_serial(uint32_t *labels, size_t npix, uint32_t maxl, uint32_t *nlabels)
{
    uint32_t *map = cp_calloc((size_t)maxl + 1, sizeof *map, "renumber map");
    if (!map)
        return CP_ENOMEM;
    uint32_t next = 0;
    for (size_t i = 0; i < npix; i++) {
        uint32_t l = labels[i];
        if (!l)
            continue;
        if (!map[l])
            map[l] = ++next;
        labels[i] = map[l];
    }
    free(map);
    if (nlabels)
        *nlabels = next;
    return CP_OK;
}

int cp_dyn_renumber(uint32_t *labels, size_t npix, uint32_t *nlabels)
{
    uint32_t maxl = dyn_max_label(labels, npix, 0);
    if ((size_t)maxl > npix) /* sparse values: a census table would be mostly empty */
        return renumber_serial(labels, npix, maxl, nlabels);
    dyn_census c;
    uint32_t *map = cp_calloc((size_t)maxl + 1, sizeof *map, "renumber map");
    if (!map || dyn_census_make(&c, labels, npix, 0, 0, maxl, 0) != CP_OK) {
        free(map);
        return CP_ENOMEM;
    }
    for (uint32_t k = 0; k < c.norder; k++)
        map[c.order[k]] = k + 1;
    dyn_apply_map(labels, npix, map, 0);
    if (nlabels)
        *nlabels = c.norder;
    dyn_census_free(&c);
    free(map);
    return CP_OK;
}

/* The histogram grid: D planes (1 in 2D) of H rows of W bins; windows are
 * 11 bins wide on each axis, so WD planes (1 in 2D, 11 in 3D). */
typedef struct hgrid {
    int D, H, W, WD;
} hgrid;

static inline size_t hg_at(const hgrid *g, int z, int y, int x)
{
    return ((size_t)z * g->H + y) * g->W + x;
}

/* Origin of the window around bin `center` (5 bins before it on each axis,
 * not in z in 2D). */
static inline size_t window_origin(const hgrid *g, uint32_t center)
{
    size_t c = center, plane = (size_t)g->H * g->W;
    int z = (int)(c / plane), y = (int)(c % plane / g->W), x = (int)(c % g->W);
    return hg_at(g, g->WD > 1 ? z - 5 : z, y - 5, x - 5);
}

/* Grow one seed inside its 11x11(x11) window: 5 rounds of 3x3(x3) dilation
 * (window edges clipped), each followed by keeping only bins with h > 2.
 * rows[dz * 11 + dy] bit dx marks the grown region. */
static void grow_seed(const int32_t *h, const hgrid *g, uint32_t center, uint16_t *rows)
{
    uint16_t ok[121], cur[121], wide[121];
    int nz = g->WD, nr = 11 * nz;
    size_t o = window_origin(g, center);
    for (int r = 0; r < nr; r++) {
        const int32_t *hr = h + o + ((size_t)(r / 11) * g->H + r % 11) * g->W;
        ok[r] = 0;
        for (int dx = 0; dx < 11; dx++)
            ok[r] |= (uint16_t)((hr[dx] > 2) << dx);
        cur[r] = 0;
    }
    cur[nz / 2 * 11 + 5] = 1u << 5;
    for (int it = 0; it < 5; it++) {
        for (int r = 0; r < nr; r++) /* shifts past bit 10 are masked off: clipping */
            wide[r] = (uint16_t)((cur[r] | cur[r] << 1 | cur[r] >> 1) & 0x7ff);
        for (int r = 0; r < nr; r++) {
            int y = r % 11;
            cur[r] = (uint16_t)(wide[r] | (y > 0 ? wide[r - 1] : 0) | (y < 10 ? wide[r + 1] : 0));
        }
        for (int r = 0; r < nr; r++) {
            int z = r / 11;
            wide[r] = (uint16_t)((cur[r] | (z > 0 ? cur[r - 11] : 0) |
                                  (z < nz - 1 ? cur[r + 11] : 0)) & ok[r]);
        }
        memcpy(cur, wide, (size_t)nr * sizeof *cur);
    }
    memcpy(rows, cur, (size_t)nr * sizeof *cur);
}

/* Is bin (z, y, x) with count v a maximum of its 5x5(x5) neighbourhood
 * (clipped at the grid edges)? */
static int is_local_max(const int32_t *h, const hgrid *g, int z, int y, int x, int32_t v)
{
    for (int zz = z - 2; zz <= z + 2; zz++) {
        if (zz < 0 || zz >= g->D)
            continue;
        for (int yy = y - 2; yy <= y + 2; yy++) {
            if (yy < 0 || yy >= g->H)
                continue;
            const int32_t *r = h + hg_at(g, zz, yy, 0);
            for (int xx = x - 2; xx <= x + 2; xx++)
                if (xx >= 0 && xx < g->W && r[xx] > v)
                    return 0;
        }
    }
    return 1;
}

/* Seeds in rows [r0, r1) (row r = plane r / H, row r % H) in raster order:
 * bins equal to their 5x5(x5) maximum with count > 10. Appends to *seeds
 * (size *ns, capacity *cap). */
static int scan_seeds(const int32_t *h, const hgrid *g, size_t r0, size_t r1, dyn_seed **seeds,
                      size_t *ns, size_t *cap)
{
    for (size_t r = r0; r < r1; r++) {
        int z = (int)(r / (size_t)g->H), y = (int)(r % (size_t)g->H);
        const int32_t *row = h + r * g->W;
        for (int x = 0; x < g->W; x++) {
            int32_t v = row[x];
            if (v <= 10 || !is_local_max(h, g, z, y, x, v))
                continue;
            if (*ns == *cap) {
                size_t c2 = *cap ? 2 * *cap : 256;
                dyn_seed *s2 = realloc(*seeds, c2 * sizeof **seeds);
                if (!s2)
                    return CP_ENOMEM;
                *seeds = s2;
                *cap = c2;
            }
            (*seeds)[*ns].count = v;
            (*seeds)[*ns].index = (uint32_t)(r * g->W + x);
            (*ns)++;
        }
    }
    return CP_OK;
}

/* All seeds of h in raster order, rows scanned in P chunks. */
static int find_seeds(const int32_t *h, const hgrid *g, int P, dyn_seed **seeds, size_t *ns)
{
    dyn_seed **part = cp_calloc((size_t)P, sizeof *part, "seed lists");
    size_t *np = cp_calloc((size_t)P, sizeof *np, "seed list sizes");
    size_t *cap = cp_calloc((size_t)P, sizeof *cap, "seed list sizes");
    size_t rows = (size_t)g->D * g->H;
    int rc = CP_OK;
    *seeds = NULL;
    *ns = 0;
    if (!part || !np || !cap) {
        rc = CP_ENOMEM;
        goto done;
    }
#pragma omp parallel for num_threads(P) schedule(static)
    for (int k = 0; k < P; k++)
        if (scan_seeds(h, g, chunk_at(rows, P, k), chunk_at(rows, P, k + 1), part + k, np + k,
                       cap + k) != CP_OK) {
#pragma omp atomic write
            rc = CP_ENOMEM;
        }
    if (rc != CP_OK)
        goto done;
    size_t tot = 0;
    for (int k = 0; k < P; k++)
        tot += np[k];
    if (tot) {
        *seeds = cp_malloc_array(tot, sizeof **seeds, "seeds");
        if (!*seeds) {
            rc = CP_ENOMEM;
            goto done;
        }
    }
    for (int k = 0; k < P; k++) {
        if (np[k])
            memcpy(*seeds + *ns, part[k], np[k] * sizeof **seeds);
        *ns += np[k];
    }
done:
    for (int k = 0; part && k < P; k++)
        free(part[k]);
    free(part), free(np), free(cap);
    if (rc != CP_OK)
        cp_error(CP_ENOMEM, "out of memory: seeds");
    return rc;
}

/* Histogram bin of a final coordinate: trunc(v) + RPAD, with v clamped to
 * the image ([0, hi - RPAD]), as Euler's positions always are. Positions
 * from a caller may be anything: NaN, huge or negative ones clamp too, so
 * seeds stay RPAD bins from the edge and no conversion overflows. */
static inline int pos_bin(float v, int hi)
{
    if (!(v > 0.0f))
        return RPAD;
    if (v >= (float)hi)
        return hi;
    int b = (int)v + RPAD;
    return b > hi ? hi : b;
}

/* Histogram of the truncated final positions (p: [z,] y, x lists of n)
 * into the zeroed h. Neighbouring pixels mostly end in the same bin, so
 * equal bins are added as runs (fewer atomic adds, no dependency chain on
 * one counter). */
static void histogram(const float *p, size_t n, const hgrid *g, int P, int32_t *h, uint32_t *bin)
{
    int d3 = g->WD > 1;
    const float *pz = p, *py = p + (d3 ? n : 0), *px = py + n;
#pragma omp parallel for num_threads(P) schedule(static)
    for (int k = 0; k < P; k++) {
        size_t j0 = chunk_at(n, P, k), j1 = chunk_at(n, P, k + 1);
        uint32_t cur = 0;
        int32_t run = 0;
        for (size_t j = j0; j < j1; j++) {
            int zb = d3 ? pos_bin(pz[j], g->D - RPAD - 1) : 0;
            int yb = pos_bin(py[j], g->H - RPAD - 1), xb = pos_bin(px[j], g->W - RPAD - 1);
            uint32_t b = (uint32_t)hg_at(g, zb, yb, xb);
            bin[j] = b;
            if (b == cur && run) {
                run++;
                continue;
            }
            if (run) {
#pragma omp atomic
                h[cur] += run;
            }
            cur = b;
            run = 1;
        }
        if (run) {
#pragma omp atomic
            h[cur] += run;
        }
    }
}

int cp_dyn_get_masks(const float *p, const float *cellprob, int Ly, int Lx, float threshold,
                     double max_size_fraction, uint32_t *labels, int *nlabels, int *nseeds)
{
    return dyn_get_masks(p, cellprob, Ly, Lx, threshold, max_size_fraction, 0, labels, nlabels,
                         nseeds);
}

int cp_dyn_get_masks3d(const float *p, const float *cellprob, int Lz, int Ly, int Lx,
                       float threshold, double max_size_fraction, uint32_t *labels, int *nlabels,
                       int *nseeds)
{
    size_t nvox;
    int rc = dyn_dims3(Lz, Ly, Lx, "get_masks", &nvox);
    if (rc != CP_OK)
        return rc;
    return dyn_get_masks_nd(p, cellprob, Lz, Ly, Lx, 1, threshold, max_size_fraction, 0, labels,
                            nlabels, nseeds);
}

/* Once every seed has grown, h is no longer needed as counts: store each
 * seed's label (k + 1) over its grown region as -label (counts are >= 0), in
 * seed order so later seeds overwrite earlier ones. This replaces a second
 * full-size label grid and its page faults. */
static void paint_seeds(int32_t *h, const hgrid *g, const dyn_seed *seeds, const uint16_t *grown,
                        size_t ns)
{
    int nr = 11 * g->WD;
    for (size_t k = 0; k < ns; k++) {
        int32_t *w = h + window_origin(g, seeds[k].index);
        const uint16_t *rows = grown + k * nr;
        for (int r = 0; r < nr; r++)
            for (int dx = 0; dx < 11; dx++)
                if (rows[r] >> dx & 1)
                    w[((size_t)(r / 11) * g->H + r % 11) * g->W + dx] = -(int32_t)(k + 1);
    }
}

/* Big-mask removal and first-appearance renumbering of the seeded labels
 * 1..ns in one census and one relabelling pass. */
static int drop_big_and_renumber(uint32_t *labels, size_t npix, uint32_t ns,
                                 double max_size_fraction, int P, uint32_t *K)
{
    dyn_census c;
    uint32_t *map = cp_calloc((size_t)ns + 1, sizeof *map, "renumber map");
    if (!map || dyn_census_make(&c, labels, npix, 0, 0, ns, P) != CP_OK) {
        free(map);
        return CP_ENOMEM;
    }
    double big = (double)npix * max_size_fraction;
    *K = 0;
    for (uint32_t k = 0; k < c.norder; k++) {
        uint32_t l = c.order[k];
        if (!((double)c.box[l].npix > big))
            map[l] = ++*K;
    }
    dyn_apply_map(labels, npix, map, P);
    dyn_census_free(&c);
    free(map);
    return CP_OK;
}

int dyn_get_masks(const float *p, const float *cellprob, int Ly, int Lx, float threshold,
                  double max_size_fraction, int threads, uint32_t *labels, int *nlabels,
                  int *nseeds)
{
    if (Ly <= 0 || Lx <= 0)
        return cp_error(CP_EINVAL, "get_masks: bad image size %dx%d", Lx, Ly);
    return dyn_get_masks_nd(p, cellprob, 1, Ly, Lx, 0, threshold, max_size_fraction, threads,
                            labels, nlabels, nseeds);
}

int dyn_get_masks_nd(const float *p, const float *cellprob, int Lz, int Ly, int Lx, int d3,
                     float threshold, double max_size_fraction, int threads, uint32_t *labels,
                     int *nlabels, int *nseeds)
{
    if (nlabels)
        *nlabels = 0;
    if (nseeds)
        *nseeds = 0;
    if (Lz <= 0 || Ly <= 0 || Lx <= 0 || (!d3 && Lz != 1))
        return cp_error(CP_EINVAL, "get_masks: bad size %dx%dx%d", Lx, Ly, Lz);
    hgrid g = {d3 ? Lz + 2 * RPAD : 1, Ly + 2 * RPAD, Lx + 2 * RPAD, d3 ? 11 : 1};
    if (Lz > INT_MAX - 2 * RPAD || Ly > INT_MAX - 2 * RPAD || Lx > INT_MAX - 2 * RPAD ||
        (size_t)g.D * g.H > SIZE_MAX / (size_t)g.W ||
        (size_t)g.D * g.H * g.W > (size_t)UINT32_MAX) /* bins are uint32 */
        return cp_error(CP_ELIMIT, "get_masks: %dx%dx%d is too large for the histogram", Lx, Ly,
                        Lz);
    size_t npix = (size_t)Lz * Ly * Lx;
    int P = npix < PAR_MIN ? 1 : dyn_threads(threads);
    /* followed pixels before each chunk: where chunk k starts reading bin[] */
    size_t *first = cp_calloc((size_t)P + 1, sizeof *first, "chunk offsets");
    if (!first) {
        memset(labels, 0, npix * sizeof *labels);
        return CP_ENOMEM;
    }
    dyn_count_followed(cellprob, npix, threshold, (size_t)P, P, first);
    size_t n = first[P];
    size_t nb = (size_t)g.D * g.H * g.W;
    int32_t *h = NULL;
    uint32_t *bin = NULL;
    uint16_t *grown = NULL;
    dyn_seed *seeds = NULL;
    size_t ns = 0;
    int rc = CP_OK;
    if (n == 0)
        goto done;
    rc = CP_ENOMEM;
    h = cp_calloc(nb, sizeof *h, "position histogram");
    bin = cp_malloc_array(n, sizeof *bin, "position bins");
    if (!h || !bin)
        goto done;
    histogram(p, n, &g, P, h, bin);
    /* Seeds lie at least RPAD - 1 bins from the edge, so windows fit. */
    if ((rc = find_seeds(h, &g, P, &seeds, &ns)) != CP_OK)
        goto done;
    if (nseeds)
        *nseeds = (int)ns;
    if (ns == 0)
        goto done;
    dyn_stdsort_seeds(seeds, ns);
    rc = CP_ENOMEM;
    grown = cp_malloc_array(ns, 11 * (size_t)g.WD * sizeof *grown, "grown seeds");
    if (!grown)
        goto done;
#pragma omp parallel for num_threads(P) schedule(static)
    for (size_t k = 0; k < ns; k++)
        grow_seed(h, &g, seeds[k].index, grown + k * 11 * (size_t)g.WD);
    paint_seeds(h, &g, seeds, grown, ns);
#pragma omp parallel for num_threads(P) schedule(static)
    for (int k = 0; k < P; k++) {
        size_t j = first[k];
        for (size_t i = chunk_at(npix, P, k); i < chunk_at(npix, P, k + 1); i++) {
            int32_t v = cellprob[i] > threshold ? h[bin[j++]] : 0;
            labels[i] = v < 0 ? (uint32_t)-v : 0;
        }
    }
    uint32_t K;
    if ((rc = drop_big_and_renumber(labels, npix, (uint32_t)ns, max_size_fraction, P, &K)) !=
        CP_OK)
        goto done;
    if (nlabels)
        *nlabels = (int)K;
done:
    if (rc != CP_OK || ns == 0)
        memset(labels, 0, npix * sizeof *labels);
    free(first);
    free(h);
    free(bin);
    free(grown);
    free(seeds);
    return rc;
}
