/* libcellpose cells: one 16-bit TIFF per labelled cell (crop of the bounding
 * box plus padding), written to a folder or a ZIP archive, with a cells.csv
 * index. This is what `cpcells` runs. Label volumes (planes > 1) give one
 * ImageJ hyperstack per cell (Z planes x C channels). */
#ifndef CELLPOSE_CELLS_H
#define CELLPOSE_CELLS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "cellpose/image.h"
#include "cellpose/io.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A cell's extent. Planes, rows and columns are 0-based; the box is
 * half-open like scikit-image's regionprops bbox: rows min_row .. max_row-1.
 * A 2-D image is one plane: min_plane 0, max_plane 1. */
typedef struct cp_cell_box {
    uint32_t label;
    int min_plane, min_row, min_col, max_plane, max_row, max_col;
    uint64_t area;   /* pixels (voxels) carrying the label */
} cp_cell_box;

/* One pass over labels[planes*height*width] (plane, row, column order): the
 * box and area of every label > 0 that occurs, in increasing label order.
 * *boxes is owned by the caller (NULL when *n == 0). Labels may have gaps and
 * any value < 2^32. planes is 1 for a 2-D image. */
int cp_cell_boxes(const uint32_t *labels, int width, int height, int planes, cp_cell_box **boxes, size_t *n);

/* The crop of a box: the box grown by pad pixels on each side in rows and
 * columns and by pad_z planes above and below (pad_z < 0: pad), clipped to
 * the image (half-open, like the box). label and area are copied. */
void cp_cell_crop_box(const cp_cell_box *b, int pad, int pad_z, int width, int height, int planes,
                      cp_cell_box *crop);

/* How samples become 16-bit. u8 and u16 images keep their values
 * (scaled == 0) unless a range is given. Every other type, or any type with a
 * range, is mapped linearly:
 *     out = floor((v - lo) * 65535 / (hi - lo) + 0.5), clipped to 0..65535
 * computed in double precision; NaN gives 0, v <= lo gives 0, v >= hi gives
 * 65535. Without a range, lo and hi are the smallest and largest finite sample
 * of the whole image (all channels); if hi == lo every sample maps to 0. */
typedef struct cp_cell_scale {
    int scaled;
    double lo, hi;
} cp_cell_scale;

typedef struct cp_cells_opts {
    int pad;               /* pixels added around the box (>= 0) */
    int pad_z;             /* volumes: planes added above and below (< 0: pad) */
    int keep_background;   /* keep pixels of the crop outside the cell (else 0) */
    int use_range;         /* scale from range_lo..range_hi (range_hi > range_lo) */
    double range_lo, range_hi;
    int mask_too;          /* also write cell_NNNN_mask.tif (u8, 255 inside) */
    const uint32_t *labels;   /* only these labels (NULL = all) */
    size_t n_labels;
    uint64_t min_area;     /* skip cells with fewer pixels (voxels) */
    int overwrite;         /* replace an existing output */
    /* Physical voxel size recorded in every cell file (TIFF resolution and
     * ImageJ unit= and spacing=, as cp_image_voxel_size reads them back);
     * NULL = uncalibrated files. */
    const cp_voxel_size *voxel;
    const char *image_name;   /* names the image in messages (NULL = "image") */
    /* Called after each cell; a non-zero return cancels (CP_EINTR, nothing
     * left behind). May be NULL. */
    int (*progress)(void *ud, size_t done, size_t total);
    void *progress_ud;
} cp_cells_opts;

/* Defaults: everything 0 / NULL, except pad_z = -1 (as pad). */
void cp_cells_opts_init(cp_cells_opts *o);

/* The scaling the options give for this image. */
int cp_cells_scale(const cp_image *img, const cp_cells_opts *o, cp_cell_scale *s);

/* One cell: a u16 image of the crop (channels and planes as in img: the
 * crop's planes of a volume) and, when mask is not NULL, a u8 image of the
 * crop with 255 on the cell's pixels. labels has
 * img->planes*img->height*img->width values. */
int cp_cell_extract(const cp_image *img, const uint32_t *labels, const cp_cell_box *box,
                    const cp_cells_opts *o, const cp_cell_scale *s, cp_image **crop, cp_image **mask);

/* File name of a cell: "cell_" + label zero-padded to max(4, digits of
 * max_label) + suffix (".tif" or "_mask.tif"). Writes at most size bytes. */
void cp_cell_file_name(char *buf, size_t size, uint32_t label, uint32_t max_label, const char *suffix);

typedef struct cp_cells_result {
    size_t n_cells;        /* cells written */
    size_t n_files;        /* files written, cells.csv included */
    uint64_t bytes;        /* bytes of those files (before ZIP compression) */
    size_t n_missing;      /* requested labels (opts.labels) not in the masks */
    uint32_t first_missing;
} cp_cells_result;

/* Write the cells of img (any type, any channels) labelled by masks (one
 * integer channel, same planes, height and width) into the folder outdir:
 * cell_NNNN.tif per cell and cells.csv. Masks of one plane give 2-D cells
 * (one page per channel); masks of several planes give each cell as an
 * ImageJ hyperstack of its crop's planes x channels (pixel data contiguous,
 * channels fastest), and cells.csv with plane columns. The folder is built under a hidden
 * temporary name next to outdir and renamed into place at the end, so outdir
 * exists only when complete. An existing outdir is refused (CP_EEXIST) unless
 * opts.overwrite. masks_name names the label image in messages. res may be
 * NULL. */
int cp_cells_write_dir(const cp_image *img, const cp_image *masks, const char *masks_name,
                       const char *outdir, const cp_cells_opts *o, cp_cells_result *res);

/* The same files as entries of a ZIP archive (label order, cells.csv last),
 * written atomically to zip_path. */
int cp_cells_write_zip(const cp_image *img, const cp_image *masks, const char *masks_name,
                       const char *zip_path, const cp_cells_opts *o, cp_cells_result *res);
/* ... or streamed to fp (e.g. stdout); name is used in messages. */
int cp_cells_write_zip_fp(const cp_image *img, const cp_image *masks, const char *masks_name,
                          FILE *fp, const char *name, const cp_cells_opts *o, cp_cells_result *res);

/* cpseg output pairing: for "DIR/NAME_cp_masks.<ext>" find the image
 * "DIR/NAME.<ext>" (.tif .tiff .png .npy .npy.gz, also upper case). *image and
 * *name ("NAME") are newly allocated. CP_EIO if no image or CP_EINVAL if more
 * than one candidate exists, or if the path does not end in _cp_masks.<ext>. */
int cp_cells_seg_image(const char *masks_path, char **image, char **name);

#ifdef __cplusplus
}
#endif
#endif
