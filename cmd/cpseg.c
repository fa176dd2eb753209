/* cpseg: segment images with Cellpose weights, in batches, resumably. */
#include <getopt.h>
#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cellpose/cellpose.h"
#include "common/cli.h"

static void usage(void)
{
    printf("Usage: cpseg [OPTIONS] INPUT...\n"
           "Segment cells or nuclei with Cellpose weights; write NAME_cp_masks.tif per image.\n"
           "INPUT: image files (.tif .tiff .png .npy), folders (images inside, sorted), or '-'\n"
           "(one path per line on stdin).\n"
           "\n"
           "Model:\n"
           "  -m, --model NAME|PATH     cyto3, nuclei, cpsam, ... (looked up in\n"
           "                            $CELLPOSE_LOCAL_MODELS_PATH, ~/.cellpose/models) or a weight\n"
           "                            file; default $CELLPOSE_MODEL_PATH, else the built-in model\n"
           "      --device cpu|cuda     default $CELLPOSE_DEVICE or cpu\n"
           "      --precision fp32|bf16 network arithmetic; default $CELLPOSE_PRECISION or fp32\n"
           "      --threads N           threads in all (default: all cores)\n"
           "  -j, --jobs N              images in parallel (default 1)\n"
           "\n"
           "Cellpose parameters (same names and defaults):\n"
           "      --diameter D          object diameter in pixels (default: CPnet 30, cpsam none);\n"
           "                            0 estimates it per image with the model's size model\n"
           "      --chan C, --chan2 C   Cellpose 3 channels: 0 gray, 1 red, 2 green, 3 blue\n"
           "      --flow-threshold T    flow-error QC, 0 disables (0.4)\n"
           "      --cellprob-threshold T  (0)\n"
           "      --min-size N          smallest mask in pixels, -1 disables (15)\n"
           "      --max-size-fraction F largest mask as a fraction of the image (0.4)\n"
           "      --niter N             Euler steps (default from the diameter)\n"
           "      --tile-overlap F      (0.1)\n"
           "      --batch-size N        tiles per network call (8)\n"
           "      --augment             test-time flips\n"
           "      --no-norm             no percentile normalisation\n"
           "      --norm-percentile LO HI  (1 99)\n"
           "      --exclude-on-edges    drop masks touching the border\n"
           "      --dynamics v3|v4      mask algorithm (default: follows the model)\n"
           "      --cellpose-v3-compat  reproduce Cellpose 3.1's fill-holes label bug\n"
           "      --from-flows FILE     masks from saved NAME_flows.npy, no network (repeatable)\n"
           "\n"
           "Volumes (multi-page TIFF, ImageJ hyperstack, 3-D/4-D NPY; without one of the\n"
           "first two flags a Z-stack is refused):\n"
           "      --do-3d               Cellpose's do_3D: network on YX, ZX, ZY planes, 3D masks\n"
           "      --stitch-threshold T  2D masks per plane stitched across Z at IoU >= T (0 off)\n"
           "      --anisotropy A        Z step over XY pixel size, for --do-3d (1)\n"
           "      --flow3d-smooth S     Gaussian sigma on the 3D flows: S or SZ,SY,SX (0)\n"
           "      --z-axis N            axis of Z in the file's array (default 0)\n"
           "      --channel-axis N      axis of channels in a 4-D array (TIFF 1, NPY 3)\n"
           "\n"
           "Blockwise volumes larger than memory (one job per block; man cpseg):\n"
           "      --plan --blocks WORK [--block-size N|Z,Y,X] [--overlap N|Z,Y,X] VOLUME\n"
           "                            plan the blocks (with the 3D mode and model flags);\n"
           "                            prints their number N (block 256, overlap 2 diameters)\n"
           "      --blocks WORK --block K/N  segment block K (0-based: $SLURM_ARRAY_TASK_ID/N)\n"
           "      --merge WORK -o OUT.zarr|OUT.tif [--table FILE]  join the blocks' labels\n"
           "\n"
           "Outputs (next to each image, or under --savedir):\n"
           "      --savedir DIR\n"
           "      --save LIST           comma list of: masks_npy flows overlay outlines rois png\n"
           "      --no-masks            do not write NAME_cp_masks.tif\n"
           "      --force               redo images whose outputs exist\n"
           "      --manifest FILE       append one JSON line per image\n"
           "\n"
           "Batches:\n"
           "  -r, --recursive           look into sub-folders\n"
           "      --glob PATTERN        only file names matching PATTERN\n"
           "      --shard K/N           only images K, K+N, K+2N, ... (0 <= K < N)\n"
           "      --fail-fast           stop at the first failed image\n"
           "  -q, --quiet  -v, --verbose  --help  --version\n"
           "\n"
           "Exit status: 0 all done, 1 some images failed, 2 usage, 3 fatal, 130 interrupted.\n");
}

enum {
    OPT_DIAMETER = 256, OPT_CHAN, OPT_CHAN2, OPT_FLOW, OPT_CELLPROB, OPT_MINSIZE, OPT_MAXFRAC, OPT_NITER,
    OPT_OVERLAP, OPT_BATCH, OPT_AUGMENT, OPT_NONORM, OPT_NORMPCT, OPT_EDGES, OPT_DYNAMICS, OPT_V3COMPAT, OPT_FROMFLOWS,
    OPT_SAVEDIR, OPT_SAVE, OPT_NOMASKS, OPT_FORCE, OPT_MANIFEST, OPT_GLOB, OPT_SHARD, OPT_FAILFAST,
    OPT_DEVICE, OPT_PRECISION, OPT_THREADS, OPT_HELP, OPT_VERSION, OPT_DO3D, OPT_STITCH, OPT_ANISO, OPT_SMOOTH3D,
    OPT_ZAXIS, OPT_CAXIS, OPT_PLAN, OPT_BLOCKS, OPT_BLOCKSIZE, OPT_BLOCKOVERLAP, OPT_BLOCK, OPT_MERGE, OPT_TABLE
};

/* Cellpose flags: a block run given any must match the plan in all (the
 * model is checked by its sha256). */
static int is_seg_flag(int c)
{
    return (c >= OPT_DIAMETER && c <= OPT_V3COMPAT) || (c >= OPT_DO3D && c <= OPT_SMOOTH3D);
}

static const struct option long_opts[] = {
    {"model", required_argument, 0, 'm'},
    {"device", required_argument, 0, OPT_DEVICE},
    {"precision", required_argument, 0, OPT_PRECISION},
    {"threads", required_argument, 0, OPT_THREADS},
    {"jobs", required_argument, 0, 'j'},
    {"diameter", required_argument, 0, OPT_DIAMETER},
    {"chan", required_argument, 0, OPT_CHAN},
    {"chan2", required_argument, 0, OPT_CHAN2},
    {"flow-threshold", required_argument, 0, OPT_FLOW},
    {"cellprob-threshold", required_argument, 0, OPT_CELLPROB},
    {"min-size", required_argument, 0, OPT_MINSIZE},
    {"max-size-fraction", required_argument, 0, OPT_MAXFRAC},
    {"niter", required_argument, 0, OPT_NITER},
    {"tile-overlap", required_argument, 0, OPT_OVERLAP},
    {"batch-size", required_argument, 0, OPT_BATCH},
    {"augment", no_argument, 0, OPT_AUGMENT},
    {"no-norm", no_argument, 0, OPT_NONORM},
    {"norm-percentile", required_argument, 0, OPT_NORMPCT},
    {"exclude-on-edges", no_argument, 0, OPT_EDGES},
    {"dynamics", required_argument, 0, OPT_DYNAMICS},
    {"cellpose-v3-compat", no_argument, 0, OPT_V3COMPAT},
    {"from-flows", required_argument, 0, OPT_FROMFLOWS},
    {"do-3d", no_argument, 0, OPT_DO3D},
    {"stitch-threshold", required_argument, 0, OPT_STITCH},
    {"anisotropy", required_argument, 0, OPT_ANISO},
    {"flow3d-smooth", required_argument, 0, OPT_SMOOTH3D},
    {"z-axis", required_argument, 0, OPT_ZAXIS},
    {"channel-axis", required_argument, 0, OPT_CAXIS},
    {"plan", no_argument, 0, OPT_PLAN},
    {"blocks", required_argument, 0, OPT_BLOCKS},
    {"block-size", required_argument, 0, OPT_BLOCKSIZE},
    {"overlap", required_argument, 0, OPT_BLOCKOVERLAP},
    {"block", required_argument, 0, OPT_BLOCK},
    {"merge", required_argument, 0, OPT_MERGE},
    {"output", required_argument, 0, 'o'},
    {"table", required_argument, 0, OPT_TABLE},
    {"savedir", required_argument, 0, OPT_SAVEDIR},
    {"save", required_argument, 0, OPT_SAVE},
    {"no-masks", no_argument, 0, OPT_NOMASKS},
    {"force", no_argument, 0, OPT_FORCE},
    {"manifest", required_argument, 0, OPT_MANIFEST},
    {"recursive", no_argument, 0, 'r'},
    {"glob", required_argument, 0, OPT_GLOB},
    {"shard", required_argument, 0, OPT_SHARD},
    {"fail-fast", no_argument, 0, OPT_FAILFAST},
    {"quiet", no_argument, 0, 'q'},
    {"verbose", no_argument, 0, 'v'},
    {"help", no_argument, 0, OPT_HELP},
    {"version", no_argument, 0, OPT_VERSION},
    {0, 0, 0, 0},
};

typedef struct job {
    cp_strlist inputs;
    int from_flows;
    cp_model *model;
    const cp_model_info *info;
    cp_model_info flows_info; /* --from-flows: the model's info, no network */
    cp_model_ref ref;
    cp_arch arch;
    float diam_mean;
    cp_seg_params params;
    int estimate;               /* --diameter 0: Cellpose 3's size model per image */
    int volume;                 /* --do-3d or --stitch-threshold: inputs are Z-stacks */
    int z_axis, channel_axis;   /* CP_AXIS_AUTO when not given */
    cp_size_model *size_model;
    char *size_path;
    unsigned outputs;
    const char *savedir;
    int force, fail_fast, jobs, threads_per_job;
    cp_precision precision;
    cp_manifest manifest;
    int manifest_open;
    const char *manifest_path;
    pthread_mutex_t lock;
    atomic_size_t next;
    size_t done, failed, skipped;
    uint64_t cells;
    atomic_int stop;
    cli_progress progress;
} job;


static cJSON *params_json(const job *J)
{
    const cp_seg_params *p = &J->params;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "diameter", p->diameter);
    cJSON_AddNumberToObject(o, "chan", p->chan);
    cJSON_AddNumberToObject(o, "chan2", p->chan2);
    cJSON_AddNumberToObject(o, "flow_threshold", p->flow_threshold);
    cJSON_AddNumberToObject(o, "cellprob_threshold", p->cellprob_threshold);
    cJSON_AddNumberToObject(o, "min_size", p->min_size);
    cJSON_AddNumberToObject(o, "max_size_fraction", p->max_size_fraction);
    cJSON_AddNumberToObject(o, "niter", p->niter);
    cJSON_AddNumberToObject(o, "tile_overlap", p->tile_overlap);
    cJSON_AddNumberToObject(o, "batch_size", p->batch_size);
    cJSON_AddBoolToObject(o, "augment", p->augment);
    cJSON_AddBoolToObject(o, "normalize", p->normalize);
    cJSON_AddNumberToObject(o, "norm_lo", p->norm_lo);
    cJSON_AddNumberToObject(o, "norm_hi", p->norm_hi);
    cJSON_AddBoolToObject(o, "exclude_on_edges", p->exclude_on_edges);
    if (J->volume) {
        cJSON_AddBoolToObject(o, "do_3D", p->do_3d);
        cJSON_AddNumberToObject(o, "stitch_threshold", p->stitch_threshold);
        cJSON_AddNumberToObject(o, "anisotropy", p->anisotropy);
        cJSON *sm = cJSON_AddArrayToObject(o, "flow3D_smooth");
        for (int i = 0; i < 3; i++)
            cJSON_AddItemToArray(sm, cJSON_CreateNumber(p->flow3d_smooth[i]));
    }
    return o;
}

typedef struct image_log {
    const char *input;
    const char *status;
    char error[1024];
    char *outputs[CP_SEG_OUTPUT_KINDS];
    uint32_t cells;
    int niter, width, height, planes;
    double t_read, t_network, t_dynamics, t_write, t_total;
    int estimated;              /* the diameter came from the size model */
    cp_size_estimate est;       /* then its figures (masks freed) */
} image_log;

static void manifest_write(job *J, const image_log *L)
{
    if (!J->manifest_open)
        return;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "input", L->input);
    cJSON_AddStringToObject(o, "status", L->status);
    if (L->error[0])
        cJSON_AddStringToObject(o, "error", L->error);
    else
        cJSON_AddNullToObject(o, "error");
    cJSON *outs = cJSON_AddArrayToObject(o, "outputs");
    for (int k = 0; k < CP_SEG_OUTPUT_KINDS; k++)
        if (L->outputs[k])
            cJSON_AddItemToArray(outs, cJSON_CreateString(L->outputs[k]));
    cJSON_AddNumberToObject(o, "width", L->width);
    cJSON_AddNumberToObject(o, "height", L->height);
    if (J->volume)
        cJSON_AddNumberToObject(o, "planes", L->planes);
    cJSON_AddNumberToObject(o, "cells", L->cells);
    cJSON_AddNumberToObject(o, "niter", L->niter);
    if (L->estimated) {
        cJSON *e = cJSON_AddObjectToObject(o, "diameter_estimate");
        cJSON_AddNumberToObject(e, "diameter", L->est.diam);
        cJSON_AddNumberToObject(e, "diam_style", L->est.diam_style);
        cJSON_AddNumberToObject(e, "size_pass_masks", L->est.nmasks);
        cJSON_AddBoolToObject(e, "fallback", L->est.fallback);
        cJSON_AddStringToObject(e, "size_model", J->size_path);
    }
    cJSON *sec = cJSON_AddObjectToObject(o, "seconds");
    cJSON_AddNumberToObject(sec, "read", L->t_read);
    cJSON_AddNumberToObject(sec, "network", L->t_network);
    cJSON_AddNumberToObject(sec, "dynamics", L->t_dynamics);
    cJSON_AddNumberToObject(sec, "write", L->t_write);
    cJSON_AddNumberToObject(sec, "total", L->t_total);
    cJSON_AddItemToObject(o, "parameters", params_json(J));
    cJSON *model = cJSON_AddObjectToObject(o, "model");
    if (J->info) {
        cJSON_AddStringToObject(model, "path", J->ref.path);
        cJSON_AddStringToObject(model, "sha256", J->info->sha256);
        cJSON_AddStringToObject(model, "arch", J->info->arch == CP_ARCH_CPSAM ? "cpsam" : "cpnet");
        if (J->model) {
            cJSON_AddStringToObject(model, "precision", cp_precision_name(J->info->precision));
            cJSON_AddStringToObject(model, "precision_requested", cp_precision_name(J->info->precision_requested));
        }
    } else {
        cJSON_AddNullToObject(model, "path");
    }
    cJSON_AddStringToObject(o, "version", cp_version());
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!s)
        return;
    if (cp_manifest_write(&J->manifest, s, strlen(s)))
        cli_err("%s", cp_errmsg());
    free(s);
}

/* The image that gives an overlay its background when masks come from flows. */
static char *image_beside_flows(const char *flows_path)
{
    static const char *ext[] = {".tif", ".tiff", ".png", ".npy"};
    char *dir = cp_path_dir(flows_path), *key = cp_path_pair_key(flows_path);
    char *found = NULL;
    for (size_t i = 0; dir && key && !found && i < sizeof ext / sizeof *ext; i++) {
        char name[4096];
        snprintf(name, sizeof name, "%s%s", key, ext[i]);
        char *p = cp_path_join(dir, name);
        if (p && cp_path_exists(p))
            found = p;
        else
            free(p);
    }
    free(dir);
    free(key);
    return found;
}

/* Images are read as Cellpose reads them: PNG alpha dropped. */
static const cp_read_opts read_opts = {.pages = CP_PAGES_AUTO, .drop_alpha = 1};

static int process_one(job *J, const char *input, image_log *L)
{
    double t0 = cp_seconds();
    int rc = CP_OK;
    cp_image *img = NULL;
    cp_array *flows = NULL;
    cp_seg_result res = {0};
    L->input = input;
    L->status = "ok";

    int all_exist = 1;
    for (int k = 0; k < CP_SEG_OUTPUT_KINDS; k++) {
        if (!(J->outputs & (1u << k)))
            continue;
        rc = cp_seg_output_path(input, J->savedir, (cp_seg_output)(1u << k), &L->outputs[k]);
        if (rc != CP_OK)
            goto fail;
        all_exist &= cp_path_exists(L->outputs[k]);
    }
    if (all_exist && !J->force) {
        L->status = "skipped";
        return CP_OK;
    }

    if (J->from_flows) {
        rc = cp_npy_read(input, &flows);
        int nd = rc == CP_OK ? flows->ndim : 0;
        if (rc == CP_OK && nd == 4 && !J->volume)
            rc = cp_error(CP_EINVAL, "%s: flows of %zu planes: give --do-3d or --stitch-threshold T", input,
                          flows->shape[1]);
        if (rc == CP_OK &&
            ((nd != 3 && nd != 4) || flows->dtype != CP_F32 || flows->shape[0] != (nd == 4 && J->params.do_3d ? 4u : 3u)))
            rc = cp_error(CP_EFORMAT, "%s: flows must be a float32 array of shape %s", input,
                          J->params.do_3d ? "(4, Z, Y, X) (dZ, dY, dX, cellprob)"
                          : J->volume ? "(3, Z, Y, X) (stitching) or (4, Z, Y, X) with --do-3d" : "(3, Y, X)");
        if (rc == CP_OK && (J->outputs & CP_SEG_OUT_OVERLAY)) {
            char *ip = image_beside_flows(input);
            if (!ip)
                rc = cp_error(CP_EIO, "%s: overlay asked for but no image NAME.tif/.png beside the flows", input);
            else
                rc = nd == 4 ? cp_image_read_volume(ip, J->z_axis, J->channel_axis, &img)
                             : cp_image_read(ip, &read_opts, &img);
            free(ip);
        }
        if (rc != CP_OK)
            goto fail;
        L->t_read = cp_seconds() - t0;
        if (nd == 4)
            rc = cp_segment3d_from_flows(flows->data, (int)flows->shape[0], (int)flows->shape[1],
                                         (int)flows->shape[2], (int)flows->shape[3], J->arch, J->diam_mean,
                                         &J->params, &res);
        else
            rc = cp_segment_from_flows(flows->data, (int)flows->shape[1], (int)flows->shape[2], J->arch,
                                       J->diam_mean, &J->params, &res);
    } else if (J->volume) {
        rc = cp_image_read_volume(input, J->z_axis, J->channel_axis, &img);
        if (rc != CP_OK)
            goto fail;
        L->t_read = cp_seconds() - t0;
        rc = cp_segment3d(J->model, img, &J->params, &res);
    } else {
        rc = cp_is_zarr_dir(input) ? cp_error(CP_EINVAL, "%s: a Zarr volume: give --do-3d or --stitch-threshold T "
                                              "to segment it", input)
                                   : cp_image_read(input, &read_opts, &img);
        if (rc == CP_OK && img->planes > 1)
            rc = cp_error(CP_EINVAL, "%s: %d Z planes: give --do-3d or --stitch-threshold T to segment a volume",
                          input, img->planes);
        if (rc != CP_OK)
            goto fail;
        L->t_read = cp_seconds() - t0;
        cp_seg_params p = J->params;
        if (J->estimate) {
            rc = cp_estimate_diameter(J->model, J->size_model, img, &J->params, &L->est);
            cp_size_estimate_free(&L->est);
            if (rc != CP_OK)
                goto fail;
            L->estimated = 1;
            p.diameter = L->est.diam; /* then segment as Cellpose.eval does at that diameter */
        }
        rc = cp_segment(J->model, img, &p, &res);
        res.t_network += L->est.t_network;
        res.t_dynamics += L->est.t_dynamics;
    }
    if (rc != CP_OK)
        goto fail;
    L->t_network = res.t_network;
    L->t_dynamics = res.t_dynamics;
    L->cells = res.ncells;
    L->width = res.width;
    L->height = res.height;
    L->planes = res.planes > 0 ? res.planes : 1;
    L->niter = res.niter;

    double tw = cp_seconds();
    /* masks last: its presence marks the image finished for a rerun */
    for (int k = CP_SEG_OUTPUT_KINDS - 1; k >= 0 && rc == CP_OK; k--)
        if (L->outputs[k])
            rc = cp_seg_write_output((cp_seg_output)(1u << k), L->outputs[k], &res, img);
    L->t_write = cp_seconds() - tw;
    if (rc != CP_OK)
        goto fail;
    L->t_total = cp_seconds() - t0;
    cp_seg_result_free(&res);
    cp_image_free(img);
    cp_array_free(flows);
    return CP_OK;

fail:
    L->status = "error";
    snprintf(L->error, sizeof L->error, "%s", cp_errmsg());
    L->t_total = cp_seconds() - t0;
    cp_seg_result_free(&res);
    cp_image_free(img);
    cp_array_free(flows);
    return rc;
}

static void *worker(void *arg)
{
    job *J = arg;
    J->params.threads = J->threads_per_job;
    for (;;) {
        if (atomic_load(&J->stop) || cli_interrupted)
            break;
        size_t i = atomic_fetch_add(&J->next, 1);
        if (i >= J->inputs.n)
            break;
        image_log L;
        memset(&L, 0, sizeof L);
        int rc = process_one(J, J->inputs.items[i], &L);
        if (rc != CP_OK)
            cli_err("%s", L.error);
        else if (strcmp(L.status, "skipped") == 0)
            cli_info("%s: outputs exist, skipped", L.input);
        else
            cli_info("%s: %u cells in %.2f s (network %.2f s, dynamics %.2f s)", L.input, L.cells, L.t_total,
                     L.t_network, L.t_dynamics);
        /* the one number that decides the segmentation and is in no output file */
        if (rc == CP_OK && L.estimated && cli_verbosity >= 1)
            cli_err("%s: estimated diameter %.2f%s", L.input, L.est.diam,
                    L.est.fallback ? " (no masks at the style's estimate: the size model's diam_mean)" : "");
        manifest_write(J, &L);
        pthread_mutex_lock(&J->lock);
        J->done++;
        if (rc != CP_OK)
            J->failed++;
        else if (strcmp(L.status, "skipped") == 0)
            J->skipped++;
        J->cells += L.cells;
        char extra[64];
        snprintf(extra, sizeof extra, " %llu cells", (unsigned long long)J->cells);
        cli_progress_update(&J->progress, J->done, extra);
        pthread_mutex_unlock(&J->lock);
        for (int k = 0; k < CP_SEG_OUTPUT_KINDS; k++)
            free(L.outputs[k]);
        if (rc != CP_OK && J->fail_fast)
            atomic_store(&J->stop, 1);
    }
    return NULL;
}

static int read_stdin_list(cp_strlist *l)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, stdin)) > 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = 0;
        if (n > 0 && cp_strlist_push(l, line) != CP_OK) {
            free(line);
            return CP_ENOMEM;
        }
    }
    free(line);
    return CP_OK;
}

/* --flow3d-smooth: one sigma for Z, Y and X, or SZ,SY,SX. */
static void parse_smooth(const char *s, double sigma[3])
{
    char buf[128];
    if (strlen(s) >= sizeof buf)
        cli_usage_error("--flow3d-smooth: '%s' is not S or SZ,SY,SX", s);
    strcpy(buf, s);
    char *parts[4], *save = NULL;
    int n = 0;
    for (char *t = strtok_r(buf, ",", &save); t && n < 4; t = strtok_r(NULL, ",", &save))
        parts[n++] = t;
    if (n != 1 && n != 3)
        cli_usage_error("--flow3d-smooth: '%s' is not S or SZ,SY,SX", s);
    for (int i = 0; i < 3; i++)
        sigma[i] = cli_parse_double("--flow3d-smooth", parts[n == 1 ? 0 : i], 0, 100);
}

/* K/N with 0 <= K < N, for --shard and --block. */
static void parse_k_of_n(const char *flag, const char *s, long nmax, long *k, long *n)
{
    const char *slash = strchr(s, '/');
    char kbuf[32];
    size_t len = slash ? (size_t)(slash - s) : 0;
    if (len == 0 || len >= sizeof kbuf)
        cli_usage_error("%s: '%s' is not K/N", flag, s);
    memcpy(kbuf, s, len);
    kbuf[len] = 0;
    char fn[40], fk[40];
    snprintf(fn, sizeof fn, "%s N", flag);
    snprintf(fk, sizeof fk, "%s K", flag);
    *n = cli_parse_long(fn, slash + 1, 1, nmax);
    *k = cli_parse_long(fk, kbuf, 0, *n - 1);
}

/* N or Z,Y,X (each in [lo, hi]). */
static void parse_zyx(const char *flag, const char *s, long lo, long hi, int64_t v[3])
{
    char buf[128];
    if (strlen(s) >= sizeof buf)
        cli_usage_error("%s: '%s' is not N or Z,Y,X", flag, s);
    strcpy(buf, s);
    char *parts[4], *save = NULL;
    int n = 0;
    for (char *t = strtok_r(buf, ",", &save); t && n < 4; t = strtok_r(NULL, ",", &save))
        parts[n++] = t;
    if (n != 1 && n != 3)
        cli_usage_error("%s: '%s' is not N or Z,Y,X", flag, s);
    for (int i = 0; i < 3; i++)
        v[i] = cli_parse_long(flag, parts[n == 1 ? 0 : i], lo, hi);
}

/* Resolve and load the model (info_only: its type and diameter, no network,
 * so libtorch is not even loaded); messages on stderr. */
static int load_model(job *J, const char *model_spec, const char *device, int info_only)
{
    int rc = cp_model_resolve(model_spec, &J->ref);
    if (rc != CP_OK && !model_spec && !getenv("CELLPOSE_MODEL_PATH")) {
        rc = cp_model_builtin(&J->ref);
        if (rc == CP_OK)
            cli_err("no model given: using the built-in model (%s)", J->ref.name);
    }
    if (rc != CP_OK) {
        cli_err("%s", cp_errmsg());
        return rc;
    }
    cp_model_opts mo = {device && strcmp(device, "cuda") == 0 ? CP_DEVICE_CUDA : CP_DEVICE_CPU,
                        J->threads_per_job, J->precision};
    rc = info_only ? cp_model_read_info(J->ref.path, &J->flows_info) : cp_model_load(J->ref.path, &mo, &J->model);
    if (rc != CP_OK) {
        cli_err("%s", cp_errmsg());
        return rc;
    }
    J->info = info_only ? &J->flows_info : cp_model_get_info(J->model);
    if (J->model && J->info->precision != J->info->precision_requested && cli_verbosity > 0)
        cli_err("warning: %s; running in %s", J->info->precision_note, cp_precision_name(J->info->precision));
    J->arch = J->info->arch;
    J->diam_mean = J->ref.diam_mean > 0 ? J->ref.diam_mean : J->info->diam_mean;
    J->params.diam_mean = J->diam_mean;
    return CP_OK;
}

/* ---- blockwise volumes: --plan, --block K/N, --merge ---------------------- */

typedef struct blocks_opts {
    int plan;
    const char *work, *block_size, *overlap, *block, *merge, *out, *table;
    int seg_flags;              /* segmentation flags given on the command line */
} blocks_opts;

/* OUT.zarr / OUT.tif -> OUT_cells.csv */
static char *default_table(const char *out)
{
    static const char *ext[] = {".ome.zarr", ".zarr", ".tiff", ".tif"};
    size_t n = strlen(out);
    while (n > 1 && out[n - 1] == '/')
        n--;
    for (size_t i = 0; i < sizeof ext / sizeof *ext; i++) {
        size_t e = strlen(ext[i]);
        if (n > e && strncmp(out + n - e, ext[i], e) == 0) {
            n -= e;
            break;
        }
    }
    char *t = malloc(n + sizeof "_cells.csv");
    if (t)
        sprintf(t, "%.*s_cells.csv", (int)n, out);
    return t;
}

static int blocks_plan(job *J, const blocks_opts *B, const char *model_spec, const char *device, const char *input)
{
    int64_t bs[3] = {0, 0, 0}, ov[3] = {-1, -1, -1};
    if (B->block_size)
        parse_zyx("--block-size", B->block_size, 1, 1L << 30, bs);
    if (B->overlap)
        parse_zyx("--overlap", B->overlap, 0, 1L << 30, ov);
    if (!J->volume)
        cli_usage_error("--plan: give the 3D mode (--do-3d or --stitch-threshold T)");
    if (load_model(J, model_spec, device, 1) != CP_OK)
        return CLI_EXIT_FATAL;
    cp_blocks_plan *pl;
    int rc = cp_blocks_plan_create(input, J->z_axis, J->channel_axis, bs, ov, &J->params, J->arch, J->ref.path,
                                   J->info->sha256, &pl);
    if (rc == CP_OK && (rc = cp_blocks_plan_write(pl, B->work)) != CP_OK)
        cp_blocks_plan_free(pl);
    if (rc != CP_OK) {
        cli_err("%s", cp_errmsg());
        return CLI_EXIT_FATAL;
    }
    cli_info("%s: %lld x %lld x %lld, blocks %lld x %lld x %lld of %lld x %lld x %lld, overlap %lld,%lld,%lld",
             pl->input, (long long)pl->shape[0], (long long)pl->shape[1], (long long)pl->shape[2],
             (long long)pl->grid[0], (long long)pl->grid[1], (long long)pl->grid[2], (long long)pl->block[0],
             (long long)pl->block[1], (long long)pl->block[2], (long long)pl->overlap[0],
             (long long)pl->overlap[1], (long long)pl->overlap[2]);
    printf("%lld\n", (long long)pl->nblocks);
    cp_blocks_plan_free(pl);
    return CLI_EXIT_OK;
}

static int blocks_run(job *J, const blocks_opts *B, const char *model_spec, const char *device)
{
    long k, n;
    parse_k_of_n("--block", B->block, 100000000, &k, &n);
    cp_blocks_plan *pl;
    if (cp_blocks_plan_read(B->work, &pl) != CP_OK) {
        cli_err("%s", cp_errmsg());
        return CLI_EXIT_FATAL;
    }
    int status = CLI_EXIT_OK;
    if (n != pl->nblocks) {
        cli_err("--block %s: the plan in %s has %lld blocks", B->block, B->work, (long long)pl->nblocks);
        status = CLI_EXIT_USAGE;
    } else if (!model_spec && !B->seg_flags && cp_blocks_done(pl, B->work, k) == 1) {
        /* a resubmitted array costs no model load per finished block */
        cli_info("block %ld/%ld: done before, skipped", k, n);
        cp_blocks_plan_free(pl);
        return CLI_EXIT_OK;
    } else if (load_model(J, model_spec ? model_spec : pl->model_path, device, 0) != CP_OK) {
        status = CLI_EXIT_FATAL;
    } else if (strcmp(J->info->sha256, pl->model_sha256) != 0) {
        cli_err("%s: not the plan's model (sha256 %.12s, the plan's %.12s)", J->ref.path, J->info->sha256,
                pl->model_sha256);
        status = CLI_EXIT_USAGE;
    } else if (B->seg_flags && cp_blocks_check_params(pl, &J->params) != CP_OK) {
        cli_err("%s", cp_errmsg());
        status = CLI_EXIT_USAGE;
    }
    if (status != CLI_EXIT_OK) {
        cp_blocks_plan_free(pl);
        return status;
    }
    cli_install_signal_handlers();
    cp_block_run info;
    if (cp_blocks_run(pl, B->work, k, J->model, J->threads_per_job, &info) != CP_OK) {
        cli_err("block %ld/%ld: %s", k, n, cp_errmsg());
        status = cli_interrupted ? CLI_EXIT_INTR : CLI_EXIT_PARTIAL;
    } else if (info.skipped) {
        cli_info("block %ld/%ld: done before, skipped", k, n);
    } else {
        cli_info("block %ld/%ld: box %lld x %lld x %lld, %u labels, read %.2f s, segment %.2f s, write %.2f s", k, n,
                 (long long)info.box[0], (long long)info.box[1], (long long)info.box[2], info.labels, info.t_read,
                 info.t_segment, info.t_write);
    }
    cp_blocks_plan_free(pl);
    return status;
}

static int blocks_merge(const blocks_opts *B)
{
    if (!B->out)
        cli_usage_error("--merge: give the output with -o OUT.zarr or -o OUT.tif");
    char *table = B->table ? strdup(B->table) : default_table(B->out);
    if (!table)
        return CLI_EXIT_FATAL;
    cli_install_signal_handlers();
    cp_blocks_merge_stats st;
    int rc = cp_blocks_merge(B->merge, B->out, table, &st), status = CLI_EXIT_OK;
    if (rc == CP_EINVAL) {
        cli_err("%s", cp_errmsg());
        status = CLI_EXIT_PARTIAL;
    } else if (rc != CP_OK) {
        cli_err("%s", cp_errmsg());
        status = cli_interrupted ? CLI_EXIT_INTR : CLI_EXIT_FATAL;
    } else {
        cli_info("%s: %lld cells from %lld block labels (%lld links), table %s, %.2f s", B->out,
                 (long long)st.cells, (long long)st.labels, (long long)st.links, table, st.seconds);
    }
    free(table);
    return status;
}

static int blocks_main(job *J, const blocks_opts *B, const char *model_spec, const char *device, int threads,
                       int nin, char **in)
{
    int modes = B->plan + (B->block != NULL) + (B->merge != NULL);
    if (modes != 1)
        cli_usage_error("blocks: give one of --plan, --block K/N or --merge WORK");
    if ((B->plan || B->block) && !B->work)
        cli_usage_error("--plan and --block need the work folder: --blocks WORK");
    if (B->merge && B->work)
        cli_usage_error("--merge names the work folder itself: --merge WORK -o OUT");
    if (B->plan ? nin != 1 : nin != 0)
        cli_usage_error(B->plan ? "--plan takes one input volume" : "--block and --merge take no input: the plan names it");
    if (!B->plan && (B->block_size || B->overlap))
        cli_usage_error("--block-size and --overlap belong to --plan");
    if (!B->merge && (B->out || B->table))
        cli_usage_error("-o and --table belong to --merge");
    int ncores = (int)sysconf(_SC_NPROCESSORS_ONLN);
    J->threads_per_job = threads > 0 ? threads : ncores > 0 ? ncores : 1;
    if (B->plan)
        return blocks_plan(J, B, model_spec, device, in[0]);
    if (B->block)
        return blocks_run(J, B, model_spec, device);
    return blocks_merge(B);
}

int main(int argc, char **argv)
{
    cli_init("cpseg");
    job J;
    memset(&J, 0, sizeof J);
    cp_seg_params_default(&J.params);
    J.outputs = CP_SEG_OUT_MASKS;
    J.jobs = 1;
    J.z_axis = J.channel_axis = CP_AXIS_AUTO;
    const char *model_spec = NULL, *glob = NULL, *shard = NULL, *device = getenv("CELLPOSE_DEVICE");
    const char *precision = getenv("CELLPOSE_PRECISION"), *precision_src = "CELLPOSE_PRECISION";
    int recursive = 0, threads = 0, dynamics = 0;
    cp_strlist flows_inputs = {0};
    int status = CLI_EXIT_OK;
    blocks_opts B = {0};

    int c;
    while ((c = getopt_long(argc, argv, "m:j:o:rqv", long_opts, NULL)) != -1) {
        B.seg_flags += is_seg_flag(c);
        switch (c) {
        case 'm': model_spec = optarg; break;
        case 'j': J.jobs = (int)cli_parse_long("--jobs", optarg, 1, 256); break;
        case 'r': recursive = 1; break;
        case 'q': cli_verbosity = 0; break;
        case 'v': cli_verbosity = 2; break;
        case OPT_DEVICE: device = optarg; break;
        case OPT_PRECISION:
            precision = optarg;
            precision_src = "--precision";
            break;
        case OPT_THREADS: threads = (int)cli_parse_long("--threads", optarg, 1, 1024); break;
        case OPT_DIAMETER:
            J.params.diameter = cli_parse_double("--diameter", optarg, 0, 1e5);
            J.estimate = J.params.diameter == 0;
            break;
        case OPT_CHAN: J.params.chan = (int)cli_parse_long("--chan", optarg, 0, 4); break;
        case OPT_CHAN2: J.params.chan2 = (int)cli_parse_long("--chan2", optarg, 0, 4); break;
        case OPT_FLOW: J.params.flow_threshold = (float)cli_parse_double("--flow-threshold", optarg, 0, 1e9); break;
        case OPT_CELLPROB:
            J.params.cellprob_threshold = (float)cli_parse_double("--cellprob-threshold", optarg, -1e9, 1e9);
            break;
        case OPT_MINSIZE: J.params.min_size = (int)cli_parse_long("--min-size", optarg, -1, 1L << 30); break;
        case OPT_MAXFRAC:
            J.params.max_size_fraction = (float)cli_parse_double("--max-size-fraction", optarg, 0, 1);
            break;
        case OPT_NITER: J.params.niter = (int)cli_parse_long("--niter", optarg, 0, 100000); break;
        case OPT_OVERLAP: J.params.tile_overlap = (float)cli_parse_double("--tile-overlap", optarg, 0, 1); break;
        case OPT_BATCH: J.params.batch_size = (int)cli_parse_long("--batch-size", optarg, 1, 4096); break;
        case OPT_AUGMENT: J.params.augment = 1; break;
        case OPT_NONORM: J.params.normalize = 0; break;
        case OPT_NORMPCT:
            if (optind >= argc)
                cli_usage_error("--norm-percentile needs two numbers: LO HI");
            J.params.norm_lo = (float)cli_parse_double("--norm-percentile LO", optarg, 0, 100);
            J.params.norm_hi = (float)cli_parse_double("--norm-percentile HI", argv[optind++], 0, 100);
            if (J.params.norm_lo >= J.params.norm_hi)
                cli_usage_error("--norm-percentile: LO must be below HI");
            break;
        case OPT_EDGES: J.params.exclude_on_edges = 1; break;
        case OPT_DYNAMICS:
            if (strcmp(optarg, "v3") == 0)
                dynamics = CP_DYN_V3;
            else if (strcmp(optarg, "v4") == 0)
                dynamics = CP_DYN_V4;
            else
                cli_usage_error("--dynamics: '%s' is not v3 or v4", optarg);
            break;
        case OPT_V3COMPAT: J.params.v3_label_bug = 1; break;
        case OPT_DO3D: J.params.do_3d = 1; break;
        case OPT_STITCH: J.params.stitch_threshold = cli_parse_double("--stitch-threshold", optarg, 0, 1); break;
        case OPT_ANISO: J.params.anisotropy = cli_parse_double("--anisotropy", optarg, 1e-3, 1e3); break;
        case OPT_SMOOTH3D: parse_smooth(optarg, J.params.flow3d_smooth); break;
        case OPT_ZAXIS: J.z_axis = (int)cli_parse_long("--z-axis", optarg, -4, 3); break;
        case OPT_CAXIS: J.channel_axis = (int)cli_parse_long("--channel-axis", optarg, -4, 3); break;
        case OPT_FROMFLOWS:
            if (cp_strlist_push(&flows_inputs, optarg) != CP_OK)
                { status = CLI_EXIT_FATAL; goto out; }
            break;
        case OPT_SAVEDIR: J.savedir = optarg; break;
        case OPT_SAVE: {
            unsigned more;
            if (cp_seg_parse_outputs(optarg, &more) != CP_OK)
                cli_usage_error("--save: %s", cp_errmsg());
            J.outputs |= more;
            break;
        }
        case OPT_NOMASKS: J.outputs &= ~(unsigned)CP_SEG_OUT_MASKS; break;
        case OPT_FORCE: J.force = 1; break;
        case OPT_MANIFEST: J.manifest_path = optarg; break;
        case OPT_GLOB: glob = optarg; break;
        case OPT_SHARD: shard = optarg; break;
        case OPT_FAILFAST: J.fail_fast = 1; break;
        case OPT_PLAN: B.plan = 1; break;
        case OPT_BLOCKS: B.work = optarg; break;
        case OPT_BLOCKSIZE: B.block_size = optarg; break;
        case OPT_BLOCKOVERLAP: B.overlap = optarg; break;
        case OPT_BLOCK: B.block = optarg; break;
        case OPT_MERGE: B.merge = optarg; break;
        case 'o': B.out = optarg; break;
        case OPT_TABLE: B.table = optarg; break;
        case OPT_HELP: usage(); return CLI_EXIT_OK;
        case OPT_VERSION: cli_print_version(); return CLI_EXIT_OK;
        default: fprintf(stderr, "Try 'cpseg --help'.\n"); return CLI_EXIT_USAGE;
        }
    }
    J.params.dynamics = dynamics;
    J.volume = J.params.do_3d || J.params.stitch_threshold > 0;
    if (!J.volume && (J.z_axis != CP_AXIS_AUTO || J.channel_axis != CP_AXIS_AUTO))
        cli_usage_error("--z-axis and --channel-axis are for volumes: add --do-3d or --stitch-threshold T");
    if (J.params.do_3d && J.params.stitch_threshold > 0)
        cli_usage_error("--do-3d and --stitch-threshold are two different 3D modes: give one");
    if (J.volume && (J.outputs & (CP_SEG_OUT_OUTLINES | CP_SEG_OUT_PNG)))
        cli_usage_error("--save outlines and png hold one plane: for volumes use the TIFF masks, masks_npy or rois");
    if (J.volume && J.estimate)
        cli_usage_error("--diameter 0 (estimate) is for 2D images: give the diameter of a volume");
    if (!J.params.do_3d && (J.params.anisotropy != 1.0 || J.params.flow3d_smooth[0] > 0 ||
                            J.params.flow3d_smooth[1] > 0 || J.params.flow3d_smooth[2] > 0))
        cli_usage_error("--anisotropy and --flow3d-smooth apply to --do-3d only");
    if (J.outputs == 0)
        cli_usage_error("nothing to write (--no-masks without --save)");
    if (B.plan || B.work || B.block || B.merge) {
        status = blocks_main(&J, &B, model_spec, device, threads, argc - optind, argv + optind);
        goto out;
    }
    if (B.block_size || B.overlap || B.out || B.table)
        cli_usage_error("--block-size, --overlap, -o and --table are for blockwise runs (--plan, --merge)");
    if (device && strcmp(device, "cpu") != 0 && strcmp(device, "cuda") != 0)
        cli_usage_error("--device: '%s' is not cpu or cuda", device);
    if (precision && *precision && cp_precision_parse(precision, precision_src, &J.precision) != CP_OK)
        cli_usage_error("%s", cp_errmsg());

    /* inputs */
    J.from_flows = flows_inputs.n > 0;
    if (J.from_flows && optind < argc)
        cli_usage_error("--from-flows takes the flows files; do not mix them with images");
    if (J.from_flows) {
        J.inputs = flows_inputs;
    } else {
        if (optind >= argc)
            cli_usage_error("no input images");
        for (int i = optind; i < argc; i++) {
            int rc = strcmp(argv[i], "-") == 0 ? read_stdin_list(&J.inputs)
                                               : cp_expand_inputs((const char *const *)&argv[i], 1, recursive,
                                                                  glob, &J.inputs);
            if (rc != CP_OK) {
                cli_err("%s", cp_errmsg());
                status = CLI_EXIT_USAGE;
                goto out;
            }
        }
    }
    if (shard) {
        long k, n;
        parse_k_of_n("--shard", shard, 1000000, &k, &n);
        size_t w = 0;
        for (size_t i = 0; i < J.inputs.n; i++) {
            if ((long)(i % (size_t)n) == k)
                J.inputs.items[w++] = J.inputs.items[i];
            else
                free(J.inputs.items[i]);
        }
        J.inputs.n = w;
    }
    if (J.savedir && cp_mkdirs(J.savedir) != CP_OK) {
        cli_err("%s", cp_errmsg());
        { status = CLI_EXIT_FATAL; goto out; }
    }

    /* model */
    int ncores = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (threads <= 0)
        threads = ncores > 0 ? ncores : 1;
    if (J.jobs > threads)
        J.jobs = threads;
    J.threads_per_job = threads / J.jobs;
    J.arch = CP_ARCH_CPNET;
    if ((!J.from_flows || model_spec) && load_model(&J, model_spec, device, J.from_flows) != CP_OK) {
        status = CLI_EXIT_FATAL;
        goto out;
    }
    if (J.from_flows && !model_spec)
        J.diam_mean = 30.0f;
    if (J.estimate && J.from_flows)
        cli_usage_error("--diameter 0 (estimate) needs the network: not with --from-flows");
    if (J.estimate) {
        int rc = cp_size_model_path(&J.ref, &J.size_path);
        if (rc == CP_OK)
            rc = cp_size_model_load(J.size_path, &J.size_model);
        if (rc != CP_OK) {
            cli_err("--diameter 0: %s", cp_errmsg());
            { status = CLI_EXIT_FATAL; goto out; }
        }
    }

    if (J.manifest_path) {
        if (cp_manifest_open(&J.manifest, J.manifest_path, 1)) {
            cli_err("%s", cp_errmsg());
            { status = CLI_EXIT_FATAL; goto out; }
        }
        J.manifest_open = 1;
    }

    cli_install_signal_handlers();
    pthread_mutex_init(&J.lock, NULL);
    cli_progress_start(&J.progress, J.inputs.n, "images");
    pthread_t tids[256];
    int started = 0;
    for (int i = 1; i < J.jobs; i++)
        if (pthread_create(&tids[started], NULL, worker, &J) == 0)
            started++;
    worker(&J);
    for (int i = 0; i < started; i++)
        pthread_join(tids[i], NULL);
    cli_progress_end(&J.progress);

    if (cli_verbosity >= 2 || (cli_verbosity >= 1 && J.failed))
        cli_err("%zu images: %zu done, %zu skipped, %zu failed", J.inputs.n, J.done - J.failed - J.skipped,
                J.skipped, J.failed);
    pthread_mutex_destroy(&J.lock);
    status = cli_interrupted ? CLI_EXIT_INTR : J.failed ? CLI_EXIT_PARTIAL : CLI_EXIT_OK;
out:
    if (J.manifest_open && cp_manifest_close(&J.manifest))
        cli_err("%s", cp_errmsg());
    cp_model_free(J.model);
    cp_model_ref_free(&J.ref);
    cp_size_model_free(J.size_model);
    free(J.size_path);
    if (J.inputs.items != flows_inputs.items)
        cp_strlist_free(&flows_inputs);
    cp_strlist_free(&J.inputs);
    return status;
}
