/* NPY arrays (numpy's .npy format, versions 1.0-3.0), optionally gzip-compressed. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "io/io_internal.h"

#define NPY_MAX_HEADER (1u << 20) /* numpy itself refuses headers beyond ~10 kB */

size_t cp_array_count(const cp_array *a)
{
    size_t n = 1;
    for (int i = 0; i < a->ndim; i++)
        n *= a->shape[i];
    return n;
}

/* Element count of a shape, or (size_t)-1 on overflow. */
static size_t shape_count(int ndim, const size_t *shape)
{
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        if (cp_mul_overflow(n, shape[i], &n))
            return (size_t)-1;
    return n;
}

int cp_array_create(cp_array **out, int ndim, const size_t *shape, cp_dtype dtype)
{
    *out = NULL;
    if (ndim < 0 || ndim > CP_MAX_DIMS || (unsigned)dtype >= CP_DTYPE_COUNT)
        return cp_error(CP_EINVAL, "invalid array: %d dimensions, dtype %d", ndim, (int)dtype);
    size_t n = shape_count(ndim, shape);
    if (n == (size_t)-1 || n > cp_get_max_pixels())
        return cp_error(CP_ELIMIT, "array of %s elements exceeds the limit of %llu samples",
                        n == (size_t)-1 ? "too many" : "so many", (unsigned long long)cp_get_max_pixels());
    cp_array *a = cp_calloc(1, sizeof *a, "array");
    if (!a)
        return CP_ENOMEM;
    a->data = cp_calloc(n, cp_dtype_size(dtype), "array data");
    if (!a->data) {
        free(a);
        return CP_ENOMEM;
    }
    a->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        a->shape[i] = shape[i];
    a->dtype = dtype;
    *out = a;
    return CP_OK;
}

void cp_array_free(cp_array *a)
{
    if (!a)
        return;
    free(a->data);
    free(a);
}

/* ---- header parsing ---------------------------------------------------- */

typedef struct npy_header {
    cp_dtype dtype;
    int big_endian;
    int is_bool;
    int fortran;
    int is_object;  /* '|O': pickled Python objects follow the header */
    int ndim;
    size_t shape[CP_MAX_DIMS];
} npy_header;

/* Value text after 'key': in a Python dict literal, or NULL. */
static const char *dict_value(const char *h, const char *key)
{
    char pat[32];
    const char *quotes = "'\"";
    for (int q = 0; q < 2; q++) {
        snprintf(pat, sizeof pat, "%c%s%c", quotes[q], key, quotes[q]);
        const char *p = strstr(h, pat);
        if (!p)
            continue;
        p += strlen(pat);
        while (isspace((unsigned char)*p))
            p++;
        if (*p != ':')
            return NULL;
        p++;
        while (isspace((unsigned char)*p))
            p++;
        return p;
    }
    return NULL;
}

static int parse_descr(const char *path, const char *v, npy_header *h)
{
    if (*v == '[' || *v == '{')
        return cp_error(CP_EUNSUPPORTED, "%s: structured numpy dtypes are not supported", path);
    if (*v != '\'' && *v != '"')
        return cp_error(CP_EFORMAT, "%s: bad NPY header (descr)", path);
    char q = *v++;
    const char *end = strchr(v, q);
    if (!end || end - v > 15)
        return cp_error(CP_EFORMAT, "%s: bad NPY header (descr)", path);
    char d[16];
    memcpy(d, v, (size_t)(end - v));
    d[end - v] = 0;
    const char *t = d;
    char order = '=';
    if (*t == '<' || *t == '>' || *t == '|' || *t == '=')
        order = *t++;
    h->big_endian = order == '>';
    h->is_bool = 0;
    static const struct { const char *name; cp_dtype t; } map[] = {
        {"b1", CP_U8}, {"?", CP_U8}, {"u1", CP_U8}, {"B", CP_U8}, {"u2", CP_U16}, {"u4", CP_U32},
        {"u8", CP_U64}, {"i1", CP_I8}, {"b", CP_I8}, {"i2", CP_I16}, {"i4", CP_I32}, {"i8", CP_I64},
        {"f4", CP_F32}, {"f8", CP_F64},
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strcmp(t, map[i].name) == 0) {
            h->dtype = map[i].t;
            h->is_bool = t[0] == 'b' && t[1] == '1';
            h->is_bool |= t[0] == '?';
            return CP_OK;
        }
    if (t[0] == 'O' && (!t[1] || strcmp(t + 1, "8") == 0)) {
        h->is_object = 1; /* only cp_npy_pickle_offset accepts it */
        return CP_OK;
    }
    return cp_error(CP_EUNSUPPORTED, "%s: numpy dtype '%s' is not supported (use u1 u2 u4 u8 i1 i2 i4 i8 f4 f8 or bool)",
                    path, d);
}

static int parse_shape(const char *path, const char *v, npy_header *h)
{
    if (*v != '(')
        return cp_error(CP_EFORMAT, "%s: bad NPY header (shape)", path);
    v++;
    h->ndim = 0;
    for (;;) {
        while (isspace((unsigned char)*v))
            v++;
        if (*v == ')')
            break;
        if (!isdigit((unsigned char)*v))
            return cp_error(CP_EFORMAT, "%s: bad NPY header (shape)", path);
        errno = 0;
        char *end;
        unsigned long long n = strtoull(v, &end, 10);
        if (errno || n > SIZE_MAX)
            return cp_error(CP_ELIMIT, "%s: NPY dimension too large", path);
        if (h->ndim == CP_MAX_DIMS)
            return cp_error(CP_EUNSUPPORTED, "%s: NPY array has more than %d dimensions", path, CP_MAX_DIMS);
        h->shape[h->ndim++] = (size_t)n;
        v = end;
        while (isspace((unsigned char)*v))
            v++;
        if (*v == 'L') /* Python 2 long */
            v++;
        if (*v == ',')
            v++;
        else if (*v != ')')
            return cp_error(CP_EFORMAT, "%s: bad NPY header (shape)", path);
    }
    return CP_OK;
}

static int parse_header(const char *path, const char *text, npy_header *h)
{
    memset(h, 0, sizeof *h);
    const char *v = dict_value(text, "descr");
    if (!v)
        return cp_error(CP_EFORMAT, "%s: NPY header has no 'descr'", path);
    int rc = parse_descr(path, v, h);
    if (rc)
        return rc;
    v = dict_value(text, "fortran_order");
    if (!v)
        return cp_error(CP_EFORMAT, "%s: NPY header has no 'fortran_order'", path);
    if (strncmp(v, "True", 4) == 0)
        h->fortran = 1;
    else if (strncmp(v, "False", 5) != 0)
        return cp_error(CP_EFORMAT, "%s: bad NPY header (fortran_order)", path);
    v = dict_value(text, "shape");
    if (!v)
        return cp_error(CP_EFORMAT, "%s: NPY header has no 'shape'", path);
    return parse_shape(path, v, h);
}

/* ---- reading ---------------------------------------------------------- */

/* Read exactly n bytes; gzread takes unsigned int sizes, so go in chunks. */
static int gz_read_all(gzFile g, void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n > 0) {
        unsigned chunk = n > (1u << 30) ? (1u << 30) : (unsigned)n;
        int got = gzread(g, p, chunk);
        if (got <= 0)
            return -1;
        p += got;
        n -= (size_t)got;
    }
    return 0;
}

void cp_byteswap(void *data, size_t count, size_t size)
{
    unsigned char *p = data;
    for (size_t i = 0; i < count; i++, p += size)
        for (size_t a = 0, b = size - 1; a < b; a++, b--) {
            unsigned char t = p[a];
            p[a] = p[b];
            p[b] = t;
        }
}

/* Fortran (column-major) to C (row-major) order. */
static int fortran_to_c(cp_array *a)
{
    size_t n = cp_array_count(a), es = cp_dtype_size(a->dtype);
    if (a->ndim < 2 || n == 0)
        return CP_OK;
    unsigned char *dst = cp_malloc_array(n, es, "array transpose");
    if (!dst)
        return CP_ENOMEM;
    const unsigned char *src = a->data;
    size_t idx[CP_MAX_DIMS] = {0}, stride[CP_MAX_DIMS];
    stride[0] = 1;
    for (int d = 1; d < a->ndim; d++)
        stride[d] = stride[d - 1] * a->shape[d - 1];
    size_t off = 0; /* Fortran offset of the current C-order index */
    for (size_t i = 0; i < n; i++) {
        memcpy(dst + i * es, src + off * es, es);
        for (int d = a->ndim - 1; d >= 0; d--) {
            if (++idx[d] < a->shape[d]) {
                off += stride[d];
                break;
            }
            off -= stride[d] * (a->shape[d] - 1);
            idx[d] = 0;
        }
    }
    free(a->data);
    a->data = dst;
    return CP_OK;
}

/* The preamble and header dict; *offset receives where the data starts. */
static int read_npy_header(const char *path, gzFile g, npy_header *h, size_t *offset)
{
    unsigned char pre[10];
    int got = gzread(g, pre, 8);
    if (got < 8 || memcmp(pre, "\x93NUMPY", 6) != 0)
        return cp_error(CP_EFORMAT, "%s: not an NPY file%s", path,
                        gzdirect(g) ? "" : " (gzip-compressed, but only .npy.gz is read)");
    int major = pre[6];
    size_t hlen;
    if (major == 1) {
        if (gzread(g, pre + 8, 2) != 2)
            return cp_error(CP_EFORMAT, "%s: truncated NPY header", path);
        hlen = pre[8] | (size_t)pre[9] << 8;
    } else if (major == 2 || major == 3) {
        unsigned char l[4];
        if (gzread(g, l, 4) != 4)
            return cp_error(CP_EFORMAT, "%s: truncated NPY header", path);
        hlen = l[0] | (size_t)l[1] << 8 | (size_t)l[2] << 16 | (size_t)l[3] << 24;
    } else {
        return cp_error(CP_EUNSUPPORTED, "%s: NPY format version %d.%d is not supported", path, major, pre[7]);
    }
    if (hlen > NPY_MAX_HEADER)
        return cp_error(CP_EFORMAT, "%s: NPY header of %zu bytes is implausibly large", path, hlen);
    char *text = cp_malloc(hlen + 1, "NPY header");
    if (!text)
        return CP_ENOMEM;
    if (gz_read_all(g, text, hlen) != 0) {
        free(text);
        return cp_error(CP_EFORMAT, "%s: truncated NPY header", path);
    }
    text[hlen] = 0;
    if (strlen(text) != hlen) { /* embedded NUL: not a header we understand */
        free(text);
        return cp_error(CP_EFORMAT, "%s: bad NPY header", path);
    }
    int rc = parse_header(path, text, h);
    free(text);
    *offset = (major == 1 ? 10 : 12) + hlen;
    return rc;
}

static int read_npy_stream(const char *path, gzFile g, double fsize, cp_array **out)
{
    npy_header h;
    size_t offset;
    int rc = read_npy_header(path, g, &h, &offset);
    if (rc)
        return rc;
    if (h.is_object)
        return cp_error(CP_EUNSUPPORTED, "%s: numpy object arrays (pickles) are not supported", path);
    size_t n = shape_count(h.ndim, h.shape);
    if (n == (size_t)-1 || n > cp_get_max_pixels())
        return cp_error(CP_ELIMIT, "%s: NPY array of %s elements exceeds the limit of %llu samples", path,
                        n == (size_t)-1 ? "too many" : "so many", (unsigned long long)cp_get_max_pixels());
    size_t es = cp_dtype_size(h.dtype);
    /* deflate expands at most CP_DEFLATE_MAX_EXPANSION-fold: a header claiming more data than the
       file can hold is corrupt, and is refused before allocating */
    if ((double)n * es > fsize * (gzdirect(g) ? 1 : CP_DEFLATE_MAX_EXPANSION))
        return cp_error(CP_EFORMAT, "%s: truncated NPY data (header claims %zu bytes, the file has %.0f)", path,
                        n * es, fsize);
    cp_array *a;
    rc = cp_array_create(&a, h.ndim, h.shape, h.dtype);
    if (rc)
        return cp_error(rc, "%s: %s", path, cp_errmsg());
    if (gz_read_all(g, a->data, n * es) != 0) {
        cp_array_free(a);
        return cp_error(CP_EFORMAT, "%s: truncated NPY data (expected %zu bytes)", path, n * es);
    }
    if (h.is_bool) {
        unsigned char *p = a->data;
        for (size_t i = 0; i < n; i++)
            p[i] = p[i] != 0;
    }
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    int swap = h.big_endian && es > 1;
#else
    int swap = !h.big_endian && es > 1;
#endif
    if (swap)
        cp_byteswap(a->data, n, es);
    if (h.fortran && (rc = fortran_to_c(a)) != CP_OK) {
        cp_array_free(a);
        return rc;
    }
    *out = a;
    return CP_OK;
}

int cp_npy_pickle_offset(const char *path, const unsigned char *p, size_t n, size_t *offset)
{
    if (n < 10 || memcmp(p, "\x93NUMPY", 6) != 0)
        return cp_error(CP_EFORMAT, "%s: not an NPY file", path);
    size_t pre = p[6] == 1 ? 10 : 12;
    if (p[6] < 1 || p[6] > 3)
        return cp_error(CP_EUNSUPPORTED, "%s: NPY format version %d.%d is not supported", path, p[6], p[7]);
    if (n < pre)
        return cp_error(CP_EFORMAT, "%s: truncated NPY header", path);
    size_t hlen = p[8] | (size_t)p[9] << 8;
    if (pre == 12)
        hlen |= (size_t)p[10] << 16 | (size_t)p[11] << 24;
    if (hlen > NPY_MAX_HEADER || hlen > n - pre)
        return cp_error(CP_EFORMAT, "%s: truncated NPY header", path);
    char *text = cp_malloc(hlen + 1, "NPY header");
    if (!text)
        return CP_ENOMEM;
    memcpy(text, p + pre, hlen);
    text[hlen] = 0;
    npy_header h;
    int rc = strlen(text) != hlen ? cp_error(CP_EFORMAT, "%s: bad NPY header", path) : parse_header(path, text, &h);
    free(text);
    if (rc)
        return rc;
    if (!h.is_object || h.ndim != 0)
        return cp_error(CP_EFORMAT, "%s: not a pickled object (np.save of a dict): the NPY file holds an array",
                        path);
    *offset = pre + hlen;
    return CP_OK;
}

int cp_npy_read(const char *path, cp_array **out)
{
    *out = NULL;
    /* gzread passes uncompressed files through unchanged. */
    gzFile g = gzopen(path, "rb");
    if (!g)
        return cp_error(CP_EIO, "%s: cannot open: %s", path, strerror(errno ? errno : ENOENT));
    gzbuffer(g, 1 << 16);
    struct stat st;
    int rc = stat(path, &st) ? cp_error(CP_EIO, "%s: cannot stat: %s", path, strerror(errno))
                             : read_npy_stream(path, g, (double)st.st_size, out);
    gzclose(g);
    return rc;
}

int cp_npy_info_read(const char *path, cp_npy_info *out)
{
    memset(out, 0, sizeof *out);
    gzFile g = gzopen(path, "rb");
    if (!g)
        return cp_error(CP_EIO, "%s: cannot open: %s", path, strerror(errno ? errno : ENOENT));
    npy_header h;
    size_t offset;
    int rc = read_npy_header(path, g, &h, &offset);
    out->compressed = !gzdirect(g);
    gzclose(g);
    if (rc)
        return rc;
    if (h.is_object)
        return cp_error(CP_EUNSUPPORTED, "%s: numpy object arrays (pickles) are not supported", path);
    out->dtype = h.dtype;
    out->is_bool = h.is_bool;
    out->fortran = h.fortran;
    out->ndim = h.ndim;
    memcpy(out->shape, h.shape, sizeof h.shape);
    out->data_offset = offset;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    out->swap = h.big_endian && cp_dtype_size(h.dtype) > 1;
#else
    out->swap = !h.big_endian && cp_dtype_size(h.dtype) > 1;
#endif
    return CP_OK;
}

/* ---- writing ---------------------------------------------------------- */

static const char *npy_descr(cp_dtype t)
{
    static const char *d[CP_DTYPE_COUNT] = {"|u1", "<u2", "<u4", "|i1", "<i2", "<i4", "<i8", "<f4", "<f8", "<u8"};
    return (unsigned)t < CP_DTYPE_COUNT ? d[t] : NULL;
}

/* Version-1.0 header, padded so the data starts at a multiple of 64 bytes. */
static int npy_header_bytes(const char *descr, int ndim, const size_t *shape, char *buf, size_t cap, size_t *len)
{
    char dict[512];
    int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (", descr);
    for (int i = 0; i < ndim; i++)
        n += snprintf(dict + n, sizeof dict - n, "%zu,%s", shape[i], i + 1 < ndim ? " " : "");
    if (ndim > 1)
        n--; /* numpy writes (3,) but (3, 4) */
    n += snprintf(dict + n, sizeof dict - n, "), }");
    size_t total = 10 + (size_t)n + 1;
    total = (total + 63) / 64 * 64;
    if (total > cap || total - 10 > 65535)
        return -1;
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    size_t hl = total - 10;
    buf[8] = (char)(hl & 0xff);
    buf[9] = (char)(hl >> 8);
    memcpy(buf + 10, dict, (size_t)n);
    memset(buf + 10 + n, ' ', total - 10 - (size_t)n - 1);
    buf[total - 1] = '\n';
    *len = total;
    return 0;
}

int cp_npy_write_pickle(const char *path, const void *pickle, size_t n)
{
    char head[128];
    size_t hlen;
    npy_header_bytes("|O", 0, NULL, head, sizeof head, &hlen);
    cp_atomic at;
    int rc = cp_atomic_open(&at, path);
    if (rc)
        return rc;
    if (fwrite(head, 1, hlen, at.fp) != hlen || fwrite(pickle, 1, n, at.fp) != n) {
        rc = cp_error(CP_EIO, "%s: write failed: %s", path, strerror(errno));
        cp_atomic_abort(&at);
        return rc;
    }
    return cp_atomic_commit(&at);
}

int cp_npy_write(const char *path, const cp_array *a)
{
    if (!a || a->ndim < 0 || a->ndim > CP_MAX_DIMS || !npy_descr(a->dtype))
        return cp_error(CP_EINVAL, "%s: invalid array", path);
    char head[1024];
    size_t hlen;
    if (npy_header_bytes(npy_descr(a->dtype), a->ndim, a->shape, head, sizeof head, &hlen) != 0)
        return cp_error(CP_EINVAL, "%s: NPY header too long", path);
    size_t n = cp_array_count(a), es = cp_dtype_size(a->dtype);
    const unsigned char *data = a->data;
    unsigned char *swapped = NULL;
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
    if (es > 1) {
        swapped = cp_malloc_array(n, es, "NPY output");
        if (!swapped)
            return CP_ENOMEM;
        memcpy(swapped, data, n * es);
        cp_byteswap(swapped, n, es);
        data = swapped;
    }
#endif
    cp_atomic at;
    int rc = cp_atomic_open(&at, path);
    if (rc) {
        free(swapped);
        return rc;
    }
    if (cp_io_has_ext(path, "gz")) {
        /* gzclose closes its descriptor, so give it a copy. */
        int fd = dup(at.fd);
        gzFile g = fd >= 0 ? gzdopen(fd, "wb6") : NULL;
        if (!g) {
            if (fd >= 0)
                close(fd);
            rc = cp_error(CP_EIO, "%s: cannot start gzip output", path);
        } else {
            size_t left = n * es;
            const unsigned char *p = data;
            int ok = gzwrite(g, head, (unsigned)hlen) == (int)hlen;
            while (ok && left > 0) {
                unsigned chunk = left > (1u << 30) ? (1u << 30) : (unsigned)left;
                ok = gzwrite(g, p, chunk) == (int)chunk;
                p += chunk;
                left -= chunk;
            }
            if (gzclose(g) != Z_OK || !ok)
                rc = cp_error(CP_EIO, "%s: write failed", path);
        }
    } else {
        if (fwrite(head, 1, hlen, at.fp) != hlen || (n && fwrite(data, es, n, at.fp) != n))
            rc = cp_error(CP_EIO, "%s: write failed: %s", path, strerror(errno));
    }
    free(swapped);
    if (rc) {
        cp_atomic_abort(&at);
        return rc;
    }
    return cp_atomic_commit(&at);
}

/* ---- NPY as an image -------------------------------------------------- */

int cp_npy_to_image(const char *path, cp_array *a, cp_image **out)
{
    *out = NULL;
    size_t z = 1, y, x, c = 1;
    if (a->ndim == 2) {
        y = a->shape[0];
        x = a->shape[1];
    } else if (a->ndim == 3 && a->shape[2] <= 4) {
        y = a->shape[0];
        x = a->shape[1];
        c = a->shape[2];
    } else if (a->ndim == 3) {
        z = a->shape[0];
        y = a->shape[1];
        x = a->shape[2];
    } else if (a->ndim == 4) {
        z = a->shape[0];
        y = a->shape[1];
        x = a->shape[2];
        c = a->shape[3];
    } else {
        return cp_error(CP_EUNSUPPORTED, "%s: a %d-dimensional array is not an image (need Y,X or Y,X,C or Z,Y,X or Z,Y,X,C)",
                        path, a->ndim);
    }
    if (!z || !y || !x || !c)
        return cp_error(CP_EFORMAT, "%s: empty image array", path);
    if (z > INT32_MAX || y > INT32_MAX || x > INT32_MAX || c > INT32_MAX)
        return cp_error(CP_ELIMIT, "%s: image dimension too large", path);
    cp_image *img = cp_calloc(1, sizeof *img, "image");
    if (!img)
        return CP_ENOMEM;
    img->width = (int)x;
    img->height = (int)y;
    img->channels = (int)c;
    img->planes = (int)z;
    img->dtype = a->dtype;
    img->data = a->data;
    a->data = NULL;
    *out = img;
    return CP_OK;
}
