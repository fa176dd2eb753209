/* libcellpose ImageJ interchange: outlines text files and ROI records. */
#ifndef CELLPOSE_IMAGEJ_H
#define CELLPOSE_IMAGEJ_H

#include <stddef.h>
#include <stdint.h>

#include "cellpose/outline.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Cellpose's NAME_cp_outlines.txt: one line per outline in the given order,
 * "x0,y0,x1,y1,..."; outlines with 4 points or fewer give an empty line
 * (ImageJ's imagej_roi_converter.py reads this). Written atomically. */
int cp_write_outlines_txt(const char *path, const cp_outline *o, size_t count);

/* Encode one outline as an ImageJ .roi record (freehand polygon, integer
 * coordinates relative to its bounding box, options OVERLAY_BACKGROUNDS |
 * OVERLAY_LABELS, name in header2), as roifile's ImagejRoi.frompoints writes
 * it. *buf is allocated; *len its size. Coordinates must fit in 16 bits. */
int cp_roi_encode(const cp_outline *o, const char *name, uint8_t **buf, size_t *len);
/* The same with ImageJ's position field (header offset 56) set to `position`
 * (the 1-based slice of a Z-stack) when it is > 0. */
int cp_roi_encode_at(const cp_outline *o, const char *name, int position, uint8_t **buf, size_t *len);

#ifdef __cplusplus
}
#endif
#endif
