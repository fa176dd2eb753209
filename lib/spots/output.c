/* Table output: CSV, TSV, JSON records, NDJSON; numbers round-trip exact. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/spots.h"
#include "core/internal.h"
#include "spots/spots_internal.h"

/* %g with the fewest digits that read back to the same float: a k-digit
 * decimal that round-trips is what %.kg prints, so trying k upward finds
 * the shortest. */
int cp_format_f32(char *buf, size_t n, float v)
{
    if (isnan(v))
        return snprintf(buf, n, "nan");
    if (isinf(v))
        return snprintf(buf, n, v < 0 ? "-inf" : "inf");
    for (int p = 6; p <= 9; p++) {
        int k = snprintf(buf, n, "%.*g", p, (double)v);
        if (strtof(buf, NULL) == v)
            return k;
    }
    return snprintf(buf, n, "%.9g", (double)v);
}

int cp_format_f64(char *buf, size_t n, double v)
{
    if (isnan(v))
        return snprintf(buf, n, "nan");
    if (isinf(v))
        return snprintf(buf, n, v < 0 ? "-inf" : "inf");
    for (int p = 15; p <= 17; p++) {
        int k = snprintf(buf, n, "%.*g", p, v);
        if (strtod(buf, NULL) == v)
            return k;
    }
    return snprintf(buf, n, "%.17g", v);
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

void cp_json_write_string(FILE *fp, const char *s)
{
    fputc('"', fp);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(fp, "\\%c", ch);
        else if (ch == '\n')
            fputs("\\n", fp);
        else if (ch == '\t')
            fputs("\\t", fp);
        else if (ch == '\r')
            fputs("\\r", fp);
        else if (ch < 0x20)
            fprintf(fp, "\\u%04x", ch);
        else
            fputc(ch, fp);
    }
    fputc('"', fp);
}

static void csv_field(FILE *fp, const char *s, char delim)
{
    if (delim == ',' && strpbrk(s, ",\"\n\r")) {
        fputc('"', fp);
        for (; *s; s++) {
            if (*s == '"')
                fputc('"', fp);
            fputc(*s, fp);
        }
        fputc('"', fp);
        return;
    }
    if (delim == '\t')
        for (; *s; s++)
            fputc(*s == '\t' || *s == '\n' || *s == '\r' ? ' ' : *s, fp);
    else
        fputs(s, fp);
}

static void json_cell(FILE *fp, const cp_scol *c, size_t r)
{
    char buf[64];
    if (c->type == CP_SCOL_STR && !cp_scol_is_null(c, r)) {
        const char *s = cp_scol_str(c, r);
        if (c->json_numbers && looks_json_number(s))
            fputs(s, fp);
        else
            cp_json_write_string(fp, s);
        return;
    }
    cp_scol_format(c, r, 1, buf, sizeof buf);
    fputs(buf, fp);
}

int cp_stable_write(FILE *fp, const cp_stable *t, const uint32_t *rows, size_t n, const int *cols, int ncols,
                    cp_table_format fmt)
{
    int nc = cols ? ncols : t->ncols;
    size_t nr = rows ? n : t->nrows;
    char buf[64];
#define COLP(k) (&t->cols[cols ? cols[k] : (k)])
    if (fmt == CP_FMT_CSV || fmt == CP_FMT_TSV) {
        char d = fmt == CP_FMT_CSV ? ',' : '\t';
        for (int k = 0; k < nc; k++) {
            if (k)
                fputc(d, fp);
            csv_field(fp, COLP(k)->name, d);
        }
        fputc('\n', fp);
        for (size_t i = 0; i < nr; i++) {
            size_t r = rows ? rows[i] : i;
            for (int k = 0; k < nc; k++) {
                const cp_scol *c = COLP(k);
                if (k)
                    fputc(d, fp);
                if (c->type == CP_SCOL_STR)
                    csv_field(fp, cp_scol_is_null(c, r) ? "" : cp_scol_str(c, r), d);
                else {
                    cp_scol_format(c, r, 0, buf, sizeof buf);
                    fputs(buf, fp);
                }
            }
            fputc('\n', fp);
        }
    } else {
        int nd = fmt == CP_FMT_NDJSON;
        if (!nd)
            fputc('[', fp);
        for (size_t i = 0; i < nr; i++) {
            size_t r = rows ? rows[i] : i;
            if (!nd)
                fputs(i ? ",\n" : "\n", fp);
            fputc('{', fp);
            for (int k = 0; k < nc; k++) {
                const cp_scol *c = COLP(k);
                if (k)
                    fputs(", ", fp);
                cp_json_write_string(fp, c->name);
                fputs(": ", fp);
                json_cell(fp, c, r);
            }
            fputc('}', fp);
            if (nd)
                fputc('\n', fp);
        }
        if (!nd)
            fputs(nr ? "\n]\n" : "]\n", fp);
    }
#undef COLP
    if (ferror(fp))
        return cp_error(CP_EIO, "write error");
    return CP_OK;
}
