/* torch.save state dicts: zip and legacy containers, read through a
 * restricted pickle interpreter that only knows how to rebuild tensors; and
 * Cellpose 3 size files (np.save of a dict of numpy arrays), read through the
 * same interpreter with numpy's array, dtype and scalar rebuilders modelled.
 *
 * Nothing in the file is trusted: every length is checked against the bytes
 * that remain, every allocation is bounded by the file size, and any pickle
 * global other than the tensor rebuild function, OrderedDict and the torch
 * storage types (plus, for size files only, the four numpy rebuilders) is
 * refused. Nothing is ever called. */
#include <errno.h>
#include <math.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "cellpose/models.h"
#include "cellpose/net.h"
#include "core/internal.h"
#include "io/io_internal.h"
#include "core/sha256.h"
#include "net/builtin.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the weight reader assumes a little-endian host"
#endif

/* ---- little-endian readers -------------------------------------------- */

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const uint8_t *p) { return rd32(p) | (uint64_t)rd32(p + 4) << 32; }

/* ---- storage element types -------------------------------------------- */

typedef enum { ST_F32, ST_F64, ST_F16, ST_BF16, ST_I64, ST_I32, ST_I16, ST_I8, ST_U8 } stype;

static const struct {
    const char *name;
    stype t;
    int size;
} storage_types[] = {
    {"FloatStorage", ST_F32, 4}, {"DoubleStorage", ST_F64, 8}, {"HalfStorage", ST_F16, 2},
    {"BFloat16Storage", ST_BF16, 2}, {"LongStorage", ST_I64, 8}, {"IntStorage", ST_I32, 4},
    {"ShortStorage", ST_I16, 2}, {"CharStorage", ST_I8, 1}, {"ByteStorage", ST_U8, 1},
};

static int stype_size(stype t)
{
    for (size_t i = 0; i < sizeof storage_types / sizeof *storage_types; i++)
        if (storage_types[i].t == t)
            return storage_types[i].size;
    return 0;
}

static int stype_is_float(stype t) { return t == ST_F32 || t == ST_F64 || t == ST_F16 || t == ST_BF16; }

/* ---- pickle objects ---------------------------------------------------- */

enum { O_NONE, O_BOOL, O_INT, O_BIGINT, O_FLOAT, O_STR, O_BYTES, O_TUPLE, O_LIST, O_DICT,
       O_GLOBAL, O_STORAGE, O_TENSOR, O_NDARRAY, O_DTYPE };
enum { G_REBUILD, G_ODICT, G_STORAGE, G_NP_RECONSTRUCT, G_NP_NDARRAY, G_NP_DTYPE, G_NP_SCALAR };

typedef struct obj obj;
struct obj {
    int type;
    int64_t i;                  /* INT, BOOL; GLOBAL kind; STORAGE type */
    double f;
    const uint8_t *s;           /* STR / BIGINT / BYTES bytes, NDARRAY data (inside the file) */
    size_t slen;
    obj **items;                /* TUPLE, LIST; DICT as key,value pairs */
    size_t n, cap;
    /* STORAGE */
    int64_t numel, view_offset;
    /* TENSOR */
    obj *storage;
    int64_t offset;
    int ndim;
    int64_t size[CP_WMAX_DIMS], stride[CP_WMAX_DIMS];
    /* DTYPE: i = kind ('f', 'i', 'u', 'b', 'O'), numel = item size, offset = 1 if big-endian.
     * NDARRAY: ndim/size = shape (ndim -1 until BUILD gives its state), dtype,
     * s/slen its bytes, or objs (a LIST) for an object array. */
    obj *dtype, *objs;
    obj *next;                  /* every object, for freeing */
};

typedef struct unpickler {
    const char *path;
    const uint8_t *p, *end;
    obj *all;                   /* allocation list */
    size_t budget;              /* bytes we may still allocate */
    obj **stack;
    size_t sn, scap;
    size_t *marks;
    size_t mn, mcap;
    obj **memo;
    size_t memon;
    int numpy;                  /* allow numpy's rebuilders (size files) */
} unpickler;

static int bad(unpickler *u, const char *what)
{
    return cp_error(CP_EFORMAT, "%s: corrupt pickle: %s", u->path, what);
}

static int charge(unpickler *u, size_t bytes)
{
    if (bytes > u->budget)
        return cp_error(CP_ELIMIT, "%s: pickle needs more memory than its size justifies", u->path);
    u->budget -= bytes;
    return CP_OK;
}

static obj *newobj(unpickler *u, int type)
{
    if (charge(u, sizeof(obj)))
        return NULL;
    obj *o = cp_calloc(1, sizeof *o, "pickle object");
    if (!o)
        return NULL;
    o->type = type;
    o->next = u->all;
    u->all = o;
    return o;
}

static int grow(unpickler *u, void **arr, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return CP_OK;
    size_t nc = *cap ? *cap : 8;
    while (nc < need)
        nc *= 2;
    if (charge(u, (nc - *cap) * elem))
        return CP_ELIMIT;
    void *q = realloc(*arr, nc * elem);
    if (!q)
        return cp_error(CP_ENOMEM, "%s: out of memory reading the pickle", u->path);
    *arr = q;
    *cap = nc;
    return CP_OK;
}

static int push(unpickler *u, obj *o)
{
    if (!o)
        return CP_ENOMEM;
    if (grow(u, (void **)&u->stack, &u->scap, u->sn + 1, sizeof *u->stack))
        return CP_ELIMIT;
    u->stack[u->sn++] = o;
    return CP_OK;
}

static obj *pop(unpickler *u)
{
    size_t floor = u->mn ? u->marks[u->mn - 1] : 0;
    if (u->sn <= floor) {
        bad(u, "stack underflow");
        return NULL;
    }
    return u->stack[--u->sn];
}

static int add_item(unpickler *u, obj *c, obj *x)
{
    if (grow(u, (void **)&c->items, &c->cap, c->n + 1, sizeof *c->items))
        return CP_ELIMIT;
    c->items[c->n++] = x;
    return CP_OK;
}

/* Items above the topmost mark, removed from the stack into container c. */
static int pop_mark_into(unpickler *u, obj *c)
{
    if (!u->mn)
        return bad(u, "no mark");
    size_t m = u->marks[--u->mn];
    for (size_t k = m; k < u->sn; k++)
        if (add_item(u, c, u->stack[k]))
            return CP_ELIMIT;
    u->sn = m;
    return CP_OK;
}

static void free_objs(obj *o)
{
    while (o) {
        obj *n = o->next;
        free(o->items);
        free(o);
        o = n;
    }
}

static int str_eq(const obj *o, const char *s)
{
    return o->type == O_STR && o->slen == strlen(s) && memcmp(o->s, s, o->slen) == 0;
}

static int resolve_global(unpickler *u, const uint8_t *mod, size_t ml, const uint8_t *name,
                          size_t nl, obj **out)
{
#define IS(p, l, lit) ((l) == sizeof(lit) - 1 && memcmp(p, lit, l) == 0)
    obj *g = newobj(u, O_GLOBAL);
    if (!g)
        return CP_ENOMEM;
    if (IS(mod, ml, "torch._utils") && IS(name, nl, "_rebuild_tensor_v2")) {
        g->i = G_REBUILD;
    } else if (IS(mod, ml, "collections") && IS(name, nl, "OrderedDict")) {
        g->i = G_ODICT;
    } else if (u->numpy && (IS(mod, ml, "numpy.core.multiarray") || IS(mod, ml, "numpy._core.multiarray")) &&
               (IS(name, nl, "_reconstruct") || IS(name, nl, "scalar"))) {
        g->i = IS(name, nl, "scalar") ? G_NP_SCALAR : G_NP_RECONSTRUCT; /* numpy 2 renamed core */
    } else if (u->numpy && IS(mod, ml, "numpy") && (IS(name, nl, "ndarray") || IS(name, nl, "dtype"))) {
        g->i = IS(name, nl, "dtype") ? G_NP_DTYPE : G_NP_NDARRAY;
    } else {
        int found = 0;
        if (IS(mod, ml, "torch"))
            for (size_t k = 0; k < sizeof storage_types / sizeof *storage_types; k++)
                if (strlen(storage_types[k].name) == nl && !memcmp(name, storage_types[k].name, nl)) {
                    g->i = G_STORAGE;
                    g->numel = storage_types[k].t; /* the storage type, for BINPERSID */
                    found = 1;
                }
        if (!found) {
            int a = ml > 60 ? 60 : (int)ml, b = nl > 60 ? 60 : (int)nl;
            if (u->numpy)
                return cp_error(CP_EFORMAT, "%s: pickle asks for global '%.*s.%.*s'; only numpy "
                                "arrays, dtypes and scalars are allowed", u->path, a,
                                (const char *)mod, b, (const char *)name);
            return cp_error(CP_EFORMAT, "%s: pickle asks for global '%.*s.%.*s'; only tensors "
                            "(torch._utils._rebuild_tensor_v2, OrderedDict, torch storages) "
                            "are allowed", u->path, a, (const char *)mod, b, (const char *)name);
        }
    }
    *out = g;
    return CP_OK;
#undef IS
}

/* ('storage', <StorageType>, key, location, numel[, view_metadata]) */
static int persistent_load(unpickler *u, obj *pid, obj **out)
{
    if (pid->type != O_TUPLE || pid->n < 5 || pid->n > 6 || !str_eq(pid->items[0], "storage"))
        return bad(u, "persistent id is not a storage record");
    obj *ty = pid->items[1], *key = pid->items[2], *num = pid->items[4];
    if (ty->type != O_GLOBAL || ty->i != G_STORAGE)
        return bad(u, "persistent id without a storage type");
    obj *s = newobj(u, O_STORAGE);
    if (!s)
        return CP_ENOMEM;
    s->i = ty->numel;
    if (key->type == O_STR) {
        s->s = key->s;
        s->slen = key->slen;
    } else {
        return bad(u, "storage key is not a string");
    }
    if (num->type != O_INT || num->i < 0)
        return bad(u, "storage size is not a non-negative integer");
    s->numel = num->i;
    s->view_offset = 0;
    if (pid->n == 6 && pid->items[5]->type != O_NONE) {
        obj *v = pid->items[5];
        if (v->type != O_TUPLE || v->n != 3 || v->items[1]->type != O_INT ||
            v->items[2]->type != O_INT || v->items[1]->i < 0 || v->items[2]->i < 0)
            return bad(u, "bad storage view record");
        s->view_offset = v->items[1]->i;
        s->numel = v->items[2]->i; /* the view's length; checked against the root later */
    }
    *out = s;
    return CP_OK;
}

static int int_tuple(unpickler *u, obj *t, int64_t *dst, int *n)
{
    if (t->type != O_TUPLE)
        return bad(u, "tensor size/stride is not a tuple");
    if (t->n > CP_WMAX_DIMS)
        return cp_error(CP_EUNSUPPORTED, "%s: tensor with %zu dimensions (at most %d)", u->path,
                        t->n, CP_WMAX_DIMS);
    for (size_t k = 0; k < t->n; k++) {
        if (t->items[k]->type != O_INT || t->items[k]->i < 0)
            return bad(u, "tensor size/stride entry is not a non-negative integer");
        dst[k] = t->items[k]->i;
    }
    *n = (int)t->n;
    return CP_OK;
}

/* numpy.dtype('f8', False, True): kind and item size; the byte order comes
 * with BUILD. Only plain numbers and objects. */
static int np_dtype(unpickler *u, obj *args, obj **out)
{
    if (args->n < 1 || args->items[0]->type != O_STR)
        return bad(u, "numpy dtype without a type string");
    const obj *t = args->items[0];
    int size = 0;
    for (size_t k = 1; k < t->slen && k < 4; k++) {
        if (t->s[k] < '0' || t->s[k] > '9')
            size = -1;
        else if (size >= 0)
            size = size * 10 + (t->s[k] - '0');
    }
    char kind = t->slen >= 2 && t->slen <= 3 ? (char)t->s[0] : 0;
    int ok = (kind == 'f' && (size == 4 || size == 8)) || (kind == 'O' && size == 8) ||
             ((kind == 'i' || kind == 'u') && (size == 1 || size == 2 || size == 4 || size == 8)) ||
             (kind == 'b' && size == 1);
    if (!ok) {
        int n = t->slen > 20 ? 20 : (int)t->slen;
        return cp_error(CP_EUNSUPPORTED, "%s: numpy dtype '%.*s' is not supported (numbers and "
                        "objects only)", u->path, n, (const char *)t->s);
    }
    obj *d = newobj(u, O_DTYPE);
    if (!d)
        return CP_ENOMEM;
    d->i = kind;
    d->numel = size;
    *out = d;
    return CP_OK;
}

/* numpy's rebuilders, modelled: _reconstruct(ndarray, (0,), b'b') makes an
 * empty array that BUILD fills; scalar(dtype, bytes) a 0-d array. */
static int np_reduce(unpickler *u, obj *fn, obj *args, obj **out)
{
    if (fn->i == G_NP_DTYPE)
        return np_dtype(u, args, out);
    if (fn->i == G_NP_RECONSTRUCT) {
        if (args->n != 3 || args->items[0]->type != O_GLOBAL || args->items[0]->i != G_NP_NDARRAY)
            return bad(u, "numpy _reconstruct of something other than ndarray");
        obj *a = newobj(u, O_NDARRAY);
        if (!a)
            return CP_ENOMEM;
        a->ndim = -1;
        *out = a;
        return CP_OK;
    }
    if (fn->i == G_NP_SCALAR) {
        if (args->n != 2 || args->items[0]->type != O_DTYPE || args->items[1]->type != O_BYTES)
            return bad(u, "numpy scalar without a dtype and its bytes");
        obj *dt = args->items[0], *b = args->items[1];
        if (dt->i == 'O' || b->slen != (size_t)dt->numel)
            return bad(u, "numpy scalar whose bytes do not match its dtype");
        obj *a = newobj(u, O_NDARRAY);
        if (!a)
            return CP_ENOMEM;
        a->ndim = 0;
        a->dtype = dt;
        a->s = b->s;
        a->slen = b->slen;
        *out = a;
        return CP_OK;
    }
    return bad(u, "numpy.ndarray called as a function");
}

/* BUILD on a numpy dtype: (version, byteorder, ...); on an array:
 * (version, shape, dtype, fortran_order, bytes or list of objects). */
static int np_build(unpickler *u, obj *o, obj *st)
{
    if (st->type != O_TUPLE)
        return bad(u, "numpy state is not a tuple");
    if (o->type == O_DTYPE) {
        if (st->n < 2 || st->items[1]->type != O_STR || st->items[1]->slen != 1)
            return bad(u, "numpy dtype state without a byte order");
        if (st->items[1]->s[0] == '>' && o->numel > 1)
            return cp_error(CP_EUNSUPPORTED, "%s: big-endian numpy arrays are not supported", u->path);
        return CP_OK;
    }
    if (o->ndim != -1)
        return bad(u, "numpy array state given twice");
    if (st->n != 5 || st->items[2]->type != O_DTYPE)
        return bad(u, "numpy array state is not (version, shape, dtype, fortran, data)");
    obj *dt = st->items[2], *data = st->items[4];
    int nd;
    if (int_tuple(u, st->items[1], o->size, &nd))
        return CP_EFORMAT;
    size_t numel = 1;
    for (int k = 0; k < nd; k++)
        if (cp_mul_overflow(numel, (size_t)o->size[k], &numel))
            return bad(u, "numpy array shape overflows");
    if (nd > 1 && st->items[3]->type == O_BOOL && st->items[3]->i)
        return cp_error(CP_EUNSUPPORTED, "%s: Fortran-ordered numpy arrays are not supported", u->path);
    if (dt->i == 'O') {
        if (data->type != O_LIST || data->n != numel)
            return bad(u, "numpy object array whose item list does not match its shape");
        o->objs = data;
    } else {
        size_t bytes;
        if (data->type != O_BYTES || cp_mul_overflow(numel, (size_t)dt->numel, &bytes) || bytes != data->slen)
            return bad(u, "numpy array whose bytes do not match its shape and dtype");
        o->s = data->s;
        o->slen = data->slen;
    }
    o->ndim = nd;
    o->dtype = dt;
    return CP_OK;
}

static int reduce(unpickler *u, obj *fn, obj *args, obj **out)
{
    if (fn->type != O_GLOBAL || args->type != O_TUPLE)
        return bad(u, "REDUCE of something that is not an allowed global");
    if (fn->i >= G_NP_RECONSTRUCT)
        return np_reduce(u, fn, args, out);
    if (fn->i == G_ODICT) {
        if (args->n != 0)
            return bad(u, "OrderedDict built with arguments");
        *out = newobj(u, O_DICT);
        return *out ? CP_OK : CP_ENOMEM;
    }
    if (fn->i != G_REBUILD)
        return bad(u, "a storage type called as a function");
    if (args->n < 6 || args->n > 7)
        return bad(u, "_rebuild_tensor_v2 with a wrong number of arguments");
    obj *st = args->items[0], *off = args->items[1];
    if (st->type != O_STORAGE)
        return bad(u, "tensor without a storage");
    if (off->type != O_INT || off->i < 0)
        return bad(u, "tensor storage offset is not a non-negative integer");
    obj *t = newobj(u, O_TENSOR);
    if (!t)
        return CP_ENOMEM;
    int ns, nt;
    if (int_tuple(u, args->items[2], t->size, &ns) || int_tuple(u, args->items[3], t->stride, &nt))
        return CP_EFORMAT;
    if (ns != nt)
        return bad(u, "tensor size and stride differ in length");
    t->ndim = ns;
    t->storage = st;
    t->offset = off->i;
    *out = t;
    return CP_OK;
}

/* Run one pickle from u->p; on success *top is the object left by STOP and
 * u->p points past the STOP opcode. */
static int unpickle(unpickler *u, obj **top)
{
    u->sn = u->mn = 0;
    u->memon = 0;
    int rc;
#define NEED(k) do { if ((size_t)(u->end - u->p) < (size_t)(k)) return bad(u, "truncated"); } while (0)
#define PUSH(o) do { if ((rc = push(u, (o)))) return rc; } while (0)
#define POP(v) do { if (!((v) = pop(u))) return CP_EFORMAT; } while (0)
    for (;;) {
        NEED(1);
        uint8_t op = *u->p++;
        obj *o = NULL, *a = NULL, *b = NULL;
        switch (op) {
        case 0x80: /* PROTO */
            NEED(1);
            if (*u->p > 5)
                return bad(u, "unknown protocol");
            u->p++;
            break;
        case 0x95: /* FRAME */
            NEED(8);
            u->p += 8;
            break;
        case '.': /* STOP */
            POP(o);
            *top = o;
            return CP_OK;
        case '(': /* MARK */
            if ((rc = grow(u, (void **)&u->marks, &u->mcap, u->mn + 1, sizeof *u->marks)))
                return rc;
            u->marks[u->mn++] = u->sn;
            break;
        case ')': PUSH(newobj(u, O_TUPLE)); break;
        case ']': PUSH(newobj(u, O_LIST)); break;
        case '}': PUSH(newobj(u, O_DICT)); break;
        case 'N': PUSH(newobj(u, O_NONE)); break;
        case 0x88: case 0x89: /* NEWTRUE, NEWFALSE */
            if (!(o = newobj(u, O_BOOL)))
                return CP_ENOMEM;
            o->i = op == 0x88;
            PUSH(o);
            break;
        case 't': case 'l': case 'd': /* TUPLE, LIST, DICT from the mark */
            if (!(o = newobj(u, op == 't' ? O_TUPLE : op == 'l' ? O_LIST : O_DICT)))
                return CP_ENOMEM;
            if ((rc = pop_mark_into(u, o)))
                return rc;
            if (op == 'd' && o->n % 2)
                return bad(u, "odd number of dict items");
            PUSH(o);
            break;
        case 0x85: case 0x86: case 0x87: { /* TUPLE1..3 */
            int k = op - 0x84;
            obj *it[3];
            for (int j = k - 1; j >= 0; j--)
                POP(it[j]);
            if (!(o = newobj(u, O_TUPLE)))
                return CP_ENOMEM;
            for (int j = 0; j < k; j++)
                if ((rc = add_item(u, o, it[j])))
                    return rc;
            PUSH(o);
            break;
        }
        case 'a': /* APPEND */
            POP(b);
            POP(a);
            if (a->type != O_LIST)
                return bad(u, "APPEND to a non-list");
            if ((rc = add_item(u, a, b)))
                return rc;
            PUSH(a);
            break;
        case 'e': case 'u': { /* APPENDS, SETITEMS */
            if (!u->mn)
                return bad(u, "no mark");
            size_t m = u->marks[u->mn - 1];
            if (m == 0)
                return bad(u, "stack underflow");
            obj *c = u->stack[m - 1];
            if (c->type != (op == 'e' ? O_LIST : O_DICT))
                return bad(u, op == 'e' ? "APPENDS to a non-list" : "SETITEMS on a non-dict");
            if (op == 'u' && (u->sn - m) % 2)
                return bad(u, "odd number of dict items");
            if ((rc = pop_mark_into(u, c)))
                return rc;
            break;
        }
        case 's': /* SETITEM */
            POP(b);
            POP(a);
            POP(o);
            if (o->type != O_DICT)
                return bad(u, "SETITEM on a non-dict");
            if ((rc = add_item(u, o, a)) || (rc = add_item(u, o, b)))
                return rc;
            PUSH(o);
            break;
        case 'J': case 'K': case 'M': { /* BININT, BININT1, BININT2 */
            int k = op == 'J' ? 4 : op == 'K' ? 1 : 2;
            NEED(k);
            if (!(o = newobj(u, O_INT)))
                return CP_ENOMEM;
            o->i = k == 4 ? (int32_t)rd32(u->p) : k == 2 ? rd16(u->p) : u->p[0];
            u->p += k;
            PUSH(o);
            break;
        }
        case 0x8a: { /* LONG1 */
            NEED(1);
            size_t k = *u->p++;
            NEED(k);
            if (k <= 8) {
                if (!(o = newobj(u, O_INT)))
                    return CP_ENOMEM;
                uint64_t v = 0;
                for (size_t j = 0; j < k; j++)
                    v |= (uint64_t)u->p[j] << (8 * j);
                if (k && k < 8 && (u->p[k - 1] & 0x80))
                    v |= ~(uint64_t)0 << (8 * k); /* sign-extend */
                o->i = (int64_t)v;
            } else {
                if (!(o = newobj(u, O_BIGINT)))
                    return CP_ENOMEM;
                o->s = u->p;
                o->slen = k;
            }
            u->p += k;
            PUSH(o);
            break;
        }
        case 'G': { /* BINFLOAT, big-endian */
            NEED(8);
            uint64_t v = 0;
            for (int j = 0; j < 8; j++)
                v = v << 8 | u->p[j];
            if (!(o = newobj(u, O_FLOAT)))
                return CP_ENOMEM;
            memcpy(&o->f, &v, 8);
            u->p += 8;
            PUSH(o);
            break;
        }
        case 'X': case 0x8c: case 'U': case 'B': case 'C': {
            /* BINUNICODE, SHORT_BINUNICODE, SHORT_BINSTRING; BINBYTES, SHORT_BINBYTES */
            size_t k;
            if (op == 'X' || op == 'B') {
                NEED(4);
                k = rd32(u->p);
                u->p += 4;
            } else {
                NEED(1);
                k = *u->p++;
            }
            NEED(k);
            if (!(o = newobj(u, op == 'B' || op == 'C' ? O_BYTES : O_STR)))
                return CP_ENOMEM;
            o->s = u->p;
            o->slen = k;
            u->p += k;
            PUSH(o);
            break;
        }
        case 'c': { /* GLOBAL "module\nname\n" */
            const uint8_t *m = u->p, *nl1 = memchr(m, '\n', (size_t)(u->end - m));
            if (!nl1)
                return bad(u, "truncated");
            const uint8_t *n = nl1 + 1, *nl2 = memchr(n, '\n', (size_t)(u->end - n));
            if (!nl2)
                return bad(u, "truncated");
            u->p = nl2 + 1;
            if ((rc = resolve_global(u, m, (size_t)(nl1 - m), n, (size_t)(nl2 - n), &o)))
                return rc;
            PUSH(o);
            break;
        }
        case 0x93: /* STACK_GLOBAL */
            POP(b);
            POP(a);
            if (a->type != O_STR || b->type != O_STR)
                return bad(u, "STACK_GLOBAL without strings");
            if ((rc = resolve_global(u, a->s, a->slen, b->s, b->slen, &o)))
                return rc;
            PUSH(o);
            break;
        case 'Q': /* BINPERSID */
            POP(a);
            if ((rc = persistent_load(u, a, &o)))
                return rc;
            PUSH(o);
            break;
        case 'R': /* REDUCE */
            POP(b);
            POP(a);
            if ((rc = reduce(u, a, b, &o)))
                return rc;
            PUSH(o);
            break;
        case 'b': /* BUILD: numpy objects take their state; torch's (OrderedDict _metadata) is not needed */
            POP(b);
            if (u->sn == 0)
                return bad(u, "stack underflow");
            a = u->stack[u->sn - 1];
            if ((a->type == O_NDARRAY || a->type == O_DTYPE) && (rc = np_build(u, a, b)))
                return rc;
            break;
        case '0': /* POP */
            POP(a);
            break;
        case 'q': case 'r': case 0x94: { /* BINPUT, LONG_BINPUT, MEMOIZE */
            size_t idx;
            if (op == 0x94) {
                idx = u->memon;
            } else {
                int k = op == 'q' ? 1 : 4;
                NEED(k);
                idx = k == 1 ? u->p[0] : rd32(u->p);
                u->p += k;
            }
            if (u->sn == 0)
                return bad(u, "memo of an empty stack");
            /* indices are dense in real pickles; a far index is corruption */
            if (idx > u->memon + 1024)
                return bad(u, "memo index out of range");
            if (idx >= u->memon) {
                size_t cap = u->memon;
                obj **m = u->memo;
                if (charge(u, (idx + 1 - u->memon) * sizeof *m))
                    return CP_ELIMIT;
                m = realloc(m, (idx + 1) * sizeof *m);
                if (!m)
                    return cp_error(CP_ENOMEM, "%s: out of memory", u->path);
                for (size_t j = cap; j <= idx; j++)
                    m[j] = NULL;
                u->memo = m;
                u->memon = idx + 1;
            }
            u->memo[idx] = u->stack[u->sn - 1];
            break;
        }
        case 'h': case 'j': { /* BINGET, LONG_BINGET */
            int k = op == 'h' ? 1 : 4;
            NEED(k);
            size_t idx = k == 1 ? u->p[0] : rd32(u->p);
            u->p += k;
            if (idx >= u->memon || !u->memo[idx])
                return bad(u, "memo lookup of an unset index");
            PUSH(u->memo[idx]);
            break;
        }
        default: {
            char m[64];
            snprintf(m, sizeof m, "opcode 0x%02x not allowed", op);
            return bad(u, m);
        }
        }
    }
#undef NEED
#undef PUSH
#undef POP
}

/* ---- file mapping ------------------------------------------------------ */

typedef struct mapped {
    const uint8_t *p;
    size_t n;
    int drop;  /* a private mapping of the file: pages may be dropped once read */
    size_t bf16_min;  /* float tensors of this many elements or more load as bf16 (0: none) */
} mapped;

/* Pages of a mapped file that have been read (hashed, CRC-checked, copied)
 * leave the process: otherwise the file's 1.2 GB (Cellpose-SAM) count in
 * its peak RSS on top of the tensors copied out of it. A page needed again
 * is read back from the page cache, so this never changes what is read. */
static void drop_pages(const mapped *f, const void *p, size_t n)
{
    if (!f->drop || !n)
        return;
    uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)p & ~(pg - 1), b = ((uintptr_t)p + n + pg - 1) & ~(pg - 1);
    uintptr_t lo = (uintptr_t)f->p & ~(pg - 1), hi = ((uintptr_t)f->p + f->n + pg - 1) & ~(pg - 1);
    if (a < lo)
        a = lo;
    if (b > hi)
        b = hi;
    if (a < b)
        madvise((void *)a, b - a, MADV_DONTNEED);
}

static int map_file(const char *path, const char *what, mapped *m)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return cp_error(CP_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return cp_error(CP_EIO, "%s: not a regular file", path);
    }
    if (st.st_size == 0) {
        close(fd);
        return cp_error(CP_EFORMAT, "%s: empty file, not %s", path, what);
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED)
        return cp_error(CP_EIO, "%s: cannot map: %s", path, strerror(errno));
    m->p = p;
    m->n = (size_t)st.st_size;
    return CP_OK;
}

/* ---- zip container ----------------------------------------------------- */

typedef struct zentry {
    const uint8_t *name;
    size_t nlen;
    const uint8_t *data;
    uint64_t size;
    uint32_t crc;
} zentry;

typedef struct zip {
    zentry *e;
    size_t n;
} zip;

static int zbad(const char *path, const char *what)
{
    return cp_error(CP_EFORMAT, "%s: corrupt zip container: %s", path, what);
}

static int zip_open(const char *path, const mapped *f, zip *z)
{
    const uint8_t *p = f->p;
    size_t n = f->n;
    if (n < 22)
        return zbad(path, "truncated (no end of central directory)");
    size_t eocd = SIZE_MAX;
    size_t lo = n > 22 + 65535 ? n - 22 - 65535 : 0;
    for (size_t k = n - 22 + 1; k-- > lo;)
        if (rd32(p + k) == 0x06054b50) {
            eocd = k;
            break;
        }
    if (eocd == SIZE_MAX)
        return zbad(path, "truncated (no end of central directory)");
    uint64_t count = rd16(p + eocd + 10), cdsize = rd32(p + eocd + 12), cdoff = rd32(p + eocd + 16);
    if (count == 0xffff || cdsize == 0xffffffffu || cdoff == 0xffffffffu) {
        /* zip64: locator just before the end record */
        if (eocd < 20 || rd32(p + eocd - 20) != 0x07064b50)
            return zbad(path, "zip64 locator missing");
        uint64_t z64 = rd64(p + eocd - 20 + 8);
        if (z64 > n || n - z64 < 56 || rd32(p + z64) != 0x06064b50)
            return zbad(path, "zip64 end record missing");
        count = rd64(p + z64 + 32);
        cdsize = rd64(p + z64 + 40);
        cdoff = rd64(p + z64 + 48);
    }
    if (cdoff > n || cdsize > n - cdoff)
        return zbad(path, "central directory outside the file");
    if (count > cdsize / 46 + 1)
        return zbad(path, "entry count larger than the central directory");
    z->e = cp_calloc(count ? count : 1, sizeof *z->e, "zip directory");
    if (!z->e)
        return CP_ENOMEM;
    z->n = 0;
    const uint8_t *c = p + cdoff, *cend = p + cdoff + cdsize;
    for (uint64_t k = 0; k < count; k++) {
        if (cend - c < 46 || rd32(c) != 0x02014b50)
            return zbad(path, "bad central directory entry");
        unsigned method = rd16(c + 10), nl = rd16(c + 28), xl = rd16(c + 30), cl = rd16(c + 32);
        uint64_t csize = rd32(c + 20), usize = rd32(c + 24), loff = rd32(c + 42);
        if ((size_t)(cend - c) < 46u + nl + xl + cl)
            return zbad(path, "bad central directory entry");
        /* zip64 extra field: 64-bit values for the fields that overflowed */
        const uint8_t *x = c + 46 + nl, *xend = x + xl;
        while (xend - x >= 4) {
            unsigned id = rd16(x), len = rd16(x + 2);
            if ((size_t)(xend - x - 4) < len)
                break;
            if (id == 1) {
                const uint8_t *v = x + 4, *vend = x + 4 + len;
                if (usize == 0xffffffffu && vend - v >= 8) { usize = rd64(v); v += 8; }
                if (csize == 0xffffffffu && vend - v >= 8) { csize = rd64(v); v += 8; }
                if (loff == 0xffffffffu && vend - v >= 8) { loff = rd64(v); v += 8; }
            }
            x += 4 + len;
        }
        zentry *e = &z->e[z->n++];
        e->name = c + 46;
        e->nlen = nl;
        if (method != 0)
            return cp_error(CP_EUNSUPPORTED, "%s: zip entry '%.*s' is compressed (torch writes "
                            "stored entries only)", path, (int)(nl > 200 ? 200 : nl), (const char *)e->name);
        if (csize != usize)
            return zbad(path, "stored entry with differing sizes");
        if (loff > n || n - loff < 30 || rd32(p + loff) != 0x04034b50)
            return zbad(path, "local header outside the file (truncated?)");
        uint64_t doff = loff + 30 + rd16(p + loff + 26) + rd16(p + loff + 28);
        if (doff > n || csize > n - doff)
            return cp_error(CP_EFORMAT, "%s: zip entry '%.*s' extends past the end of the file "
                            "(truncated)", path, (int)(nl > 200 ? 200 : nl), (const char *)e->name);
        e->data = p + doff;
        e->size = csize;
        e->crc = rd32(c + 16);
        c += 46 + nl + xl + cl;
    }
    return CP_OK;
}

/* Damaged tensor bytes would otherwise go unnoticed. */
static int zip_check_crc(const char *path, const zentry *e)
{
    uint32_t crc = (uint32_t)crc32(0L, Z_NULL, 0);
    for (uint64_t done = 0; done < e->size;) {
        uInt k = e->size - done > (1u << 30) ? (1u << 30) : (uInt)(e->size - done);
        crc = (uint32_t)crc32(crc, e->data + done, k);
        done += k;
    }
    if (crc != e->crc)
        return cp_error(CP_EFORMAT, "%s: zip entry '%.*s' is damaged (CRC mismatch)", path,
                        (int)(e->nlen > 200 ? 200 : e->nlen), (const char *)e->name);
    return CP_OK;
}

static const zentry *zip_find(const zip *z, const uint8_t *prefix, size_t pl, const char *mid,
                              const uint8_t *suffix, size_t sl)
{
    size_t ml = strlen(mid);
    for (size_t k = 0; k < z->n; k++) {
        const zentry *e = &z->e[k];
        if (e->nlen == pl + ml + sl && !memcmp(e->name, prefix, pl) &&
            !memcmp(e->name + pl, mid, ml) && !memcmp(e->name + pl + ml, suffix, sl))
            return e;
    }
    return NULL;
}

/* ---- from pickle objects to tensors ----------------------------------- */

typedef struct sdata {          /* raw bytes behind a storage key */
    const uint8_t *key;
    size_t klen;
    stype t;
    const uint8_t *data;
    int64_t numel;              /* elements available */
} sdata;

static void convert(stype t, const uint8_t *src, void *dst, size_t di)
{
    if (t == ST_F32) {
        memcpy((float *)dst + di, src, 4);
        return;
    }
    if (stype_is_float(t)) {
        float v;
        if (t == ST_F64) {
            double d;
            memcpy(&d, src, 8);
            v = (float)d;
        } else if (t == ST_BF16) {
            uint32_t b = (uint32_t)rd16(src) << 16;
            memcpy(&v, &b, 4);
        } else { /* IEEE half */
            uint16_t h = rd16(src);
            uint32_t sign = (uint32_t)(h >> 15) << 31, ex = (h >> 10) & 31, man = h & 1023, b;
            if (ex == 31) {
                b = sign | 0x7f800000u | man << 13;
            } else if (ex == 0) {
                float m = (float)man * (1.0f / 16777216.0f); /* 2^-24 */
                memcpy(&b, &m, 4);
                b |= sign;
            } else {
                b = sign | (ex + 112) << 23 | man << 13;
            }
            memcpy(&v, &b, 4);
        }
        ((float *)dst)[di] = v;
        return;
    }
    int64_t v;
    switch (t) {
    case ST_I64: v = (int64_t)rd64(src); break;
    case ST_I32: v = (int32_t)rd32(src); break;
    case ST_I16: v = (int16_t)rd16(src); break;
    case ST_I8: v = (int8_t)src[0]; break;
    default: v = src[0]; break;
    }
    ((int64_t *)dst)[di] = v;
}

/* Round to nearest even as c10::BFloat16 does (NaN -> quiet NaN), so a
 * weight loaded as bf16 equals libtorch's float32 -> bfloat16 conversion. */
static int to_bf16(cp_wtensor *t)
{
    uint16_t *b = cp_malloc_array(t->numel, 2, "tensor");
    if (!b)
        return CP_ENOMEM;
    const float *x = t->data;
    for (size_t i = 0; i < t->numel; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        b[i] = x[i] != x[i] ? 0x7FC0 : (uint16_t)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
    }
    free(t->data);
    t->data = b;
    t->dtype = CP_W_BF16;
    return CP_OK;
}

static int gather(const char *path, const char *key, const obj *t, const sdata *sd, cp_wtensor *out,
                  const mapped *f)
{
    size_t file_size = f->n;
    int es = stype_size(sd->t);
    size_t numel = 1;
    for (int d = 0; d < t->ndim; d++)
        if (cp_mul_overflow(numel, (size_t)t->size[d], &numel) || numel > file_size)
            return cp_error(CP_EFORMAT, "%s: tensor '%s' is larger than the file", path, key);
    int64_t base = t->storage->view_offset + t->offset, last = base;
    if (numel > 0) {
        for (int d = 0; d < t->ndim; d++) {
            if (t->stride[d] > 0 && (uint64_t)(t->size[d] - 1) > (uint64_t)(INT64_MAX / 2) / (uint64_t)t->stride[d])
                return cp_error(CP_EFORMAT, "%s: tensor '%s': stride overflow", path, key);
            last += (t->size[d] - 1) * t->stride[d];
            if (last < 0 || last > INT64_MAX / 4)
                return cp_error(CP_EFORMAT, "%s: tensor '%s': stride overflow", path, key);
        }
        if (last >= sd->numel)
            return cp_error(CP_EFORMAT, "%s: tensor '%s' reaches element %lld of a storage with %lld "
                            "elements", path, key, (long long)last, (long long)sd->numel);
    }
    out->ndim = t->ndim;
    for (int d = 0; d < t->ndim; d++) {
        out->shape[d] = t->size[d];
        out->stride[d] = t->stride[d];
    }
    out->storage_offset = t->offset;
    out->storage_numel = t->storage->numel;
    out->numel = numel;
    out->dtype = stype_is_float(sd->t) ? CP_W_F32 : CP_W_I64;
    size_t osz = out->dtype == CP_W_F32 ? 4 : 8;
    out->data = cp_malloc_array(numel ? numel : 1, osz, "tensor");
    if (!out->data)
        return CP_ENOMEM;
    if (numel == 0)
        return CP_OK;
    const uint8_t *first = sd->data + (size_t)base * (size_t)es;
    int nd = t->ndim;
    int64_t idx[CP_WMAX_DIMS] = {0};
    int64_t inner = nd ? t->size[nd - 1] : 1, istride = nd ? t->stride[nd - 1] : 0;
    for (size_t o = 0; o < numel;) {
        int64_t pos = base;
        for (int d = 0; d < nd - 1; d++)
            pos += idx[d] * t->stride[d];
        if (sd->t == ST_F32 && istride == 1) {
            memcpy((float *)out->data + o, sd->data + (size_t)pos * 4, (size_t)inner * 4);
        } else {
            for (int64_t j = 0; j < inner; j++)
                convert(sd->t, sd->data + (size_t)(pos + j * istride) * (size_t)es, out->data, o + (size_t)j);
        }
        o += (size_t)inner;
        for (int d = nd - 2; d >= 0; d--) {
            if (++idx[d] < t->size[d])
                break;
            idx[d] = 0;
        }
    }
    drop_pages(f, first, (size_t)(last - base + 1) * (size_t)es);
    if (f->bf16_min && out->dtype == CP_W_F32 && numel >= f->bf16_min)
        return to_bf16(out);
    return CP_OK;
}

void cp_weights_free(cp_weights *w)
{
    if (!w)
        return;
    for (size_t k = 0; k < w->n; k++) {
        free(w->t[k].name);
        free(w->t[k].data);
    }
    free(w->t);
    free(w);
}

const cp_wtensor *cp_weights_get(const cp_weights *w, const char *name)
{
    for (size_t k = 0; w && k < w->n; k++)
        if (!strcmp(w->t[k].name, name))
            return &w->t[k];
    return NULL;
}

/* Find (or register) the storage record for a key. */
static sdata *sdata_find(sdata *sd, size_t n, const uint8_t *key, size_t kl)
{
    for (size_t k = 0; k < n; k++)
        if (sd[k].klen == kl && !memcmp(sd[k].key, key, kl))
            return &sd[k];
    return NULL;
}

/* Walk the state dict: collect the storages its tensors use. */
static int collect_storages(const char *path, const obj *dict, sdata **out, size_t *nout)
{
    size_t nt = dict->n / 2;
    sdata *sd = cp_calloc(nt ? nt : 1, sizeof *sd, "storage table");
    if (!sd)
        return CP_ENOMEM;
    size_t n = 0;
    for (size_t k = 0; k < nt; k++) {
        const obj *key = dict->items[2 * k], *v = dict->items[2 * k + 1];
        if (key->type != O_STR || v->type != O_TENSOR) {
            free(sd);
            return cp_error(CP_EFORMAT, "%s: not a state dict (entry %zu is not a named tensor)", path, k);
        }
        const obj *s = v->storage;
        sdata *e = sdata_find(sd, n, s->s, s->slen);
        if (!e) {
            e = &sd[n++];
            e->key = s->s;
            e->klen = s->slen;
            e->t = (stype)s->i;
            e->numel = -1;
        } else if (e->t != (stype)s->i) {
            free(sd);
            return cp_error(CP_EFORMAT, "%s: storage used with two element types", path);
        }
    }
    *out = sd;
    *nout = n;
    return CP_OK;
}

static int build_weights(const char *path, const obj *dict, sdata *sd, size_t nsd, const mapped *f,
                         cp_weights *w)
{
    size_t nt = dict->n / 2;
    w->t = cp_calloc(nt ? nt : 1, sizeof *w->t, "tensor list");
    if (!w->t)
        return CP_ENOMEM;
    for (size_t k = 0; k < nt; k++) {
        const obj *key = dict->items[2 * k], *v = dict->items[2 * k + 1];
        size_t kl = key->slen;
        const uint8_t *ks = key->s;
        if (kl > 7 && !memcmp(ks, "module.", 7)) {
            ks += 7;
            kl -= 7;
        }
        char *name = cp_malloc(kl + 1, "key");
        if (!name)
            return CP_ENOMEM;
        memcpy(name, ks, kl);
        name[kl] = 0;
        if (strlen(name) != kl) {
            free(name);
            return cp_error(CP_EFORMAT, "%s: key with a NUL byte", path);
        }
        if (cp_weights_get(w, name)) {
            int rc = cp_error(CP_EFORMAT, "%s: key '%s' appears twice", path, name);
            free(name);
            return rc;
        }
        cp_wtensor *t = &w->t[w->n++];
        t->name = name;
        const sdata *s = sdata_find(sd, nsd, v->storage->s, v->storage->slen);
        if (v->storage->view_offset > s->numel || v->storage->numel > s->numel - v->storage->view_offset)
            return cp_error(CP_EFORMAT, "%s: tensor '%s': storage view outside its storage", path, name);
        sdata view = *s;
        view.numel = v->storage->view_offset + v->storage->numel;
        int rc = gather(path, name, v, &view, t, f);
        if (rc)
            return rc;
    }
    return CP_OK;
}

static int load_zip(const char *path, const mapped *f, unpickler *u, cp_weights *w)
{
    zip z = {0};
    sdata *sd = NULL;
    size_t nsd = 0;
    int rc = zip_open(path, f, &z);
    if (rc)
        goto done;
    const zentry *pk = NULL;
    for (size_t k = 0; k < z.n; k++) {
        const zentry *e = &z.e[k];
        const uint8_t *slash = memchr(e->name, '/', e->nlen);
        if (slash && (size_t)(e->name + e->nlen - slash) == 9 && !memcmp(slash, "/data.pkl", 9)) {
            pk = e;
            break;
        }
    }
    if (!pk) {
        rc = cp_error(CP_EFORMAT, "%s: zip file without <dir>/data.pkl: not a torch.save file", path);
        goto done;
    }
    size_t pl = pk->nlen - 8; /* prefix including the '/' */
    const zentry *bo = zip_find(&z, pk->name, pl, "byteorder", (const uint8_t *)"", 0);
    if (bo && !(bo->size == 6 && !memcmp(bo->data, "little", 6))) {
        rc = cp_error(CP_EUNSUPPORTED, "%s: big-endian tensors are not supported", path);
        goto done;
    }
    if ((rc = zip_check_crc(path, pk)))
        goto done;
    u->p = pk->data;
    u->end = pk->data + pk->size;
    obj *top;
    if ((rc = unpickle(u, &top)))
        goto done;
    if (top->type != O_DICT) {
        rc = cp_error(CP_EFORMAT, "%s: not a state dict (the pickle holds no dict)", path);
        goto done;
    }
    if ((rc = collect_storages(path, top, &sd, &nsd)))
        goto done;
    for (size_t k = 0; k < nsd; k++) {
        const zentry *e = zip_find(&z, pk->name, pl, "data/", sd[k].key, sd[k].klen);
        if (!e) {
            rc = cp_error(CP_EFORMAT, "%s: storage '%.*s' missing from the zip", path,
                          (int)(sd[k].klen > 100 ? 100 : sd[k].klen), (const char *)sd[k].key);
            goto done;
        }
        if ((rc = zip_check_crc(path, e)))
            goto done;
        drop_pages(f, e->data, e->size);
        sd[k].data = e->data;
        sd[k].numel = (int64_t)(e->size / (uint64_t)stype_size(sd[k].t));
    }
    rc = build_weights(path, top, sd, nsd, f, w);
done:
    free(z.e);
    free(sd);
    return rc;
}

static int load_legacy(const char *path, const mapped *f, unpickler *u, cp_weights *w)
{
    static const uint8_t magic[10] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
    sdata *sd = NULL;
    size_t nsd = 0;
    u->p = f->p;
    u->end = f->p + f->n;
    obj *o, *top, *keys;
    int rc = unpickle(u, &o);
    if (rc)
        return rc;
    if (o->type != O_BIGINT || o->slen != 10 || memcmp(o->s, magic, 10))
        return cp_error(CP_EFORMAT, "%s: not a torch.save file (neither zip nor the legacy "
                        "magic number)", path);
    if ((rc = unpickle(u, &o)))
        return rc;
    if (o->type != O_INT || o->i != 1001)
        return cp_error(CP_EUNSUPPORTED, "%s: legacy torch.save protocol %lld (expected 1001)",
                        path, o->type == O_INT ? (long long)o->i : -1LL);
    if ((rc = unpickle(u, &o))) /* sys info */
        return rc;
    for (size_t k = 0; o->type == O_DICT && k + 1 < o->n; k += 2)
        if (str_eq(o->items[k], "little_endian") && o->items[k + 1]->type == O_BOOL && !o->items[k + 1]->i)
            return cp_error(CP_EUNSUPPORTED, "%s: big-endian tensors are not supported", path);
    if ((rc = unpickle(u, &top)))
        return rc;
    if (top->type != O_DICT)
        return cp_error(CP_EFORMAT, "%s: not a state dict (the pickle holds no dict)", path);
    if ((rc = unpickle(u, &keys)))
        return rc;
    if (keys->type != O_LIST)
        return cp_error(CP_EFORMAT, "%s: legacy storage key list missing", path);
    if ((rc = collect_storages(path, top, &sd, &nsd)))
        return rc;
    const uint8_t *p = u->p, *end = f->p + f->n;
    for (size_t k = 0; k < keys->n; k++) {
        const obj *key = keys->items[k];
        if (key->type != O_STR) {
            rc = bad(u, "storage key is not a string");
            goto done;
        }
        sdata *s = sdata_find(sd, nsd, key->s, key->slen);
        if (end - p < 8) {
            rc = cp_error(CP_EFORMAT, "%s: truncated (storage %zu of %zu missing)", path, k + 1, keys->n);
            goto done;
        }
        uint64_t cnt = rd64(p);
        p += 8;
        int es = s ? stype_size(s->t) : 0;
        if (!s) {
            rc = cp_error(CP_EFORMAT, "%s: storage key list names a storage no tensor uses", path);
            goto done;
        }
        if (cnt > (uint64_t)(end - p) / (uint64_t)es) {
            rc = cp_error(CP_EFORMAT, "%s: truncated (storage %zu of %zu extends past the end)",
                          path, k + 1, keys->n);
            goto done;
        }
        s->data = p;
        s->numel = (int64_t)cnt;
        p += cnt * (uint64_t)es;
    }
    for (size_t k = 0; k < nsd; k++)
        if (sd[k].numel < 0) {
            rc = cp_error(CP_EFORMAT, "%s: storage '%.*s' has no data", path,
                          (int)(sd[k].klen > 100 ? 100 : sd[k].klen), (const char *)sd[k].key);
            goto done;
        }
    rc = build_weights(path, top, sd, nsd, f, w);
    w->legacy = 1;
done:
    free(sd);
    return rc;
}

typedef struct hash_job {
    const mapped *f;
    cp_sha256 h;
} hash_job;

static void *hash_file(void *arg)
{
    hash_job *j = arg;
    cp_sha256_init(&j->h);
    for (size_t k = 0, step = (size_t)16 << 20; k < j->f->n; k += step) {
        size_t m = j->f->n - k < step ? j->f->n - k : step;
        cp_sha256_update(&j->h, j->f->p + k, m);
        drop_pages(j->f, j->f->p + k, m);
    }
    return NULL;
}

static int load_mapped(const mapped *fp, const char *name, cp_weights **out)
{
    const mapped f = *fp;
    *out = NULL;
    if (!f.n)
        return cp_error(CP_EFORMAT, "%s: empty file, not a torch.save file", name);
    cp_weights *w = cp_calloc(1, sizeof *w, "weights");
    if (!w)
        return CP_ENOMEM;
    /* The checksum of a large file (sequential, 1 GB/s) is computed on a
     * second thread while the file is parsed and copied (ViT-L: 1.2 s of a
     * 3.3 s load). Both sides drop the pages they are done with, so only
     * pages in use by either stay mapped. */
    hash_job job = {&f, {{0}, 0, {0}, 0}};
    pthread_t th;
    int threaded = f.n >= ((size_t)16 << 20) && pthread_create(&th, NULL, hash_file, &job) == 0;
    if (!threaded)
        hash_file(&job);
    unpickler u = {.path = name, .budget = 64 * (size_t)f.n + (1u << 20)};
    int rc;
    if (f.n >= 4 && rd32(f.p) == 0x04034b50)
        rc = load_zip(name, &f, &u, w);
    else if (f.p[0] == 0x80)
        rc = load_legacy(name, &f, &u, w);
    else
        rc = cp_error(CP_EFORMAT, "%s: not a torch.save file (neither zip nor pickle)", name);
    free_objs(u.all);
    free(u.stack);
    free(u.marks);
    free(u.memo);
    if (threaded)
        pthread_join(th, NULL);
    cp_sha256_hex(&job.h, w->sha256);
    if (rc) {
        cp_weights_free(w);
        return rc;
    }
    *out = w;
    return CP_OK;
}

int cp_weights_load_mem(const void *data, size_t n, const char *name, cp_weights **out)
{
    mapped f = {data, n, 0, 0};
    return load_mapped(&f, name, out);
}

int cp_weights_load_bf16(const char *path, size_t bf16_min, cp_weights **out)
{
    *out = NULL;
    size_t nb;
    const void *bytes = cp_builtin_model_bytes(path, &nb);
    if (bytes) { /* a model compiled into the library */
        mapped f = {bytes, nb, 0, bf16_min};
        return load_mapped(&f, path, out);
    }
    mapped f = {0};
    int rc = map_file(path, "a torch.save file", &f);
    if (rc)
        return rc;
    f.drop = 1;
    f.bf16_min = bf16_min;
    rc = load_mapped(&f, path, out);
    munmap((void *)f.p, f.n);
    return rc;
}

int cp_weights_load(const char *path, cp_weights **out) { return cp_weights_load_bf16(path, 0, out); }

/* ---- Cellpose 3 size files -------------------------------------------- */

static const obj *dict_get(const obj *d, const char *key)
{
    for (size_t k = 0; k + 1 < d->n; k += 2)
        if (str_eq(d->items[k], key))
            return d->items[k + 1];
    return NULL;
}

/* A Python float or int, or a 0-d float numpy array (a numpy scalar). */
static int number_of(const obj *o, double *v)
{
    if (o->type == O_FLOAT || o->type == O_INT) {
        *v = o->type == O_FLOAT ? o->f : (double)o->i;
        return 1;
    }
    if (o->type != O_NDARRAY || o->ndim != 0 || o->dtype->i != 'f')
        return 0;
    if (o->dtype->numel == 4) {
        float f;
        memcpy(&f, o->s, 4);
        *v = f;
    } else {
        memcpy(v, o->s, 8);
    }
    return 1;
}

static int size_dict(const char *path, const obj *d, cp_size_model *sm)
{
    const obj *A = dict_get(d, "A"), *sme = dict_get(d, "smean"), *dm = dict_get(d, "diam_mean"),
              *ym = dict_get(d, "ymean");
    const char *missing = !A ? "A" : !sme ? "smean" : !dm ? "diam_mean" : !ym ? "ymean" : NULL;
    if (missing)
        return cp_error(CP_EFORMAT, "%s: not a Cellpose size model: no '%s' in the dict", path, missing);
    if (A->type != O_NDARRAY || A->ndim != 1 || A->dtype->i != 'f')
        return cp_error(CP_EFORMAT, "%s: size model 'A' is not a 1-d float array", path);
    if (sme->type != O_NDARRAY || sme->ndim != 1 || sme->dtype->i != 'f' || sme->dtype->numel != 4)
        return cp_error(CP_EFORMAT, "%s: size model 'smean' is not a 1-d float32 array", path);
    /* styles are 256 long; anything far beyond is not a size model */
    if (A->size[0] != sme->size[0] || A->size[0] < 1 || A->size[0] > 65536)
        return cp_error(CP_EFORMAT, "%s: size model 'A' (%lld) and 'smean' (%lld) differ in length or are empty",
                        path, (long long)A->size[0], (long long)sme->size[0]);
    double ymean;
    if (!number_of(dm, &sm->diam_mean) || !number_of(ym, &ymean))
        return cp_error(CP_EFORMAT, "%s: size model 'diam_mean' or 'ymean' is not a number", path);
    if (!(sm->diam_mean > 0) || isinf(sm->diam_mean) || !isfinite(ymean))
        return cp_error(CP_EFORMAT, "%s: size model with diam_mean %g and ymean %g: not a size model", path,
                        sm->diam_mean, ymean);
    sm->ymean = (float)ymean; /* exact: float32 in Cellpose's files */
    size_t n = (size_t)A->size[0];
    sm->nstyle = (int)n;
    sm->A = cp_malloc_array(n, sizeof *sm->A, "size model");
    sm->smean = cp_malloc_array(n, sizeof *sm->smean, "size model");
    if (!sm->A || !sm->smean)
        return CP_ENOMEM;
    memcpy(sm->smean, sme->s, n * sizeof *sm->smean);
    if (A->dtype->numel == 8) {
        memcpy(sm->A, A->s, n * sizeof *sm->A);
    } else {
        for (size_t k = 0; k < n; k++) {
            float f;
            memcpy(&f, A->s + 4 * k, 4);
            sm->A[k] = f;
        }
    }
    for (size_t k = 0; k < n; k++)
        if (!isfinite(sm->A[k]) || !isfinite(sm->smean[k]))
            return cp_error(CP_EFORMAT, "%s: size model with a non-finite value in 'A' or 'smean'", path);
    return CP_OK;
}

static int size_model_load_mem(const char *path, const uint8_t *p, size_t n, cp_size_model *sm)
{
    size_t off;
    unpickler u = {.path = path, .budget = 64 * n + (1u << 20), .numpy = 1};
    obj *top;
    int rc = cp_npy_pickle_offset(path, p, n, &off);
    if (!rc) {
        u.p = p + off;
        u.end = p + n;
        rc = unpickle(&u, &top);
    }
    if (!rc) {
        if (top->type != O_NDARRAY || top->ndim != 0 || top->dtype->i != 'O' || top->objs->n != 1 ||
            top->objs->items[0]->type != O_DICT)
            rc = cp_error(CP_EFORMAT, "%s: not a Cellpose size model (the pickle holds no dict)", path);
        else
            rc = size_dict(path, top->objs->items[0], sm);
    }
    free_objs(u.all);
    free(u.stack);
    free(u.marks);
    free(u.memo);
    return rc;
}

int cp_size_model_load(const char *path, cp_size_model **out)
{
    *out = NULL;
    cp_size_model *sm = cp_calloc(1, sizeof *sm, "size model");
    if (!sm)
        return CP_ENOMEM;
    size_t nb;
    const void *bytes = cp_builtin_size_bytes(path, &nb);
    int rc;
    if (bytes) { /* the built-in model's, compiled into the library */
        rc = size_model_load_mem(path, bytes, nb, sm);
    } else {
        mapped f = {0};
        rc = map_file(path, "a Cellpose size file", &f);
        if (!rc) {
            rc = size_model_load_mem(path, f.p, f.n, sm);
            munmap((void *)f.p, f.n);
        }
    }
    if (rc) {
        cp_size_model_free(sm);
        return rc;
    }
    *out = sm;
    return CP_OK;
}

void cp_size_model_free(cp_size_model *sm)
{
    if (!sm)
        return;
    free(sm->A);
    free(sm->smean);
    free(sm);
}

/* ---- building and writing --------------------------------------------- */

int cp_weights_new(cp_weights **out)
{
    *out = cp_calloc(1, sizeof **out, "weights");
    return *out ? CP_OK : CP_ENOMEM;
}

int cp_weights_add(cp_weights *w, const char *name, int ndim, const int64_t *shape,
                   cp_wdtype dtype, const void *data)
{
    if (ndim < 0 || ndim > CP_WMAX_DIMS || (dtype != CP_W_F32 && dtype != CP_W_I64))
        return cp_error(CP_EINVAL, "tensor '%s': bad rank or type", name);
    if (cp_weights_get(w, name))
        return cp_error(CP_EINVAL, "tensor '%s' added twice", name);
    size_t numel = 1;
    for (int d = 0; d < ndim; d++)
        if (shape[d] < 0 || cp_mul_overflow(numel, (size_t)shape[d], &numel))
            return cp_error(CP_EINVAL, "tensor '%s': bad shape", name);
    cp_wtensor *t = realloc(w->t, (w->n + 1) * sizeof *t);
    if (!t)
        return cp_error(CP_ENOMEM, "out of memory");
    w->t = t;
    t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    size_t bytes;
    if (cp_mul_overflow(numel, dtype == CP_W_F32 ? 4 : 8, &bytes))
        return cp_error(CP_EINVAL, "tensor '%s': too large", name);
    t->name = cp_strdup(name);
    t->data = cp_malloc(bytes, "tensor");
    if (!t->name || !t->data) {
        free(t->name);
        free(t->data);
        return CP_ENOMEM;
    }
    memcpy(t->data, data, bytes);
    t->ndim = ndim;
    t->dtype = dtype;
    t->numel = numel;
    int64_t st = 1;
    for (int d = ndim - 1; d >= 0; d--) {
        t->shape[d] = shape[d];
        t->stride[d] = st;
        st *= shape[d] ? shape[d] : 1;
    }
    t->storage_numel = (int64_t)numel;
    w->n++;
    return CP_OK;
}

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
    int oom;
} buf;

static void put(buf *b, const void *d, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n > b->cap) {
        size_t nc = b->cap ? b->cap : 4096;
        while (nc < b->n + n)
            nc *= 2;
        uint8_t *q = realloc(b->p, nc);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = nc;
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void put1(buf *b, uint8_t v) { put(b, &v, 1); }
static void put_str(buf *b, const char *s) { put(b, s, strlen(s)); }
static void put16(buf *b, unsigned v) { uint8_t x[2] = {(uint8_t)v, (uint8_t)(v >> 8)}; put(b, x, 2); }
static void put32(buf *b, uint32_t v) { put16(b, v & 0xffff); put16(b, v >> 16); }

static void pk_int(buf *b, int64_t v)
{
    if (v >= INT32_MIN && v <= INT32_MAX) {
        put1(b, 'J');
        put32(b, (uint32_t)(int32_t)v);
    } else {
        put1(b, 0x8a);
        put1(b, 8);
        put32(b, (uint32_t)((uint64_t)v & 0xffffffffu));
        put32(b, (uint32_t)((uint64_t)v >> 32));
    }
}

static void pk_str(buf *b, const char *s)
{
    put1(b, 'X');
    put32(b, (uint32_t)strlen(s));
    put_str(b, s);
}

/* The pickle torch.save writes for an OrderedDict of tensors (protocol 2). */
static int write_pickle(const cp_weights *w, buf *b)
{
    put(b, "\x80\x02", 2);
    put_str(b, "ccollections\nOrderedDict\n)R(");
    for (size_t k = 0; k < w->n; k++) {
        const cp_wtensor *t = &w->t[k];
        char key[32];
        snprintf(key, sizeof key, "%zu", k);
        pk_str(b, t->name);
        put_str(b, "ctorch._utils\n_rebuild_tensor_v2\n(");
        put1(b, '(');
        pk_str(b, "storage");
        put_str(b, t->dtype == CP_W_F32 ? "ctorch\nFloatStorage\n" : "ctorch\nLongStorage\n");
        pk_str(b, key);
        pk_str(b, "cpu");
        pk_int(b, (int64_t)t->numel);
        put_str(b, "tQ");
        pk_int(b, 0);
        put1(b, '(');
        for (int d = 0; d < t->ndim; d++)
            pk_int(b, t->shape[d]);
        put1(b, 't');
        put1(b, '(');
        int64_t st = 1, sts[CP_WMAX_DIMS];
        for (int d = t->ndim - 1; d >= 0; d--) {
            sts[d] = st;
            st *= t->shape[d] ? t->shape[d] : 1;
        }
        for (int d = 0; d < t->ndim; d++)
            pk_int(b, sts[d]);
        put1(b, 't');
        put1(b, 0x89);
        put_str(b, "ccollections\nOrderedDict\n)R");
        put_str(b, "tR");
    }
    put_str(b, "u.");
    return b->oom ? cp_error(CP_ENOMEM, "out of memory writing a state dict") : CP_OK;
}

typedef struct zout {
    cp_atomic *a;
    uint64_t off;
    buf cd;
    size_t count;
    int err;
} zout;

static void zwrite(zout *z, const void *d, size_t n)
{
    if (!z->err && n && fwrite(d, 1, n, z->a->fp) != n)
        z->err = 1;
    z->off += n;
}

/* One stored entry whose data starts on a 64-byte boundary, as torch does. */
static void zentry_put(zout *z, const char *name, const void *data, size_t n)
{
    size_t nl = strlen(name);
    uint32_t crc = (uint32_t)crc32(0L, Z_NULL, 0);
    for (size_t done = 0; done < n;) {
        uInt k = n - done > (1u << 30) ? (1u << 30) : (uInt)(n - done);
        crc = (uint32_t)crc32(crc, (const Bytef *)data + done, k);
        done += k;
    }
    int z64 = n >= 0xffffffffu || z->off >= 0xffffffffu;
    size_t hdr = 30 + nl + (z64 ? 20 : 0);
    size_t pad = (64 - (z->off + hdr + 4) % 64) % 64;
    buf h = {0};
    put32(&h, 0x04034b50); put16(&h, z64 ? 45 : 20); put16(&h, 0); put16(&h, 0);
    put16(&h, 0); put16(&h, 0x21); put32(&h, crc);
    put32(&h, z64 ? 0xffffffffu : (uint32_t)n); put32(&h, z64 ? 0xffffffffu : (uint32_t)n);
    put16(&h, (unsigned)nl); put16(&h, (unsigned)((z64 ? 20 : 0) + 4 + pad));
    put_str(&h, name);
    if (z64) {
        put16(&h, 1); put16(&h, 16);
        put32(&h, (uint32_t)n); put32(&h, (uint32_t)((uint64_t)n >> 32));
        put32(&h, (uint32_t)n); put32(&h, (uint32_t)((uint64_t)n >> 32));
    }
    put16(&h, 0x4246); put16(&h, (unsigned)pad); /* "FB" padding field, like torch */
    for (size_t i = 0; i < pad; i++)
        put1(&h, 'Z');
    uint64_t loff = z->off;
    if (h.oom)
        z->err = 1;
    zwrite(z, h.p, h.n);
    free(h.p);
    zwrite(z, data, n);
    int c64 = z64 || loff >= 0xffffffffu;
    buf *c = &z->cd;
    put32(c, 0x02014b50); put16(c, c64 ? 45 : 20); put16(c, c64 ? 45 : 20); put16(c, 0);
    put16(c, 0); put16(c, 0); put16(c, 0x21); put32(c, crc);
    put32(c, c64 ? 0xffffffffu : (uint32_t)n); put32(c, c64 ? 0xffffffffu : (uint32_t)n);
    put16(c, (unsigned)nl); put16(c, c64 ? 28 : 0); put16(c, 0); put16(c, 0); put16(c, 0);
    put32(c, 0); put32(c, c64 ? 0xffffffffu : (uint32_t)loff);
    put_str(c, name);
    if (c64) {
        put16(c, 1); put16(c, 24);
        put32(c, (uint32_t)n); put32(c, (uint32_t)((uint64_t)n >> 32));
        put32(c, (uint32_t)n); put32(c, (uint32_t)((uint64_t)n >> 32));
        put32(c, (uint32_t)loff); put32(c, (uint32_t)(loff >> 32));
    }
    z->count++;
}

int cp_weights_save(const cp_weights *w, const char *path)
{
    for (size_t k = 0; k < w->n; k++)
        if (w->t[k].dtype != CP_W_F32 && w->t[k].dtype != CP_W_I64)
            return cp_error(CP_EINVAL, "%s: tensor '%s' was loaded as bf16 for inference and cannot be "
                            "saved", path, w->t[k].name);
    buf pk = {0};
    int rc = write_pickle(w, &pk);
    if (rc) {
        free(pk.p);
        return rc;
    }
    cp_atomic a;
    if ((rc = cp_atomic_open(&a, path))) {
        free(pk.p);
        return rc;
    }
    zout z = {.a = &a};
    zentry_put(&z, "archive/data.pkl", pk.p, pk.n);
    free(pk.p);
    zentry_put(&z, "archive/byteorder", "little", 6);
    for (size_t k = 0; k < w->n; k++) {
        char name[48];
        snprintf(name, sizeof name, "archive/data/%zu", k);
        zentry_put(&z, name, w->t[k].data, w->t[k].numel * (w->t[k].dtype == CP_W_F32 ? 4 : 8));
    }
    zentry_put(&z, "archive/version", "3\n", 2);
    uint64_t cdoff = z.off, cdsize = z.cd.n;
    zwrite(&z, z.cd.p, z.cd.n);
    buf e = {0};
    int big = cdoff >= 0xffffffffu || z.count >= 0xffff;
    if (big) {
        uint64_t z64off = z.off;
        put32(&e, 0x06064b50); put32(&e, 44); put32(&e, 0); put32(&e, 45 | 45u << 16);
        put32(&e, 0); put32(&e, 0);
        put32(&e, (uint32_t)z.count); put32(&e, 0); put32(&e, (uint32_t)z.count); put32(&e, 0);
        put32(&e, (uint32_t)cdsize); put32(&e, (uint32_t)(cdsize >> 32));
        put32(&e, (uint32_t)cdoff); put32(&e, (uint32_t)(cdoff >> 32));
        put32(&e, 0x07064b50); put32(&e, 0);
        put32(&e, (uint32_t)z64off); put32(&e, (uint32_t)(z64off >> 32)); put32(&e, 1);
    }
    put32(&e, 0x06054b50); put16(&e, 0); put16(&e, 0);
    put16(&e, big ? 0xffff : (unsigned)z.count); put16(&e, big ? 0xffff : (unsigned)z.count);
    put32(&e, big ? 0xffffffffu : (uint32_t)cdsize); put32(&e, big ? 0xffffffffu : (uint32_t)cdoff);
    put16(&e, 0);
    zwrite(&z, e.p, e.n);
    int oom = e.oom || z.cd.oom;
    free(e.p);
    free(z.cd.p);
    if (z.err || oom) {
        cp_atomic_abort(&a);
        return oom ? cp_error(CP_ENOMEM, "%s: out of memory", path)
                   : cp_error(CP_EIO, "%s: write failed: %s", path, strerror(errno));
    }
    return cp_atomic_commit(&a);
}

/* ---- writing size files ------------------------------------------------ */

/* A literal that may hold NUL bytes. */
#define PUTL(b, lit) put(b, lit, sizeof(lit) - 1)

/* The pickler's memo: objects numpy 1.24 pickles once and then refers to. */
static void pk_put(buf *b, int *memo)
{
    int k = (*memo)++;
    if (k < 256) {
        put1(b, 'q');
        put1(b, (uint8_t)k);
    } else {
        put1(b, 'r');
        put32(b, (uint32_t)k);
    }
}
static void pk_get(buf *b, int k) { put1(b, 'h'); put1(b, (uint8_t)k); } /* memo < 256 here */
static void pk_uint(buf *b, uint32_t v) /* pickle's save_long for 0 <= v < 2^31 */
{
    if (v < 256) {
        put1(b, 'K');
        put1(b, (uint8_t)v);
    } else if (v < 65536) {
        put1(b, 'M');
        put16(b, v);
    } else {
        put1(b, 'J');
        put32(b, v);
    }
}
static void pk_bytes(buf *b, const void *d, size_t n)
{
    if (n < 256) {
        put1(b, 'C');
        put1(b, (uint8_t)n);
    } else {
        put1(b, 'B');
        put32(b, (uint32_t)n);
    }
    put(b, d, n);
}
static void pk_unicode(buf *b, const char *s, int *memo)
{
    pk_str(b, s);
    pk_put(b, memo);
}

/* ndarray.__reduce__ of a 1-d little-endian float array:
 * _reconstruct(ndarray, (0,), b'b') then BUILD (1, shape, dtype, False, raw).
 * *dtype_memo: memo slot of this dtype (and *lt of the '<' string), or -1
 * the first time, when they are pickled and memoised. */
static void pk_array(buf *b, int *memo, const char *descr, const void *data, size_t n, size_t isz, int *dtype_memo,
                     int *lt)
{
    pk_get(b, 0);
    pk_get(b, 1);
    PUTL(b, "K\x00\x85");
    pk_put(b, memo);
    pk_get(b, 3);
    put1(b, 0x87);
    pk_put(b, memo);
    put1(b, 'R');
    pk_put(b, memo);
    put1(b, '(');
    pk_uint(b, 1);
    pk_uint(b, (uint32_t)n);
    put1(b, 0x85);
    pk_put(b, memo);
    if (*dtype_memo >= 0) {
        pk_get(b, *dtype_memo);
    } else {
        pk_get(b, 6);
        pk_unicode(b, descr, memo);
        PUTL(b, "\x89\x88\x87");
        pk_put(b, memo);
        put1(b, 'R');
        *dtype_memo = *memo;
        pk_put(b, memo);
        put1(b, '(');
        pk_uint(b, 3);
        if (*lt >= 0) {
            pk_get(b, *lt);
        } else {
            *lt = *memo;
            pk_unicode(b, "<", memo);
        }
        PUTL(b, "NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t");
        pk_put(b, memo);
        put1(b, 'b');
    }
    put1(b, 0x89);
    pk_bytes(b, data, n * isz);
    pk_put(b, memo);
    put1(b, 't');
    pk_put(b, memo);
    put1(b, 'b');
}

/* np.save(path, dict): a 0-d object array whose one element is the dict. */
static void size_pickle(const cp_size_model *sm, buf *b)
{
    int memo = 0, f8 = -1, f4 = -1, lt = -1;
    PUTL(b, "\x80\x03" "cnumpy.core.multiarray\n_reconstruct\n");
    pk_put(b, &memo); /* 0 */
    PUTL(b, "cnumpy\nndarray\n");
    pk_put(b, &memo); /* 1 */
    PUTL(b, "K\x00\x85");
    pk_put(b, &memo); /* 2: (0,) */
    pk_bytes(b, "b", 1);
    pk_put(b, &memo); /* 3: b'b' */
    put1(b, 0x87);
    pk_put(b, &memo);
    put1(b, 'R');
    pk_put(b, &memo);
    PUTL(b, "(K\x01)cnumpy\ndtype\n");
    pk_put(b, &memo); /* 6: numpy.dtype */
    pk_unicode(b, "O8", &memo);
    PUTL(b, "\x89\x88\x87");
    pk_put(b, &memo);
    put1(b, 'R');
    pk_put(b, &memo);
    PUTL(b, "(K\x03");
    pk_unicode(b, "|", &memo);
    PUTL(b, "NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x3ft");
    pk_put(b, &memo);
    PUTL(b, "b\x89]");
    pk_put(b, &memo);
    put1(b, '}');
    pk_put(b, &memo);
    put1(b, '(');
    pk_unicode(b, "A", &memo);
    pk_array(b, &memo, "f8", sm->A, (size_t)sm->nstyle, 8, &f8, &lt);
    pk_unicode(b, "smean", &memo);
    pk_array(b, &memo, "f4", sm->smean, (size_t)sm->nstyle, 4, &f4, &lt);
    pk_unicode(b, "diam_mean", &memo);
    uint64_t dm;
    memcpy(&dm, &sm->diam_mean, 8);
    put1(b, 'G'); /* BINFLOAT: big-endian double */
    for (int k = 7; k >= 0; k--)
        put1(b, (uint8_t)(dm >> (8 * k)));
    pk_unicode(b, "ymean", &memo);
    PUTL(b, "cnumpy.core.multiarray\nscalar\n");
    pk_put(b, &memo);
    pk_get(b, f4); /* the float32 dtype of smean */
    pk_bytes(b, &sm->ymean, 4);
    pk_put(b, &memo);
    put1(b, 0x86);
    pk_put(b, &memo);
    put1(b, 'R');
    pk_put(b, &memo);
    PUTL(b, "uat");
    pk_put(b, &memo);
    PUTL(b, "b.");
}

int cp_size_model_save(const cp_size_model *sm, const char *path)
{
    if (!sm || sm->nstyle < 1 || sm->nstyle > 65536 || !sm->A || !sm->smean)
        return cp_error(CP_EINVAL, "%s: not a size model to save", path);
    buf b = {0};
    size_pickle(sm, &b);
    int rc = b.oom ? cp_error(CP_ENOMEM, "%s: out of memory", path) : cp_npy_write_pickle(path, b.p, b.n);
    free(b.p);
    return rc;
}
