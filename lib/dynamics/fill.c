/* Fill holes and remove small masks (spec 5.6), Cellpose's
 * fill_holes_and_remove_small_masks in 2D and 3D (holes: background not
 * face-connected to the label's bounding box border): v4 behaviour by
 * default, v3.1.1.3's label-removal bug on request. */
#include <limits.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/dynamics.h"
#include "core/internal.h"
#include "dynamics/internal.h"

/* Which of the values 0..maxl (pixel counts cnt) remove_small drops; returns
 * whether any. The v3 bug: Cellpose 3 takes the counts of the values present
 * (0 assumed first), and removes label "position + 1" instead of the label at
 * that position. */
static int small_labels(const size_t *cnt, uint32_t maxl, int min_size, int v3_bug,
                        unsigned char *rm)
{
    int any = 0;
    memset(rm, 0, (size_t)maxl + 1);
    if (!v3_bug) {
        /* Cellpose 4 skips the first value present, normally 0 (so with no
         * background at all, the lowest label is never removed here) */
        int first = 1;
        for (uint32_t l = 0; l <= maxl; l++) {
            if (!cnt[l])
                continue;
            if (!first && cnt[l] < (size_t)min_size)
                rm[l] = any = 1;
            first = 0;
        }
    } else {
        size_t pos = 0; /* position among present values, first one dropped */
        int first = 1;
        for (uint32_t v = 0; v <= maxl; v++) {
            if (!cnt[v])
                continue;
            if (first) {
                first = 0;
                continue;
            }
            if (cnt[v] < (size_t)min_size && pos + 1 <= maxl)
                rm[pos + 1] = any = 1;
            pos++;
        }
    }
    return any;
}

/* Counts of the values 0..nlab from a census. */
static size_t *census_counts(const dyn_census *c, uint32_t nlab)
{
    size_t *cnt = cp_malloc_array((size_t)nlab + 1, sizeof *cnt, "mask sizes");
    if (cnt)
        for (uint32_t l = 0; l <= nlab; l++)
            cnt[l] = c->box[l].npix;
    return cnt;
}

/* Labels with fewer than min_size pixels -> 0, then renumber; *K = labels left. */
static int remove_small(uint32_t *labels, size_t npix, int min_size, int v3_bug, int threads,
                        uint32_t *K)
{
    *K = 0;
    uint32_t maxl = dyn_max_label(labels, npix, threads);
    if (!maxl)
        return CP_OK;
    dyn_census c;
    if (dyn_census_make(&c, labels, npix, 0, 0, maxl, threads) != CP_OK)
        return CP_ENOMEM;
    size_t *cnt = census_counts(&c, maxl);
    unsigned char *rm = cp_malloc((size_t)maxl + 1, "small masks");
    uint32_t *map = cp_calloc((size_t)maxl + 1, sizeof *map, "renumber map");
    int rc = CP_ENOMEM;
    if (cnt && rm && map) {
        small_labels(cnt, maxl, min_size, v3_bug, rm);
        for (uint32_t k = 0; k < c.norder; k++)
            if (!rm[c.order[k]])
                map[c.order[k]] = ++*K;
        dyn_apply_map(labels, npix, map, threads);
        rc = CP_OK;
    }
    dyn_census_free(&c);
    free(cnt), free(rm), free(map);
    return rc;
}

/* The image or volume the fills work on: Ly rows of Lx pixels a plane; d3:
 * a volume, whose first and last planes are box borders too. */
typedef struct fvol {
    int Ly, Lx, d3;
} fvol;

static inline size_t box_voxels(const dyn_bbox *b)
{
    return (size_t)(b->p1 - b->p0) * (size_t)(b->r1 - b->r0) * (size_t)(b->c1 - b->c0);
}

/* Index in the volume of box voxel (z, y, x). */
static inline size_t vidx(const fvol *v, const dyn_bbox *b, int z, int y, int x)
{
    return ((size_t)(b->p0 + z) * v->Ly + (size_t)(b->r0 + y)) * v->Lx + (size_t)(b->c0 + x);
}

/* Mark in out (box-sized) the voxels of box b that are not label l and are
 * face-connected (4 in 2D, 6 in 3D) to the box border through such voxels:
 * scipy's binary_fill_holes background. */
static void flood_outside(const uint32_t *labels, const fvol *v, const dyn_bbox *b, uint32_t l,
                          unsigned char *out, int *queue)
{
    int d = b->p1 - b->p0, h = b->r1 - b->r0, w = b->c1 - b->c0;
    memset(out, 0, box_voxels(b));
    size_t qh = 0, qt = 0;
#define SEED(z, y, x)                                                              \
    do {                                                                           \
        int zz_ = (z), yy_ = (y), xx_ = (x);                                       \
        int q_ = (zz_ * h + yy_) * w + xx_;                                        \
        if (!out[q_] && labels[vidx(v, b, zz_, yy_, xx_)] != l) {                  \
            out[q_] = 1;                                                           \
            queue[qt++] = q_;                                                      \
        }                                                                          \
    } while (0)
    for (int z = 0; z < d; z++)
        for (int y = 0; y < h; y++) {
            int face = (v->d3 && (z == 0 || z == d - 1)) || y == 0 || y == h - 1;
            for (int x = 0; x < w; x += face || x == w - 1 ? 1 : w - 1)
                SEED(z, y, x);
        }
    while (qh < qt) {
        int q = queue[qh++], x = q % w, y = q / w % h, z = q / w / h;
        if (z > 0) SEED(z - 1, y, x);
        if (z < d - 1) SEED(z + 1, y, x);
        if (y > 0) SEED(z, y - 1, x);
        if (y < h - 1) SEED(z, y + 1, x);
        if (x > 0) SEED(z, y, x - 1);
        if (x < w - 1) SEED(z, y, x + 1);
    }
#undef SEED
}

/* Fill the holes of label l inside box b (background of the box not
 * connected to the box border) and write `val` over the label and its holes. */
static void fill_one(uint32_t *labels, const fvol *v, const dyn_bbox *b, uint32_t l, uint32_t val,
                     unsigned char *out, int *queue)
{
    int d = b->p1 - b->p0, h = b->r1 - b->r0, w = b->c1 - b->c0;
    flood_outside(labels, v, b, l, out, queue);
    int any = 0;
    for (int z = 0; z < d && !any; z++)
        for (int y = 0; y < h && !any; y++)
            for (int x = 0; x < w; x++)
                if (labels[vidx(v, b, z, y, x)] == l) {
                    any = 1;
                    break;
                }
    if (!any)
        return; /* overwritten by an earlier fill: nothing to fill */
    size_t q = 0;
    for (int z = 0; z < d; z++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++, q++)
                if (!out[q])
                    labels[vidx(v, b, z, y, x)] = val;
}

/* Hole voxels of label l in box b (neither l nor outside): their number;
 * their indices into dst if not NULL; *other set if one holds a kept label. */
static size_t holes_of(const uint32_t *labels, const fvol *v, const dyn_bbox *b, uint32_t l,
                       const unsigned char *keep, unsigned char *out, int *queue, size_t *dst,
                       int *other)
{
    int d = b->p1 - b->p0, h = b->r1 - b->r0, w = b->c1 - b->c0;
    flood_outside(labels, v, b, l, out, queue);
    size_t n = 0, q = 0;
    for (int z = 0; z < d; z++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++, q++) {
                size_t i = vidx(v, b, z, y, x);
                uint32_t val = labels[i];
                if (out[q] || val == l)
                    continue;
                if (keep[val])
                    *other = 1;
                if (dst)
                    dst[n] = i;
                n++;
            }
    return n;
}

/* The labels that get filled, in fill order: item j (1..J) is original label
 * o[j], with value lab[j] in the image the serial algorithm fills (the
 * renumbered one when min_size > 0) and fill value j. */
typedef struct fill_plan {
    const dyn_census *c;
    uint32_t J, *o, *lab;
    unsigned char *keep; /* keep[v]: v (original value) is an item */
} fill_plan;

/* Largest item box, in pixels. */
static size_t max_box(const fill_plan *fp)
{
    size_t m = 0;
    for (uint32_t j = 1; j <= fp->J; j++) {
        size_t box = box_voxels(fp->c->box + fp->o[j]);
        if (box > m)
            m = box;
    }
    return m;
}

/* Exact serial algorithm, from the original labels and the plan. */
static int fill_serial(uint32_t *labels, size_t npix, const fvol *v, const fill_plan *fp, uint32_t maxl,
                       int min_size, int v3_bug, int threads, uint32_t *K)
{
    if (min_size > 0) { /* first remove_small: items become 1..J */
        uint32_t *map = cp_calloc((size_t)maxl + 1, sizeof *map, "renumber map");
        if (!map)
            return CP_ENOMEM;
        for (uint32_t j = 1; j <= fp->J; j++)
            map[fp->o[j]] = j;
        dyn_apply_map(labels, npix, map, threads);
        free(map);
    }
    size_t maxbox = max_box(fp);
    unsigned char *out = cp_malloc(maxbox, "fill scratch");
    int *queue = cp_malloc_array(maxbox, sizeof *queue, "fill queue");
    if (!out || !queue) {
        free(out), free(queue);
        return CP_ENOMEM;
    }
    for (uint32_t j = 1; j <= fp->J; j++)
        fill_one(labels, v, fp->c->box + fp->o[j], fp->lab[j], j, out, queue);
    free(out), free(queue);
    if (min_size > 0)
        return remove_small(labels, npix, min_size, v3_bug, threads, K);
    *K = dyn_max_label(labels, npix, threads);
    return CP_OK;
}

/* Fast path, when no label's hole holds a pixel of another kept label. Then
 * the serial fills commute, so each can be computed on the original image:
 * fill j only writes j over label j and over hole pixels that are 0 (or a
 * label removed by the first remove_small); no earlier fill changes whether a
 * pixel equals a later label, so every flood is the same as on the original.
 * The hole sets are disjoint: were a pixel in the holes of A and B, its hole
 * component in A (no kept label, so not B) could not reach B's box border,
 * so it would lie in B's hole, and so would the A pixels bounding it: a kept
 * label in B's hole. Hence the fill order does not matter. A hole pixel
 * is never in the first row (2D) or plane (3D) of its label's box, which
 * holds the label's first pixel in raster order, so fills keep first
 * appearances and the second remove_small sees 1..J in first-appearance
 * order with counts label + holes. */
static int fill_fast(uint32_t *labels, size_t npix, const fill_plan *fp, const size_t *nhole,
                     const size_t *hole, const size_t *hoff, uint32_t maxl, int min_size,
                     int v3_bug, int threads, uint32_t *K)
{
    uint32_t J = fp->J;
    size_t *cnt = cp_malloc_array((size_t)J + 1, sizeof *cnt, "mask sizes");
    unsigned char *rm = cp_calloc((size_t)J + 1, 1, "small masks");
    uint32_t *map = cp_calloc((size_t)J + 1, sizeof *map, "renumber map");
    uint32_t *g = cp_calloc((size_t)maxl + 1, sizeof *g, "label map");
    int rc = CP_ENOMEM;
    if (!cnt || !rm || !map || !g)
        goto done;
    size_t fg = 0;
    for (uint32_t j = 1; j <= J; j++) {
        cnt[j] = fp->c->box[fp->o[j]].npix + nhole[j];
        fg += cnt[j];
    }
    cnt[0] = npix - fg;
    if (min_size > 0)
        small_labels(cnt, J, min_size, v3_bug, rm);
    *K = 0;
    for (uint32_t j = 1; j <= J; j++)
        map[j] = rm[j] ? 0 : ++*K;
    for (uint32_t j = 1; j <= J; j++)
        g[fp->o[j]] = map[j];
    dyn_apply_map(labels, npix, g, threads);
#pragma omp parallel for num_threads(dyn_threads(threads)) schedule(dynamic, 64)
    for (uint32_t j = 1; j <= J; j++)
        for (size_t k = 0; k < nhole[j]; k++)
            labels[hole[hoff[j] + k]] = map[j];
    rc = CP_OK;
done:
    free(cnt), free(rm), free(map), free(g);
    return rc;
}

/* Holes of every item, computed on the original labels: nhole[j] pixels at
 * hole[hoff[j]..]. Stops at *other = 1 if a hole holds a kept label (then
 * hole is not filled in). */
static int find_holes(const uint32_t *labels, const fvol *v, const fill_plan *fp, int threads,
                      size_t *nhole, size_t *hoff, size_t **hole, int *other)
{
    *hole = NULL;
    size_t maxbox = max_box(fp);
    int T = dyn_threads(threads);
    unsigned char *out = cp_malloc_array((size_t)T, maxbox, "fill scratch");
    int *queue = cp_malloc_array((size_t)T * maxbox, sizeof *queue, "fill queue");
    int oth = 0, rc = CP_ENOMEM;
    if (!out || !queue)
        goto done;
#pragma omp parallel num_threads(T) reduction(| : oth)
    {
        size_t t = (size_t)omp_get_thread_num();
#pragma omp for schedule(dynamic, 16)
        for (uint32_t j = 1; j <= fp->J; j++)
            nhole[j] = holes_of(labels, v, fp->c->box + fp->o[j], fp->o[j], fp->keep,
                                out + t * maxbox, queue + t * maxbox, NULL, &oth);
    }
    rc = CP_OK;
    if (oth)
        goto done;
    size_t tot = 0;
    for (uint32_t j = 1; j <= fp->J; j++) {
        hoff[j] = tot;
        tot += nhole[j];
    }
    rc = CP_ENOMEM;
    if (!(*hole = cp_malloc_array(tot + 1, sizeof **hole, "hole pixels")))
        goto done;
    /* few labels have holes: flood those again to list them */
#pragma omp parallel num_threads(T)
    {
        size_t t = (size_t)omp_get_thread_num();
        int dummy = 0;
#pragma omp for schedule(dynamic, 1)
        for (uint32_t j = 1; j <= fp->J; j++)
            if (nhole[j])
                holes_of(labels, v, fp->c->box + fp->o[j], fp->o[j], fp->keep,
                         out + t * maxbox, queue + t * maxbox, *hole + hoff[j], &dummy);
    }
    rc = CP_OK;
done:
    free(out), free(queue);
    *other = oth;
    return rc;
}

/* The fill plan from the census: the labels surviving the first
 * remove_small in first-appearance order (they become 1..J), or without it
 * the labels present in increasing order. */
static int make_plan(fill_plan *fp, const dyn_census *c, uint32_t maxl, int min_size, int v3_bug)
{
    memset(fp, 0, sizeof *fp);
    fp->c = c;
    fp->o = cp_malloc_array((size_t)maxl + 1, sizeof *fp->o, "fill order");
    fp->lab = cp_malloc_array((size_t)maxl + 1, sizeof *fp->lab, "fill labels");
    fp->keep = cp_calloc((size_t)maxl + 1, 1, "kept labels");
    size_t *cnt = min_size > 0 ? census_counts(c, maxl) : NULL;
    unsigned char *rm = min_size > 0 ? cp_malloc((size_t)maxl + 1, "small masks") : NULL;
    if (!fp->o || !fp->lab || !fp->keep || (min_size > 0 && (!cnt || !rm))) {
        free(cnt), free(rm);
        return CP_ENOMEM;
    }
    if (min_size > 0) {
        small_labels(cnt, maxl, min_size, v3_bug, rm);
        for (uint32_t k = 0; k < c->norder; k++)
            if (!rm[c->order[k]]) {
                fp->J++;
                fp->o[fp->J] = c->order[k];
                fp->lab[fp->J] = fp->J;
            }
    } else {
        for (uint32_t l = 1; l <= maxl; l++)
            if (c->box[l].npix) {
                fp->J++;
                fp->o[fp->J] = fp->lab[fp->J] = l;
            }
    }
    for (uint32_t j = 1; j <= fp->J; j++)
        fp->keep[fp->o[j]] = 1;
    free(cnt), free(rm);
    return CP_OK;
}

static void free_plan(fill_plan *fp)
{
    free(fp->o), free(fp->lab), free(fp->keep);
}

int cp_dyn_fill_holes_and_remove_small(uint32_t *labels, int Ly, int Lx, int min_size,
                                       int v3_label_bug)
{
    return dyn_fill_holes_and_remove_small(labels, Ly, Lx, min_size, v3_label_bug, 0, NULL);
}

int cp_dyn_fill_holes_and_remove_small3d(uint32_t *labels, int Lz, int Ly, int Lx, int min_size)
{
    size_t nvox;
    int rc = dyn_dims3(Lz, Ly, Lx, "fill_holes", &nvox);
    if (rc != CP_OK)
        return rc;
    return dyn_fill_holes_nd(labels, Lz, Ly, Lx, 1, min_size, 0, 0, NULL);
}

int dyn_fill_holes_and_remove_small(uint32_t *labels, int Ly, int Lx, int min_size,
                                    int v3_label_bug, int threads, uint32_t *ncells)
{
    if (ncells)
        *ncells = 0;
    if (Ly <= 0 || Lx <= 0)
        return cp_error(CP_EINVAL, "fill_holes: bad image size %dx%d", Lx, Ly);
    return dyn_fill_holes_nd(labels, 1, Ly, Lx, 0, min_size, v3_label_bug, threads, ncells);
}

int dyn_fill_holes_nd(uint32_t *labels, int Lz, int Ly, int Lx, int d3, int min_size,
                      int v3_label_bug, int threads, uint32_t *ncells)
{
    if (ncells)
        *ncells = 0;
    size_t npix = (size_t)Lz * Ly * Lx;
    fvol v = {Ly, Lx, d3};
    uint32_t maxl = dyn_max_label(labels, npix, threads);
    if (!maxl)
        return CP_OK;
    dyn_census c;
    if (dyn_census_make(&c, labels, npix, Ly, Lx, maxl, threads) != CP_OK)
        return CP_ENOMEM;
    fill_plan fp;
    size_t *nhole = NULL, *hoff = NULL, *hole = NULL;
    uint32_t K = 0;
    int other = 0;
    int rc = make_plan(&fp, &c, maxl, min_size, v3_label_bug);
    if (rc != CP_OK)
        goto done;
    if (max_box(&fp) > (size_t)INT_MAX) { /* flood queues hold int offsets */
        rc = cp_error(CP_ELIMIT, "fill_holes: a mask's bounding box exceeds %d voxels", INT_MAX);
        goto done;
    }
    rc = CP_ENOMEM;
    nhole = cp_calloc((size_t)fp.J + 1, sizeof *nhole, "hole sizes");
    hoff = cp_calloc((size_t)fp.J + 1, sizeof *hoff, "hole offsets");
    if (!nhole || !hoff)
        goto done;
    if ((rc = find_holes(labels, &v, &fp, threads, nhole, hoff, &hole, &other)) != CP_OK)
        goto done;
    if (other)
        rc = fill_serial(labels, npix, &v, &fp, maxl, min_size, v3_label_bug, threads, &K);
    else
        rc = fill_fast(labels, npix, &fp, nhole, hole, hoff, maxl, min_size, v3_label_bug,
                       threads, &K);
done:
    free_plan(&fp);
    dyn_census_free(&c);
    free(nhole), free(hoff), free(hole);
    if (rc == CP_OK && ncells)
        *ncells = K;
    return rc;
}
