/* The restricted pickle virtual machine (see core/pickle.h) and its model of
 * numpy's reconstructors. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "core/pickle.h"

#define VALS_PER_BLOCK 64

int pk_fail(const pk_vm *m, int code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return cp_error(code, "%s: %s", m->path, msg);
}

static int charge(pk_vm *m, size_t bytes)
{
    if (bytes > m->budget)
        return pk_fail(m, CP_ELIMIT, "pickle needs more memory than its size justifies");
    m->budget -= bytes;
    return CP_OK;
}

/* A charged array of the VM's own, grown to hold need elements. */
static int grow(pk_vm *m, void **a, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return CP_OK;
    size_t nc = *cap ? *cap : 16;
    while (nc < need)
        nc *= 2;
    int rc = charge(m, (nc - *cap) * elem);
    if (rc)
        return rc;
    void *q = realloc(*a, nc * elem);
    if (!q)
        return pk_fail(m, CP_ENOMEM, "out of memory reading the pickle");
    *a = q;
    *cap = nc;
    return CP_OK;
}

void *pk_alloc(pk_vm *m, size_t n)
{
    if ((m->err = charge(m, n + 16)) ||
        (m->err = grow(m, (void **)&m->owned, &m->capowned, m->nowned + 1, sizeof *m->owned)))
        return NULL;
    void *p = calloc(1, n ? n : 1);
    if (!p) {
        m->err = pk_fail(m, CP_ENOMEM, "out of memory reading the pickle");
        return NULL;
    }
    m->owned[m->nowned++] = p;
    return p;
}

pk_val *pk_new(pk_vm *m, int kind)
{
    if (!m->block || m->used == VALS_PER_BLOCK) {
        if (!(m->block = pk_alloc(m, VALS_PER_BLOCK * sizeof(pk_val))))
            return NULL;
        m->used = 0;
    }
    pk_val *v = m->block + m->used++;
    v->kind = (uint8_t)kind;
    return v;
}

int pk_add(pk_vm *m, pk_val *c, pk_val *item)
{
    if (c->ni == c->cap) {
        if (c->cap >= UINT32_MAX / 2)
            return pk_fail(m, CP_EFORMAT, "pickle container too large");
        uint32_t nc = c->cap ? c->cap * 2 : 4;
        /* the old array stays owned: growth by doubling at most doubles the cost */
        pk_val **it = pk_alloc(m, nc * sizeof *it);
        if (!it)
            return m->err;
        if (c->ni)
            memcpy(it, c->items, c->ni * sizeof *it);
        c->items = it;
        c->cap = nc;
    }
    c->items[c->ni++] = item;
    return CP_OK;
}

void pk_init(pk_vm *m, const char *path, const pk_caller *c, const uint8_t *p, size_t n, size_t budget)
{
    memset(m, 0, sizeof *m);
    m->path = path;
    m->c = c;
    m->base = m->p = p;
    m->end = p + n;
    m->budget = budget;
}

void pk_free(pk_vm *m)
{
    for (size_t k = 0; k < m->nowned; k++)
        free(m->owned[k]);
    free(m->owned);
    free(m->st);
    free(m->marks);
    free(m->memo);
    memset(m, 0, sizeof *m);
}

int pk_str_is(const pk_val *v, const char *s)
{
    return v->kind == PK_STR && v->n == strlen(s) && !memcmp(v->s, s, v->n);
}

const pk_val *pk_get(const pk_val *d, const char *key)
{
    for (uint32_t k = 0; d->kind == PK_DICT && k + 1 < d->ni; k += 2)
        if (pk_str_is(d->items[k], key))
            return d->items[k + 1];
    return NULL;
}

int pk_int(const pk_val *v, int64_t *out)
{
    if (v->kind != PK_INT && v->kind != PK_BOOL)
        return 0;
    *out = v->i;
    return 1;
}

size_t pk_numel(const pk_val *a)
{
    size_t n = 1;
    for (int k = 0; k < a->ndim; k++)
        n *= (size_t)a->shape[k]; /* checked when the array was built */
    return n;
}

static uint64_t le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint64_t load(const uint8_t *p, int n, int swap)
{
    if (!swap)
        return le(p, n);
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* The number at p, of dtype (or array) dt. */
static int decode(const uint8_t *p, const pk_val *dt, pk_val *o)
{
    uint64_t u = load(p, dt->dsize, dt->swap);
    memset(o, 0, sizeof *o);
    if (dt->dkind == 'f') {
        o->kind = PK_FLOAT;
        if (dt->dsize == 8) {
            memcpy(&o->f, &u, 8);
        } else {
            uint32_t u32 = (uint32_t)u;
            float x;
            memcpy(&x, &u32, 4);
            o->f = x;
        }
        return 1;
    }
    if (dt->dkind == 'u' && u > INT64_MAX)
        return 0;
    o->kind = dt->dkind == 'b' ? PK_BOOL : PK_INT;
    if (dt->dkind == 'i' && dt->dsize < 8 && (u >> (dt->dsize * 8 - 1) & 1))
        u |= ~0ull << (dt->dsize * 8);
    o->i = dt->dkind == 'b' ? u != 0 : (int64_t)u;
    return 1;
}

int pk_elem(const pk_val *a, size_t i, pk_val *out) { return decode(a->s + i * a->dsize, a, out); }

/* A name from the file, printable and bounded, for a one-line message. */
static void printable(char *dst, size_t cap, const uint8_t *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n && k + 1 < cap; i++)
        dst[k++] = s[i] < 0x20 || s[i] == 0x7f ? '?' : (char)s[i];
    dst[k] = '\0';
}

/* ---- numpy ---------------------------------------------------------------- */

/* numpy.dtype('f8', False, True): kind and item size; the byte order comes with BUILD. */
static int np_dtype(pk_vm *m, const pk_val *args, pk_val **out)
{
    if (args->ni < 1 || args->items[0]->kind != PK_STR)
        return pk_fail(m, CP_EFORMAT, "numpy dtype without a type string in pickle");
    const pk_val *t = args->items[0];
    int size = 0;
    for (size_t k = 1; k < t->n && k < 4; k++)
        size = t->s[k] < '0' || t->s[k] > '9' || size < 0 ? -1 : size * 10 + (t->s[k] - '0');
    char kind = t->n >= 2 && t->n <= 3 ? (char)t->s[0] : 0;
    int ok = (kind == 'f' && (size == 4 || size == 8)) || (kind == 'O' && size == 8) ||
             ((kind == 'i' || kind == 'u') && (size == 1 || size == 2 || size == 4 || size == 8)) ||
             (kind == 'b' && size == 1);
    if (!ok) {
        char b[24];
        printable(b, sizeof b, t->s, t->n);
        return pk_fail(m, CP_EUNSUPPORTED, "numpy dtype '%s' in pickle is not supported (numbers, bool "
                       "and objects only)", b);
    }
    pk_val *d = pk_new(m, PK_DTYPE);
    if (!d)
        return m->err;
    d->dkind = (uint8_t)kind;
    d->dsize = (uint8_t)size;
    *out = d;
    return CP_OK;
}

static int np_set_shape(pk_vm *m, pk_val *a, const pk_val *shape)
{
    int64_t one;
    int nd = pk_int(shape, &one) ? 1 : shape->kind == PK_TUPLE ? (int)shape->ni : -1;
    if (nd < 0)
        return pk_fail(m, CP_EFORMAT, "numpy array shape is not a tuple in pickle");
    if (nd > PK_MAXDIM)
        return pk_fail(m, CP_EUNSUPPORTED, "numpy array with %d dimensions in pickle (at most %d)", nd,
                       PK_MAXDIM);
    if (nd && !(a->shape = pk_alloc(m, (size_t)nd * sizeof *a->shape)))
        return m->err;
    /* no dimension beyond what the file could describe, so products stay small */
    int64_t most = ((int64_t)(m->end - m->base) + 16) * 8;
    size_t numel = 1;
    for (int k = 0; k < nd; k++) {
        int64_t s = one;
        if (shape->kind == PK_TUPLE && !pk_int(shape->items[k], &s))
            return pk_fail(m, CP_EFORMAT, "numpy array shape entry is not an integer in pickle");
        if (s < 0 || s > most)
            return pk_fail(m, CP_EFORMAT, "numpy array shape larger than the file in pickle");
        if (cp_mul_overflow(numel, (size_t)s, &numel))
            return pk_fail(m, CP_EFORMAT, "numpy array shape overflows in pickle");
        a->shape[k] = s;
    }
    a->ndim = (uint8_t)nd;
    return CP_OK;
}

static int np_set_dtype(pk_vm *m, pk_val *a, const pk_val *dt)
{
    if (dt->kind != PK_DTYPE)
        return pk_fail(m, CP_EFORMAT, "numpy array without a dtype in pickle");
    if (m->c->native_only && a->fortran && a->ndim > 1)
        return pk_fail(m, CP_EUNSUPPORTED, "Fortran-ordered numpy arrays are not supported");
    a->dkind = dt->dkind;
    a->dsize = dt->dsize;
    a->swap = dt->swap;
    return CP_OK;
}

/* The data must match shape x dtype exactly: bytes, or a list of objects. */
static int np_set_data(pk_vm *m, pk_val *a, const pk_val *data)
{
    size_t numel = pk_numel(a), bytes;
    if (a->dkind == 'O') {
        if (data->kind != PK_LIST || data->ni != numel)
            return pk_fail(m, CP_EFORMAT, "numpy object array whose item list does not match its shape "
                           "in pickle");
        a->x = (void *)data;
        return CP_OK;
    }
    if ((data->kind != PK_BYTES && data->kind != PK_STR) || cp_mul_overflow(numel, a->dsize, &bytes) ||
        bytes != data->n)
        return pk_fail(m, CP_EFORMAT, "numpy array whose bytes do not match its shape and dtype in pickle");
    a->s = data->s;
    a->n = data->n;
    return CP_OK;
}

/* _frombuffer(buffer, dtype, shape, order) */
static int np_frombuffer(pk_vm *m, const pk_val *args, pk_val *a)
{
    int rc;
    if (args->ni < 3)
        return pk_fail(m, CP_EFORMAT, "bad numpy _frombuffer in pickle");
    a->fortran = args->ni > 3 && pk_str_is(args->items[3], "F");
    if ((rc = np_set_shape(m, a, args->items[2])) || (rc = np_set_dtype(m, a, args->items[1])))
        return rc;
    if (a->dkind == 'O')
        return pk_fail(m, CP_EFORMAT, "numpy object array from a buffer in pickle");
    return np_set_data(m, a, args->items[0]);
}

/* scalar(dtype, bytes): the Python number it stands for */
static int np_scalar(pk_vm *m, const pk_val *args, pk_val *o)
{
    const pk_val *dt = args->ni == 2 ? args->items[0] : NULL, *b = dt ? args->items[1] : NULL;
    if (!dt || dt->kind != PK_DTYPE || (b->kind != PK_BYTES && b->kind != PK_STR) || dt->dkind == 'O' ||
        b->n != dt->dsize)
        return pk_fail(m, CP_EFORMAT, "numpy scalar whose bytes do not match its dtype in pickle");
    if (!decode(b->s, dt, o))
        return pk_fail(m, CP_EUNSUPPORTED, "numpy uint64 scalar beyond int64 in pickle");
    return CP_OK;
}

/* _codecs.encode(str, 'latin1'): protocol 2's bytes */
static int encode_latin1(pk_vm *m, const pk_val *args, pk_val *o)
{
    const pk_val *s = args->ni >= 1 ? args->items[0] : NULL;
    if (!s || s->kind != PK_STR)
        return pk_fail(m, CP_EFORMAT, "bad _codecs.encode in pickle");
    uint8_t *b = pk_alloc(m, s->n);
    if (!b)
        return m->err;
    size_t n = 0;
    for (size_t i = 0; i < s->n; i++) {
        uint8_t c = s->s[i];
        if (c < 0x80)
            b[n++] = c;
        else if ((c & 0xe0) == 0xc0 && c <= 0xc3 && i + 1 < s->n)
            b[n++] = (uint8_t)((c & 0x1f) << 6 | (s->s[++i] & 0x3f));
        else
            return pk_fail(m, CP_EFORMAT, "bad latin-1 bytes in pickle");
    }
    o->kind = PK_BYTES;
    o->s = b;
    o->n = n;
    return CP_OK;
}

static int np_reduce(pk_vm *m, int id, const pk_val *args, pk_val **out)
{
    if (id == PK_G_NP_DTYPE)
        return np_dtype(m, args, out);
    pk_val *o = pk_new(m, PK_ARRAY);
    if (!o)
        return m->err;
    *out = o;
    switch (id) {
    case PK_G_NP_RECONSTRUCT: /* _reconstruct(ndarray, (0,), b'b'): an array that BUILD fills */
        if (args->ni < 1 || args->items[0]->kind != PK_GLOBAL || args->items[0]->i != PK_G_NP_NDARRAY)
            return pk_fail(m, CP_EFORMAT, "numpy _reconstruct of something other than ndarray in pickle");
        return CP_OK;
    case PK_G_NP_FROMBUFFER: return np_frombuffer(m, args, o);
    case PK_G_NP_SCALAR: return np_scalar(m, args, o);
    case PK_G_ENCODE: return encode_latin1(m, args, o);
    default: return pk_fail(m, CP_EFORMAT, "numpy.ndarray called as a function in pickle");
    }
}

/* BUILD on a dtype: (version, byteorder, ...); on an array:
 * (version, shape, dtype, fortran_order, bytes or list of objects). */
static int np_build(pk_vm *m, pk_val *o, const pk_val *st)
{
    if (st->kind != PK_TUPLE)
        return pk_fail(m, CP_EFORMAT, "numpy state is not a tuple in pickle");
    if (o->kind == PK_DTYPE) {
        if (st->ni < 2 || st->items[1]->kind != PK_STR || st->items[1]->n != 1)
            return pk_fail(m, CP_EFORMAT, "numpy dtype state without a byte order in pickle");
        if (st->items[1]->s[0] == '>' && o->dsize > 1) {
            if (m->c->native_only)
                return pk_fail(m, CP_EUNSUPPORTED, "big-endian numpy arrays are not supported");
            o->swap = 1;
        }
        return CP_OK;
    }
    if (o->dkind)
        return pk_fail(m, CP_EFORMAT, "numpy array state given twice in pickle");
    if (st->ni < 5)
        return pk_fail(m, CP_EFORMAT, "numpy array state is not (version, shape, dtype, fortran, data)");
    int rc;
    o->fortran = st->items[3]->kind == PK_BOOL && st->items[3]->i;
    if ((rc = np_set_shape(m, o, st->items[1])) || (rc = np_set_dtype(m, o, st->items[2])))
        return rc;
    return np_set_data(m, o, st->items[4]);
}

/* ---- the machine ------------------------------------------------------------ */

static size_t at(const pk_vm *m) { return (size_t)(m->p - m->base); }

static int need(pk_vm *m, size_t n)
{
    if ((size_t)(m->end - m->p) < n)
        return pk_fail(m, CP_EFORMAT, "truncated pickle (needs %zu bytes at byte %zu, %zu left)", n, at(m),
                       (size_t)(m->end - m->p));
    return CP_OK;
}

static int push(pk_vm *m, pk_val *v)
{
    if (!v)
        return m->err;
    int rc = grow(m, (void **)&m->st, &m->capst, m->nst + 1, sizeof *m->st);
    if (!rc)
        m->st[m->nst++] = v;
    return rc;
}

static size_t floor_of(const pk_vm *m) { return m->nmarks ? m->marks[m->nmarks - 1] : 0; }

/* Values are popped, or peeked, only above the topmost mark. */
static int pop(pk_vm *m, pk_val **v)
{
    if (m->nst <= floor_of(m))
        return pk_fail(m, CP_EFORMAT, "pickle stack underflow at byte %zu", at(m));
    *v = m->st[--m->nst];
    return CP_OK;
}

static int top(pk_vm *m, pk_val **v)
{
    int rc = pop(m, v);
    if (!rc)
        m->nst++;
    return rc;
}

static int pop_mark(pk_vm *m, size_t *mark)
{
    if (!m->nmarks)
        return pk_fail(m, CP_EFORMAT, "pickle has no mark at byte %zu", at(m));
    *mark = m->marks[--m->nmarks];
    return CP_OK;
}

/* Items above the topmost mark, moved into container c (NULL: dropped). */
static int mark_into(pk_vm *m, pk_val *c)
{
    size_t mk = 0;
    int rc = pop_mark(m, &mk);
    if (rc)
        return rc;
    if (c && c->kind == PK_DICT && (m->nst - mk) % 2)
        rc = pk_fail(m, CP_EFORMAT, "odd number of dict items in pickle");
    for (size_t k = mk; k < m->nst && !rc && c; k++)
        rc = pk_add(m, c, m->st[k]);
    m->nst = mk;
    return rc;
}

static int op_data(pk_vm *m, int lenbytes, int kind)
{
    int rc = need(m, (size_t)lenbytes);
    if (rc)
        return rc;
    uint64_t n = le(m->p, lenbytes);
    m->p += lenbytes;
    if (n > (uint64_t)(m->end - m->p))
        return pk_fail(m, CP_EFORMAT, "pickle string of %llu bytes runs past the end of the file",
                       (unsigned long long)n);
    pk_val *v = pk_new(m, kind);
    if (!v)
        return m->err;
    v->s = m->p;
    v->n = (size_t)n;
    m->p += n;
    return push(m, v);
}

/* LONG1, LONG4: an INT up to 8 bytes, else a BIGINT of its bytes. */
static int op_long(pk_vm *m, int lenbytes)
{
    int rc = need(m, (size_t)lenbytes);
    if (rc)
        return rc;
    uint64_t n = le(m->p, lenbytes);
    m->p += lenbytes;
    if ((rc = need(m, n)))
        return rc;
    pk_val *v = pk_new(m, n > 8 ? PK_BIGINT : PK_INT);
    if (!v)
        return m->err;
    if (n > 8) {
        v->s = m->p;
        v->n = (size_t)n;
    } else {
        uint64_t u = le(m->p, (int)n);
        if (n && n < 8 && (m->p[n - 1] & 0x80))
            u |= ~0ull << (n * 8);
        v->i = (int64_t)u;
    }
    m->p += n;
    return push(m, v);
}

static int op_global(pk_vm *m, const uint8_t *mod, size_t ml, const uint8_t *name, size_t nl)
{
    const pk_caller *c = m->c;
    for (size_t k = 0; k < c->nglobals; k++)
        if (strlen(c->globals[k].mod) == ml && !memcmp(c->globals[k].mod, mod, ml) &&
            strlen(c->globals[k].name) == nl && !memcmp(c->globals[k].name, name, nl)) {
            pk_val *g = pk_new(m, PK_GLOBAL);
            if (g)
                g->i = c->globals[k].id;
            return push(m, g);
        }
    char a[64], b[64];
    printable(a, sizeof a, mod, ml);
    printable(b, sizeof b, name, nl);
    return pk_fail(m, CP_EFORMAT, "pickle refers to %s.%s, which this reader refuses (%s; nothing is "
                   "executed)", a, b, c->allows);
}

static int op_reduce(pk_vm *m, const pk_val *fn, const pk_val *args, int newobj)
{
    if (fn->kind != PK_GLOBAL || args->kind != PK_TUPLE)
        return pk_fail(m, CP_EFORMAT, "pickle calls something that is not an allowed global");
    pk_val *o = NULL;
    int rc;
    if (fn->i >= PK_G_USER && m->c->reduce)
        rc = m->c->reduce(m, fn, args, newobj, &o);
    else if (fn->i < PK_G_USER && !newobj)
        rc = np_reduce(m, (int)fn->i, args, &o);
    else
        rc = pk_fail(m, CP_EFORMAT, "pickle creates an object of a class it may not");
    return rc ? rc : push(m, o);
}

static int op_build(pk_vm *m)
{
    pk_val *st = NULL, *o = NULL;
    int rc;
    if ((rc = pop(m, &st)) || (rc = top(m, &o)))
        return rc;
    if (o->kind == PK_DTYPE || o->kind == PK_ARRAY)
        return np_build(m, o, st);
    if (!m->c->build)
        return pk_fail(m, CP_EFORMAT, "pickle sets the state of an object it may not");
    return m->c->build(m, o, st);
}

static int op_memo_put(pk_vm *m, size_t idx)
{
    pk_val *v = NULL;
    int rc = top(m, &v);
    if (rc)
        return rc;
    if (idx >= (size_t)(m->end - m->base) + 16)
        return pk_fail(m, CP_EFORMAT, "pickle memo index %zu beyond the file size", idx);
    if (idx >= m->nmemo) {
        if ((rc = grow(m, (void **)&m->memo, &m->capmemo, idx + 1, sizeof *m->memo)))
            return rc;
        memset(m->memo + m->nmemo, 0, (idx + 1 - m->nmemo) * sizeof *m->memo);
        m->nmemo = idx + 1;
    }
    m->memo[idx] = v;
    return CP_OK;
}

/* None, True, False and () are immutable: one value each serves every use. */
static pk_val *once(pk_vm *m, pk_val **slot, int kind, int64_t i)
{
    if (!*slot && (*slot = pk_new(m, kind)))
        (*slot)->i = i;
    return *slot;
}

/* One opcode (already read). */
static int step(pk_vm *m, uint8_t op)
{
    pk_val *a = NULL, *b = NULL, *c = NULL, *v = NULL;
    int rc;
    switch (op) {
    case 0x80: /* PROTO */
        if ((rc = need(m, 1)))
            return rc;
        if (*m->p < 2 || *m->p > 5)
            return pk_fail(m, CP_EFORMAT, "pickle protocol %d is not supported (2 to 5)", *m->p);
        m->p++;
        return CP_OK;
    case 0x95: /* FRAME: a hint only */
        if (!(rc = need(m, 8)))
            m->p += 8;
        return rc;
    case '(': /* MARK */
        if (!(rc = grow(m, (void **)&m->marks, &m->capmarks, m->nmarks + 1, sizeof *m->marks)))
            m->marks[m->nmarks++] = m->nst;
        return rc;
    case '0': return pop(m, &a);
    case '1': return mark_into(m, NULL); /* POP_MARK */
    case '2': return top(m, &a) ? CP_EFORMAT : push(m, a); /* DUP */
    /* immutable: one value each */
    case 'N': return push(m, once(m, &m->none, PK_NONE, 0));
    case 0x88: return push(m, once(m, &m->yes, PK_BOOL, 1));
    case 0x89: return push(m, once(m, &m->no, PK_BOOL, 0));
    case ')': return push(m, once(m, &m->empty, PK_TUPLE, 0));
    case ']':
    case 0x8f: /* EMPTY_SET: a list */
        return push(m, pk_new(m, PK_LIST));
    case '}': return push(m, pk_new(m, PK_DICT));
    case 'J':
    case 'K':
    case 'M': { /* BININT, BININT1, BININT2 */
        int nb = op == 'J' ? 4 : op == 'K' ? 1 : 2;
        if ((rc = need(m, (size_t)nb)) || !(v = pk_new(m, PK_INT)))
            return rc ? rc : m->err;
        uint64_t u = le(m->p, nb);
        v->i = op == 'J' ? (int64_t)(int32_t)(uint32_t)u : (int64_t)u;
        m->p += nb;
        return push(m, v);
    }
    case 0x8a: return op_long(m, 1);
    case 0x8b: return op_long(m, 4);
    case 'G': { /* BINFLOAT, big-endian */
        if ((rc = need(m, 8)) || !(v = pk_new(m, PK_FLOAT)))
            return rc ? rc : m->err;
        uint64_t u = load(m->p, 8, 1);
        memcpy(&v->f, &u, 8);
        m->p += 8;
        return push(m, v);
    }
    case 0x8c: return op_data(m, 1, PK_STR);
    case 'X': return op_data(m, 4, PK_STR);
    case 0x8d: return op_data(m, 8, PK_STR);
    case 'U': return op_data(m, 1, PK_STR); /* Python 2 str */
    case 'T': return op_data(m, 4, PK_STR);
    case 'C': return op_data(m, 1, PK_BYTES);
    case 'B': return op_data(m, 4, PK_BYTES);
    case 0x8e: return op_data(m, 8, PK_BYTES);
    case 0x96: return op_data(m, 8, PK_BYTES); /* BYTEARRAY8 */
    case 0x97:
        return pk_fail(m, CP_EFORMAT, "pickle uses an out-of-band buffer (NEXT_BUFFER) that a file cannot carry");
    case 0x98: return top(m, &a); /* READONLY_BUFFER: no effect on a copy */
    case 't':
    case 'l':
    case 'd':
    case 0x91: /* FROZENSET: a list */
        if (!(v = pk_new(m, op == 't' ? PK_TUPLE : op == 'd' ? PK_DICT : PK_LIST)))
            return m->err;
        return (rc = mark_into(m, v)) ? rc : push(m, v);
    case 0x85:
    case 0x86:
    case 0x87: { /* TUPLE1..3 */
        pk_val *it[3];
        for (int j = op - 0x85; j >= 0; j--)
            if ((rc = pop(m, &it[j])))
                return rc;
        if (!(v = pk_new(m, PK_TUPLE)))
            return m->err;
        for (int j = 0; j <= op - 0x85; j++)
            if ((rc = pk_add(m, v, it[j])))
                return rc;
        return push(m, v);
    }
    case 'a': /* APPEND */
        if ((rc = pop(m, &b)) || (rc = top(m, &a)))
            return rc;
        if (a->kind != PK_LIST)
            return pk_fail(m, CP_EFORMAT, "pickle appends to a non-list");
        return pk_add(m, a, b);
    case 'e':
    case 0x90: /* APPENDS, ADDITEMS */
    case 'u': { /* SETITEMS */
        size_t mk = floor_of(m), below = m->nmarks > 1 ? m->marks[m->nmarks - 2] : 0;
        if (!m->nmarks || mk <= below)
            return pk_fail(m, CP_EFORMAT, "pickle stack underflow at byte %zu", at(m));
        a = m->st[mk - 1];
        if (a->kind != (op == 'u' ? PK_DICT : PK_LIST))
            return pk_fail(m, CP_EFORMAT, "pickle adds items to the wrong kind of object");
        return mark_into(m, a);
    }
    case 's': /* SETITEM */
        if ((rc = pop(m, &b)) || (rc = pop(m, &a)) || (rc = top(m, &c)))
            return rc;
        if (c->kind != PK_DICT)
            return pk_fail(m, CP_EFORMAT, "pickle sets an item of a non-dict");
        return (rc = pk_add(m, c, a)) ? rc : pk_add(m, c, b);
    case 'q':
    case 'r': { /* BINPUT, LONG_BINPUT */
        int nb = op == 'q' ? 1 : 4;
        if ((rc = need(m, (size_t)nb)))
            return rc;
        m->p += nb;
        return op_memo_put(m, (size_t)le(m->p - nb, nb));
    }
    case 0x94: return op_memo_put(m, m->nmemo); /* MEMOIZE */
    case 'h':
    case 'j': { /* BINGET, LONG_BINGET */
        int nb = op == 'h' ? 1 : 4;
        if ((rc = need(m, (size_t)nb)))
            return rc;
        size_t idx = (size_t)le(m->p, nb);
        m->p += nb;
        if (idx >= m->nmemo || !m->memo[idx])
            return pk_fail(m, CP_EFORMAT, "pickle reads memo %zu, which was never set", idx);
        return push(m, m->memo[idx]);
    }
    case 'c': { /* GLOBAL "module\nname\n" */
        const uint8_t *s = m->p, *nl1 = memchr(s, '\n', (size_t)(m->end - s));
        const uint8_t *nl2 = nl1 ? memchr(nl1 + 1, '\n', (size_t)(m->end - nl1 - 1)) : NULL;
        if (!nl2)
            return pk_fail(m, CP_EFORMAT, "truncated pickle (GLOBAL at byte %zu)", at(m));
        m->p = nl2 + 1;
        return op_global(m, s, (size_t)(nl1 - s), nl1 + 1, (size_t)(nl2 - nl1 - 1));
    }
    case 0x93: /* STACK_GLOBAL */
        if ((rc = pop(m, &b)) || (rc = pop(m, &a)))
            return rc;
        if (a->kind != PK_STR || b->kind != PK_STR)
            return pk_fail(m, CP_EFORMAT, "STACK_GLOBAL without strings in pickle");
        return op_global(m, a->s, a->n, b->s, b->n);
    case 'R':
    case 0x81: /* REDUCE, NEWOBJ */
        if ((rc = pop(m, &b)) || (rc = pop(m, &a)))
            return rc;
        return op_reduce(m, a, b, op == 0x81);
    case 0x92: /* NEWOBJ_EX: cls, args, kwargs */
        if ((rc = pop(m, &c)) || (rc = pop(m, &b)) || (rc = pop(m, &a)))
            return rc;
        return op_reduce(m, a, b, 1);
    case 'b': return op_build(m);
    case 'Q': /* BINPERSID */
        if (m->c->persid) {
            if ((rc = pop(m, &a)) || (rc = m->c->persid(m, a, &v)))
                return rc;
            return push(m, v);
        }
        /* fall through */
    default:
        return pk_fail(m, CP_EFORMAT, "pickle opcode 0x%02x at byte %zu is not supported (not %s)", op,
                       at(m) - 1, m->c->what);
    }
}

int pk_run(pk_vm *m, pk_val **out)
{
    m->nst = m->nmarks = m->nmemo = 0;
    for (;;) {
        if (m->p >= m->end)
            return pk_fail(m, CP_EFORMAT, "truncated pickle (no STOP opcode)");
        uint8_t op = *m->p++;
        if (op == '.')
            return pop(m, out);
        int rc = step(m, op);
        if (rc)
            return rc;
    }
}
