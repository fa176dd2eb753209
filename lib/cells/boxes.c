/* Bounding boxes and areas of every label in one pass over the mask. */
#include <stdlib.h>
#include <string.h>

#include "cellpose/cells.h"
#include "core/internal.h"

/* Label -> box index. Open addressing: labels can be any value below 2^32
 * (gaps, huge numbers), so a table indexed by label could be enormous. */
typedef struct label_map {
    uint32_t *keys;   /* 0 = empty (label 0 is never stored) */
    uint32_t *vals;
    size_t cap;
} label_map;

static size_t slot_of(uint32_t label, size_t cap) { return (size_t)(label * 2654435761u) & (cap - 1); }

static int map_grow(label_map *m)
{
    size_t cap = m->cap ? m->cap * 2 : 1024;
    uint32_t *k = cp_calloc(cap, sizeof *k, "label table");
    uint32_t *v = cp_malloc_array(cap, sizeof *v, "label table");
    if (!k || !v) {
        free(k);
        free(v);
        return CP_ENOMEM;
    }
    for (size_t i = 0; i < m->cap; i++)
        if (m->keys[i]) {
            size_t j = slot_of(m->keys[i], cap);
            while (k[j])
                j = (j + 1) & (cap - 1);
            k[j] = m->keys[i];
            v[j] = m->vals[i];
        }
    free(m->keys);
    free(m->vals);
    m->keys = k;
    m->vals = v;
    m->cap = cap;
    return CP_OK;
}

static int cmp_box(const void *a, const void *b)
{
    uint32_t x = ((const cp_cell_box *)a)->label, y = ((const cp_cell_box *)b)->label;
    return (x > y) - (x < y);
}

int cp_cell_boxes(const uint32_t *labels, int width, int height, cp_cell_box **boxes, size_t *n)
{
    *boxes = NULL;
    *n = 0;
    if (width <= 0 || height <= 0)
        return cp_error(CP_EINVAL, "cell boxes: invalid size %d x %d", height, width);
    label_map m = {0};
    cp_cell_box *b = NULL;
    size_t nb = 0, cap = 0;
    int rc = map_grow(&m);
    for (int y = 0; y < height && rc == CP_OK; y++) {
        const uint32_t *row = labels + (size_t)y * width;
        int x = 0;
        while (x < width) {
            uint32_t lab = row[x];
            int x0 = x;
            while (x < width && row[x] == lab)
                x++;
            if (lab == 0)
                continue;
            size_t j = slot_of(lab, m.cap);
            while (m.keys[j] && m.keys[j] != lab)
                j = (j + 1) & (m.cap - 1);
            cp_cell_box *c;
            if (m.keys[j]) {
                c = &b[m.vals[j]];
            } else {
                if (nb == cap) {
                    size_t nc = cap ? cap * 2 : 256;
                    cp_cell_box *t = realloc(b, nc * sizeof *t);
                    if (!t) {
                        rc = cp_error(CP_ENOMEM, "cell boxes: out of memory");
                        break;
                    }
                    b = t;
                    cap = nc;
                }
                if ((nb + 1) * 2 > m.cap) {
                    if ((rc = map_grow(&m)) != CP_OK)
                        break;
                    j = slot_of(lab, m.cap);
                    while (m.keys[j])
                        j = (j + 1) & (m.cap - 1);
                }
                m.keys[j] = lab;
                m.vals[j] = (uint32_t)nb;
                c = &b[nb++];
                c->label = lab;
                c->min_row = y;
                c->min_col = x0;
                c->max_col = x;
                c->area = 0;
            }
            if (x0 < c->min_col)
                c->min_col = x0;
            if (x > c->max_col)
                c->max_col = x;
            c->max_row = y + 1;
            c->area += (uint64_t)(x - x0);
        }
    }
    free(m.keys);
    free(m.vals);
    if (rc != CP_OK) {
        free(b);
        return rc;
    }
    if (nb)
        qsort(b, nb, sizeof *b, cmp_box);
    *boxes = b;
    *n = nb;
    return CP_OK;
}

void cp_cell_crop_rect(const cp_cell_box *b, int pad, int width, int height,
                       int *min_row, int *min_col, int *max_row, int *max_col)
{
    if (pad < 0)
        pad = 0;
    /* 64-bit so a huge pad cannot overflow before clipping. */
    int64_t r0 = (int64_t)b->min_row - pad, c0 = (int64_t)b->min_col - pad;
    int64_t r1 = (int64_t)b->max_row + pad, c1 = (int64_t)b->max_col + pad;
    *min_row = r0 < 0 ? 0 : (int)r0;
    *min_col = c0 < 0 ? 0 : (int)c0;
    *max_row = r1 > height ? height : (int)r1;
    *max_col = c1 > width ? width : (int)c1;
}
