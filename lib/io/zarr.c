/* Zarr v2 arrays on a local file system: .zarray metadata, chunk files
 * read and written whole, boxes copied chunk by chunk. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cellpose/files.h"
#include "core/internal.h"
#include "io/io_internal.h"
#include "io/zarr_internal.h"

/* Beyond 2^53 elements int64 offsets are still exact but no machine holds
 * such an array; a larger shape is a corrupt or hostile header. */
#define ZARR_MAX_ELEMENTS ((int64_t)1 << 53)
#define ZARR_MAX_HEADER (1u << 20)

struct cp_zarr {
    char *path;
    int ndim;
    int64_t shape[CP_ZARR_MAX_DIM], chunks[CP_ZARR_MAX_DIM];
    int64_t cstride[CP_ZARR_MAX_DIM]; /* element strides inside a chunk (C or F order) */
    cp_dtype dtype;
    size_t es;         /* bytes per element */
    int swap;          /* stored big-endian */
    unsigned char fill[8];
    char sep;
    cp_zcodec codec;
    size_t chunk_elems, chunk_bytes;
};

int cp_zarr_ndim(const cp_zarr *z) { return z->ndim; }
const int64_t *cp_zarr_shape(const cp_zarr *z) { return z->shape; }
const int64_t *cp_zarr_chunks(const cp_zarr *z) { return z->chunks; }
cp_dtype cp_zarr_dtype(const cp_zarr *z) { return z->dtype; }

void cp_zarr_close(cp_zarr *z)
{
    if (z) {
        free(z->path);
        free(z);
    }
}

/* A whole small file as a NUL-terminated string; NULL with *missing set when
 * it does not exist. */
static char *read_text(const char *file, size_t max, int *missing, int *rc)
{
    *missing = 0;
    FILE *f = fopen(file, "rb");
    if (!f) {
        *missing = errno == ENOENT || errno == ENOTDIR;
        /* a missing file is an answer, not an error, for the callers */
        *rc = *missing ? CP_EIO : cp_error(CP_EIO, "%s: cannot open: %s", file, strerror(errno));
        return NULL;
    }
    char *buf = cp_malloc(max + 1, "metadata");
    size_t n = buf ? fread(buf, 1, max + 1, f) : 0;
    int bad = ferror(f);
    fclose(f);
    if (!buf) {
        *rc = CP_ENOMEM;
        return NULL;
    }
    if (bad || n > max) {
        free(buf);
        *rc = cp_error(bad ? CP_EIO : CP_ELIMIT, bad ? "%s: read error" : "%s: larger than %zu bytes", file, max);
        return NULL;
    }
    buf[n] = 0;
    *rc = CP_OK;
    return buf;
}

cJSON *cp_zarr_read_json(const char *dir, const char *name, int *rc, int *missing)
{
    char *file = cp_path_join(dir, name);
    if (!file) {
        *rc = CP_ENOMEM;
        return NULL;
    }
    char *text = read_text(file, ZARR_MAX_HEADER, missing, rc);
    cJSON *j = NULL;
    if (text) {
        j = cJSON_Parse(text);
        if (!j)
            *rc = cp_error(CP_EFORMAT, "%s: not valid JSON", file);
    }
    free(text);
    free(file);
    return j;
}

/* ---- .zarray ------------------------------------------------------------ */

static int parse_dtype(const char *file, const char *s, cp_zarr *z)
{
    static const struct { char kind; int size; cp_dtype t; } map[] = {
        {'u', 1, CP_U8}, {'u', 2, CP_U16}, {'u', 4, CP_U32}, {'u', 8, CP_U64}, {'i', 1, CP_I8}, {'i', 2, CP_I16},
        {'i', 4, CP_I32}, {'i', 8, CP_I64}, {'f', 4, CP_F32}, {'f', 8, CP_F64}, {'b', 1, CP_U8},
    };
    if (strlen(s) == 3 && strchr("<>|", s[0]))
        for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
            if (s[1] == map[i].kind && s[2] - '0' == map[i].size) {
                z->dtype = map[i].t;
                z->es = (size_t)map[i].size;
                z->swap = s[0] == '>' && map[i].size > 1;
                return CP_OK;
            }
    return cp_error(CP_EUNSUPPORTED, "%s: dtype \"%s\" is not supported (u1-u8, i1-i8, f4, f8, b1)", file, s);
}

static int parse_dims(const char *file, const cJSON *a, const char *what, int64_t *out, int *n, int64_t min)
{
    if (!cJSON_IsArray(a))
        return cp_error(CP_EFORMAT, "%s: \"%s\" is not a list", file, what);
    int k = cJSON_GetArraySize(a);
    if (k < 1 || k > CP_ZARR_MAX_DIM)
        return cp_error(CP_EUNSUPPORTED, "%s: %d dimensions (1 to %d supported)", file, k, CP_ZARR_MAX_DIM);
    for (int i = 0; i < k; i++) {
        const cJSON *v = cJSON_GetArrayItem(a, i);
        double d = cJSON_IsNumber(v) ? v->valuedouble : -1;
        if (d < (double)min || d > (double)ZARR_MAX_ELEMENTS || d != floor(d))
            return cp_error(CP_EFORMAT, "%s: bad \"%s\" entry %d", file, what, i);
        out[i] = (int64_t)d;
    }
    *n = k;
    return CP_OK;
}

static void store_fill(cp_zarr *z, double v)
{
    union { uint8_t u8; uint16_t u16; uint32_t u32; uint64_t u64; int8_t i8; int16_t i16; int32_t i32; int64_t i64;
            float f32; double f64; } u;
    memset(&u, 0, sizeof u);
    switch (z->dtype) {
    case CP_U8: u.u8 = (uint8_t)v; break;
    case CP_U16: u.u16 = (uint16_t)v; break;
    case CP_U32: u.u32 = (uint32_t)v; break;
    case CP_U64: u.u64 = (uint64_t)v; break;
    case CP_I8: u.i8 = (int8_t)v; break;
    case CP_I16: u.i16 = (int16_t)v; break;
    case CP_I32: u.i32 = (int32_t)v; break;
    case CP_I64: u.i64 = (int64_t)v; break;
    case CP_F32: u.f32 = (float)v; break;
    default: u.f64 = v; break;
    }
    memcpy(z->fill, &u, z->es);
}

static int parse_fill(const char *file, const cJSON *f, cp_zarr *z)
{
    double v = 0;
    if (!f || cJSON_IsNull(f)) {
        v = 0;
    } else if (cJSON_IsBool(f)) {
        v = cJSON_IsTrue(f);
    } else if (cJSON_IsNumber(f)) {
        v = f->valuedouble;
    } else if (cJSON_IsString(f) && !strcmp(f->valuestring, "NaN")) {
        v = NAN;
    } else if (cJSON_IsString(f) && !strcmp(f->valuestring, "Infinity")) {
        v = INFINITY;
    } else if (cJSON_IsString(f) && !strcmp(f->valuestring, "-Infinity")) {
        v = -INFINITY;
    } else {
        return cp_error(CP_EUNSUPPORTED, "%s: fill_value is not a number", file);
    }
    if (!cp_dtype_is_float(z->dtype)) {
        double lo = cp_dtype_is_signed(z->dtype) ? -ldexp(1, 8 * (int)z->es - 1) : 0;
        double hi = cp_dtype_is_signed(z->dtype) ? ldexp(1, 8 * (int)z->es - 1) : ldexp(1, 8 * (int)z->es);
        if (!(v >= lo && v < hi) || v != floor(v))
            return cp_error(CP_EFORMAT, "%s: fill_value %g does not fit dtype %s", file, v, cp_dtype_name(z->dtype));
    }
    store_fill(z, v);
    return CP_OK;
}

static int parse_compressor(const char *file, const cJSON *c, cp_zcodec *codec)
{
    memset(codec, 0, sizeof *codec);
    if (!c || cJSON_IsNull(c))
        return CP_OK;
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(c, "id");
    if (!cJSON_IsObject(c) || !cJSON_IsString(id))
        return cp_error(CP_EFORMAT, "%s: compressor without an \"id\"", file);
    const cJSON *lv = cJSON_GetObjectItemCaseSensitive(c, "level");
    codec->level = cJSON_IsNumber(lv) ? lv->valueint : 1;
    if (!strcmp(id->valuestring, "zlib"))
        codec->id = CP_ZARR_ZLIB;
    else if (!strcmp(id->valuestring, "gzip"))
        codec->id = CP_ZARR_GZIP;
    else if (!strcmp(id->valuestring, "zstd"))
        codec->id = CP_ZARR_ZSTD;
    else if (!strcmp(id->valuestring, "blosc")) {
        /* decoding needs nothing from here: the blosc header says it all */
        codec->id = CP_ZARR_BLOSC;
        const cJSON *cn = cJSON_GetObjectItemCaseSensitive(c, "cname");
        const cJSON *cl = cJSON_GetObjectItemCaseSensitive(c, "clevel");
        const cJSON *sh = cJSON_GetObjectItemCaseSensitive(c, "shuffle");
        snprintf(codec->cname, sizeof codec->cname, "%s", cJSON_IsString(cn) ? cn->valuestring : "lz4");
        codec->level = cJSON_IsNumber(cl) ? cl->valueint : 5;
        codec->shuffle = cJSON_IsNumber(sh) ? sh->valueint : 1;
    } else
        return cp_error(CP_EUNSUPPORTED, "%s: compressor \"%.40s\" is not supported (zlib, gzip, zstd, blosc)", file,
                        id->valuestring);
    return CP_OK;
}

/* Chunk sizes and strides once dtype, shape and chunks are known. */
static int finish_layout(const char *file, cp_zarr *z, int fortran)
{
    int64_t total = 1, celems = 1;
    for (int i = 0; i < z->ndim; i++) {
        if (z->shape[i] && total > ZARR_MAX_ELEMENTS / z->shape[i])
            return cp_error(CP_ELIMIT, "%s: shape has more than 2^53 elements", file);
        total *= z->shape[i];
        if (celems > (int64_t)cp_get_max_pixels() / z->chunks[i])
            return cp_error(CP_ELIMIT, "%s: chunks beyond the limit of %llu elements", file,
                            (unsigned long long)cp_get_max_pixels());
        celems *= z->chunks[i];
    }
    if ((size_t)celems > SIZE_MAX / z->es || (uint64_t)celems > cp_get_max_pixels())
        return cp_error(CP_ELIMIT, "%s: chunks beyond the limit of %llu elements", file,
                        (unsigned long long)cp_get_max_pixels());
    z->chunk_elems = (size_t)celems;
    z->chunk_bytes = (size_t)celems * z->es;
    int64_t s = 1;
    for (int k = 0; k < z->ndim; k++) {
        int i = fortran ? k : z->ndim - 1 - k;
        z->cstride[i] = s;
        s *= z->chunks[i];
    }
    return CP_OK;
}

static int parse_zarray(const char *file, const cJSON *j, cp_zarr *z)
{
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(j, "zarr_format");
    if (!cJSON_IsObject(j) || !cJSON_IsNumber(fmt))
        return cp_error(CP_EFORMAT, "%s: no zarr_format", file);
    if (fmt->valueint != 2)
        return cp_error(CP_EUNSUPPORTED, "%s: zarr_format %d (only 2 is supported)", file, fmt->valueint);
    int rc, nc = 0;
    if ((rc = parse_dims(file, cJSON_GetObjectItemCaseSensitive(j, "shape"), "shape", z->shape, &z->ndim, 0)) ||
        (rc = parse_dims(file, cJSON_GetObjectItemCaseSensitive(j, "chunks"), "chunks", z->chunks, &nc, 1)))
        return rc;
    if (nc != z->ndim)
        return cp_error(CP_EFORMAT, "%s: %d chunk sizes for %d dimensions", file, nc, z->ndim);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(j, "dtype");
    if (!cJSON_IsString(dt))
        return cp_error(CP_EUNSUPPORTED, "%s: dtype is not a string (structured dtypes are not supported)", file);
    if ((rc = parse_dtype(file, dt->valuestring, z)))
        return rc;
    const cJSON *order = cJSON_GetObjectItemCaseSensitive(j, "order");
    int fortran = cJSON_IsString(order) && !strcmp(order->valuestring, "F");
    if (cJSON_IsString(order) && !fortran && strcmp(order->valuestring, "C"))
        return cp_error(CP_EFORMAT, "%s: order \"%.20s\" (C or F)", file, order->valuestring);
    const cJSON *filters = cJSON_GetObjectItemCaseSensitive(j, "filters");
    if (filters && !cJSON_IsNull(filters) && cJSON_GetArraySize(filters) > 0) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(filters, 0), "id");
        return cp_error(CP_EUNSUPPORTED, "%s: filter \"%.40s\" is not supported (filters must be null)", file,
                        cJSON_IsString(id) ? id->valuestring : "?");
    }
    const cJSON *sep = cJSON_GetObjectItemCaseSensitive(j, "dimension_separator");
    z->sep = '.';
    if (sep && !cJSON_IsNull(sep)) {
        if (!cJSON_IsString(sep) || (strcmp(sep->valuestring, ".") && strcmp(sep->valuestring, "/")))
            return cp_error(CP_EFORMAT, "%s: dimension_separator must be \".\" or \"/\"", file);
        z->sep = sep->valuestring[0];
    }
    if ((rc = parse_fill(file, cJSON_GetObjectItemCaseSensitive(j, "fill_value"), z)) ||
        (rc = parse_compressor(file, cJSON_GetObjectItemCaseSensitive(j, "compressor"), &z->codec)))
        return rc;
    return finish_layout(file, z, fortran);
}

int cp_zarr_open(const char *path, cp_zarr **out)
{
    *out = NULL;
    cp_zarr *z = cp_calloc(1, sizeof *z, "zarr array");
    if (!z)
        return CP_ENOMEM;
    int rc, missing;
    cJSON *j = cp_zarr_read_json(path, ".zarray", &rc, &missing);
    if (!j) {
        free(z);
        if (missing)
            return cp_error(CP_EIO, "%s: not a Zarr array (no .zarray)", path);
        return rc;
    }
    char *file = cp_path_join(path, ".zarray");
    z->path = cp_strdup(path);
    rc = !file || !z->path ? CP_ENOMEM : parse_zarray(file, j, z);
    cJSON_Delete(j);
    free(file);
    if (rc) {
        cp_zarr_close(z);
        return rc;
    }
    *out = z;
    return CP_OK;
}

/* ---- writing metadata --------------------------------------------------- */

static const char *dtype_str(cp_dtype t)
{
    static const char *s[] = {"|u1", "<u2", "<u4", "|i1", "<i2", "<i4", "<i8", "<f4", "<f8", "<u8"};
    return (unsigned)t < sizeof s / sizeof s[0] ? s[t] : NULL;
}

static cJSON *dims_json(int n, const int64_t *v)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < n; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber((double)v[i]));
    return a;
}

static cJSON *compressor_json(const cp_zcodec *c)
{
    if (c->id == CP_ZARR_RAW)
        return cJSON_CreateNull();
    cJSON *o = cJSON_CreateObject();
    static const char *ids[] = {"", "zlib", "gzip", "zstd", "blosc"};
    if (c->id == CP_ZARR_BLOSC) {
        cJSON_AddNumberToObject(o, "blocksize", 0);
        cJSON_AddNumberToObject(o, "clevel", c->level);
        cJSON_AddStringToObject(o, "cname", c->cname);
        cJSON_AddStringToObject(o, "id", "blosc");
        cJSON_AddNumberToObject(o, "shuffle", c->shuffle);
    } else {
        cJSON_AddStringToObject(o, "id", ids[c->id]);
        cJSON_AddNumberToObject(o, "level", c->level);
    }
    return o;
}

/* Write a JSON document atomically (shared with the OME writer). */
int cp_zarr_write_json(const char *dir, const char *name, const cJSON *j)
{
    char *file = cp_path_join(dir, name);
    char *text = cJSON_Print(j);
    int rc = CP_OK;
    if (!file || !text) {
        rc = cp_error(CP_ENOMEM, "out of memory writing %s", name);
    } else {
        cp_atomic a;
        if ((rc = cp_atomic_open(&a, file)) == CP_OK) {
            fputs(text, a.fp);
            fputc('\n', a.fp);
            rc = cp_atomic_commit(&a);
        }
    }
    free(file);
    free(text);
    return rc;
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)st, (void)f;
    return (flag == FTW_DP ? rmdir(p) : unlink(p)) != 0 && errno != ENOENT;
}

/* Remove the chunk files and folders of an array or group being replaced
 * (names starting with a digit: chunk keys, and level folders "0", "1"...). */
int cp_zarr_remove_chunks(const char *path)
{
    DIR *d = opendir(path);
    if (!d)
        return CP_OK;
    int rc = CP_OK;
    struct dirent *e;
    while (rc == CP_OK && (e = readdir(d)) != NULL) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        char *p = cp_path_join(path, e->d_name);
        if (!p)
            rc = CP_ENOMEM;
        else if (nftw(p, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
            rc = cp_error(CP_EIO, "%s: cannot remove old chunk: %s", p, strerror(errno));
        free(p);
    }
    closedir(d);
    return rc;
}

static int set_codec(const char *path, const cp_zarr_opts *o, cp_zcodec *c)
{
    memset(c, 0, sizeof *c);
    /* no opts: zlib level 1, readable by every zarr and as fast as deflate goes */
    c->id = o ? o->codec : CP_ZARR_ZLIB;
    int lv = o ? o->level : 0;
    switch (c->id) {
    case CP_ZARR_RAW: break;
    case CP_ZARR_ZLIB:
    case CP_ZARR_GZIP:
        c->level = lv ? lv : 1;
        if (c->level < 0 || c->level > 9)
            return cp_error(CP_EINVAL, "%s: zlib level %d (1-9)", path, c->level);
        break;
    case CP_ZARR_ZSTD: c->level = lv ? lv : 1; break;
    case CP_ZARR_BLOSC: {
        c->level = lv ? lv : 5;
        c->shuffle = o->blosc_shuffle;
        const char *cn = o->blosc_cname ? o->blosc_cname : "lz4";
        static const char *ok[] = {"lz4", "lz4hc", "blosclz", "zlib", "zstd"};
        int found = 0;
        for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
            found |= !strcmp(cn, ok[i]);
        if (!found || c->level < 0 || c->level > 9 || c->shuffle < 0 || c->shuffle > 2)
            return cp_error(CP_EINVAL, "%s: blosc compressor \"%s\" level %d shuffle %d", path, cn, c->level,
                            c->shuffle);
        snprintf(c->cname, sizeof c->cname, "%s", cn);
        break;
    }
    default: return cp_error(CP_EINVAL, "%s: unknown codec %d", path, (int)c->id);
    }
    return CP_OK;
}

int cp_zarr_create(const char *path, int ndim, const int64_t *shape, const int64_t *chunks, cp_dtype dtype,
                   const cp_zarr_opts *opts, int overwrite, cp_zarr **out)
{
    *out = NULL;
    if (ndim < 1 || ndim > CP_ZARR_MAX_DIM || !dtype_str(dtype))
        return cp_error(CP_EINVAL, "%s: cannot create a %d-D array of %s", path, ndim, cp_dtype_name(dtype));
    cp_zarr *z = cp_calloc(1, sizeof *z, "zarr array");
    if (!z)
        return CP_ENOMEM;
    z->ndim = ndim;
    z->dtype = dtype;
    z->es = cp_dtype_size(dtype);
    z->sep = opts && opts->dimension_separator ? opts->dimension_separator : '.';
    int rc = CP_OK;
    for (int i = 0; i < ndim && !rc; i++) {
        z->shape[i] = shape[i];
        z->chunks[i] = chunks[i];
        if (shape[i] < 0 || shape[i] > ZARR_MAX_ELEMENTS || chunks[i] < 1 || chunks[i] > ZARR_MAX_ELEMENTS)
            rc = cp_error(CP_EINVAL, "%s: bad shape %lld or chunk %lld in dimension %d", path, (long long)shape[i],
                          (long long)chunks[i], i);
    }
    if (!rc && z->sep != '.' && z->sep != '/')
        rc = cp_error(CP_EINVAL, "%s: dimension separator '%c' (. or /)", path, z->sep);
    if (!rc)
        rc = set_codec(path, opts, &z->codec);
    if (!rc)
        rc = finish_layout(path, z, 0);
    if (!rc && !(z->path = cp_strdup(path)))
        rc = CP_ENOMEM;
    char *file = rc ? NULL : cp_path_join(path, ".zarray");
    if (!rc && !file)
        rc = CP_ENOMEM;
    if (!rc && !overwrite && cp_path_exists(file))
        rc = cp_error(CP_EEXIST, "%s: Zarr array exists (overwrite not asked for)", path);
    if (!rc)
        rc = cp_mkdirs(path);
    if (!rc && overwrite)
        rc = cp_zarr_remove_chunks(path);
    if (!rc) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddItemToObject(j, "chunks", dims_json(ndim, chunks));
        cJSON_AddItemToObject(j, "compressor", compressor_json(&z->codec));
        cJSON_AddStringToObject(j, "dimension_separator", z->sep == '/' ? "/" : ".");
        cJSON_AddStringToObject(j, "dtype", dtype_str(dtype));
        cJSON_AddNumberToObject(j, "fill_value", 0);
        cJSON_AddNullToObject(j, "filters");
        cJSON_AddStringToObject(j, "order", "C");
        cJSON_AddItemToObject(j, "shape", dims_json(ndim, shape));
        cJSON_AddNumberToObject(j, "zarr_format", 2);
        rc = cp_zarr_write_json(path, ".zarray", j);
        cJSON_Delete(j);
    }
    free(file);
    if (rc) {
        cp_zarr_close(z);
        return rc;
    }
    *out = z;
    return CP_OK;
}

/* ---- chunks ------------------------------------------------------------- */

static char *chunk_file(const cp_zarr *z, const int64_t *idx)
{
    size_t n = strlen(z->path) + 2 + (size_t)z->ndim * 21;
    char *f = cp_malloc(n, "chunk path");
    if (!f)
        return NULL;
    size_t k = (size_t)snprintf(f, n, "%s/", z->path);
    for (int i = 0; i < z->ndim; i++) {
        if (i)
            f[k++] = z->sep;
        k += (size_t)snprintf(f + k, n - k, "%lld", (long long)idx[i]);
    }
    return f;
}

static void fill_chunk(const cp_zarr *z, unsigned char *buf)
{
    for (size_t i = 0; i < z->chunk_elems; i++)
        memcpy(buf + i * z->es, z->fill, z->es);
}

/* Chunk idx decoded into buf (chunk_bytes, native order); fill_value when
 * its file does not exist. */
static int load_chunk(const cp_zarr *z, const int64_t *idx, unsigned char *buf)
{
    char *file = chunk_file(z, idx);
    if (!file)
        return CP_ENOMEM;
    int rc = CP_OK;
    unsigned char *raw = NULL;
    FILE *f = fopen(file, "rb");
    if (!f) {
        if (errno == ENOENT || errno == ENOTDIR)
            fill_chunk(z, buf);
        else
            rc = cp_error(CP_EIO, "%s: cannot open chunk: %s", file, strerror(errno));
        free(file);
        return rc;
    }
    struct stat st;
    size_t cap = cp_zcodec_bound(z->chunk_bytes);
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode))
        rc = cp_error(CP_EIO, "%s: not a readable chunk file", file);
    else if ((uint64_t)st.st_size > cap)
        rc = cp_error(CP_EFORMAT, "%s: chunk file of %lld bytes is too large for a %zu-byte chunk", file,
                      (long long)st.st_size, z->chunk_bytes);
    else if (!(raw = cp_malloc((size_t)st.st_size + 1, "chunk file")))
        rc = CP_ENOMEM;
    else if (fread(raw, 1, (size_t)st.st_size, f) != (size_t)st.st_size)
        rc = cp_error(CP_EIO, "%s: read error", file);
    fclose(f);
    if (!rc)
        rc = cp_zcodec_decode(&z->codec, file, raw, (size_t)st.st_size, buf, z->chunk_bytes);
    if (!rc && z->swap)
        cp_byteswap(buf, z->chunk_elems, z->es);
    free(raw);
    free(file);
    return rc;
}

static int store_chunk(const cp_zarr *z, const int64_t *idx, unsigned char *buf)
{
    char *file = chunk_file(z, idx);
    if (!file)
        return CP_ENOMEM;
    int rc = CP_OK;
    if (z->sep == '/') {
        char *dir = cp_path_dir(file);
        rc = dir ? cp_mkdirs(dir) : CP_ENOMEM;
        free(dir);
    }
    if (z->swap)
        cp_byteswap(buf, z->chunk_elems, z->es);
    void *enc = NULL;
    size_t n = 0;
    if (!rc)
        rc = cp_zcodec_encode(&z->codec, file, buf, z->chunk_bytes, z->es, &enc, &n);
    cp_atomic a;
    if (!rc && (rc = cp_atomic_open(&a, file)) == CP_OK) {
        fwrite(enc, 1, n, a.fp);
        rc = cp_atomic_commit(&a);
    }
    free(enc);
    free(file);
    return rc;
}

/* ---- boxes -------------------------------------------------------------- */

void cp_zarr_copy_box(int nd, const int64_t *cnt, const unsigned char *src, const int64_t *sstr, unsigned char *dst,
                     const int64_t *dstr, size_t es)
{
    int64_t i[CP_ZARR_MAX_DIM] = {0};
    int last = nd - 1;
    size_t run = (size_t)cnt[last];
    int contiguous = sstr[last] == 1 && dstr[last] == 1;
    for (int k = 0; k < nd; k++)
        if (cnt[k] == 0)
            return;
    for (;;) {
        int64_t so = 0, doff = 0;
        for (int k = 0; k < last; k++)
            so += i[k] * sstr[k], doff += i[k] * dstr[k];
        const unsigned char *s = src + (size_t)so * es;
        unsigned char *d = dst + (size_t)doff * es;
        if (contiguous)
            memcpy(d, s, run * es);
        else
            for (size_t x = 0; x < run; x++)
                memcpy(d + (size_t)dstr[last] * x * es, s + (size_t)sstr[last] * x * es, es);
        int k = last - 1;
        while (k >= 0 && ++i[k] == cnt[k])
            i[k--] = 0;
        if (k < 0)
            return;
    }
}

static int check_box(const cp_zarr *z, const int64_t *start, const int64_t *count, int64_t *lo_chunk,
                     int64_t *hi_chunk, int *empty)
{
    *empty = 0;
    for (int k = 0; k < z->ndim; k++) {
        if (start[k] < 0 || count[k] < 0 || start[k] > z->shape[k] || count[k] > z->shape[k] - start[k])
            return cp_error(CP_EINVAL, "%s: box %lld+%lld outside dimension %d of size %lld", z->path,
                            (long long)start[k], (long long)count[k], k, (long long)z->shape[k]);
        *empty |= count[k] == 0;
        lo_chunk[k] = start[k] / z->chunks[k];
        hi_chunk[k] = count[k] ? (start[k] + count[k] - 1) / z->chunks[k] : lo_chunk[k];
    }
    return CP_OK;
}

/* Read (write = 0) or write a box, one chunk at a time. */
static int box_io(cp_zarr *z, const int64_t *start, const int64_t *count, unsigned char *buf, int write)
{
    int64_t lo[CP_ZARR_MAX_DIM], hi[CP_ZARR_MAX_DIM], idx[CP_ZARR_MAX_DIM], bstr[CP_ZARR_MAX_DIM];
    int empty, rc = check_box(z, start, count, lo, hi, &empty);
    if (rc || empty)
        return rc;
    int nd = z->ndim;
    int64_t s = 1;
    for (int k = nd - 1; k >= 0; k--)
        bstr[k] = s, s *= count[k];
    unsigned char *chunk = cp_malloc(z->chunk_bytes, "chunk");
    if (!chunk)
        return CP_ENOMEM;
    memcpy(idx, lo, sizeof idx);
    for (;;) {
        int64_t a[CP_ZARR_MAX_DIM], n[CP_ZARR_MAX_DIM], coff = 0, boff = 0;
        int whole = 1;
        for (int k = 0; k < nd; k++) {
            int64_t o = idx[k] * z->chunks[k], e = o + z->chunks[k];
            int64_t b = start[k] + count[k] < e ? start[k] + count[k] : e;
            a[k] = start[k] > o ? start[k] : o;
            n[k] = b - a[k];
            coff += (a[k] - o) * z->cstride[k];
            boff += (a[k] - start[k]) * bstr[k];
            /* the box covers all of this chunk that lies inside the array */
            whole &= a[k] == o && b == (e < z->shape[k] ? e : z->shape[k]);
        }
        unsigned char *in_chunk = chunk + (size_t)coff * z->es, *in_buf = buf + (size_t)boff * z->es;
        if (!write) {
            rc = load_chunk(z, idx, chunk);
            if (!rc)
                cp_zarr_copy_box(nd, n, in_chunk, z->cstride, in_buf, bstr, z->es);
        } else {
            if (whole)
                fill_chunk(z, chunk); /* edge chunks: the part outside the array holds fill_value */
            else
                rc = load_chunk(z, idx, chunk);
            if (!rc) {
                cp_zarr_copy_box(nd, n, in_buf, bstr, in_chunk, z->cstride, z->es);
                rc = store_chunk(z, idx, chunk);
            }
        }
        if (rc)
            break;
        int k = nd - 1;
        while (k >= 0 && idx[k] == hi[k])
            idx[k] = lo[k], k--;
        if (k < 0)
            break;
        idx[k]++;
    }
    free(chunk);
    return rc;
}

int cp_zarr_read(cp_zarr *z, const int64_t *start, const int64_t *count, void *buf)
{
    return box_io(z, start, count, buf, 0);
}

int cp_zarr_write(cp_zarr *z, const int64_t *start, const int64_t *count, const void *buf)
{
    return box_io(z, start, count, (unsigned char *)buf, 1);
}
