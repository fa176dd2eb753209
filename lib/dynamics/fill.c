/* Fill holes and remove small masks (spec 5.6), Cellpose's
 * fill_holes_and_remove_small_masks: v4 behaviour by default, v3.1.1.3's
 * label-removal bug on request. */
#include <stdlib.h>
#include <string.h>

#include "cellpose/dynamics.h"
#include "core/internal.h"
#include "dynamics/internal.h"

/* Labels with fewer than min_size pixels -> 0, then renumber. The v3 bug:
 * Cellpose 3 takes the counts of the values present (0 assumed first), and
 * removes label "position + 1" instead of the label at that position. */
static int remove_small(uint32_t *labels, size_t npix, int min_size, int v3_bug)
{
    uint32_t maxl = dyn_max_label(labels, npix);
    size_t *cnt = cp_calloc((size_t)maxl + 1, sizeof *cnt, "mask sizes");
    unsigned char *rm = cp_calloc((size_t)maxl + 1, 1, "small masks");
    if (!cnt || !rm) {
        free(cnt);
        free(rm);
        return CP_ENOMEM;
    }
    for (size_t i = 0; i < npix; i++)
        cnt[labels[i]]++;
    int any = 0;
    if (!v3_bug) {
        for (uint32_t l = 1; l <= maxl; l++)
            if (cnt[l] && cnt[l] < (size_t)min_size)
                rm[l] = any = 1;
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
    if (any)
        for (size_t i = 0; i < npix; i++)
            if (rm[labels[i]])
                labels[i] = 0;
    free(cnt);
    free(rm);
    return cp_dyn_renumber(labels, npix, NULL);
}

/* Fill the holes of label l inside box b (background of the box not
 * 4-connected to the box border) and write `val` over the label and its holes. */
static void fill_one(uint32_t *labels, int Lx, const dyn_bbox *b, uint32_t l, uint32_t val,
                     unsigned char *out, int *queue)
{
    int h = b->r1 - b->r0, w = b->c1 - b->c0;
    memset(out, 0, (size_t)h * w);
    size_t qh = 0, qt = 0;
#define LAB(y, x) labels[(size_t)(b->r0 + (y)) * Lx + b->c0 + (x)]
#define SEED(y, x)                                                                 \
    do {                                                                           \
        int yy_ = (y), xx_ = (x);                                                  \
        if (!out[(size_t)yy_ * w + xx_] && LAB(yy_, xx_) != l) {                   \
            out[(size_t)yy_ * w + xx_] = 1;                                        \
            queue[qt++] = yy_ * w + xx_;                                           \
        }                                                                          \
    } while (0)
    for (int x = 0; x < w; x++) {
        SEED(0, x);
        SEED(h - 1, x);
    }
    for (int y = 0; y < h; y++) {
        SEED(y, 0);
        SEED(y, w - 1);
    }
    while (qh < qt) {
        int q = queue[qh++], y = q / w, x = q % w;
        if (y > 0) SEED(y - 1, x);
        if (y < h - 1) SEED(y + 1, x);
        if (x > 0) SEED(y, x - 1);
        if (x < w - 1) SEED(y, x + 1);
    }
    int any = 0;
    for (int y = 0; y < h && !any; y++)
        for (int x = 0; x < w; x++)
            if (LAB(y, x) == l) {
                any = 1;
                break;
            }
    if (!any)
        return; /* overwritten by an earlier fill: nothing to fill */
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            if (!out[(size_t)y * w + x])
                LAB(y, x) = val;
#undef SEED
#undef LAB
}

int cp_dyn_fill_holes_and_remove_small(uint32_t *labels, int Ly, int Lx, int min_size,
                                       int v3_label_bug)
{
    if (Ly <= 0 || Lx <= 0)
        return cp_error(CP_EINVAL, "fill_holes: bad image size %dx%d", Lx, Ly);
    size_t npix = (size_t)Ly * Lx;
    int rc;
    if (min_size > 0 && (rc = remove_small(labels, npix, min_size, v3_label_bug)) != CP_OK)
        return rc;
    uint32_t maxl = dyn_max_label(labels, npix);
    if (maxl) {
        dyn_bbox *bb = dyn_bboxes(labels, Ly, Lx, maxl);
        if (!bb)
            return CP_ENOMEM;
        size_t maxbox = 0;
        for (uint32_t l = 1; l <= maxl; l++) {
            size_t box = bb[l].npix ? (size_t)(bb[l].r1 - bb[l].r0) * (bb[l].c1 - bb[l].c0) : 0;
            if (box > maxbox)
                maxbox = box;
        }
        unsigned char *out = cp_malloc(maxbox, "fill scratch");
        int *queue = cp_malloc_array(maxbox, sizeof *queue, "fill queue");
        if (!out || !queue) {
            free(bb), free(out), free(queue);
            return CP_ENOMEM;
        }
        uint32_t j = 0;
        for (uint32_t l = 1; l <= maxl; l++) {
            if (!bb[l].npix)
                continue;
            fill_one(labels, Lx, bb + l, l, ++j, out, queue);
        }
        free(bb), free(out), free(queue);
    }
    if (min_size > 0 && (rc = remove_small(labels, npix, min_size, v3_label_bug)) != CP_OK)
        return rc;
    return CP_OK;
}
