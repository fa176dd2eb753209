/* Private: Zarr chunk codecs (zarr_codec.c) shared by zarr.c. Not installed. */
#ifndef CP_ZARR_INTERNAL_H
#define CP_ZARR_INTERNAL_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "cellpose/zarr.h"

/* A chunk codec as .zarray's "compressor" describes it. */
typedef struct cp_zcodec {
    cp_zarr_codec id;
    int level;      /* zlib/gzip/zstd level, blosc clevel */
    char cname[16]; /* blosc */
    int shuffle;    /* blosc: 0 none, 1 byte, 2 bit */
} cp_zcodec;

/* Decode n bytes at src into exactly want bytes at dst; anything else is
 * CP_EFORMAT naming `file`. */
int cp_zcodec_decode(const cp_zcodec *c, const char *file, const void *src, size_t n, void *dst, size_t want);
/* Encode n bytes (elements of `typesize` bytes) into a new buffer *out of
 * *out_n bytes (free()). */
int cp_zcodec_encode(const cp_zcodec *c, const char *file, const void *src, size_t n, size_t typesize, void **out,
                     size_t *out_n);
/* The most bytes an encoded chunk of n bytes can take (for refusing larger
 * files before reading them). */
size_t cp_zcodec_bound(size_t n);

/* Copy a box of cnt[nd] elements of es bytes between two strided layouts
 * (strides in elements; src and dst point at the box's first element). */
void cp_zarr_copy_box(int nd, const int64_t *cnt, const unsigned char *src, const int64_t *sstr, unsigned char *dst,
                      const int64_t *dstr, size_t es);

/* dir/name parsed as JSON; NULL with *rc set (and *missing when the file
 * does not exist). */
cJSON *cp_zarr_read_json(const char *dir, const char *name, int *rc, int *missing);
/* Write a JSON document dir/name atomically. */
int cp_zarr_write_json(const char *dir, const char *name, const cJSON *j);
/* Remove the chunk files and numbered sub-folders under path (an array or
 * group being replaced). */
int cp_zarr_remove_chunks(const char *path);

#endif
