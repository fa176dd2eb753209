/* A restricted reader for pandas DataFrame pickles (protocols 2-5).
 *
 * The pickle virtual machine is interpreted only as far as DataFrame pickles
 * need: a fixed list of globals (the frame, BlockManager, Index and block
 * reconstructors of pandas 1.5/2.x and numpy's array/dtype reconstructors
 * under both numpy 1 and numpy 2 module paths) is recognised and *modelled*
 * in C; any other global is an error. Nothing is ever called or executed.
 * Every value is made by one opcode of at least one byte, so the number of
 * values, stack entries and memo slots is bounded by the file's size, and
 * every length is checked against the bytes that remain.
 *
 * lib/net/weights.c runs its own interpreter of the same kind (torch files,
 * size models) with the same numpy rebuilders modelled; one shared VM with a
 * per-caller list of globals would remove that twin (issue #19, not done). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/table.h"
#include "core/internal.h"
#include "table/table_internal.h"

enum {
    V_MARK, V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_BYTES, V_TUPLE, V_LIST, V_DICT,
    V_GLOBAL, V_DTYPE, V_ARRAY, V_SLICE, V_BLOCK, V_INDEX, V_BM, V_DF
};

enum {
    G_RECONSTRUCT, G_NDARRAY, G_DTYPE, G_FROMBUFFER, G_SCALAR, G_SLICE, G_ENCODE, G_NEW_INDEX,
    G_INDEX, G_RANGEINDEX, G_BM, G_DF, G_UNPICKLE_BLOCK, G_NEW_BLOCK
};

static const struct {
    const char *mod, *name;
    int id;
} GLOBALS[] = {
    {"numpy.core.multiarray", "_reconstruct", G_RECONSTRUCT},
    {"numpy._core.multiarray", "_reconstruct", G_RECONSTRUCT},
    {"numpy", "ndarray", G_NDARRAY},
    {"numpy", "dtype", G_DTYPE},
    {"numpy.core.numeric", "_frombuffer", G_FROMBUFFER},
    {"numpy._core.numeric", "_frombuffer", G_FROMBUFFER},
    {"numpy.core.multiarray", "scalar", G_SCALAR},
    {"numpy._core.multiarray", "scalar", G_SCALAR},
    {"builtins", "slice", G_SLICE},
    {"__builtin__", "slice", G_SLICE},
    {"_codecs", "encode", G_ENCODE},
    {"pandas.core.indexes.base", "_new_Index", G_NEW_INDEX},
    {"pandas.core.indexes.base", "Index", G_INDEX},
    {"pandas.core.indexes.numeric", "Int64Index", G_INDEX},
    {"pandas.core.indexes.numeric", "UInt64Index", G_INDEX},
    {"pandas.core.indexes.numeric", "Float64Index", G_INDEX},
    {"pandas.core.indexes.range", "RangeIndex", G_RANGEINDEX},
    {"pandas.core.internals.managers", "BlockManager", G_BM},
    {"pandas.core.frame", "DataFrame", G_DF},
    {"pandas._libs.internals", "_unpickle_block", G_UNPICKLE_BLOCK},
    {"pandas.core.internals.blocks", "new_block", G_NEW_BLOCK},
};

typedef struct pv {
    uint8_t kind, g;          /* g: global id; ARRAY/DTYPE: dtype kind char */
    uint8_t dsize, swap, fortran, ndim;
    int64_t i;                /* INT, BOOL; ARRAY: object list ref; INDEX: length */
    double f;
    const uint8_t *p;         /* STR/BYTES/ARRAY data */
    size_t n;
    int64_t shape[2];
    uint32_t *it;             /* TUPLE/LIST/DICT (k, v pairs)/BLOCK/BM/DF/INDEX refs */
    uint32_t ni, cap;
} pv;

typedef struct vm {
    const char *path;
    const uint8_t *p, *end, *base;
    pv *v;
    size_t nv, capv, limit;
    uint32_t *st;
    size_t nst, capst;
    uint32_t *memo;
    size_t nmemo, capmemo;
    uint8_t **owned;          /* buffers made by _codecs.encode */
    size_t nowned;
} vm;

#define FAIL(...) return cp_error(CP_EFORMAT, __VA_ARGS__)

/* A name from the file, printable and bounded, for a one-line message. */
static void printable(char *dst, size_t cap, const char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n && k + 1 < cap; i++)
        dst[k++] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
    dst[k] = '\0';
}

static int grow(void **a, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return CP_OK;
    size_t nc = *cap ? *cap * 2 : 64;
    while (nc < need)
        nc *= 2;
    void *n = realloc(*a, nc * elem);
    if (!n)
        return cp_error(CP_ENOMEM, "out of memory (pickle)");
    *a = n;
    *cap = nc;
    return CP_OK;
}

static int new_val(vm *m, int kind, uint32_t *ref)
{
    if (m->nv >= m->limit)
        return cp_error(CP_EFORMAT, "%s: too many pickle values for the file size", m->path);
    if (grow((void **)&m->v, &m->capv, m->nv + 1, sizeof *m->v))
        return CP_ENOMEM;
    memset(&m->v[m->nv], 0, sizeof *m->v);
    m->v[m->nv].kind = (uint8_t)kind;
    *ref = (uint32_t)m->nv++;
    return CP_OK;
}

static int push(vm *m, uint32_t r)
{
    if (m->nst >= m->limit)
        return cp_error(CP_EFORMAT, "%s: pickle stack too deep", m->path);
    size_t cap32 = m->capst;
    if (grow((void **)&m->st, &cap32, m->nst + 1, sizeof *m->st))
        return CP_ENOMEM;
    m->capst = cap32;
    m->st[m->nst++] = r;
    return CP_OK;
}

static int push_new(vm *m, int kind, pv **out)
{
    uint32_t r;
    int rc = new_val(m, kind, &r);
    if (!rc)
        rc = push(m, r);
    if (!rc && out)
        *out = &m->v[r];
    return rc;
}

static int add_item(vm *m, uint32_t list, uint32_t item)
{
    pv *l = &m->v[list];
    size_t cap = l->cap;
    if (l->ni == UINT32_MAX)
        FAIL("%s: pickle container too large", m->path);
    if (grow((void **)&l->it, &cap, (size_t)l->ni + 1, sizeof *l->it))
        return CP_ENOMEM;
    l->cap = (uint32_t)(cap > UINT32_MAX ? UINT32_MAX : cap);
    l->it[l->ni++] = item;
    return CP_OK;
}

static int pop(vm *m, uint32_t *r)
{
    if (!m->nst || m->v[m->st[m->nst - 1]].kind == V_MARK)
        FAIL("%s: pickle stack underflow at byte %zu", m->path, (size_t)(m->p - m->base));
    *r = m->st[--m->nst];
    return CP_OK;
}

/* Index of the topmost mark. */
static int find_mark(vm *m, size_t *at)
{
    for (size_t k = m->nst; k-- > 0;)
        if (m->v[m->st[k]].kind == V_MARK) {
            *at = k;
            return CP_OK;
        }
    FAIL("%s: pickle has no mark at byte %zu", m->path, (size_t)(m->p - m->base));
}

static int need(vm *m, size_t n)
{
    if ((size_t)(m->end - m->p) < n)
        FAIL("%s: truncated pickle (needs %zu bytes at byte %zu, %zu left)", m->path, n,
             (size_t)(m->p - m->base), (size_t)(m->end - m->p));
    return CP_OK;
}

static uint64_t le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* A length-prefixed string or bytes value. */
static int op_data(vm *m, int lenbytes, int kind)
{
    int rc = need(m, (size_t)lenbytes);
    if (rc)
        return rc;
    uint64_t n = le(m->p, lenbytes);
    m->p += lenbytes;
    if (n > (uint64_t)(m->end - m->p))
        FAIL("%s: pickle string of %llu bytes runs past the end of the file", m->path, (unsigned long long)n);
    pv *v;
    if ((rc = push_new(m, kind, &v)))
        return rc;
    v->p = m->p;
    v->n = (size_t)n;
    m->p += n;
    return CP_OK;
}

static int op_global(vm *m, const char *mod, size_t ml, const char *name, size_t nl)
{
    for (size_t k = 0; k < sizeof GLOBALS / sizeof *GLOBALS; k++)
        if (strlen(GLOBALS[k].mod) == ml && !memcmp(GLOBALS[k].mod, mod, ml) &&
            strlen(GLOBALS[k].name) == nl && !memcmp(GLOBALS[k].name, name, nl)) {
            pv *v;
            int rc = push_new(m, V_GLOBAL, &v);
            if (!rc)
                v->g = (uint8_t)GLOBALS[k].id;
            return rc;
        }
    char a[160], b[160];
    printable(a, sizeof a, mod, ml);
    printable(b, sizeof b, name, nl);
    FAIL("%s: pickle refers to %s.%s, which this reader refuses (pandas DataFrames of numeric, bool "
         "and object columns only; nothing is executed)", m->path, a, b);
}

static int to_i64(const pv *v, int64_t *out)
{
    if (v->kind == V_INT || v->kind == V_BOOL) {
        *out = v->i;
        return 1;
    }
    return 0;
}

static const pv *item(const vm *m, const pv *t, uint32_t k) { return &m->v[t->it[k]]; }

static int is_tuple(const pv *v) { return v->kind == V_TUPLE || v->kind == V_LIST; }

static int str_is(const pv *v, const char *s)
{
    return v->kind == V_STR && v->n == strlen(s) && !memcmp(v->p, s, v->n);
}

static int parse_dtype(vm *m, const pv *s, pv *d)
{
    if (s->kind != V_STR || s->n < 2 || s->n > 3)
        FAIL("%s: unsupported numpy dtype in pickle", m->path);
    char k = (char)s->p[0];
    int size = atoi((const char[4]){(char)s->p[1], s->n > 2 ? (char)s->p[2] : 0, 0, 0});
    int ok = (k == 'f' && (size == 4 || size == 8)) ||
             ((k == 'i' || k == 'u') && (size == 1 || size == 2 || size == 4 || size == 8)) ||
             (k == 'b' && size == 1) || (k == 'O' && size == 8);
    if (!ok) {
        char b[8];
        printable(b, sizeof b, (const char *)s->p, s->n);
        FAIL("%s: unsupported numpy dtype '%s' in pickle (numbers, bool and object columns only)", m->path, b);
    }
    d->g = (uint8_t)k;
    d->dsize = (uint8_t)size;
    return CP_OK;
}

static int set_array_dtype(vm *m, pv *a, const pv *dt)
{
    if (dt->kind != V_DTYPE)
        FAIL("%s: pickled array without a dtype", m->path);
    a->g = dt->g;
    a->dsize = dt->dsize;
    a->swap = dt->swap;
    return CP_OK;
}

static int set_shape(vm *m, pv *a, const pv *shape)
{
    int64_t n;
    if (to_i64(shape, &n)) {
        a->ndim = 1;
        a->shape[0] = n;
        a->shape[1] = 1;
    } else if (is_tuple(shape) && shape->ni >= 1 && shape->ni <= 2) {
        a->ndim = (uint8_t)shape->ni;
        a->shape[1] = 1;
        for (uint32_t k = 0; k < shape->ni; k++)
            if (!to_i64(item(m, shape, k), &a->shape[k]))
                FAIL("%s: bad array shape in pickle", m->path);
    } else {
        FAIL("%s: unsupported array shape in pickle (1 or 2 dimensions)", m->path);
    }
    if (a->shape[0] < 0 || a->shape[1] < 0 || a->shape[0] > (int64_t)m->limit * 8 ||
        a->shape[1] > (int64_t)m->limit * 8)
        FAIL("%s: array shape larger than the file in pickle", m->path);
    return CP_OK;
}

/* Data of a numeric array: its size must match shape x dtype exactly. */
static int set_data(vm *m, pv *a, const pv *data)
{
    if (a->g == 'O') {
        if (data->kind != V_LIST)
            FAIL("%s: object array without a list of values in pickle", m->path);
        if ((a->shape[1] && (uint64_t)a->shape[0] > data->ni / (uint64_t)a->shape[1]) ||
            (uint64_t)data->ni != (uint64_t)a->shape[0] * (uint64_t)a->shape[1])
            FAIL("%s: object array holds %u values for shape %lldx%lld", m->path, data->ni,
                 (long long)a->shape[0], (long long)a->shape[1]);
        a->i = data - m->v;
        return CP_OK;
    }
    if (data->kind != V_BYTES)
        FAIL("%s: numeric array without its bytes in pickle", m->path);
    uint64_t s0 = (uint64_t)a->shape[0], s1 = (uint64_t)a->shape[1];
    if (s1 && s0 > data->n / s1)
        FAIL("%s: array shape larger than its data in pickle", m->path);
    uint64_t want = s0 * s1 * a->dsize;
    if (want != data->n)
        FAIL("%s: array data of %zu bytes for %llu expected in pickle", m->path, data->n,
             (unsigned long long)want);
    a->p = data->p;
    a->n = data->n;
    return CP_OK;
}

static int utf8_to_latin1(vm *m, const pv *s, pv *out)
{
    uint8_t *b = malloc(s->n + 1);
    if (!b || grow((void **)&m->owned, &(size_t){m->nowned}, m->nowned + 1, sizeof *m->owned)) {
        free(b);
        return cp_error(CP_ENOMEM, "out of memory (pickle)");
    }
    /* grow() above sized by nowned: keep capacity equal to count + 1 */
    m->owned[m->nowned++] = b;
    size_t n = 0;
    for (size_t i = 0; i < s->n; i++) {
        uint8_t c = s->p[i];
        if (c < 0x80) {
            b[n++] = c;
        } else if ((c & 0xe0) == 0xc0 && c <= 0xc3 && i + 1 < s->n) {
            b[n++] = (uint8_t)((c & 0x1f) << 6 | (s->p[++i] & 0x3f));
        } else {
            FAIL("%s: bad latin-1 bytes in pickle", m->path);
        }
    }
    out->p = b;
    out->n = n;
    return CP_OK;
}

static int op_reduce(vm *m, uint32_t fr, uint32_t ar, int newobj)
{
    pv *f = &m->v[fr], *a = &m->v[ar];
    if (f->kind != V_GLOBAL || a->kind != V_TUPLE)
        FAIL("%s: pickle calls something that is not an allowed global", m->path);
    int g = f->g;
    uint32_t r;
    int rc = new_val(m, V_NONE, &r);
    if (rc)
        return rc;
    pv *o = &m->v[r];
    a = &m->v[ar];
    uint32_t n = a->ni;
#define ARG(k) (&m->v[a->it[k]])
    if (newobj) {
        if (g == G_DF)
            o->kind = V_DF;
        else if (g == G_BM)
            o->kind = V_BM;
        else
            FAIL("%s: pickle creates an object of a class it may not", m->path);
        return push(m, r);
    }
    switch (g) {
    case G_RECONSTRUCT:
        o->kind = V_ARRAY;
        break;
    case G_DTYPE:
        if (n < 1)
            FAIL("%s: bad numpy dtype in pickle", m->path);
        o->kind = V_DTYPE;
        if ((rc = parse_dtype(m, ARG(0), o)))
            return rc;
        break;
    case G_FROMBUFFER:
        if (n < 3)
            FAIL("%s: bad numpy array in pickle", m->path);
        o->kind = V_ARRAY;
        if ((rc = set_array_dtype(m, o, ARG(1))) || (rc = set_shape(m, o, ARG(2))))
            return rc;
        if (o->g == 'O')
            FAIL("%s: object array from a buffer in pickle", m->path);
        o->fortran = n > 3 && str_is(ARG(3), "F");
        if ((rc = set_data(m, o, ARG(0))))
            return rc;
        break;
    case G_SCALAR: {
        if (n < 2 || ARG(0)->kind != V_DTYPE || ARG(1)->kind != V_BYTES || ARG(1)->n != ARG(0)->dsize)
            FAIL("%s: bad numpy scalar in pickle", m->path);
        const pv *dt = ARG(0);
        const uint8_t *p = ARG(1)->p;
        if (dt->g == 'f') {
            o->kind = V_FLOAT;
            if (dt->dsize == 8) {
                double d;
                memcpy(&d, p, 8);
                o->f = d;
            } else {
                float x;
                memcpy(&x, p, 4);
                o->f = x;
            }
        } else {
            o->kind = dt->g == 'b' ? V_BOOL : V_INT;
            uint64_t u = le(p, dt->dsize);
            if (dt->g == 'i' && dt->dsize < 8 && (u >> (dt->dsize * 8 - 1) & 1))
                u |= ~0ull << (dt->dsize * 8);
            o->i = (int64_t)u;
        }
        break;
    }
    case G_SLICE: {
        o->kind = V_SLICE;
        int64_t v[3] = {0, 0, 1};
        for (uint32_t k = 0; k < n && k < 3; k++)
            if (ARG(k)->kind != V_NONE && !to_i64(ARG(k), &v[k]))
                FAIL("%s: bad slice in pickle", m->path);
        if (n == 1) {
            v[1] = v[0];
            v[0] = 0;
        }
        for (int k = 0; k < 3; k++)
            if (v[k] > (1ll << 40) || v[k] < -(1ll << 40))
                FAIL("%s: slice out of range in pickle", m->path);
        o->shape[0] = v[0];
        o->shape[1] = v[1];
        o->i = v[2];
        break;
    }
    case G_ENCODE:
        if (n < 1 || ARG(0)->kind != V_STR)
            FAIL("%s: bad bytes in pickle", m->path);
        o->kind = V_BYTES;
        if ((rc = utf8_to_latin1(m, ARG(0), o)))
            return rc;
        break;
    case G_NEW_INDEX: {
        if (n < 2 || ARG(0)->kind != V_GLOBAL || ARG(1)->kind != V_DICT)
            FAIL("%s: bad pandas Index in pickle", m->path);
        o->kind = V_INDEX;
        const pv *d = ARG(1);
        int range = ARG(0)->g == G_RANGEINDEX;
        if (!range && ARG(0)->g != G_INDEX)
            FAIL("%s: unsupported pandas Index class in pickle", m->path);
        int64_t rg[3] = {0, 0, 1};
        int found = 0;
        for (uint32_t k = 0; k + 1 < d->ni; k += 2) {
            const pv *key = item(m, d, k), *val = item(m, d, k + 1);
            if (!range && str_is(key, "data") && val->kind == V_ARRAY) {
                o->i = val->shape[0];
                o->shape[0] = val - m->v;
                found = 1;
            }
            if (range)
                for (int j = 0; j < 3; j++)
                    if (str_is(key, (const char *[]){"start", "stop", "step"}[j]) && !to_i64(val, &rg[j]))
                        FAIL("%s: bad RangeIndex in pickle", m->path);
        }
        if (range) {
            for (int j = 0; j < 3; j++)
                if (rg[j] > (1ll << 50) || rg[j] < -(1ll << 50))
                    FAIL("%s: RangeIndex out of range in pickle", m->path);
            if (rg[2] == 0)
                FAIL("%s: RangeIndex with step 0 in pickle", m->path);
            int64_t len = rg[2] > 0 ? (rg[1] - rg[0] + rg[2] - 1) / rg[2] : (rg[0] - rg[1] - rg[2] - 1) / -rg[2];
            o->i = len < 0 ? 0 : len;
            o->shape[0] = -1;
            if (o->i > (int64_t)m->limit * 8)
                FAIL("%s: RangeIndex longer than the file allows in pickle", m->path);
        } else if (!found) {
            FAIL("%s: pandas Index without data in pickle", m->path);
        }
        break;
    }
    case G_UNPICKLE_BLOCK:
    case G_NEW_BLOCK:
        if (n < 2)
            FAIL("%s: bad pandas block in pickle", m->path);
        o->kind = V_BLOCK;
        o->shape[0] = a->it[0];
        o->shape[1] = a->it[1];
        break;
    case G_BM:
        if (n < 2 || !is_tuple(ARG(0)) || !is_tuple(ARG(1)))
            FAIL("%s: bad pandas BlockManager in pickle", m->path);
        o->kind = V_BM;
        o->shape[0] = a->it[0];
        o->shape[1] = a->it[1];
        break;
    default:
        FAIL("%s: pickle calls a class it may not", m->path);
    }
#undef ARG
    return push(m, r);
}

/* BlockManager state of older pandas: (axes, values, items, {"0.14.1": {"axes", "blocks"}}). */
static int bm_state(vm *m, pv *bm, const pv *st)
{
    if (!is_tuple(st) || st->ni < 4 || item(m, st, 3)->kind != V_DICT)
        FAIL("%s: unsupported pandas BlockManager state in pickle", m->path);
    const pv *ex = item(m, st, 3);
    for (uint32_t k = 0; k + 1 < ex->ni; k += 2) {
        const pv *d = item(m, ex, k + 1);
        if (!str_is(item(m, ex, k), "0.14.1") || d->kind != V_DICT)
            continue;
        uint32_t axes = UINT32_MAX, blocks = UINT32_MAX;
        for (uint32_t j = 0; j + 1 < d->ni; j += 2) {
            if (str_is(item(m, d, j), "axes"))
                axes = d->it[j + 1];
            if (str_is(item(m, d, j), "blocks"))
                blocks = d->it[j + 1];
        }
        if (axes == UINT32_MAX || blocks == UINT32_MAX || !is_tuple(&m->v[blocks]))
            break;
        /* each block is a dict {values, mgr_locs}: rewrite it as a block */
        uint32_t nb = m->v[blocks].ni;
        for (uint32_t b = 0; b < nb; b++) {
            pv *bd = &m->v[m->v[blocks].it[b]];
            if (bd->kind != V_DICT)
                FAIL("%s: bad pandas block state in pickle", m->path);
            int64_t vals = -1, locs = -1;
            for (uint32_t j = 0; j + 1 < bd->ni; j += 2) {
                if (str_is(item(m, bd, j), "values"))
                    vals = bd->it[j + 1];
                if (str_is(item(m, bd, j), "mgr_locs"))
                    locs = bd->it[j + 1];
            }
            if (vals < 0 || locs < 0)
                FAIL("%s: bad pandas block state in pickle", m->path);
            bd->kind = V_BLOCK;
            bd->shape[0] = vals;
            bd->shape[1] = locs;
        }
        bm->shape[0] = blocks;
        bm->shape[1] = axes;
        return CP_OK;
    }
    FAIL("%s: unsupported pandas BlockManager state in pickle", m->path);
}

static int op_build(vm *m, uint32_t tr, uint32_t sr)
{
    pv *t = &m->v[tr];
    const pv *st = &m->v[sr];
    int rc;
    switch (t->kind) {
    case V_DTYPE:
        if (is_tuple(st) && st->ni >= 2 && str_is(item(m, st, 1), ">") && t->dsize > 1)
            t->swap = 1;
        return CP_OK;
    case V_ARRAY:
        if (!is_tuple(st) || st->ni < 5)
            FAIL("%s: bad numpy array state in pickle", m->path);
        if ((rc = set_shape(m, t, item(m, st, 1))) || (rc = set_array_dtype(m, t, item(m, st, 2))))
            return rc;
        t->fortran = item(m, st, 3)->kind == V_BOOL && item(m, st, 3)->i;
        return set_data(m, t, item(m, st, 4));
    case V_DF:
        if (st->kind != V_DICT)
            FAIL("%s: bad DataFrame state in pickle", m->path);
        for (uint32_t k = 0; k + 1 < st->ni; k += 2)
            if ((str_is(item(m, st, k), "_mgr") || str_is(item(m, st, k), "_data")) &&
                item(m, st, k + 1)->kind == V_BM)
                t->shape[0] = st->it[k + 1] + 1; /* 0 = none */
        return CP_OK;
    case V_BM:
        return bm_state(m, t, st);
    default:
        FAIL("%s: pickle sets the state of an object it may not", m->path);
    }
}

static int run(vm *m, uint32_t *top)
{
    int rc = CP_OK;
    uint32_t a, b;
    pv *v;
    while (!rc) {
        if (m->p >= m->end)
            FAIL("%s: truncated pickle (no STOP opcode)", m->path);
        uint8_t op = *m->p++;
        switch (op) {
        case 0x80: /* PROTO */
            if ((rc = need(m, 1)))
                break;
            if (*m->p < 2 || *m->p > 5)
                FAIL("%s: pickle protocol %d is not supported (2 to 5)", m->path, *m->p);
            m->p++;
            break;
        case 0x95: /* FRAME: a hint only */
            if ((rc = need(m, 8)))
                break;
            m->p += 8;
            break;
        case '.':
            if ((rc = pop(m, top)))
                return rc;
            return CP_OK;
        case '(':
            rc = push_new(m, V_MARK, NULL);
            break;
        case '0':
            rc = pop(m, &a);
            break;
        case '1': {
            size_t k;
            if (!(rc = find_mark(m, &k)))
                m->nst = k;
            break;
        }
        case '2':
            if (!m->nst)
                FAIL("%s: pickle stack underflow", m->path);
            rc = push(m, m->st[m->nst - 1]);
            break;
        case 'N':
            rc = push_new(m, V_NONE, NULL);
            break;
        case 0x88:
        case 0x89:
            if (!(rc = push_new(m, V_BOOL, &v)))
                v->i = op == 0x88;
            break;
        case 'J':
        case 'K':
        case 'M': {
            int nb = op == 'J' ? 4 : op == 'K' ? 1 : 2;
            if ((rc = need(m, (size_t)nb)) || (rc = push_new(m, V_INT, &v)))
                break;
            uint64_t u = le(m->p, nb);
            v->i = op == 'J' ? (int64_t)(int32_t)(uint32_t)u : (int64_t)u;
            m->p += nb;
            break;
        }
        case 0x8a:
        case 0x8b: {
            int lb = op == 0x8a ? 1 : 4;
            if ((rc = need(m, (size_t)lb)))
                break;
            uint64_t n = le(m->p, lb);
            m->p += lb;
            if (n > 8)
                FAIL("%s: integer wider than 64 bits in pickle", m->path);
            if ((rc = need(m, (size_t)n)) || (rc = push_new(m, V_INT, &v)))
                break;
            uint64_t u = le(m->p, (int)n);
            if (n && n < 8 && (m->p[n - 1] & 0x80))
                u |= ~0ull << (n * 8);
            v->i = (int64_t)u;
            m->p += n;
            break;
        }
        case 'G': {
            if ((rc = need(m, 8)) || (rc = push_new(m, V_FLOAT, &v)))
                break;
            uint64_t u = 0;
            for (int k = 0; k < 8; k++)
                u = u << 8 | m->p[k];
            memcpy(&v->f, &u, 8);
            m->p += 8;
            break;
        }
        case 0x8c: rc = op_data(m, 1, V_STR); break;
        case 'X': rc = op_data(m, 4, V_STR); break;
        case 0x8d: rc = op_data(m, 8, V_STR); break;
        case 'C': rc = op_data(m, 1, V_BYTES); break;
        case 'B': rc = op_data(m, 4, V_BYTES); break;
        case 0x8e: rc = op_data(m, 8, V_BYTES); break;
        case 0x96: rc = op_data(m, 8, V_BYTES); break; /* BYTEARRAY8 */
        case 'U': rc = op_data(m, 1, V_BYTES); break;  /* py2 str */
        case 'T': rc = op_data(m, 4, V_BYTES); break;
        case 0x97:
            FAIL("%s: pickle uses an out-of-band buffer (NEXT_BUFFER) that a file cannot carry", m->path);
        case 0x98: /* READONLY_BUFFER: no effect on a copy */
            if (!m->nst)
                FAIL("%s: pickle stack underflow", m->path);
            break;
        case ')':
            rc = push_new(m, V_TUPLE, NULL);
            break;
        case ']':
            rc = push_new(m, V_LIST, NULL);
            break;
        case '}':
            rc = push_new(m, V_DICT, NULL);
            break;
        case 0x8f:
            rc = push_new(m, V_LIST, NULL);
            break;
        case 0x85:
        case 0x86:
        case 0x87: {
            size_t k = (size_t)(op - 0x84);
            if (m->nst < k)
                FAIL("%s: pickle stack underflow", m->path);
            for (size_t j = m->nst - k; j < m->nst; j++)
                if (m->v[m->st[j]].kind == V_MARK)
                    FAIL("%s: pickle tuple across a mark", m->path);
            uint32_t r;
            if ((rc = new_val(m, V_TUPLE, &r)))
                break;
            for (size_t j = m->nst - k; j < m->nst && !rc; j++)
                rc = add_item(m, r, m->st[j]);
            m->nst -= k;
            if (!rc)
                rc = push(m, r);
            break;
        }
        case 't':
        case 'l':
        case 'd':
        case 0x91: {
            size_t k;
            uint32_t r;
            if ((rc = find_mark(m, &k)) ||
                (rc = new_val(m, op == 't' ? V_TUPLE : op == 'd' ? V_DICT : V_LIST, &r)))
                break;
            if (op == 'd' && (m->nst - k - 1) % 2)
                FAIL("%s: odd dict items in pickle", m->path);
            for (size_t j = k + 1; j < m->nst && !rc; j++)
                rc = add_item(m, r, m->st[j]);
            m->nst = k;
            if (!rc)
                rc = push(m, r);
            break;
        }
        case 'a':
            if ((rc = pop(m, &a)))
                break;
            if (!m->nst || m->v[m->st[m->nst - 1]].kind != V_LIST)
                FAIL("%s: pickle appends to a non-list", m->path);
            rc = add_item(m, m->st[m->nst - 1], a);
            break;
        case 'e':
        case 0x90:
        case 'u': {
            size_t k;
            if ((rc = find_mark(m, &k)))
                break;
            if (k == 0)
                FAIL("%s: pickle stack underflow", m->path);
            uint32_t tr = m->st[k - 1];
            int want = op == 'u' ? V_DICT : V_LIST;
            if (m->v[tr].kind != want)
                FAIL("%s: pickle adds items to the wrong kind of object", m->path);
            if (op == 'u' && (m->nst - k - 1) % 2)
                FAIL("%s: odd dict items in pickle", m->path);
            for (size_t j = k + 1; j < m->nst && !rc; j++)
                rc = add_item(m, tr, m->st[j]);
            m->nst = k;
            break;
        }
        case 's':
            if ((rc = pop(m, &b)) || (rc = pop(m, &a)))
                break;
            if (!m->nst || m->v[m->st[m->nst - 1]].kind != V_DICT)
                FAIL("%s: pickle sets an item of a non-dict", m->path);
            if (!(rc = add_item(m, m->st[m->nst - 1], a)))
                rc = add_item(m, m->st[m->nst - 1], b);
            break;
        case 'q':
        case 'r':
        case 0x94: {
            size_t idx = m->nmemo;
            if (op != 0x94) {
                int nb = op == 'q' ? 1 : 4;
                if ((rc = need(m, (size_t)nb)))
                    break;
                idx = (size_t)le(m->p, nb);
                m->p += nb;
            }
            if (!m->nst)
                FAIL("%s: pickle stack underflow", m->path);
            if (idx >= m->limit)
                FAIL("%s: pickle memo index %zu beyond the file size", m->path, idx);
            if (idx >= m->nmemo) {
                if ((rc = grow((void **)&m->memo, &m->capmemo, idx + 1, sizeof *m->memo)))
                    break;
                for (size_t j = m->nmemo; j <= idx; j++)
                    m->memo[j] = UINT32_MAX;
                m->nmemo = idx + 1;
            }
            m->memo[idx] = m->st[m->nst - 1];
            break;
        }
        case 'h':
        case 'j': {
            int nb = op == 'h' ? 1 : 4;
            if ((rc = need(m, (size_t)nb)))
                break;
            size_t idx = (size_t)le(m->p, nb);
            m->p += nb;
            if (idx >= m->nmemo || m->memo[idx] == UINT32_MAX)
                FAIL("%s: pickle reads memo %zu, which was never set", m->path, idx);
            rc = push(m, m->memo[idx]);
            break;
        }
        case 'c': {
            const uint8_t *s = m->p, *nl1 = memchr(s, '\n', (size_t)(m->end - s));
            const uint8_t *nl2 = nl1 ? memchr(nl1 + 1, '\n', (size_t)(m->end - nl1 - 1)) : NULL;
            if (!nl2)
                FAIL("%s: truncated pickle (GLOBAL)", m->path);
            m->p = nl2 + 1;
            rc = op_global(m, (const char *)s, (size_t)(nl1 - s), (const char *)nl1 + 1, (size_t)(nl2 - nl1 - 1));
            break;
        }
        case 0x93:
            if ((rc = pop(m, &b)) || (rc = pop(m, &a)))
                break;
            if (m->v[a].kind != V_STR || m->v[b].kind != V_STR)
                FAIL("%s: bad STACK_GLOBAL in pickle", m->path);
            rc = op_global(m, (const char *)m->v[a].p, m->v[a].n, (const char *)m->v[b].p, m->v[b].n);
            break;
        case 'R':
        case 0x81:
            if ((rc = pop(m, &b)) || (rc = pop(m, &a)))
                break;
            rc = op_reduce(m, a, b, op == 0x81);
            break;
        case 0x92: { /* NEWOBJ_EX: cls, args, kwargs */
            uint32_t c;
            if ((rc = pop(m, &c)) || (rc = pop(m, &b)) || (rc = pop(m, &a)))
                break;
            rc = op_reduce(m, a, b, 1);
            break;
        }
        case 'b':
            if ((rc = pop(m, &b)))
                break;
            if (!m->nst)
                FAIL("%s: pickle stack underflow", m->path);
            rc = op_build(m, m->st[m->nst - 1], b);
            break;
        default:
            FAIL("%s: pickle opcode 0x%02x at byte %zu is not supported (not a pandas DataFrame pickle)",
                 m->path, op, (size_t)(m->p - 1 - m->base));
        }
    }
    return rc;
}

/* ---- the frame ------------------------------------------------------------ */

typedef struct pcol {
    const pv *arr;  /* block values */
    int64_t row;    /* row of the block array holding this column */
} pcol;

typedef struct frame {
    cp_strlist names;
    pcol *cols;
    int64_t nrows;
} frame;

static void frame_free(frame *f)
{
    cp_strlist_free(&f->names);
    free(f->cols);
    memset(f, 0, sizeof *f);
}

static int index_name(vm *m, const pv *idx, int64_t k, char *buf, size_t cap)
{
    const pv *arr = &m->v[idx->shape[0]];
    if (arr->kind != V_ARRAY || k >= arr->shape[0] * arr->shape[1])
        FAIL("%s: bad column index in pickle", m->path);
    if (arr->g == 'O') {
        const pv *l = &m->v[arr->i], *e = item(m, l, (uint32_t)k);
        if (e->kind == V_STR) {
            if (e->n >= cap || memchr(e->p, '\n', e->n) || memchr(e->p, '\r', e->n) || memchr(e->p, 0, e->n))
                FAIL("%s: column name too long or with control characters in pickle", m->path);
            memcpy(buf, e->p, e->n);
            buf[e->n] = '\0';
            return CP_OK;
        }
        if (e->kind == V_INT) {
            snprintf(buf, cap, "%lld", (long long)e->i);
            return CP_OK;
        }
    } else if (arr->g == 'i' && arr->dsize == 8) {
        snprintf(buf, cap, "%lld", (long long)le(arr->p + k * 8, 8));
        return CP_OK;
    }
    FAIL("%s: unsupported column name type in pickle", m->path);
}

static int get_frame(vm *m, uint32_t top, frame *f)
{
    memset(f, 0, sizeof *f);
    const pv *df = &m->v[top];
    if (df->kind != V_DF || df->shape[0] <= 0)
        FAIL("%s: the pickle does not hold a pandas DataFrame", m->path);
    const pv *bm = &m->v[df->shape[0] - 1];
    if (bm->kind != V_BM)
        FAIL("%s: DataFrame without a BlockManager in pickle", m->path);
    const pv *blocks = &m->v[bm->shape[0]], *axes = &m->v[bm->shape[1]];
    if (!is_tuple(blocks) || !is_tuple(axes) || axes->ni != 2 || item(m, axes, 0)->kind != V_INDEX ||
        item(m, axes, 1)->kind != V_INDEX)
        FAIL("%s: unsupported DataFrame layout in pickle", m->path);
    const pv *cidx = item(m, axes, 0);
    if (cidx->shape[0] < 0)
        FAIL("%s: DataFrame columns without names in pickle", m->path);
    int64_t ncols = cidx->i;
    f->nrows = item(m, axes, 1)->i;
    f->cols = cp_calloc((size_t)ncols + 1, sizeof *f->cols, "pickle columns");
    if (!f->cols)
        return CP_ENOMEM;
    for (int64_t k = 0; k < ncols; k++) {
        char nm[256];
        int rc = index_name(m, cidx, k, nm, sizeof nm);
        if (rc || (rc = cp_strlist_push(&f->names, nm)))
            return rc;
    }
    for (uint32_t b = 0; b < blocks->ni; b++) {
        const pv *blk = item(m, blocks, b);
        if (blk->kind != V_BLOCK)
            FAIL("%s: unsupported pandas block in pickle", m->path);
        const pv *arr = &m->v[blk->shape[0]], *loc = &m->v[blk->shape[1]];
        if (arr->kind != V_ARRAY || !arr->g)
            FAIL("%s: pandas block without a numpy array in pickle (extension dtypes are not supported)", m->path);
        int64_t k = arr->ndim == 2 ? arr->shape[0] : 1, n = arr->ndim == 2 ? arr->shape[1] : arr->shape[0];
        if (n != f->nrows)
            FAIL("%s: pandas block of %lld rows in a frame of %lld", m->path, (long long)n, (long long)f->nrows);
        for (int64_t j = 0; j < k; j++) {
            int64_t c;
            if (loc->kind == V_SLICE) {
                c = loc->shape[0] + j * loc->i;
            } else if (loc->kind == V_ARRAY && (loc->g == 'i' || loc->g == 'u') && loc->dsize == 8 &&
                       !loc->swap && j < loc->shape[0]) {
                c = (int64_t)le(loc->p + j * 8, 8);
            } else if (to_i64(loc, &c) && k == 1) {
            } else {
                FAIL("%s: bad pandas block placement in pickle", m->path);
            }
            if (c < 0 || c >= ncols || f->cols[c].arr)
                FAIL("%s: pandas block placement out of range in pickle", m->path);
            f->cols[c].arr = arr;
            f->cols[c].row = j;
        }
    }
    for (int64_t k = 0; k < ncols; k++)
        if (!f->cols[k].arr)
            FAIL("%s: column '%s' has no data in pickle", m->path, f->names.items[k]);
    return CP_OK;
}

static int vm_load(vm *m, const char *path, const cp_fmap *fm, frame *f)
{
    memset(m, 0, sizeof *m);
    memset(f, 0, sizeof *f);
    m->path = path;
    m->base = m->p = fm->p;
    m->end = fm->p + fm->n;
    m->limit = fm->n + 16;
    uint32_t top;
    int rc = run(m, &top);
    if (!rc)
        rc = get_frame(m, top, f);
    return rc;
}

static void vm_free(vm *m)
{
    for (size_t i = 0; i < m->nv; i++)
        free(m->v[i].it);
    free(m->v);
    free(m->st);
    free(m->memo);
    for (size_t i = 0; i < m->nowned; i++)
        free(m->owned[i]);
    free(m->owned);
}

/* Element (row r) of column c's array. */
static size_t elem_index(const pcol *c, int64_t r)
{
    const pv *a = c->arr;
    if (a->ndim == 1)
        return (size_t)r;
    return a->fortran ? (size_t)(r * a->shape[0] + c->row) : (size_t)(c->row * a->shape[1] + r);
}

static uint64_t load_u(const pv *a, size_t i)
{
    const uint8_t *p = a->p + i * a->dsize;
    if (!a->swap)
        return le(p, a->dsize);
    uint64_t v = 0;
    for (int k = 0; k < a->dsize; k++)
        v = v << 8 | p[k];
    return v;
}

static int native_type(vm *m, const pcol *c)
{
    const pv *a = c->arr;
    if (a->g == 'b')
        return CP_SCOL_BOOL;
    if (a->g != 'O')
        return CP_SCOL_F32;
    const pv *l = &m->v[a->i];
    int64_t n = a->ndim == 2 ? a->shape[1] : a->shape[0];
    for (int64_t r = 0; r < n; r++) {
        const pv *e = item(m, l, (uint32_t)elem_index(c, r));
        if (e->kind == V_STR || e->kind == V_BYTES)
            return CP_SCOL_STR;
        if (e->kind == V_BOOL)
            return CP_SCOL_BOOL;
        if (e->kind == V_INT || (e->kind == V_FLOAT && !isnan(e->f)))
            return CP_SCOL_F32;
    }
    return CP_SCOL_STR;
}

static int put_cell(vm *m, const pcol *c, int64_t r, cp_scol *d, size_t cap, size_t row)
{
    const pv *a = c->arr;
    size_t i = elem_index(c, r);
    if (a->g == 'O') {
        const pv *e = item(m, &m->v[a->i], (uint32_t)i);
        switch (e->kind) {
        case V_NONE: return cp_sput_null(d, cap, row);
        case V_STR:
        case V_BYTES: return cp_sput_str(d, cap, row, (const char *)e->p, e->n);
        case V_BOOL: return cp_sput_bool(d, cap, row, (int)e->i);
        case V_INT: return cp_sput_i64(d, cap, row, e->i);
        case V_FLOAT: return cp_sput_f64(d, cap, row, e->f);
        default: return -1;
        }
    }
    uint64_t u = load_u(a, i);
    switch (a->g) {
    case 'f':
        if (a->dsize == 8) {
            double x;
            memcpy(&x, &u, 8);
            return cp_sput_f64(d, cap, row, x);
        } else {
            uint32_t u32 = (uint32_t)u;
            float x;
            memcpy(&x, &u32, 4);
            return cp_sput_f64(d, cap, row, x);
        }
    case 'b': return cp_sput_bool(d, cap, row, u != 0);
    case 'u':
        if (u > INT64_MAX)
            return -1;
        return cp_sput_i64(d, cap, row, (int64_t)u);
    default:
        if (a->dsize < 8 && (u >> (a->dsize * 8 - 1) & 1))
            u |= ~0ull << (a->dsize * 8);
        return cp_sput_i64(d, cap, row, (int64_t)u);
    }
}

static int pkl_read(const char *path, const cp_sread_opts *o, cp_stable *out)
{
    static const cp_sread_opts none = {0};
    if (!o)
        o = &none;
    memset(out, 0, sizeof *out);
    cp_fmap fm;
    int rc = cp_fmap_open(&fm, path);
    if (rc)
        return rc;
    vm m;
    frame f;
    int *sel = NULL;
    rc = vm_load(&m, path, &fm, &f);
    int nsel = 0;
    if (!rc && !(sel = cp_malloc_array(f.names.n + (size_t)(o->columns ? o->ncolumns : 0) + 1, sizeof *sel, "columns")))
        rc = CP_ENOMEM;
    for (size_t i = 0; !rc && i < f.names.n; i++)
        for (size_t j = 0; j < i; j++)
            if (!strcmp(f.names.items[i], f.names.items[j]))
                rc = cp_error(CP_EFORMAT, "%s: duplicate column '%s'", path, f.names.items[i]);
    if (!rc && o->columns) {
        for (int k = 0; k < o->ncolumns && !rc; k++) {
            size_t c;
            for (c = 0; c < f.names.n && strcmp(f.names.items[c], o->columns[k]); c++)
                ;
            if (c == f.names.n) {
                if (!o->optional_columns)
                    rc = cp_error(CP_EFORMAT, "%s: missing column '%s'", path, o->columns[k]);
                continue;
            }
            int dup = 0;
            for (int j = 0; j < nsel; j++)
                dup |= sel[j] == (int)c;
            if (!dup)
                sel[nsel++] = (int)c;
        }
        /* file order, as the CSV reader gives */
        for (int i = 1; i < nsel; i++)
            for (int j = i; j > 0 && sel[j - 1] > sel[j]; j--) {
                int t = sel[j];
                sel[j] = sel[j - 1];
                sel[j - 1] = t;
            }
    } else if (!rc) {
        for (size_t c = 0; c < f.names.n; c++)
            sel[nsel++] = (int)c;
    }
    size_t keep = 0;
    if (!rc) {
        for (int64_t r = 0; r < f.nrows; r++)
            keep += !o->row_mask || ((size_t)r < o->mask_rows && (o->row_mask[r >> 6] >> (r & 63) & 1));
        for (int k = 0; k < nsel && !rc; k++)
            rc = cp_stable_add_col(out, f.names.items[sel[k]],
                                   (cp_scol_type)cp_sbin_col_type(o, f.names.items[sel[k]],
                                                                   native_type(&m, &f.cols[sel[k]])));
        if (!rc)
            rc = cp_stable_reserve(out, keep);
    }
    for (int k = 0; k < nsel && !rc; k++) {
        size_t row = 0;
        for (int64_t r = 0; r < f.nrows && !rc; r++) {
            if (o->row_mask && !((size_t)r < o->mask_rows && (o->row_mask[r >> 6] >> (r & 63) & 1)))
                continue;
            int e = put_cell(&m, &f.cols[sel[k]], r, &out->cols[k], out->cap, row++);
            if (e == CP_ENOMEM)
                rc = e;
            else if (e)
                rc = cp_error(CP_EFORMAT, "%s: row %lld, column '%s': value does not fit the column's type",
                              path, (long long)r + 1, out->cols[k].name);
        }
    }
    if (!rc) {
        out->nrows = keep;
        cp_stable_trim_nulls(out);
    }
    free(sel);
    frame_free(&f);
    vm_free(&m);
    cp_fmap_close(&fm);
    if (rc)
        cp_stable_free(out);
    return rc;
}

static int pkl_header(const char *path, cp_strlist *names)
{
    cp_fmap fm;
    int rc = cp_fmap_open(&fm, path);
    if (rc)
        return rc;
    vm m;
    frame f;
    rc = vm_load(&m, path, &fm, &f);
    for (size_t i = 0; !rc && i < f.names.n; i++)
        rc = cp_strlist_push(names, f.names.items[i]);
    frame_free(&f);
    vm_free(&m);
    cp_fmap_close(&fm);
    return rc;
}

static int pkl_match(const char *path)
{
    size_t n = strlen(path);
    return n > 4 && (!strcmp(path + n - 4, ".pkl") || (n > 7 && !strcmp(path + n - 7, ".pickle")));
}

const cp_table_reader cp_pickle_reader = {"pickle", pkl_match, pkl_read, pkl_header};
