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
/* Write such a .npy (numpy's header for a 0-d object array, then the n bytes
 * of pickle), atomically. */
int cp_npy_write_pickle(const char *path, const void *pickle, size_t n);

/* An NPY file's header: where its data starts and how it is laid out
 * (compressed: a .npy.gz, whose data cannot be read by seeking). */
typedef struct cp_npy_info {
    cp_dtype dtype;
    int is_bool, fortran, swap, compressed, ndim;
    size_t shape[CP_MAX_DIMS];
    size_t data_offset;
} cp_npy_info;
int cp_npy_info_read(const char *path, cp_npy_info *out);

/* The axes of a volume in a file's array (shape[ndim], 2-4 dimensions) as
 * cp_image_read_volume picks them: z_axis/channel_axis as given (negative
 * from the end) or the defaults (Z 0, channels channel_guess on 4-D);
 * *c = -1 without a channel axis. Errors name path and the shape. */
int cp_volume_axes(const char *path, int ndim, const size_t *shape, int channel_guess, int z_axis, int channel_axis,
                   int *z, int *c, int *y, int *x);

/* Region-by-region TIFF reading (tiff.c): pages arranged as cp_tiff_read
 * does, only the strips/tiles a box touches decoded. */
typedef struct cp_tiff_region cp_tiff_region;
/* *shape receives planes, channels, height, width and dtype (no pixels). */
int cp_tiff_region_open(const char *path, cp_tiff_region **out, cp_image *shape);
/* Planes p0..p0+np, rows y0..y0+dy, columns x0..x0+dx, all channels, into
 * dst (np planes x dy x dx, the file's channels and dtype). */
int cp_tiff_region_read(cp_tiff_region *r, int p0, int np, int y0, int dy, int x0, int dx, cp_image *dst);
void cp_tiff_region_close(cp_tiff_region *r);

/* Lower-case extension test on a path ("tif" matches "x.TIF"). */
int cp_io_has_ext(const char *path, const char *ext);
/* Reverse the bytes of each of count samples of size bytes, in place. */
void cp_byteswap(void *data, size_t count, size_t size);

/* TIFF encoding shared by the file and memory writers (tiff.c); t is a
 * libtiff handle (TIFF *). */
struct tiff;
int cp_tiff_encode(struct tiff *t, const char *path, const cp_image *img, const cp_write_opts *opts);
/* libtiff open mode for writing img: "w", or "w8" (BigTIFF) when large. */
const char *cp_tiff_write_mode(const cp_image *img);

#endif
