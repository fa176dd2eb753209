/* Sinks shared by the binary table readers: one file value into one cell of
 * the column store, converted to the column's type the way the CSV reader
 * would have read the same value's text. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/internal.h"
#include "table/table_internal.h"

int cp_sbin_col_type(const cp_sread_opts *o, const char *name, int native)
{
    if (o->all_str)
        return CP_SCOL_STR;
    int t = o->column_type ? o->column_type(name) : -1;
    return t >= 0 ? t : native;
}

int cp_sput_null(cp_scol *c, size_t cap, size_t row)
{
    if (c->type != CP_SCOL_STR && c->type != CP_SCOL_F32 && c->type != CP_SCOL_F64 &&
        cp_scol_null_bitmap(c, cap))
        return CP_ENOMEM;
    cp_scol_set_null(c, row);
    return 0;
}

/* Python's repr of a float: the shortest round-trip digits, ".0" on integers. */
static size_t fmt_f64(char *b, size_t cap, double v)
{
    int n = 0;
    for (int prec = 1; prec <= 17; prec++) {
        n = snprintf(b, cap, "%.*g", prec, v);
        if (strtod(b, NULL) == v)
            break;
    }
    if (!strpbrk(b, ".einn") && n + 2 < (int)cap) {
        b[n++] = '.';
        b[n++] = '0';
        b[n] = '\0';
    }
    return (size_t)n;
}

int cp_sput_f64(cp_scol *c, size_t cap, size_t row, double v)
{
    if (isnan(v))
        return cp_sput_null(c, cap, row);
    switch (c->type) {
    case CP_SCOL_F32: ((float *)c->v)[row] = (float)v; return 0;
    case CP_SCOL_F64: ((double *)c->v)[row] = v; return 0;
    case CP_SCOL_STR: {
        char b[40];
        size_t n = fmt_f64(b, sizeof b, v);
        return cp_sput_str(c, cap, row, b, n);
    }
    default:
        if (v != floor(v) || fabs(v) > 9.2e18)
            return -1;
        return cp_sput_i64(c, cap, row, (int64_t)v);
    }
}

int cp_sput_i64(cp_scol *c, size_t cap, size_t row, int64_t v)
{
    switch (c->type) {
    case CP_SCOL_F32: ((float *)c->v)[row] = (float)v; return 0;
    case CP_SCOL_F64: ((double *)c->v)[row] = (double)v; return 0;
    case CP_SCOL_I64: ((int64_t *)c->v)[row] = v; return 0;
    case CP_SCOL_I32:
        if (v < INT32_MIN || v > INT32_MAX)
            return -1;
        ((int32_t *)c->v)[row] = (int32_t)v;
        return 0;
    case CP_SCOL_I8:
        if (v < INT8_MIN || v > INT8_MAX)
            return -1;
        ((int8_t *)c->v)[row] = (int8_t)v;
        return 0;
    case CP_SCOL_BOOL:
        if (v != 0 && v != 1)
            return -1;
        cp_scol_set_bool(c, row, (int)v);
        return 0;
    case CP_SCOL_STR: {
        char b[24];
        int n = snprintf(b, sizeof b, "%lld", (long long)v);
        return cp_sput_str(c, cap, row, b, (size_t)n);
    }
    }
    return -1;
}

int cp_sput_bool(cp_scol *c, size_t cap, size_t row, int v)
{
    if (c->type == CP_SCOL_STR)
        return cp_sput_str(c, cap, row, v ? "True" : "False", v ? 4 : 5);
    return cp_sput_i64(c, cap, row, v != 0);
}

int cp_sput_str(cp_scol *c, size_t cap, size_t row, const char *s, size_t n)
{
    if (cp_parse_na(s, n) == 1)
        return cp_sput_null(c, cap, row);
    switch (c->type) {
    case CP_SCOL_STR: {
        int32_t code;
        if (cp_sdict_intern(&c->dict, s, n, &code))
            return CP_ENOMEM;
        ((int32_t *)c->v)[row] = code;
        return 0;
    }
    case CP_SCOL_BOOL: {
        int b;
        if (cp_parse_bool(s, n, &b) != 0)
            return -1;
        cp_scol_set_bool(c, row, b);
        return 0;
    }
    case CP_SCOL_F32: case CP_SCOL_F64: {
        double d;
        if (cp_parse_f64(s, n, &d) != 0)
            return -1;
        return cp_sput_f64(c, cap, row, d);
    }
    default: {
        int64_t v;
        if (cp_parse_i64(s, n, &v) != 0)
            return -1;
        return cp_sput_i64(c, cap, row, v);
    }
    }
}

void cp_stable_trim_nulls(cp_stable *t)
{
    for (int c = 0; c < t->ncols; c++) {
        cp_scol *k = &t->cols[c];
        if (!k->nulls)
            continue;
        size_t nb = (t->nrows + 7) / 8, i;
        for (i = 0; i < nb && !k->nulls[i]; i++)
            ;
        if (i == nb) {
            free(k->nulls);
            k->nulls = NULL;
        }
    }
}

int cp_fmap_open(cp_fmap *m, const char *path)
{
    memset(m, 0, sizeof *m);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return cp_error(CP_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        return cp_error(CP_EIO, "%s: not a regular file", path);
    }
    m->n = (size_t)st.st_size;
    if (m->n == 0) {
        close(fd);
        m->p = (const uint8_t *)"";
        return CP_OK;
    }
    void *p = mmap(NULL, m->n, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED)
        return cp_error(CP_EIO, "%s: cannot map: %s", path, strerror(errno));
    m->p = p;
    m->mapped = 1;
    return CP_OK;
}

void cp_fmap_close(cp_fmap *m)
{
    if (m->mapped)
        munmap((void *)m->p, m->n);
    memset(m, 0, sizeof *m);
}
