/* Zarr chunk codecs: numcodecs' zlib, gzip, zstd and blosc formats, through
 * zlib, libzstd and libblosc (the stream formats those libraries define). */
#include <blosc.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#include "core/internal.h"
#include "io/zarr_internal.h"

size_t cp_zcodec_bound(size_t n)
{
    /* deflate, zstd and blosc all stay well inside n + n/16 + 64 KiB */
    return n + n / 16 + 65536;
}

/* windowBits 15: zlib header (numcodecs Zlib); 15+16: gzip (numcodecs GZip). */
static int inflate_exact(const char *file, const void *src, size_t n, void *dst, size_t want, int gzip)
{
    z_stream s;
    memset(&s, 0, sizeof s);
    if (inflateInit2(&s, gzip ? 15 + 16 : 15) != Z_OK)
        return cp_error(CP_ENOMEM, "%s: cannot start zlib", file);
    s.next_in = (Bytef *)src;
    s.next_out = dst;
    int rc = Z_OK;
    size_t in_left = n, out_left = want;
    unsigned char extra;
    /* uInt-sized steps: chunks may exceed 4 GiB */
    while (rc == Z_OK) {
        s.avail_in = in_left > UINT_MAX ? UINT_MAX : (uInt)in_left;
        int spare = out_left == 0;
        if (spare) { /* one byte past the end: data beyond it means a wrong size */
            s.next_out = &extra;
            s.avail_out = 1;
        } else {
            s.avail_out = out_left > UINT_MAX ? UINT_MAX : (uInt)out_left;
        }
        uInt ai = s.avail_in, ao = s.avail_out;
        rc = inflate(&s, Z_NO_FLUSH);
        in_left -= ai - s.avail_in;
        if (spare && s.avail_out == 0) {
            inflateEnd(&s);
            return cp_error(CP_EFORMAT, "%s: chunk decodes to more than %zu bytes", file, want);
        }
        if (!spare)
            out_left -= ao - s.avail_out;
        if (rc == Z_BUF_ERROR && ai == s.avail_in && ao == s.avail_out)
            break; /* no progress: input ended early */
        if (rc == Z_BUF_ERROR)
            rc = Z_OK;
    }
    inflateEnd(&s);
    if (rc != Z_STREAM_END)
        return cp_error(CP_EFORMAT, "%s: corrupt or truncated %s chunk", file, gzip ? "gzip" : "zlib");
    if (out_left)
        return cp_error(CP_EFORMAT, "%s: chunk decodes to %zu bytes, expected %zu", file, want - out_left, want);
    return CP_OK;
}

static int deflate_all(const char *file, const void *src, size_t n, int level, int gzip, void **out, size_t *out_n)
{
    z_stream s;
    memset(&s, 0, sizeof s);
    if (deflateInit2(&s, level, Z_DEFLATED, gzip ? 15 + 16 : 15, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return cp_error(CP_EINVAL, "%s: bad zlib level %d", file, level);
    size_t cap = deflateBound(&s, (uLong)n) + 64;
    unsigned char *buf = cp_malloc(cap, "compressed chunk");
    if (!buf) {
        deflateEnd(&s);
        return CP_ENOMEM;
    }
    s.next_in = (Bytef *)src;
    s.next_out = buf;
    size_t in_left = n, out_left = cap;
    int rc;
    do {
        s.avail_in = in_left > UINT_MAX ? UINT_MAX : (uInt)in_left;
        s.avail_out = out_left > UINT_MAX ? UINT_MAX : (uInt)out_left;
        uInt ai = s.avail_in, ao = s.avail_out;
        rc = deflate(&s, in_left == ai ? Z_FINISH : Z_NO_FLUSH);
        in_left -= ai - s.avail_in;
        out_left -= ao - s.avail_out;
    } while (rc == Z_OK || (rc == Z_BUF_ERROR && out_left));
    deflateEnd(&s);
    if (rc != Z_STREAM_END) {
        free(buf);
        return cp_error(CP_EIO, "%s: zlib compression failed", file);
    }
    *out = buf;
    *out_n = cap - out_left;
    return CP_OK;
}

int cp_zcodec_decode(const cp_zcodec *c, const char *file, const void *src, size_t n, void *dst, size_t want)
{
    switch (c->id) {
    case CP_ZARR_RAW:
        if (n != want)
            return cp_error(CP_EFORMAT, "%s: uncompressed chunk of %zu bytes, expected %zu", file, n, want);
        memcpy(dst, src, n);
        return CP_OK;
    case CP_ZARR_ZLIB:
    case CP_ZARR_GZIP:
        return inflate_exact(file, src, n, dst, want, c->id == CP_ZARR_GZIP);
    case CP_ZARR_ZSTD: {
        unsigned long long size = ZSTD_getFrameContentSize(src, n);
        if (size == ZSTD_CONTENTSIZE_ERROR)
            return cp_error(CP_EFORMAT, "%s: not a zstd chunk", file);
        if (size != ZSTD_CONTENTSIZE_UNKNOWN && size != want)
            return cp_error(CP_EFORMAT, "%s: chunk decodes to %llu bytes, expected %zu", file, size, want);
        size_t got = ZSTD_decompress(dst, want, src, n);
        if (ZSTD_isError(got))
            return cp_error(CP_EFORMAT, "%s: corrupt zstd chunk (%s)", file, ZSTD_getErrorName(got));
        if (got != want)
            return cp_error(CP_EFORMAT, "%s: chunk decodes to %zu bytes, expected %zu", file, got, want);
        return CP_OK;
    }
    case CP_ZARR_BLOSC: {
        size_t nbytes = 0;
        /* validate first: it checks the header against n, so decoding is safe */
        if (n < BLOSC_MIN_HEADER_LENGTH || blosc_cbuffer_validate(src, n, &nbytes) != 0)
            return cp_error(CP_EFORMAT, "%s: corrupt or truncated blosc chunk", file);
        if (nbytes != want)
            return cp_error(CP_EFORMAT, "%s: chunk decodes to %zu bytes, expected %zu", file, nbytes, want);
        if (want == 0)
            return CP_OK;
        int got = blosc_decompress_ctx(src, dst, want, 1);
        if (got < 0 || (size_t)got != want)
            return cp_error(CP_EFORMAT, "%s: corrupt blosc chunk", file);
        return CP_OK;
    }
    }
    return cp_error(CP_EUNSUPPORTED, "%s: unknown codec", file);
}

int cp_zcodec_encode(const cp_zcodec *c, const char *file, const void *src, size_t n, size_t typesize, void **out,
                     size_t *out_n)
{
    *out = NULL;
    *out_n = 0;
    switch (c->id) {
    case CP_ZARR_RAW: {
        void *b = cp_malloc(n ? n : 1, "chunk");
        if (!b)
            return CP_ENOMEM;
        memcpy(b, src, n);
        *out = b;
        *out_n = n;
        return CP_OK;
    }
    case CP_ZARR_ZLIB:
    case CP_ZARR_GZIP:
        return deflate_all(file, src, n, c->level, c->id == CP_ZARR_GZIP, out, out_n);
    case CP_ZARR_ZSTD: {
        size_t cap = ZSTD_compressBound(n);
        void *b = cp_malloc(cap, "compressed chunk");
        if (!b)
            return CP_ENOMEM;
        size_t got = ZSTD_compress(b, cap, src, n, c->level);
        if (ZSTD_isError(got)) {
            free(b);
            return cp_error(CP_EIO, "%s: zstd compression failed (%s)", file, ZSTD_getErrorName(got));
        }
        *out = b;
        *out_n = got;
        return CP_OK;
    }
    case CP_ZARR_BLOSC: {
        if (n > (size_t)BLOSC_MAX_BUFFERSIZE)
            return cp_error(CP_ELIMIT, "%s: chunk of %zu bytes is beyond blosc's 2 GiB", file, n);
        size_t cap = n + BLOSC_MAX_OVERHEAD;
        void *b = cp_malloc(cap, "compressed chunk");
        if (!b)
            return CP_ENOMEM;
        int got = blosc_compress_ctx(c->level, c->shuffle, typesize, n, src, b, cap, c->cname, 0, 1);
        if (got <= 0) {
            free(b);
            return cp_error(CP_EINVAL, "%s: blosc compression failed (compressor \"%s\")", file, c->cname);
        }
        *out = b;
        *out_n = (size_t)got;
        return CP_OK;
    }
    }
    return cp_error(CP_EUNSUPPORTED, "%s: unknown codec", file);
}
