/* A restricted reader for pandas DataFrame pickles (protocols 2-5).
 *
 * The pickle runs on the shared restricted VM (core/pickle.h) with this
 * reader's list of globals: numpy's array, dtype and scalar reconstructors
 * (modelled by the VM) and the frame, BlockManager, Index, slice and block
 * reconstructors of pandas 1.5/2.x, modelled here; any other global is an
 * error and nothing is ever called or executed. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/table.h"
#include "core/internal.h"
#include "core/pickle.h"
#include "table/table_internal.h"

enum { K_SLICE = PK_USER, K_BLOCK, K_INDEX, K_BM, K_DF };

enum { G_SLICE = PK_G_USER, G_NEW_INDEX, G_INDEX, G_RANGEINDEX, G_BM, G_DF, G_BLOCK };

static const pk_global GLOBALS[] = {
    PK_NUMPY_GLOBALS,
    {"_codecs", "encode", PK_G_ENCODE},
    {"builtins", "slice", G_SLICE},
    {"__builtin__", "slice", G_SLICE},
    {"pandas.core.indexes.base", "_new_Index", G_NEW_INDEX},
    {"pandas.core.indexes.base", "Index", G_INDEX},
    {"pandas.core.indexes.numeric", "Int64Index", G_INDEX},
    {"pandas.core.indexes.numeric", "UInt64Index", G_INDEX},
    {"pandas.core.indexes.numeric", "Float64Index", G_INDEX},
    {"pandas.core.indexes.range", "RangeIndex", G_RANGEINDEX},
    {"pandas.core.internals.managers", "BlockManager", G_BM},
    {"pandas.core.frame", "DataFrame", G_DF},
    {"pandas._libs.internals", "_unpickle_block", G_BLOCK},
    {"pandas.core.internals.blocks", "new_block", G_BLOCK},
};

typedef struct pslice {
    int64_t start, stop, step;
} pslice;

/* BLOCK: (values, placement); BM: (blocks, axes) */
typedef struct ppair {
    const pk_val *a, *b;
} ppair;

typedef struct pindex {
    int64_t len;
    const pk_val *data; /* NULL: a RangeIndex */
} pindex;

typedef struct pframe {
    const pk_val *mgr;
} pframe;

#define FAIL(...) return pk_fail(m, CP_EFORMAT, __VA_ARGS__)

static int is_tuple(const pk_val *v) { return v->kind == PK_TUPLE || v->kind == PK_LIST; }

/* v becomes (or is made) a value of kind k with a zeroed record of size bytes. */
static void *model(pk_vm *m, pk_val *v, int k, size_t size)
{
    void *r = pk_alloc(m, size);
    if (r) {
        v->kind = (uint8_t)k;
        v->x = r;
    }
    return r;
}

static int pair(pk_vm *m, pk_val *v, int k, const pk_val *a, const pk_val *b)
{
    ppair *r = model(m, v, k, sizeof *r);
    if (!r)
        return m->err;
    r->a = a;
    r->b = b;
    return CP_OK;
}

static int slice_of(pk_vm *m, const pk_val *args, pslice *s)
{
    int64_t v[3] = {0, 0, 1};
    uint32_t n = args->ni;
    for (uint32_t k = 0; k < n && k < 3; k++)
        if (args->items[k]->kind != PK_NONE && !pk_int(args->items[k], &v[k]))
            FAIL("bad slice in pickle");
    if (n == 1) {
        v[1] = v[0];
        v[0] = 0;
    }
    for (int k = 0; k < 3; k++)
        if (v[k] > (1ll << 40) || v[k] < -(1ll << 40))
            FAIL("slice out of range in pickle");
    s->start = v[0];
    s->stop = v[1];
    s->step = v[2];
    return CP_OK;
}

/* _new_Index(cls, {"data": array, ...}) or a RangeIndex's {"start", "stop", "step"} */
static int index_of(pk_vm *m, const pk_val *args, pindex *o)
{
    if (args->ni < 2 || args->items[0]->kind != PK_GLOBAL || args->items[1]->kind != PK_DICT)
        FAIL("bad pandas Index in pickle");
    const pk_val *d = args->items[1];
    int range = args->items[0]->i == G_RANGEINDEX;
    if (!range && args->items[0]->i != G_INDEX)
        FAIL("unsupported pandas Index class in pickle");
    if (!range) {
        const pk_val *a = pk_get(d, "data");
        if (!a || a->kind != PK_ARRAY || !a->dkind || a->ndim != 1)
            FAIL("pandas Index without data in pickle");
        o->data = a;
        o->len = a->shape[0];
        return CP_OK;
    }
    int64_t rg[3] = {0, 0, 1};
    for (int j = 0; j < 3; j++) {
        const pk_val *v = pk_get(d, (const char *[]){"start", "stop", "step"}[j]);
        if (v && !pk_int(v, &rg[j]))
            FAIL("bad RangeIndex in pickle");
        if (rg[j] > (1ll << 50) || rg[j] < -(1ll << 50))
            FAIL("RangeIndex out of range in pickle");
    }
    if (rg[2] == 0)
        FAIL("RangeIndex with step 0 in pickle");
    int64_t len = rg[2] > 0 ? (rg[1] - rg[0] + rg[2] - 1) / rg[2] : (rg[0] - rg[1] - rg[2] - 1) / -rg[2];
    o->len = len < 0 ? 0 : len;
    if (o->len > ((int64_t)(m->end - m->base) + 16) * 8)
        FAIL("RangeIndex longer than the file allows in pickle");
    return CP_OK;
}

static int frame_reduce(pk_vm *m, const pk_val *fn, const pk_val *args, int newobj, pk_val **out)
{
    pk_val *o = *out = pk_new(m, PK_NONE);
    if (!o)
        return m->err;
    int64_t g = fn->i;
    if (newobj) {
        if (g != G_DF && g != G_BM)
            FAIL("pickle creates an object of a class it may not");
        return model(m, o, g == G_DF ? K_DF : K_BM, g == G_DF ? sizeof(pframe) : sizeof(ppair)) ? CP_OK
                                                                                              : m->err;
    }
    switch (g) {
    case G_SLICE: {
        pslice *s = model(m, o, K_SLICE, sizeof *s);
        return s ? slice_of(m, args, s) : m->err;
    }
    case G_NEW_INDEX: {
        pindex *x = model(m, o, K_INDEX, sizeof *x);
        return x ? index_of(m, args, x) : m->err;
    }
    case G_BLOCK:
        if (args->ni < 2)
            FAIL("bad pandas block in pickle");
        return pair(m, o, K_BLOCK, args->items[0], args->items[1]);
    case G_BM:
        if (args->ni < 2 || !is_tuple(args->items[0]) || !is_tuple(args->items[1]))
            FAIL("bad pandas BlockManager in pickle");
        return pair(m, o, K_BM, args->items[0], args->items[1]);
    default:
        FAIL("pickle calls a class it may not");
    }
}

/* BlockManager state of older pandas: (axes, values, items, {"0.14.1": {"axes", "blocks"}}). */
static int bm_state(pk_vm *m, ppair *bm, const pk_val *st)
{
    const pk_val *d = is_tuple(st) && st->ni >= 4 ? pk_get(st->items[3], "0.14.1") : NULL;
    const pk_val *axes = d ? pk_get(d, "axes") : NULL, *blocks = d ? pk_get(d, "blocks") : NULL;
    if (!axes || !blocks || !is_tuple(blocks))
        FAIL("unsupported pandas BlockManager state in pickle");
    /* each block is a dict {values, mgr_locs}: model it as a block */
    for (uint32_t b = 0; b < blocks->ni; b++) {
        pk_val *bd = blocks->items[b];
        const pk_val *vals = bd->kind == PK_DICT ? pk_get(bd, "values") : NULL;
        const pk_val *locs = bd->kind == PK_DICT ? pk_get(bd, "mgr_locs") : NULL;
        if (!vals || !locs)
            FAIL("bad pandas block state in pickle");
        int rc = pair(m, bd, K_BLOCK, vals, locs);
        if (rc)
            return rc;
    }
    bm->a = blocks;
    bm->b = axes;
    return CP_OK;
}

static int frame_build(pk_vm *m, pk_val *t, const pk_val *st)
{
    if (t->kind == K_BM)
        return bm_state(m, t->x, st);
    if (t->kind != K_DF)
        FAIL("pickle sets the state of an object it may not");
    if (st->kind != PK_DICT)
        FAIL("bad DataFrame state in pickle");
    for (uint32_t k = 0; k + 1 < st->ni; k += 2)
        if ((pk_str_is(st->items[k], "_mgr") || pk_str_is(st->items[k], "_data")) &&
            st->items[k + 1]->kind == K_BM)
            ((pframe *)t->x)->mgr = st->items[k + 1];
    return CP_OK;
}

static const pk_caller frame_caller = {
    GLOBALS, sizeof GLOBALS / sizeof *GLOBALS,
    "pandas DataFrames of numeric, bool and object columns only", "a pandas DataFrame pickle", 0,
    frame_reduce, frame_build, NULL,
};

/* ---- the frame ------------------------------------------------------------ */

typedef struct pcol {
    const pk_val *arr; /* block values */
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

static int index_name(pk_vm *m, const pindex *idx, int64_t k, char *buf, size_t cap)
{
    const pk_val *arr = idx->data;
    pk_val num;
    if (arr->dkind == 'O') {
        const pk_val *e = ((const pk_val *)arr->x)->items[k];
        if (e->kind == PK_STR) {
            if (e->n >= cap || memchr(e->s, '\n', e->n) || memchr(e->s, '\r', e->n) || memchr(e->s, 0, e->n))
                FAIL("column name too long or with control characters in pickle");
            memcpy(buf, e->s, e->n);
            buf[e->n] = '\0';
            return CP_OK;
        }
        if (e->kind == PK_INT) {
            snprintf(buf, cap, "%lld", (long long)e->i);
            return CP_OK;
        }
    } else if (arr->dkind == 'i' && arr->dsize == 8 && pk_elem(arr, (size_t)k, &num)) {
        snprintf(buf, cap, "%lld", (long long)num.i);
        return CP_OK;
    }
    FAIL("unsupported column name type in pickle");
}

/* The block array of pandas: 1-d, or 2-d (columns x rows). */
static int block_array(const pk_val *a) { return a->kind == PK_ARRAY && a->dkind && a->ndim >= 1 && a->ndim <= 2; }

/* Column c of block row j, from the block's placement. */
static int placement(pk_vm *m, const pk_val *loc, int64_t j, int64_t k, int64_t *c)
{
    pk_val num;
    if (loc->kind == K_SLICE) {
        const pslice *s = loc->x;
        *c = s->start + j * s->step;
    } else if (loc->kind == PK_ARRAY && (loc->dkind == 'i' || loc->dkind == 'u') && loc->dsize == 8 &&
               loc->ndim == 1 && j < loc->shape[0] && pk_elem(loc, (size_t)j, &num)) {
        *c = num.i;
    } else if (!pk_int(loc, c) || k != 1) {
        FAIL("bad pandas block placement in pickle");
    }
    return CP_OK;
}

static int get_frame(pk_vm *m, const pk_val *top, frame *f)
{
    memset(f, 0, sizeof *f);
    const pk_val *bm = top->kind == K_DF ? ((const pframe *)top->x)->mgr : NULL;
    if (!bm)
        FAIL("the pickle does not hold a pandas DataFrame");
    const pk_val *blocks = ((const ppair *)bm->x)->a, *axes = ((const ppair *)bm->x)->b;
    if (!blocks || !is_tuple(blocks) || !is_tuple(axes) || axes->ni != 2 || axes->items[0]->kind != K_INDEX ||
        axes->items[1]->kind != K_INDEX)
        FAIL("unsupported DataFrame layout in pickle");
    const pindex *cidx = axes->items[0]->x;
    if (!cidx->data)
        FAIL("DataFrame columns without names in pickle");
    int64_t ncols = cidx->len;
    f->nrows = ((const pindex *)axes->items[1]->x)->len;
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
        const pk_val *blk = blocks->items[b];
        if (blk->kind != K_BLOCK)
            FAIL("unsupported pandas block in pickle");
        const pk_val *arr = ((const ppair *)blk->x)->a, *loc = ((const ppair *)blk->x)->b;
        if (!block_array(arr))
            FAIL("pandas block without a numpy array of 1 or 2 dimensions in pickle (extension dtypes are "
                 "not supported)");
        int64_t k = arr->ndim == 2 ? arr->shape[0] : 1, n = arr->ndim == 2 ? arr->shape[1] : arr->shape[0];
        if (n != f->nrows)
            FAIL("pandas block of %lld rows in a frame of %lld", (long long)n, (long long)f->nrows);
        for (int64_t j = 0; j < k; j++) {
            int64_t c;
            int rc = placement(m, loc, j, k, &c);
            if (rc)
                return rc;
            if (c < 0 || c >= ncols || f->cols[c].arr)
                FAIL("pandas block placement out of range in pickle");
            f->cols[c].arr = arr;
            f->cols[c].row = j;
        }
    }
    for (int64_t k = 0; k < ncols; k++)
        if (!f->cols[k].arr)
            FAIL("column '%s' has no data in pickle", f->names.items[k]);
    return CP_OK;
}

static int vm_load(pk_vm *m, const char *path, const cp_fmap *fm, frame *f)
{
    memset(f, 0, sizeof *f);
    pk_init(m, path, &frame_caller, fm->p, fm->n, PK_BUDGET(fm->n));
    pk_val *top;
    int rc = pk_run(m, &top);
    if (!rc)
        rc = get_frame(m, top, f);
    return rc;
}

/* Element (row r) of column c's array. */
static size_t elem_index(const pcol *c, int64_t r)
{
    const pk_val *a = c->arr;
    if (a->ndim == 1)
        return (size_t)r;
    return a->fortran ? (size_t)(r * a->shape[0] + c->row) : (size_t)(c->row * a->shape[1] + r);
}

static int native_type(const pcol *c)
{
    const pk_val *a = c->arr;
    if (a->dkind == 'b')
        return CP_SCOL_BOOL;
    if (a->dkind != 'O')
        return CP_SCOL_F32;
    const pk_val *l = a->x;
    int64_t n = a->ndim == 2 ? a->shape[1] : a->shape[0];
    for (int64_t r = 0; r < n; r++) {
        const pk_val *e = l->items[elem_index(c, r)];
        if (e->kind == PK_STR || e->kind == PK_BYTES)
            return CP_SCOL_STR;
        if (e->kind == PK_BOOL)
            return CP_SCOL_BOOL;
        if (e->kind == PK_INT || (e->kind == PK_FLOAT && !isnan(e->f)))
            return CP_SCOL_F32;
    }
    return CP_SCOL_STR;
}

static int put_cell(const pcol *c, int64_t r, cp_scol *d, size_t cap, size_t row)
{
    const pk_val *a = c->arr, *e = NULL;
    pk_val num;
    size_t i = elem_index(c, r);
    if (a->dkind == 'O')
        e = ((const pk_val *)a->x)->items[i];
    else if (pk_elem(a, i, &num))
        e = &num;
    switch (e ? e->kind : PK_BIGINT) {
    case PK_NONE: return cp_sput_null(d, cap, row);
    case PK_STR:
    case PK_BYTES: return cp_sput_str(d, cap, row, (const char *)e->s, e->n);
    case PK_BOOL: return cp_sput_bool(d, cap, row, (int)e->i);
    case PK_INT: return cp_sput_i64(d, cap, row, e->i);
    case PK_FLOAT: return cp_sput_f64(d, cap, row, e->f);
    default: return -1;
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
    pk_vm m;
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
                                                                   native_type(&f.cols[sel[k]])));
        if (!rc)
            rc = cp_stable_reserve(out, keep);
    }
    for (int k = 0; k < nsel && !rc; k++) {
        size_t row = 0;
        for (int64_t r = 0; r < f.nrows && !rc; r++) {
            if (o->row_mask && !((size_t)r < o->mask_rows && (o->row_mask[r >> 6] >> (r & 63) & 1)))
                continue;
            int e = put_cell(&f.cols[sel[k]], r, &out->cols[k], out->cap, row++);
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
    pk_free(&m);
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
    pk_vm m;
    frame f;
    rc = vm_load(&m, path, &fm, &f);
    for (size_t i = 0; !rc && i < f.names.n; i++)
        rc = cp_strlist_push(names, f.names.items[i]);
    frame_free(&f);
    pk_free(&m);
    cp_fmap_close(&fm);
    return rc;
}

static int pkl_match(const char *path)
{
    size_t n = strlen(path);
    return n > 4 && (!strcmp(path + n - 4, ".pkl") || (n > 7 && !strcmp(path + n - 7, ".pickle")));
}

const cp_table_reader cp_pickle_reader = {"pickle", pkl_match, pkl_read, pkl_header};
