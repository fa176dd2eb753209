/* Border following (Suzuki & Abe, as OpenCV's findContours with RETR_EXTERNAL
 * and CHAIN_APPROX_NONE) over each label's bounding box. */
#include <stdlib.h>
#include <string.h>

#include "cellpose/outline.h"
#include "core/internal.h"

typedef struct {
    uint32_t label;
    int y0, x0, y1, x1; /* inclusive */
} label_box;

/* Directions in counter-clockwise order as displayed with rows going down. */
static const int DY[8] = {0, -1, -1, -1, 0, 1, 1, 1};
static const int DX[8] = {1, 1, 0, -1, -1, -1, 0, 1};

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Bounding boxes of every label present, in increasing label order. */
static int label_boxes(const uint32_t *m, int H, int W, label_box **out, size_t *count)
{
    size_t npix = (size_t)H * W;
    uint32_t maxlab = 0;
    for (size_t i = 0; i < npix; i++)
        if (m[i] > maxlab)
            maxlab = m[i];
    *out = NULL;
    *count = 0;
    if (maxlab == 0)
        return CP_OK;
    /* Dense labels index directly; sparse ones (huge values) go through a
     * sorted list of the values present. */
    uint32_t *values = NULL;
    size_t nval = 0;
    int dense = maxlab <= 2 * npix + 16;
    if (!dense) {
        values = cp_malloc_array(npix, sizeof *values, "label list");
        if (!values)
            return CP_ENOMEM;
        for (size_t i = 0; i < npix; i++)
            if (m[i])
                values[nval++] = m[i];
        qsort(values, nval, sizeof *values, cmp_u32);
        size_t k = 0;
        for (size_t i = 0; i < nval; i++)
            if (k == 0 || values[k - 1] != values[i])
                values[k++] = values[i];
        nval = k;
    }
    size_t nslot = dense ? (size_t)maxlab + 1 : nval;
    label_box *b = cp_malloc_array(nslot, sizeof *b, "label boxes");
    if (!b) {
        free(values);
        return CP_ENOMEM;
    }
    for (size_t i = 0; i < nslot; i++)
        b[i] = (label_box){dense ? (uint32_t)i : values[i], H, W, -1, -1};
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            uint32_t l = m[(size_t)y * W + x];
            if (!l)
                continue;
            size_t s;
            if (dense)
                s = l;
            else {
                uint32_t *f = bsearch(&l, values, nval, sizeof *values, cmp_u32);
                s = (size_t)(f - values);
            }
            label_box *q = &b[s];
            if (y < q->y0) q->y0 = y;
            if (y > q->y1) q->y1 = y;
            if (x < q->x0) q->x0 = x;
            if (x > q->x1) q->x1 = x;
        }
    size_t k = 0;
    for (size_t i = 0; i < nslot; i++)
        if (b[i].label && b[i].y1 >= 0)
            b[k++] = b[i];
    free(values);
    *out = b;
    *count = k;
    return CP_OK;
}

/* Work grid for one label: its box plus a one-pixel zero frame.
 * 0 = background, 1 = label, 2 = background reachable from outside,
 * 3 = label pixel already assigned to a component. */
typedef struct {
    uint8_t *g;
    int h, w;
    int *stack;
} grid;

static void flood_outside(grid *G)
{
    int n = 0;
    G->g[0] = 2;
    G->stack[n++] = 0;
    while (n) {
        int p = G->stack[--n], y = p / G->w, x = p % G->w;
        static const int ny[4] = {-1, 1, 0, 0}, nx[4] = {0, 0, -1, 1};
        for (int d = 0; d < 4; d++) {
            int yy = y + ny[d], xx = x + nx[d];
            if (yy < 0 || xx < 0 || yy >= G->h || xx >= G->w)
                continue;
            int q = yy * G->w + xx;
            if (G->g[q] == 0) {
                G->g[q] = 2;
                G->stack[n++] = q;
            }
        }
    }
}

static void mark_component(grid *G, int start)
{
    int n = 0;
    G->g[start] = 3;
    G->stack[n++] = start;
    while (n) {
        int p = G->stack[--n], y = p / G->w, x = p % G->w;
        for (int d = 0; d < 8; d++) {
            int q = (y + DY[d]) * G->w + x + DX[d]; /* the frame keeps this in range */
            if (G->g[q] == 1) {
                G->g[q] = 3;
                G->stack[n++] = q;
            }
        }
    }
}

static int is_fg(const grid *G, int y, int x)
{
    uint8_t v = G->g[y * G->w + x];
    return v == 1 || v == 3;
}

/* Trace the outer border starting at (sy, sx), whose west neighbour is
 * background. Points go to pts as (x, y) in grid coordinates; returns count. */
static size_t trace(const grid *G, int sy, int sx, int32_t *pts)
{
    int d1 = -1;
    for (int k = 0; k < 8; k++) { /* clockwise from west */
        int d = (4 - k + 8) % 8;
        if (is_fg(G, sy + DY[d], sx + DX[d])) {
            d1 = d;
            break;
        }
    }
    size_t n = 0;
    if (d1 < 0) {
        pts[0] = sx;
        pts[1] = sy;
        return 1;
    }
    int y1 = sy + DY[d1], x1 = sx + DX[d1];
    int y3 = sy, x3 = sx, dprev = d1; /* direction from (y3,x3) to (y2,x2) */
    for (;;) {
        int d4 = -1;
        for (int k = 1; k <= 8; k++) { /* counter-clockwise after (y2,x2) */
            int d = (dprev + k) % 8;
            if (is_fg(G, y3 + DY[d], x3 + DX[d])) {
                d4 = d;
                break;
            }
        }
        pts[2 * n] = x3;
        pts[2 * n + 1] = y3;
        n++;
        int y4 = y3 + DY[d4], x4 = x3 + DX[d4];
        if (y4 == sy && x4 == sx && y3 == y1 && x3 == x1)
            break;
        dprev = (d4 + 4) % 8; /* from the new point back to the old one */
        y3 = y4;
        x3 = x4;
    }
    return n;
}

typedef int (*contour_fn)(void *ctx, const label_box *b, const int32_t *pts, size_t n);

/* Call fn for every external contour of the label in box b, in raster order. */
static int label_contours(const uint32_t *m, int W, const label_box *b, contour_fn fn, void *ctx)
{
    grid G;
    G.h = b->y1 - b->y0 + 3;
    G.w = b->x1 - b->x0 + 3;
    size_t n = (size_t)G.h * G.w;
    G.g = cp_calloc(n, 1, "outline grid");
    G.stack = cp_malloc_array(n, sizeof *G.stack, "outline stack");
    /* A border visits each pixel at most 4 times (once per side). */
    int32_t *pts = cp_malloc_array(8 * n, sizeof *pts, "outline points");
    int rc = CP_OK;
    if (!G.g || !G.stack || !pts) {
        rc = CP_ENOMEM;
        goto done;
    }
    for (int y = b->y0; y <= b->y1; y++)
        for (int x = b->x0; x <= b->x1; x++)
            if (m[(size_t)y * W + x] == b->label)
                G.g[(y - b->y0 + 1) * G.w + (x - b->x0 + 1)] = 1;
    flood_outside(&G);
    for (int y = 1; y < G.h - 1 && rc == CP_OK; y++)
        for (int x = 1; x < G.w - 1 && rc == CP_OK; x++) {
            int p = y * G.w + x;
            if (G.g[p] != 1)
                continue;
            mark_component(&G, p);
            if (G.g[p - 1] != 2)
                continue; /* inside a hole of another piece: not external */
            size_t k = trace(&G, y, x, pts);
            for (size_t i = 0; i < k; i++) {
                pts[2 * i] += b->x0 - 1;
                pts[2 * i + 1] += b->y0 - 1;
            }
            rc = fn(ctx, b, pts, k);
        }
done:
    free(G.g);
    free(G.stack);
    free(pts);
    return rc;
}

typedef struct {
    cp_outline *o;
} longest_ctx;

static int keep_longest(void *vctx, const label_box *b, const int32_t *pts, size_t n)
{
    longest_ctx *c = vctx;
    (void)b;
    /* OpenCV lists contours bottom-up and Cellpose takes the first longest,
     * so among equal lengths the one found last in raster order wins. */
    if (n < c->o->n)
        return CP_OK;
    int32_t *xy = realloc(c->o->xy, 2 * n * sizeof *xy);
    if (!xy)
        return cp_error(CP_ENOMEM, "out of memory storing outlines");
    memcpy(xy, pts, 2 * n * sizeof *xy);
    c->o->xy = xy;
    c->o->n = n;
    return CP_OK;
}

int cp_outlines_list(const uint32_t *masks, int height, int width, cp_outline **out, size_t *count)
{
    label_box *b;
    size_t nb;
    *out = NULL;
    *count = 0;
    int rc = label_boxes(masks, height, width, &b, &nb);
    if (rc != CP_OK)
        return rc;
    cp_outline *o = cp_calloc(nb ? nb : 1, sizeof *o, "outlines");
    if (!o) {
        free(b);
        return CP_ENOMEM;
    }
    for (size_t i = 0; i < nb && rc == CP_OK; i++) {
        o[i].label = b[i].label;
        longest_ctx c = {&o[i]};
        rc = label_contours(masks, width, &b[i], keep_longest, &c);
    }
    free(b);
    if (rc != CP_OK) {
        cp_outlines_free(o, nb);
        return rc;
    }
    *out = o;
    *count = nb;
    return CP_OK;
}

void cp_outlines_free(cp_outline *o, size_t count)
{
    if (!o)
        return;
    for (size_t i = 0; i < count; i++)
        free(o[i].xy);
    free(o);
}

typedef struct {
    uint8_t *img;
    int width;
} paint_ctx;

static int paint(void *vctx, const label_box *b, const int32_t *pts, size_t n)
{
    paint_ctx *c = vctx;
    (void)b;
    for (size_t i = 0; i < n; i++)
        c->img[(size_t)pts[2 * i + 1] * c->width + pts[2 * i]] = 1;
    return CP_OK;
}

int cp_masks_to_outlines(const uint32_t *masks, int height, int width, uint8_t *out)
{
    label_box *b;
    size_t nb;
    int rc = label_boxes(masks, height, width, &b, &nb);
    if (rc != CP_OK)
        return rc;
    memset(out, 0, (size_t)height * width);
    paint_ctx c = {out, width};
    for (size_t i = 0; i < nb && rc == CP_OK; i++)
        rc = label_contours(masks, width, &b[i], paint, &c);
    free(b);
    return rc;
}
