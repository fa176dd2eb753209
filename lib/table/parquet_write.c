/* Parquet writer: the column store as a flat, snappy-compressed Parquet file
 * that pandas/polars/arrow read (the format SeeSpot caches tables in).
 * Row groups of up to 1M rows, one PLAIN data page (v1) per column chunk;
 * columns with nulls are OPTIONAL with RLE definition levels (float NaN stays
 * a value, as in pandas). */
#include <snappy-c.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/table.h"
#include "core/internal.h"

#define GROUP_ROWS ((size_t)1 << 20)

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
    int err;
} buf;

static void put(buf *b, const void *d, size_t n)
{
    if (b->err)
        return;
    if (b->n + n > b->cap) {
        size_t c = b->cap ? b->cap : 4096;
        while (c < b->n + n)
            c *= 2;
        uint8_t *q = realloc(b->p, c);
        if (!q) {
            b->err = 1;
            return;
        }
        b->p = q;
        b->cap = c;
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void put1(buf *b, uint8_t c) { put(b, &c, 1); }
static void varint(buf *b, uint64_t v)
{
    while (v >= 0x80) {
        put1(b, (uint8_t)(v | 0x80));
        v >>= 7;
    }
    put1(b, (uint8_t)v);
}
static void le32(buf *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    put(b, x, 4);
}

/* Thrift compact writer with a field-id stack. */
typedef struct tw {
    buf *b;
    int16_t last[16];
    int depth;
} tw;
static void fld(tw *w, int16_t id, int type)
{
    int16_t d = (int16_t)(id - w->last[w->depth]);
    if (d > 0 && d <= 15) {
        put1(w->b, (uint8_t)(d << 4 | type));
    } else {
        put1(w->b, (uint8_t)type);
        varint(w->b, ((uint64_t)id << 1) ^ (uint64_t)(id >> 15));
    }
    w->last[w->depth] = id;
}
static void zz(tw *w, int64_t v) { varint(w->b, ((uint64_t)v << 1) ^ (uint64_t)(v >> 63)); }
static void fi32(tw *w, int16_t id, int64_t v) { fld(w, id, 5), zz(w, v); }
static void fi64(tw *w, int16_t id, int64_t v) { fld(w, id, 6), zz(w, v); }
static void fstr(tw *w, int16_t id, const char *s)
{
    fld(w, id, 8);
    varint(w->b, strlen(s));
    put(w->b, s, strlen(s));
}
static void sbeg(tw *w) { w->last[++w->depth] = 0; }
static void send_(tw *w) { put1(w->b, 0), w->depth--; }
static void lbeg(tw *w, int16_t id, int et, size_t n)
{
    fld(w, id, 9);
    if (n < 15) {
        put1(w->b, (uint8_t)(n << 4 | et));
    } else {
        put1(w->b, (uint8_t)(0xf0 | et));
        varint(w->b, n);
    }
}

enum { PT_BOOLEAN = 0, PT_INT32 = 1, PT_INT64 = 2, PT_FLOAT = 4, PT_DOUBLE = 5, PT_BYTE_ARRAY = 6 };

static int ptype(cp_scol_type t)
{
    switch (t) {
    case CP_SCOL_STR: return PT_BYTE_ARRAY;
    case CP_SCOL_I32: case CP_SCOL_I8: return PT_INT32;
    case CP_SCOL_BOOL: return PT_BOOLEAN;
    case CP_SCOL_F32: return PT_FLOAT;
    case CP_SCOL_I64: return PT_INT64;
    case CP_SCOL_F64: return PT_DOUBLE;
    }
    return PT_BYTE_ARRAY;
}

static int nullable(const cp_scol *c) { return c->type != CP_SCOL_F32 && c->type != CP_SCOL_F64; }

typedef struct chunkmeta {
    int64_t offset, usize, csize;
} chunkmeta;

/* One column chunk's page body (levels + values) for rows [r0, r1). */
static void page_body(buf *b, const cp_scol *c, const uint32_t *rows, size_t r0, size_t r1, int opt)
{
    size_t n = r1 - r0;
    if (opt) { /* definition levels: RLE runs, bit width 1 */
        buf lv = {0};
        size_t i = 0;
        while (i < n) {
            size_t r = rows ? rows[r0 + i] : r0 + i;
            int d = !cp_scol_is_null(c, r), k = 1;
            size_t j = i + 1;
            while (j < n && (!cp_scol_is_null(c, rows ? rows[r0 + j] : r0 + j)) == d && k < (1 << 28))
                j++, k++;
            varint(&lv, (uint64_t)(j - i) << 1);
            put1(&lv, (uint8_t)d);
            i = j;
        }
        le32(b, (uint32_t)lv.n);
        put(b, lv.p, lv.n);
        b->err |= lv.err;
        free(lv.p);
    }
    uint8_t bits = 0;
    int nb = 0;
    for (size_t i = 0; i < n; i++) {
        size_t r = rows ? rows[r0 + i] : r0 + i;
        if (opt && cp_scol_is_null(c, r))
            continue;
        switch (c->type) {
        case CP_SCOL_STR: {
            const char *s = cp_scol_str(c, r);
            le32(b, (uint32_t)strlen(s));
            put(b, s, strlen(s));
            break;
        }
        case CP_SCOL_I32: le32(b, (uint32_t)((const int32_t *)c->v)[r]); break;
        case CP_SCOL_I8: le32(b, (uint32_t)(int32_t)((const int8_t *)c->v)[r]); break;
        case CP_SCOL_F32: put(b, &((const float *)c->v)[r], 4); break;
        case CP_SCOL_F64: put(b, &((const double *)c->v)[r], 8); break;
        case CP_SCOL_I64: put(b, &((const int64_t *)c->v)[r], 8); break;
        case CP_SCOL_BOOL:
            bits |= (uint8_t)(cp_scol_get_bool(c, r) << nb);
            if (++nb == 8) {
                put1(b, bits);
                bits = 0;
                nb = 0;
            }
            break;
        }
    }
    if (nb)
        put1(b, bits);
}

int cp_stable_write_parquet(FILE *fp, const cp_stable *t, const uint32_t *rows, size_t n, const int *cols,
                            int ncols)
{
    int nc = cols ? ncols : t->ncols;
    size_t nr = rows ? n : t->nrows;
    size_t ngroups = (nr + GROUP_ROWS - 1) / GROUP_ROWS;
    if (!ngroups)
        ngroups = 1;
    int *opt = cp_calloc((size_t)nc + 1, sizeof *opt, "Parquet writer");
    chunkmeta *cm = cp_calloc(ngroups * (size_t)nc + 1, sizeof *cm, "Parquet writer");
    buf page = {0}, hdr = {0}, foot = {0};
    char *z = NULL;
    size_t zcap = 0;
    int rc = opt && cm ? CP_OK : CP_ENOMEM;
#define COLP(k) (&t->cols[cols ? cols[k] : (k)])
    for (int k = 0; k < nc && !rc; k++) {
        const cp_scol *c = COLP(k);
        for (size_t i = 0; i < nr && nullable(c) && !opt[k]; i++)
            opt[k] = cp_scol_is_null(c, rows ? rows[i] : i);
    }
    int64_t off = 4;
    if (!rc && fwrite("PAR1", 1, 4, fp) != 4)
        rc = cp_error(CP_EIO, "write error (Parquet)");
    for (size_t g = 0; g < ngroups && !rc; g++) {
        size_t r0 = g * GROUP_ROWS, r1 = r0 + GROUP_ROWS < nr ? r0 + GROUP_ROWS : nr;
        for (int k = 0; k < nc && !rc; k++) {
            page.n = hdr.n = 0;
            page_body(&page, COLP(k), rows, r0, r1, opt[k]);
            size_t need = snappy_max_compressed_length(page.n);
            if (!page.err && need > zcap) {
                char *nz = realloc(z, need);
                if (!nz) {
                    rc = cp_error(CP_ENOMEM, "out of memory (Parquet writer)");
                    break;
                }
                z = nz;
                zcap = need;
            }
            size_t zl = zcap;
            if (page.err || snappy_compress((const char *)page.p, page.n, z, &zl) != SNAPPY_OK) {
                rc = cp_error(CP_ENOMEM, "out of memory (Parquet writer)");
                break;
            }
            tw w = {&hdr, {0}, 0};
            sbeg(&w);
            fi32(&w, 1, 0);
            fi32(&w, 2, (int64_t)page.n);
            fi32(&w, 3, (int64_t)zl);
            fld(&w, 5, 12);
            sbeg(&w);
            fi32(&w, 1, (int64_t)(r1 - r0));
            fi32(&w, 2, 0);
            fi32(&w, 3, 3);
            fi32(&w, 4, 3);
            send_(&w);
            send_(&w);
            if (hdr.err || fwrite(hdr.p, 1, hdr.n, fp) != hdr.n || fwrite(z, 1, zl, fp) != zl) {
                rc = cp_error(CP_EIO, "write error (Parquet)");
                break;
            }
            chunkmeta *m = &cm[g * (size_t)nc + (size_t)k];
            m->offset = off;
            m->usize = (int64_t)(hdr.n + page.n);
            m->csize = (int64_t)(hdr.n + zl);
            off += m->csize;
        }
    }
    if (!rc) {
        tw w = {&foot, {0}, 0};
        sbeg(&w);
        fi32(&w, 1, 1);
        lbeg(&w, 2, 12, (size_t)nc + 1);
        sbeg(&w);
        fstr(&w, 4, "schema");
        fi32(&w, 5, nc);
        send_(&w);
        for (int k = 0; k < nc; k++) {
            const cp_scol *c = COLP(k);
            sbeg(&w);
            fi32(&w, 1, ptype(c->type));
            fi32(&w, 3, opt[k]);
            fstr(&w, 4, c->name);
            if (c->type == CP_SCOL_STR)
                fi32(&w, 6, 0); /* UTF8 */
            if (c->type == CP_SCOL_I8)
                fi32(&w, 6, 15); /* INT_8 */
            send_(&w);
        }
        fi64(&w, 3, (int64_t)nr);
        lbeg(&w, 4, 12, ngroups);
        for (size_t g = 0; g < ngroups; g++) {
            size_t r0 = g * GROUP_ROWS, r1 = r0 + GROUP_ROWS < nr ? r0 + GROUP_ROWS : nr;
            int64_t total = 0;
            sbeg(&w);
            lbeg(&w, 1, 12, (size_t)nc);
            for (int k = 0; k < nc; k++) {
                const chunkmeta *m = &cm[g * (size_t)nc + (size_t)k];
                total += m->usize;
                sbeg(&w);
                fi64(&w, 2, m->offset);
                fld(&w, 3, 12);
                sbeg(&w);
                fi32(&w, 1, ptype(COLP(k)->type));
                lbeg(&w, 2, 5, 2);
                zz(&w, 0);
                zz(&w, 3);
                lbeg(&w, 3, 8, 1);
                varint(&foot, strlen(COLP(k)->name));
                put(&foot, COLP(k)->name, strlen(COLP(k)->name));
                fi32(&w, 4, 1); /* SNAPPY */
                fi64(&w, 5, (int64_t)(r1 - r0));
                fi64(&w, 6, m->usize);
                fi64(&w, 7, m->csize);
                fi64(&w, 9, m->offset);
                send_(&w);
                send_(&w);
            }
            fi64(&w, 2, total);
            fi64(&w, 3, (int64_t)(r1 - r0));
            send_(&w);
        }
        fstr(&w, 6, "cptools spotquery");
        send_(&w);
        uint8_t tail[8];
        uint32_t fl = (uint32_t)foot.n;
        memcpy(tail, (uint8_t[4]){(uint8_t)fl, (uint8_t)(fl >> 8), (uint8_t)(fl >> 16), (uint8_t)(fl >> 24)}, 4);
        memcpy(tail + 4, "PAR1", 4);
        if (foot.err || fwrite(foot.p, 1, foot.n, fp) != foot.n || fwrite(tail, 1, 8, fp) != 8)
            rc = cp_error(CP_EIO, "write error (Parquet)");
    }
#undef COLP
    free(opt);
    free(cm);
    free(page.p);
    free(hdr.p);
    free(foot.p);
    free(z);
    return rc;
}
