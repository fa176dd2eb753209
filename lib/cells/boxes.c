/* Bounding boxes and areas of every label: the measure stage's scan (one pass,
 * rows in parallel), in the public cp_cell_box form. */
#include <stdlib.h>
#include <string.h>

#include "cellpose/cells.h"
#include "core/internal.h"
#include "measure/measure_internal.h"

int cp_cell_boxes(const uint32_t *labels, int width, int height, int planes, cp_cell_box **boxes, size_t *n)
{
    *boxes = NULL;
    *n = 0;
    if (width <= 0 || height <= 0 || planes <= 0)
        return cp_error(CP_EINVAL, "cell boxes: invalid size %d x %d x %d", planes, height, width);
    label_index ix;
    int rc = label_index_build(labels, (size_t)planes * height * width, &ix);
    if (rc != CP_OK || ix.n == 0) {
        label_index_free(&ix);
        return rc;
    }
    cell_box *box = cp_malloc_array(ix.n, sizeof *box, "bounding boxes");
    cp_cell_box *b = cp_malloc_array(ix.n, sizeof *b, "bounding boxes");
    rc = box && b ? measure_boxes(labels, planes, height, width, &ix, box) : CP_ENOMEM;
    for (size_t i = 0; rc == CP_OK && i < ix.n; i++)
        b[i] = (cp_cell_box){.label = ix.labels[i],
                             .min_plane = box[i].z0, .min_row = box[i].r0, .min_col = box[i].c0,
                             .max_plane = box[i].z1, .max_row = box[i].r1, .max_col = box[i].c1,
                             .area = box[i].area};
    free(box);
    if (rc == CP_OK) {
        *boxes = b;
        *n = ix.n;
    } else {
        free(b);
    }
    label_index_free(&ix);
    return rc;
}

/* [lo - pad, hi + pad) clipped to [0, size); 64-bit so a huge pad cannot
 * overflow before clipping. */
static void grow(int lo, int hi, int pad, int size, int *out_lo, int *out_hi)
{
    int64_t a = (int64_t)lo - pad, b = (int64_t)hi + pad;
    *out_lo = a < 0 ? 0 : (int)a;
    *out_hi = b > size ? size : (int)b;
}

void cp_cell_crop_box(const cp_cell_box *b, int pad, int pad_z, int width, int height, int planes,
                      cp_cell_box *crop)
{
    if (pad < 0)
        pad = 0;
    if (pad_z < 0)
        pad_z = pad;
    crop->label = b->label;
    crop->area = b->area;
    grow(b->min_plane, b->max_plane, pad_z, planes, &crop->min_plane, &crop->max_plane);
    grow(b->min_row, b->max_row, pad, height, &crop->min_row, &crop->max_row);
    grow(b->min_col, b->max_col, pad, width, &crop->min_col, &crop->max_col);
}
