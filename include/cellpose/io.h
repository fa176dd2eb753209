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
    CP_PAGES_AUTO = 0,  /* metadata decides (ImageJ hyperstack, OME-XML, tifffile
                           {"shape": [Z, C, Y, X]}); else pages become channels
                           when there are at most 4 single-sample pages, planes
                           (Z) otherwise */
    CP_PAGES_CHANNELS,  /* every page is a channel */
    CP_PAGES_PLANES,    /* every page is a plane (Z) */
    CP_PAGES_FIRST      /* read the first page only */
} cp_pages;

typedef struct cp_read_opts {
    cp_pages pages;
    /* PNG: drop the alpha channel (gray+alpha -> gray, RGBA -> RGB), as
     * Cellpose's OpenCV reader does; cpseg and cptrain set it. */
    int drop_alpha;
} cp_read_opts;

/* Read .tif/.tiff, .png or .npy (optionally .npy.gz); the format is detected
 * from the file's magic bytes, not its name. opts may be NULL (= AUTO).
 *
 * Conventions (the image is planes x height x width x channels):
 *
 * TIFF — samples keep their stored type: 8/16/32/64-bit unsigned and signed
 *   integers, float32/float64 (float16 widens to float32); 1/2/4-bit samples
 *   unpack to u8 with their stored values (0..2^b-1, not rescaled). Values are
 *   never rescaled or inverted: min-is-white stays as stored, and palette
 *   (colour-mapped) images give their index values in one channel, as tifffile
 *   and Cellpose read them (the colour map is display-only, e.g. ImageJ LUTs).
 *   Samples per pixel (1-64, contiguous or planar) are channels. JPEG YCbCr is
 *   decoded to RGB; other YCbCr and old-style JPEG go through libtiff's RGBA
 *   decoder (u8, 3 channels, 4 with alpha). Strips or tiles, every compression
 *   the linked libtiff decodes, classic or BigTIFF, either byte order.
 *   Reduced-resolution pages (thumbnails, pyramid levels) are skipped; other
 *   pages must match the first page's size, samples and type.
 *   Pages: with ImageJ metadata (images/channels/slices/frames; pages ordered
 *   channel fastest, then slice, then frame) channels = channels x samples per
 *   page, planes = slices x frames (frame-major); a plain ImageJ stack
 *   (images= only) is slices. OME-XML with one series: SizeC,
 *   SizeZ, SizeT in its DimensionOrder, same result. A tifffile description
 *   {"shape": [A, B, Y, X]} means A planes of B channels. Otherwise AUTO: 2-4
 *   single-sample pages are channels, more pages (or multi-sample pages) are
 *   planes. Metadata whose counts do not match the pages is ignored.
 * PNG — 8 or 16 bits, u8 or u16: grey (1 channel), grey+alpha (2), RGB (3),
 *   RGBA (4); palette images expand to RGB, or RGBA when they carry a
 *   transparency (tRNS) chunk; 1/2/4-bit grey unpacks to u8 with its stored
 *   values (grey/RGB tRNS is ignored). Interlaced is fine.
 * NPY — 2-D (Y,X): one channel; 3-D (Y,X,C) with C <= 4: channels; other 3-D
 *   (Z,Y,X): planes; 4-D (Z,Y,X,C). Other ranks are refused. dtypes as
 *   cp_npy_read; bool reads as u8 0/1.
 * Any size beyond cp_get_max_pixels() fails with CP_ELIMIT before the pixels
 * are allocated. */
int cp_image_read(const char *path, const cp_read_opts *opts, cp_image **out);

/* Physical size of a voxel as ImageJ records it in a TIFF (or an OME-Zarr
 * folder's scale and unit, as cp_vol_voxel_size): x and y from the
 * first page's XResolution/YResolution (pixels per unit; libtiff reads these
 * rationals as float), z from spacing= in the ImageJ description (1 when
 * absent, as ImageJ assumes), unit from unit= (e.g. "micron", truncated to 31
 * bytes). *found = 0 without an error for other files (PNG, NPY, TIFF without
 * an ImageJ description) and for ImageJ files without a unit (uncalibrated). */
typedef struct cp_voxel_size {
    double z, y, x;
    char unit[32];
} cp_voxel_size;
int cp_image_voxel_size(const char *path, cp_voxel_size *out, int *found);

/* "Not given" for the axes of cp_image_read_volume. */
#define CP_AXIS_AUTO (-1000)

/* Read a Z-stack as Cellpose's 3D modes do (do_3D, stitching). The file's
 * array is numpy's for NPY (2-4 dimensions, C order) and, for TIFF and PNG,
 * the image cp_image_read gives seen as tifffile orders it: (pages, Y, X)
 * for a stack, (Z, C, Y, X) for an ImageJ hyperstack or pages with
 * channels, (C, Y, X) for one plane of several channels. z_axis (default 0)
 * and channel_axis (4-D arrays only; default 1 for TIFF/PNG, 3 for NPY)
 * index that array, negative from the end as in Python; the remaining two
 * axes are Y and X in order. A 2-D array, an axis out of range, or a channel
 * axis on a 3-D array is CP_EINVAL with the file and its shape named.
 * A Zarr array or OME-Zarr folder (cellpose/zarr.h) is read whole, its axes
 * named by its OME metadata (z, c, y, x; t of size 1) unless given. */
int cp_image_read_volume(const char *path, int z_axis, int channel_axis, cp_image **out);

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
    /* TIFF: the physical voxel size, recorded as ImageJ does (XResolution
     * 1/x and YResolution 1/y pixels per unit, ResolutionUnit none, or inch
     * or centimeter for those units; unit= and spacing=z in an ImageJ
     * description, which is then always written) so cp_image_voxel_size,
     * Fiji and tifffile read it back. NULL (or no unit) = uncalibrated. */
    const cp_voxel_size *voxel;
} cp_write_opts;

/* Write atomically (temp + rename). The format follows the extension:
 * .tif/.tiff: any dtype, one page per plane and channel (page = plane x
 *   channels + channel, as ImageJ orders them), except 3-4 channel u8/u16,
 *   which stays one interleaved RGB(A) page per plane unless opts->imagej.
 *   Output with more than one page always carries an ImageJ description
 *   (images=, channels=, slices=) so it reads back as written; BigTIFF is used
 *   beyond 3 GiB of pixel data. Every page's pixels are stored back to back in
 *   page order after all directories, as ImageJ writes a stack, since ImageJ
 *   and tifffile read an uncompressed ImageJ stack as one block.
 * .png: u8/u16, one plane of 1-4 channels.
 * .npy / .npy.gz: the shape cp_image_read maps back to the same image:
 *   (Y,X), (Y,X,C) for C <= 4, (Z,Y,X) for one channel when X > 4, else
 *   (Z,Y,X,C).
 * opts may be NULL. */
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
/* Reads NPY format 1.0/2.0/3.0, either byte order, C or Fortran order,
 * dtypes u1 u2 u4 u8 i1 i2 i4 i8 f4 f8 and bool (as u8); up to CP_MAX_DIMS
 * dimensions. Object arrays (pickles) and structured dtypes are refused.
 * Reads gzip-compressed files (.npy.gz) transparently. */
int cp_npy_read(const char *path, cp_array **out);
/* Writes NPY 1.0 (little endian, C order, header as numpy writes it)
 * atomically; gzip-compressed when the path ends in .gz. */
int cp_npy_write(const char *path, const cp_array *a);

#ifdef __cplusplus
}
#endif
#endif
