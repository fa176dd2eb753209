/* cpmetrics: per-cell shape and intensity tables, per-image summaries, and
 * segmentation quality against ground truth. Parses flags, reads images,
 * calls libcellpose, writes tables; the measurements live in lib/measure. */
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cellpose/cellpose.h"
#include "common/cli.h"

enum { FMT_CSV, FMT_TSV, FMT_JSON, FMT_NDJSON };

static const char *USAGE =
    "Usage: cpmetrics [OPTIONS] MASKS...             per-cell table\n"
    "       cpmetrics --summary [OPTIONS] MASKS...   one row per image\n"
    "       cpmetrics --truth GT [OPTIONS] PRED...   quality against ground truth\n"
    "       cpmetrics --merge [-f FMT] TABLE...      join tables written by cpmetrics\n"
    "\n"
    "MASKS are label images (TIFF, PNG, NPY; 0 = background) or folders (every\n"
    "image inside, sorted by name); '-' reads one path per line from stdin.\n"
    "Label volumes (Z-stacks) give 3D columns: volume, surface area, ...\n"
    "\n"
    "Options:\n"
    "  -o, --output FILE        write the table to FILE (default: stdout)\n"
    "  -f, --format FMT         csv (default), tsv, json or ndjson\n"
    "  -i, --intensity IMAGE    add intensity columns per channel (one MASKS file)\n"
    "      --intensity-dir DIR  intensity images matched by name (NAME_cp_masks.tif <-> NAME.tif)\n"
    "      --exclude-edges      drop cells touching the image border\n"
    "      --min-area N         drop cells smaller than N pixels (voxels in 3D)\n"
    "      --max-area N         drop cells larger than N pixels (voxels in 3D)\n"
    "      --3d                 3D columns for every image (2D ones as one plane);\n"
    "                           the default when the first image has several planes\n"
    "      --voxel-size Z,Y,X   voxel size for the physical 3D columns (default:\n"
    "                           the TIFF's ImageJ calibration)\n"
    "      --summary            per-image summaries instead of per-cell rows\n"
    "      --truth GT           ground truth: a label image, or a folder matched by name\n"
    "      --thresholds LIST    IoU thresholds for --truth (default 0.5,0.75,0.9)\n"
    "      --boundary-scales LIST  add Cellpose boundary scores at these scales\n"
    "      --v3-counts          count masks by their largest label (Cellpose v3)\n"
    "      --manifest FILE      write one JSON line per input (status, rows)\n"
    "      --merge              concatenate TABLEs of one format (header once;\n"
    "                           '-' reads their paths from stdin)\n"
    "  -q, --quiet              only errors on stderr\n"
    "  -v, --verbose            more messages\n"
    "  -h, --help               this help\n"
    "      --version            print the version\n"
    "\n"
    "Exit status: 0 ok, 1 some inputs failed, 2 usage error, 3 output failure, 130 interrupted.\n";

typedef struct opts {
    const char *output, *intensity, *intensity_dir, *truth, *manifest;
    int format, exclude_edges, summary, v3, merge;
    int force3d, vol;          /* --3d; vol: the table is of volumes (3D columns) */
    double voxel[3];           /* --voxel-size z, y, x; 0 = from the files */
    long long min_area, max_area;
    double th[CP_MATCH_MAX_THRESHOLDS];
    int nth;
    double scales[16];
    int nscales;
} opts;

/* ---- table output -------------------------------------------------------- */

typedef struct out {
    FILE *fp;
    int fmt;
    int rows;
    const char **cols;
    int ncols;
    char *line;          /* current row being built */
    size_t len, cap;
    int field;
} out;

static void buf_add(out *o, const char *s, size_t n)
{
    if (o->len + n + 1 > o->cap) {
        size_t c = (o->len + n + 1) * 2 + 256;
        char *p = realloc(o->line, c);
        if (!p) {
            cli_err("out of memory");
            exit(CLI_EXIT_FATAL);
        }
        o->line = p;
        o->cap = c;
    }
    memcpy(o->line + o->len, s, n);
    o->len += n;
    o->line[o->len] = 0;
}

static void buf_str(out *o, const char *s) { buf_add(o, s, strlen(s)); }

static void json_string(out *o, const char *s)
{
    buf_str(o, "\"");
    for (; *s; s++) {
        char e[8];
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            e[0] = '\\';
            e[1] = (char)c;
            buf_add(o, e, 2);
        } else if (c < 0x20) {
            snprintf(e, sizeof e, "\\u%04x", c);
            buf_str(o, e);
        } else {
            buf_add(o, s, 1);
        }
    }
    buf_str(o, "\"");
}

/* JSON rows are separated by ",\n" and the first opens the array */
static void row_begin(out *o)
{
    if (o->fmt == FMT_JSON)
        buf_str(o, o->rows ? ",\n" : "[\n");
}

static void field_start(out *o)
{
    if (o->field == 0)
        row_begin(o);
    if (o->fmt == FMT_JSON || o->fmt == FMT_NDJSON) {
        buf_str(o, o->field ? ", " : "{");
        json_string(o, o->cols[o->field]);
        buf_str(o, ": ");
    } else if (o->field) {
        buf_str(o, o->fmt == FMT_TSV ? "\t" : ",");
    }
    o->field++;
}

static void put_str(out *o, const char *s)
{
    field_start(o);
    if (o->fmt == FMT_JSON || o->fmt == FMT_NDJSON) {
        json_string(o, s);
    } else if (o->fmt == FMT_CSV && strpbrk(s, ",\"\r\n")) {
        buf_str(o, "\"");
        for (; *s; s++)
            buf_add(o, *s == '"' ? "\"\"" : s, *s == '"' ? 2 : 1);
        buf_str(o, "\"");
    } else if (o->fmt == FMT_TSV && strpbrk(s, "\t\r\n")) {
        for (; *s; s++)
            buf_add(o, strchr("\t\r\n", *s) ? " " : s, 1);
    } else {
        buf_str(o, s);
    }
}

static void put_int(out *o, long long v)
{
    char b[32];
    field_start(o);
    snprintf(b, sizeof b, "%lld", v);
    buf_str(o, b);
}

static void put_num(out *o, double v)
{
    char b[40];
    field_start(o);
    if (!isfinite(v) && (o->fmt == FMT_JSON || o->fmt == FMT_NDJSON))
        buf_str(o, "null");
    else
        buf_str(o, cp_format_double(v, b));
}

static void out_flush(out *o)
{
    if (o->fp && o->len) {
        fwrite(o->line, 1, o->len, o->fp);
        o->len = 0;
    }
}

static void row_end(out *o)
{
    if (o->fmt == FMT_JSON)
        buf_str(o, "}");
    else if (o->fmt == FMT_NDJSON)
        buf_str(o, "}\n");
    else
        buf_str(o, "\n");
    o->field = 0;
    o->rows++;
    if (o->len > (1u << 16))
        out_flush(o);
}

static void table_begin(out *o, const char **cols, int ncols)
{
    o->cols = cols;
    o->ncols = ncols;
    if (o->fmt == FMT_CSV || o->fmt == FMT_TSV) {
        for (int i = 0; i < ncols; i++) {
            if (i)
                fputc(o->fmt == FMT_TSV ? '\t' : ',', o->fp);
            fputs(cols[i], o->fp);
        }
        fputc('\n', o->fp);
    }
}

static void table_end(out *o)
{
    out_flush(o);
    if (o->fmt == FMT_JSON)
        fputs(o->rows ? "\n]\n" : "[]\n", o->fp);
}

/* ---- errors: the message of the last failure, from the library or from here */

static char g_err[4096];

static int fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return code;
}

/* pass a library status through, keeping its message */
static int lib(int rc)
{
    if (rc)
        snprintf(g_err, sizeof g_err, "%s", cp_errmsg());
    return rc;
}

/* ---- inputs --------------------------------------------------------------- */

static int read_stdin_list(cp_strlist *l)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, stdin)) >= 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = 0;
        if (n > 0 && cp_strlist_push(l, line)) {
            free(line);
            return -1;
        }
    }
    free(line);
    return 0;
}

/* Files and folders (plus '-' = stdin list) into a list of image files. */
static void expand(char **args, int n, cp_strlist *files)
{
    cp_strlist raw = {0};
    for (int i = 0; i < n; i++) {
        if (!strcmp(args[i], "-")) {
            if (read_stdin_list(&raw)) {
                cli_err("out of memory");
                exit(CLI_EXIT_FATAL);
            }
        } else if (cp_strlist_push(&raw, args[i])) {
            cli_err("out of memory");
            exit(CLI_EXIT_FATAL);
        }
    }
    /* a missing file is reported when it is read, so one bad name in a
     * batch does not stop the others */
    for (size_t i = 0; i < raw.n; i++) {
        struct stat st;
        if (stat(raw.items[i], &st) == 0 && S_ISDIR(st.st_mode)) {
            if (cp_list_images(raw.items[i], 0, NULL, files)) {
                cli_err("%s", cp_errmsg());
                exit(CLI_EXIT_USAGE);
            }
        } else if (cp_strlist_push(files, raw.items[i])) {
            cli_err("out of memory");
            exit(CLI_EXIT_FATAL);
        }
    }
    cp_strlist_free(&raw);
}

/* A label image or volume: *d planes (1 for 2D). Labels have one channel, so
 * every TIFF page is a plane whatever the metadata says (tifffile's ImageJ
 * writer calls the pages of a plain 3-D array channels). */
static int load_labels(const char *path, uint32_t **lab, int *d, int *h, int *w)
{
    cp_image *img = NULL;
    *lab = NULL;
    cp_read_opts ro = {.pages = CP_PAGES_PLANES};
    int rc = lib(cp_image_read(path, &ro, &img));
    if (!rc)
        rc = lib(cp_image_labels_u32(img, path, lab));
    if (!rc) {
        *d = img->planes;
        *h = img->height;
        *w = img->width;
    }
    cp_image_free(img);
    return rc;
}

/* "H x W", or "D x H x W" for a volume, into buf (48 bytes). */
static const char *dims(int d, int h, int w, char *buf)
{
    if (d > 1)
        snprintf(buf, 48, "%d x %d x %d", d, h, w);
    else
        snprintf(buf, 48, "%d x %d", h, w);
    return buf;
}

/* The file in `candidates` that pairs with `path` by Cellpose naming, or NULL. */
static const char *find_pair(const cp_strlist *candidates, const char *path, int want_plain)
{
    char *key = cp_path_pair_key(path);
    const char *best = NULL;
    for (size_t i = 0; i < candidates->n && key; i++) {
        const char *c = candidates->items[i];
        if (!strcmp(c, path))
            continue;
        char *stem = cp_path_stem(c), *ck = cp_path_pair_key(c);
        if (want_plain ? (stem && !strcmp(stem, key)) : (ck && !strcmp(ck, key))) {
            if (!best || (stem && !strcmp(stem, key)))
                best = c;
        }
        free(stem);
        free(ck);
    }
    free(key);
    return best;
}

/* ---- manifest ------------------------------------------------------------- */

static void manifest_line(FILE *mf, const char *input, const char *image, const char *status,
                          long long rows, const char *err)
{
    if (!mf)
        return;
    out o = {0};
    o.fmt = FMT_NDJSON;
    buf_str(&o, "{\"input\": ");
    json_string(&o, input);
    buf_str(&o, ", \"image\": ");
    json_string(&o, image ? image : "");
    buf_str(&o, ", \"status\": ");
    json_string(&o, status);
    char b[64];
    snprintf(b, sizeof b, ", \"rows\": %lld", rows);
    buf_str(&o, b);
    if (err) {
        buf_str(&o, ", \"error\": ");
        json_string(&o, err);
    }
    buf_str(&o, "}\n");
    fwrite(o.line, 1, o.len, mf);
    free(o.line);
}

/* ---- per-cell and summary modes ----------------------------------------- */

static const char *CELL_COLS[] = {
    "image", "label", "area", "perimeter", "centroid_y", "centroid_x", "bbox_min_row",
    "bbox_min_col", "bbox_max_row", "bbox_max_col", "major_axis_length", "minor_axis_length",
    "aspect_ratio", "eccentricity", "orientation", "solidity", "extent", "equivalent_diameter",
    "convex_area", "euler_number"};
#define NCELL (int)(sizeof CELL_COLS / sizeof *CELL_COLS)
static const char *CELL3_COLS[] = {
    "image", "label", "volume", "surface_area", "centroid_z", "centroid_y", "centroid_x",
    "bbox_min_plane", "bbox_min_row", "bbox_min_col", "bbox_max_plane", "bbox_max_row",
    "bbox_max_col", "major_axis_length", "minor_axis_length", "aspect_ratio", "solidity", "extent",
    "equivalent_diameter", "convex_volume", "euler_number", "inertia_eigval_0", "inertia_eigval_1",
    "inertia_eigval_2", "volume_physical", "surface_area_physical", "unit"};
#define NCELL3 (int)(sizeof CELL3_COLS / sizeof *CELL3_COLS)

static const char *SUM_FIELDS[] = {"area", "perimeter", "aspect_ratio", "eccentricity",
                                   "solidity", "extent", "equivalent_diameter"};
#define NSUM 7
static const char *SUM3_FIELDS[] = {"volume", "surface_area", "aspect_ratio", "solidity", "extent",
                                    "equivalent_diameter"};
#define NSUM3 6
static const char *STAT_NAMES[] = {"mean", "std", "median", "min", "max"};

/* Cell i of the 2D table t or, for volumes, of t3. */
static int keep_cell(const opts *op, const cp_cell_table *t, const cp_cell_table3d *t3, size_t i)
{
    int edge = t3 ? t3->cells[i].touches_edge : t->cells[i].touches_edge;
    long long size = t3 ? t3->cells[i].volume : t->cells[i].area;
    if (op->exclude_edges && edge)
        return 0;
    if (op->min_area >= 0 && size < op->min_area)
        return 0;
    if (op->max_area >= 0 && size > op->max_area)
        return 0;
    return 1;
}

static double sum_field3(const cp_cell_props3d *c, int k)
{
    switch (k) {
    case 0: return (double)c->volume;
    case 1: return c->surface_area;
    case 2: return c->aspect_ratio;
    case 3: return c->solidity;
    case 4: return c->extent;
    default: return c->equivalent_diameter;
    }
}

static double sum_field(const cp_cell_props *c, int k)
{
    switch (k) {
    case 0: return (double)c->area;
    case 1: return c->perimeter;
    case 2: return c->aspect_ratio;
    case 3: return c->eccentricity;
    case 4: return c->solidity;
    case 5: return c->extent;
    default: return c->equivalent_diameter;
    }
}

static char **make_cols(const opts *op, int channels, int *ncols)
{
    int nsum = op->vol ? NSUM3 : NSUM, ncell = op->vol ? NCELL3 : NCELL;
    const char **sumf = op->vol ? SUM3_FIELDS : SUM_FIELDS, **cellc = op->vol ? CELL3_COLS : CELL_COLS;
    int n = op->summary ? 2 + nsum * 5 : ncell + 5 * channels;
    char **cols = calloc((size_t)n, sizeof *cols);
    int k = 0;
    if (op->summary) {
        cols[k++] = strdup("image");
        cols[k++] = strdup("total_cells");
        for (int f = 0; f < nsum; f++)
            for (int s = 0; s < 5; s++) {
                char b[64];
                snprintf(b, sizeof b, "%s_%s", sumf[f], STAT_NAMES[s]);
                cols[k++] = strdup(b);
            }
    } else {
        static const char *st[] = {"mean", "min", "max", "sum", "std"};
        for (int i = 0; i < ncell; i++)
            cols[k++] = strdup(cellc[i]);
        for (int c = 0; c < channels; c++)
            for (int s = 0; s < 5; s++) {
                char b[64];
                snprintf(b, sizeof b, "intensity_%s_c%d", st[s], c);
                cols[k++] = strdup(b);
            }
    }
    *ncols = n;
    return cols;
}

static void free_cols(char **cols, int n)
{
    for (int i = 0; i < n; i++)
        free(cols[i]);
    free(cols);
}

static void intensity_fields(out *o, const cp_intensity_stats *s, int channels)
{
    for (int ch = 0; ch < channels; ch++, s++) {
        put_num(o, s->mean);
        put_num(o, s->min);
        put_num(o, s->max);
        put_num(o, s->sum);
        put_num(o, s->std);
    }
}

/* One per-cell row (never flushes: o->fp may be NULL). */
static void cell_row(out *o, const char *image, const cp_cell_table *t, size_t i)
{
    const cp_cell_props *c = t->cells + i;
    put_str(o, image);
    put_int(o, c->label);
    put_int(o, c->area);
    put_num(o, c->perimeter);
    put_num(o, c->centroid_y);
    put_num(o, c->centroid_x);
    put_int(o, c->bbox_min_row);
    put_int(o, c->bbox_min_col);
    put_int(o, c->bbox_max_row);
    put_int(o, c->bbox_max_col);
    put_num(o, c->major_axis_length);
    put_num(o, c->minor_axis_length);
    put_num(o, c->aspect_ratio);
    put_num(o, c->eccentricity);
    put_num(o, c->orientation);
    put_num(o, c->solidity);
    put_num(o, c->extent);
    put_num(o, c->equivalent_diameter);
    put_int(o, c->convex_area);
    put_int(o, c->euler_number);
    intensity_fields(o, t->intensity + i * (size_t)t->channels, t->channels);
    row_end(o);
}

/* One per-cell row of a volume. */
static void cell3_row(out *o, const char *image, const cp_cell_table3d *t, size_t i, const char *unit)
{
    const cp_cell_props3d *c = t->cells + i;
    put_str(o, image);
    put_int(o, c->label);
    put_int(o, c->volume);
    put_num(o, c->surface_area);
    put_num(o, c->centroid_z);
    put_num(o, c->centroid_y);
    put_num(o, c->centroid_x);
    put_int(o, c->bbox_min_plane);
    put_int(o, c->bbox_min_row);
    put_int(o, c->bbox_min_col);
    put_int(o, c->bbox_max_plane);
    put_int(o, c->bbox_max_row);
    put_int(o, c->bbox_max_col);
    put_num(o, c->major_axis_length);
    put_num(o, c->minor_axis_length);
    put_num(o, c->aspect_ratio);
    put_num(o, c->solidity);
    put_num(o, c->extent);
    put_num(o, c->equivalent_diameter);
    put_int(o, c->convex_volume);
    put_int(o, c->euler_number);
    for (int k = 0; k < 3; k++)
        put_num(o, c->inertia_eigvals[k]);
    put_num(o, c->volume_physical);
    put_num(o, c->surface_area_physical);
    put_str(o, unit);
    intensity_fields(o, t->intensity + i * (size_t)t->channels, t->channels);
    row_end(o);
}

/* One image (the 2D table t, or the volume's t3 with its unit): measured rows
 * appended to the table. Returns rows or -1. */
static long long emit_cells(out *o, const opts *op, const char *image, const cp_cell_table *t,
                            const cp_cell_table3d *t3, const char *unit)
{
    long long rows = 0;
    size_t ncells = t3 ? t3->n : t->n;
    if (op->summary) {
        size_t n = 0;
        int nsum = t3 ? NSUM3 : NSUM;
        const char **sumf = t3 ? SUM3_FIELDS : SUM_FIELDS;
        double *v = malloc((ncells + 1) * sizeof *v);
        if (!v)
            return -1;
        cp_summary s[NSUM];
        for (int f = 0; f < nsum; f++) {
            n = 0;
            for (size_t i = 0; i < ncells; i++)
                if (keep_cell(op, t, t3, i))
                    v[n++] = t3 ? sum_field3(t3->cells + i, f) : sum_field(t->cells + i, f);
            cp_summarize(v, n, s + f);
        }
        free(v);
        if (o->fmt == FMT_JSON || o->fmt == FMT_NDJSON) {
            /* {"image": ..., "summary": {"total_cells": N, "area": {"mean": ...}, ...}} */
            out *q = o;
            row_begin(q);
            buf_str(q, "{\"image\": ");
            json_string(q, image);
            char b[64];
            snprintf(b, sizeof b, ", \"summary\": {\"total_cells\": %zu", n);
            buf_str(q, b);
            for (int f = 0; f < nsum; f++) {
                buf_str(q, ", ");
                json_string(q, sumf[f]);
                buf_str(q, ": {");
                double vals[5] = {s[f].mean, s[f].std, s[f].median, s[f].min, s[f].max};
                for (int k = 0; k < 5; k++) {
                    char nb[40];
                    buf_str(q, k ? ", \"" : "\"");
                    buf_str(q, STAT_NAMES[k]);
                    buf_str(q, "\": ");
                    buf_str(q, isfinite(vals[k]) ? cp_format_double(vals[k], nb) : "null");
                }
                buf_str(q, "}");
            }
            buf_str(q, "}");
            q->field = 0;
            /* row_end adds the closing brace of the row object */
            row_end(q);
        } else {
            put_str(o, image);
            put_int(o, (long long)n);
            for (int f = 0; f < nsum; f++) {
                put_num(o, s[f].mean);
                put_num(o, s[f].std);
                put_num(o, s[f].median);
                put_num(o, s[f].min);
                put_num(o, s[f].max);
            }
            row_end(o);
        }
        return 1;
    }
    size_t *keep = malloc((ncells + 1) * sizeof *keep);
    if (!keep)
        return -1;
    size_t nk = 0;
    for (size_t i = 0; i < ncells; i++)
        if (keep_cell(op, t, t3, i))
            keep[nk++] = i;
    /* Rows are formatted in parallel chunks (shortest round-trip numbers are
     * the costly part) and written in order, so the bytes do not depend on
     * the thread count. */
    const size_t chunk = 512;
    size_t nchunks = (nk + chunk - 1) / chunk;
    out *parts = calloc(nchunks ? nchunks : 1, sizeof *parts);
    if (!parts) {
        free(keep);
        return -1;
    }
#pragma omp parallel for schedule(dynamic, 1)
    for (size_t ch = 0; ch < nchunks; ch++) {
        out *q = parts + ch;
        q->fmt = o->fmt;
        q->cols = o->cols;
        q->ncols = o->ncols;
        q->rows = o->rows + (int)(ch * chunk);
        size_t end = (ch + 1) * chunk < nk ? (ch + 1) * chunk : nk;
        for (size_t j = ch * chunk; j < end; j++) {
            if (t3)
                cell3_row(q, image, t3, keep[j], unit);
            else
                cell_row(q, image, t, keep[j]);
        }
    }
    for (size_t ch = 0; ch < nchunks; ch++) {
        out_flush(o);
        fwrite(parts[ch].line, 1, parts[ch].len, o->fp);
        free(parts[ch].line);
    }
    o->rows += (int)nk;
    rows = (long long)nk;
    free(parts);
    free(keep);
    return rows;
}

static int run_cells(opts *op, cp_strlist *files, out *o, FILE *mf)
{
    cp_strlist inten = {0};
    if (op->intensity_dir && cp_list_images(op->intensity_dir, 0, NULL, &inten)) {
        cli_err("%s", cp_errmsg());
        return CLI_EXIT_USAGE;
    }
    /* the intensity channel count fixes the columns: read the first one early */
    int failed = 0, channels = 0, begun = 0, vol_known = 0;
    op->vol = op->force3d;
    char **cols = NULL;
    int ncols = 0;
    cli_progress pg;
    cli_progress_start(&pg, files->n, "images");
    for (size_t f = 0; f < files->n; f++) {
        cli_progress_update(&pg, f, NULL);
        const char *path = files->items[f];
        char *image = cp_path_stem(path);
        uint32_t *lab = NULL;
        cp_image *img = NULL;
        int d = 0, h = 0, w = 0, rc = load_labels(path, &lab, &d, &h, &w);
        /* the first image read decides between 2D and 3D columns */
        if (!rc && !vol_known) {
            op->vol = op->force3d || d > 1;
            vol_known = 1;
        }
        if (!rc && d > 1 && !op->vol)
            rc = fail(CP_EUNSUPPORTED, "%s: a volume of %d planes in a table of 2D images; "
                      "measure volumes separately or with --3d", path, d);
        const char *ipath = op->intensity;
        if (!rc && op->intensity_dir) {
            ipath = find_pair(&inten, path, 1);
            if (!ipath)
                rc = fail(CP_EIO, "%s: no intensity image named %s.* in %s", path,
                              image ? image : "?", op->intensity_dir);
        }
        if (!rc && ipath) {
            rc = lib(cp_image_read(ipath, NULL, &img));
            char b1[48], b2[48];
            if (!rc && (img->width != w || img->height != h || img->planes != d))
                rc = fail(CP_EFORMAT, "%s: intensity image is %s (%d planes), masks %s are %s", ipath,
                          dims(img->planes, img->height, img->width, b1), img->planes, path,
                          dims(d, h, w, b2));
            if (!rc && begun && img->channels != channels)
                rc = fail(CP_EFORMAT, "%s: %d channels, earlier intensity images had %d", ipath,
                              img->channels, channels);
        }
        cp_cell_table t = {0};
        cp_cell_table3d t3 = {0};
        cp_voxel_size vs = {0};
        int have_vs = op->voxel[0] > 0;
        if (have_vs) {
            vs.z = op->voxel[0];
            vs.y = op->voxel[1];
            vs.x = op->voxel[2];
        } else if (!rc && op->vol) {
            rc = lib(cp_image_voxel_size(path, &vs, &have_vs));
            if (!rc && !have_vs && ipath)
                rc = lib(cp_image_voxel_size(ipath, &vs, &have_vs));
        }
        double vsz[3] = {vs.z, vs.y, vs.x};
        if (!rc && op->vol)
            rc = lib(cp_measure_cells3d(lab, d, h, w, have_vs ? vsz : NULL, img, &t3));
        else if (!rc)
            rc = lib(cp_measure_cells(lab, h, w, img, &t));
        if (!begun && (!rc || f + 1 == files->n)) {
            channels = img ? img->channels : 0;
            cols = make_cols(op, channels, &ncols);
            table_begin(o, (const char **)cols, ncols);
            begun = 1;
        }
        if (rc) {
            cli_err("%s", g_err);
            manifest_line(mf, path, image, "error", 0, g_err);
            failed++;
        } else {
            long long rows = emit_cells(o, op, image ? image : path, &t, op->vol ? &t3 : NULL, vs.unit);
            cli_info("%s: %zu cells, %lld rows", path, op->vol ? t3.n : t.n, rows);
            manifest_line(mf, path, image, "ok", rows, NULL);
        }
        cp_cell_table_free(&t);
        cp_cell_table3d_free(&t3);
        cp_image_free(img);
        free(lab);
        free(image);
    }
    cli_progress_end(&pg);
    if (!begun) {
        cols = make_cols(op, 0, &ncols);
        table_begin(o, (const char **)cols, ncols);
    }
    table_end(o);
    free_cols(cols, ncols);
    cp_strlist_free(&inten);
    return failed ? CLI_EXIT_PARTIAL : CLI_EXIT_OK;
}

/* ---- quality mode ----------------------------------------------------------- */

static void quality_rows(out *o, const opts *op, const char *image, const char *truth,
                         const cp_match_result *r, const cp_boundary_score *bs)
{
    for (int k = 0; k < r->n_thresholds; k++) {
        put_str(o, image);
        put_str(o, truth);
        put_num(o, r->thresholds[k]);
        put_int(o, r->n_true);
        put_int(o, r->n_pred);
        put_int(o, r->tp[k]);
        put_int(o, r->fp[k]);
        put_int(o, r->fn[k]);
        put_num(o, r->ap[k]);
        put_num(o, r->precision[k]);
        put_num(o, r->recall[k]);
        put_num(o, r->f1[k]);
        put_num(o, r->mean_iou[k]);
        put_num(o, r->aji);
        for (int s = 0; s < op->nscales; s++) {
            put_num(o, bs[s].precision);
            put_num(o, bs[s].recall);
            put_num(o, bs[s].fscore);
        }
        row_end(o);
    }
}

static int run_quality(const opts *op, cp_strlist *preds, out *o, FILE *mf)
{
    static const char *base[] = {"image", "truth", "threshold", "n_true", "n_pred", "tp", "fp",
                                 "fn", "ap", "precision", "recall", "f1", "mean_matched_iou", "aji"};
    int nb = (int)(sizeof base / sizeof *base), ncols = nb + 3 * op->nscales;
    char **cols = calloc((size_t)ncols, sizeof *cols);
    for (int i = 0; i < nb; i++)
        cols[i] = strdup(base[i]);
    for (int s = 0; s < op->nscales; s++) {
        static const char *bn[] = {"boundary_precision", "boundary_recall", "boundary_fscore"};
        for (int k = 0; k < 3; k++) {
            char b[80], v[40];
            snprintf(b, sizeof b, "%s_%s", bn[k], cp_format_double(op->scales[s], v));
            cols[nb + 3 * s + k] = strdup(b);
        }
    }
    table_begin(o, (const char **)cols, ncols);

    struct stat st;
    int gt_dir = stat(op->truth, &st) == 0 && S_ISDIR(st.st_mode);
    cp_strlist gts = {0};
    if (gt_dir && cp_list_images(op->truth, 0, NULL, &gts)) {
        cli_err("%s", cp_errmsg());
        free_cols(cols, ncols);
        return CLI_EXIT_USAGE;
    }
    cp_match_result total;
    memset(&total, 0, sizeof total);
    total.n_thresholds = op->nth;
    memcpy(total.thresholds, op->th, sizeof op->th);
    cp_boundary_score btot[16];
    memset(btot, 0, sizeof btot);
    int failed = 0, ok = 0;
    uint32_t *gt = NULL;
    int gd = 0, gh = 0, gw = 0, grc = 0;
    if (!gt_dir)
        grc = load_labels(op->truth, &gt, &gd, &gh, &gw);
    if (grc) {
        cli_err("%s", g_err);
        failed++;
    }
    cli_progress pg;
    cli_progress_start(&pg, preds->n, "images");
    for (size_t f = 0; f < preds->n && !grc; f++) {
        cli_progress_update(&pg, f, NULL);
        const char *path = preds->items[f];
        char *image = cp_path_stem(path);
        const char *gpath = op->truth;
        uint32_t *p = NULL;
        int d = 0, h = 0, w = 0, rc = 0;
        char b1[48], b2[48];
        if (gt_dir) {
            gpath = find_pair(&gts, path, 0);
            free(gt);
            gt = NULL;
            if (!gpath)
                rc = fail(CP_EIO, "%s: no ground truth for it in %s", path, op->truth);
            else
                rc = load_labels(gpath, &gt, &gd, &gh, &gw);
        }
        if (!rc)
            rc = load_labels(path, &p, &d, &h, &w);
        if (!rc && (d != gd || h != gh || w != gw))
            rc = fail(CP_EFORMAT, "%s: %s, but the ground truth %s is %s", path, dims(d, h, w, b1),
                      gpath, dims(gd, gh, gw, b2));
        if (!rc && d > 1 && op->nscales)
            rc = fail(CP_EUNSUPPORTED, "%s: %d planes; --boundary-scales measures 2D images only", path, d);
        cp_match_result r;
        cp_boundary_score bs[16];
        cp_match_opts mo = {op->th, op->nth, op->v3};
        if (!rc)
            rc = lib(cp_match(gt, p, d * h, w, &mo, &r)); /* volumes: over voxels */
        if (!rc && op->nscales)
            rc = lib(cp_boundary_scores(gt, p, h, w, op->scales, op->nscales, bs));
        if (rc) {
            cli_err("%s", g_err);
            manifest_line(mf, path, image, "error", 0, g_err);
            failed++;
        } else {
            char *tstem = cp_path_stem(gpath);
            quality_rows(o, op, image ? image : path, tstem ? tstem : gpath, &r, bs);
            free(tstem);
            manifest_line(mf, path, image, "ok", op->nth, NULL);
            ok++;
            total.n_true += r.n_true;
            total.n_pred += r.n_pred;
            for (int k = 0; k < op->nth; k++) {
                total.tp[k] += r.tp[k];
                total.fp[k] += r.fp[k];
                total.fn[k] += r.fn[k];
                total.iou_sum[k] += r.iou_sum[k];
            }
            total.aji_intersection += r.aji_intersection;
            total.aji_union += r.aji_union;
            for (int s = 0; s < op->nscales; s++) {
                btot[s].tp += bs[s].tp;
                btot[s].fp += bs[s].fp;
                btot[s].fn += bs[s].fn;
            }
        }
        free(p);
        free(image);
    }
    cli_progress_end(&pg);
    free(gt);
    if (ok > 0) {
        cp_match_finish(&total);
        for (int s = 0; s < op->nscales; s++)
            cp_boundary_finish(btot + s);
        quality_rows(o, op, "ALL", "", &total, btot);
    }
    table_end(o);
    free_cols(cols, ncols);
    cp_strlist_free(&gts);
    return failed ? CLI_EXIT_PARTIAL : CLI_EXIT_OK;
}

/* ---- merge ---------------------------------------------------------------- */

static int run_merge(const opts *op, cp_strlist *files, FILE *fp)
{
    char *header = NULL;
    int failed = 0, json_rows = 0;
    if (op->format == FMT_JSON)
        fputs("[", fp);
    for (size_t f = 0; f < files->n; f++) {
        FILE *in = fopen(files->items[f], "rb");
        if (!in) {
            cli_err("%s: cannot open", files->items[f]);
            failed++;
            continue;
        }
        char *line = NULL;
        size_t cap = 0;
        ssize_t n;
        int first = 1;
        while ((n = getline(&line, &cap, in)) >= 0) {
            if (op->format == FMT_CSV || op->format == FMT_TSV) {
                if (first) {
                    first = 0;
                    if (!header) {
                        header = strdup(line);
                        fputs(line, fp);
                    } else if (strcmp(header, line)) {
                        cli_err("%s: its header differs from the first table's", files->items[f]);
                        failed++;
                        break;
                    }
                    continue;
                }
                fputs(line, fp);
            } else if (op->format == FMT_NDJSON) {
                fputs(line, fp);
            } else {
                /* cpmetrics JSON: "[", one object per line, "]" */
                char *s = line;
                while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == ',' || s[n - 1] == '\r'))
                    s[--n] = 0;
                if (!strcmp(s, "[") || !strcmp(s, "]") || !strcmp(s, "[]") || n == 0)
                    continue;
                fputs(json_rows++ ? ",\n" : "\n", fp);
                fputs(s, fp);
            }
        }
        free(line);
        fclose(in);
    }
    if (op->format == FMT_JSON)
        fputs(json_rows ? "\n]\n" : "]\n", fp);
    free(header);
    return failed ? CLI_EXIT_PARTIAL : CLI_EXIT_OK;
}

/* ---- main ------------------------------------------------------------------- */

static int parse_list(const char *flag, const char *s, double *v, int max, double lo, double hi)
{
    char *copy = strdup(s), *save = NULL;
    int n = 0;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (n == max)
            cli_usage_error("%s: at most %d values", flag, max);
        v[n++] = cli_parse_double(flag, tok, lo, hi);
    }
    free(copy);
    if (n == 0)
        cli_usage_error("%s: empty list", flag);
    return n;
}

int main(int argc, char **argv)
{
    cli_init("cpmetrics");
    opts op;
    memset(&op, 0, sizeof op);
    op.min_area = op.max_area = -1;
    op.th[0] = 0.5;
    op.th[1] = 0.75;
    op.th[2] = 0.9;
    op.nth = 3;
    enum { O_IDIR = 256, O_EDGES, O_MIN, O_MAX, O_SUMMARY, O_TRUTH, O_TH, O_BS, O_V3, O_MANIFEST,
           O_MERGE, O_VERSION, O_3D, O_VOXEL };
    static const struct option lo[] = {
        {"output", required_argument, 0, 'o'},   {"format", required_argument, 0, 'f'},
        {"intensity", required_argument, 0, 'i'}, {"intensity-dir", required_argument, 0, O_IDIR},
        {"exclude-edges", no_argument, 0, O_EDGES}, {"min-area", required_argument, 0, O_MIN},
        {"max-area", required_argument, 0, O_MAX}, {"summary", no_argument, 0, O_SUMMARY},
        {"truth", required_argument, 0, O_TRUTH}, {"thresholds", required_argument, 0, O_TH},
        {"boundary-scales", required_argument, 0, O_BS}, {"v3-counts", no_argument, 0, O_V3},
        {"manifest", required_argument, 0, O_MANIFEST}, {"merge", no_argument, 0, O_MERGE},
        {"3d", no_argument, 0, O_3D},            {"voxel-size", required_argument, 0, O_VOXEL},
        {"quiet", no_argument, 0, 'q'},          {"verbose", no_argument, 0, 'v'},
        {"help", no_argument, 0, 'h'},           {"version", no_argument, 0, O_VERSION},
        {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "o:f:i:qvh", lo, NULL)) != -1) {
        switch (c) {
        case 'o': op.output = optarg; break;
        case 'f':
            if (!strcmp(optarg, "csv")) op.format = FMT_CSV;
            else if (!strcmp(optarg, "tsv")) op.format = FMT_TSV;
            else if (!strcmp(optarg, "json")) op.format = FMT_JSON;
            else if (!strcmp(optarg, "ndjson")) op.format = FMT_NDJSON;
            else cli_usage_error("--format: '%s' is not csv, tsv, json or ndjson", optarg);
            break;
        case 'i': op.intensity = optarg; break;
        case O_IDIR: op.intensity_dir = optarg; break;
        case O_EDGES: op.exclude_edges = 1; break;
        case O_MIN: op.min_area = cli_parse_long("--min-area", optarg, 0, LONG_MAX); break;
        case O_MAX: op.max_area = cli_parse_long("--max-area", optarg, 0, LONG_MAX); break;
        case O_SUMMARY: op.summary = 1; break;
        case O_TRUTH: op.truth = optarg; break;
        case O_TH: op.nth = parse_list("--thresholds", optarg, op.th, CP_MATCH_MAX_THRESHOLDS, 0, 1); break;
        case O_BS: op.nscales = parse_list("--boundary-scales", optarg, op.scales, 16, 0, 1e6); break;
        case O_V3: op.v3 = 1; break;
        case O_MANIFEST: op.manifest = optarg; break;
        case O_MERGE: op.merge = 1; break;
        case O_3D: op.force3d = 1; break;
        case O_VOXEL:
            if (parse_list("--voxel-size", optarg, op.voxel, 3, 1e-300, 1e300) != 3)
                cli_usage_error("--voxel-size takes Z,Y,X");
            break;
        case 'q': cli_verbosity = 0; break;
        case 'v': cli_verbosity = 2; break;
        case 'h': fputs(USAGE, stdout); return CLI_EXIT_OK;
        case O_VERSION: cli_print_version(); return CLI_EXIT_OK;
        default: fprintf(stderr, "(see 'cpmetrics --help')\n"); return CLI_EXIT_USAGE;
        }
    }
    if (optind >= argc)
        cli_usage_error("no input given");
    if (op.intensity && op.intensity_dir)
        cli_usage_error("--intensity and --intensity-dir exclude each other");
    if (op.truth && (op.summary || op.intensity || op.intensity_dir || op.exclude_edges ||
                     op.min_area >= 0 || op.max_area >= 0))
        cli_usage_error("--truth does not combine with per-cell options (--summary, --intensity, filters)");
    if (op.truth && (op.force3d || op.voxel[0] > 0))
        cli_usage_error("--truth matches volumes by themselves; --3d and --voxel-size are for per-cell tables");
    if (op.merge && (op.truth || op.summary || op.intensity || op.intensity_dir))
        cli_usage_error("--merge takes only tables, -o and -f");
    if (op.min_area >= 0 && op.max_area >= 0 && op.min_area > op.max_area)
        cli_usage_error("--min-area %lld is larger than --max-area %lld", op.min_area, op.max_area);
    if (!op.truth && (op.nscales || op.v3))
        cli_usage_error("--boundary-scales and --v3-counts need --truth");
    cli_install_signal_handlers();

    cp_strlist files = {0};
    if (op.merge) {
        /* '-' reads table paths from stdin: a cluster's thousands of parts
         * need not fit on one command line */
        for (int i = optind; i < argc; i++) {
            int bad = strcmp(argv[i], "-") ? cp_strlist_push(&files, argv[i])
                                           : read_stdin_list(&files);
            if (bad) {
                cli_err("out of memory");
                return CLI_EXIT_FATAL;
            }
        }
    } else {
        expand(argv + optind, argc - optind, &files);
    }
    if (op.intensity && files.n != 1)
        cli_usage_error("--intensity needs exactly one MASKS file (got %zu); use --intensity-dir", files.n);

    cp_atomic at, mat;
    int use_at = op.output && strcmp(op.output, "-");
    FILE *fp = stdout, *mf = NULL;
    if (use_at) {
        if (cp_atomic_open(&at, op.output)) {
            cli_err("%s", cp_errmsg());
            cp_strlist_free(&files);
            return CLI_EXIT_FATAL;
        }
        fp = at.fp;
    }
    if (op.manifest) {
        if (cp_atomic_open(&mat, op.manifest)) {
            cli_err("%s", cp_errmsg());
            if (use_at)
                cp_atomic_abort(&at);
            cp_strlist_free(&files);
            return CLI_EXIT_FATAL;
        }
        mf = mat.fp;
    }
    out o = {0};
    o.fp = fp;
    o.fmt = op.format;
    int rc;
    if (op.merge)
        rc = run_merge(&op, &files, fp);
    else if (op.truth)
        rc = run_quality(&op, &files, &o, mf);
    else
        rc = run_cells(&op, &files, &o, mf);
    free(o.line);
    cp_strlist_free(&files);
    int werr = 0;
    if (use_at) {
        if (cp_atomic_commit(&at)) {
            cli_err("%s", cp_errmsg());
            werr = 1;
        }
    } else if (fflush(stdout) || ferror(stdout)) {
        cli_err("writing the table to stdout failed");
        werr = 1;
    }
    if (mf && cp_atomic_commit(&mat)) {
        cli_err("%s", cp_errmsg());
        werr = 1;
    }
    return werr ? CLI_EXIT_FATAL : rc;
}
