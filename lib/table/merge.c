/* Tables written in parts (one per job of a cluster run) into one: CSV/TSV
 * with the header once, NDJSON lines as they are, JSON arrays as one. */
#include <stdlib.h>
#include <string.h>

#include "cellpose/table.h"
#include "core/internal.h"

void cp_table_merge_begin(cp_table_merge *m, FILE *out, cp_table_format fmt)
{
    memset(m, 0, sizeof *m);
    m->out = out;
    m->fmt = fmt;
    if (fmt == CP_FMT_JSON)
        fputs("[", out);
}

int cp_table_merge_add(cp_table_merge *m, const char *path)
{
    if (m->fmt == CP_FMT_PARQUET)
        return cp_error(CP_EUNSUPPORTED, "%s: Parquet tables are not merged", path);
    FILE *in = fopen(path, "rb");
    if (!in)
        return cp_error(CP_EIO, "%s: cannot open", path);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int rc = CP_OK, first = 1;
    while ((n = getline(&line, &cap, in)) >= 0) {
        if (m->fmt == CP_FMT_CSV || m->fmt == CP_FMT_TSV) {
            if (first) {
                first = 0;
                if (!m->header) {
                    m->header = cp_strdup(line);
                    if (!m->header) {
                        rc = CP_ENOMEM;
                        break;
                    }
                } else if (strcmp(m->header, line)) {
                    rc = cp_error(CP_EFORMAT, "%s: its header differs from the first table's", path);
                    break;
                } else {
                    continue;
                }
            }
            fputs(line, m->out);
        } else if (m->fmt == CP_FMT_NDJSON) {
            fputs(line, m->out);
        } else {
            /* the table writer's JSON: "[", one object per line, "]" */
            char *s = line;
            while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == ',' || s[n - 1] == '\r'))
                s[--n] = 0;
            if (!strcmp(s, "[") || !strcmp(s, "]") || !strcmp(s, "[]") || n == 0)
                continue;
            fputs(m->json_rows++ ? ",\n" : "\n", m->out);
            fputs(s, m->out);
        }
    }
    if (!rc && ferror(in))
        rc = cp_error(CP_EIO, "%s: read error", path);
    free(line);
    fclose(in);
    return rc;
}

int cp_table_merge_end(cp_table_merge *m)
{
    if (m->fmt == CP_FMT_JSON)
        fputs(m->json_rows ? "\n]\n" : "]\n", m->out);
    free(m->header);
    m->header = NULL;
    return ferror(m->out) ? cp_error(CP_EIO, "write error") : CP_OK;
}
