/* libcellpose image I/O: TIFF (libtiff), PNG (libpng), NPY (numpy arrays). */
#ifndef CELLPOSE_IO_H
#define CELLPOSE_IO_H

#include <stddef.h>
#include <stdint.h>

#include "cellpose/image.h"

#ifdef __cplusplus
extern "C" {
#endif

/* How the pages of a multi-page TIFF become an image. */
typedef enum cp_pages {
    CP_PAGES_AUTO = 0,  /* ImageJ hyperstack metadata decides; else pages become
                           channels when there are at most 4 single-sample pages,
                           planes (Z) otherwise */
    CP_PAGES_CHANNELS,  /* every page is a channel */
    CP_PAGES_PLANES,    /* every page is a plane (Z) */
    CP_PAGES_FIRST      /* read the first page only */
} cp_pages;

typedef struct cp_read_opts {
    cp_pages pages;
} cp_read_opts;

/* Read .tif/.tiff, .png or .npy (optionally .npy.gz); the format is detected
 * from the file's magic bytes, not its name. opts may be NULL. */
int cp_image_read(const char *path, const cp_read_opts *opts, cp_image **out);

typedef enum cp_compression {
    CP_COMPRESS_DEFAULT = 0, /* deflate for TIFF */
    CP_COMPRESS_NONE,
    CP_COMPRESS_DEFLATE,
    CP_COMPRESS_LZW,
    CP_COMPRESS_PACKBITS
} cp_compression;

typedef struct cp_write_opts {
    cp_compression compression;
    /* TIFF: write an ImageJ hyperstack description (channels=, slices=) so Fiji
     * opens multi-page output as channels/planes. */
    int imagej;
    /* TIFF Software tag; NULL = "cptools <version>". */
    const char *software;
} cp_write_opts;

/* Write atomically (temp + rename). The format follows the extension:
 * .tif/.tiff (u8/u16/u32/i32/f32; planes and channels as pages, or one
 * interleaved page for 3-4 channel u8/u16), .png (u8/u16, 1-4 channels),
 * .npy. opts may be NULL. */
int cp_image_write(const char *path, const cp_image *img, const cp_write_opts *opts);
int cp_tiff_write(const char *path, const cp_image *img, const cp_write_opts *opts);
int cp_png_write(const char *path, const cp_image *img);
/* The TIFF cp_tiff_write would write, as bytes in memory (*data is owned by
 * the caller, free()). `name` is used in messages. */
int cp_tiff_write_mem(const cp_image *img, const cp_write_opts *opts, const char *name, void **data, size_t *size);

/* N-dimensional arrays, the NPY view of the world (C order, native endian once
 * loaded). bool loads as CP_U8. */
#define CP_MAX_DIMS 8
typedef struct cp_array {
    int ndim;
    size_t shape[CP_MAX_DIMS];
    cp_dtype dtype;
    void *data;
} cp_array;

int cp_array_create(cp_array **out, int ndim, const size_t *shape, cp_dtype dtype);
void cp_array_free(cp_array *a);
size_t cp_array_count(const cp_array *a);
/* Reads NPY format 1.0/2.0/3.0, either byte order, C or Fortran order; reads
 * gzip-compressed files (.npy.gz) transparently. */
int cp_npy_read(const char *path, cp_array **out);
/* Writes NPY 1.0 (little endian, C order) atomically. */
int cp_npy_write(const char *path, const cp_array *a);

#ifdef __cplusplus
}
#endif
#endif
