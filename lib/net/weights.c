/* torch.save state dicts: zip and legacy containers, read through the
 * restricted pickle VM (core/pickle.h) with only tensors modelled (the
 * rebuild function, OrderedDict and the torch storage types); and Cellpose 3
 * size files (np.save of a dict of numpy arrays), read through the same VM
 * with only numpy's rebuilders allowed. Any other global is refused and
 * nothing is ever called.
 *
 * Nothing in the file is trusted: every length is checked against the bytes
 * that remain and every allocation is bounded by the file size. */
#include <errno.h>
#include <math.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cellpose/models.h"
#include "cellpose/net.h"
#include "cellpose/zip.h"
#include "core/internal.h"
#include "core/pickle.h"
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

static int stype_size(stype t) { return (const int[]){4, 8, 2, 2, 8, 4, 2, 1, 1}[t]; }

static int stype_is_float(stype t) { return t == ST_F32 || t == ST_F64 || t == ST_F16 || t == ST_BF16; }

/* ---- the pickle's torch objects, modelled --------------------------------- */

enum { K_STORAGE = PK_USER, K_TENSOR };
enum { G_REBUILD = PK_G_USER, G_ODICT, G_STORAGE /* + stype */ };

static const pk_global torch_globals[] = {
    {"torch._utils", "_rebuild_tensor_v2", G_REBUILD}, {"collections", "OrderedDict", G_ODICT},
    {"torch", "FloatStorage", G_STORAGE + ST_F32}, {"torch", "DoubleStorage", G_STORAGE + ST_F64},
    {"torch", "HalfStorage", G_STORAGE + ST_F16}, {"torch", "BFloat16Storage", G_STORAGE + ST_BF16},
    {"torch", "LongStorage", G_STORAGE + ST_I64}, {"torch", "IntStorage", G_STORAGE + ST_I32},
    {"torch", "ShortStorage", G_STORAGE + ST_I16}, {"torch", "CharStorage", G_STORAGE + ST_I8},
    {"torch", "ByteStorage", G_STORAGE + ST_U8},
};

typedef struct storage {
    stype t;
    const uint8_t *key;         /* inside the file */
    size_t klen;
    int64_t numel, view_offset;
} storage;

typedef struct tensor {
    const storage *st;
    int64_t offset;
    int ndim;
    int64_t size[CP_WMAX_DIMS], stride[CP_WMAX_DIMS];
} tensor;

static int bad(pk_vm *m, const char *what) { return pk_fail(m, CP_EFORMAT, "corrupt pickle: %s", what); }

/* A caller record behind a new value of kind k. */
static void *new_rec(pk_vm *m, int k, size_t size, pk_val **out)
{
    void *r = pk_alloc(m, size);
    if (r && (*out = pk_new(m, k)))
        (*out)->x = r;
    return r && *out ? r : NULL;
}

/* ('storage', <StorageType>, key, location, numel[, view_metadata]) */
static int persistent_load(pk_vm *m, const pk_val *pid, pk_val **out)
{
    if (pid->kind != PK_TUPLE || pid->ni < 5 || pid->ni > 6 || !pk_str_is(pid->items[0], "storage"))
        return bad(m, "persistent id is not a storage record");
    const pk_val *ty = pid->items[1], *key = pid->items[2], *num = pid->items[4];
    if (ty->kind != PK_GLOBAL || ty->i < G_STORAGE)
        return bad(m, "persistent id without a storage type");
    if (key->kind != PK_STR)
        return bad(m, "storage key is not a string");
    if (num->kind != PK_INT || num->i < 0)
        return bad(m, "storage size is not a non-negative integer");
    storage *s = new_rec(m, K_STORAGE, sizeof *s, out);
    if (!s)
        return m->err;
    s->t = (stype)(ty->i - G_STORAGE);
    s->key = key->s;
    s->klen = key->n;
    s->numel = num->i;
    if (pid->ni == 6 && pid->items[5]->kind != PK_NONE) {
        const pk_val *v = pid->items[5];
        if (v->kind != PK_TUPLE || v->ni != 3 || v->items[1]->kind != PK_INT || v->items[2]->kind != PK_INT ||
            v->items[1]->i < 0 || v->items[2]->i < 0)
            return bad(m, "bad storage view record");
        s->view_offset = v->items[1]->i;
        s->numel = v->items[2]->i; /* the view's length; checked against the root later */
    }
    return CP_OK;
}

static int int_tuple(pk_vm *m, const pk_val *t, int64_t *dst, int *n)
{
    if (t->kind != PK_TUPLE)
        return bad(m, "tensor size/stride is not a tuple");
    if (t->ni > CP_WMAX_DIMS)
        return pk_fail(m, CP_EUNSUPPORTED, "tensor with %u dimensions (at most %d)", t->ni, CP_WMAX_DIMS);
    for (uint32_t k = 0; k < t->ni; k++) {
        if (t->items[k]->kind != PK_INT || t->items[k]->i < 0)
            return bad(m, "tensor size/stride entry is not a non-negative integer");
        dst[k] = t->items[k]->i;
    }
    *n = (int)t->ni;
    return CP_OK;
}

/* OrderedDict() and _rebuild_tensor_v2(storage, offset, size, stride, ...) */
static int torch_reduce(pk_vm *m, const pk_val *fn, const pk_val *args, int newobj, pk_val **out)
{
    if (newobj || fn->i >= G_STORAGE)
        return bad(m, "a storage type or class called as a function");
    if (fn->i == G_ODICT) {
        if (args->ni != 0)
            return bad(m, "OrderedDict built with arguments");
        return (*out = pk_new(m, PK_DICT)) ? CP_OK : m->err;
    }
    if (args->ni < 6 || args->ni > 7)
        return bad(m, "_rebuild_tensor_v2 with a wrong number of arguments");
    const pk_val *st = args->items[0], *off = args->items[1];
    if (st->kind != K_STORAGE)
        return bad(m, "tensor without a storage");
    if (off->kind != PK_INT || off->i < 0)
        return bad(m, "tensor storage offset is not a non-negative integer");
    tensor *t = new_rec(m, K_TENSOR, sizeof *t, out);
    if (!t)
        return m->err;
    int ns, nt, rc;
    if ((rc = int_tuple(m, args->items[2], t->size, &ns)) || (rc = int_tuple(m, args->items[3], t->stride, &nt)))
        return rc;
    if (ns != nt)
        return bad(m, "tensor size and stride differ in length");
    t->ndim = ns;
    t->st = st->x;
    t->offset = off->i;
    return CP_OK;
}

/* A state dict's BUILD (OrderedDict _metadata) is not needed. */
static int torch_build(pk_vm *m, pk_val *o, const pk_val *st)
{
    (void)m, (void)o, (void)st;
    return CP_OK;
}

static const pk_caller torch_caller = {
    torch_globals, sizeof torch_globals / sizeof *torch_globals,
    "only tensors: torch._utils._rebuild_tensor_v2, OrderedDict, torch storages", "a torch state dict", 1,
    torch_reduce, torch_build, persistent_load,
};

/* Cellpose 3 size files: a dict of numpy arrays and numbers. */
static const pk_global size_globals[] = {PK_NUMPY_GLOBALS};
static const pk_caller size_caller = {
    size_globals, sizeof size_globals / sizeof *size_globals, "only numpy arrays, dtypes and scalars",
    "a Cellpose size model", 1, NULL, NULL, NULL,
};
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
    if (cp_crc32(0, e->data, e->size) != e->crc)
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

static int gather(const char *path, const char *key, const tensor *t, const sdata *sd, cp_wtensor *out,
                  const mapped *f)
{
    size_t file_size = f->n;
    int es = stype_size(sd->t);
    size_t numel = 1;
    for (int d = 0; d < t->ndim; d++)
        if (cp_mul_overflow(numel, (size_t)t->size[d], &numel) || numel > file_size)
            return cp_error(CP_EFORMAT, "%s: tensor '%s' is larger than the file", path, key);
    int64_t base = t->st->view_offset + t->offset, last = base;
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
    out->storage_numel = t->st->numel;
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
static int collect_storages(const char *path, const pk_val *dict, sdata **out, size_t *nout)
{
    size_t nt = dict->ni / 2;
    sdata *sd = cp_calloc(nt ? nt : 1, sizeof *sd, "storage table");
    if (!sd)
        return CP_ENOMEM;
    size_t n = 0;
    for (size_t k = 0; k < nt; k++) {
        const pk_val *key = dict->items[2 * k], *v = dict->items[2 * k + 1];
        if (key->kind != PK_STR || v->kind != K_TENSOR) {
            free(sd);
            return cp_error(CP_EFORMAT, "%s: not a state dict (entry %zu is not a named tensor)", path, k);
        }
        const storage *s = ((const tensor *)v->x)->st;
        sdata *e = sdata_find(sd, n, s->key, s->klen);
        if (!e) {
            e = &sd[n++];
            e->key = s->key;
            e->klen = s->klen;
            e->t = s->t;
            e->numel = -1;
        } else if (e->t != s->t) {
            free(sd);
            return cp_error(CP_EFORMAT, "%s: storage used with two element types", path);
        }
    }
    *out = sd;
    *nout = n;
    return CP_OK;
}

static int build_weights(const char *path, const pk_val *dict, sdata *sd, size_t nsd, const mapped *f,
                         cp_weights *w)
{
    size_t nt = dict->ni / 2;
    w->t = cp_calloc(nt ? nt : 1, sizeof *w->t, "tensor list");
    if (!w->t)
        return CP_ENOMEM;
    for (size_t k = 0; k < nt; k++) {
        const pk_val *key = dict->items[2 * k];
        const tensor *v = dict->items[2 * k + 1]->x;
        size_t kl = key->n;
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
        const sdata *s = sdata_find(sd, nsd, v->st->key, v->st->klen);
        if (v->st->view_offset > s->numel || v->st->numel > s->numel - v->st->view_offset)
            return cp_error(CP_EFORMAT, "%s: tensor '%s': storage view outside its storage", path, name);
        sdata view = *s;
        view.numel = v->st->view_offset + v->st->numel;
        int rc = gather(path, name, v, &view, t, f);
        if (rc)
            return rc;
    }
    return CP_OK;
}

static int load_zip(const char *path, const mapped *f, pk_vm *m, cp_weights *w)
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
    pk_init(m, path, &torch_caller, pk->data, pk->size, PK_BUDGET(f->n));
    pk_val *top;
    if ((rc = pk_run(m, &top)))
        goto done;
    if (top->kind != PK_DICT) {
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

static int load_legacy(const char *path, const mapped *f, pk_vm *m, cp_weights *w)
{
    static const uint8_t magic[10] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
    sdata *sd = NULL;
    size_t nsd = 0;
    pk_init(m, path, &torch_caller, f->p, f->n, PK_BUDGET(f->n));
    pk_val *o, *top, *keys;
    int rc = pk_run(m, &o);
    if (rc)
        return rc;
    if (o->kind != PK_BIGINT || o->n != 10 || memcmp(o->s, magic, 10))
        return cp_error(CP_EFORMAT, "%s: not a torch.save file (neither zip nor the legacy "
                        "magic number)", path);
    if ((rc = pk_run(m, &o)))
        return rc;
    if (o->kind != PK_INT || o->i != 1001)
        return cp_error(CP_EUNSUPPORTED, "%s: legacy torch.save protocol %lld (expected 1001)",
                        path, o->kind == PK_INT ? (long long)o->i : -1LL);
    if ((rc = pk_run(m, &o))) /* sys info */
        return rc;
    const pk_val *le = pk_get(o, "little_endian");
    if (le && le->kind == PK_BOOL && !le->i)
            return cp_error(CP_EUNSUPPORTED, "%s: big-endian tensors are not supported", path);
    if ((rc = pk_run(m, &top)))
        return rc;
    if (top->kind != PK_DICT)
        return cp_error(CP_EFORMAT, "%s: not a state dict (the pickle holds no dict)", path);
    if ((rc = pk_run(m, &keys)))
        return rc;
    if (keys->kind != PK_LIST)
        return cp_error(CP_EFORMAT, "%s: legacy storage key list missing", path);
    if ((rc = collect_storages(path, top, &sd, &nsd)))
        return rc;
    const uint8_t *p = m->p, *end = f->p + f->n;
    for (size_t k = 0; k < keys->ni; k++) {
        const pk_val *key = keys->items[k];
        if (key->kind != PK_STR) {
            rc = bad(m, "storage key is not a string");
            goto done;
        }
        sdata *s = sdata_find(sd, nsd, key->s, key->n);
        if (end - p < 8) {
            rc = cp_error(CP_EFORMAT, "%s: truncated (storage %zu of %zu missing)", path, k + 1, (size_t)keys->ni);
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
                          path, k + 1, (size_t)keys->ni);
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
    pk_vm m = {0};
    int rc;
    if (f.n >= 4 && rd32(f.p) == 0x04034b50)
        rc = load_zip(name, &f, &m, w);
    else if (f.p[0] == 0x80)
        rc = load_legacy(name, &f, &m, w);
    else
        rc = cp_error(CP_EFORMAT, "%s: not a torch.save file (neither zip nor pickle)", name);
    pk_free(&m);
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

/* A Python float or int, or a 0-d float numpy array (a numpy scalar). */
static int number_of(const pk_val *o, double *v)
{
    if (o->kind == PK_FLOAT || o->kind == PK_INT) {
        *v = o->kind == PK_FLOAT ? o->f : (double)o->i;
        return 1;
    }
    if (o->kind != PK_ARRAY || o->ndim != 0 || o->dkind != 'f')
        return 0;
    if (o->dsize == 4) {
        float f;
        memcpy(&f, o->s, 4);
        *v = f;
    } else {
        memcpy(v, o->s, 8);
    }
    return 1;
}

static int size_dict(const char *path, const pk_val *d, cp_size_model *sm)
{
    const pk_val *A = pk_get(d, "A"), *sme = pk_get(d, "smean"), *dm = pk_get(d, "diam_mean"),
                 *ym = pk_get(d, "ymean");
    const char *missing = !A ? "A" : !sme ? "smean" : !dm ? "diam_mean" : !ym ? "ymean" : NULL;
    if (missing)
        return cp_error(CP_EFORMAT, "%s: not a Cellpose size model: no '%s' in the dict", path, missing);
    if (A->kind != PK_ARRAY || A->ndim != 1 || A->dkind != 'f')
        return cp_error(CP_EFORMAT, "%s: size model 'A' is not a 1-d float array", path);
    if (sme->kind != PK_ARRAY || sme->ndim != 1 || sme->dkind != 'f' || sme->dsize != 4)
        return cp_error(CP_EFORMAT, "%s: size model 'smean' is not a 1-d float32 array", path);
    /* styles are 256 long; anything far beyond is not a size model */
    if (A->shape[0] != sme->shape[0] || A->shape[0] < 1 || A->shape[0] > 65536)
        return cp_error(CP_EFORMAT, "%s: size model 'A' (%lld) and 'smean' (%lld) differ in length or are empty",
                        path, (long long)A->shape[0], (long long)sme->shape[0]);
    double ymean;
    if (!number_of(dm, &sm->diam_mean) || !number_of(ym, &ymean))
        return cp_error(CP_EFORMAT, "%s: size model 'diam_mean' or 'ymean' is not a number", path);
    if (!(sm->diam_mean > 0) || isinf(sm->diam_mean) || !isfinite(ymean))
        return cp_error(CP_EFORMAT, "%s: size model with diam_mean %g and ymean %g: not a size model", path,
                        sm->diam_mean, ymean);
    sm->ymean = (float)ymean; /* exact: float32 in Cellpose's files */
    size_t n = (size_t)A->shape[0];
    sm->nstyle = (int)n;
    sm->A = cp_malloc_array(n, sizeof *sm->A, "size model");
    sm->smean = cp_malloc_array(n, sizeof *sm->smean, "size model");
    if (!sm->A || !sm->smean)
        return CP_ENOMEM;
    memcpy(sm->smean, sme->s, n * sizeof *sm->smean);
    if (A->dsize == 8) {
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
    pk_vm m = {0};
    pk_val *top;
    int rc = cp_npy_pickle_offset(path, p, n, &off);
    if (!rc) {
        pk_init(&m, path, &size_caller, p + off, n - off, PK_BUDGET(n));
        rc = pk_run(&m, &top);
    }
    if (!rc) {
        const pk_val *objs = top->x;
        if (top->kind != PK_ARRAY || top->ndim != 0 || top->dkind != 'O' || objs->ni != 1 ||
            objs->items[0]->kind != PK_DICT)
            rc = cp_error(CP_EFORMAT, "%s: not a Cellpose size model (the pickle holds no dict)", path);
        else
            rc = size_dict(path, objs->items[0], sm);
    }
    pk_free(&m);
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

static void pw_int(buf *b, int64_t v)
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

static void pw_str(buf *b, const char *s)
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
        pw_str(b, t->name);
        put_str(b, "ctorch._utils\n_rebuild_tensor_v2\n(");
        put1(b, '(');
        pw_str(b, "storage");
        put_str(b, t->dtype == CP_W_F32 ? "ctorch\nFloatStorage\n" : "ctorch\nLongStorage\n");
        pw_str(b, key);
        pw_str(b, "cpu");
        pw_int(b, (int64_t)t->numel);
        put_str(b, "tQ");
        pw_int(b, 0);
        put1(b, '(');
        for (int d = 0; d < t->ndim; d++)
            pw_int(b, t->shape[d]);
        put1(b, 't');
        put1(b, '(');
        int64_t st = 1, sts[CP_WMAX_DIMS];
        for (int d = t->ndim - 1; d >= 0; d--) {
            sts[d] = st;
            st *= t->shape[d] ? t->shape[d] : 1;
        }
        for (int d = 0; d < t->ndim; d++)
            pw_int(b, sts[d]);
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
    uint32_t crc = cp_crc32(0, data, n);
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
static void pw_put(buf *b, int *memo)
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
static void pw_get(buf *b, int k) { put1(b, 'h'); put1(b, (uint8_t)k); } /* memo < 256 here */
static void pw_uint(buf *b, uint32_t v) /* pickle's save_long for 0 <= v < 2^31 */
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
static void pw_bytes(buf *b, const void *d, size_t n)
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
static void pw_unicode(buf *b, const char *s, int *memo)
{
    pw_str(b, s);
    pw_put(b, memo);
}

/* ndarray.__reduce__ of a 1-d little-endian float array:
 * _reconstruct(ndarray, (0,), b'b') then BUILD (1, shape, dtype, False, raw).
 * *dtype_memo: memo slot of this dtype (and *lt of the '<' string), or -1
 * the first time, when they are pickled and memoised. */
static void pw_array(buf *b, int *memo, const char *descr, const void *data, size_t n, size_t isz, int *dtype_memo,
                     int *lt)
{
    pw_get(b, 0);
    pw_get(b, 1);
    PUTL(b, "K\x00\x85");
    pw_put(b, memo);
    pw_get(b, 3);
    put1(b, 0x87);
    pw_put(b, memo);
    put1(b, 'R');
    pw_put(b, memo);
    put1(b, '(');
    pw_uint(b, 1);
    pw_uint(b, (uint32_t)n);
    put1(b, 0x85);
    pw_put(b, memo);
    if (*dtype_memo >= 0) {
        pw_get(b, *dtype_memo);
    } else {
        pw_get(b, 6);
        pw_unicode(b, descr, memo);
        PUTL(b, "\x89\x88\x87");
        pw_put(b, memo);
        put1(b, 'R');
        *dtype_memo = *memo;
        pw_put(b, memo);
        put1(b, '(');
        pw_uint(b, 3);
        if (*lt >= 0) {
            pw_get(b, *lt);
        } else {
            *lt = *memo;
            pw_unicode(b, "<", memo);
        }
        PUTL(b, "NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t");
        pw_put(b, memo);
        put1(b, 'b');
    }
    put1(b, 0x89);
    pw_bytes(b, data, n * isz);
    pw_put(b, memo);
    put1(b, 't');
    pw_put(b, memo);
    put1(b, 'b');
}

/* np.save(path, dict): a 0-d object array whose one element is the dict. */
static void size_pickle(const cp_size_model *sm, buf *b)
{
    int memo = 0, f8 = -1, f4 = -1, lt = -1;
    PUTL(b, "\x80\x03" "cnumpy.core.multiarray\n_reconstruct\n");
    pw_put(b, &memo); /* 0 */
    PUTL(b, "cnumpy\nndarray\n");
    pw_put(b, &memo); /* 1 */
    PUTL(b, "K\x00\x85");
    pw_put(b, &memo); /* 2: (0,) */
    pw_bytes(b, "b", 1);
    pw_put(b, &memo); /* 3: b'b' */
    put1(b, 0x87);
    pw_put(b, &memo);
    put1(b, 'R');
    pw_put(b, &memo);
    PUTL(b, "(K\x01)cnumpy\ndtype\n");
    pw_put(b, &memo); /* 6: numpy.dtype */
    pw_unicode(b, "O8", &memo);
    PUTL(b, "\x89\x88\x87");
    pw_put(b, &memo);
    put1(b, 'R');
    pw_put(b, &memo);
    PUTL(b, "(K\x03");
    pw_unicode(b, "|", &memo);
    PUTL(b, "NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x3ft");
    pw_put(b, &memo);
    PUTL(b, "b\x89]");
    pw_put(b, &memo);
    put1(b, '}');
    pw_put(b, &memo);
    put1(b, '(');
    pw_unicode(b, "A", &memo);
    pw_array(b, &memo, "f8", sm->A, (size_t)sm->nstyle, 8, &f8, &lt);
    pw_unicode(b, "smean", &memo);
    pw_array(b, &memo, "f4", sm->smean, (size_t)sm->nstyle, 4, &f4, &lt);
    pw_unicode(b, "diam_mean", &memo);
    uint64_t dm;
    memcpy(&dm, &sm->diam_mean, 8);
    put1(b, 'G'); /* BINFLOAT: big-endian double */
    for (int k = 7; k >= 0; k--)
        put1(b, (uint8_t)(dm >> (8 * k)));
    pw_unicode(b, "ymean", &memo);
    PUTL(b, "cnumpy.core.multiarray\nscalar\n");
    pw_put(b, &memo);
    pw_get(b, f4); /* the float32 dtype of smean */
    pw_bytes(b, &sm->ymean, 4);
    pw_put(b, &memo);
    put1(b, 0x86);
    pw_put(b, &memo);
    put1(b, 'R');
    pw_put(b, &memo);
    PUTL(b, "uat");
    pw_put(b, &memo);
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
