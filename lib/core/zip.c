/* ZIP writer (PKWARE APPNOTE 6.3): local headers with sizes known up front,
 * central directory at the end, ZIP64 records only when a field overflows. */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "cellpose/files.h"
#include "cellpose/zip.h"
#include "core/internal.h"

#define SIG_LOCAL 0x04034b50u
#define SIG_CENTRAL 0x02014b50u
#define SIG_EOCD 0x06054b50u
#define SIG_EOCD64 0x06064b50u
#define SIG_LOCATOR64 0x07064b50u
#define MAX32 0xFFFFFFFFu
#define MAX16 0xFFFFu
/* 1980-01-01 00:00:00 in MS-DOS date/time: the earliest the format can say. */
#define DOS_TIME 0x0000u
#define DOS_DATE 0x0021u
#define UNIX_MODE 0100644u

typedef struct zip_entry {
    char *name;
    uint32_t crc;
    uint16_t method, flags;
    uint64_t csize, usize, offset;
} zip_entry;

struct cp_zip {
    FILE *fp;
    char *name;              /* for messages */
    cp_atomic atomic;        /* used when writing a file */
    int is_atomic;
    int level, force64;
    uint64_t offset;         /* bytes written */
    zip_entry *entries;
    size_t n, cap;
    size_t *hash;            /* open addressing over entry index + 1; 0 = empty */
    size_t hash_cap;
    int failed;
};

static void put16(unsigned char *p, unsigned v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static int zwrite(cp_zip *z, const void *data, size_t size)
{
    if (size && fwrite(data, 1, size, z->fp) != size) {
        z->failed = 1;
        return cp_error(CP_EIO, "%s: write failed: %s", z->name, strerror(errno));
    }
    z->offset += size;
    return CP_OK;
}

static int zip_init(cp_zip **out, const char *name, const cp_zip_opts *opts)
{
    cp_zip *z = cp_calloc(1, sizeof *z, "zip writer");
    if (!z)
        return CP_ENOMEM;
    z->name = cp_strdup(name);
    if (!z->name) {
        free(z);
        return CP_ENOMEM;
    }
    z->atomic.fd = -1;
    z->level = opts && opts->level >= 0 && opts->level <= 9 ? opts->level : 6;
    z->force64 = opts ? opts->force_zip64 : 0;
    *out = z;
    return CP_OK;
}

int cp_zip_open_fp(cp_zip **out, FILE *fp, const char *name, const cp_zip_opts *opts)
{
    *out = NULL;
    if (!fp)
        return cp_error(CP_EINVAL, "%s: no output stream", name ? name : "zip");
    int rc = zip_init(out, name ? name : "zip", opts);
    if (rc == CP_OK)
        (*out)->fp = fp;
    return rc;
}

int cp_zip_open(cp_zip **out, const char *path, int overwrite, const cp_zip_opts *opts)
{
    *out = NULL;
    if (!overwrite && cp_path_exists(path))
        return cp_error(CP_EEXIST, "%s: exists and overwriting was not asked for", path);
    cp_zip *z;
    int rc = zip_init(&z, path, opts);
    if (rc != CP_OK)
        return rc;
    rc = cp_atomic_open(&z->atomic, path);
    if (rc != CP_OK) {
        free(z->name);
        free(z);
        return rc;
    }
    z->is_atomic = 1;
    z->fp = z->atomic.fp;
    *out = z;
    return CP_OK;
}

static size_t name_hash(const char *s)
{
    size_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* Insert entry index i into the name set; CP_EINVAL if the name is taken. */
static int name_insert(cp_zip *z, size_t i)
{
    if ((z->n + 1) * 2 > z->hash_cap) {
        size_t cap = z->hash_cap ? z->hash_cap * 2 : 64;
        size_t *h = cp_calloc(cap, sizeof *h, "zip name table");
        if (!h)
            return CP_ENOMEM;
        for (size_t k = 0; k < z->hash_cap; k++)
            if (z->hash[k]) {
                size_t j = name_hash(z->entries[z->hash[k] - 1].name) & (cap - 1);
                while (h[j])
                    j = (j + 1) & (cap - 1);
                h[j] = z->hash[k];
            }
        free(z->hash);
        z->hash = h;
        z->hash_cap = cap;
    }
    const char *name = z->entries[i].name;
    size_t j = name_hash(name) & (z->hash_cap - 1);
    while (z->hash[j]) {
        if (strcmp(z->entries[z->hash[j] - 1].name, name) == 0)
            return cp_error(CP_EINVAL, "%s: duplicate entry name '%s'", z->name, name);
        j = (j + 1) & (z->hash_cap - 1);
    }
    z->hash[j] = i + 1;
    return CP_OK;
}

static int valid_name(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > MAX16 || name[0] == '/' || name[len - 1] == '/' || strchr(name, '\\'))
        return 0;
    for (const char *p = name; *p;) {
        const char *e = strchr(p, '/');
        size_t seg = e ? (size_t)(e - p) : strlen(p);
        if (seg == 0 || (seg == 2 && p[0] == '.' && p[1] == '.') || (seg == 1 && p[0] == '.'))
            return 0;
        p += seg + (e ? 1 : 0);
    }
    return 1;
}

/* Raw deflate of data into a new buffer; *out_size its length. */
static int deflate_buf(const cp_zip *z, const void *data, size_t size, unsigned char **out, size_t *out_size)
{
    z_stream s;
    memset(&s, 0, sizeof s);
    if (deflateInit2(&s, z->level, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return cp_error(CP_ENOMEM, "%s: cannot start deflate", z->name);
    size_t cap = (size_t)deflateBound(&s, (uLong)size) + 64;
    unsigned char *buf = cp_malloc(cap, "deflate buffer");
    if (!buf) {
        deflateEnd(&s);
        return CP_ENOMEM;
    }
    const unsigned char *in = data;
    size_t in_left = size, out_pos = 0;
    int zr;
    do {
        uInt ci = in_left > (size_t)UINT_MAX ? UINT_MAX : (uInt)in_left;
        uInt co = cap - out_pos > (size_t)UINT_MAX ? UINT_MAX : (uInt)(cap - out_pos);
        s.next_in = (Bytef *)(uintptr_t)in;
        s.avail_in = ci;
        s.next_out = buf + out_pos;
        s.avail_out = co;
        zr = deflate(&s, ci == in_left ? Z_FINISH : Z_NO_FLUSH);
        in += ci - s.avail_in;
        in_left -= ci - s.avail_in;
        out_pos += co - s.avail_out;
    } while (zr == Z_OK && out_pos < cap);
    deflateEnd(&s);
    if (zr != Z_STREAM_END) {
        free(buf);
        return cp_error(CP_EIO, "%s: deflate failed (%d)", z->name, zr);
    }
    *out = buf;
    *out_size = out_pos;
    return CP_OK;
}

static int name_is_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80)
            return 0;
    return 1;
}

int cp_zip_prepare(const cp_zip *z, const void *data, size_t size, cp_zip_prepared *p)
{
    memset(p, 0, sizeof *p);
    p->size = size;
    p->crc = cp_crc32(0, data, size);
    if (z->level > 0 && size > 0) {
        int rc = deflate_buf(z, data, size, (unsigned char **)&p->packed, &p->packed_size);
        if (rc != CP_OK)
            return rc;
        if (p->packed_size >= size) { /* incompressible: store */
            free(p->packed);
            p->packed = NULL;
        }
    }
    p->method = p->packed ? 8 : 0;
    if (!p->packed)
        p->packed_size = size;
    return CP_OK;
}

void cp_zip_prepared_free(cp_zip_prepared *p)
{
    free(p->packed);
    memset(p, 0, sizeof *p);
}

int cp_zip_add(cp_zip *z, const char *name, const void *data, size_t size)
{
    cp_zip_prepared p;
    int rc = cp_zip_prepare(z, data, size, &p);
    if (rc != CP_OK) {
        z->failed = 1;
        return rc;
    }
    rc = cp_zip_add_prepared(z, name, &p, data);
    cp_zip_prepared_free(&p);
    return rc;
}

int cp_zip_add_prepared(cp_zip *z, const char *name, const cp_zip_prepared *p, const void *data)
{
    if (z->failed)
        return cp_error(CP_EIO, "%s: an earlier write failed", z->name);
    if (!valid_name(name))
        return cp_error(CP_EINVAL, "%s: invalid entry name '%s'", z->name, name);
    if (z->n == z->cap) {
        size_t cap = z->cap ? z->cap * 2 : 64;
        zip_entry *e = realloc(z->entries, cap * sizeof *e);
        if (!e || cap * sizeof *e / sizeof *e != cap)
            return cp_error(CP_ENOMEM, "%s: out of memory for zip entries", z->name);
        z->entries = e;
        z->cap = cap;
    }
    zip_entry *e = &z->entries[z->n];
    memset(e, 0, sizeof *e);
    e->name = cp_strdup(name);
    if (!e->name)
        return CP_ENOMEM;
    int rc = name_insert(z, z->n);
    if (rc != CP_OK) {
        free(e->name);
        return rc;
    }
    z->n++;
    e->crc = p->crc;
    e->method = (uint16_t)p->method;
    e->flags = name_is_ascii(name) ? 0 : 0x0800; /* bit 11: UTF-8 name */
    e->usize = p->size;
    e->csize = p->method == 8 ? p->packed_size : p->size;
    e->offset = z->offset;

    int zip64 = z->force64 || e->usize >= MAX32 || e->csize >= MAX32;
    size_t nlen = strlen(name);
    unsigned char h[30];
    put32(h, SIG_LOCAL);
    put16(h + 4, zip64 ? 45 : e->method == 8 ? 20 : 10);
    put16(h + 6, e->flags);
    put16(h + 8, e->method);
    put16(h + 10, DOS_TIME);
    put16(h + 12, DOS_DATE);
    put32(h + 14, e->crc);
    put32(h + 18, zip64 ? MAX32 : (uint32_t)e->csize);
    put32(h + 22, zip64 ? MAX32 : (uint32_t)e->usize);
    put16(h + 26, (unsigned)nlen);
    put16(h + 28, zip64 ? 20 : 0);
    unsigned char x[20];
    put16(x, 0x0001);
    put16(x + 2, 16);
    put64(x + 4, e->usize);
    put64(x + 12, e->csize);
    rc = zwrite(z, h, 30);
    if (rc == CP_OK)
        rc = zwrite(z, name, nlen);
    if (rc == CP_OK && zip64)
        rc = zwrite(z, x, 20);
    if (rc == CP_OK)
        rc = zwrite(z, p->method == 8 ? p->packed : data, (size_t)e->csize);
    return rc;
}

size_t cp_zip_count(const cp_zip *z) { return z->n; }
uint64_t cp_zip_bytes(const cp_zip *z) { return z->offset; }

static int write_central(cp_zip *z)
{
    int rc = CP_OK;
    uint64_t cd_start = z->offset;
    for (size_t i = 0; i < z->n && rc == CP_OK; i++) {
        const zip_entry *e = &z->entries[i];
        int big_u = z->force64 || e->usize >= MAX32;
        int big_c = z->force64 || e->csize >= MAX32;
        int big_o = z->force64 || e->offset >= MAX32;
        int zip64 = big_u || big_c || big_o;
        unsigned char x[4 + 24];
        size_t xl = 4;
        if (big_u) { put64(x + xl, e->usize); xl += 8; }
        if (big_c) { put64(x + xl, e->csize); xl += 8; }
        if (big_o) { put64(x + xl, e->offset); xl += 8; }
        put16(x, 0x0001);
        put16(x + 2, (unsigned)(xl - 4));
        size_t nlen = strlen(e->name);
        unsigned char h[46];
        put32(h, SIG_CENTRAL);
        put16(h + 4, (3u << 8) | (zip64 ? 45 : 20)); /* made by: Unix */
        put16(h + 6, zip64 ? 45 : e->method == 8 ? 20 : 10);
        put16(h + 8, e->flags);
        put16(h + 10, e->method);
        put16(h + 12, DOS_TIME);
        put16(h + 14, DOS_DATE);
        put32(h + 16, e->crc);
        put32(h + 20, big_c ? MAX32 : (uint32_t)e->csize);
        put32(h + 24, big_u ? MAX32 : (uint32_t)e->usize);
        put16(h + 28, (unsigned)nlen);
        put16(h + 30, zip64 ? (unsigned)xl : 0);
        put16(h + 32, 0);  /* comment */
        put16(h + 34, 0);  /* disk */
        put16(h + 36, 0);  /* internal attributes */
        put32(h + 38, (uint32_t)UNIX_MODE << 16);
        put32(h + 42, big_o ? MAX32 : (uint32_t)e->offset);
        rc = zwrite(z, h, 46);
        if (rc == CP_OK)
            rc = zwrite(z, e->name, nlen);
        if (rc == CP_OK && zip64)
            rc = zwrite(z, x, xl);
    }
    if (rc != CP_OK)
        return rc;
    uint64_t cd_size = z->offset - cd_start;
    int zip64 = z->force64 || z->n >= MAX16 || cd_size >= MAX32 || cd_start >= MAX32;
    if (zip64) {
        uint64_t eocd64 = z->offset;
        unsigned char r[56 + 20];
        put32(r, SIG_EOCD64);
        put64(r + 4, 44);
        put16(r + 12, (3u << 8) | 45);
        put16(r + 14, 45);
        put32(r + 16, 0);
        put32(r + 20, 0);
        put64(r + 24, z->n);
        put64(r + 32, z->n);
        put64(r + 40, cd_size);
        put64(r + 48, cd_start);
        put32(r + 56, SIG_LOCATOR64);
        put32(r + 60, 0);
        put64(r + 64, eocd64);
        put32(r + 72, 1);
        rc = zwrite(z, r, sizeof r);
        if (rc != CP_OK)
            return rc;
    }
    unsigned char r[22];
    put32(r, SIG_EOCD);
    put16(r + 4, 0);
    put16(r + 6, 0);
    unsigned cnt = zip64 && (z->force64 || z->n >= MAX16) ? MAX16 : (unsigned)z->n;
    put16(r + 8, cnt);
    put16(r + 10, cnt);
    put32(r + 12, zip64 && (z->force64 || cd_size >= MAX32) ? MAX32 : (uint32_t)cd_size);
    put32(r + 16, zip64 && (z->force64 || cd_start >= MAX32) ? MAX32 : (uint32_t)cd_start);
    put16(r + 20, 0);
    return zwrite(z, r, sizeof r);
}

static void zip_free(cp_zip *z)
{
    for (size_t i = 0; i < z->n; i++)
        free(z->entries[i].name);
    free(z->entries);
    free(z->hash);
    free(z->name);
    free(z);
}

int cp_zip_close(cp_zip *z)
{
    if (!z)
        return CP_OK;
    int rc = z->failed ? cp_error(CP_EIO, "%s: an earlier write failed", z->name) : write_central(z);
    if (rc == CP_OK && !z->is_atomic && fflush(z->fp) != 0)
        rc = cp_error(CP_EIO, "%s: write failed: %s", z->name, strerror(errno));
    if (z->is_atomic) {
        if (rc == CP_OK)
            rc = cp_atomic_commit(&z->atomic);
        else
            cp_atomic_abort(&z->atomic);
    }
    zip_free(z);
    return rc;
}

void cp_zip_abort(cp_zip *z)
{
    if (!z)
        return;
    if (z->is_atomic)
        cp_atomic_abort(&z->atomic);
    zip_free(z);
}
