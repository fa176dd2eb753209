/* Private declarations shared by the image I/O files (lib/io). Not installed. */
#ifndef CP_IO_INTERNAL_H
#define CP_IO_INTERNAL_H

/* The most deflate can expand its input (zlib's own bound): a header claiming
 * more decoded data than the file size times this is corrupt. */
#define CP_DEFLATE_MAX_EXPANSION 1032

#include "cellpose/io.h"
#include "core/internal.h"

typedef enum cp_format { CP_FMT_UNKNOWN = 0, CP_FMT_TIFF, CP_FMT_PNG, CP_FMT_NPY } cp_format;

/* Format from the first bytes of a file (n of them available). */
cp_format cp_io_sniff(const unsigned char *head, size_t n);

int cp_tiff_read(const char *path, const cp_read_opts *opts, cp_image **out);
int cp_tiff_voxel_size(const char *path, cp_voxel_size *out, int *found);
int cp_png_read(const char *path, cp_image **out);
/* NPY array -> image (2-D: one channel; 3-D: Y,X,C when C <= 4 else Z,Y,X;
 * 4-D: Z,Y,X,C). Takes ownership of a's data on success. */
int cp_npy_to_image(const char *path, cp_array *a, cp_image **out);

/* A .npy held in memory (n bytes at p) that stores one pickled Python object
 * (np.save of a dict: dtype '|O', shape ()): *offset receives where the
 * pickle starts. Any other NPY is refused with a message naming path. */
int cp_npy_pickle_offset(const char *path, const unsigned char *p, size_t n, size_t *offset);

/* Lower-case extension test on a path ("tif" matches "x.TIF"). */
int cp_io_has_ext(const char *path, const char *ext);

/* TIFF encoding shared by the file and memory writers (tiff.c); t is a
 * libtiff handle (TIFF *). */
struct tiff;
int cp_tiff_encode(struct tiff *t, const char *path, const cp_image *img, const cp_write_opts *opts);
/* libtiff open mode for writing img: "w", or "w8" (BigTIFF) when large. */
const char *cp_tiff_write_mode(const cp_image *img);

#endif
