/* libcellpose volumes larger than memory: Zarr v2 arrays, OME-NGFF 0.4
 * multiscale groups, and region-by-region reading of any volume file
 * (OME-Zarr, TIFF stacks incl. BigTIFF and tiled, NPY). */
#ifndef CELLPOSE_ZARR_H
#define CELLPOSE_ZARR_H

#include <stdint.h>

#include "cellpose/image.h"
#include "cellpose/io.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Zarr v2 arrays ---------------------------------------------------- */

typedef struct cp_zarr cp_zarr;

#define CP_ZARR_MAX_DIM 8

typedef enum cp_zarr_codec {
    CP_ZARR_RAW = 0,   /* "compressor": null */
    CP_ZARR_ZLIB,      /* numcodecs "zlib" */
    CP_ZARR_GZIP,      /* numcodecs "gzip" */
    CP_ZARR_ZSTD,      /* numcodecs "zstd" */
    CP_ZARR_BLOSC      /* numcodecs "blosc" (cname lz4/lz4hc/blosclz/zlib/zstd) */
} cp_zarr_codec;

typedef struct cp_zarr_opts {
    cp_zarr_codec codec;   /* 0 = raw; opts NULL = ZLIB level 1 (cptools' default) */
    int level;             /* codec level; 0 = the codec's default (zlib, gzip,
                              zstd: 1 as numcodecs; blosc: 5) */
    const char *blosc_cname; /* BLOSC only; NULL = "lz4" */
    int blosc_shuffle;     /* BLOSC only: 0 none, 1 byte, 2 bit */
    char dimension_separator; /* '.' (default when 0) or '/' */
} cp_zarr_opts;

/* Open the array whose .zarray is in folder `path`. Supported: dtypes
 * |u1 <u2 <u4 <u8 |i1 <i2 <i4 <i8 <f4 <f8 (and big-endian forms), order "C"
 * (and "F"), filters null, the codecs above, either dimension separator,
 * a numeric fill_value (or null = 0, "NaN", "Infinity"). A missing chunk
 * reads as fill_value. Header sizes are checked before anything is
 * allocated: a chunk beyond cp_get_max_pixels() elements or a shape beyond
 * 2^53 elements is CP_ELIMIT; a chunk file must decode to exactly one chunk. */
int cp_zarr_open(const char *path, cp_zarr **out);

/* Create (or, with overwrite, replace: old chunk files are removed) an array:
 * writes .zarray atomically (C order, little-endian, fill_value 0).
 * Chunks are written as whole files through temp names and renames, so
 * several processes may write disjoint chunks of one array at once. */
int cp_zarr_create(const char *path, int ndim, const int64_t *shape, const int64_t *chunks, cp_dtype dtype,
                   const cp_zarr_opts *opts, int overwrite, cp_zarr **out);
void cp_zarr_close(cp_zarr *z);

int cp_zarr_ndim(const cp_zarr *z);
const int64_t *cp_zarr_shape(const cp_zarr *z);
const int64_t *cp_zarr_chunks(const cp_zarr *z);
cp_dtype cp_zarr_dtype(const cp_zarr *z);

/* Read the box start[i] .. start[i]+count[i] into buf (C order, the array's
 * dtype, native byte order), chunk by chunk: memory is buf plus one chunk.
 * A box outside the shape is CP_EINVAL; a count of 0 reads nothing. Reads
 * and writes keep no state in z: threads may share one cp_zarr (writers on
 * disjoint chunks). A corrupt or truncated chunk is CP_EFORMAT naming its
 * file. */
int cp_zarr_read(cp_zarr *z, const int64_t *start, const int64_t *count, void *buf);
/* Write a box. Chunks the box covers partly are read, updated and rewritten
 * (callers writing in parallel keep to whole chunks); edge chunks are
 * written full-size, fill_value beyond the shape, as zarr does. */
int cp_zarr_write(cp_zarr *z, const int64_t *start, const int64_t *count, const void *buf);

/* ---- OME-NGFF 0.4 ------------------------------------------------------ */

/* Axes and scale of one multiscale level. Axis names are "t","c","z","y","x"
 * (others kept as given); scale is the level's coordinateTransformations
 * scale (1 when absent); unit is the space axes' unit ("" when absent). */
typedef struct cp_ome_info {
    int ndim;
    char axes[CP_ZARR_MAX_DIM][16];
    double scale[CP_ZARR_MAX_DIM];
    char unit[32];         /* as the file gives it, e.g. "micrometer" */
    char level_path[256];  /* the dataset's path inside the group, e.g. "0" */
} cp_ome_info;

/* Open level `level` (0 = full resolution) of the first multiscale of the
 * OME-Zarr group `path`. A plain array folder (.zarray, no .zattrs
 * multiscales) is accepted: axes then default to the last 3 being z,y,x. */
int cp_ome_open(const char *path, int level, cp_ome_info *info, cp_zarr **out);

/* Create an OME-Zarr group with one level "0" (.zgroup, .zattrs multiscales
 * version 0.4, axes y,x / z,y,x / c,z,y,x / t,c,z,y,x for ndim 2-5, with
 * vs->unit on the space axes unless vs is NULL or its unit empty — ImageJ's
 * "micron", "um", "nm" become NGFF's "micrometer", "nanometer" — and scale
 * from vs (1 for other axes or without vs)) and return that array. With
 * overwrite an existing group's numbered folders are removed first. */
int cp_ome_create(const char *path, int ndim, const int64_t *shape, const int64_t *chunks, cp_dtype dtype,
                  const cp_voxel_size *vs, const cp_zarr_opts *opts, int overwrite, cp_zarr **out);

/* ---- Region-by-region reading of any volume file ----------------------- */

typedef struct cp_vol_reader cp_vol_reader;

/* Open a volume without reading its voxels: an OME-Zarr group (level 0)
 * or Zarr array folder, a TIFF (strips or tiles, classic or BigTIFF, planes
 * as cp_image_read_volume orders them) or an NPY file (read by seeking; an
 * .npy.gz is read whole, as gzip cannot seek). z_axis and channel_axis as
 * for cp_image_read_volume (CP_AXIS_AUTO: OME axes names decide for Zarr:
 * z, c, y, x, any other axis must have size 1; a plain array's axes are
 * (t, c,) z, y, x from the right). */
int cp_vol_open(const char *path, int z_axis, int channel_axis, cp_vol_reader **out);
void cp_vol_close(cp_vol_reader *r);

/* Depth, height, width and channels, and the stored sample type. */
void cp_vol_shape(const cp_vol_reader *r, int64_t *depth, int64_t *height, int64_t *width, int *channels);
cp_dtype cp_vol_dtype(const cp_vol_reader *r);
/* Voxel size from OME scale+unit or ImageJ calibration; *found as for
 * cp_image_voxel_size. */
int cp_vol_voxel_size(const cp_vol_reader *r, cp_voxel_size *out, int *found);

/* Read the box z0..z0+dz, y0..y0+dy, x0..x0+dx (clipped to nothing: the box
 * must lie inside the volume and be non-empty, else CP_EINVAL) as an image
 * of dz planes, dy x dx, all channels, the stored dtype. Reads only the
 * chunks/strips/tiles the box touches; memory is the image, one or (TIFF)
 * two copies of the box in the file's order, and one chunk/strip/tile. */
int cp_vol_read(cp_vol_reader *r, int64_t z0, int64_t y0, int64_t x0, int64_t dz, int64_t dy, int64_t dx,
                cp_image **out);

#ifdef __cplusplus
}
#endif
#endif
