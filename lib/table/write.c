/* The table writer: CSV, TSV, JSON records and NDJSON, row by row or from
 * the column store; numbers round-trip exact. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/table.h"
#include "core/internal.h"
#include "table/table_internal.h"

int cp_table_format_parse(const char *name)
{
    static const char *names[] = {"csv", "tsv", "json", "ndjson", "parquet"};
    for (int i = 0; i < 5; i++)
        if (!strcmp(name, names[i]))
            return i;
    return -1;
}

static int looks_json_number(const char *s)
{
    double d;
    if (!*s || cp_parse_f64(s, strlen(s), &d) != 0 || !isfinite(d))
        return 0;
    /* JSON grammar: no leading '+', '.', or leading zeros like "01" */
    const char *p = s + (*s == '-');
    if (!(*p >= '0' && *p <= '9') || (p[0] == '0' && p[1] >= '0' && p[1] <= '9'))
        return 0;
    for (; *p; p++)
        if (!strchr("0123456789.eE+-", *p))
            return 0;
    return p[-1] != '.';
}

int cp_scol_format(const cp_scol *c, size_t row, int json, char *buf, size_t n)
{
    if (cp_scol_is_null(c, row))
        return snprintf(buf, n, "%s", json ? "null" : "");
    switch (c->type) {
    case CP_SCOL_STR: return snprintf(buf, n, "%s", cp_scol_str(c, row));
    case CP_SCOL_I32: return snprintf(buf, n, "%d", ((const int32_t *)c->v)[row]);
    case CP_SCOL_I8: return snprintf(buf, n, "%d", ((const int8_t *)c->v)[row]);
    case CP_SCOL_I64: return snprintf(buf, n, "%lld", (long long)((const int64_t *)c->v)[row]);
    case CP_SCOL_BOOL:
        return snprintf(buf, n, "%s", cp_scol_get_bool(c, row) ? (json ? "true" : "True") : (json ? "false" : "False"));
    case CP_SCOL_F32: {
        float v = ((const float *)c->v)[row];
        if (json && isinf(v))
            return snprintf(buf, n, "null");
        return cp_format_f32(buf, n, v);
    }
    case CP_SCOL_F64: {
        double v = ((const double *)c->v)[row];
        if (json && isinf(v))
            return snprintf(buf, n, "null");
        return cp_format_f64(buf, n, v);
    }
    }
    return snprintf(buf, n, "%s", "");
}

/* ---- the row writer ---------------------------------------------------- */

#define FLUSH_AT (1u << 16)

static int is_json(const cp_table_writer *w) { return w->fmt == CP_FMT_JSON || w->fmt == CP_FMT_NDJSON; }

static void put(cp_table_writer *w, const char *s, size_t n)
{
    if (w->err)
        return;
    if (w->len + n + 1 > w->cap) {
        size_t c = (w->len + n + 1) * 2 + 256;
        char *p = realloc(w->buf, c);
        if (!p) {
            w->err = cp_error(CP_ENOMEM, "out of memory writing a table");
            return;
        }
        w->buf = p;
        w->cap = c;
    }
    memcpy(w->buf + w->len, s, n);
    w->len += n;
    w->buf[w->len] = 0;
}

static void puts_(cp_table_writer *w, const char *s) { put(w, s, strlen(s)); }

static void flush(cp_table_writer *w)
{
    if (w->fp && w->len && !w->err) {
        if (fwrite(w->buf, 1, w->len, w->fp) != w->len)
            w->err = cp_error(CP_EIO, "write error");
        w->len = 0;
    }
}

static void json_string(cp_table_writer *w, const char *s, size_t n)
{
    put(w, "\"", 1);
    const char *run = s;
    for (const char *e = s + n; s < e; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch >= 0x20 && ch != '"' && ch != '\\')
            continue;
        put(w, run, (size_t)(s - run));
        run = s + 1;
        char esc[8];
        if (ch == '"' || ch == '\\')
            snprintf(esc, sizeof esc, "\\%c", ch);
        else if (ch == '\n' || ch == '\t' || ch == '\r')
            snprintf(esc, sizeof esc, "\\%c", ch == '\n' ? 'n' : ch == '\t' ? 't' : 'r');
        else
            snprintf(esc, sizeof esc, "\\u%04x", ch);
        puts_(w, esc);
    }
    put(w, run, (size_t)(s - run));
    put(w, "\"", 1);
}

/* A string field of CSV or TSV. */
static void text_field(cp_table_writer *w, const char *s)
{
    if (w->fmt == CP_FMT_CSV && strpbrk(s, ",\"\n\r")) {
        put(w, "\"", 1);
        for (const char *q; (q = strchr(s, '"')); s = q + 1)
            put(w, s, (size_t)(q - s + 1)), put(w, "\"", 1);
        puts_(w, s);
        put(w, "\"", 1);
    } else if (w->fmt == CP_FMT_TSV && strpbrk(s, "\t\n\r")) {
        for (; *s; s++)
            put(w, strchr("\t\n\r", *s) ? " " : s, 1);
    } else {
        puts_(w, s);
    }
}

/* Objects a JSON key opens ("a/b/c": 2); keys nest only when json_keys is
 * set, so a plain column name may hold '/'. */
static int key_depth(const cp_table_writer *w, const char *k)
{
    int d = 0;
    for (; w->json_keys && *k; k++)
        d += *k == '/';
    return d;
}

/* Objects two nested keys share ("x/y/z" and "x/y/w": x and y). */
static int shared_objects(const char *a, const char *b)
{
    int n = 0;
    for (;;) {
        const char *sa = strchr(a, '/'), *sb = strchr(b, '/');
        if (!sa || !sb || sa - a != sb - b || strncmp(a, b, (size_t)(sa - a)))
            return n;
        n++;
        a = sa + 1;
        b = sb + 1;
    }
}

static const char *json_key(const cp_table_writer *w, int k)
{
    return w->json_keys ? w->json_keys[k] : w->cols[k];
}

/* JSON: the row's "{" (and the array's separator). */
static void row_open(cp_table_writer *w)
{
    if (w->fmt == CP_FMT_JSON)
        puts_(w, w->rows ? ",\n" : "[\n");
    put(w, "{", 1);
}

/* Separator and key of the next cell: JSON closes and opens the nested
 * objects between the last key written and this one. */
static void field_start(cp_table_writer *w)
{
    int k = w->field++;
    if (k >= w->ncols) {
        w->err = w->err ? w->err : cp_error(CP_EINVAL, "table row has more than %d cells", w->ncols);
        return;
    }
    if (!is_json(w)) {
        if (k)
            put(w, w->fmt == CP_FMT_TSV ? "\t" : ",", 1);
        return;
    }
    const char *key = json_key(w, k);
    int keep = 0;
    if (w->last < 0) {
        row_open(w);
    } else {
        const char *prev = json_key(w, w->last);
        keep = w->json_keys ? shared_objects(prev, key) : 0;
        for (int d = key_depth(w, prev); d > keep; d--)
            put(w, "}", 1);
        put(w, ", ", 2);
    }
    w->last = k;
    /* open the objects this key adds below the shared ones */
    const char *seg = key;
    for (int d = 0; d < keep; d++)
        seg = strchr(seg, '/') + 1;
    for (const char *e; w->json_keys && (e = strchr(seg, '/')); seg = e + 1) {
        json_string(w, seg, (size_t)(e - seg));
        put(w, ": {", 3);
    }
    json_string(w, seg, strlen(seg));
    put(w, ": ", 2);
}

int cp_tw_begin(cp_table_writer *w, FILE *fp, cp_table_format fmt, cp_float_style floats, const char *const *cols,
                int ncols)
{
    memset(w, 0, sizeof *w);
    w->fp = fp;
    w->fmt = fmt;
    w->floats = floats;
    w->cols = cols;
    w->ncols = ncols;
    w->last = -1;
    if (fmt != CP_FMT_CSV && fmt != CP_FMT_TSV && !is_json(w))
        return w->err = cp_error(CP_EINVAL, "the row writer writes CSV, TSV, JSON or NDJSON");
    if (!is_json(w)) {
        for (int k = 0; k < ncols; k++) {
            if (k)
                put(w, fmt == CP_FMT_TSV ? "\t" : ",", 1);
            text_field(w, cols[k]);
        }
        put(w, "\n", 1);
    }
    return w->err;
}

void cp_tw_str(cp_table_writer *w, const char *s)
{
    if (!s) {
        cp_tw_null(w);
        return;
    }
    field_start(w);
    if (is_json(w))
        json_string(w, s, strlen(s));
    else
        text_field(w, s);
}

void cp_tw_numtext(cp_table_writer *w, const char *s)
{
    if (s && is_json(w) && looks_json_number(s)) {
        field_start(w);
        puts_(w, s);
    } else {
        cp_tw_str(w, s);
    }
}

void cp_tw_int(cp_table_writer *w, long long v)
{
    char b[32];
    field_start(w);
    put(w, b, (size_t)snprintf(b, sizeof b, "%lld", v));
}

void cp_tw_num(cp_table_writer *w, double v)
{
    char b[48];
    field_start(w);
    if (!isfinite(v) && is_json(w))
        puts_(w, "null");
    else if (w->floats == CP_FLOATS_PYTHON)
        puts_(w, cp_format_double(v, b));
    else
        put(w, b, (size_t)cp_format_f64(b, sizeof b, v));
}

void cp_tw_f32(cp_table_writer *w, float v)
{
    char b[48];
    field_start(w);
    if (!isfinite(v) && is_json(w))
        puts_(w, "null");
    else
        put(w, b, (size_t)cp_format_f32(b, sizeof b, v));
}

void cp_tw_bool(cp_table_writer *w, int v)
{
    field_start(w);
    puts_(w, is_json(w) ? (v ? "true" : "false") : (v ? "True" : "False"));
}

void cp_tw_null(cp_table_writer *w)
{
    field_start(w);
    if (is_json(w))
        puts_(w, "null");
}

void cp_tw_absent(cp_table_writer *w)
{
    if (is_json(w))
        w->field++; /* no key: the next one is placed after the last written */
    else
        field_start(w);
}

void cp_tw_end_row(cp_table_writer *w)
{
    if (is_json(w)) {
        if (w->last < 0)
            row_open(w);
        /* close the objects still open below the row's */
        for (int d = w->last >= 0 ? key_depth(w, json_key(w, w->last)) : 0; d > 0; d--)
            put(w, "}", 1);
        puts_(w, w->fmt == CP_FMT_NDJSON ? "}\n" : "}");
    } else {
        put(w, "\n", 1);
    }
    if (w->field != w->ncols && !w->err)
        w->err = cp_error(CP_EINVAL, "table row has %d cells, the table %d columns", w->field, w->ncols);
    w->field = 0;
    w->last = -1;
    w->rows++;
    if (w->len >= FLUSH_AT)
        flush(w);
}

void cp_tw_fork(const cp_table_writer *w, size_t row0, cp_table_writer *child)
{
    memset(child, 0, sizeof *child);
    child->fmt = w->fmt;
    child->floats = w->floats;
    child->cols = w->cols;
    child->json_keys = w->json_keys;
    child->ncols = w->ncols;
    child->rows = row0;
    child->last = -1;
}

void cp_tw_join(cp_table_writer *w, cp_table_writer *child)
{
    if (child->err && !w->err)
        w->err = child->err;
    flush(w);
    put(w, child->buf ? child->buf : "", child->len);
    w->rows = child->rows;
    free(child->buf);
    memset(child, 0, sizeof *child);
    if (w->len >= FLUSH_AT)
        flush(w);
}

const char *cp_tw_text(const cp_table_writer *w, size_t *len)
{
    if (len)
        *len = w->len;
    return w->buf ? w->buf : "";
}

void cp_tw_clear(cp_table_writer *w) { w->len = 0; }

int cp_tw_end(cp_table_writer *w)
{
    if (w->fmt == CP_FMT_JSON)
        puts_(w, w->rows ? "\n]\n" : "[]\n");
    flush(w);
    if (w->fp && !w->err && ferror(w->fp))
        w->err = cp_error(CP_EIO, "write error");
    free(w->buf);
    w->buf = NULL;
    w->len = w->cap = 0;
    return w->err;
}

/* ---- the column store through the row writer ----------------------------- */

static void cell(cp_table_writer *w, const cp_scol *c, size_t r)
{
    if (cp_scol_is_null(c, r)) {
        cp_tw_null(w);
        return;
    }
    switch (c->type) {
    case CP_SCOL_STR:
        if (c->json_numbers)
            cp_tw_numtext(w, cp_scol_str(c, r));
        else
            cp_tw_str(w, cp_scol_str(c, r));
        break;
    case CP_SCOL_I32: cp_tw_int(w, ((const int32_t *)c->v)[r]); break;
    case CP_SCOL_I8: cp_tw_int(w, ((const int8_t *)c->v)[r]); break;
    case CP_SCOL_I64: cp_tw_int(w, (long long)((const int64_t *)c->v)[r]); break;
    case CP_SCOL_BOOL: cp_tw_bool(w, cp_scol_get_bool(c, r)); break;
    case CP_SCOL_F32: cp_tw_f32(w, ((const float *)c->v)[r]); break;
    case CP_SCOL_F64: cp_tw_num(w, ((const double *)c->v)[r]); break;
    }
}

int cp_stable_write(FILE *fp, const cp_stable *t, const uint32_t *rows, size_t n, const int *cols, int ncols,
                    cp_table_format fmt)
{
    if (fmt == CP_FMT_PARQUET)
        return cp_stable_write_parquet(fp, t, rows, n, cols, ncols);
    int nc = cols ? ncols : t->ncols;
    size_t nr = rows ? n : t->nrows;
    const char **names = cp_malloc_array((size_t)nc + 1, sizeof *names, "column names");
    if (!names)
        return CP_ENOMEM;
    for (int k = 0; k < nc; k++)
        names[k] = t->cols[cols ? cols[k] : k].name;
    cp_table_writer w;
    cp_tw_begin(&w, fp, fmt, CP_FLOATS_SHORTEST, names, nc);
    for (size_t i = 0; i < nr && !w.err; i++) {
        size_t r = rows ? rows[i] : i;
        for (int k = 0; k < nc; k++)
            cell(&w, &t->cols[cols ? cols[k] : k], r);
        cp_tw_end_row(&w);
    }
    int rc = cp_tw_end(&w);
    free(names);
    return rc;
}
