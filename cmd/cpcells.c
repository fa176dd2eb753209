/* cpcells: one 16-bit TIFF per labelled cell, into a folder or a ZIP. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cellpose/cellpose.h"
#include "common/cli.h"

static void usage(void)
{
    printf("Usage: cpcells [OPTIONS] IMAGE MASKS -o OUTDIR\n"
           "       cpcells [OPTIONS] IMAGE MASKS --zip FILE.zip   (--zip - or -o - : ZIP to stdout)\n"
           "       cpcells [OPTIONS] --from-seg DIR -o OUTROOT [--zip]\n"
           "\n"
           "Cut every labelled cell of IMAGE (labels from MASKS) into its own 16-bit TIFF:\n"
           "OUTDIR/cell_NNNN.tif (NNNN = label) and OUTDIR/cells.csv. Label volumes (Z planes,\n"
           "with an image of the same Z, Y, X) give one ImageJ hyperstack per cell.\n"
           "\n"
           "Options:\n"
           "  -o, --output PATH      output folder (or ZIP file with --zip; - = stdout ZIP)\n"
           "      --zip [FILE.zip]   write a ZIP archive instead of a folder (FILE or -o;\n"
           "                         - = stdout; with --from-seg: OUTROOT/NAME.zip)\n"
           "      --from-seg DIR     every DIR/NAME_cp_masks.* with its image DIR/NAME.*;\n"
           "                         DIR - reads mask paths, one a line, from stdin\n"
           "      --pad N            grow each box by N pixels, clipped at the edge [0]\n"
           "      --pad-z N          volumes: grow each box by N planes in Z [--pad]\n"
           "      --keep-background  keep the crop's pixels outside the cell (default: 0)\n"
           "      --range LO HI      scale LO..HI linearly to 0..65535 (any pixel type)\n"
           "      --mask-too         also write cell_NNNN_mask.tif (8-bit, 255 = cell)\n"
           "      --labels L,L,...   only these labels\n"
           "      --min-area N       only cells of at least N pixels (voxels)\n"
           "  -f, --force            replace existing outputs (with --from-seg: redo them)\n"
           "  -q, --quiet            errors only\n"
           "  -v, --verbose          one line per image\n"
           "  -h, --help             this help\n"
           "      --version          version\n"
           "\n"
           "Exit status: 0 done, 1 some inputs failed, 2 usage, 3 output failed, 130 interrupted.\n"
           "See man cpcells for the scaling formula and cells.csv columns.\n");
}

enum { OPT_ZIP = 256, OPT_FROM_SEG, OPT_PAD, OPT_PAD_Z, OPT_KEEP_BG, OPT_RANGE, OPT_MASK_TOO, OPT_LABELS, OPT_MIN_AREA,
       OPT_VERSION };

typedef struct run {
    cp_cells_opts o;
    cli_progress prog;
    int batch;          /* progress per image instead of per cell */
} run;

static int on_progress(void *ud, size_t done, size_t total)
{
    run *r = ud;
    if (!r->batch) { /* the cell count is known only once the masks are read */
        r->prog.total = total;
        cli_progress_update(&r->prog, done, NULL);
    }
    return cli_interrupted != 0; /* the library then cleans up and says CP_EINTR */
}

static int ends_with(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcmp(s + n - m, suf) == 0;
}

static uint32_t *parse_labels(const char *s, size_t *n)
{
    size_t cap = 1;
    for (const char *p = s; *p; p++)
        cap += *p == ',';
    uint32_t *v = malloc(cap * sizeof *v);
    if (!v)
        cli_usage_error("--labels: out of memory");
    char *copy = strdup(s), *save = NULL;
    if (!copy)
        cli_usage_error("--labels: out of memory");
    *n = 0;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
        v[(*n)++] = (uint32_t)cli_parse_long("--labels", tok, 1, 4294967295L);
    free(copy);
    if (*n == 0)
        cli_usage_error("--labels: no label given");
    return v;
}

/* Exit code for a failed image: what went wrong with an input is 1 (the
 * batch goes on), an output that cannot be written is 3 (the run stops). */
static int exit_for(int rc, int writing)
{
    if (rc == CP_EINTR || cli_interrupted)
        return CLI_EXIT_INTR;
    if (writing && (rc == CP_EIO || rc == CP_EEXIST || rc == CP_ENOMEM))
        return CLI_EXIT_FATAL;
    return CLI_EXIT_PARTIAL;
}

/* Labels have one channel, so every page of a mask TIFF is a plane whatever
 * its metadata says. An image of 2-4 pages without metadata reads as
 * channels; next to a label volume of that many planes they are its planes.
 * For a volume, *voxel is the image's calibration, else the masks'. */
static int read_pair(const char *image, const char *masks, cp_image **img, cp_image **mk, cp_voxel_size *voxel,
                     int *calibrated)
{
    *img = *mk = NULL;
    *calibrated = 0;
    cp_read_opts planes = {.pages = CP_PAGES_PLANES};
    int rc = cp_image_read(masks, &planes, mk);
    if (rc == CP_OK)
        rc = cp_image_read(image, NULL, img);
    int D = rc == CP_OK ? (*mk)->planes : 1;
    if (rc == CP_OK && D > 1 && (*img)->planes == 1 && (*img)->channels == D) {
        cp_image *again = NULL;
        if (cp_image_read(image, &planes, &again) == CP_OK && again->planes == D) {
            cp_image_free(*img);
            *img = again;
        } else {
            cp_image_free(again);
        }
    }
    if (rc == CP_OK && D > 1)
        rc = cp_image_voxel_size(image, voxel, calibrated);
    if (rc == CP_OK && D > 1 && !*calibrated)
        rc = cp_image_voxel_size(masks, voxel, calibrated);
    if (rc != CP_OK) {
        cp_image_free(*img);
        cp_image_free(*mk);
        *img = *mk = NULL;
    }
    return rc;
}

static void report(const char *what, const cp_cells_result *res, const char *out)
{
    if (res->n_missing && cli_verbosity >= 1)
        cli_err("%s: %zu requested label(s) not in the masks (first: %u)", what, res->n_missing,
                (unsigned)res->first_missing);
    cli_info("%s: %zu cells, %zu files, %.1f MB -> %s", what, res->n_cells, res->n_files, res->bytes / 1e6, out);
}

/* One image; returns an exit code, the message already printed. */
static int do_one(run *r, const char *image, const char *masks, const char *out, int zip)
{
    cp_image *img, *mk;
    cp_voxel_size voxel;
    int calibrated;
    int rc = read_pair(image, masks, &img, &mk, &voxel, &calibrated);
    if (rc != CP_OK) {
        cli_err("%s", cp_errmsg());
        return exit_for(rc, 0);
    }
    r->o.image_name = image;
    r->o.voxel = calibrated ? &voxel : NULL;
    cp_cells_result res;
    if (!r->batch)
        cli_progress_start(&r->prog, 0, "cells");
    if (zip && strcmp(out, "-") == 0) {
        rc = cp_cells_write_zip_fp(img, mk, masks, stdout, "stdout", &r->o, &res);
    } else if (zip) {
        rc = cp_cells_write_zip(img, mk, masks, out, &r->o, &res);
    } else {
        rc = cp_cells_write_dir(img, mk, masks, out, &r->o, &res);
    }
    if (!r->batch)
        cli_progress_end(&r->prog);
    if (rc == CP_OK)
        report(masks, &res, out);
    else if (rc == CP_EINTR || cli_interrupted) /* the temporaries went first: other errors follow */
        cli_err("%s: interrupted; nothing written", out);
    else if (rc == CP_EEXIST)
        cli_err("%s (use --force to replace it)", cp_errmsg());
    else
        cli_err("%s", cp_errmsg());
    cp_image_free(img);
    cp_image_free(mk);
    r->o.voxel = NULL;
    return rc == CP_OK ? CLI_EXIT_OK : exit_for(rc, 1);
}

static int read_stdin_list(cp_strlist *l)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, stdin)) >= 0) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = 0;
        if (len == 0)
            continue;
        if (cp_strlist_push(l, line) != CP_OK)
            break;
    }
    free(line);
    return CP_OK;
}

static int do_batch(run *r, const char *dir, const char *outroot, int zip, int force)
{
    cp_strlist masks = {0};
    int rc = strcmp(dir, "-") == 0 ? read_stdin_list(&masks) : cp_list_images(dir, 0, "*_cp_masks.*", &masks);
    if (rc != CP_OK) {
        cli_err("%s", cp_errmsg());
        cp_strlist_free(&masks);
        return CLI_EXIT_FATAL;
    }
    if (masks.n == 0)
        cli_err("%s: no *_cp_masks.* files", dir);
    if (cp_mkdirs(outroot) != CP_OK) {
        cli_err("%s", cp_errmsg());
        cp_strlist_free(&masks);
        return CLI_EXIT_FATAL;
    }
    r->batch = 1;
    cli_progress_start(&r->prog, masks.n, "images");
    int status = CLI_EXIT_OK;
    size_t done = 0, skipped = 0, failed = 0;
    for (size_t i = 0; i < masks.n && !cli_interrupted; i++) {
        char *image = NULL, *name = NULL;
        rc = cp_cells_seg_image(masks.items[i], &image, &name);
        if (rc != CP_OK) {
            cli_err("%s", cp_errmsg());
            failed++;
            status = CLI_EXIT_PARTIAL;
            continue;
        }
        char leaf[4096];
        snprintf(leaf, sizeof leaf, "%s%s", name, zip ? ".zip" : "");
        char *out = cp_path_join(outroot, leaf);
        if (!out) {
            cli_err("out of memory");
            free(image);
            free(name);
            status = CLI_EXIT_FATAL;
            break;
        }
        if (!force && cp_path_exists(out)) {
            /* Outputs appear only complete (temp + rename): existing = finished. */
            cli_info("%s: exists, skipped", out);
            skipped++;
        } else {
            int code = do_one(r, image, masks.items[i], out, zip);
            if (code == CLI_EXIT_OK) {
                done++;
            } else {
                failed++;
                if (code > status)
                    status = code;
                if (code != CLI_EXIT_PARTIAL) {
                    free(out);
                    free(image);
                    free(name);
                    break;
                }
            }
        }
        free(out);
        free(image);
        free(name);
        cli_progress_update(&r->prog, i + 1, NULL);
    }
    cli_progress_end(&r->prog);
    if (cli_interrupted)
        status = CLI_EXIT_INTR;
    cli_info("%zu images done, %zu skipped (finished before), %zu failed", done, skipped, failed);
    cp_strlist_free(&masks);
    return status;
}

int main(int argc, char **argv)
{
    cli_init("cpcells");
    static const struct option longopts[] = {
        {"output", required_argument, 0, 'o'},    {"zip", optional_argument, 0, OPT_ZIP},
        {"from-seg", required_argument, 0, OPT_FROM_SEG}, {"pad", required_argument, 0, OPT_PAD},
        {"pad-z", required_argument, 0, OPT_PAD_Z},
        {"keep-background", no_argument, 0, OPT_KEEP_BG}, {"range", required_argument, 0, OPT_RANGE},
        {"mask-too", no_argument, 0, OPT_MASK_TOO}, {"labels", required_argument, 0, OPT_LABELS},
        {"min-area", required_argument, 0, OPT_MIN_AREA}, {"force", no_argument, 0, 'f'},
        {"quiet", no_argument, 0, 'q'},           {"verbose", no_argument, 0, 'v'},
        {"help", no_argument, 0, 'h'},            {"version", no_argument, 0, OPT_VERSION},
        {0, 0, 0, 0}};
    run r;
    memset(&r, 0, sizeof r);
    cp_cells_opts_init(&r.o);
    const char *out = NULL, *zip_file = NULL, *from_seg = NULL;
    int zip = 0;
    uint32_t *labels = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "o:fqvh", longopts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case OPT_ZIP:
            zip = 1;
            if (optarg)
                zip_file = optarg;
            else if (optind < argc && (strcmp(argv[optind], "-") == 0 || ends_with(argv[optind], ".zip")))
                zip_file = argv[optind++]; /* "--zip FILE.zip" as well as "--zip=FILE.zip" */
            break;
        case OPT_FROM_SEG: from_seg = optarg; break;
        case OPT_PAD: r.o.pad = (int)cli_parse_long("--pad", optarg, 0, 1000000); break;
        case OPT_PAD_Z: r.o.pad_z = (int)cli_parse_long("--pad-z", optarg, 0, 1000000); break;
        case OPT_KEEP_BG: r.o.keep_background = 1; break;
        case OPT_RANGE:
            if (optind >= argc)
                cli_usage_error("--range needs two numbers: LO HI");
            r.o.use_range = 1;
            r.o.range_lo = cli_parse_double("--range", optarg, -1e308, 1e308);
            r.o.range_hi = cli_parse_double("--range", argv[optind++], -1e308, 1e308);
            if (!(r.o.range_hi > r.o.range_lo))
                cli_usage_error("--range %s %s: HI must be above LO", optarg, argv[optind - 1]);
            break;
        case OPT_MASK_TOO: r.o.mask_too = 1; break;
        case OPT_LABELS:
            free(labels);
            labels = parse_labels(optarg, &r.o.n_labels);
            r.o.labels = labels;
            break;
        case OPT_MIN_AREA: r.o.min_area = (uint64_t)cli_parse_long("--min-area", optarg, 0, 4294967295L); break;
        case 'f': r.o.overwrite = 1; break;
        case 'q': cli_verbosity = 0; break;
        case 'v': cli_verbosity = 2; break;
        case 'h': usage(); return CLI_EXIT_OK;
        case OPT_VERSION: cli_print_version(); return CLI_EXIT_OK;
        default: cli_usage_error("unknown option");
        }
    }
    cli_install_signal_handlers();
    r.o.progress = on_progress;
    r.o.progress_ud = &r;
    int nargs = argc - optind, status;
    if (from_seg) {
        if (nargs != 0)
            cli_usage_error("--from-seg takes no IMAGE MASKS arguments");
        if (!out)
            cli_usage_error("--from-seg needs -o OUTROOT");
        if (zip_file)
            cli_usage_error("with --from-seg, --zip takes no file (archives go to OUTROOT/NAME.zip)");
        if (strcmp(out, "-") == 0)
            cli_usage_error("--from-seg writes one output per image: -o must be a folder");
        status = do_batch(&r, from_seg, out, zip, r.o.overwrite);
    } else {
        if (nargs != 2)
            cli_usage_error("need IMAGE and MASKS (or --from-seg DIR)");
        if (zip_file && out && strcmp(out, "-") != 0 && strcmp(zip_file, out) != 0)
            cli_usage_error("-o %s and --zip %s: give the archive once", out, zip_file);
        const char *dest = zip_file ? zip_file : out;
        if (!dest)
            cli_usage_error("need -o OUTDIR or --zip FILE.zip");
        if (strcmp(dest, "-") == 0 || (out && strcmp(out, "-") == 0))
            zip = 1, dest = "-"; /* a folder cannot go to stdout */
        if (strcmp(dest, "-") == 0 && isatty(STDOUT_FILENO))
            cli_usage_error("refusing to write a ZIP archive to a terminal (redirect stdout)");
        status = do_one(&r, argv[optind], argv[optind + 1], dest, zip);
    }
    free(labels);
    return status;
}
