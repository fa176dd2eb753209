/* Filters, sampling, pairs, counts, sankey, summaries, dataset listing. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cellpose/spots.h"
#include "core/internal.h"
#include "spots/spots_internal.h"

/* Removed-spot test without per-row column lookups. */
typedef struct removed_ctx {
    const cp_scol *u, *r;
    uint8_t *code_removed; /* per unmixed_chan code */
} removed_ctx;

static int removed_init(removed_ctx *x, const cp_stable *t)
{
    memset(x, 0, sizeof *x);
    int u = cp_stable_find(t, "unmixed_chan"), r = cp_stable_find(t, "unmixed_removed");
    x->u = u >= 0 && t->cols[u].type == CP_SCOL_STR ? &t->cols[u] : NULL;
    x->r = r >= 0 ? &t->cols[r] : NULL;
    if (x->u) {
        x->code_removed = cp_calloc((size_t)x->u->dict.n + 1, 1, "removed codes");
        if (!x->code_removed)
            return CP_ENOMEM;
        for (int32_t k = 0; k < x->u->dict.n; k++)
            x->code_removed[k] = (uint8_t)cp_spot_removed_str(x->u->dict.s[k]);
    }
    return CP_OK;
}

static inline int removed_at(const removed_ctx *x, size_t i)
{
    if (x->u) {
        int32_t k = ((const int32_t *)x->u->v)[i];
        if (k < 0 || x->code_removed[k])
            return 1;
    }
    return x->r && cp_scol_get_bool(x->r, i);
}

/* ---- filters ------------------------------------------------------------ */

void cp_spot_filter_init(cp_spot_filter *f)
{
    memset(f, 0, sizeof *f);
    f->reassigned = f->removed = -1;
}

void cp_spot_filter_free(cp_spot_filter *f)
{
    cp_strlist_free(&f->channels);
    cp_strlist_free(&f->unmixed_channels);
    cp_strlist_free(&f->cells);
    for (int i = 0; i < f->nwhere; i++) {
        free(f->where[i].col);
        free(f->where[i].value);
    }
    free(f->where);
    memset(f, 0, sizeof *f);
}

int cp_spot_filter_where(cp_spot_filter *f, const char *col, cp_op op, const char *value)
{
    cp_spot_where *nw = realloc(f->where, (size_t)(f->nwhere + 1) * sizeof *nw);
    if (!nw)
        return cp_error(CP_ENOMEM, "out of memory");
    f->where = nw;
    cp_spot_where *w = &f->where[f->nwhere];
    while (*value == ' ' || *value == '\t')
        value++;
    size_t n = strlen(value);
    while (n && (value[n - 1] == ' ' || value[n - 1] == '\t'))
        n--;
    w->col = cp_strdup(col);
    w->value = cp_malloc(n + 1, "where");
    if (w->value) {
        memcpy(w->value, value, n);
        w->value[n] = '\0';
    }
    w->op = op;
    if (!w->col || !w->value) {
        free(w->col);
        free(w->value);
        return cp_error(CP_ENOMEM, "out of memory");
    }
    f->nwhere++;
    return CP_OK;
}

int cp_spot_where_parse(const char *s, cp_spot_where *w)
{
    static const struct {
        const char *t;
        cp_op op;
    } ops[] = {{"<=", CP_OP_LE}, {">=", CP_OP_GE}, {"!=", CP_OP_NE}, {"==", CP_OP_EQ},
               {"=", CP_OP_EQ},  {"<", CP_OP_LT},  {">", CP_OP_GT}};
    memset(w, 0, sizeof *w);
    const char *best = NULL;
    int bi = -1;
    for (int i = 0; i < 7; i++) {
        const char *p = strstr(s, ops[i].t);
        if (p && (!best || p < best || (p == best && strlen(ops[i].t) > strlen(ops[bi].t)))) {
            best = p;
            bi = i;
        }
    }
    if (!best)
        return cp_error(CP_EINVAL, "--where '%s': expected COL OP VALUE with OP one of = != < <= > >=", s);
    const char *a = s, *b = best;
    while (a < b && *a == ' ')
        a++;
    while (b > a && b[-1] == ' ')
        b--;
    const char *v = best + strlen(ops[bi].t);
    while (*v == ' ')
        v++;
    size_t vl = strlen(v);
    while (vl && v[vl - 1] == ' ')
        vl--;
    if (a == b)
        return cp_error(CP_EINVAL, "--where '%s': no column name", s);
    w->col = cp_malloc((size_t)(b - a) + 1, "where");
    w->value = cp_malloc(vl + 1, "where");
    if (!w->col || !w->value)
        return CP_ENOMEM;
    memcpy(w->col, a, (size_t)(b - a));
    w->col[b - a] = '\0';
    memcpy(w->value, v, vl);
    w->value[vl] = '\0';
    /* quotes around a string value are optional */
    if (vl >= 2 && (w->value[0] == '\'' || w->value[0] == '"') && w->value[vl - 1] == w->value[0]) {
        memmove(w->value, w->value + 1, vl - 2);
        w->value[vl - 2] = '\0';
    }
    w->op = ops[bi].op;
    return CP_OK;
}

int cp_spot_filter_columns(const cp_spot_filter *f, cp_strlist *names)
{
    int rc = CP_OK;
#define NEED(n) (rc = rc ? rc : cp_strlist_push(names, n))
    if (f->valid_only)
        NEED("valid_spot");
    if (f->channels.n)
        NEED("chan");
    if (f->unmixed_channels.n || f->removed >= 0)
        NEED("unmixed_chan");
    if (f->cells.n)
        NEED(f->cell_col ? f->cell_col : "cell_id");
    for (int i = 0; i < f->nwhere; i++)
        NEED(f->where[i].col);
#undef NEED
    return rc;
}

/* ---- where: literals at the column's precision --------------------------
 * pandas compares a Series with a Python literal by numpy 1.x's value-based
 * promotion (SeeSpot pins numpy 1.26): a float literal against float32 is
 * rounded to float32 when |v| < 3.4e38 (numpy's min_scalar_type bound), so
 * 'r > 0.8' skips r = 0.8f; an integer literal against float32 within
 * int16/uint16 is exact in float32, any other literal compares in float64.
 * Against integer and bool columns an integer literal compares exactly (numpy
 * widens: int8 < 300 is true), a float literal in float64 (int64 values are
 * rounded to double there, as numpy does; also for int literals in
 * [2^63, 2^64), numpy's uint64 + int64 -> float64). Integers beyond 64 bits
 * are Python objects: exact against any value. */

typedef struct wlit {
    int is_int;         /* integer text (or true/false), a Python int */
    int range;          /* is_int: 0 fits int64, 1 in [2^63, 2^64), 2 beyond */
    int64_t i;          /* range 0 */
    double d;           /* the value as Python's float() gives it */
    int f32;            /* float literal with |d| < 3.4e38: compares as f */
    float f;
    int neg;            /* range 2: the sign and the digits without leading zeros */
    const char *digits;
    size_t ndigits;
} wlit;

/* 0 = parsed, -1 = not a number. */
static int wlit_parse(const char *s, wlit *L)
{
    memset(L, 0, sizeof *L);
    size_t n = strlen(s);
    int b;
    if (n > 1 && cp_parse_bool(s, n, &b) == 0 && isalpha((unsigned char)s[0])) {
        L->is_int = 1;
        L->i = b;
        L->d = b;
        return 0;
    }
    const char *p = s + (s[0] == '+' || s[0] == '-');
    if (*p && strspn(p, "0123456789") == strlen(p)) {
        L->is_int = 1;
        L->neg = s[0] == '-';
        while (p[0] == '0' && p[1])
            p++;
        L->digits = p;
        L->ndigits = strlen(p);
        L->d = strtod(s, NULL); /* correctly rounded, inf past DBL_MAX */
        /* compare magnitudes as digit strings: 2^63 and 2^64 - 1 */
        const char *lim = L->neg ? "9223372036854775808" : "9223372036854775807";
        if (L->ndigits < 19 || (L->ndigits == 19 && strcmp(p, lim) <= 0)) {
            uint64_t u = 0;
            for (const char *q = p; *q; q++)
                u = u * 10 + (uint64_t)(*q - '0');
            L->i = L->neg ? (int64_t)(0 - u) : (int64_t)u;
        } else if (!L->neg && (L->ndigits < 20 || (L->ndigits == 20 && strcmp(p, "18446744073709551615") <= 0))) {
            L->range = 1;
        } else {
            L->range = 2;
        }
        return 0;
    }
    if (cp_parse_f64(s, n, &L->d))
        return -1;
    L->f32 = fabs(L->d) < 3.4e38;
    L->f = (float)L->d;
    return 0;
}

/* Three-way: -1, 0, 1, or 2 when unordered (NaN). */
static int cmp3(double a, double b) { return a < b ? -1 : a > b ? 1 : a == b ? 0 : 2; }

/* x against an integer beyond 64 bits (|N| > 2^63), exactly: a double with
 * |x| > 2^63 is a whole number, printed exactly by %.0f, compared as digits. */
static int cmp_big(double x, const wlit *L)
{
    if (isnan(x))
        return 2;
    int sx = x < 0 ? -1 : 1, sl = L->neg ? -1 : 1;
    if (sx != sl || fabs(x) <= 0x1p63)
        return sx != sl ? sx : -sl;
    if (isinf(x))
        return sx;
    char buf[400];
    int nb = snprintf(buf, sizeof buf, "%.0f", fabs(x));
    int m = (size_t)nb != L->ndigits ? ((size_t)nb < L->ndigits ? -1 : 1) : strcmp(buf, L->digits);
    m = m < 0 ? -1 : m > 0;
    return sx * m;
}

/* Row i of a numeric column against the literal, as pandas compares them. */
static int where_number(const cp_scol *c, size_t i, const wlit *L)
{
    double x;
    int64_t v;
    switch (c->type) {
    case CP_SCOL_F32: {
        float xf = ((const float *)c->v)[i];
        if (L->f32)
            return cmp3(xf, L->f);
        x = xf;
        break;
    }
    case CP_SCOL_F64: x = ((const double *)c->v)[i]; break;
    case CP_SCOL_I32: v = ((const int32_t *)c->v)[i]; goto integer;
    case CP_SCOL_I8: v = ((const int8_t *)c->v)[i]; goto integer;
    case CP_SCOL_I64: v = ((const int64_t *)c->v)[i]; goto integer;
    case CP_SCOL_BOOL: v = cp_scol_get_bool(c, i); goto integer;
    default: return 2;
    }
    return L->range == 2 ? cmp_big(x, L) : cmp3(x, L->d);
integer:
    if (L->is_int && L->range == 0)
        return v < L->i ? -1 : v > L->i;
    if (L->is_int && L->range == 2)
        return L->neg ? 1 : -1;
    return cmp3((double)v, L->d);
}

/* Whether a three-way result satisfies op; unordered (NaN, null) satisfies
 * only !=, as in pandas. */
static int op_holds(cp_op op, int c)
{
    switch (op) {
    case CP_OP_EQ: return c == 0;
    case CP_OP_NE: return c != 0;
    case CP_OP_LT: return c == -1;
    case CP_OP_LE: return c == -1 || c == 0;
    case CP_OP_GT: return c == 1;
    case CP_OP_GE: return c == 1 || c == 0;
    }
    return 0;
}

/* Per STR column, which dictionary codes are in a list ("none"/"removed" in
 * an unmixed list also select removed spots). */
static int codes_in(const cp_scol *c, const cp_strlist *l, uint8_t **out, const char *what)
{
    uint8_t *m = cp_calloc((size_t)c->dict.n + 1, 1, "filter");
    if (!m)
        return CP_ENOMEM;
    for (size_t i = 0; i < l->n; i++) {
        int32_t k = cp_sdict_find(&c->dict, l->items[i]);
        if (k >= 0)
            m[k] = 1;
        else if (strcmp(l->items[i], "none") && strcmp(l->items[i], "removed") && strcmp(l->items[i], "Removed")) {
            free(m);
            return cp_error(CP_EINVAL, "unknown %s '%s'", what, l->items[i]);
        }
    }
    *out = m;
    return CP_OK;
}

static int list_has(const cp_strlist *l, const char *s)
{
    for (size_t i = 0; i < l->n; i++)
        if (!strcmp(l->items[i], s))
            return 1;
    return 0;
}

typedef struct wcond {
    const cp_scol *c;
    cp_op op;
    wlit lit;
    const char *str;
    int32_t code; /* STR equality: dictionary code (-1 absent) */
} wcond;

int cp_spot_filter_rows(const cp_stable *t, const cp_spot_filter *f, uint32_t **rowsp, size_t *np)
{
    int rc = CP_OK;
    uint8_t *chm = NULL, *um = NULL;
    wcond *wc = NULL;
    int64_t *cells = NULL;
    size_t ncells = f->cells.n;
    const cp_scol *V = NULL, *C = NULL, *U = NULL, *CE = NULL, *RA = NULL;
#define COL(var, name)                                                                                       \
    do {                                                                                                     \
        int k_ = cp_stable_find(t, name);                                                                    \
        if (k_ < 0) {                                                                                        \
            rc = cp_error(CP_EINVAL, "no column '%s' in the table", name);                                 \
            goto done;                                                                                       \
        }                                                                                                    \
        var = &t->cols[k_];                                                                                  \
    } while (0)
    if (f->valid_only)
        COL(V, "valid_spot");
    if (f->channels.n) {
        COL(C, "chan");
        if ((rc = codes_in(C, &f->channels, &chm, "channel")))
            goto done;
    }
    int want_removed_chan = list_has(&f->unmixed_channels, "none") || list_has(&f->unmixed_channels, "removed") ||
                            list_has(&f->unmixed_channels, "Removed");
    if (f->unmixed_channels.n) {
        COL(U, "unmixed_chan");
        if ((rc = codes_in(U, &f->unmixed_channels, &um, "unmixed channel")))
            goto done;
    }
    if (f->cells.n) {
        COL(CE, f->cell_col ? f->cell_col : "cell_id");
        cells = cp_malloc_array(ncells, sizeof *cells, "filter");
        if (!cells) {
            rc = CP_ENOMEM;
            goto done;
        }
        for (size_t i = 0; i < ncells; i++) {
            double d;
            if (cp_parse_f64(f->cells.items[i], strlen(f->cells.items[i]), &d) || d != floor(d)) {
                rc = cp_error(CP_EINVAL, "--cell: '%s' is not a whole number", f->cells.items[i]);
                goto done;
            }
            cells[i] = (int64_t)d;
        }
    }
    if (f->reassigned >= 0)
        COL(RA, "reassigned");
    if (f->nwhere && !(wc = cp_calloc((size_t)f->nwhere, sizeof *wc, "filter"))) {
        rc = CP_ENOMEM;
        goto done;
    }
    for (int i = 0; i < f->nwhere; i++) {
        COL(wc[i].c, f->where[i].col);
        wc[i].op = f->where[i].op;
        wc[i].str = f->where[i].value;
        if (wc[i].c->type == CP_SCOL_STR) {
            wc[i].code = cp_sdict_find(&wc[i].c->dict, wc[i].str);
        } else if (wlit_parse(wc[i].str, &wc[i].lit)) {
            rc = cp_error(CP_EINVAL, "--where %s: '%s' is not a number%s", f->where[i].col, wc[i].str,
                          wc[i].c->type == CP_SCOL_BOOL ? " or true/false" : "");
            goto done;
        }
    }
    removed_ctx rx;
    if ((rc = removed_init(&rx, t)))
        goto done;
    uint32_t *rows = cp_malloc_array(t->nrows + 1, sizeof *rows, "selected rows");
    if (!rows) {
        free(rx.code_removed);
        rc = CP_ENOMEM;
        goto done;
    }
    size_t n = 0;
    for (size_t i = 0; i < t->nrows; i++) {
        if (V && !cp_scol_get_bool(V, i))
            continue;
        if (C) {
            int32_t k = ((const int32_t *)C->v)[i];
            if (k < 0 || !chm[k])
                continue;
        }
        int removed = (f->removed >= 0 || U) ? removed_at(&rx, i) : 0;
        if (U) {
            int32_t k = ((const int32_t *)U->v)[i];
            if (!((k >= 0 && um[k]) || (want_removed_chan && removed)))
                continue;
        }
        if (f->removed >= 0 && removed != f->removed)
            continue;
        if (RA && cp_scol_get_bool(RA, i) != f->reassigned)
            continue;
        if (CE) {
            double v = cp_scol_num(CE, i);
            size_t k;
            for (k = 0; k < ncells && !(v == (double)cells[k]); k++)
                ;
            if (k == ncells)
                continue;
        }
        int ok = 1;
        for (int w = 0; w < f->nwhere && ok; w++) {
            const wcond *q = &wc[w];
            if (cp_scol_is_null(q->c, i)) {
                ok = op_holds(q->op, 2);
            } else if (q->c->type == CP_SCOL_STR) {
                int32_t k = ((const int32_t *)q->c->v)[i];
                if (q->op == CP_OP_EQ)
                    ok = k == q->code;
                else if (q->op == CP_OP_NE)
                    ok = k != q->code;
                else {
                    int s = strcmp(q->c->dict.s[k], q->str);
                    ok = op_holds(q->op, s < 0 ? -1 : s > 0);
                }
            } else {
                ok = op_holds(q->op, where_number(q->c, i, &q->lit));
            }
        }
        if (ok)
            rows[n++] = (uint32_t)i;
    }
    free(rx.code_removed);
    *rowsp = rows;
    *np = n;
done:
#undef COL
    free(chm);
    free(um);
    free(wc);
    free(cells);
    return rc;
}

/* ---- sampling ------------------------------------------------------------ */

static int u32_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Move k random elements of a[0..n) to its front (partial Fisher-Yates). */
static void pick_front(uint32_t *a, size_t n, size_t k, uint64_t *rng)
{
    for (size_t i = 0; i < k && i < n; i++) {
        size_t j = i + (size_t)cp_rng_below(rng, n - i);
        uint32_t t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

int cp_spot_sample(const cp_stable *t, const uint32_t *rows, size_t n, size_t k, cp_sample_mode mode,
                   int class_col, uint64_t seed, uint32_t **out, size_t *nout)
{
    uint32_t *res = cp_malloc_array((k < n ? k : n) + 1, sizeof *res, "sample");
    if (!res)
        return CP_ENOMEM;
    if (n <= k) {
        memcpy(res, rows, n * sizeof *res);
        *out = res;
        *nout = n;
        return CP_OK;
    }
    uint64_t rng = seed;
    uint32_t *work = cp_malloc_array(n, sizeof *work, "sample");
    if (!work) {
        free(res);
        return CP_ENOMEM;
    }
    size_t got = 0;
    if (mode == CP_SAMPLE_RANDOM || class_col < 0 || t->cols[class_col].type != CP_SCOL_STR) {
        memcpy(work, rows, n * sizeof *work);
        pick_front(work, n, k, &rng);
        memcpy(res, work, k * sizeof *res);
        got = k;
    } else {
        /* group rows by class (dictionary code, null last), stable */
        const cp_scol *c = &t->cols[class_col];
        size_t ncl = (size_t)c->dict.n + 1;
        size_t *start = cp_calloc(ncl + 1, sizeof *start, "sample");
        uint8_t *taken = cp_calloc(n, 1, "sample");
        if (!start || !taken) {
            free(start);
            free(taken);
            free(work);
            free(res);
            return CP_ENOMEM;
        }
        const int32_t *v = c->v;
#define CLS(r) (v[r] < 0 ? ncl - 1 : (size_t)v[r])
        for (size_t i = 0; i < n; i++)
            start[CLS(rows[i]) + 1]++;
        size_t present = 0;
        for (size_t q = 0; q < ncl; q++) {
            present += start[q + 1] > 0;
            start[q + 1] += start[q];
        }
        size_t *fill = cp_malloc_array(ncl, sizeof *fill, "sample");
        uint32_t *pos = cp_malloc_array(n, sizeof *pos, "sample"); /* index into rows */
        if (!fill || !pos) {
            free(fill);
            free(pos);
            free(start);
            free(taken);
            free(work);
            free(res);
            return CP_ENOMEM;
        }
        memcpy(fill, start, ncl * sizeof *fill);
        for (size_t i = 0; i < n; i++)
            pos[fill[CLS(rows[i])]++] = (uint32_t)i;
        size_t per = present ? k / present : 0;
        for (size_t q = 0; q < ncl; q++) {
            size_t sz = start[q + 1] - start[q], take = per < sz ? per : sz;
            pick_front(pos + start[q], sz, take, &rng);
            for (size_t i = 0; i < take; i++) {
                taken[pos[start[q] + i]] = 1;
                res[got++] = rows[pos[start[q] + i]];
            }
        }
        /* shortfall: at random from the rows not yet picked (never twice) */
        if (got < k) {
            size_t m = 0;
            for (size_t i = 0; i < n; i++)
                if (!taken[i])
                    work[m++] = rows[i];
            pick_front(work, m, k - got, &rng);
            memcpy(res + got, work, (k - got) * sizeof *res);
            got = k;
        }
#undef CLS
        free(fill);
        free(pos);
        free(start);
        free(taken);
    }
    free(work);
    qsort(res, got, sizeof *res, u32_cmp);
    *out = res;
    *nout = got;
    return CP_OK;
}

/* ---- pairs --------------------------------------------------------------- */

static int str_cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int sorted_copy(const cp_strlist *in, cp_strlist *out)
{
    memset(out, 0, sizeof *out);
    for (size_t i = 0; i < in->n; i++)
        if (cp_strlist_push(out, in->items[i]))
            return CP_ENOMEM;
    if (out->n > 1)
        qsort(out->items, out->n, sizeof(char *), str_cmp);
    return CP_OK;
}

static int set_str(cp_scol *c, size_t row, const char *s)
{
    int32_t code = -1;
    if (s && cp_sdict_intern(&c->dict, s, strlen(s), &code))
        return CP_ENOMEM;
    ((int32_t *)c->v)[row] = code;
    return CP_OK;
}

int cp_spot_pairs(const cp_strlist *channels, cp_stable *out)
{
    memset(out, 0, sizeof *out);
    cp_strlist s;
    int rc = sorted_copy(channels, &s);
    size_t n = s.n * (s.n ? s.n - 1 : 0) / 2;
    if (!rc)
        rc = cp_stable_add_col(out, "chan_a", CP_SCOL_STR);
    if (!rc)
        rc = cp_stable_add_col(out, "chan_b", CP_SCOL_STR);
    if (!rc)
        rc = cp_stable_reserve(out, n);
    size_t r = 0;
    for (size_t i = 0; i < s.n && !rc; i++)
        for (size_t j = i + 1; j < s.n && !rc; j++, r++) {
            rc = set_str(&out->cols[0], r, s.items[i]);
            rc = rc ? rc : set_str(&out->cols[1], r, s.items[j]);
        }
    out->cols[0].json_numbers = out->cols[1].json_numbers = 0;
    out->nrows = r;
    cp_strlist_free(&s);
    if (rc)
        cp_stable_free(out);
    return rc;
}

/* ---- ratios ---------------------------------------------------------------- */

char *cp_spot_read_text(const char *path, size_t max, size_t *len);

int cp_spot_read_ratios(const char *path, double **mp, int *rowsp, int *colsp)
{
    char *text = cp_spot_read_text(path, 16u << 20, NULL);
    if (!text)
        return CP_EIO;
    size_t cap = 64, n = 0;
    double *m = malloc(cap * sizeof *m);
    int rows = 0, cols = -1, rc = CP_OK;
    long line = 0;
    for (char *p = text; *p && !rc;) {
        line++;
        char *e = strchr(p, '\n');
        if (e)
            *e = '\0';
        int k = 0;
        for (char *q = p; *q && !rc;) {
            while (*q == ' ' || *q == '\t' || *q == '\r' || *q == ',')
                q++;
            if (!*q)
                break;
            char *s = q;
            while (*q && *q != ' ' && *q != '\t' && *q != '\r' && *q != ',')
                q++;
            double d;
            if (cp_parse_f64(s, (size_t)(q - s), &d) != 0) {
                rc = cp_error(CP_EFORMAT, "%s:%ld:%ld: '%.*s' is not a number", path, line, (long)(s - p) + 1,
                              (int)(q - s), s);
                break;
            }
            if (n == cap) {
                double *nm = realloc(m, 2 * cap * sizeof *m);
                if (!nm) {
                    rc = cp_error(CP_ENOMEM, "out of memory");
                    break;
                }
                m = nm;
                cap *= 2;
            }
            m[n++] = d;
            k++;
        }
        if (!rc && k) {
            if (cols >= 0 && k != cols)
                rc = cp_error(CP_EFORMAT, "%s:%ld:1: %d values, earlier rows have %d", path, line, k, cols);
            cols = k;
            rows++;
        }
        if (!e)
            break;
        p = e + 1;
    }
    free(text);
    if (!rc && rows == 0)
        rc = cp_error(CP_EFORMAT, "%s: empty ratio matrix", path);
    if (rc) {
        free(m);
        return rc;
    }
    *mp = m;
    *rowsp = rows;
    *colsp = cols;
    return CP_OK;
}

/* ---- summaries ------------------------------------------------------------ */

static const char *SUMMARY_COLS[] = {"min_dist", "round", "total_spots", "kept_spots",
                                     "reassigned_spots", "gene", "channel", NULL};

static int summary_table(cp_stable *out)
{
    memset(out, 0, sizeof *out);
    int rc = CP_OK;
    for (int i = 0; SUMMARY_COLS[i] && !rc; i++)
        if (!(rc = cp_stable_add_col(out, SUMMARY_COLS[i], CP_SCOL_STR)))
            out->cols[out->ncols - 1].json_numbers = strcmp(SUMMARY_COLS[i], "gene") != 0;
    if (!rc)
        rc = cp_stable_add_col(out, "removed_spots", CP_SCOL_I64);
    if (!rc)
        rc = cp_stable_add_col(out, "unchanged_spots", CP_SCOL_I64);
    return rc;
}

static int64_t cell_int(const cp_scol *c, size_t r)
{
    const char *s = cp_scol_str(c, r);
    int64_t v = 0;
    if (s)
        cp_parse_i64(s, strlen(s), &v);
    return v;
}

static void fmt_i64(char *b, size_t n, int64_t v) { snprintf(b, n, "%lld", (long long)v); }

/* Add (or sum into) one summary row keyed by (min_dist, round, channel). */
static int summary_add(cp_stable *out, const char *vals[7])
{
    size_t r;
    for (r = 0; r < out->nrows; r++) {
        const char *a = cp_scol_str(&out->cols[0], r), *b = cp_scol_str(&out->cols[1], r),
                   *c = cp_scol_str(&out->cols[6], r);
        if (a && b && c && vals[0] && vals[1] && vals[6] && !strcmp(a, vals[0]) && !strcmp(b, vals[1]) &&
            !strcmp(c, vals[6]))
            break;
    }
    int rc = cp_stable_reserve(out, out->nrows + 1);
    if (rc)
        return rc;
    if (r == out->nrows) {
        for (int k = 0; k < 7 && !rc; k++)
            rc = set_str(&out->cols[k], r, vals[k]);
        out->nrows++;
        return rc;
    }
    for (int k = 2; k <= 4 && !rc; k++) {
        int64_t a = cell_int(&out->cols[k], r), b = 0;
        if (vals[k])
            cp_parse_i64(vals[k], strlen(vals[k]), &b);
        char buf[32];
        fmt_i64(buf, sizeof buf, a + b);
        rc = set_str(&out->cols[k], r, buf);
    }
    return rc;
}

static void summary_finish(cp_stable *out)
{
    for (size_t r = 0; r < out->nrows; r++) {
        int64_t tot = cell_int(&out->cols[2], r), kept = cell_int(&out->cols[3], r),
                re = cell_int(&out->cols[4], r);
        ((int64_t *)out->cols[7].v)[r] = tot - kept;
        ((int64_t *)out->cols[8].v)[r] = kept - re;
    }
}

int cp_spot_summary_files(const cp_spot_dataset *d, const int *rounds, int nrounds, cp_stable *out)
{
    int rc = summary_table(out), any = 0;
    for (int i = 0; i < d->nparts && !rc; i++) {
        const cp_spot_part *p = &d->parts[i];
        int ok = !rounds;
        for (int k = 0; k < nrounds && !ok; k++)
            ok = rounds[k] == p->round;
        if (!ok || !p->summary)
            continue;
        any = 1;
        cp_stable s;
        cp_sread_opts o = {0};
        o.all_str = 1;
        o.threads = 1;
        if ((rc = cp_spot_table_read(p->summary, &o, &s)))
            break;
        int idx[7];
        for (int k = 0; k < 7; k++) {
            idx[k] = cp_stable_find(&s, SUMMARY_COLS[k]);
            if (idx[k] < 0 && k >= 2 && k <= 4 && !rc)
                rc = cp_error(CP_EFORMAT, "%s:1: missing column '%s'", p->summary, SUMMARY_COLS[k]);
        }
        for (size_t r = 0; r < s.nrows && !rc; r++) {
            const char *vals[7];
            for (int k = 0; k < 7; k++)
                vals[k] = idx[k] >= 0 ? cp_scol_str(&s.cols[idx[k]], r) : NULL;
            for (int k = 2; k <= 4 && !rc; k++) {
                int64_t v;
                if (!vals[k] || cp_parse_i64(vals[k], strlen(vals[k]), &v))
                    rc = cp_error(CP_EFORMAT, "%s:%zu: column '%s': '%s' is not a whole number", p->summary,
                                  r + 2, SUMMARY_COLS[k], vals[k] ? vals[k] : "");
            }
            if (!rc)
                rc = summary_add(out, vals);
        }
        cp_stable_free(&s);
    }
    if (!rc && !any)
        rc = cp_error(CP_EIO, "%s: no round_<N>_summary_stats.csv", d->root ? d->root : "dataset");
    if (rc) {
        cp_stable_free(out);
        return rc;
    }
    summary_finish(out);
    return CP_OK;
}

static const char *gene_of(const cp_spot_dataset *d, const char *chan)
{
    for (size_t i = 0; i < d->gene_chan.n; i++)
        if (!strcmp(d->gene_chan.items[i], chan))
            return d->gene_name.items[i];
    return NULL;
}

int cp_spot_summary_compute(const cp_spot_dataset *d, const cp_stable *t, cp_stable *out)
{
    int rc = summary_table(out);
    int ci = cp_stable_find(t, "chan"), ri = cp_stable_find(t, "round"), rei = cp_stable_find(t, "reassigned");
    if (!rc && (ci < 0 || t->cols[ci].type != CP_SCOL_STR || rei < 0))
        rc = cp_error(CP_EINVAL, "summary needs the chan and reassigned columns");
    if (rc) {
        cp_stable_free(out);
        return rc;
    }
    const cp_scol *C = &t->cols[ci], *R = ri >= 0 ? &t->cols[ri] : NULL, *RE = &t->cols[rei];
    /* counts per (round, chan): round 0..255 via offset */
    size_t nch = (size_t)C->dict.n;
    int64_t *cnt = cp_calloc(256 * nch * 3 + 1, sizeof *cnt, "summary");
    removed_ctx rx;
    if (!cnt || removed_init(&rx, t)) {
        free(cnt);
        cp_stable_free(out);
        return CP_ENOMEM;
    }
    for (size_t i = 0; i < t->nrows; i++) {
        int32_t c = ((const int32_t *)C->v)[i];
        if (c < 0)
            continue;
        int r = R && !cp_scol_is_null(R, i) ? (int)cp_scol_num(R, i) + 128 : 128;
        int64_t *k = cnt + ((size_t)r * nch + (size_t)c) * 3;
        k[0]++;
        if (!removed_at(&rx, i))
            k[1]++;
        if (cp_scol_get_bool(RE, i))
            k[2]++;
    }
    free(rx.code_removed);
    cp_strlist chans;
    cp_strlist dictl = {C->dict.s, (size_t)C->dict.n, (size_t)C->dict.n};
    rc = sorted_copy(&dictl, &chans);
    for (int r = 0; r < 256 && !rc; r++)
        for (size_t q = 0; q < chans.n && !rc; q++) {
            int32_t c = cp_sdict_find(&C->dict, chans.items[q]);
            int64_t *k = cnt + ((size_t)r * nch + (size_t)c) * 3;
            if (!k[0])
                continue;
            char rb[16], tb[32], kb[32], eb[32];
            snprintf(rb, sizeof rb, "%d", r - 128);
            fmt_i64(tb, sizeof tb, k[0]);
            fmt_i64(kb, sizeof kb, k[1]);
            fmt_i64(eb, sizeof eb, k[2]);
            const char *vals[7] = {"3", R ? rb : NULL, tb, kb, eb, gene_of(d, chans.items[q]), chans.items[q]};
            rc = summary_add(out, vals);
        }
    cp_strlist_free(&chans);
    free(cnt);
    if (rc) {
        cp_stable_free(out);
        return rc;
    }
    summary_finish(out);
    return CP_OK;
}

/* ---- sankey ---------------------------------------------------------------- */

void cp_sankey_free(cp_sankey *s)
{
    for (int i = 0; i < s->nlinks; i++) {
        free(s->links[i].source);
        free(s->links[i].target);
    }
    free(s->links);
    cp_strlist_free(&s->original);
    cp_strlist_free(&s->final);
    memset(s, 0, sizeof *s);
}

int cp_sankey_table(const cp_sankey *s, cp_stable *out)
{
    static const char *names[] = {"source", "target", "value", "flow_type", "percentage"};
    static const cp_scol_type types[] = {CP_SCOL_STR, CP_SCOL_STR, CP_SCOL_I64, CP_SCOL_STR, CP_SCOL_F64};
    memset(out, 0, sizeof *out);
    int rc = CP_OK;
    for (int k = 0; k < 5 && !rc; k++)
        rc = cp_stable_add_col(out, names[k], types[k]);
    if (!rc)
        rc = cp_stable_reserve(out, (size_t)s->nlinks);
    for (int i = 0; i < s->nlinks && !rc; i++) {
        const cp_sankey_link *L = &s->links[i];
        rc = set_str(&out->cols[0], (size_t)i, L->source);
        rc = rc ? rc : set_str(&out->cols[1], (size_t)i, L->target);
        rc = rc ? rc : set_str(&out->cols[3], (size_t)i, L->flow_type);
        ((int64_t *)out->cols[2].v)[i] = L->value;
        ((double *)out->cols[4].v)[i] = L->percentage;
    }
    if (rc) {
        cp_stable_free(out);
        return rc;
    }
    out->nrows = (size_t)s->nlinks;
    return CP_OK;
}

static int removed_last_cmp(const void *a, const void *b)
{
    const char *x = *(char *const *)a, *y = *(char *const *)b;
    int rx = !strcmp(x, "Removed"), ry = !strcmp(y, "Removed");
    if (rx != ry)
        return rx - ry;
    return strcmp(x, y);
}

int cp_spot_sankey(const cp_stable *t, cp_sankey *s)
{
    memset(s, 0, sizeof *s);
    int ci = cp_stable_find(t, "chan"), ui = cp_stable_find(t, "unmixed_chan");
    if (ci < 0 || t->cols[ci].type != CP_SCOL_STR)
        return cp_error(CP_EINVAL, "sankey needs the chan column");
    const cp_scol *C = &t->cols[ci], *U = ui >= 0 && t->cols[ui].type == CP_SCOL_STR ? &t->cols[ui] : NULL;
    /* final channel: unmixed dict code, or "Removed" (index nu) */
    size_t nc = (size_t)C->dict.n + 1, nu = U ? (size_t)U->dict.n : 0, nf = nu + 1;
    int64_t *cnt = cp_calloc(nc * nf, sizeof *cnt, "sankey");
    if (!cnt)
        return CP_ENOMEM;
    for (size_t i = 0; i < t->nrows; i++) {
        int32_t c = ((const int32_t *)C->v)[i];
        size_t cc = c < 0 ? nc - 1 : (size_t)c, f = nu;
        if (U) {
            int32_t u = ((const int32_t *)U->v)[i];
            if (u >= 0 && !cp_spot_removed_str(U->dict.s[u]))
                f = (size_t)u;
        }
        cnt[cc * nf + f]++;
    }
    s->total = (int64_t)t->nrows;
    s->threshold = (int64_t)floor((double)s->total * 0.001);
    if (s->threshold < 5)
        s->threshold = 5;
    int rc = CP_OK;
    /* node lists: every chan / final channel that occurs */
    for (size_t c = 0; c + 1 < nc && !rc; c++) {
        int64_t sum = 0;
        for (size_t f = 0; f < nf; f++)
            sum += cnt[c * nf + f];
        if (sum)
            rc = cp_strlist_push(&s->original, C->dict.s[c]);
    }
    for (size_t f = 0; f < nf && !rc; f++) {
        int64_t sum = 0;
        for (size_t c = 0; c < nc; c++)
            sum += cnt[c * nf + f];
        const char *name = f == nu ? "Removed" : U->dict.s[f];
        int dup = 0;
        for (size_t k = 0; k < s->final.n; k++)
            dup |= !strcmp(s->final.items[k], name);
        if (sum && !dup)
            rc = cp_strlist_push(&s->final, name);
    }
    if (s->original.n > 1)
        qsort(s->original.items, s->original.n, sizeof(char *), str_cmp);
    if (s->final.n > 1)
        qsort(s->final.items, s->final.n, sizeof(char *), removed_last_cmp);
    /* links sorted by (chan, final) as strings, "Removed" sorting as text */
    for (size_t a = 0; a < s->original.n && !rc; a++) {
        int32_t c = cp_sdict_find(&C->dict, s->original.items[a]);
        cp_strlist targets = {0};
        for (size_t f = 0; f < nf && !rc; f++)
            if (cnt[(size_t)c * nf + f] >= s->threshold)
                rc = cp_strlist_push(&targets, f == nu ? "Removed" : U->dict.s[f]);
        if (targets.n > 1)
            qsort(targets.items, targets.n, sizeof(char *), str_cmp);
        for (size_t k = 0; k < targets.n && !rc; k++) {
            int32_t f = strcmp(targets.items[k], "Removed") ? cp_sdict_find(&U->dict, targets.items[k]) : (int32_t)nu;
            int64_t v = cnt[(size_t)c * nf + (size_t)f];
            cp_sankey_link *nl = realloc(s->links, (size_t)(s->nlinks + 1) * sizeof *nl);
            if (!nl) {
                rc = cp_error(CP_ENOMEM, "out of memory");
                break;
            }
            s->links = nl;
            cp_sankey_link *L = &s->links[s->nlinks++];
            L->source = cp_strdup(s->original.items[a]);
            L->target = cp_strdup(targets.items[k]);
            L->value = v;
            L->flow_type = !strcmp(L->source, L->target) ? "unchanged"
                           : !strcmp(L->target, "Removed") ? "removed"
                                                           : "reassigned";
            L->percentage = round((double)v / (double)s->total * 100.0 * 100.0) / 100.0;
        }
        cp_strlist_free(&targets);
    }
    free(cnt);
    if (rc)
        cp_sankey_free(s);
    return rc;
}

/* ---- counts ----------------------------------------------------------------- */

/* Integer cell of a row (I32 or I64 column). */
static int64_t cell_at(const cp_scol *c, size_t r)
{
    return c->type == CP_SCOL_I64 ? ((const int64_t *)c->v)[r] : ((const int32_t *)c->v)[r];
}

int cp_spot_counts(const cp_spot_dataset *d, const cp_stable *t, const uint32_t *rows, size_t n, cp_count_by by,
                   int genes, int background, cp_stable *out)
{
    cp_count_opts o = {by, genes, background, NULL, NULL, 0};
    return cp_spot_counts_ex(d, t, rows, n, &o, out);
}

int cp_spot_counts_ex(const cp_spot_dataset *d, const cp_stable *t, const uint32_t *rows, size_t n,
                      const cp_count_opts *o, cp_stable *out)
{
    memset(out, 0, sizeof *out);
    const char *cname = o->by == CP_COUNT_MIXED ? "chan" : "unmixed_chan";
    const char *cellname = o->cell_col ? o->cell_col : "cell_id";
    int ci = cp_stable_find(t, cname), ce = cp_stable_find(t, cellname);
    if (ci < 0 || t->cols[ci].type != CP_SCOL_STR)
        return cp_error(CP_EINVAL, "counts need the %s column", cname);
    if (ce < 0 || (t->cols[ce].type != CP_SCOL_I32 && t->cols[ce].type != CP_SCOL_I64))
        return cp_error(CP_EINVAL, "counts need an integer %s column", cellname);
    const cp_scol *C = &t->cols[ci], *CE = &t->cols[ce];
    const cp_strlist *chans = &d->channels;
    int nch = (int)chans->n;
    int32_t *col_of = cp_malloc_array((size_t)C->dict.n + 1, sizeof *col_of, "counts");
    if (!col_of)
        return CP_ENOMEM;
    for (int32_t k = 0; k < C->dict.n; k++) {
        col_of[k] = -1;
        for (int q = 0; q < nch; q++)
            if (!strcmp(chans->items[q], C->dict.s[k]))
                col_of[k] = q;
    }
    /* distinct cells, sorted */
    const int32_t *cv = C->v;
    int64_t *ids = cp_malloc_array(n + o->ncells + 1, sizeof *ids, "counts");
    size_t m = 0;
    int rc = ids ? CP_OK : CP_ENOMEM;
    for (size_t i = 0; i < n && !rc; i++) {
        uint32_t r = rows ? rows[i] : (uint32_t)i;
        if (cp_scol_is_null(CE, r) || (!o->background && cell_at(CE, r) == 0))
            continue;
        ids[m++] = cell_at(CE, r);
    }
    for (size_t i = 0; i < o->ncells && !rc; i++)
        ids[m++] = o->cells[i];
    size_t nu = 0;
    if (!rc && m) {
        qsort(ids, m, sizeof *ids, cp_i64_cmp);
        for (size_t i = 0; i < m; i++)
            if (!nu || ids[nu - 1] != ids[i])
                ids[nu++] = ids[i];
    }
    int64_t *cnt = rc ? NULL : cp_calloc(nu * (size_t)(nch ? nch : 1) + 1, sizeof *cnt, "counts");
    if (!rc && !cnt)
        rc = CP_ENOMEM;
    for (size_t i = 0; i < n && !rc; i++) {
        uint32_t r = rows ? rows[i] : (uint32_t)i;
        if (cp_scol_is_null(CE, r) || cv[r] < 0 || col_of[cv[r]] < 0)
            continue;
        int64_t cell = cell_at(CE, r);
        if (!o->background && cell == 0)
            continue;
        int64_t *hit = bsearch(&cell, ids, nu, sizeof *ids, cp_i64_cmp);
        cnt[(size_t)(hit - ids) * (size_t)nch + (size_t)col_of[cv[r]]]++;
    }
    if (!rc)
        rc = cp_stable_add_col(out, cellname, CE->type);
    for (int q = 0; q < nch && !rc; q++) {
        const char *g = o->genes ? gene_of(d, chans->items[q]) : NULL;
        rc = cp_stable_add_col(out, g ? g : chans->items[q], CP_SCOL_I64);
    }
    if (!rc)
        rc = cp_stable_reserve(out, nu);
    for (size_t i = 0; i < nu && !rc; i++) {
        if (CE->type == CP_SCOL_I64)
            ((int64_t *)out->cols[0].v)[i] = ids[i];
        else
            ((int32_t *)out->cols[0].v)[i] = (int32_t)ids[i];
        for (int q = 0; q < nch; q++)
            ((int64_t *)out->cols[q + 1].v)[i] = cnt[i * (size_t)nch + (size_t)q];
    }
    if (!rc)
        out->nrows = nu;
    free(cnt);
    free(ids);
    free(col_of);
    if (rc)
        cp_stable_free(out);
    return rc;
}

/* ---- datasets ---------------------------------------------------------------- */

typedef struct dsent {
    char *name;
    time_t mtime;
    int has;
} dsent;

static int ds_cmp(const void *a, const void *b)
{
    const dsent *x = a, *y = b;
    if (x->mtime != y->mtime)
        return x->mtime > y->mtime ? -1 : 1;
    return strcmp(x->name, y->name);
}

int cp_spot_datasets(const char *root, cp_stable *out)
{
    memset(out, 0, sizeof *out);
    DIR *dh = opendir(root);
    if (!dh)
        return cp_error(CP_EIO, "%s: cannot open folder: %s", root, strerror(errno));
    dsent *e = NULL;
    size_t n = 0;
    int rc = CP_OK;
    struct dirent *de;
    while ((de = readdir(dh)) && !rc) {
        if (de->d_name[0] == '.')
            continue;
        char *p = cp_path_join(root, de->d_name);
        struct stat st;
        if (p && stat(p, &st) == 0 && S_ISDIR(st.st_mode)) {
            dsent *ne = realloc(e, (n + 1) * sizeof *ne);
            char *sp = cp_path_join(p, "image_spot_spectral_unmixing");
            struct stat s2;
            if (!ne || !sp) {
                free(sp);
                free(p);
                rc = cp_error(CP_ENOMEM, "out of memory");
                break;
            }
            e = ne;
            e[n].name = cp_strdup(de->d_name);
            e[n].mtime = st.st_mtime;
            e[n].has = stat(sp, &s2) == 0 && S_ISDIR(s2.st_mode);
            n++;
            free(sp);
        }
        free(p);
    }
    closedir(dh);
    if (n)
        qsort(e, n, sizeof *e, ds_cmp);
    if (!rc)
        rc = cp_stable_add_col(out, "name", CP_SCOL_STR);
    if (!rc)
        rc = cp_stable_add_col(out, "modified", CP_SCOL_STR);
    if (!rc)
        rc = cp_stable_add_col(out, "has_data", CP_SCOL_BOOL);
    if (!rc)
        rc = cp_stable_reserve(out, n);
    for (size_t i = 0; i < n && !rc; i++) {
        char tb[32];
        struct tm tm;
        gmtime_r(&e[i].mtime, &tm);
        strftime(tb, sizeof tb, "%Y-%m-%d %H:%M:%S", &tm);
        rc = set_str(&out->cols[0], i, e[i].name);
        rc = rc ? rc : set_str(&out->cols[1], i, tb);
        cp_scol_set_bool(&out->cols[2], i, e[i].has);
    }
    if (!rc)
        out->nrows = n;
    for (size_t i = 0; i < n; i++)
        free(e[i].name);
    free(e);
    if (rc)
        cp_stable_free(out);
    return rc;
}
