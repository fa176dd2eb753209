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

/* Every table goes through the library's table writer; a cell that fails is
 * reported when the table ends. */
typedef cp_table_writer out;

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

static const char *MANIFEST_COLS[] = {"input", "image", "status", "rows", "error"};

/* One NDJSON row of the manifest table (error left out when there is none). */
static void manifest_line(cp_manifest *mf, const char *input, const char *image, const char *status,
                          long long rows, const char *err)
{
    if (!mf)
        return;
    out o;
    cp_tw_begin(&o, NULL, CP_FMT_NDJSON, CP_FLOATS_PYTHON, MANIFEST_COLS, 5);
    cp_tw_str(&o, input);
    cp_tw_str(&o, image ? image : "");
    cp_tw_str(&o, status);
    cp_tw_int(&o, rows);
    if (err)
        cp_tw_str(&o, err);
    else
        cp_tw_absent(&o);
    cp_tw_end_row(&o);
    size_t n;
    const char *line = cp_tw_text(&o, &n);
    if (o.err || cp_manifest_write(mf, line, n - 1)) /* the writer's newline is the manifest's */
        cli_err("%s", cp_errmsg());
    cp_tw_end(&o);
}

/* ---- per-cell and summary modes ----------------------------------------- */

/* The per-cell columns: name, kind and place in the cell's props struct (a new
 * measurement is one line here). K_UNIT is the volume's length unit. */
enum { K_U32, K_I64, K_INT, K_DBL, K_UNIT };
typedef struct cell_col {
    const char *name;
    int kind;
    size_t off;
} cell_col;

/* field names are the column names */
#define C2(field, kind) {#field, kind, offsetof(cp_cell_props, field)}
static const cell_col CELL_COLS[] = {
    C2(label, K_U32), C2(area, K_I64), C2(perimeter, K_DBL), C2(centroid_y, K_DBL),
    C2(centroid_x, K_DBL), C2(bbox_min_row, K_INT), C2(bbox_min_col, K_INT), C2(bbox_max_row, K_INT),
    C2(bbox_max_col, K_INT), C2(major_axis_length, K_DBL), C2(minor_axis_length, K_DBL),
    C2(aspect_ratio, K_DBL), C2(eccentricity, K_DBL), C2(orientation, K_DBL), C2(solidity, K_DBL),
    C2(extent, K_DBL), C2(equivalent_diameter, K_DBL), C2(convex_area, K_I64), C2(euler_number, K_INT)};
#undef C2

#define C3(field, kind) {#field, kind, offsetof(cp_cell_props3d, field)}
#define EIGVAL(k) {"inertia_eigval_" #k, K_DBL, offsetof(cp_cell_props3d, inertia_eigvals[k])}
static const cell_col CELL3_COLS[] = {
    C3(label, K_U32), C3(volume, K_I64), C3(surface_area, K_DBL), C3(centroid_z, K_DBL),
    C3(centroid_y, K_DBL), C3(centroid_x, K_DBL), C3(bbox_min_plane, K_INT), C3(bbox_min_row, K_INT),
    C3(bbox_min_col, K_INT), C3(bbox_max_plane, K_INT), C3(bbox_max_row, K_INT), C3(bbox_max_col, K_INT),
    C3(major_axis_length, K_DBL), C3(minor_axis_length, K_DBL), C3(aspect_ratio, K_DBL),
    C3(solidity, K_DBL), C3(extent, K_DBL), C3(equivalent_diameter, K_DBL), C3(convex_volume, K_I64),
    C3(euler_number, K_INT), EIGVAL(0), EIGVAL(1), EIGVAL(2), C3(volume_physical, K_DBL),
    C3(surface_area_physical, K_DBL), {"unit", K_UNIT, 0}};
#undef C3
#undef EIGVAL

static const char *INTENSITY_STATS[] = {"mean", "min", "max", "sum", "std"};
static const char *STAT_NAMES[] = {"mean", "std", "median", "min", "max"};
/* the columns --summary summarises */
static const char *SUM_FIELDS[] = {"area", "perimeter", "aspect_ratio", "eccentricity",
                                   "solidity", "extent", "equivalent_diameter"};
static const char *SUM3_FIELDS[] = {"volume", "surface_area", "aspect_ratio", "solidity", "extent",
                                    "equivalent_diameter"};
#define MAX_SUM 7
#define NELEM(a) (int)(sizeof a / sizeof *a)
_Static_assert(MAX_SUM >= NELEM(SUM_FIELDS) && MAX_SUM >= NELEM(SUM3_FIELDS), "MAX_SUM");

/* A kind of cell table (2D images or volumes): its columns, the size of its
 * props struct, and where the filters find the edge flag and the size. */
typedef struct cell_kind {
    const cell_col *cols;
    int ncols;
    size_t size;
    size_t edge_off, count_off; /* touches_edge (int); area or volume (int64_t) */
    const char *const *sum;
    int nsum;
} cell_kind;

static const cell_kind CELLS2 = {CELL_COLS, NELEM(CELL_COLS), sizeof(cp_cell_props),
                                 offsetof(cp_cell_props, touches_edge), offsetof(cp_cell_props, area),
                                 SUM_FIELDS, NELEM(SUM_FIELDS)};
static const cell_kind CELLS3 = {CELL3_COLS, NELEM(CELL3_COLS), sizeof(cp_cell_props3d),
                                 offsetof(cp_cell_props3d, touches_edge), offsetof(cp_cell_props3d, volume),
                                 SUM3_FIELDS, NELEM(SUM3_FIELDS)};

/* The measured cells of one image, of either kind. */
typedef struct cells {
    const cell_kind *kind;
    size_t n;
    const void *props;                   /* n structs of kind->size */
    int channels;
    const cp_intensity_stats *intensity; /* n*channels, cell-major */
    const char *unit;                    /* K_UNIT columns */
} cells;

static const char *cell_at(const cells *c, size_t i)
{
    return (const char *)c->props + i * c->kind->size;
}

static long long col_int(const cell_col *col, const char *cell)
{
    const void *v = cell + col->off;
    switch (col->kind) {
    case K_U32: return *(const uint32_t *)v;
    case K_I64: return *(const int64_t *)v;
    default: return *(const int *)v;
    }
}

static double col_value(const cell_col *col, const char *cell)
{
    return col->kind == K_DBL ? *(const double *)(cell + col->off) : (double)col_int(col, cell);
}

static const cell_col *find_col(const cell_kind *k, const char *name)
{
    for (int i = 0; i < k->ncols; i++)
        if (!strcmp(k->cols[i].name, name))
            return k->cols + i;
    return NULL;
}

static int keep_cell(const opts *op, const cells *c, size_t i)
{
    const char *p = cell_at(c, i);
    int edge = *(const int *)(p + c->kind->edge_off);
    int64_t size = *(const int64_t *)(p + c->kind->count_off);
    if (op->exclude_edges && edge)
        return 0;
    if (op->min_area >= 0 && size < op->min_area)
        return 0;
    if (op->max_area >= 0 && size > op->max_area)
        return 0;
    return 1;
}

/* Column names, and JSON keys where they differ (summaries nest their
 * statistics: {"image": ..., "summary": {"total_cells": N, "area": {"mean": ...}}}). */
typedef struct columns {
    cp_strlist names, keys;
} columns;

static void add_col(columns *c, const char *name, const char *key)
{
    if (cp_strlist_push(&c->names, name) || (key && cp_strlist_push(&c->keys, key))) {
        cli_err("out of memory");
        exit(CLI_EXIT_FATAL);
    }
}

static void free_cols(columns *c)
{
    cp_strlist_free(&c->names);
    cp_strlist_free(&c->keys);
}

static void make_cols(const opts *op, int channels, columns *c)
{
    const cell_kind *kind = op->vol ? &CELLS3 : &CELLS2;
    char b[64], k[96];
    if (op->summary) {
        add_col(c, "image", "image");
        add_col(c, "total_cells", "summary/total_cells");
        for (int f = 0; f < kind->nsum; f++)
            for (int s = 0; s < 5; s++) {
                snprintf(b, sizeof b, "%s_%s", kind->sum[f], STAT_NAMES[s]);
                snprintf(k, sizeof k, "summary/%s/%s", kind->sum[f], STAT_NAMES[s]);
                add_col(c, b, k);
            }
        return;
    }
    add_col(c, "image", NULL);
    for (int i = 0; i < kind->ncols; i++)
        add_col(c, kind->cols[i].name, NULL);
    for (int ch = 0; ch < channels; ch++)
        for (int s = 0; s < 5; s++) {
            snprintf(b, sizeof b, "intensity_%s_c%d", INTENSITY_STATS[s], ch);
            add_col(c, b, NULL);
        }
}

static void table_begin(out *o, const opts *op, const columns *c)
{
    cp_tw_begin(o, o->fp, op->format, CP_FLOATS_PYTHON, (const char *const *)c->names.items, (int)c->names.n);
    if (c->keys.n)
        o->json_keys = (const char *const *)c->keys.items;
}

/* 0, or -1 when the table could not be written (reported). */
static int table_end(out *o)
{
    if (!cp_tw_end(o))
        return 0;
    cli_err("%s", cp_errmsg());
    return -1;
}

/* One per-cell row. */
static void cell_row(out *o, const char *image, const cells *c, size_t i)
{
    const char *p = cell_at(c, i);
    cp_tw_str(o, image);
    for (int k = 0; k < c->kind->ncols; k++) {
        const cell_col *col = c->kind->cols + k;
        switch (col->kind) {
        case K_DBL: cp_tw_num(o, col_value(col, p)); break;
        case K_UNIT: cp_tw_str(o, c->unit); break;
        default: cp_tw_int(o, col_int(col, p)); break;
        }
    }
    for (int ch = 0; ch < c->channels; ch++) {
        const cp_intensity_stats *s = c->intensity + i * (size_t)c->channels + ch;
        double v[5] = {s->mean, s->min, s->max, s->sum, s->std};
        for (int k = 0; k < 5; k++)
            cp_tw_num(o, v[k]);
    }
    cp_tw_end_row(o);
}

/* One image: measured rows appended to the table. Returns rows or -1. */
static long long emit_cells(out *o, const opts *op, const char *image, const cells *c)
{
    if (op->summary) {
        size_t n = 0;
        double *v = malloc((c->n + 1) * sizeof *v);
        if (!v)
            return -1;
        cp_summary s[MAX_SUM];
        for (int f = 0; f < c->kind->nsum; f++) {
            const cell_col *col = find_col(c->kind, c->kind->sum[f]);
            n = 0;
            for (size_t i = 0; i < c->n; i++)
                if (keep_cell(op, c, i))
                    v[n++] = col_value(col, cell_at(c, i));
            cp_summarize(v, n, s + f);
        }
        free(v);
        cp_tw_str(o, image);
        cp_tw_int(o, (long long)n);
        for (int f = 0; f < c->kind->nsum; f++) {
            double vals[5] = {s[f].mean, s[f].std, s[f].median, s[f].min, s[f].max};
            for (int k = 0; k < 5; k++)
                cp_tw_num(o, vals[k]);
        }
        cp_tw_end_row(o);
        return 1;
    }
    size_t *keep = malloc((c->n + 1) * sizeof *keep);
    if (!keep)
        return -1;
    size_t nk = 0;
    for (size_t i = 0; i < c->n; i++)
        if (keep_cell(op, c, i))
            keep[nk++] = i;
    /* Rows are formatted in parallel chunks (shortest round-trip numbers are
     * the costly part) and joined in order, so the bytes do not depend on
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
        cp_tw_fork(o, o->rows + ch * chunk, q);
        size_t end = (ch + 1) * chunk < nk ? (ch + 1) * chunk : nk;
        for (size_t j = ch * chunk; j < end; j++)
            cell_row(q, image, c, keep[j]);
    }
    for (size_t ch = 0; ch < nchunks; ch++)
        cp_tw_join(o, parts + ch);
    free(parts);
    free(keep);
    return (long long)nk;
}

static int run_cells(opts *op, cp_strlist *files, out *o, cp_manifest *mf)
{
    cp_strlist inten = {0};
    if (op->intensity_dir && cp_list_images(op->intensity_dir, 0, NULL, &inten)) {
        cli_err("%s", cp_errmsg());
        return CLI_EXIT_USAGE;
    }
    /* the intensity channel count fixes the columns: read the first one early */
    int failed = 0, channels = 0, begun = 0, vol_known = 0;
    op->vol = op->force3d;
    columns cols = {0};
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
            make_cols(op, channels, &cols);
            table_begin(o, op, &cols);
            begun = 1;
        }
        if (rc) {
            cli_err("%s", g_err);
            manifest_line(mf, path, image, "error", 0, g_err);
            failed++;
        } else {
            cells c = op->vol ? (cells){&CELLS3, t3.n, t3.cells, t3.channels, t3.intensity, vs.unit}
                              : (cells){&CELLS2, t.n, t.cells, t.channels, t.intensity, NULL};
            long long rows = emit_cells(o, op, image ? image : path, &c);
            cli_info("%s: %zu cells, %lld rows", path, c.n, rows);
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
        make_cols(op, 0, &cols);
        table_begin(o, op, &cols);
    }
    int werr = table_end(o);
    free_cols(&cols);
    cp_strlist_free(&inten);
    return werr ? CLI_EXIT_FATAL : failed ? CLI_EXIT_PARTIAL : CLI_EXIT_OK;
}

/* ---- quality mode ----------------------------------------------------------- */

static void quality_rows(out *o, const opts *op, const char *image, const char *truth,
                         const cp_match_result *r, const cp_boundary_score *bs)
{
    for (int k = 0; k < r->n_thresholds; k++) {
        cp_tw_str(o, image);
        cp_tw_str(o, truth);
        cp_tw_num(o, r->thresholds[k]);
        cp_tw_int(o, r->n_true);
        cp_tw_int(o, r->n_pred);
        cp_tw_int(o, r->tp[k]);
        cp_tw_int(o, r->fp[k]);
        cp_tw_int(o, r->fn[k]);
        double v[6] = {r->ap[k], r->precision[k], r->recall[k], r->f1[k], r->mean_iou[k], r->aji};
        for (int i = 0; i < 6; i++)
            cp_tw_num(o, v[i]);
        for (int s = 0; s < op->nscales; s++) {
            cp_tw_num(o, bs[s].precision);
            cp_tw_num(o, bs[s].recall);
            cp_tw_num(o, bs[s].fscore);
        }
        cp_tw_end_row(o);
    }
}

static int run_quality(const opts *op, cp_strlist *preds, out *o, cp_manifest *mf)
{
    static const char *base[] = {"image", "truth", "threshold", "n_true", "n_pred", "tp", "fp",
                                 "fn", "ap", "precision", "recall", "f1", "mean_matched_iou", "aji"};
    columns cols = {0};
    for (size_t i = 0; i < sizeof base / sizeof *base; i++)
        add_col(&cols, base[i], NULL);
    for (int s = 0; s < op->nscales; s++) {
        static const char *bn[] = {"boundary_precision", "boundary_recall", "boundary_fscore"};
        for (int k = 0; k < 3; k++) {
            char b[80], v[40];
            snprintf(b, sizeof b, "%s_%s", bn[k], cp_format_double(op->scales[s], v));
            add_col(&cols, b, NULL);
        }
    }
    table_begin(o, op, &cols);

    struct stat st;
    int gt_dir = stat(op->truth, &st) == 0 && S_ISDIR(st.st_mode);
    cp_strlist gts = {0};
    if (gt_dir && cp_list_images(op->truth, 0, NULL, &gts)) {
        cli_err("%s", cp_errmsg());
        cp_tw_end(o);
        free_cols(&cols);
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
    int werr = table_end(o);
    free_cols(&cols);
    cp_strlist_free(&gts);
    return werr ? CLI_EXIT_FATAL : failed ? CLI_EXIT_PARTIAL : CLI_EXIT_OK;
}

/* ---- merge ---------------------------------------------------------------- */

static int run_merge(const opts *op, cp_strlist *files, FILE *fp)
{
    cp_table_merge m;
    int failed = 0;
    cp_table_merge_begin(&m, fp, op->format);
    for (size_t f = 0; f < files->n; f++)
        if (cp_table_merge_add(&m, files->items[f])) {
            cli_err("%s", cp_errmsg());
            failed++;
        }
    if (cp_table_merge_end(&m)) {
        cli_err("%s", cp_errmsg());
        return CLI_EXIT_FATAL;
    }
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
            op.format = cp_table_format_parse(optarg);
            if (op.format < 0 || op.format == CP_FMT_PARQUET)
                cli_usage_error("--format: '%s' is not csv, tsv, json or ndjson", optarg);
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

    cp_atomic at;
    cp_manifest man, *mf = NULL;
    int use_at = op.output && strcmp(op.output, "-");
    FILE *fp = stdout;
    if (use_at) {
        if (cp_atomic_open(&at, op.output)) {
            cli_err("%s", cp_errmsg());
            cp_strlist_free(&files);
            return CLI_EXIT_FATAL;
        }
        fp = at.fp;
    }
    if (op.manifest) {
        if (cp_manifest_open(&man, op.manifest, 0)) {
            cli_err("%s", cp_errmsg());
            if (use_at)
                cp_atomic_abort(&at);
            cp_strlist_free(&files);
            return CLI_EXIT_FATAL;
        }
        mf = &man;
    }
    out o = {0};
    o.fp = fp;
    int rc;
    if (op.merge)
        rc = run_merge(&op, &files, fp);
    else if (op.truth)
        rc = run_quality(&op, &files, &o, mf);
    else
        rc = run_cells(&op, &files, &o, mf);
    cp_strlist_free(&files);
    /* a table that could not be written is not left behind */
    int werr = rc == CLI_EXIT_FATAL;
    if (use_at && werr) {
        cp_atomic_abort(&at);
    } else if (use_at) {
        if (cp_atomic_commit(&at)) {
            cli_err("%s", cp_errmsg());
            werr = 1;
        }
    } else if (fflush(stdout) || ferror(stdout)) {
        cli_err("writing the table to stdout failed");
        werr = 1;
    }
    if (mf && cp_manifest_close(mf)) {
        cli_err("%s", cp_errmsg());
        werr = 1;
    }
    return werr ? CLI_EXIT_FATAL : rc;
}
