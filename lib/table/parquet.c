/* Parquet reader for flat tables (SeeSpot's merged-table cache).
 *
 * The file is mapped; the footer's Thrift metadata gives the schema and the
 * row groups. Only the column chunks of the requested columns are touched
 * (column projection), one OpenMP task per column, each filling its own
 * output column, so results do not depend on the thread count. Pages: data
 * v1 and v2, dictionary; encodings PLAIN, PLAIN_DICTIONARY/RLE_DICTIONARY and
 * RLE (booleans); definition levels for optional columns; codecs none,
 * snappy, gzip, zstd. Every offset and size is checked against the file and
 * the chunk, and a page's declared uncompressed size is bounded before
 * anything is allocated for it. */
#include <omp.h>
#include <snappy-c.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#include "cellpose/table.h"
#include "core/internal.h"
#include "table/table_internal.h"
#include "table/thrift.h"

enum { PT_BOOLEAN, PT_INT32, PT_INT64, PT_INT96, PT_FLOAT, PT_DOUBLE, PT_BYTE_ARRAY, PT_FIXED };
enum { CODEC_NONE, CODEC_SNAPPY, CODEC_GZIP, CODEC_LZO, CODEC_BROTLI, CODEC_LZ4, CODEC_ZSTD };
enum { ENC_PLAIN = 0, ENC_PLAIN_DICT = 2, ENC_RLE = 3, ENC_RLE_DICT = 8 };
enum { PAGE_DATA = 0, PAGE_INDEX = 1, PAGE_DICT = 2, PAGE_DATA_V2 = 3 };

/* Largest page we inflate (declared sizes beyond it are refused). */
#define MAX_PAGE ((size_t)1 << 30)

typedef struct pq_leaf {
    char *name;
    int type, optional, is_unsigned;
} pq_leaf;

typedef struct pq_chunk {
    int codec, type;
    int64_t start, size, nvalues;
} pq_chunk;

typedef struct pq_file {
    const char *path;
    cp_fmap fm;
    pq_leaf *leaf;
    int nleaf;
    int64_t nrows;
    int ngroups;
    int64_t *group_rows;
    pq_chunk *chunks; /* ngroups x nleaf */
} pq_file;

#define FAIL(...) return cp_error(CP_EFORMAT, __VA_ARGS__)

static void pq_close(pq_file *f)
{
    for (int i = 0; i < f->nleaf; i++)
        free(f->leaf[i].name);
    free(f->leaf);
    free(f->group_rows);
    free(f->chunks);
    cp_fmap_close(&f->fm);
    memset(f, 0, sizeof *f);
}

/* ---- metadata ---------------------------------------------------------- */

static int parse_schema(pq_file *f, tcur *c)
{
    int et;
    uint32_t n = tc_list(c, &et);
    if (c->err || et != TT_STRUCT || n < 1)
        FAIL("%s: bad Parquet schema", f->path);
    f->leaf = cp_calloc(n, sizeof *f->leaf, "Parquet schema");
    if (!f->leaf)
        return CP_ENOMEM;
    for (uint32_t i = 0; i < n && !c->err; i++) {
        pq_leaf L = {NULL, -1, 0, 0};
        int64_t children = 0, conv = -1;
        const uint8_t *nm = NULL;
        size_t nl = 0;
        int16_t id;
        int t;
        tc_struct_begin(c);
        while (tc_field(c, &id, &t)) {
            switch (id) {
            case 1: L.type = (int)tc_int(c, t); break;
            case 3: L.optional = tc_int(c, t); break;
            case 4: nm = tc_binary(c, &nl); break;
            case 5: children = tc_int(c, t); break;
            case 6: conv = tc_int(c, t); break;
            case 10: { /* LogicalType union: INTEGER(10) {bitWidth, isSigned} */
                int16_t lid;
                int lt;
                tc_struct_begin(c);
                while (tc_field(c, &lid, &lt)) {
                    if (lid == 10 && lt == TT_STRUCT) {
                        int16_t iid;
                        int it;
                        tc_struct_begin(c);
                        while (tc_field(c, &iid, &it))
                            if (iid == 2)
                                L.is_unsigned = !tc_int(c, it);
                            else
                                tc_skip(c, it);
                        tc_struct_end(c);
                    } else {
                        tc_skip(c, lt);
                    }
                }
                tc_struct_end(c);
                break;
            }
            default: tc_skip(c, t); break;
            }
        }
        tc_struct_end(c);
        if (c->err)
            break;
        if (i == 0) {
            if (children != (int64_t)n - 1)
                FAIL("%s: nested Parquet schemas are not supported (flat tables only)", f->path);
            continue;
        }
        for (size_t k = 0; k < nl; k++)
            if (nm[k] < 0x20 || nm[k] == 0x7f)
                FAIL("%s: Parquet column name with control characters", f->path);
        if (children > 0 || L.optional == 2)
            FAIL("%s: nested or repeated Parquet column '%.*s' is not supported", f->path,
                 (int)(nl > 200 ? 200 : nl), nm ? (const char *)nm : "");
        if (conv >= 11 && conv <= 14)
            L.is_unsigned = 1;
        if (!(L.name = cp_malloc(nl + 1, "Parquet schema")))
            return CP_ENOMEM;
        if (nl)
            memcpy(L.name, nm, nl);
        L.name[nl] = '\0';
        f->leaf[f->nleaf++] = L;
    }
    if (c->err)
        FAIL("%s: corrupt Parquet schema", f->path);
    return CP_OK;
}

static int parse_chunk(pq_file *f, tcur *c, pq_chunk *k)
{
    int64_t data_off = -1, dict_off = -1;
    int16_t id;
    int t;
    tc_struct_begin(c);
    while (tc_field(c, &id, &t)) {
        if (id == 1 && t == TT_BINARY) {
            size_t n;
            tc_binary(c, &n);
            if (n)
                FAIL("%s: Parquet column chunks in other files are not supported", f->path);
        } else if (id == 3 && t == TT_STRUCT) {
            int16_t mid;
            int mt;
            tc_struct_begin(c);
            while (tc_field(c, &mid, &mt)) {
                switch (mid) {
                case 1: k->type = (int)tc_int(c, mt); break;
                case 4: k->codec = (int)tc_int(c, mt); break;
                case 5: k->nvalues = tc_int(c, mt); break;
                case 7: k->size = tc_int(c, mt); break;
                case 9: data_off = tc_int(c, mt); break;
                case 11: dict_off = tc_int(c, mt); break;
                default: tc_skip(c, mt); break;
                }
            }
            tc_struct_end(c);
        } else {
            tc_skip(c, t);
        }
    }
    tc_struct_end(c);
    if (c->err)
        FAIL("%s: corrupt Parquet column chunk metadata", f->path);
    k->start = dict_off > 0 && dict_off < data_off ? dict_off : data_off;
    if (k->start < 4 || k->size < 0 || (uint64_t)k->start > f->fm.n ||
        (uint64_t)k->size > f->fm.n - (uint64_t)k->start)
        FAIL("%s: Parquet column chunk at %lld (+%lld bytes) lies outside the file", f->path,
             (long long)k->start, (long long)k->size);
    return CP_OK;
}

static int parse_groups(pq_file *f, tcur *c)
{
    int et;
    uint32_t n = tc_list(c, &et);
    if (c->err || et != TT_STRUCT)
        FAIL("%s: bad Parquet row groups", f->path);
    f->group_rows = cp_calloc((size_t)n + 1, sizeof *f->group_rows, "Parquet row groups");
    f->chunks = cp_calloc(((size_t)n + 1) * (size_t)(f->nleaf + 1), sizeof *f->chunks, "Parquet row groups");
    if (!f->group_rows || !f->chunks)
        return CP_ENOMEM;
    for (uint32_t g = 0; g < n; g++) {
        int16_t id;
        int t, ncol = -1;
        tc_struct_begin(c);
        while (tc_field(c, &id, &t)) {
            if (id == 1 && t == TT_LIST) {
                int ct;
                uint32_t nc = tc_list(c, &ct);
                if (c->err || ct != TT_STRUCT || nc != (uint32_t)f->nleaf)
                    FAIL("%s: Parquet row group %u has %u column chunks for %d columns", f->path, g, nc, f->nleaf);
                for (uint32_t j = 0; j < nc; j++) {
                    int rc = parse_chunk(f, c, &f->chunks[(size_t)g * f->nleaf + j]);
                    if (rc)
                        return rc;
                }
                ncol = (int)nc;
            } else if (id == 3) {
                f->group_rows[g] = tc_int(c, t);
            } else {
                tc_skip(c, t);
            }
        }
        tc_struct_end(c);
        if (c->err || ncol < 0 || f->group_rows[g] < 0)
            FAIL("%s: corrupt Parquet row group %u", f->path, g);
        for (int j = 0; j < f->nleaf; j++)
            if (f->chunks[(size_t)g * f->nleaf + j].nvalues != f->group_rows[g])
                FAIL("%s: Parquet row group %u: column '%s' holds %lld values for %lld rows", f->path, g,
                     f->leaf[j].name, (long long)f->chunks[(size_t)g * f->nleaf + j].nvalues,
                     (long long)f->group_rows[g]);
        f->ngroups++;
    }
    return CP_OK;
}

static int pq_open(pq_file *f, const char *path)
{
    memset(f, 0, sizeof *f);
    f->path = path;
    int rc = cp_fmap_open(&f->fm, path);
    if (rc)
        return rc;
    const uint8_t *p = f->fm.p;
    size_t n = f->fm.n;
    if (n < 12 || memcmp(p, "PAR1", 4) || memcmp(p + n - 4, "PAR1", 4))
        FAIL("%s: not a Parquet file (no PAR1 magic at both ends)", path);
    uint32_t flen = (uint32_t)p[n - 8] | (uint32_t)p[n - 7] << 8 | (uint32_t)p[n - 6] << 16 | (uint32_t)p[n - 5] << 24;
    if (flen > n - 12)
        FAIL("%s: Parquet footer length %u is past the start of the file", path, flen);
    tcur c;
    tc_init(&c, p + n - 8 - flen, flen);
    int16_t id;
    int t, have_schema = 0, have_groups = 0;
    tc_struct_begin(&c);
    while (!rc && tc_field(&c, &id, &t)) {
        if (id == 2 && t == TT_LIST && !have_schema) {
            rc = parse_schema(f, &c);
            have_schema = 1;
        } else if (id == 3) {
            f->nrows = tc_int(&c, t);
        } else if (id == 4 && t == TT_LIST && have_schema && !have_groups) {
            rc = parse_groups(f, &c);
            have_groups = 1;
        } else {
            tc_skip(&c, t);
        }
    }
    if (rc)
        return rc;
    if (c.err || !have_schema || !have_groups)
        FAIL("%s: corrupt Parquet footer metadata", path);
    int64_t sum = 0;
    for (int g = 0; g < f->ngroups; g++) {
        if (f->group_rows[g] > INT64_MAX / 2 - sum)
            FAIL("%s: Parquet row counts overflow", path);
        sum += f->group_rows[g];
    }
    if (sum != f->nrows)
        FAIL("%s: Parquet row groups hold %lld rows, the footer says %lld", path, (long long)sum,
             (long long)f->nrows);
    /* a row takes at least one bit of some page: bounds every allocation */
    if (f->nleaf > 0 && (uint64_t)f->nrows > (uint64_t)n * 8 * 64)
        FAIL("%s: Parquet row count %lld is impossible for the file size", path, (long long)f->nrows);
    return CP_OK;
}

/* ---- pages ----------------------------------------------------------------- */

typedef struct page_hdr {
    int type;
    int64_t usize, csize, nvalues, nnulls;
    int encoding;
    int64_t def_len, rep_len;
    int compressed;
} page_hdr;

static int parse_page_header(tcur *c, page_hdr *h)
{
    memset(h, 0, sizeof *h);
    h->compressed = 1;
    h->type = -1;
    h->encoding = -1;
    int16_t id;
    int t;
    tc_struct_begin(c);
    while (tc_field(c, &id, &t)) {
        switch (id) {
        case 1: h->type = (int)tc_int(c, t); break;
        case 2: h->usize = tc_int(c, t); break;
        case 3: h->csize = tc_int(c, t); break;
        case 5: case 7: case 8: {
            if (t != TT_STRUCT) {
                tc_skip(c, t);
                break;
            }
            int16_t sid;
            int st;
            tc_struct_begin(c);
            while (tc_field(c, &sid, &st)) {
                if (sid == 1)
                    h->nvalues = tc_int(c, st);
                else if (id == 8 && sid == 2)
                    h->nnulls = tc_int(c, st);
                else if ((id != 8 && sid == 2) || (id == 8 && sid == 4))
                    h->encoding = (int)tc_int(c, st);
                else if (id == 8 && sid == 5)
                    h->def_len = tc_int(c, st);
                else if (id == 8 && sid == 6)
                    h->rep_len = tc_int(c, st);
                else if (id == 8 && sid == 7)
                    h->compressed = (int)tc_int(c, st);
                else
                    tc_skip(c, st);
            }
            tc_struct_end(c);
            break;
        }
        default: tc_skip(c, t); break;
        }
    }
    tc_struct_end(c);
    return c->err ? -1 : 0;
}

typedef struct colctx {
    const pq_file *f;
    const pq_leaf *leaf;
    int leafi;
    cp_scol *out;
    size_t cap;
    const uint64_t *mask;
    size_t mask_rows;
    int64_t row;      /* next file row */
    size_t orow;      /* next output row */
    uint8_t *buf;     /* decompression scratch */
    size_t bufcap;
    uint32_t *idx;    /* decoded indices / levels scratch */
    size_t idxcap;
    uint8_t *defs;
    size_t defcap;
    /* dictionary of the current chunk */
    int64_t ndict;
    int32_t *dcode;   /* STR output: dictionary entry -> output code (-1 = null) */
    double *dnum;
    int64_t *dint;
    uint8_t *dkind;   /* per entry: 0 double, 1 int, 2 string code */
    const uint8_t **dstr; /* BYTE_ARRAY entries for non-STR outputs */
    uint32_t *dlen;
    uint8_t *dictbuf; /* owns the bytes dstr points to when they were decompressed */
} colctx;

static int grow_buf(void **b, size_t *cap, size_t need, const char *what)
{
    if (need <= *cap)
        return CP_OK;
    void *n = realloc(*b, need);
    if (!n)
        return cp_error(CP_ENOMEM, "out of memory (%s, %zu bytes)", what, need);
    *b = n;
    *cap = need;
    return CP_OK;
}

static int decompress(colctx *x, int codec, const uint8_t *src, size_t n, size_t usize, const uint8_t **out)
{
    const char *path = x->f->path, *col = x->leaf->name;
    if (codec == CODEC_NONE) {
        if (n != usize)
            FAIL("%s: column '%s': uncompressed page of %zu bytes declares %zu", path, col, n, usize);
        *out = src;
        return CP_OK;
    }
    if (usize > MAX_PAGE || usize > n * 1100 + 65536)
        FAIL("%s: column '%s': page declares %zu uncompressed bytes for %zu compressed (refused)", path, col,
             usize, n);
    int rc = grow_buf((void **)&x->buf, &x->bufcap, usize + 1, "Parquet page");
    if (rc)
        return rc;
    switch (codec) {
    case CODEC_SNAPPY: {
        size_t len;
        if (snappy_uncompressed_length((const char *)src, n, &len) != SNAPPY_OK || len != usize)
            FAIL("%s: column '%s': corrupt snappy page", path, col);
        len = usize;
        if (snappy_uncompress((const char *)src, n, (char *)x->buf, &len) != SNAPPY_OK || len != usize)
            FAIL("%s: column '%s': corrupt snappy page", path, col);
        break;
    }
    case CODEC_ZSTD: {
        size_t r = ZSTD_decompress(x->buf, usize, src, n);
        if (ZSTD_isError(r) || r != usize)
            FAIL("%s: column '%s': corrupt zstd page", path, col);
        break;
    }
    case CODEC_GZIP: {
        z_stream z;
        memset(&z, 0, sizeof z);
        if (inflateInit2(&z, 15 + 32) != Z_OK)
            return cp_error(CP_ENOMEM, "%s: zlib init failed", path);
        z.next_in = (Bytef *)src;
        z.avail_in = (uInt)n;
        z.next_out = x->buf;
        z.avail_out = (uInt)usize;
        int zr = inflate(&z, Z_FINISH);
        size_t got = usize - z.avail_out;
        inflateEnd(&z);
        if (zr != Z_STREAM_END || got != usize)
            FAIL("%s: column '%s': corrupt gzip page", path, col);
        break;
    }
    default:
        return cp_error(CP_EUNSUPPORTED, "%s: column '%s': Parquet codec %d is not supported (none, snappy, "
                                         "gzip, zstd)", path, col, codec);
    }
    *out = x->buf;
    return CP_OK;
}

/* RLE/bit-packed hybrid: exactly n values of bit width bw into out. */
static int rle_decode(const uint8_t *p, const uint8_t *end, int bw, size_t n, uint32_t *out)
{
    if (bw < 0 || bw > 32)
        return -1;
    size_t got = 0;
    size_t vbytes = (size_t)(bw + 7) / 8;
    while (got < n) {
        uint64_t h = 0;
        int s = 0;
        for (;;) {
            if (p >= end || s > 35)
                return -1;
            uint8_t b = *p++;
            h |= (uint64_t)(b & 0x7f) << s;
            s += 7;
            if (!(b & 0x80))
                break;
        }
        if (h & 1) {
            uint64_t groups = h >> 1;
            if (groups == 0 || groups > (uint64_t)(end - p) * 8 + 1)
                return -1;
            size_t bytes = (size_t)groups * (size_t)bw;
            if (bytes > (size_t)(end - p))
                return -1;
            size_t cnt = (size_t)groups * 8;
            uint64_t acc = 0;
            int have = 0;
            const uint8_t *q = p;
            uint32_t maskv = bw == 32 ? 0xffffffffu : ((1u << bw) - 1);
            for (size_t k = 0; k < cnt; k++) {
                while (have < bw) {
                    acc |= (uint64_t)*q++ << have;
                    have += 8;
                }
                if (got < n)
                    out[got++] = (uint32_t)acc & maskv;
                acc >>= bw;
                have -= bw;
            }
            p += bytes;
        } else {
            uint64_t cnt = h >> 1;
            if (vbytes > (size_t)(end - p))
                return -1;
            uint32_t v = 0;
            for (size_t k = 0; k < vbytes; k++)
                v |= (uint32_t)p[k] << (8 * k);
            p += vbytes;
            if (cnt == 0)
                return -1;
            for (uint64_t k = 0; k < cnt && got < n; k++)
                out[got++] = v;
        }
    }
    return 0;
}

static int keep_row(const colctx *x, int64_t r)
{
    return !x->mask || ((size_t)r < x->mask_rows && (x->mask[r >> 6] >> (r & 63) & 1));
}

static int bad_value(colctx *x, int64_t r)
{
    return cp_error(CP_EFORMAT, "%s: row %lld, column '%s': value does not fit the column's type", x->f->path,
                    (long long)r + 1, x->leaf->name);
}

static uint64_t rd_le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* One PLAIN value at *p into output row (or into dictionary slot when dict). */
static int put_plain(colctx *x, const uint8_t **pp, const uint8_t *end, int *bitpos, int64_t r, int store)
{
    const uint8_t *p = *pp;
    int t = x->leaf->type;
    cp_scol *o = x->out;
    size_t row = x->orow;
    int e = 0;
    switch (t) {
    case PT_BOOLEAN: {
        if (p >= end)
            return -2;
        int v = *p >> *bitpos & 1;
        if (++*bitpos == 8) {
            *bitpos = 0;
            p++;
        }
        if (store)
            e = cp_sput_bool(o, x->cap, row, v);
        break;
    }
    case PT_INT32: case PT_FLOAT: {
        if (end - p < 4)
            return -2;
        uint32_t u = (uint32_t)rd_le(p, 4);
        p += 4;
        if (!store)
            break;
        if (t == PT_FLOAT) {
            float fv;
            memcpy(&fv, &u, 4);
            e = cp_sput_f64(o, x->cap, row, fv);
        } else {
            e = cp_sput_i64(o, x->cap, row, x->leaf->is_unsigned ? (int64_t)u : (int64_t)(int32_t)u);
        }
        break;
    }
    case PT_INT64: case PT_DOUBLE: {
        if (end - p < 8)
            return -2;
        uint64_t u = rd_le(p, 8);
        p += 8;
        if (!store)
            break;
        if (t == PT_DOUBLE) {
            double dv;
            memcpy(&dv, &u, 8);
            e = cp_sput_f64(o, x->cap, row, dv);
        } else if (x->leaf->is_unsigned && u > INT64_MAX) {
            e = -1;
        } else {
            e = cp_sput_i64(o, x->cap, row, (int64_t)u);
        }
        break;
    }
    case PT_BYTE_ARRAY: {
        if (end - p < 4)
            return -2;
        uint32_t n = (uint32_t)rd_le(p, 4);
        p += 4;
        if (n > (size_t)(end - p))
            return -2;
        if (store)
            e = cp_sput_str(o, x->cap, row, (const char *)p, n);
        p += n;
        break;
    }
    default:
        return cp_error(CP_EUNSUPPORTED, "%s: column '%s': Parquet type %d is not supported", x->f->path,
                        x->leaf->name, t);
    }
    *pp = p;
    if (e == CP_ENOMEM)
        return e;
    if (e)
        return bad_value(x, r);
    return 0;
}

static void dict_free(colctx *x)
{
    free(x->dcode);
    free(x->dnum);
    free(x->dint);
    free(x->dkind);
    free(x->dstr);
    free(x->dlen);
    free(x->dictbuf);
    x->dcode = NULL;
    x->dnum = NULL;
    x->dint = NULL;
    x->dkind = NULL;
    x->dstr = NULL;
    x->dlen = NULL;
    x->dictbuf = NULL;
    x->ndict = 0;
}

static int load_dict(colctx *x, const uint8_t *p, size_t n, int64_t nvalues, int encoding)
{
    const char *path = x->f->path, *col = x->leaf->name;
    dict_free(x);
    if (encoding != ENC_PLAIN && encoding != ENC_PLAIN_DICT)
        FAIL("%s: column '%s': dictionary page encoding %d is not supported", path, col, encoding);
    if (nvalues < 0 || (uint64_t)nvalues > (uint64_t)n * 8 + 8)
        FAIL("%s: column '%s': dictionary page declares %lld values in %zu bytes", path, col, (long long)nvalues, n);
    /* keep the bytes: the page buffer is reused by the data pages */
    x->dictbuf = cp_malloc(n + 1, "Parquet dictionary");
    x->dstr = cp_calloc((size_t)nvalues + 1, sizeof *x->dstr, "Parquet dictionary");
    x->dlen = cp_calloc((size_t)nvalues + 1, sizeof *x->dlen, "Parquet dictionary");
    x->dnum = cp_calloc((size_t)nvalues + 1, sizeof *x->dnum, "Parquet dictionary");
    x->dint = cp_calloc((size_t)nvalues + 1, sizeof *x->dint, "Parquet dictionary");
    x->dkind = cp_calloc((size_t)nvalues + 1, 1, "Parquet dictionary");
    x->dcode = cp_calloc((size_t)nvalues + 1, sizeof *x->dcode, "Parquet dictionary");
    if (!x->dictbuf || !x->dstr || !x->dlen || !x->dnum || !x->dint || !x->dkind || !x->dcode)
        return CP_ENOMEM;
    if (n)
        memcpy(x->dictbuf, p, n);
    const uint8_t *q = x->dictbuf, *end = x->dictbuf + n;
    int t = x->leaf->type, bitpos = 0;
    for (int64_t i = 0; i < nvalues; i++) {
        switch (t) {
        case PT_BOOLEAN:
            if (q >= end)
                goto trunc;
            x->dint[i] = *q >> bitpos & 1;
            x->dkind[i] = 3;
            if (++bitpos == 8) {
                bitpos = 0;
                q++;
            }
            break;
        case PT_INT32: case PT_FLOAT: {
            if (end - q < 4)
                goto trunc;
            uint32_t u = (uint32_t)rd_le(q, 4);
            q += 4;
            if (t == PT_FLOAT) {
                float fv;
                memcpy(&fv, &u, 4);
                x->dnum[i] = fv;
            } else {
                x->dint[i] = x->leaf->is_unsigned ? (int64_t)u : (int64_t)(int32_t)u;
                x->dkind[i] = 1;
            }
            break;
        }
        case PT_INT64: case PT_DOUBLE: {
            if (end - q < 8)
                goto trunc;
            uint64_t u = rd_le(q, 8);
            q += 8;
            if (t == PT_DOUBLE) {
                memcpy(&x->dnum[i], &u, 8);
            } else {
                if (x->leaf->is_unsigned && u > INT64_MAX)
                    FAIL("%s: column '%s': unsigned value too large", path, col);
                x->dint[i] = (int64_t)u;
                x->dkind[i] = 1;
            }
            break;
        }
        case PT_BYTE_ARRAY: {
            if (end - q < 4)
                goto trunc;
            uint32_t len = (uint32_t)rd_le(q, 4);
            q += 4;
            if (len > (size_t)(end - q))
                goto trunc;
            x->dstr[i] = q;
            x->dlen[i] = len;
            x->dkind[i] = 2;
            q += len;
            break;
        }
        default:
            return cp_error(CP_EUNSUPPORTED, "%s: column '%s': Parquet type %d is not supported", path, col, t);
        }
        /* strings into a STR column: intern once per dictionary entry */
        if (x->out->type == CP_SCOL_STR && x->dkind[i] == 2) {
            if (cp_parse_na((const char *)x->dstr[i], x->dlen[i]) == 1) {
                x->dcode[i] = -1;
            } else if (cp_sdict_intern(&x->out->dict, (const char *)x->dstr[i], x->dlen[i], &x->dcode[i])) {
                return CP_ENOMEM;
            }
        }
    }
    x->ndict = nvalues;
    return CP_OK;
trunc:
    FAIL("%s: column '%s': dictionary page is truncated", path, col);
}

static int put_dict(colctx *x, uint32_t k, int64_t r)
{
    if (k >= (uint64_t)x->ndict)
        FAIL("%s: row %lld, column '%s': dictionary index %u out of range (%lld entries)", x->f->path,
             (long long)r + 1, x->leaf->name, k, (long long)x->ndict);
    cp_scol *o = x->out;
    int e;
    switch (x->dkind[k]) {
    case 0: e = cp_sput_f64(o, x->cap, x->orow, x->dnum[k]); break;
    case 1: e = cp_sput_i64(o, x->cap, x->orow, x->dint[k]); break;
    case 3: e = cp_sput_bool(o, x->cap, x->orow, (int)x->dint[k]); break;
    default:
        if (o->type == CP_SCOL_STR) {
            ((int32_t *)o->v)[x->orow] = x->dcode[k];
            return 0;
        }
        e = cp_sput_str(o, x->cap, x->orow, (const char *)x->dstr[k], x->dlen[k]);
    }
    if (e == CP_ENOMEM)
        return e;
    return e ? bad_value(x, r) : 0;
}

static int data_page(colctx *x, const page_hdr *h, const uint8_t *p, size_t n, int64_t rows_left)
{
    const char *path = x->f->path, *col = x->leaf->name;
    int64_t nv = h->nvalues;
    if (nv < 0 || nv > rows_left)
        FAIL("%s: column '%s': data page of %lld values with %lld rows left in the row group", path, col,
             (long long)nv, (long long)rows_left);
    const uint8_t *end = p + n;
    /* definition levels (flat schema: max level 1) */
    if (x->leaf->optional) {
        if (grow_buf((void **)&x->idx, &x->idxcap, ((size_t)nv + 1) * sizeof *x->idx, "Parquet levels"))
            return CP_ENOMEM;
        const uint8_t *lp = p, *le;
        if (h->type == PAGE_DATA_V2) {
            le = p + h->def_len;
        } else {
            if (n < 4)
                FAIL("%s: column '%s': truncated definition levels", path, col);
            uint32_t ln = (uint32_t)rd_le(p, 4);
            if (ln > n - 4)
                FAIL("%s: column '%s': definition levels run past the page", path, col);
            lp = p + 4;
            le = lp + ln;
        }
        if (rle_decode(lp, le, 1, (size_t)nv, x->idx))
            FAIL("%s: column '%s': corrupt definition levels", path, col);
        p = le;
        if (grow_buf((void **)&x->defs, &x->defcap, (size_t)nv + 1, "Parquet levels"))
            return CP_ENOMEM;
        for (int64_t i = 0; i < nv; i++)
            x->defs[i] = (uint8_t)x->idx[i];
    } else if (h->type == PAGE_DATA_V2) {
        p += h->def_len;
    }
    int64_t nnon = 0;
    for (int64_t i = 0; i < nv; i++)
        nnon += !x->leaf->optional || x->defs[i];
    int enc = h->encoding;
    uint32_t *ix = NULL;
    if (enc == ENC_PLAIN_DICT || enc == ENC_RLE_DICT) {
        if (!x->ndict && nnon)
            FAIL("%s: column '%s': dictionary-encoded page without a dictionary", path, col);
        if (p >= end && nnon)
            FAIL("%s: column '%s': truncated dictionary indices", path, col);
        int bw = nnon ? *p++ : 0;
        if (grow_buf((void **)&x->idx, &x->idxcap, ((size_t)nnon + 1) * sizeof *x->idx, "Parquet indices"))
            return CP_ENOMEM;
        if (nnon && rle_decode(p, end, bw, (size_t)nnon, x->idx))
            FAIL("%s: column '%s': corrupt dictionary indices", path, col);
        ix = x->idx;
    } else if (enc == ENC_RLE && x->leaf->type == PT_BOOLEAN) {
        if (end - p < 4)
            FAIL("%s: column '%s': truncated boolean values", path, col);
        uint32_t ln = (uint32_t)rd_le(p, 4);
        if (ln > (size_t)(end - p) - 4)
            FAIL("%s: column '%s': boolean values run past the page", path, col);
        if (grow_buf((void **)&x->idx, &x->idxcap, ((size_t)nnon + 1) * sizeof *x->idx, "Parquet values"))
            return CP_ENOMEM;
        if (nnon && rle_decode(p + 4, p + 4 + ln, 1, (size_t)nnon, x->idx))
            FAIL("%s: column '%s': corrupt boolean values", path, col);
        ix = x->idx;
    } else if (enc != ENC_PLAIN) {
        return cp_error(CP_EUNSUPPORTED, "%s: column '%s': Parquet encoding %d is not supported (PLAIN, "
                                         "dictionary, RLE booleans)", path, col, enc);
    }
    int bitpos = 0;
    int64_t vi = 0;
    for (int64_t i = 0; i < nv; i++) {
        int64_t r = x->row++;
        int store = keep_row(x, r);
        int rc;
        if (x->leaf->optional && !x->defs[i]) {
            rc = store ? cp_sput_null(x->out, x->cap, x->orow) : 0;
        } else if (ix && enc == ENC_RLE) {
            uint32_t v = ix[vi++];
            rc = store ? cp_sput_bool(x->out, x->cap, x->orow, (int)v) : 0;
            if (rc && rc != CP_ENOMEM)
                rc = bad_value(x, r);
        } else if (ix) {
            uint32_t k = ix[vi++];
            rc = store ? put_dict(x, k, r) : (k >= (uint64_t)x->ndict ? put_dict(x, k, r) : 0);
        } else {
            rc = put_plain(x, &p, end, &bitpos, r, store);
            if (rc == -2)
                FAIL("%s: column '%s': page values run past the end of the page (row %lld)", path, col,
                     (long long)r + 1);
        }
        if (rc)
            return rc;
        if (store)
            x->orow++;
    }
    return CP_OK;
}

static int read_chunk(colctx *x, const pq_chunk *k, int64_t nrows)
{
    const char *path = x->f->path, *col = x->leaf->name;
    const uint8_t *p = x->f->fm.p + k->start, *end = p + k->size;
    int64_t left = nrows;
    dict_free(x);
    if (k->type != x->leaf->type)
        FAIL("%s: column '%s': chunk type %d differs from the schema's %d", path, col, k->type, x->leaf->type);
    while (left > 0) {
        if (p >= end)
            FAIL("%s: column '%s': column chunk ends with %lld rows missing", path, col, (long long)left);
        tcur c;
        tc_init(&c, p, (size_t)(end - p));
        page_hdr h;
        if (parse_page_header(&c, &h))
            FAIL("%s: column '%s': corrupt Parquet page header at byte %lld", path, col,
                 (long long)(p - x->f->fm.p));
        p = c.p;
        if (h.csize < 0 || h.usize < 0 || h.csize > end - p)
            FAIL("%s: column '%s': page of %lld bytes runs past its column chunk", path, col, (long long)h.csize);
        const uint8_t *data = p;
        p += h.csize;
        const uint8_t *u;
        int rc;
        switch (h.type) {
        case PAGE_DICT:
            if ((rc = decompress(x, k->codec, data, (size_t)h.csize, (size_t)h.usize, &u)) ||
                (rc = load_dict(x, u, (size_t)h.usize, h.nvalues, h.encoding)))
                return rc;
            break;
        case PAGE_DATA:
            if ((rc = decompress(x, k->codec, data, (size_t)h.csize, (size_t)h.usize, &u)) ||
                (rc = data_page(x, &h, u, (size_t)h.usize, left)))
                return rc;
            left -= h.nvalues;
            break;
        case PAGE_DATA_V2: {
            if (h.def_len < 0 || h.rep_len != 0 || h.def_len > h.csize || h.def_len > h.usize)
                FAIL("%s: column '%s': bad level sizes in a v2 data page", path, col);
            size_t lv = (size_t)h.def_len, un = (size_t)h.usize - lv;
            if (h.compressed && k->codec != CODEC_NONE) {
                if ((rc = decompress(x, k->codec, data + lv, (size_t)h.csize - lv, un, &u)))
                    return rc;
                /* levels stay uncompressed in front of the values */
                uint8_t *both = cp_malloc(lv + un + 1, "Parquet page");
                if (!both)
                    return CP_ENOMEM;
                memcpy(both, data, lv);
                memcpy(both + lv, u, un);
                rc = data_page(x, &h, both, lv + un, left);
                free(both);
            } else {
                if ((size_t)h.csize != (size_t)h.usize)
                    FAIL("%s: column '%s': uncompressed v2 page sizes differ", path, col);
                rc = data_page(x, &h, data, (size_t)h.csize, left);
            }
            if (rc)
                return rc;
            left -= h.nvalues;
            break;
        }
        default:
            break; /* index pages: skipped */
        }
    }
    return CP_OK;
}

/* ---- the reader interface ------------------------------------------------ */

static int native_type(int ptype)
{
    if (ptype == PT_BOOLEAN)
        return CP_SCOL_BOOL;
    if (ptype == PT_BYTE_ARRAY)
        return CP_SCOL_STR;
    return CP_SCOL_F32;
}

static int pq_read(const char *path, const cp_sread_opts *o, cp_stable *out)
{
    static const cp_sread_opts none = {0};
    if (!o)
        o = &none;
    memset(out, 0, sizeof *out);
    pq_file f;
    int rc = pq_open(&f, path);
    int *sel = NULL, nsel = 0;
    if (!rc && !(sel = cp_malloc_array((size_t)f.nleaf + 1, sizeof *sel, "columns")))
        rc = CP_ENOMEM;
    for (int i = 0; !rc && i < f.nleaf; i++)
        for (int j = 0; j < i; j++)
            if (!strcmp(f.leaf[i].name, f.leaf[j].name))
                rc = cp_error(CP_EFORMAT, "%s: duplicate column '%s'", path, f.leaf[i].name);
    if (!rc) {
        for (int c = 0; c < f.nleaf && !rc; c++) {
            int want = !o->columns;
            for (int k = 0; k < (o->columns ? o->ncolumns : 0) && !want; k++)
                want = !strcmp(o->columns[k], f.leaf[c].name);
            if (want)
                sel[nsel++] = c;
        }
        for (int k = 0; k < (o->columns ? o->ncolumns : 0) && !rc && !o->optional_columns; k++) {
            int c;
            for (c = 0; c < f.nleaf && strcmp(o->columns[k], f.leaf[c].name); c++)
                ;
            if (c == f.nleaf)
                rc = cp_error(CP_EFORMAT, "%s: missing column '%s'", path, o->columns[k]);
        }
    }
    size_t keep = 0;
    if (!rc) {
        for (int64_t r = 0; r < f.nrows; r++)
            keep += !o->row_mask || ((size_t)r < o->mask_rows && (o->row_mask[r >> 6] >> (r & 63) & 1));
        for (int k = 0; k < nsel && !rc; k++) {
            const pq_leaf *L = &f.leaf[sel[k]];
            if (L->type == PT_INT96 || L->type == PT_FIXED || L->type < 0 || L->type > PT_FIXED)
                rc = cp_error(CP_EUNSUPPORTED, "%s: column '%s': Parquet type %d is not supported", path,
                              L->name, L->type);
            else
                rc = cp_stable_add_col(out, L->name,
                                       (cp_scol_type)cp_sbin_col_type(o, L->name, native_type(L->type)));
        }
        if (!rc)
            rc = cp_stable_reserve(out, keep);
    }
    if (!rc) {
        int *st = cp_calloc((size_t)nsel + 1, sizeof *st, "columns");
        char (*msg)[512] = cp_calloc((size_t)nsel + 1, sizeof *msg, "columns");
        if (!st || !msg) {
            rc = CP_ENOMEM;
        } else {
            int threads = o->threads > 0 ? o->threads : omp_get_max_threads();
            if (threads > nsel)
                threads = nsel > 0 ? nsel : 1;
            /* threads only pay on big tables */
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (f.nrows > 65536)
            for (int k = 0; k < nsel; k++) {
                colctx x;
                memset(&x, 0, sizeof x);
                x.f = &f;
                x.leafi = sel[k];
                x.leaf = &f.leaf[sel[k]];
                x.out = &out->cols[k];
                x.cap = out->cap;
                x.mask = o->row_mask;
                x.mask_rows = o->mask_rows;
                int r = CP_OK;
                for (int g = 0; g < f.ngroups && !r; g++)
                    r = read_chunk(&x, &f.chunks[(size_t)g * f.nleaf + sel[k]], f.group_rows[g]);
                if (r) {
                    st[k] = r;
                    snprintf(msg[k], sizeof msg[k], "%s", cp_errmsg());
                }
                dict_free(&x);
                free(x.buf);
                free(x.idx);
                free(x.defs);
            }
            for (int k = 0; k < nsel && !rc; k++)
                if (st[k])
                    rc = cp_error(st[k], "%s", msg[k]);
        }
        free(st);
        free(msg);
    }
    if (!rc) {
        out->nrows = keep;
        cp_stable_trim_nulls(out);
    }
    free(sel);
    pq_close(&f);
    if (rc)
        cp_stable_free(out);
    return rc;
}

static int pq_header(const char *path, cp_strlist *names)
{
    pq_file f;
    int rc = pq_open(&f, path);
    for (int i = 0; !rc && i < f.nleaf; i++)
        rc = cp_strlist_push(names, f.leaf[i].name);
    pq_close(&f);
    return rc;
}

static int pq_match(const char *path)
{
    size_t n = strlen(path);
    return n > 8 && !strcmp(path + n - 8, ".parquet");
}

const cp_table_reader cp_parquet_reader = {"parquet", pq_match, pq_read, pq_header};
