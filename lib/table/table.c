/* The compact column store: dictionaries, typed columns, append and gather. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/table.h"
#include "core/internal.h"
#include "table/table_internal.h"

static uint32_t hash_bytes(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

static int dict_rehash(cp_sdict *d, uint32_t nslots)
{
    int32_t *slots = cp_malloc_array(nslots, sizeof *slots, "string dictionary");
    if (!slots)
        return CP_ENOMEM;
    for (uint32_t i = 0; i < nslots; i++)
        slots[i] = -1;
    for (int32_t c = 0; c < d->n; c++) {
        uint32_t h = hash_bytes(d->s[c], strlen(d->s[c])) & (nslots - 1);
        while (slots[h] >= 0)
            h = (h + 1) & (nslots - 1);
        slots[h] = c;
    }
    free(d->slots);
    d->slots = slots;
    d->nslots = nslots;
    return CP_OK;
}

static int32_t dict_lookup(const cp_sdict *d, const char *s, size_t len, uint32_t *slot)
{
    if (!d->nslots)
        return -1;
    len = strnlen(s, len); /* entries are C strings; see cp_sdict_intern */
    uint32_t h = hash_bytes(s, len) & (d->nslots - 1);
    for (;;) {
        int32_t c = d->slots[h];
        if (c < 0) {
            if (slot)
                *slot = h;
            return -1;
        }
        if (strncmp(d->s[c], s, len) == 0 && d->s[c][len] == '\0')
            return c;
        h = (h + 1) & (d->nslots - 1);
    }
}

int cp_sdict_intern(cp_sdict *d, const char *s, size_t len, int32_t *code)
{
    /* an embedded NUL ends the string, as everywhere the entry is used later
       (and rehashing with strlen must find the same slot) */
    len = strnlen(s, len);
    int32_t c = dict_lookup(d, s, len, NULL);
    if (c >= 0) {
        *code = c;
        return CP_OK;
    }
    if ((uint32_t)(d->n + 1) * 2 > d->nslots) {
        int rc = dict_rehash(d, d->nslots ? d->nslots * 2 : 16);
        if (rc)
            return rc;
    }
    if (d->n == d->cap) {
        int32_t cap = d->cap ? d->cap * 2 : 16;
        char **ns = realloc(d->s, (size_t)cap * sizeof *ns);
        if (!ns)
            return cp_error(CP_ENOMEM, "out of memory (string dictionary)");
        d->s = ns;
        d->cap = cap;
    }
    char *copy = cp_malloc(len + 1, "string dictionary");
    if (!copy)
        return CP_ENOMEM;
    memcpy(copy, s, len);
    copy[len] = '\0';
    uint32_t slot;
    dict_lookup(d, s, len, &slot);
    d->slots[slot] = d->n;
    d->s[d->n] = copy;
    *code = d->n++;
    return CP_OK;
}

int32_t cp_sdict_find(const cp_sdict *d, const char *s) { return dict_lookup(d, s, strlen(s), NULL); }

void cp_sdict_free(cp_sdict *d)
{
    for (int32_t i = 0; i < d->n; i++)
        free(d->s[i]);
    free(d->s);
    free(d->slots);
    memset(d, 0, sizeof *d);
}

size_t cp_scol_elem_size(cp_scol_type t)
{
    switch (t) {
    case CP_SCOL_STR: case CP_SCOL_I32: case CP_SCOL_F32: return 4;
    case CP_SCOL_I8: return 1;
    case CP_SCOL_BOOL: return 0;
    case CP_SCOL_I64: case CP_SCOL_F64: return 8;
    }
    return 0;
}

static size_t bytes_for(cp_scol_type t, size_t n) { return t == CP_SCOL_BOOL ? (n + 7) / 8 : n * cp_scol_elem_size(t); }

int cp_scol_is_null(const cp_scol *c, size_t i)
{
    if (c->type == CP_SCOL_STR)
        return ((const int32_t *)c->v)[i] < 0;
    if (c->type == CP_SCOL_F32)
        return isnan(((const float *)c->v)[i]);
    if (c->type == CP_SCOL_F64)
        return isnan(((const double *)c->v)[i]);
    return c->nulls && (c->nulls[i >> 3] >> (i & 7) & 1);
}

/* Only for types with a bitmap; capacity comes from the owning table. */
int cp_scol_null_bitmap(cp_scol *c, size_t cap)
{
    if (c->nulls)
        return CP_OK;
    c->nulls = cp_calloc((cap + 7) / 8 + 1, 1, "null bitmap");
    return c->nulls ? CP_OK : CP_ENOMEM;
}

void cp_scol_set_null(cp_scol *c, size_t i)
{
    switch (c->type) {
    case CP_SCOL_STR: ((int32_t *)c->v)[i] = -1; return;
    case CP_SCOL_F32: ((float *)c->v)[i] = NAN; return;
    case CP_SCOL_F64: ((double *)c->v)[i] = NAN; return;
    default: break;
    }
    if (c->nulls)
        c->nulls[i >> 3] |= (uint8_t)(1u << (i & 7));
}

int cp_scol_get_bool(const cp_scol *c, size_t i)
{
    if (c->type == CP_SCOL_BOOL)
        return !cp_scol_is_null(c, i) && (((const uint8_t *)c->v)[i >> 3] >> (i & 7) & 1);
    double v = cp_scol_num(c, i);
    return !isnan(v) && v != 0;
}

void cp_scol_set_bool(cp_scol *c, size_t i, int v)
{
    uint8_t *b = c->v;
    if (v)
        b[i >> 3] |= (uint8_t)(1u << (i & 7));
    else
        b[i >> 3] &= (uint8_t)~(1u << (i & 7));
}

double cp_scol_num(const cp_scol *c, size_t i)
{
    if (cp_scol_is_null(c, i))
        return NAN;
    switch (c->type) {
    case CP_SCOL_I32: return ((const int32_t *)c->v)[i];
    case CP_SCOL_I8: return ((const int8_t *)c->v)[i];
    case CP_SCOL_BOOL: return cp_scol_get_bool(c, i);
    case CP_SCOL_F32: return ((const float *)c->v)[i];
    case CP_SCOL_I64: return (double)((const int64_t *)c->v)[i];
    case CP_SCOL_F64: return ((const double *)c->v)[i];
    case CP_SCOL_STR: break;
    }
    return NAN;
}

const char *cp_scol_str(const cp_scol *c, size_t i)
{
    if (c->type != CP_SCOL_STR)
        return NULL;
    int32_t code = ((const int32_t *)c->v)[i];
    return code < 0 ? NULL : c->dict.s[code];
}

static void col_free(cp_scol *c)
{
    free(c->name);
    free(c->v);
    free(c->nulls);
    cp_sdict_free(&c->dict);
}

void cp_stable_free(cp_stable *t)
{
    for (int i = 0; i < t->ncols; i++)
        col_free(&t->cols[i]);
    free(t->cols);
    memset(t, 0, sizeof *t);
}

int cp_stable_find(const cp_stable *t, const char *name)
{
    for (int i = 0; i < t->ncols; i++)
        if (strcmp(t->cols[i].name, name) == 0)
            return i;
    return -1;
}

/* Grow one column's arrays from old capacity to cap (new bytes zeroed). */
static int col_grow(cp_scol *c, size_t old, size_t cap)
{
    size_t ob = bytes_for(c->type, old), nb = bytes_for(c->type, cap) + 8;
    void *v = realloc(c->v, nb);
    if (!v)
        return cp_error(CP_ENOMEM, "out of memory (column %s, %zu rows)", c->name, cap);
    memset((char *)v + ob, 0, nb - ob);
    c->v = v;
    if (c->nulls) {
        size_t onb = (old + 7) / 8 + 1, nnb = (cap + 7) / 8 + 1;
        uint8_t *nl = realloc(c->nulls, nnb);
        if (!nl)
            return cp_error(CP_ENOMEM, "out of memory (null bitmap)");
        memset(nl + onb, 0, nnb - onb);
        c->nulls = nl;
    }
    return CP_OK;
}

int cp_stable_reserve(cp_stable *t, size_t n)
{
    if (n <= t->cap && t->cap)
        return CP_OK;
    size_t cap = t->cap ? t->cap : 1024;
    while (cap < n)
        cap += cap / 2 + 1024;
    for (int i = 0; i < t->ncols; i++) {
        int rc = col_grow(&t->cols[i], t->cap, cap);
        if (rc)
            return rc;
    }
    t->cap = cap;
    return CP_OK;
}

int cp_stable_add_col(cp_stable *t, const char *name, cp_scol_type type)
{
    cp_scol *nc = realloc(t->cols, (size_t)(t->ncols + 1) * sizeof *nc);
    if (!nc)
        return cp_error(CP_ENOMEM, "out of memory (columns)");
    t->cols = nc;
    cp_scol *c = &t->cols[t->ncols];
    memset(c, 0, sizeof *c);
    c->name = cp_strdup(name);
    c->type = type;
    if (!c->name)
        return CP_ENOMEM;
    if (!t->cap)
        t->cap = 16;
    t->ncols++;
    int rc = col_grow(c, 0, t->cap);
    if (rc)
        return rc;
    for (size_t i = 0; i < t->nrows; i++) {
        if (type != CP_SCOL_STR && type != CP_SCOL_F32 && type != CP_SCOL_F64 && !c->nulls &&
            cp_scol_null_bitmap(c, t->cap))
            return CP_ENOMEM;
        cp_scol_set_null(c, i);
    }
    return CP_OK;
}

/* Copy one cell from src row i into dst row j (same type). */
static int copy_cell(cp_scol *dst, size_t j, const cp_scol *src, size_t i, const int32_t *remap, size_t cap)
{
    if (cp_scol_is_null(src, i)) {
        if (dst->type != CP_SCOL_STR && dst->type != CP_SCOL_F32 && dst->type != CP_SCOL_F64 &&
            cp_scol_null_bitmap(dst, cap))
            return CP_ENOMEM;
        cp_scol_set_null(dst, j);
        return CP_OK;
    }
    switch (src->type) {
    case CP_SCOL_STR: {
        int32_t code = ((const int32_t *)src->v)[i];
        ((int32_t *)dst->v)[j] = remap ? remap[code] : code;
        break;
    }
    case CP_SCOL_BOOL: cp_scol_set_bool(dst, j, cp_scol_get_bool(src, i)); break;
    default: {
        size_t es = cp_scol_elem_size(src->type);
        memcpy((char *)dst->v + j * es, (const char *)src->v + i * es, es);
    }
    }
    return CP_OK;
}

static int32_t *dict_remap(cp_sdict *dst, const cp_sdict *src)
{
    int32_t *m = cp_malloc_array((size_t)src->n + 1, sizeof *m, "dictionary remap");
    if (!m)
        return NULL;
    for (int32_t k = 0; k < src->n; k++)
        if (cp_sdict_intern(dst, src->s[k], strlen(src->s[k]), &m[k])) {
            free(m);
            return NULL;
        }
    return m;
}

int cp_stable_append(cp_stable *dst, cp_stable *src)
{
    if (dst->ncols == 0 && dst->nrows == 0) {
        *dst = *src;
        memset(src, 0, sizeof *src);
        return CP_OK;
    }
    if (dst->ncols != src->ncols)
        return cp_error(CP_EFORMAT, "tables to concatenate have different columns");
    int map[1024];
    if (src->ncols > 1024)
        return cp_error(CP_ELIMIT, "too many columns");
    for (int k = 0; k < src->ncols; k++) {
        map[k] = cp_stable_find(dst, src->cols[k].name);
        if (map[k] < 0 || dst->cols[map[k]].type != src->cols[k].type)
            return cp_error(CP_EFORMAT, "tables to concatenate differ in column %s", src->cols[k].name);
    }
    size_t n0 = dst->nrows;
    int rc = cp_stable_reserve(dst, n0 + src->nrows);
    if (rc)
        return rc;
    for (int k = 0; k < src->ncols; k++) {
        cp_scol *d = &dst->cols[map[k]], *s = &src->cols[k];
        int32_t *remap = NULL;
        if (s->type == CP_SCOL_STR && !(remap = dict_remap(&d->dict, &s->dict)))
            return CP_ENOMEM;
        for (size_t i = 0; i < src->nrows; i++)
            if ((rc = copy_cell(d, n0 + i, s, i, remap, dst->cap))) {
                free(remap);
                return rc;
            }
        free(remap);
    }
    dst->nrows = n0 + src->nrows;
    cp_stable_free(src);
    return CP_OK;
}

int cp_stable_gather(const cp_stable *src, const uint32_t *rows, size_t n, const int *cols, int ncols,
                     cp_stable *out)
{
    memset(out, 0, sizeof *out);
    int nc = cols ? ncols : src->ncols;
    int rc = CP_OK;
    for (int k = 0; k < nc && !rc; k++) {
        const cp_scol *s = &src->cols[cols ? cols[k] : k];
        rc = cp_stable_add_col(out, s->name, s->type);
    }
    if (!rc)
        rc = cp_stable_reserve(out, n);
    for (int k = 0; k < nc && !rc; k++) {
        const cp_scol *s = &src->cols[cols ? cols[k] : k];
        cp_scol *d = &out->cols[k];
        d->json_numbers = s->json_numbers;
        int32_t *remap = NULL;
        if (s->type == CP_SCOL_STR && !(remap = dict_remap(&d->dict, &s->dict))) {
            rc = CP_ENOMEM;
            break;
        }
        for (size_t i = 0; i < n && !rc; i++)
            rc = copy_cell(d, i, s, rows ? rows[i] : i, remap, out->cap);
        free(remap);
    }
    if (rc) {
        cp_stable_free(out);
        return rc;
    }
    out->nrows = n;
    return CP_OK;
}
