/* Streaming CSV/TSV reader into the column store.
 *
 * The file (plain or gzip, through zlib) is read in large blocks cut at a row
 * boundary. A block without quote characters is split at newlines into one
 * chunk per thread; each chunk's rows are counted first, so every thread
 * writes straight into its own rows of the output columns. Strings go into a
 * per-chunk dictionary that is merged in chunk order afterwards, so codes
 * (first-appearance order) and errors (the first in the file) do not depend on
 * the thread count. Blocks with quotes are parsed by one thread. No field is
 * ever allocated. */
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "cellpose/table.h"
#include "core/internal.h"
#include "table/table_internal.h"

/* Bytes read per block (tests lower it to exercise block edges). */
size_t cp_csv_block = 32u << 20;
#define MAX_READERS 8

/* ---- reader registry ---------------------------------------------------- */

static const cp_table_reader *readers[MAX_READERS];
static int nreaders;

int cp_register_table_reader(const cp_table_reader *r)
{
    if (nreaders == MAX_READERS)
        return cp_error(CP_ELIMIT, "too many table readers");
    readers[nreaders++] = r;
    return CP_OK;
}

static const cp_table_reader *reader_for(const char *path)
{
    for (int i = 0; i < nreaders; i++)
        if (readers[i]->match(path))
            return readers[i];
    if (cp_pickle_reader.match(path))
        return &cp_pickle_reader;
    if (cp_parquet_reader.match(path))
        return &cp_parquet_reader;
    return cp_csv_reader.match(path) ? &cp_csv_reader : NULL;
}

int cp_is_table_name(const char *path) { return reader_for(path) != NULL; }

int cp_stable_read(const char *path, const cp_sread_opts *o, cp_stable *out)
{
    const cp_table_reader *r = reader_for(path);
    if (!r)
        return cp_error(CP_EUNSUPPORTED, "%s: no reader for this kind of table (CSV/TSV, plain or .gz; .pkl; .parquet)", path);
    return r->read(path, o, out);
}

int cp_stable_read_header(const char *path, cp_strlist *names)
{
    const cp_table_reader *r = reader_for(path);
    if (!r)
        return cp_error(CP_EUNSUPPORTED, "%s: no reader for this kind of table", path);
    int rc = r->header(path, names);
    if (rc)
        cp_strlist_free(names); /* the names read before the error */
    return rc;
}

/* ---- byte source ---------------------------------------------------------- */

typedef struct src {
    const char *path;
    gzFile gz;
    char *base;      /* allocation */
    char *buf;       /* unread data: buf[0..len) inside base[0..cap) */
    size_t len, cap;
    int eof;
} src;

static int src_open(src *s, const char *path)
{
    memset(s, 0, sizeof *s);
    s->path = path;
    if (!strcmp(path, "-")) {
        int fd = dup(0);
        s->gz = fd >= 0 ? gzdopen(fd, "rb") : NULL;
    } else {
        s->gz = gzopen(path, "rb");
    }
    if (!s->gz)
        return cp_error(CP_EIO, "%s: cannot open: %s", path, strerror(errno ? errno : ENOENT));
    gzbuffer(s->gz, 1 << 20);
    return CP_OK;
}

static void src_close(src *s)
{
    if (s->gz)
        gzclose(s->gz);
    free(s->base);
    memset(s, 0, sizeof *s);
}

/* Room for `want` bytes of data from buf on. */
static int src_reserve(src *s, size_t want)
{
    if ((size_t)(s->buf - s->base) + want + 1 <= s->cap)
        return CP_OK;
    if (s->len)
        memmove(s->base, s->buf, s->len);
    s->buf = s->base;
    if (want + 1 > s->cap) {
        size_t cap = want + 1 + 4096;
        char *b = realloc(s->base, cap);
        if (!b)
            return cp_error(CP_ENOMEM, "%s: out of memory (read buffer)", s->path);
        s->base = s->buf = b;
        s->cap = cap;
    }
    return CP_OK;
}

/* Read up to max bytes into dst: bytes read, or -1 with the message in err. */
static long gz_read_all(gzFile gz, const char *path, char *dst, size_t max, int *eof, char *err, size_t errn)
{
    size_t n = 0;
    while (n < max) {
        size_t ask = max - n;
        if (ask > (1u << 30))
            ask = 1u << 30;
        int got = gzread(gz, dst + n, (unsigned)ask);
        if (got < 0) {
            int zerr;
            const char *m = gzerror(gz, &zerr);
            snprintf(err, errn, "%s: read error: %s", path, zerr == Z_ERRNO ? strerror(errno) : m);
            return -1;
        }
        if (got == 0) {
            int zerr;
            const char *m = gzerror(gz, &zerr);
            if (zerr != Z_OK && zerr != Z_BUF_ERROR) {
                snprintf(err, errn, "%s: corrupt gzip data: %s", path, m);
                return -1;
            }
            *eof = 1;
            break;
        }
        n += (size_t)got;
    }
    return (long)n;
}

/* Read until the buffer holds `want` bytes or the input ends. */
static int src_fill(src *s, size_t want)
{
    int rc = src_reserve(s, want);
    if (rc || s->eof || s->len >= want)
        return rc;
    char err[512];
    long got = gz_read_all(s->gz, s->path, s->buf + s->len, want - s->len, &s->eof, err, sizeof err);
    if (got < 0)
        return cp_error(strstr(err, "corrupt") ? CP_EFORMAT : CP_EIO, "%s", err);
    s->len += (size_t)got;
    return CP_OK;
}

static void src_consume(src *s, size_t n)
{
    s->buf += n;
    s->len -= n;
}

/* The next block is read by a helper thread while the current one is
 * parsed (plain reads and gzip inflation both overlap the parse). */
typedef struct prefetch {
    gzFile gz;
    const char *path;
    char *dst;
    size_t max;
    long got;
    int eof;
    char err[512];
} prefetch;

static void *prefetch_run(void *arg)
{
    prefetch *p = arg;
    p->got = gz_read_all(p->gz, p->path, p->dst, p->max, &p->eof, p->err, sizeof p->err);
    return NULL;
}

/* ---- fields --------------------------------------------------------------- */

typedef struct scratch {
    char *b;
    size_t cap;
} scratch;

/* Next field at *pp: sets [*fs, *fs+*fl) (unquoted text, possibly in sc) and
 * leaves *pp on the delimiter, '\r', '\n' or end. Counts newlines inside
 * quotes in *nl. 0 ok, -1 bad quoting (message in why). */
static inline int next_field(const char **pp, const char *end, char delim, const char **fs, size_t *fl,
                             scratch *sc, long *nl, const char **why)
{
    const char *p = *pp;
    if (p < end && *p == '"') {
        const char *q = ++p;
        size_t n = 0;
        int copy = 0;
        for (;;) {
            if (q >= end) {
                *why = "unterminated quoted field";
                return -1;
            }
            if (*q == '"') {
                if (q + 1 < end && q[1] == '"') {
                    if (!copy) {
                        copy = 1;
                        size_t need = (size_t)(end - p) + 1;
                        if (need > sc->cap) {
                            char *b = realloc(sc->b, need);
                            if (!b) {
                                *why = "out of memory";
                                return -1;
                            }
                            sc->b = b;
                            sc->cap = need;
                        }
                        n = (size_t)(q - p);
                        memcpy(sc->b, p, n);
                    }
                    sc->b[n++] = '"';
                    q += 2;
                    continue;
                }
                break;
            }
            if (*q == '\n')
                (*nl)++;
            if (copy)
                sc->b[n++] = *q;
            q++;
        }
        *fs = copy ? sc->b : p;
        *fl = copy ? n : (size_t)(q - p);
        p = q + 1;
        if (p < end && *p != delim && *p != '\n' && *p != '\r') {
            *why = "unexpected character after a closing quote";
            return -1;
        }
        *pp = p;
        return 0;
    }
    const char *s = p;
    while (p < end && *p != delim && *p != '\n' && *p != '\r')
        p++;
    *fs = s;
    *fl = (size_t)(p - s);
    *pp = p;
    return 0;
}


/* ---- a few threads per block ----------------------------------------------
 * Plain threads rather than an OpenMP team: between blocks the reader works
 * alone, and idle OpenMP workers spin (OMP_WAIT_POLICY is read before main),
 * taking CPU from the reader on a busy machine. */

typedef struct job {
    void (*fn)(void *ctx, int k);
    void *ctx;
    int n;
    atomic_int next;
} job;

static void *job_worker(void *arg)
{
    job *j = arg;
    for (int k; (k = atomic_fetch_add(&j->next, 1)) < j->n;)
        j->fn(j->ctx, k);
    return NULL;
}

/* Run fn(ctx, 0..n-1) on up to `threads` threads (the caller is one). */
static void run_jobs(int threads, int n, void (*fn)(void *, int), void *ctx)
{
    job j = {fn, ctx, n, 0};
    pthread_t tid[64];
    int started = 0;
    for (int t = 1; t < threads && t < n && t < 64; t++)
        if (pthread_create(&tid[started], NULL, job_worker, &j) == 0)
            started++;
    job_worker(&j);
    for (int t = 0; t < started; t++)
        pthread_join(tid[t], NULL);
}

/* ---- table layout ---------------------------------------------------------- */

typedef struct layout {
    const char *path;
    char delim;
    int nf;          /* fields per row */
    int *out;        /* file field -> output column, -1 skip */
    char **names;    /* file field names */
    cp_stable *t;
    const uint64_t *mask;
    size_t mask_rows;
    int last;        /* last field stored (-1 none) */
    int *next;       /* next[f]: first stored field >= f (nf if none) */
} layout;

typedef struct chunk {
    const char *p, *end;
    size_t row0, out0, nrows, kept;
    long line0, nlines;
    cp_sdict *dicts; /* per output column */
    int32_t *last;   /* per output column: code of the previous string (-1) */
    scratch sc;
    int err;
    char msg[600];
} chunk;

static int mask_has(const layout *L, size_t r)
{
    return !L->mask || (r < L->mask_rows && (L->mask[r >> 6] >> (r & 63) & 1));
}

static void chunk_fail(chunk *c, int code, const layout *L, long line, long col, int field, const char *fmt,
                       const char *a, size_t alen)
{
    char what[300];
    snprintf(what, sizeof what, fmt, (int)(alen > 60 ? 60 : alen), a ? a : "");
    if (field >= 0)
        snprintf(c->msg, sizeof c->msg, "%s:%ld:%ld: column '%s': %s", L->path, line, col, L->names[field], what);
    else
        snprintf(c->msg, sizeof c->msg, "%s:%ld:%ld: %s", L->path, line, col, what);
    c->err = code;
}

static int store(chunk *c, const layout *L, int f, size_t row, const char *s, size_t n, long line, long col)
{
    cp_scol *k = &L->t->cols[L->out[f]];
    int rc = 0;
    switch (k->type) {
    case CP_SCOL_STR: {
        int32_t code = -1, oc = L->out[f], lc = c->last[oc];
        cp_sdict *dd = &c->dicts[oc];
        /* the dictionary holds C strings: a NUL would cut the value short */
        if (memchr(s, '\0', n)) {
            chunk_fail(c, CP_EFORMAT, L, line, col, f, "NUL byte in a text value%.*s", "", 0);
            return -1;
        }
        /* runs of the same value (tables are sorted by channel) */
        if (lc >= 0 && !strncmp(dd->s[lc], s, n) && dd->s[lc][n] == '\0') {
            ((int32_t *)k->v)[row] = lc;
            return 0;
        }
        if (!cp_parse_na(s, n) && cp_sdict_intern(dd, s, n, &code)) {
            chunk_fail(c, CP_ENOMEM, L, line, col, f, "out of memory%.*s", "", 0);
            return -1;
        }
        ((int32_t *)k->v)[row] = code;
        c->last[oc] = code;
        return 0;
    }
    case CP_SCOL_F32: {
        float v;
        rc = cp_parse_f32(s, n, &v);
        if (rc == 0)
            ((float *)k->v)[row] = v;
        else if (rc == 1)
            ((float *)k->v)[row] = NAN;
        else
            break;
        return 0;
    }
    case CP_SCOL_I32:
    case CP_SCOL_I8: {
        int64_t v;
        rc = cp_parse_i64(s, n, &v);
        if (rc == 1) {
            if (!k->nulls) { /* allocated before the parallel region */
                chunk_fail(c, CP_EFORMAT, L, line, col, f, "unexpected null%.*s", "", 0);
                return -1;
            }
            __atomic_fetch_or(&k->nulls[row >> 3], (uint8_t)(1u << (row & 7)), __ATOMIC_RELAXED);
            return 0;
        }
        if (rc < 0) {
            chunk_fail(c, CP_EFORMAT, L, line, col, f, "'%.*s' is not a whole number", s, n);
            return -1;
        }
        if (k->type == CP_SCOL_I32) {
            if (v < INT32_MIN || v > INT32_MAX) {
                chunk_fail(c, CP_EFORMAT, L, line, col, f, "'%.*s' is out of the int32 range", s, n);
                return -1;
            }
            ((int32_t *)k->v)[row] = (int32_t)v;
        } else {
            if (v < -128 || v > 127) {
                chunk_fail(c, CP_EFORMAT, L, line, col, f, "'%.*s' is out of the int8 range", s, n);
                return -1;
            }
            ((int8_t *)k->v)[row] = (int8_t)v;
        }
        return 0;
    }
    case CP_SCOL_BOOL: {
        int b;
        rc = cp_parse_bool(s, n, &b);
        if (rc < 0) {
            chunk_fail(c, CP_EFORMAT, L, line, col, f, "'%.*s' is not True/False", s, n);
            return -1;
        }
        /* bits of neighbouring rows share a byte across chunks */
        if (rc == 1)
            __atomic_fetch_or(&k->nulls[row >> 3], (uint8_t)(1u << (row & 7)), __ATOMIC_RELAXED);
        else if (b)
            __atomic_fetch_or(&((uint8_t *)k->v)[row >> 3], (uint8_t)(1u << (row & 7)), __ATOMIC_RELAXED);
        return 0;
    }
    default: break;
    }
    chunk_fail(c, CP_EFORMAT, L, line, col, f, "'%.*s' is not a number", s, n);
    return -1;
}

/* Skip the rest of a row without storing it. */
static const char *skip_row(const char *p, const char *end, int quoted, long *nl)
{
    if (!quoted) {
        const char *q = memchr(p, '\n', (size_t)(end - p));
        return q ? q : end;
    }
    int inq = 0;
    for (; p < end; p++) {
        if (*p == '"')
            inq = !inq;
        else if (*p == '\n') {
            if (!inq)
                return p;
            (*nl)++;
        }
    }
    return end;
}

/* ---- quote-free rows: word-at-a-time delimiter search ------------------- */

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define SWAR 1
static inline uint64_t load64(const char *p)
{
    uint64_t x;
    memcpy(&x, p, 8);
    return x;
}
/* High bit set in every byte of x equal to the pattern's byte (exact). */
static inline uint64_t eq_bytes(uint64_t x, uint64_t pat)
{
    uint64_t y = x ^ pat;
    uint64_t t = ((y & 0x7f7f7f7f7f7f7f7full) + 0x7f7f7f7f7f7f7f7full) | y;
    return ~t & 0x8080808080808080ull;
}
/* Bytes flagged in an eq_bytes mask (no POPCNT instruction needed). */
static inline int count_flags(uint64_t m) { return (int)(((m >> 7) * 0x0101010101010101ull) >> 56); }
#endif

/* Pointer just past the k-th delimiter in [q, e), or NULL (found = count). */
static inline const char *skip_delims(const char *q, const char *e, int k, char d, int *found)
{
    int n = 0;
#ifdef SWAR
    uint64_t pat = 0x0101010101010101ull * (uint8_t)d;
    while (e - q >= 8) {
        uint64_t m = eq_bytes(load64(q), pat);
        int c = count_flags(m);
        if (n + c >= k) {
            for (;;) {
                int b = __builtin_ctzll(m) >> 3;
                if (++n == k)
                    return q + b + 1;
                m &= m - 1;
            }
        }
        n += c;
        q += 8;
    }
#endif
    for (; q < e; q++)
        if (*q == d && ++n == k)
            return q + 1;
    *found = n;
    return NULL;
}

static inline int count_delims(const char *q, const char *e, char d)
{
    int n = 0;
#ifdef SWAR
    uint64_t pat = 0x0101010101010101ull * (uint8_t)d;
    for (; e - q >= 8; q += 8)
        n += count_flags(eq_bytes(load64(q), pat));
#endif
    for (; q < e; q++)
        n += *q == d;
    return n;
}

/* One quote-free row [p, le) (le excludes '\n' and a final '\r'). 0 ok. */
static int parse_plain_row(chunk *c, const layout *L, const char *p, const char *le, size_t out, long line)
{
    char d = L->delim;
    const char *q = p;
    int f = 0, nfields = -1;
    while (f <= L->last) {
        int want = L->next[f];
        if (want > f) { /* skip to the next stored field */
            int found = 0;
            const char *nq = skip_delims(q, le, want - f, d, &found);
            if (!nq) {
                nfields = f + found + 1;
                break;
            }
            q = nq;
            f = want;
        }
        int found = 0;
        const char *nq = skip_delims(q, le, 1, d, &found);
        const char *fe = nq ? nq - 1 : le;
        if (store(c, L, f, out, q, (size_t)(fe - q), line, (long)(q - p) + 1))
            return -1;
        f++;
        if (!nq) {
            nfields = f;
            break;
        }
        q = nq;
    }
    if (nfields < 0)
        nfields = f + 1 + count_delims(q, le, d);
    if (nfields == L->nf)
        return 0;
    char what[64];
    if (nfields < L->nf) {
        snprintf(what, sizeof what, "%d fields, the header has %d", nfields, L->nf);
        chunk_fail(c, CP_EFORMAT, L, line, (long)(le - p) + 1, -1, "%.*s", what, strlen(what));
    } else {
        int found;
        const char *x = skip_delims(p, le, L->nf, d, &found);
        snprintf(what, sizeof what, "more fields than the header's %d", L->nf);
        chunk_fail(c, CP_EFORMAT, L, line, (long)(x - p) + 1, -1, "%.*s", what, strlen(what));
    }
    return -1;
}

static void parse_plain_chunk(chunk *c, const layout *L)
{
    const char *p = c->p, *end = c->end;
    long line = c->line0;
    size_t row = c->row0, out = c->out0;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        const char *next = nl ? nl + 1 : end;
        if (le > p && le[-1] == '\r')
            le--;
        if (le == p) { /* blank line */
            p = next;
            line += nl != NULL;
            continue;
        }
        if (mask_has(L, row)) {
            if (parse_plain_row(c, L, p, le, out, line))
                return;
            out++;
        }
        row++;
        line += nl != NULL;
        p = next;
    }
    c->nrows = row - c->row0;
    c->kept = out - c->out0;
    c->nlines = line - c->line0;
}

static void parse_chunk(chunk *c, const layout *L, int quoted)
{
    if (!quoted) {
        parse_plain_chunk(c, L);
        return;
    }
    const char *p = c->p, *end = c->end;
    long line = c->line0;
    size_t row = c->row0, out = c->out0;
    char delim = L->delim;
    while (p < end) {
        if (*p == '\n') {
            p++, line++;
            continue;
        }
        if (*p == '\r' && (p + 1 == end || p[1] == '\n')) {
            p++;
            continue;
        }
        if (!mask_has(L, row)) {
            p = skip_row(p, end, quoted, &line);
            row++;
            continue;
        }
        const char *ls = p;
        long lstart = line;
        int f = 0;
        for (;;) {
            const char *fs, *why = NULL;
            size_t fl;
            const char *at = p;
            if (next_field(&p, end, delim, &fs, &fl, &c->sc, &line, &why)) {
                chunk_fail(c, CP_EFORMAT, L, lstart, (long)(at - ls) + 1, -1, "%.*s", why, strlen(why));
                return;
            }
            if (f >= L->nf) {
                chunk_fail(c, CP_EFORMAT, L, lstart, (long)(at - ls) + 1, -1,
                           "more fields than the header's%.*s", "", 0);
                snprintf(c->msg + strlen(c->msg), sizeof c->msg - strlen(c->msg), " %d", L->nf);
                return;
            }
            if (L->out[f] >= 0 && store(c, L, f, out, fs, fl, lstart, (long)(at - ls) + 1))
                return;
            f++;
            if (p < end && *p == delim) {
                p++;
                continue;
            }
            break;
        }
        if (f < L->nf) {
            char what[64];
            snprintf(what, sizeof what, "%d fields, the header has %d", f, L->nf);
            chunk_fail(c, CP_EFORMAT, L, lstart, (long)(p - ls) + 1, -1, "%.*s", what, strlen(what));
            return;
        }
        if (p < end && *p == '\r')
            p++;
        if (p < end && *p != '\n') {
            chunk_fail(c, CP_EFORMAT, L, line, (long)(p - ls) + 1, -1, "stray carriage return%.*s", "", 0);
            return;
        }
        if (p < end)
            p++, line++;
        row++, out++;
    }
    c->nrows = row - c->row0;
    c->kept = out - c->out0;
    c->nlines = line - c->line0;
}

/* Rows (non-blank lines) and newlines of a quote-free range. */
static void count_rows(const char *p, const char *end, size_t *rows, long *lines)
{
    size_t r = 0;
    long l = 0;
    while (p < end) {
        const char *q = memchr(p, '\n', (size_t)(end - p));
        const char *e = q ? q : end;
        size_t len = (size_t)(e - p);
        if (len > 1 || (len == 1 && *p != '\r'))
            r++;
        if (!q)
            break;
        l++;
        p = q + 1;
    }
    *rows = r;
    *lines = l;
}

static size_t count_mask(const layout *L, size_t r0, size_t n)
{
    if (!L->mask)
        return n;
    size_t k = 0;
    for (size_t r = r0; r < r0 + n; r++)
        k += mask_has(L, r);
    return k;
}

typedef struct block_ctx {
    chunk *ch;
    const layout *L;
    int quoted;
} block_ctx;

static void count_job(void *x, int k)
{
    block_ctx *b = x;
    count_rows(b->ch[k].p, b->ch[k].end, &b->ch[k].nrows, &b->ch[k].nlines);
}

static void parse_job(void *x, int k)
{
    block_ctx *b = x;
    parse_chunk(&b->ch[k], b->L, b->quoted);
}

typedef struct progress {
    size_t row;  /* data rows so far */
    long line;   /* physical line of the block start */
} progress;

static int process_block(const layout *L, const char *b, size_t n, int quoted, int threads, progress *pg)
{
    cp_stable *t = L->t;
    /* several chunks per thread: a descheduled thread on a busy machine
     * does not leave the others waiting at the barrier */
    int nch = quoted || n < (64u << 10) ? 1 : (threads == 1 ? 1 : 4 * threads);
    chunk *ch = cp_calloc((size_t)nch, sizeof *ch, "parser chunks");
    if (!ch)
        return CP_ENOMEM;
    const char *cut = b;
    for (int k = 0; k < nch; k++) {
        ch[k].p = cut;
        const char *e = k == nch - 1 ? b + n : b + n / (size_t)nch * (size_t)(k + 1);
        if (e < cut)
            e = cut;
        if (k < nch - 1) {
            const char *q = memchr(e, '\n', (size_t)(b + n - e));
            e = q ? q + 1 : b + n;
        }
        ch[k].end = e;
        cut = e;
    }
    int rc = CP_OK;
    size_t want;
    if (quoted) {
        long nl = 0;
        for (const char *q = b; (q = memchr(q, '\n', (size_t)(b + n - q))); q++)
            nl++;
        want = t->nrows + (size_t)nl + 1;
        ch[0].row0 = pg->row;
        ch[0].out0 = t->nrows;
        ch[0].line0 = pg->line;
    } else {
        block_ctx bc = {ch, L, quoted};
        run_jobs(threads, nch, count_job, &bc);
        size_t row = pg->row, out = t->nrows;
        long line = pg->line;
        for (int k = 0; k < nch; k++) {
            ch[k].row0 = row;
            ch[k].out0 = out;
            ch[k].line0 = line;
            ch[k].kept = count_mask(L, row, ch[k].nrows);
            row += ch[k].nrows;
            out += ch[k].kept;
            line += ch[k].nlines;
        }
        want = out;
    }
    rc = cp_stable_reserve(t, want);
    /* integer and bool columns may get nulls in any row: their bitmaps must
     * exist before the threads start */
    for (int col = 0; col < t->ncols && !rc; col++) {
        cp_scol_type ty = t->cols[col].type;
        if (ty == CP_SCOL_I32 || ty == CP_SCOL_I8 || ty == CP_SCOL_BOOL)
            rc = cp_scol_null_bitmap(&t->cols[col], t->cap);
    }
    for (int k = 0; k < nch && !rc; k++)
        if (!(ch[k].dicts = cp_calloc((size_t)t->ncols, sizeof(cp_sdict), "parser dictionaries")) ||
            !(ch[k].last = cp_malloc_array((size_t)t->ncols + 1, sizeof(int32_t), "parser dictionaries")))
            rc = CP_ENOMEM;
        else
            for (int col = 0; col < t->ncols; col++)
                ch[k].last[col] = -1;
    if (!rc) {
        block_ctx bc = {ch, L, quoted};
        run_jobs(threads, nch, parse_job, &bc);
        for (int k = 0; k < nch; k++)
            if (ch[k].err) {
                rc = cp_error(ch[k].err, "%s", ch[k].msg);
                break;
            }
    }
    /* Merge chunk dictionaries in file order and recode. */
    for (int col = 0; col < t->ncols && !rc; col++) {
        cp_scol *c = &t->cols[col];
        if (c->type != CP_SCOL_STR)
            continue;
        for (int k = 0; k < nch && !rc; k++) {
            cp_sdict *d = &ch[k].dicts[col];
            if (!d->n)
                continue;
            int32_t *map = cp_malloc_array((size_t)d->n, sizeof *map, "dictionary merge");
            int same = 1;
            if (!map) {
                rc = CP_ENOMEM;
                break;
            }
            for (int32_t i = 0; i < d->n && !rc; i++) {
                rc = cp_sdict_intern(&c->dict, d->s[i], strlen(d->s[i]), &map[i]);
                same &= map[i] == i;
            }
            int32_t *v = (int32_t *)c->v + ch[k].out0;
            if (!same)
                for (size_t i = 0; i < ch[k].kept; i++)
                    if (v[i] >= 0)
                        v[i] = map[v[i]];
            free(map);
        }
    }
    if (!rc) {
        for (int k = 0; k < nch; k++) {
            pg->row += ch[k].nrows;
            pg->line += ch[k].nlines;
            t->nrows += ch[k].kept;
        }
    }
    for (int k = 0; k < nch; k++) {
        if (ch[k].dicts)
            for (int col = 0; col < t->ncols; col++)
                cp_sdict_free(&ch[k].dicts[col]);
        free(ch[k].dicts);
        free(ch[k].last);
        free(ch[k].sc.b);
    }
    free(ch);
    return rc;
}

/* End (exclusive) of the last complete row in b[0..n), 0 if none. */
static size_t last_row_end(const char *b, size_t n, int quoted)
{
    if (!quoted) {
        const char *q = memrchr(b, '\n', n);
        return q ? (size_t)(q - b) + 1 : 0;
    }
    int inq = 0;
    size_t last = 0;
    for (size_t i = 0; i < n; i++) {
        if (b[i] == '"')
            inq = !inq;
        else if (b[i] == '\n' && !inq)
            last = i + 1;
    }
    return last;
}

static int is_tsv_name(const char *p)
{
    return cp_ends_with(p, ".tsv") || cp_ends_with(p, ".tsv.gz") || cp_ends_with(p, ".tab") || cp_ends_with(p, ".txt");
}

/* Read the header: fields into names, bytes consumed into *used. */
static int read_header(src *s, char *delim, cp_strlist *names, size_t *used)
{
    size_t end = 0;
    for (size_t want = 1 << 16;; want *= 4) {
        int rc = src_fill(s, want);
        if (rc)
            return rc;
        /* the header is the first row: quote-aware scan to its newline */
        int inq = 0;
        size_t i;
        for (i = 0; i < s->len; i++) {
            if (s->buf[i] == '"')
                inq = !inq;
            else if (s->buf[i] == '\n' && !inq)
                break;
        }
        if (i < s->len) {
            end = i + 1;
            break;
        }
        if (s->eof) {
            end = s->len;
            break;
        }
    }
    if (end == 0)
        return cp_error(CP_EFORMAT, "%s: empty file (no header line)", s->path);
    const char *b = s->buf, *e = b + end;
    while (e > b && (e[-1] == '\n' || e[-1] == '\r'))
        e--;
    if (e == b)
        return cp_error(CP_EFORMAT, "%s:1:1: empty header line", s->path);
    if (*delim == 0) {
        int tabs = memchr(b, '\t', (size_t)(e - b)) != NULL, commas = memchr(b, ',', (size_t)(e - b)) != NULL;
        *delim = tabs && !commas ? '\t' : ',';
    }
    scratch sc = {0};
    long nl = 0;
    const char *p = b;
    for (;;) {
        const char *fs, *why = NULL, *at = p;
        size_t fl;
        if (next_field(&p, e, *delim, &fs, &fl, &sc, &nl, &why)) {
            free(sc.b);
            return cp_error(CP_EFORMAT, "%s:1:%ld: %s", s->path, (long)(at - b) + 1, why);
        }
        char *name = cp_malloc(fl + 1, "column name");
        if (!name) {
            free(sc.b);
            return CP_ENOMEM;
        }
        memcpy(name, fs, fl);
        name[fl] = '\0';
        int rc = cp_strlist_push(names, name);
        free(name);
        if (rc) {
            free(sc.b);
            return rc;
        }
        if (p < e && *p == *delim) {
            p++;
            continue;
        }
        break;
    }
    free(sc.b);
    *used = end;
    return CP_OK;
}

static int is_index_name(const char *n) { return !*n || !strncmp(n, "Unnamed: ", 9); }

/* Types of columns the schema does not know: from the first data row. */
static int sniff_type(const src *s, size_t from, char delim, int field)
{
    const char *p = s->buf + from, *e = s->buf + s->len;
    while (p < e && (*p == '\n' || *p == '\r'))
        p++;
    scratch sc = {0};
    long nl = 0;
    int type = CP_SCOL_F32;
    for (int f = 0; p < e; f++) {
        const char *fs, *why;
        size_t fl;
        if (next_field(&p, e, delim, &fs, &fl, &sc, &nl, &why))
            break;
        if (f == field) {
            double d;
            int b;
            if (cp_parse_f64(fs, fl, &d) >= 0)
                type = CP_SCOL_F32;
            else if (cp_parse_bool(fs, fl, &b) >= 0)
                type = CP_SCOL_BOOL;
            else
                type = CP_SCOL_STR;
            break;
        }
        if (p < e && *p == delim)
            p++;
        else
            break;
    }
    free(sc.b);
    return type;
}

static int csv_read(const char *path, const cp_sread_opts *o, cp_stable *out)
{
    static const cp_sread_opts none = {0};
    if (!o)
        o = &none;
    memset(out, 0, sizeof *out);
    src s;
    int rc = src_open(&s, path);
    if (rc)
        return rc;
    const char *name = strcmp(path, "-") ? path : "stdin";
    s.path = name;
    char delim = is_tsv_name(path) ? '\t' : (cp_ends_with(path, ".csv") || cp_ends_with(path, ".csv.gz") ? ',' : 0);
    cp_strlist names = {0};
    size_t used = 0;
    layout L = {0};
    rc = read_header(&s, &delim, &names, &used);
    if (rc)
        goto done;
    L.path = name;
    L.delim = delim;
    L.nf = (int)names.n;
    L.names = names.items;
    L.t = out;
    L.mask = o->row_mask;
    L.mask_rows = o->mask_rows;
    L.out = cp_malloc_array(names.n, sizeof(int), "column map");
    if (!L.out) {
        rc = CP_ENOMEM;
        goto done;
    }
    for (size_t f = 0; f < names.n; f++) {
        L.out[f] = -1;
        for (size_t g = 0; g < f; g++)
            if (!strcmp(names.items[f], names.items[g]) && !is_index_name(names.items[f])) {
                rc = cp_error(CP_EFORMAT, "%s:1: duplicate column '%s'", name, names.items[f]);
                goto done;
            }
    }
    /* which file fields become which output columns */
    rc = src_fill(&s, used + (1 << 16));
    if (rc)
        goto done;
    if (o->columns) {
        for (int k = 0; k < o->ncolumns; k++) {
            size_t f;
            for (f = 0; f < names.n && strcmp(names.items[f], o->columns[k]); f++)
                ;
            if (f == names.n) {
                if (o->optional_columns)
                    continue;
                rc = cp_error(CP_EFORMAT, "%s:1: missing column '%s'", name, o->columns[k]);
                goto done;
            }
            if (L.out[f] < 0)
                L.out[f] = 0;
        }
    } else {
        for (size_t f = 0; f < names.n; f++)
            if (!(f == 0 && is_index_name(names.items[f])))
                L.out[f] = 0;
    }
    for (size_t f = 0; f < names.n; f++) {
        if (L.out[f] < 0)
            continue;
        int type = o->all_str ? CP_SCOL_STR : o->column_type ? o->column_type(names.items[f]) : -1;
        if (type < 0)
            type = sniff_type(&s, used, delim, (int)f);
        L.out[f] = out->ncols;
        if ((rc = cp_stable_add_col(out, names.items[f], (cp_scol_type)type)))
            goto done;
    }
    L.next = cp_malloc_array(names.n + 1, sizeof(int), "column map");
    if (!L.next) {
        rc = CP_ENOMEM;
        goto done;
    }
    L.last = -1;
    L.next[names.n] = (int)names.n;
    for (size_t f = names.n; f-- > 0;) {
        L.next[f] = L.out[f] >= 0 ? (int)f : L.next[f + 1];
        if (L.out[f] >= 0 && L.last < 0)
            L.last = (int)f;
    }
    src_consume(&s, used);
    int threads = o->threads > 0 ? o->threads : omp_get_max_threads();
    if (threads > 64)
        threads = 64;
    progress pg = {0, 2};
    /* a second buffer: PAD bytes in front hold the partial row carried over */
    const size_t BLOCK = cp_csv_block < 4096 ? 4096 : cp_csv_block, PAD = BLOCK / 4;
    char *alt = NULL;
    size_t altcap = 0;
    for (;;) {
        if (!s.eof && s.len < BLOCK && (rc = src_fill(&s, BLOCK)))
            break;
        if (s.len == 0)
            break;
        int quoted = memchr(s.buf, '"', s.len) != NULL;
        size_t cut = s.eof ? s.len : last_row_end(s.buf, s.len, quoted);
        if (cut == 0) { /* one row longer than the buffer: read more */
            if ((rc = src_fill(&s, s.len + BLOCK)))
                break;
            continue;
        }
        prefetch pf;
        pthread_t th;
        int started = 0;
        if (!s.eof) {
            if (altcap < PAD + BLOCK + 1) {
                char *na = realloc(alt, PAD + BLOCK + 1);
                if (!na) {
                    rc = cp_error(CP_ENOMEM, "%s: out of memory (read buffer)", name);
                    break;
                }
                alt = na;
                altcap = PAD + BLOCK + 1;
            }
            memset(&pf, 0, sizeof pf);
            pf.gz = s.gz;
            pf.path = name;
            pf.dst = alt + PAD;
            pf.max = BLOCK;
            started = pthread_create(&th, NULL, prefetch_run, &pf) == 0;
        }
        rc = process_block(&L, s.buf, cut, quoted, threads, &pg);
        if (started)
            pthread_join(th, NULL);
        if (rc)
            break;
        src_consume(&s, cut);
        if (started) {
            if (pf.got < 0) {
                rc = cp_error(strstr(pf.err, "corrupt") ? CP_EFORMAT : CP_EIO, "%s", pf.err);
                break;
            }
            size_t got = (size_t)pf.got;
            if (s.len <= PAD) { /* swap buffers: carry the partial row in front */
                memcpy(alt + PAD - s.len, s.buf, s.len);
                char *ob = s.base;
                size_t ocap = s.cap;
                s.base = alt;
                s.cap = altcap;
                s.buf = alt + PAD - s.len;
                s.len += got;
                alt = ob;
                altcap = ocap;
            } else {
                if ((rc = src_reserve(&s, s.len + got)))
                    break;
                memcpy(s.buf + s.len, alt + PAD, got);
                s.len += got;
            }
            s.eof = pf.eof;
        }
        if (s.eof && s.len == 0)
            break;
    }
    free(alt);
    if (rc)
        goto done;
    cp_stable_trim_nulls(out);
done:
    free(L.out);
    free(L.next);
    cp_strlist_free(&names);
    src_close(&s);
    if (rc)
        cp_stable_free(out);
    return rc;
}

static int csv_header(const char *path, cp_strlist *names)
{
    src s;
    int rc = src_open(&s, path);
    if (rc)
        return rc;
    char delim = is_tsv_name(path) ? '\t' : 0;
    size_t used;
    rc = read_header(&s, &delim, names, &used);
    src_close(&s);
    return rc;
}

static int csv_match(const char *path)
{
    return !strcmp(path, "-") || cp_ends_with(path, ".csv") || cp_ends_with(path, ".csv.gz") || cp_ends_with(path, ".tsv") ||
           cp_ends_with(path, ".tsv.gz");
}

const cp_table_reader cp_csv_reader = {"csv", csv_match, csv_read, csv_header};
