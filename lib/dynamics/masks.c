/* get_masks (spec 5.3): histogram of final positions, seeds at 5x5 maxima
 * with count > 10, torch-ordered seed growth in 11x11 windows, big-mask
 * removal and first-appearance renumbering. */
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

/* Tally a run of `run` pixels of label l in row y, columns [x0, x1) (boxes
 * only if withbox). Runs keep consecutive increments of one counter out of a
 * store-to-load dependency chain: most pixels continue the previous run. */
static inline void census_run(dyn_bbox *box, uint32_t *order, uint32_t *n, uint32_t l,
                              size_t run, int withbox, int y, int x0, int x1)
{
    dyn_bbox *q = box + l;
    if (!l) {
        q->npix += run;
        return;
    }
    if (q->npix == 0) {
        order[(*n)++] = l;
        if (withbox) {
            q->r0 = y;
            q->c0 = x0;
            q->c1 = x1;
        }
    } else if (withbox) {
        if (x0 < q->c0)
            q->c0 = x0;
        if (x1 > q->c1)
            q->c1 = x1;
    }
    if (withbox)
        q->r1 = y + 1;
    q->npix += run;
}

/* Census of pixels [a, b) (rows of Lx when Lx > 0, else one flat run). */
static uint32_t census_chunk(const uint32_t *labels, size_t a, size_t b, int Lx, dyn_bbox *box,
                             uint32_t *order)
{
    uint32_t n = 0;
    if (Lx <= 0) {
        size_t i = a;
        while (i < b) {
            uint32_t l = labels[i];
            size_t s = i++;
            while (i < b && labels[i] == l)
                i++;
            census_run(box, order, &n, l, i - s, 0, 0, 0, 0);
        }
        return n;
    }
    size_t i = a;
    while (i < b) { /* row by row, so runs stay within a row */
        int y = (int)(i / (size_t)Lx), x = (int)(i % (size_t)Lx);
        size_t e = (size_t)y * Lx + Lx < b ? (size_t)y * Lx + Lx : b;
        const uint32_t *row = labels + (size_t)y * Lx;
        int xe = (int)(e - (size_t)y * Lx);
        while (x < xe) {
            uint32_t l = row[x];
            int s = x++;
            while (x < xe && row[x] == l)
                x++;
            census_run(box, order, &n, l, (size_t)(x - s), 1, y, s, x);
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

int dyn_census_make(dyn_census *c, const uint32_t *labels, size_t npix, int Lx, uint32_t nlab,
                    int threads)
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
        nord[k] = census_chunk(labels, chunk_at(npix, P, k), chunk_at(npix, P, k + 1), Lx,
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
    if (!map || dyn_census_make(&c, labels, npix, 0, maxl, 0) != CP_OK) {
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

/* Grow one seed inside its 11x11 window: 5 rounds of 3x3 dilation (window
 * edges clipped), each followed by keeping only bins with h > 2. rows[dy]
 * bit dx marks the grown region. */
static void grow_seed(const int32_t *h, int W, uint32_t center, uint16_t rows[11])
{
    int cy = (int)(center / (uint32_t)W), cx = (int)(center % (uint32_t)W);
    uint16_t ok[11], cur[11], wide[11];
    for (int dy = 0; dy < 11; dy++) {
        const int32_t *r = h + (size_t)(cy + dy - 5) * W + (cx - 5);
        ok[dy] = 0;
        for (int dx = 0; dx < 11; dx++)
            ok[dy] |= (uint16_t)((r[dx] > 2) << dx);
        cur[dy] = 0;
    }
    cur[5] = 1u << 5;
    for (int it = 0; it < 5; it++) {
        for (int y = 0; y < 11; y++) /* shifts past bit 10 are masked off: clipping */
            wide[y] = (uint16_t)((cur[y] | cur[y] << 1 | cur[y] >> 1) & 0x7ff);
        for (int y = 0; y < 11; y++)
            cur[y] = (uint16_t)((wide[y] | (y > 0 ? wide[y - 1] : 0) |
                                 (y < 10 ? wide[y + 1] : 0)) & ok[y]);
    }
    memcpy(rows, cur, sizeof cur);
}

/* Seeds in rows [y0, y1) in raster order: bins equal to their 5x5 maximum
 * with count > 10. Appends to *seeds (size *ns, capacity *cap). */
static int scan_seeds(const int32_t *h, int H, int W, int y0, int y1, dyn_seed **seeds,
                      size_t *ns, size_t *cap)
{
    for (int y = y0; y < y1; y++) {
        for (int x = 0; x < W; x++) {
            int32_t v = h[(size_t)y * W + x];
            if (v <= 10)
                continue;
            int ismax = 1;
            for (int yy = y - 2; yy <= y + 2 && ismax; yy++) {
                if (yy < 0 || yy >= H)
                    continue;
                for (int xx = x - 2; xx <= x + 2; xx++)
                    if (xx >= 0 && xx < W && h[(size_t)yy * W + xx] > v) {
                        ismax = 0;
                        break;
                    }
            }
            if (!ismax)
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
            (*seeds)[*ns].index = (uint32_t)((size_t)y * W + x);
            (*ns)++;
        }
    }
    return CP_OK;
}

/* All seeds of h in raster order, rows scanned in P chunks. */
static int find_seeds(const int32_t *h, int H, int W, int P, dyn_seed **seeds, size_t *ns)
{
    dyn_seed **part = cp_calloc((size_t)P, sizeof *part, "seed lists");
    size_t *np = cp_calloc((size_t)P, sizeof *np, "seed list sizes");
    size_t *cap = cp_calloc((size_t)P, sizeof *cap, "seed list sizes");
    int rc = CP_OK;
    *seeds = NULL;
    *ns = 0;
    if (!part || !np || !cap) {
        rc = CP_ENOMEM;
        goto done;
    }
#pragma omp parallel for num_threads(P) schedule(static)
    for (int k = 0; k < P; k++)
        if (scan_seeds(h, H, W, (int)chunk_at((size_t)H, P, k), (int)chunk_at((size_t)H, P, k + 1),
                       part + k, np + k, cap + k) != CP_OK) {
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

/* Histogram row or column of a final position: trunc(v) + RPAD, with v
 * clamped to the image ([0, hi - RPAD]), as Euler's positions always are.
 * Positions from a caller may be anything: NaN, huge or negative ones clamp
 * too, so seeds stay RPAD bins from the edge and no conversion overflows. */
static inline int pos_bin(float v, int hi)
{
    if (!(v > 0.0f))
        return RPAD;
    if (v >= (float)hi)
        return hi;
    int b = (int)v + RPAD;
    return b > hi ? hi : b;
}

/* Histogram of the truncated final positions into the zeroed h. Neighbouring
 * pixels mostly end in the same bin, so equal bins are added as runs (fewer
 * atomic adds, no dependency chain on one counter). */
static void histogram(const float *p, size_t n, int H, int W, int P, int32_t *h, uint32_t *bin)
{
    const float *py = p, *px = p + n;
#pragma omp parallel for num_threads(P) schedule(static)
    for (int k = 0; k < P; k++) {
        size_t j0 = chunk_at(n, P, k), j1 = chunk_at(n, P, k + 1);
        uint32_t cur = 0;
        int32_t run = 0;
        for (size_t j = j0; j < j1; j++) {
            int yb = pos_bin(py[j], H - RPAD - 1), xb = pos_bin(px[j], W - RPAD - 1);
            uint32_t b = (uint32_t)yb * (uint32_t)W + (uint32_t)xb;
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

/* Once every seed has grown, h is no longer needed as counts: store each
 * seed's label (k + 1) over its grown region as -label (counts are >= 0), in
 * seed order so later seeds overwrite earlier ones. This replaces a second
 * full-size label grid and its page faults. */
static void paint_seeds(int32_t *h, int W, const dyn_seed *seeds, const uint16_t (*grown)[11],
                        size_t ns)
{
    for (size_t k = 0; k < ns; k++) {
        size_t c = seeds[k].index;
        int32_t *w = h + (c / (size_t)W - 5) * W + (c % (size_t)W - 5);
        for (int dy = 0; dy < 11; dy++)
            for (int dx = 0; dx < 11; dx++)
                if (grown[k][dy] >> dx & 1)
                    w[(size_t)dy * W + dx] = -(int32_t)(k + 1);
    }
}

/* Big-mask removal and first-appearance renumbering of the seeded labels
 * 1..ns in one census and one relabelling pass. */
static int drop_big_and_renumber(uint32_t *labels, size_t npix, uint32_t ns,
                                 double max_size_fraction, int P, uint32_t *K)
{
    dyn_census c;
    uint32_t *map = cp_calloc((size_t)ns + 1, sizeof *map, "renumber map");
    if (!map || dyn_census_make(&c, labels, npix, 0, ns, P) != CP_OK) {
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
    size_t npix = (size_t)Ly * Lx;
    int P = npix < PAR_MIN ? 1 : dyn_threads(threads);
    if (nlabels)
        *nlabels = 0;
    if (nseeds)
        *nseeds = 0;
    /* followed pixels before each chunk: where chunk k starts reading bin[] */
    size_t *first = cp_calloc((size_t)P + 1, sizeof *first, "chunk offsets");
    if (!first) {
        memset(labels, 0, npix * sizeof *labels);
        return CP_ENOMEM;
    }
    dyn_count_followed(cellprob, npix, threshold, (size_t)P, P, first);
    size_t n = first[P];
    int H = Ly + 2 * RPAD, W = Lx + 2 * RPAD;
    size_t nb = (size_t)H * W;
    int32_t *h = NULL;
    uint32_t *bin = NULL;
    uint16_t(*grown)[11] = NULL;
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
    histogram(p, n, H, W, P, h, bin);
    /* Seeds lie at least RPAD - 1 bins from the edge, so windows fit. */
    if ((rc = find_seeds(h, H, W, P, &seeds, &ns)) != CP_OK)
        goto done;
    if (nseeds)
        *nseeds = (int)ns;
    if (ns == 0)
        goto done;
    dyn_stdsort_seeds(seeds, ns);
    rc = CP_ENOMEM;
    grown = cp_malloc_array(ns, sizeof *grown, "grown seeds");
    if (!grown)
        goto done;
#pragma omp parallel for num_threads(P) schedule(static)
    for (size_t k = 0; k < ns; k++)
        grow_seed(h, W, seeds[k].index, grown[k]);
    paint_seeds(h, W, seeds, (const uint16_t(*)[11])grown, ns);
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
