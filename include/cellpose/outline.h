/* libcellpose outlines: cell borders traced as OpenCV's findContours does
 * (RETR_EXTERNAL, CHAIN_APPROX_NONE), for ImageJ outlines/ROIs, overlays and
 * boundary scores. */
#ifndef CELLPOSE_OUTLINE_H
#define CELLPOSE_OUTLINE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cp_outline {
    uint32_t label;
    size_t n;          /* points */
    int32_t *xy;       /* x0, y0, x1, y1, ... (column, row) */
} cp_outline;

/* For every label present, in increasing label order: the longest external
 * contour of (masks == label), starting at the component's first pixel in
 * row-major order and walking down its left side first — Cellpose's
 * outlines_list. Ties in length keep the first component in raster order. */
int cp_outlines_list(const uint32_t *masks, int height, int width, cp_outline **out, size_t *count);
void cp_outlines_free(cp_outline *o, size_t count);

/* out[height*width] = 1 on the pixels of every external contour of every
 * label (hole borders excluded), else 0 — Cellpose's masks_to_outlines. */
int cp_masks_to_outlines(const uint32_t *masks, int height, int width, uint8_t *out);

#ifdef __cplusplus
}
#endif
#endif
