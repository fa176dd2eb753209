/* spotquery: query SeeSpot HCR spot tables from the shell, CSV or JSON out. */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/cellpose.h"
#include "common/cli.h"

static void usage(FILE *fp)
{
    fprintf(fp,
            "Usage: spotquery COMMAND [OPTIONS] SOURCE\n"
            "Query SeeSpot HCR spot tables (a dataset folder or one CSV/TSV table, plain or .gz).\n\n"
            "Commands:\n"
            "  spots         rows after filters, optionally sampled (csv)\n"
            "  api           one JSON document shaped like SeeSpot's /api/real_spots_data\n"
            "  summary       per-channel summary stats (+ removed_spots, unchanged_spots)\n"
            "  pairs         all 2-combinations of the spot channels\n"
            "  ratios        the dye ratio matrix\n"
            "  sankey        chan -> final channel flows over the full table\n"
            "  counts        cell x channel (or gene) count matrix\n"
            "  datasets ROOT datasets under a folder, newest first\n"
            "  neuroglancer  Neuroglancer URL (or --json state) for spots\n\n"
            "Output: --format csv|tsv|json|ndjson|parquet (parquet: spots with -o only),\n"
            "-o FILE (written atomically), -q, -v,\n"
            "        --threads N, --help, --version\n"
            "Filters: --valid-only --channel C[,C] --unmixed-channel C[,C] --cell ID[,ID]\n"
            "         --round N[,N] --reassigned yes|no --removed yes|no --where 'COL OP VALUE'\n"
            "         --z MIN:MAX --y MIN:MAX --x MIN:MAX\n"
            "spots:   --columns a,b,c --sample N --sampling class_balanced|random\n"
            "         --display-chan mixed|unmixed --seed S\n"
            "api:     --sample N (5000) --sampling --display-chan --seed --bucket NAME\n"
            "summary: --recompute (from the spot tables instead of the summary CSVs)\n"
            "counts:  --by unmixed|mixed --genes --all (invalid spots too) --background\n"
            "Cells from a label volume (spots, counts, api, neuroglancer): --labels FILE (.tif|.zarr)\n"
            "         --label-scale S|SZ,SY,SX|auto --label-coords Z,Y,X (z,y,x) --all-labels (counts)\n"
            "         --label-region VOXELS\n"
            "neuroglancer: --spot ID | filters, --max N (1000) --json --bucket --color --scale\n"
            "See spotquery(1).\n");
}

enum {
    O_FORMAT = 256, O_THREADS, O_VALID, O_CHANNEL, O_UCHANNEL, O_CELL, O_ROUND, O_REASSIGNED, O_REMOVED,
    O_WHERE, O_Z, O_Y, O_X, O_COLUMNS, O_SAMPLE, O_SAMPLING, O_DISPLAY, O_SEED, O_BUCKET, O_RECOMPUTE, O_BY,
    O_GENES, O_ALL, O_BACKGROUND, O_SPOT, O_MAX, O_JSON, O_COLOR, O_SCALE, O_VERSION,
    O_LABELS, O_LSCALE, O_ALL_LABELS, O_LREGION, O_LCOORDS,
    O_GSPOTS, O_GCHANNELS, O_GROUNDS, O_GTILES, O_GCELLS, O_GGZ, O_GNOOPT, O_GDERIVED
};

static const struct option LONG[] = {
    {"format", 1, 0, O_FORMAT}, {"output", 1, 0, 'o'}, {"threads", 1, 0, O_THREADS},
    {"valid-only", 0, 0, O_VALID}, {"channel", 1, 0, O_CHANNEL}, {"unmixed-channel", 1, 0, O_UCHANNEL},
    {"cell", 1, 0, O_CELL}, {"round", 1, 0, O_ROUND}, {"reassigned", 1, 0, O_REASSIGNED},
    {"removed", 1, 0, O_REMOVED}, {"where", 1, 0, O_WHERE}, {"z", 1, 0, O_Z}, {"y", 1, 0, O_Y},
    {"x", 1, 0, O_X}, {"columns", 1, 0, O_COLUMNS}, {"sample", 1, 0, O_SAMPLE},
    {"sampling", 1, 0, O_SAMPLING}, {"display-chan", 1, 0, O_DISPLAY}, {"seed", 1, 0, O_SEED},
    {"bucket", 1, 0, O_BUCKET}, {"recompute", 0, 0, O_RECOMPUTE}, {"by", 1, 0, O_BY},
    {"genes", 0, 0, O_GENES}, {"all", 0, 0, O_ALL}, {"background", 0, 0, O_BACKGROUND},
    {"spot", 1, 0, O_SPOT}, {"max", 1, 0, O_MAX}, {"json", 0, 0, O_JSON}, {"color", 1, 0, O_COLOR},
    {"scale", 1, 0, O_SCALE}, {"help", 0, 0, 'h'}, {"version", 0, 0, O_VERSION},
    {"quiet", 0, 0, 'q'}, {"verbose", 0, 0, 'v'}, {"labels", 1, 0, O_LABELS},
    {"label-scale", 1, 0, O_LSCALE}, {"all-labels", 0, 0, O_ALL_LABELS}, {"label-region", 1, 0, O_LREGION},
    {"label-coords", 1, 0, O_LCOORDS},
    /* hidden: synthetic datasets for tests and benchmarks */
    {"spots", 1, 0, O_GSPOTS}, {"channels", 1, 0, O_GCHANNELS}, {"rounds", 1, 0, O_GROUNDS},
    {"tiles", 1, 0, O_GTILES}, {"cells", 1, 0, O_GCELLS}, {"gzip", 0, 0, O_GGZ},
    {"no-optional", 0, 0, O_GNOOPT}, {"derived", 0, 0, O_GDERIVED}, {0, 0, 0, 0}};

/* The column the label volume gives. */
#define CELL_COL "cell"

typedef struct args {
    const char *cmd, *source, *out;
    int format; /* -1 = default of the command */
    int threads;
    cp_spot_filter f;
    int *rounds, nrounds;
    cp_strlist columns;
    long sample;
    int sampling, display_unmixed;
    uint64_t seed;
    const char *bucket, *color;
    double scale;
    int recompute, by_mixed, genes, all, background, json;
    long spot, max;
    const char *labels;          /* label volume: the spots' cells */
    cp_spot_label_opts lopt;
    int all_labels, scale_auto;
    cp_strlist coords;           /* --label-coords */
    cp_spot_synth_opts gen;
} args;

static int split_list(const char *flag, const char *s, cp_strlist *l)
{
    const char *p = s;
    for (;;) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == 0)
            cli_usage_error("%s: empty item in '%s'", flag, s);
        char *item = strndup(p, n);
        cp_strlist_push(l, item);
        free(item);
        if (!e)
            break;
        p = e + 1;
    }
    return 0;
}

static void add_where(cp_spot_filter *f, const char *col, cp_op op, const char *value)
{
    if (cp_spot_filter_where(f, col, op, value))
        cli_usage_error("%s", cp_errmsg());
}

/* --z MIN:MAX is col >= MIN and col <= MAX: the ends keep their text, so they
 * compare at the column's precision like any --where. */
static void parse_range(cp_spot_filter *f, const char *col, const char *s)
{
    char flag[8];
    snprintf(flag, sizeof flag, "--%s", col);
    const char *c = strchr(s, ':');
    if (!c)
        cli_usage_error("%s: '%s' is not MIN:MAX", flag, s);
    char *a = strndup(s, (size_t)(c - s));
    if (*a) {
        cli_parse_double(flag, a, -INFINITY, INFINITY);
        add_where(f, col, CP_OP_GE, a);
    }
    if (c[1]) {
        cli_parse_double(flag, c + 1, -INFINITY, INFINITY);
        add_where(f, col, CP_OP_LE, c + 1);
    }
    free(a);
}

/* --label-scale S or SZ,SY,SX: positive numbers. */
static void parse_scale(const char *s, double out[3])
{
    cp_strlist l = {0};
    split_list("--label-scale", s, &l);
    if (l.n != 1 && l.n != 3)
        cli_usage_error("--label-scale: expected S or SZ,SY,SX, not '%s'", s);
    for (int a = 0; a < 3; a++)
        out[a] = cli_parse_double("--label-scale", l.items[l.n == 1 ? 0 : a], 1e-9, 1e9);
    cp_strlist_free(&l);
}

static int yes_no(const char *flag, const char *s)
{
    if (!strcmp(s, "yes") || !strcmp(s, "true"))
        return 1;
    if (!strcmp(s, "no") || !strcmp(s, "false"))
        return 0;
    cli_usage_error("%s: expected yes or no, not '%s'", flag, s);
}

static void parse_args(int argc, char **argv, args *a)
{
    memset(a, 0, sizeof *a);
    a->format = -1;
    cp_spot_filter_init(&a->f);
    a->sample = -1;
    a->max = 1000;
    a->spot = -1;
    a->bucket = "aind-open-data";
    a->color = "#FFFF00";
    a->scale = 1.0;
    cp_spot_synth_defaults(&a->gen);
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        usage(stdout);
        exit(0);
    }
    if (argc >= 2 && !strcmp(argv[1], "--version")) {
        cli_print_version();
        exit(0);
    }
    if (argc < 2)
        cli_usage_error("a command is required");
    a->cmd = argv[1];
    static const char *cmds[] = {"spots", "api", "summary", "pairs", "ratios", "sankey", "counts", "datasets",
                                 "neuroglancer", "gen-synthetic", NULL};
    int ok = 0;
    for (int i = 0; cmds[i]; i++)
        ok |= !strcmp(cmds[i], a->cmd);
    if (!ok)
        cli_usage_error("unknown command '%s'", a->cmd);
    optind = 2;
    int c;
    while ((c = getopt_long(argc, argv, "o:qvh", LONG, NULL)) != -1) {
        switch (c) {
        case 'o': a->out = optarg; break;
        case 'q': cli_verbosity = 0; break;
        case 'v': cli_verbosity = 2; break;
        case 'h': usage(stdout); exit(0);
        case O_VERSION: cli_print_version(); exit(0);
        case O_FORMAT:
            if ((a->format = cp_table_format_parse(optarg)) < 0)
                cli_usage_error("--format: expected csv, tsv, json, ndjson or parquet, not '%s'", optarg);
            break;
        case O_THREADS: a->threads = (int)cli_parse_long("--threads", optarg, 1, 256); break;
        case O_VALID: a->f.valid_only = 1; break;
        case O_CHANNEL: split_list("--channel", optarg, &a->f.channels); break;
        case O_UCHANNEL: split_list("--unmixed-channel", optarg, &a->f.unmixed_channels); break;
        case O_CELL: split_list("--cell", optarg, &a->f.cells); break;
        case O_ROUND: {
            cp_strlist l = {0};
            split_list("--round", optarg, &l);
            for (size_t i = 0; i < l.n; i++) {
                a->rounds = realloc(a->rounds, (size_t)(a->nrounds + 1) * sizeof *a->rounds);
                a->rounds[a->nrounds++] = (int)cli_parse_long("--round", l.items[i], 0, 127);
            }
            cp_strlist_free(&l);
            break;
        }
        case O_REASSIGNED: a->f.reassigned = yes_no("--reassigned", optarg); break;
        case O_REMOVED: a->f.removed = yes_no("--removed", optarg); break;
        case O_WHERE: {
            cp_spot_where w;
            if (cp_spot_where_parse(optarg, &w))
                cli_usage_error("%s", cp_errmsg());
            add_where(&a->f, w.col, w.op, w.value);
            free(w.col);
            free(w.value);
            break;
        }
        case O_Z: parse_range(&a->f, "z", optarg); break;
        case O_Y: parse_range(&a->f, "y", optarg); break;
        case O_X: parse_range(&a->f, "x", optarg); break;
        case O_COLUMNS: split_list("--columns", optarg, &a->columns); break;
        case O_SAMPLE: a->sample = cli_parse_long("--sample", optarg, 0, 2000000000L); break;
        case O_SAMPLING:
            if (!strcmp(optarg, "class_balanced")) a->sampling = CP_SAMPLE_CLASS_BALANCED;
            else if (!strcmp(optarg, "random")) a->sampling = CP_SAMPLE_RANDOM;
            else cli_usage_error("--sampling: expected class_balanced or random, not '%s'", optarg);
            break;
        case O_DISPLAY:
            if (!strcmp(optarg, "mixed")) a->display_unmixed = 0;
            else if (!strcmp(optarg, "unmixed")) a->display_unmixed = 1;
            else cli_usage_error("--display-chan: expected mixed or unmixed, not '%s'", optarg);
            break;
        case O_SEED: a->seed = a->gen.seed = (uint64_t)cli_parse_long("--seed", optarg, 0, 0x7fffffffffffffffL); break;
        case O_BUCKET: a->bucket = optarg; break;
        case O_RECOMPUTE: a->recompute = 1; break;
        case O_BY:
            if (!strcmp(optarg, "mixed")) a->by_mixed = 1;
            else if (!strcmp(optarg, "unmixed")) a->by_mixed = 0;
            else cli_usage_error("--by: expected unmixed or mixed, not '%s'", optarg);
            break;
        case O_GENES: a->genes = 1; break;
        case O_ALL: a->all = 1; break;
        case O_BACKGROUND: a->background = 1; break;
        case O_SPOT: a->spot = cli_parse_long("--spot", optarg, 1, 0x7fffffffL); break;
        case O_MAX: a->max = cli_parse_long("--max", optarg, 1, 100000000L); break;
        case O_JSON: a->json = 1; break;
        case O_COLOR: a->color = optarg; break;
        case O_SCALE: a->scale = cli_parse_double("--scale", optarg, 1e-9, 1e9); break;
        case O_LABELS: a->labels = optarg; break;
        case O_LSCALE:
            if (!strcmp(optarg, "auto"))
                a->scale_auto = 1;
            else
                parse_scale(optarg, a->lopt.scale);
            break;
        case O_ALL_LABELS: a->all_labels = 1; break;
        case O_LCOORDS:
            cp_strlist_free(&a->coords);
            split_list("--label-coords", optarg, &a->coords);
            if (a->coords.n != 3)
                cli_usage_error("--label-coords: expected three columns Z,Y,X, not '%s'", optarg);
            for (int k = 0; k < 3; k++)
                a->lopt.coords[k] = a->coords.items[k];
            break;
        case O_LREGION: a->lopt.max_voxels = cli_parse_long("--label-region", optarg, 4096, 1L << 40); break;
        case O_GSPOTS: a->gen.nspots = (size_t)cli_parse_long("--spots", optarg, 1, 1000000000L); break;
        case O_GCHANNELS: a->gen.nchannels = (int)cli_parse_long("--channels", optarg, 1, 5); break;
        case O_GROUNDS: a->gen.nrounds = (int)cli_parse_long("--rounds", optarg, 1, 20); break;
        case O_GTILES: a->gen.ntiles = (int)cli_parse_long("--tiles", optarg, 1, 100); break;
        case O_GCELLS: a->gen.ncells = (int)cli_parse_long("--cells", optarg, 1, 100000000L); break;
        case O_GGZ: a->gen.gzip = 1; break;
        case O_GNOOPT: a->gen.with_optional = 0; break;
        case O_GDERIVED: a->gen.manifest_in_derived = 1; break;
        default: cli_usage_error("unknown option");
        }
    }
    if (optind != argc - 1)
        cli_usage_error(optind < argc ? "one SOURCE expected, got %d" : "a SOURCE is required%.0d",
                        argc - optind);
    if (a->format == CP_FMT_PARQUET && (strcmp(a->cmd, "spots") || !a->out || !strcmp(a->out, "-")))
        cli_usage_error("--format parquet: only for 'spots', with -o FILE");
    a->source = argv[optind];
    static const char *with_labels[] = {"spots", "counts", "api", "neuroglancer", NULL};
    int takes = 0;
    for (int i = 0; with_labels[i]; i++)
        takes |= !strcmp(with_labels[i], a->cmd);
    if (!a->labels && (a->lopt.scale[0] > 0 || a->scale_auto || a->all_labels || a->lopt.max_voxels || a->coords.n))
        cli_usage_error("--label-scale, --label-coords, --all-labels and --label-region go with --labels");
    if (a->labels && !takes)
        cli_usage_error("--labels: only for spots, counts, api and neuroglancer");
    if (a->all_labels && strcmp(a->cmd, "counts"))
        cli_usage_error("--all-labels: only for counts");
    if (a->labels)
        a->f.cell_col = CELL_COL;
}

/* ---- output ---------------------------------------------------------------- */

typedef struct sink {
    FILE *fp;
    cp_atomic at;
    int atomic;
} sink;

static int sink_open(sink *s, const char *path)
{
    memset(s, 0, sizeof *s);
    if (!path || !strcmp(path, "-")) {
        s->fp = stdout;
        return 0;
    }
    if (cp_atomic_open(&s->at, path)) {
        cli_err("%s", cp_errmsg());
        return -1;
    }
    s->atomic = 1;
    s->fp = s->at.fp;
    return 0;
}

static int sink_close(sink *s, int ok)
{
    if (!s->atomic) {
        if (fflush(stdout) || ferror(stdout)) {
            cli_err("write error on standard output");
            return CLI_EXIT_FATAL;
        }
        return ok ? 0 : CLI_EXIT_FATAL;
    }
    if (!ok || cli_interrupted) {
        cp_atomic_abort(&s->at);
        return cli_interrupted ? CLI_EXIT_INTR : CLI_EXIT_FATAL;
    }
    if (cp_atomic_commit(&s->at)) {
        cli_err("%s", cp_errmsg());
        return CLI_EXIT_FATAL;
    }
    return 0;
}

static int write_table(const args *a, const cp_stable *t)
{
    sink s;
    if (sink_open(&s, a->out))
        return CLI_EXIT_FATAL;
    int fmt = a->format < 0 ? CP_FMT_CSV : a->format;
    int rc = cp_stable_write(s.fp, t, NULL, 0, NULL, 0, (cp_table_format)fmt);
    if (rc)
        cli_err("%s", cp_errmsg());
    return sink_close(&s, rc == 0);
}

static int write_text(const args *a, const char *text)
{
    sink s;
    if (sink_open(&s, a->out))
        return CLI_EXIT_FATAL;
    fputs(text, s.fp);
    fputc('\n', s.fp);
    return sink_close(&s, !ferror(s.fp));
}

static int fail(void)
{
    if (cli_interrupted)
        return CLI_EXIT_INTR;
    cli_err("%s", cp_errmsg());
    return CLI_EXIT_FATAL;
}

/* Progress over the label volume's regions; stops on a signal. */
static int label_progress(void *user, size_t done, size_t total)
{
    cli_progress *p = user;
    if (done == 1)
        cli_progress_start(p, total, "regions");
    cli_progress_update(p, done, NULL);
    if (done == total)
        cli_progress_end(p);
    return cli_interrupted != 0;
}

/* ---- loading --------------------------------------------------------------- */

static int push_unique(cp_strlist *l, const char *s)
{
    for (size_t i = 0; i < l->n; i++)
        if (!strcmp(l->items[i], s))
            return 0;
    return cp_strlist_push(l, s);
}

/* The rounds and threads asked for, as load options. */
static cp_spot_load_opts load_opts(const args *a)
{
    cp_spot_load_opts lo = {0};
    lo.rounds = a->rounds;
    lo.nrounds = a->nrounds;
    lo.threads = a->threads;
    return lo;
}

static int load(const args *a, cp_spot_dataset *d, const cp_strlist *extra, cp_stable *t)
{
    cp_strlist need = {0}, filt = {0};
    cp_spot_filter_columns(&a->f, &filt);
    static const char *zyx[] = {"z", "y", "x"};
    for (int i = 0; a->labels && i < 3; i++)
        push_unique(&need, a->lopt.coords[i] ? a->lopt.coords[i] : zyx[i]);
    for (size_t i = 0; i < filt.n; i++)
        if (!a->labels || strcmp(filt.items[i], CELL_COL))
            push_unique(&need, filt.items[i]);
    for (size_t i = 0; extra && i < extra->n; i++)
        if (!a->labels || strcmp(extra->items[i], CELL_COL))
            push_unique(&need, extra->items[i]);
    cp_strlist_free(&filt);
    cp_spot_load_opts lo = load_opts(a);
    lo.columns = (const char *const *)need.items;
    lo.ncolumns = (int)need.n;
    double t0 = cp_seconds();
    int rc = cp_spot_load(d, &lo, t);
    cp_strlist_free(&need);
    if (!rc) {
        cli_info("loaded %zu spots in %.2f s", t->nrows, cp_seconds() - t0);
        rc = cp_spot_channels(d, t);
    }
    cp_spot_label_opts lo2 = a->lopt;
    cli_progress prog;
    lo2.progress = label_progress;
    lo2.user = &prog;
    if (!rc && a->labels && a->scale_auto && !(rc = cp_spot_label_scale(d, a->labels, lo2.scale)))
        cli_info("label scale %.17g,%.17g,%.17g (from the voxel sizes)", lo2.scale[0], lo2.scale[1], lo2.scale[2]);
    if (!rc && a->labels) {
        t0 = cp_seconds();
        rc = cp_spot_assign_labels(t, a->labels, &lo2, CELL_COL);
        if (!rc)
            cli_info("assigned the spots to the cells of %s in %.2f s", a->labels, cp_seconds() - t0);
    }
    return rc;
}

/* Unknown channel names are errors, caught before any filtering. */
static int check_channels(const cp_spot_dataset *d, const cp_strlist *l, const char *flag)
{
    for (size_t i = 0; i < l->n; i++) {
        int ok = !strcmp(l->items[i], "none") || !strcmp(l->items[i], "removed") || !strcmp(l->items[i], "Removed");
        for (size_t k = 0; k < d->channels.n && !ok; k++)
            ok = !strcmp(d->channels.items[k], l->items[i]);
        if (!ok) {
            char known[512] = "";
            for (size_t k = 0; k < d->channels.n; k++)
                snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", k ? "," : "",
                         d->channels.items[k]);
            cli_err("%s: unknown channel '%s' (channels: %s)", flag, l->items[i], known);
            return CLI_EXIT_FATAL;
        }
    }
    return 0;
}

/* Filtered (and sampled) rows of a loaded table. */
static int select_rows(const args *a, const cp_stable *t, long sample, uint32_t **rows, size_t *n)
{
    uint32_t *r;
    size_t m;
    if (cp_spot_filter_rows(t, &a->f, &r, &m))
        return fail();
    if (sample >= 0 && (size_t)sample < m) {
        int cls = cp_stable_find(t, a->display_unmixed ? "unmixed_chan" : "chan");
        uint32_t *s;
        size_t k;
        int rc = cp_spot_sample(t, r, m, (size_t)sample, (cp_sample_mode)a->sampling, cls, a->seed, &s, &k);
        free(r);
        if (rc)
            return fail();
        r = s;
        m = k;
    }
    *rows = r;
    *n = m;
    return 0;
}

/* What a command opens and loads, freed in one place: the dataset, its
 * loaded table t, the command's output table o, the columns it needs beyond
 * the filters' (extra) and the selected rows. */
typedef struct query {
    const args *a;
    cp_spot_dataset d;
    int opened;
    cp_stable t, o;
    cp_strlist extra;
    uint32_t *rows;
    size_t n;
} query;

static int query_open(const args *a, query *q)
{
    memset(q, 0, sizeof *q);
    q->a = a;
    if (cp_spot_dataset_open(a->source, &q->d))
        return fail();
    q->opened = 1;
    return 0;
}

static void query_free(query *q)
{
    free(q->rows);
    cp_stable_free(&q->t);
    cp_stable_free(&q->o);
    cp_strlist_free(&q->extra);
    if (q->opened)
        cp_spot_dataset_free(&q->d);
    memset(q, 0, sizeof *q);
}

/* Loads what the filters and q->extra need, checks the channel flags and
 * selects the filtered rows (a sample of that many when sample >= 0). */
static int query_rows(query *q, long sample)
{
    const args *a = q->a;
    if (load(a, &q->d, &q->extra, &q->t))
        return fail();
    int rc;
    if ((rc = check_channels(&q->d, &a->f.channels, "--channel")) ||
        (rc = check_channels(&q->d, &a->f.unmixed_channels, "--unmixed-channel")))
        return rc;
    return select_rows(a, &q->t, sample, &q->rows, &q->n);
}

/* Columns cols of the selected rows into q->o (non-filter columns are read now). */
static int query_select(query *q, const cp_strlist *cols)
{
    cp_spot_load_opts lo = load_opts(q->a);
    if (cp_spot_select(&q->d, &lo, &q->t, q->rows, q->n, (const char *const *)cols->items, (int)cols->n,
                       &q->o))
        return fail();
    return 0;
}

/* ---- commands ----------------------------------------------------------------- */

static int cmd_spots(args *a)
{
    query q;
    cp_strlist all = {0}, cols = {0};
    int rc = query_open(a, &q);
    if (rc)
        return rc;
    if (cp_spot_columns(&q.d, &all) || (a->labels && push_unique(&all, CELL_COL))) {
        rc = fail();
        goto done;
    }
    const cp_strlist *want = a->columns.n ? &a->columns : &all;
    for (size_t i = 0; i < want->n; i++) {
        int ok = 0;
        for (size_t k = 0; k < all.n && !ok; k++)
            ok = !strcmp(all.items[k], want->items[i]);
        if (!ok) {
            cli_err("--columns: no column '%s' in %s", want->items[i], a->source);
            rc = CLI_EXIT_FATAL;
            goto done;
        }
        push_unique(&cols, want->items[i]);
    }
    push_unique(&q.extra, a->display_unmixed ? "unmixed_chan" : "chan");
    if (!(rc = query_rows(&q, a->sample)) && !(rc = query_select(&q, &cols)))
        rc = write_table(a, &q.o);
done:
    cp_strlist_free(&all);
    cp_strlist_free(&cols);
    query_free(&q);
    return rc;
}

static cJSON *cell_json(const cp_scol *c, size_t r)
{
    char buf[64];
    if (c->type == CP_SCOL_STR)
        return cp_scol_is_null(c, r) ? cJSON_CreateNull() : cJSON_CreateString(cp_scol_str(c, r));
    cp_scol_format(c, r, 1, buf, sizeof buf);
    return cJSON_CreateRaw(buf);
}

static cJSON *table_json(const cp_stable *t)
{
    cJSON *arr = cJSON_CreateArray();
    for (size_t r = 0; r < t->nrows; r++) {
        cJSON *o = cJSON_CreateObject();
        for (int k = 0; k < t->ncols; k++) {
            const cp_scol *c = &t->cols[k];
            char buf[64];
            const char *s = cp_scol_str(c, r);
            if (c->json_numbers && s && cp_scol_format(c, r, 1, buf, sizeof buf) > 0) {
                char *end;
                strtod(s, &end);
                if (!*end && *s && strspn(s, "0123456789.-eE+") == strlen(s) && s[0] != '.' && s[0] != '+') {
                    cJSON_AddItemToObject(o, c->name, cJSON_CreateRaw(s));
                    continue;
                }
            }
            cJSON_AddItemToObject(o, c->name, cell_json(c, r));
        }
        cJSON_AddItemToArray(arr, o);
    }
    return arr;
}

/* The unmixing matrix of the first selected round that has one (*m rows x
 * cols, to free; NULL if no round has one); returns an exit status. */
static int ratios_matrix(const cp_spot_dataset *d, const args *a, double **m, int *rows, int *cols)
{
    *m = NULL;
    *rows = *cols = 0;
    for (int i = 0; i < d->nparts; i++) {
        const cp_spot_part *p = &d->parts[i];
        int ok = !a->rounds;
        for (int k = 0; k < a->nrounds && !ok; k++)
            ok = a->rounds[k] == p->round;
        if (!ok || !p->ratios)
            continue;
        if (cp_spot_read_ratios(p->ratios, m, rows, cols))
            return fail();
        return 0;
    }
    return 0;
}

static cJSON *ratios_json(const double *m, int rows, int cols)
{
    cJSON *arr = cJSON_CreateArray();
    char buf[40];
    for (int r = 0; r < rows; r++) {
        cJSON *row = cJSON_CreateArray();
        for (int c = 0; c < cols; c++) {
            cp_format_f64(buf, sizeof buf, m[r * cols + c]);
            cJSON_AddItemToArray(row, cJSON_CreateRaw(buf));
        }
        cJSON_AddItemToArray(arr, row);
    }
    return arr;
}

/* Channel pairs as [[a, b], ...]. */
static cJSON *pairs_json(const cp_stable *p)
{
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; i < p->nrows; i++) {
        cJSON *q = cJSON_CreateArray();
        cJSON_AddItemToArray(q, cJSON_CreateString(cp_scol_str(&p->cols[0], i)));
        cJSON_AddItemToArray(q, cJSON_CreateString(cp_scol_str(&p->cols[1], i)));
        cJSON_AddItemToArray(arr, q);
    }
    return arr;
}

static cJSON *sankey_json(const cp_sankey *s)
{
    cJSON *o = cJSON_CreateObject(), *nodes = cJSON_AddArrayToObject(o, "nodes");
    char buf[160];
    for (int pass = 0; pass < 2; pass++) {
        const cp_strlist *l = pass ? &s->final : &s->original;
        for (size_t i = 0; i < l->n; i++) {
            cJSON *n = cJSON_CreateObject();
            snprintf(buf, sizeof buf, "%s (%s)", l->items[i], pass ? "Final" : "Original");
            cJSON_AddStringToObject(n, "name", buf);
            cJSON_AddStringToObject(n, "category", pass ? "final" : "original");
            cJSON_AddStringToObject(n, "channel", l->items[i]);
            cJSON_AddItemToArray(nodes, n);
        }
    }
    cJSON *links = cJSON_AddArrayToObject(o, "links");
    for (int i = 0; i < s->nlinks; i++) {
        const cp_sankey_link *L = &s->links[i];
        cJSON *l = cJSON_CreateObject();
        snprintf(buf, sizeof buf, "%s (Original)", L->source);
        cJSON_AddStringToObject(l, "source", buf);
        snprintf(buf, sizeof buf, "%s (Final)", L->target);
        cJSON_AddStringToObject(l, "target", buf);
        snprintf(buf, sizeof buf, "%lld", (long long)L->value);
        cJSON_AddItemToObject(l, "value", cJSON_CreateRaw(buf));
        cJSON_AddStringToObject(l, "flow_type", L->flow_type);
        cp_format_f64(buf, sizeof buf, L->percentage);
        cJSON_AddItemToObject(l, "percentage", cJSON_CreateRaw(buf));
        cJSON_AddItemToArray(links, l);
    }
    snprintf(buf, sizeof buf, "%lld", (long long)s->total);
    cJSON_AddItemToObject(o, "total_spots", cJSON_CreateRaw(buf));
    snprintf(buf, sizeof buf, "%lld", (long long)s->threshold);
    cJSON_AddItemToObject(o, "threshold_used", cJSON_CreateRaw(buf));
    return o;
}

static int emit_json(const args *a, cJSON *doc)
{
    char *text = cJSON_Print(doc);
    cJSON_Delete(doc);
    if (!text) {
        cli_err("out of memory");
        return CLI_EXIT_FATAL;
    }
    int rc = write_text(a, text);
    free(text);
    return rc;
}

static int cmd_api(args *a)
{
    query q;
    cp_stable pairs = {0}, sum = {0};
    cp_strlist cols = {0}, sorted = {0}, fp = {0};
    cp_sankey sk = {0};
    double *ratios = NULL;
    int nr, nc;
    cJSON *doc = NULL;
    int rc = query_open(a, &q);
    if (rc)
        return rc;
    push_unique(&q.extra, "unmixed_chan");
    if ((rc = query_rows(&q, a->sample < 0 ? 5000 : a->sample)))
        goto done;
    if (cp_spot_sankey(&q.t, &sk) || cp_spot_pairs(&q.d.channels, &pairs)) {
        rc = fail();
        goto done;
    }
    static const char *base[] = {"spot_id", "chan", "r", "dist", "unmixed_chan", "reassigned", "unmixed_removed",
                                 "cell_id", "round", "z", "y", "x"};
    for (int i = 0; i < 12; i++)
        push_unique(&cols, base[i]);
    for (size_t i = 0; i < pairs.nrows; i++)
        for (int k = 0; k < 2; k++) {
            char buf[160];
            snprintf(buf, sizeof buf, "chan_%s_intensity", cp_scol_str(&pairs.cols[k], i));
            push_unique(&sorted, buf);
        }
    for (size_t i = 0; i < sorted.n; i++)
        push_unique(&cols, sorted.items[i]);
    if ((rc = query_select(&q, &cols)) || (rc = ratios_matrix(&q.d, a, &ratios, &nr, &nc)))
        goto done;
    const cp_stable *o = &q.o;
    doc = cJSON_CreateObject();
    cJSON_AddItemToObject(doc, "channel_pairs", pairs_json(&pairs));
    cJSON *sd = cJSON_AddArrayToObject(doc, "spots_data");
    cJSON *det = cJSON_AddObjectToObject(doc, "spot_details");
    int dcol[5] = {cp_stable_find(o, "cell_id"), cp_stable_find(o, "round"), cp_stable_find(o, "z"),
                   cp_stable_find(o, "y"), cp_stable_find(o, "x")};
    for (size_t r = 0; r < o->nrows; r++) {
        cJSON *rec = cJSON_CreateObject();
        for (int k = 0; k < o->ncols; k++) {
            const char *nm = o->cols[k].name;
            if (!strcmp(nm, "cell_id") || !strcmp(nm, "round") || !strcmp(nm, "z") || !strcmp(nm, "y") ||
                !strcmp(nm, "x"))
                continue;
            cJSON_AddItemToObject(rec, nm, cell_json(&o->cols[k], r));
        }
        cJSON_AddItemToArray(sd, rec);
        char id[32];
        cp_scol_format(&o->cols[0], r, 0, id, sizeof id);
        cJSON *dd = cJSON_CreateObject();
        for (int k = 0; k < 5; k++) {
            const cp_scol *c = &o->cols[dcol[k]];
            if (k == 1 && !cp_scol_is_null(c, r)) { /* SeeSpot keeps round as a string */
                char buf[16];
                cp_scol_format(c, r, 0, buf, sizeof buf);
                cJSON_AddStringToObject(dd, "round", buf);
            } else {
                cJSON_AddItemToObject(dd, c->name, cell_json(c, r));
            }
        }
        cJSON_AddItemToObject(det, id, dd);
    }
    cp_spot_fused_paths(&q.d, a->bucket, &fp);
    cJSON *fa = cJSON_AddArrayToObject(doc, "fused_s3_paths");
    for (size_t i = 0; i < fp.n; i++)
        cJSON_AddItemToArray(fa, cJSON_CreateString(fp.items[i]));
    if (ratios)
        cJSON_AddItemToObject(doc, "ratios", ratios_json(ratios, nr, nc));
    if (cp_spot_summary_files(&q.d, a->rounds, a->nrounds, &sum) == 0)
        cJSON_AddItemToObject(doc, "summary_stats", table_json(&sum));
    cJSON_AddItemToObject(doc, "sankey_data", sankey_json(&sk));
    rc = emit_json(a, doc);
    doc = NULL;
done:
    cJSON_Delete(doc);
    free(ratios);
    cp_sankey_free(&sk);
    cp_stable_free(&pairs);
    cp_stable_free(&sum);
    cp_strlist_free(&cols);
    cp_strlist_free(&sorted);
    cp_strlist_free(&fp);
    query_free(&q);
    return rc;
}

static int cmd_summary(args *a)
{
    query q;
    int rc = query_open(a, &q);
    if (rc)
        return rc;
    int have = 0;
    for (int i = 0; i < q.d.nparts; i++)
        have |= q.d.parts[i].summary != NULL;
    if (a->recompute || !have) {
        push_unique(&q.extra, "round");
        push_unique(&q.extra, "unmixed_chan");
        rc = load(a, &q.d, &q.extra, &q.t) || cp_spot_summary_compute(&q.d, &q.t, &q.o);
    } else {
        rc = cp_spot_summary_files(&q.d, a->rounds, a->nrounds, &q.o);
    }
    rc = rc ? fail() : write_table(a, &q.o);
    query_free(&q);
    return rc;
}

static int cmd_pairs(args *a)
{
    query q;
    int rc = query_open(a, &q);
    if (rc)
        return rc;
    if ((!q.d.channels.n && load(a, &q.d, NULL, &q.t)) || cp_spot_pairs(&q.d.channels, &q.o))
        rc = fail();
    else if (a->format == CP_FMT_JSON)
        rc = emit_json(a, pairs_json(&q.o));
    else
        rc = write_table(a, &q.o);
    query_free(&q);
    return rc;
}

static int cmd_ratios(args *a)
{
    query q;
    double *m = NULL;
    int nr, nc;
    int rc = query_open(a, &q);
    if (rc)
        return rc;
    if ((rc = ratios_matrix(&q.d, a, &m, &nr, &nc)))
        goto done;
    if (!m) {
        cli_err("%s: no r<N>_ratios.txt", a->source);
        rc = CLI_EXIT_FATAL;
    } else if (a->format == CP_FMT_JSON || a->format == CP_FMT_NDJSON) {
        rc = emit_json(a, ratios_json(m, nr, nc));
    } else {
        /* one row per dye, columns = channels when they match */
        cp_stable *t = &q.o;
        for (int c = 0; c < nc && !rc; c++) {
            char nm[64];
            if ((size_t)nc == q.d.channels.n)
                snprintf(nm, sizeof nm, "%s", q.d.channels.items[c]);
            else
                snprintf(nm, sizeof nm, "c%d", c + 1);
            rc = cp_stable_add_col(t, nm, CP_SCOL_F64);
        }
        if (!rc)
            rc = cp_stable_reserve(t, (size_t)nr);
        for (int r = 0; r < nr && !rc; r++)
            for (int c = 0; c < nc; c++)
                ((double *)t->cols[c].v)[r] = m[r * nc + c];
        t->nrows = (size_t)nr;
        rc = rc ? fail() : write_table(a, t);
    }
done:
    free(m);
    query_free(&q);
    return rc;
}

static int cmd_sankey(args *a)
{
    query q;
    cp_sankey sk = {0};
    int rc = query_open(a, &q);
    if (rc)
        return rc;
    push_unique(&q.extra, "unmixed_chan");
    if (load(a, &q.d, &q.extra, &q.t) || cp_spot_sankey(&q.t, &sk))
        rc = fail();
    else if (a->format == CP_FMT_CSV || a->format == CP_FMT_TSV)
        rc = cp_sankey_table(&sk, &q.o) ? fail() : write_table(a, &q.o);
    else
        rc = emit_json(a, sankey_json(&sk));
    cp_sankey_free(&sk);
    query_free(&q);
    return rc;
}

static int cmd_counts(args *a)
{
    query q;
    int rc = query_open(a, &q);
    if (rc)
        return rc;
    if (!a->all)
        a->f.valid_only = 1;
    if (!a->labels)
        push_unique(&q.extra, "cell_id");
    push_unique(&q.extra, a->by_mixed ? "chan" : "unmixed_chan");
    /* from a label volume, background is always a row: spots outside any
     * cell are counted, not dropped */
    int64_t bg = 0, *ids = NULL;
    size_t nids = 0;
    cp_count_opts co = {a->by_mixed ? CP_COUNT_MIXED : CP_COUNT_UNMIXED, a->genes, a->background || a->labels,
                        a->labels ? CELL_COL : NULL, a->labels ? &bg : NULL, a->labels ? 1 : 0};
    if (a->all_labels) {
        /* rows for every label of the volume, whatever the filters pass */
        cli_progress prog;
        cp_spot_label_opts lo = a->lopt;
        lo.progress = label_progress;
        lo.user = &prog;
        if (cp_label_volume_ids(a->labels, &lo, &ids, &nids)) {
            query_free(&q);
            return fail();
        }
        int64_t *all = realloc(ids, (nids + 1) * sizeof *all);
        if (!all) {
            free(ids);
            query_free(&q);
            cli_err("out of memory");
            return CLI_EXIT_FATAL;
        }
        all[nids] = 0;
        co.cells = ids = all;
        co.ncells = nids + 1;
    }
    if (!(rc = query_rows(&q, -1)))
        rc = cp_spot_counts_ex(&q.d, &q.t, q.rows, q.n, &co, &q.o) ? fail() : write_table(a, &q.o);
    free(ids);
    query_free(&q);
    return rc;
}

static int cmd_datasets(args *a)
{
    cp_stable t;
    if (cp_spot_datasets(a->source, &t))
        return fail();
    int rc = write_table(a, &t);
    cp_stable_free(&t);
    return rc;
}

static int cmd_neuroglancer(args *a)
{
    query q;
    char *json = NULL;
    int rc = query_open(a, &q);
    if (rc)
        return rc;
    push_unique(&q.extra, "z");
    push_unique(&q.extra, "y");
    push_unique(&q.extra, "x");
    if (a->spot > 0) {
        char buf[32];
        snprintf(buf, sizeof buf, "%ld", a->spot);
        if (cp_spot_filter_where(&a->f, "spot_id", CP_OP_EQ, buf)) {
            rc = fail();
            goto done;
        }
    }
    if ((rc = query_rows(&q, -1)))
        goto done;
    size_t n = q.n;
    if (n == 0) {
        cli_err(a->spot > 0 ? "no spot %ld in %s" : "no spot passes the filters%.0ld in %s", a->spot, a->source);
        rc = CLI_EXIT_FATAL;
        goto done;
    }
    if (n > (size_t)a->max) {
        cli_info("%zu spots pass the filters; the first %ld are shown", n, a->max);
        n = (size_t)a->max;
    }
    cp_ng_opts no = {a->bucket, a->color, a->scale, a->spot > 0 ? NULL : "spots"};
    char lname[64];
    if (a->spot > 0) {
        snprintf(lname, sizeof lname, "spot_%ld", a->spot);
        no.layer_name = lname;
    }
    if (cp_spot_ng_state(&q.d, &q.t, q.rows, n, &no, &json)) {
        rc = fail();
        goto done;
    }
    if (a->json) {
        cJSON *j = cJSON_Parse(json);
        rc = emit_json(a, j);
    } else {
        char *url = cp_spot_ng_url(json);
        if (!url) {
            rc = fail();
            goto done;
        }
        if (strlen(url) > 5000 && cli_verbosity > 0)
            cli_err("warning: the URL is %zu characters long (some browsers cut past 5000); try --json or --max",
                    strlen(url));
        rc = write_text(a, url);
        free(url);
    }
done:
    free(json);
    query_free(&q);
    return rc;
}

static int cmd_gen(args *a)
{
    if (cp_spot_synth(a->source, &a->gen))
        return fail();
    return 0;
}

int main(int argc, char **argv)
{
    cli_init("spotquery");
    cli_install_signal_handlers();
    args a;
    parse_args(argc, argv, &a);
    int rc;
    if (!strcmp(a.cmd, "spots")) rc = cmd_spots(&a);
    else if (!strcmp(a.cmd, "api")) rc = cmd_api(&a);
    else if (!strcmp(a.cmd, "summary")) rc = cmd_summary(&a);
    else if (!strcmp(a.cmd, "pairs")) rc = cmd_pairs(&a);
    else if (!strcmp(a.cmd, "ratios")) rc = cmd_ratios(&a);
    else if (!strcmp(a.cmd, "sankey")) rc = cmd_sankey(&a);
    else if (!strcmp(a.cmd, "counts")) rc = cmd_counts(&a);
    else if (!strcmp(a.cmd, "datasets")) rc = cmd_datasets(&a);
    else if (!strcmp(a.cmd, "neuroglancer")) rc = cmd_neuroglancer(&a);
    else rc = cmd_gen(&a);
    cp_spot_filter_free(&a.f);
    cp_strlist_free(&a.columns);
    cp_strlist_free(&a.coords);
    free(a.rounds);
    return rc;
}
