/* cptrain: train or fine-tune a Cellpose 3 network (CPnet) on labelled images. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/cellpose.h"
#include "common/cli.h"

static void usage(void)
{
    printf("Usage: cptrain [OPTIONS] --train DIR [--val DIR] -o MODEL.pth [--train-size]\n"
           "       cptrain [OPTIONS] --train DIR [--val DIR] --pretrained MODEL --train-size\n"
           "Train a Cellpose 3 network (CPnet) on image/label pairs, or fine-tune one; and\n"
           "its size model (automatic diameter, cpseg --diameter 0).\n"
           "Pairs: NAME.ext with NAME_masks.tif (or NAME_cp_masks.tif); a NAME ending in _img\n"
           "may drop it (NAME_img.png + NAME_masks.tif).\n"
           "\n"
           "Data:\n"
           "      --train DIR           training pairs (required)\n"
           "      --val DIR             validation pairs: loss reported, never trained on\n"
           "      --chan C, --chan2 C   Cellpose 3 channels: 0 gray, 1 red, 2 green, 3 blue (default 0 0)\n"
           "      --mask-filter SUF     label suffix (default _masks, then _cp_masks)\n"
           "      --img-filter SUF      image suffix dropped before SUF (default _img)\n"
           "      --min-masks N         skip training images with fewer masks (default 5)\n"
           "Network:\n"
           "      --pretrained MODEL    CPnet weights to fine-tune: a file or a name as cpseg -m takes\n"
           "                            (cyto3, nuclei, cptools_nuclei); its nbase and diam_mean\n"
           "      --nbase LIST          fresh network widths, e.g. 32,64,128,256 (the 2 input\n"
           "                            channels may be given first); default 32,64,128,256\n"
           "      --diam-mean D         object diameter the network is trained at (default: the\n"
           "                            pretrained model's, else 30)\n"
           "      --no-rescale          keep each image's scale (no resize to --diam-mean)\n"
           "      --scale-range R       random scale 1 +- R/2 (default 0.5, 1 with --no-rescale)\n"
           "      --scale-max M         random scale in 1/M..M instead: shrink or enlarge by\n"
           "                            a factor uniform in 1..M, equal odds\n"
           "Training:\n"
           "      --epochs N            passes over the training set (default 100)\n"
           "      --nimg-per-epoch N    samples per epoch, drawn with replacement (default: each\n"
           "                            training image once)\n"
           "      --batch-size N        tiles per step (default 8)\n"
           "      --bsize N             tile size in pixels (default 224)\n"
           "      --lr X                learning rate (default 0.005)\n"
           "      --weight-decay X      (default 1e-5)\n"
           "      --sgd                 SGD with momentum 0.9 instead of AdamW\n"
           "      --seed N              random seed (default 0)\n"
           "      --threads N           threads (default: all cores); results depend on it\n"
           "Output:\n"
           "  -o, --output MODEL.pth    the trained model (a Cellpose state dict)\n"
           "      --checkpoint FILE     resumable state (default MODEL.pth.ckpt)\n"
           "      --checkpoint-every N  epochs between checkpoints and model saves (default 10)\n"
           "      --resume FILE         continue from a checkpoint (same options)\n"
           "      --log FILE.csv        loss per epoch: epoch,train_loss,val_loss,lr,seconds\n"
           "      --val-every N         validation loss every N epochs (default 1)\n"
           "Size model (Cellpose's train_size):\n"
           "      --train-size          also train the size model, after the network (or, without\n"
           "                            -o, the size model of --pretrained alone); --val images\n"
           "                            give its test correlation\n"
           "      --size-output FILE    where it goes (default MODEL.pth_size.npy beside the model,\n"
           "                            where Cellpose and cpseg --diameter 0 look for it)\n"
           "      --size-epochs N       passes over the training images (default 10)\n"
           "      --size-bsize N        crop size in pixels (default 512)\n"
           "  -q, --quiet               errors only\n"
           "  -v, --verbose             data summary and per-epoch losses\n"
           "      --help, --version\n"
           "\n"
           "Exit status: 0 done, 2 usage error, 3 fatal error, 130 interrupted.\n");
}

enum {
    OPT_TRAIN = 256, OPT_VAL, OPT_CHAN, OPT_CHAN2, OPT_MASKF, OPT_IMGF, OPT_MINM, OPT_PRE, OPT_NBASE,
    OPT_DIAM, OPT_NORESCALE, OPT_SRANGE, OPT_SMAX, OPT_EPOCHS, OPT_BATCH, OPT_BSIZE, OPT_LR, OPT_WD, OPT_SGD,
    OPT_SEED, OPT_THREADS, OPT_CKPT, OPT_CKEVERY, OPT_RESUME, OPT_LOG, OPT_VALEVERY, OPT_NIMG, OPT_TSIZE, OPT_SOUT, OPT_SEPOCHS, OPT_SBSIZE, OPT_HELP, OPT_VERSION
};

static const struct option long_opts[] = {
    {"train", required_argument, 0, OPT_TRAIN},      {"val", required_argument, 0, OPT_VAL},
    {"chan", required_argument, 0, OPT_CHAN},        {"chan2", required_argument, 0, OPT_CHAN2},
    {"mask-filter", required_argument, 0, OPT_MASKF}, {"img-filter", required_argument, 0, OPT_IMGF},
    {"min-masks", required_argument, 0, OPT_MINM},   {"pretrained", required_argument, 0, OPT_PRE},
    {"nbase", required_argument, 0, OPT_NBASE},      {"diam-mean", required_argument, 0, OPT_DIAM},
    {"no-rescale", no_argument, 0, OPT_NORESCALE},   {"scale-range", required_argument, 0, OPT_SRANGE},
    {"scale-max", required_argument, 0, OPT_SMAX},
    {"epochs", required_argument, 0, OPT_EPOCHS},    {"batch-size", required_argument, 0, OPT_BATCH},
    {"bsize", required_argument, 0, OPT_BSIZE},      {"lr", required_argument, 0, OPT_LR},
    {"weight-decay", required_argument, 0, OPT_WD},  {"sgd", no_argument, 0, OPT_SGD},
    {"seed", required_argument, 0, OPT_SEED},        {"threads", required_argument, 0, OPT_THREADS},
    {"output", required_argument, 0, 'o'},           {"checkpoint", required_argument, 0, OPT_CKPT},
    {"checkpoint-every", required_argument, 0, OPT_CKEVERY}, {"resume", required_argument, 0, OPT_RESUME},
    {"log", required_argument, 0, OPT_LOG},          {"val-every", required_argument, 0, OPT_VALEVERY},
    {"quiet", no_argument, 0, 'q'},                  {"verbose", no_argument, 0, 'v'},
    {"nimg-per-epoch", required_argument, 0, OPT_NIMG},
    {"train-size", no_argument, 0, OPT_TSIZE},       {"size-output", required_argument, 0, OPT_SOUT},
    {"size-epochs", required_argument, 0, OPT_SEPOCHS}, {"size-bsize", required_argument, 0, OPT_SBSIZE},
    {"help", no_argument, 0, OPT_HELP},              {"version", no_argument, 0, OPT_VERSION},
    {0, 0, 0, 0}};

static void parse_nbase(const char *s, cp_train_opts *o)
{
    int v[9], n = 0;
    const char *p = s;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char buf[32];
        if (len == 0 || len >= sizeof buf || n == 9)
            cli_usage_error("--nbase %s: expected 1 to 7 comma-separated widths", s);
        memcpy(buf, p, len);
        buf[len] = 0;
        v[n++] = (int)cli_parse_long("--nbase", buf, 1, 4096);
        p = comma ? comma + 1 : p + len;
        if (comma && !*p)
            cli_usage_error("--nbase %s: trailing comma", s);
    }
    int off = n > 0 && v[0] == 2 && n > 1 ? 1 : 0;  /* input channels given first */
    if (n - off < 1 || n - off > 7)
        cli_usage_error("--nbase %s: expected 1 to 7 widths after the input channels", s);
    o->nbase[0] = 2;
    for (int i = off; i < n; i++)
        o->nbase[1 + i - off] = v[i];
    o->nlevels = n - off + 1;
}

typedef struct prog {
    cli_progress bar;
    int epoch;
    double t0;
} prog;

static int on_progress(void *ctx, const cp_train_progress *p)
{
    prog *g = ctx;
    if (p->epoch != g->epoch) {
        cli_progress_end(&g->bar);
        g->epoch = p->epoch;
        cli_progress_start(&g->bar, p->total, "samples");
    }
    char extra[96];
    if (isnan(p->loss)) /* the size model's styles: no loss */
        snprintf(extra, sizeof extra, " size model epoch %d/%d", p->epoch + 1, p->nepochs);
    else
        snprintf(extra, sizeof extra, " epoch %d/%d loss %.4f", p->epoch + 1, p->nepochs, p->loss);
    cli_progress_update(&g->bar, p->done, extra);
    return cli_interrupted;  /* first SIGINT: stop after this batch, keep the last checkpoint */
}

static void summary(const char *what, const char *dir, const cp_dataset *d)
{
    if (cli_verbosity < 2)
        return;
    double dmin = 1e30, dmax = 0, dsum = 0;
    size_t masks = 0;
    for (size_t i = 0; i < d->n; i++) {
        double x = d->s[i].diameter;
        dmin = x < dmin ? x : dmin;
        dmax = x > dmax ? x : dmax;
        dsum += x;
        masks += (size_t)d->s[i].nmasks;
    }
    cli_info("%s %s: %zu images (%zu skipped, < min masks), %zu masks, diameter mean %.1f (%.1f..%.1f)", what,
             dir, d->n, d->skipped, masks, dsum / (double)d->n, dmin, dmax);
}

/* The size model of the network in model_path, written to size_path. */
static int train_size(const char *model_path, const char *size_path, const cp_dataset *train,
                      const cp_dataset *val, const cp_size_train_opts *so, int threads, prog *g)
{
    cp_model_opts mo = {CP_DEVICE_CPU, threads, CP_PRECISION_FP32};
    cp_model *m = NULL;
    cp_size_model *sm = NULL;
    cp_size_train_result r;
    g->epoch = -1;
    int rc = cp_model_load(model_path, &mo, &m);
    if (!rc)
        rc = cp_train_size(m, train, val, so, &sm, &r);
    cli_progress_end(&g->bar);
    if (!rc)
        rc = cp_size_model_save(sm, size_path);
    if (!rc && cli_verbosity >= 1) {
        fprintf(stderr, "%s: size model: %zu crops, train correlation %.4f", cli_prog, r.samples, r.train_corr);
        if (r.test_samples)
            fprintf(stderr, ", test correlation %.4f (%zu images)", r.test_corr, r.test_samples);
        fprintf(stderr, ", diam_mean %g, ymean %.4f -> %s\n", sm->diam_mean, (double)sm->ymean, size_path);
    }
    cp_size_model_free(sm);
    cp_model_free(m);
    return rc;
}

int main(int argc, char **argv)
{
    cli_init("cptrain");
    cp_train_opts o;
    cp_train_opts_init(&o);
    o.nbase[0] = 2;
    cp_dataset_opts dopt;
    cp_dataset_opts_init(&dopt);
    cp_size_train_opts so;
    cp_size_train_opts_init(&so);
    const char *train_dir = NULL, *val_dir = NULL, *size_out = NULL;
    int threads = 0, with_size = 0;
    int c;
    while ((c = getopt_long(argc, argv, "o:qv", long_opts, NULL)) != -1) {
        switch (c) {
        case 'o': o.out = optarg; break;
        case 'q': cli_verbosity = 0; break;
        case 'v': cli_verbosity = 2; break;
        case OPT_TRAIN: train_dir = optarg; break;
        case OPT_VAL: val_dir = optarg; break;
        case OPT_CHAN: dopt.chan = (int)cli_parse_long("--chan", optarg, 0, 4); break;
        case OPT_CHAN2: dopt.chan2 = (int)cli_parse_long("--chan2", optarg, 0, 4); break;
        case OPT_MASKF: dopt.mask_filter = optarg; break;
        case OPT_IMGF: dopt.img_filter = optarg; break;
        case OPT_MINM: dopt.min_masks = (int)cli_parse_long("--min-masks", optarg, 0, 1000000); break;
        case OPT_PRE: o.pretrained = optarg; break;
        case OPT_NBASE: parse_nbase(optarg, &o); break;
        case OPT_DIAM: o.diam_mean = cli_parse_double("--diam-mean", optarg, 1, 1e4); break;
        case OPT_NORESCALE: o.rescale = 0; break;
        case OPT_SRANGE: o.scale_range = cli_parse_double("--scale-range", optarg, 0, 1.9); break;
        case OPT_SMAX: o.scale_max = cli_parse_double("--scale-max", optarg, 1, 10); break;
        case OPT_EPOCHS: o.epochs = (int)cli_parse_long("--epochs", optarg, 1, 1000000); break;
        case OPT_BATCH: o.batch_size = (int)cli_parse_long("--batch-size", optarg, 1, 4096); break;
        case OPT_BSIZE: o.bsize = (int)cli_parse_long("--bsize", optarg, 16, 4096); break;
        case OPT_LR: o.lr = cli_parse_double("--lr", optarg, 0, 100); break;
        case OPT_WD: o.weight_decay = cli_parse_double("--weight-decay", optarg, 0, 100); break;
        case OPT_SGD: o.sgd = 1; break;
        case OPT_SEED: o.seed = (uint64_t)cli_parse_long("--seed", optarg, 0, 0x7fffffffffffffffL); break;
        case OPT_THREADS: threads = (int)cli_parse_long("--threads", optarg, 1, 1024); break;
        case OPT_CKPT: o.checkpoint = optarg; break;
        case OPT_CKEVERY: o.checkpoint_every = (int)cli_parse_long("--checkpoint-every", optarg, 0, 1000000); break;
        case OPT_RESUME: o.resume = optarg; break;
        case OPT_LOG: o.log_csv = optarg; break;
        case OPT_VALEVERY: o.val_every = (int)cli_parse_long("--val-every", optarg, 1, 1000000); break;
        case OPT_NIMG: o.nimg_per_epoch = (int)cli_parse_long("--nimg-per-epoch", optarg, 1, 100000000); break;
        case OPT_TSIZE: with_size = 1; break;
        case OPT_SOUT: size_out = optarg; break;
        case OPT_SEPOCHS: so.epochs = (int)cli_parse_long("--size-epochs", optarg, 1, 1000000); break;
        case OPT_SBSIZE: so.bsize = (int)cli_parse_long("--size-bsize", optarg, 16, 4096); break;
        case OPT_HELP: usage(); return CLI_EXIT_OK;
        case OPT_VERSION: cli_print_version(); return CLI_EXIT_OK;
        default: cli_usage_error("unknown option");
        }
    }
    if (optind < argc)
        cli_usage_error("unexpected argument '%s'", argv[optind]);
    if (!train_dir)
        cli_usage_error("--train DIR is required");
    int size_only = with_size && !o.out;  /* the size model of --pretrained alone */
    if (!o.out && !(with_size && o.pretrained))
        cli_usage_error("-o MODEL.pth is required (or --pretrained MODEL --train-size for the size model alone)");
    if ((size_out || so.epochs != 10 || so.bsize != 512) && !with_size)
        cli_usage_error("--size-output, --size-epochs and --size-bsize go with --train-size");
    if (o.pretrained && o.resume)
        cli_usage_error("--pretrained and --resume exclude each other (the checkpoint holds the weights)");
    int mult = 1 << (o.nlevels - 2);
    if (!o.pretrained && !o.resume && o.bsize % mult)
        cli_usage_error("--bsize %d: must be a multiple of %d for %d levels", o.bsize, mult, o.nlevels - 1);
    o.threads = threads;
    dopt.threads = threads;
    cp_model_ref ref = {0};
    if (o.pretrained) {  /* names (cyto3, nuclei, cptools_nuclei) as cpseg takes them */
        if (cp_model_resolve(o.pretrained, &ref)) {
            cli_err("%s", cp_errmsg());
            return CLI_EXIT_FATAL;
        }
        o.pretrained = ref.path;
    }
    char *size_path = NULL;  /* Cellpose's train_size: the model path + "_size.npy" */
    const char *size_of = size_only ? o.pretrained : o.out;
    if (with_size && !size_out) {
        if (!strncmp(size_of, "builtin:", 8))
            cli_usage_error("--train-size: the built-in model is compiled in; give --size-output FILE");
        size_path = malloc(strlen(size_of) + sizeof "_size.npy");
        if (!size_path) {
            cli_err("out of memory");
            return CLI_EXIT_FATAL;
        }
        sprintf(size_path, "%s_size.npy", size_of);
        size_out = size_path;
    }
    so.seed = o.seed;
    so.threads = threads;

    cli_install_signal_handlers();
    cp_dataset *train = NULL, *val = NULL;
    if (cp_dataset_load(train_dir, &dopt, &train)) {
        cli_err("%s", cp_errmsg());
        cp_model_ref_free(&ref);
        free(size_path);
        return CLI_EXIT_FATAL;
    }
    summary("train", train_dir, train);
    if (val_dir) {
        cp_dataset_opts vopt = dopt;
        vopt.min_masks = 0;
        if (cp_dataset_load(val_dir, &vopt, &val)) {
            cli_err("%s", cp_errmsg());
            cp_model_ref_free(&ref);
            free(size_path);
            cp_dataset_free(train);
            return CLI_EXIT_FATAL;
        }
        summary("val", val_dir, val);
    }
    prog g = {.epoch = -1};
    o.progress = so.progress = on_progress;
    o.ctx = so.ctx = &g;
    cp_train_result r;
    int rc = CP_OK;
    if (!size_only) {
        rc = cp_train(&o, train, val, &r);
        cli_progress_end(&g.bar);
        if (!rc && cli_verbosity >= 1) {
            fprintf(stderr, "%s: %d epochs, train loss %.4f", cli_prog, r.epochs_done, r.train_loss);
            if (r.val_loss >= 0)
                fprintf(stderr, ", val loss %.4f", r.val_loss);
            fprintf(stderr, ", diam_labels %.1f, %.1f samples/s -> %s\n", r.diam_labels,
                    r.seconds > 0 ? (double)r.samples / r.seconds : 0.0, o.out);
        }
    }
    if (!rc && with_size)
        rc = train_size(size_of, size_out, train, val, &so, threads, &g);
    cp_dataset_free(train);
    cp_dataset_free(val);
    cp_model_ref_free(&ref);
    free(size_path);
    if (rc) {
        cli_err("%s", cp_errmsg());
        return rc == CP_EINTR ? CLI_EXIT_INTR : CLI_EXIT_FATAL;
    }
    return CLI_EXIT_OK;
}
