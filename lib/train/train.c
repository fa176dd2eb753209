/* The training loop: epochs, batches, schedule, checkpoints, loss log. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/cellpose.h"
#include "core/internal.h"
#include "net/shim.h"
#include "train/internal.h"

void cp_train_opts_init(cp_train_opts *o)
{
    memset(o, 0, sizeof *o);
    static const int nb[] = {2, 32, 64, 128, 256};
    memcpy(o->nbase, nb, sizeof nb);
    o->nlevels = 5;
    o->epochs = 100;
    o->batch_size = 8;
    o->lr = 0.005;
    o->weight_decay = 1e-5;
    o->bsize = 224;
    o->rescale = 1;
    o->scale_range = -1;
    o->val_every = 1;
    o->checkpoint_every = 10;
}

double cp_train_lr(double lr, int epoch, int nepochs)
{
    /* linspace(0, lr, 10), then lr; the tail replaced by halvings */
    double v = epoch < 10 ? lr * epoch / 9.0 : lr;
    int tail = nepochs > 300 ? 100 : nepochs > 99 ? 50 : 0;
    if (tail && epoch >= nepochs - tail) {
        int per = tail / 10, k = (epoch - (nepochs - tail)) / per + 1;
        double base = nepochs - tail - 1 < 10 ? lr * (nepochs - tail - 1) / 9.0 : lr;
        v = ldexp(base, -k);
    }
    return v;
}

/* Per-epoch history kept in the checkpoint so the log survives a resume. */
typedef struct hist {
    double train, val, lr, sec;
} hist;

/* Hyperparameters that must not change across a resume, stored bit for bit. */
enum { HP_LR, HP_WD, HP_SGD, HP_SEED, HP_BATCH, HP_BSIZE, HP_DIAM, HP_RESCALE, HP_SRANGE, HP_EPOCHS, HP_NIMG, HP_N };
static const char *const hp_names[HP_N] = {"--lr", "--weight-decay", "--sgd", "--seed", "--batch-size",
                                           "--bsize", "--diam-mean", "--no-rescale", "--scale-range/--scale-max",
                                           "--epochs", "--nimg-per-epoch"};

static int64_t dbits(double d)
{
    int64_t b;
    memcpy(&b, &d, sizeof b);
    return b;
}

static double bitsd(int64_t b)
{
    double d;
    memcpy(&d, &b, sizeof d);
    return d;
}

static int write_log(const char *path, const hist *h, int n)
{
    cp_atomic a;
    int rc = cp_atomic_open(&a, path);
    if (rc)
        return rc;
    fprintf(a.fp, "epoch,train_loss,val_loss,lr,seconds\n");
    for (int e = 0; e < n; e++) {
        fprintf(a.fp, "%d,%.6f,", e, h[e].train);
        if (h[e].val >= 0)
            fprintf(a.fp, "%.6f", h[e].val);
        fprintf(a.fp, ",%.8g,%.2f\n", h[e].lr, h[e].sec);
    }
    return cp_atomic_commit(&a);
}

typedef struct ctx {
    const cp_train_opts *o;
    cp_trainer *net;
    double diam_mean, diam_labels, scale_range;
    float *x, *lbl;   /* one batch of tiles */
    int64_t hp[HP_N];
    int64_t shape[10];  /* nlevels, nout, nbase... */
} ctx;

static int save_model(ctx *c, const char *path, int with_state, int epochs_done, const hist *h)
{
    cp_weights *w = NULL;
    int rc = cp_weights_new(&w);
    if (rc)
        return rc;
    if ((rc = cp_trainer_export(c->net, (float)c->diam_mean, (float)c->diam_labels, with_state, w)))
        goto done;
    if (with_state) {
        int64_t e = epochs_done, nh = 4 * (int64_t)epochs_done, np = HP_N;
        int64_t *hb = cp_malloc_array((size_t)(nh ? nh : 1), sizeof *hb, "log");
        if (!hb) {
            rc = CP_ENOMEM;
            goto done;
        }
        for (int i = 0; i < epochs_done; i++) {
            hb[4 * i] = dbits(h[i].train);
            hb[4 * i + 1] = dbits(h[i].val);
            hb[4 * i + 2] = dbits(h[i].lr);
            hb[4 * i + 3] = dbits(h[i].sec);
        }
        if (!(rc = cp_weights_add(w, "train.epoch", 0, NULL, CP_W_I64, &e)) &&
            !(rc = cp_weights_add(w, "train.hparams", 1, &np, CP_W_I64, c->hp)) &&
            !(rc = cp_weights_add(w, "train.net", 1, (int64_t[]){c->shape[0] + 2}, CP_W_I64, c->shape)))
            rc = cp_weights_add(w, "train.history", 1, &nh, CP_W_I64, hb);
        free(hb);
        if (rc)
            goto done;
    }
    rc = cp_weights_save(w, path);
done:
    cp_weights_free(w);
    return rc;
}

/* Fill the batch buffers with samples idx[0..n) of d, augmented from rng. */
static void make_batch(ctx *c, const cp_dataset *d, const size_t *idx, int n, cp_xoshiro *rng)
{
    int B = c->o->bsize;
    size_t m = (size_t)B * B;
    for (int i = 0; i < n; i++) {
        const cp_train_sample *s = &d->s[idx[i]];
        cp_augment a;
        cp_augment_draw(rng, s->height, s->width, B, c->scale_range,
                        c->o->rescale ? s->diameter / c->diam_mean : 1.0, &a);
        cp_augment_apply(&a, s->x, 2, s->lbl, s->height, s->width, B, c->x + (size_t)i * 2 * m,
                         c->lbl + (size_t)i * 3 * m);
    }
}

uint64_t cp_train_stream_seed(uint64_t seed, int epoch, int stream)
{
    return seed * 0x9e3779b97f4a7c15ULL + (uint64_t)epoch * 0x632be59bd9b4e019ULL + (uint64_t)stream;
}

void cp_train_epoch_order(cp_xoshiro *rng, size_t n, size_t nper, size_t *perm)
{
    if (nper != n) {  /* Cellpose: random choice with replacement */
        for (size_t i = 0; i < nper; i++)
            perm[i] = (size_t)(cp_xoshiro_next(rng) % n);
        return;
    }
    for (size_t i = 0; i < n; i++)
        perm[i] = i;
    for (size_t i = n; i > 1; i--) {  /* Fisher-Yates */
        size_t j = (size_t)(cp_xoshiro_next(rng) % i);
        size_t t = perm[i - 1];
        perm[i - 1] = perm[j];
        perm[j] = t;
    }
}

static int val_loss(ctx *c, const cp_dataset *val, double *out)
{
    cp_xoshiro rng;
    cp_xoshiro_seed(&rng, cp_train_stream_seed(c->o->seed, 42, CP_STREAM_VAL));  /* the same tiles every time */
    size_t *idx = cp_malloc_array(val->n, sizeof *idx, "batch");
    if (!idx)
        return CP_ENOMEM;
    for (size_t i = 0; i < val->n; i++)
        idx[i] = i;
    double sum = 0;
    int rc = CP_OK, B = c->o->bsize;
    for (size_t k = 0; k < val->n && !rc; k += (size_t)c->o->batch_size) {
        int n = (int)(val->n - k < (size_t)c->o->batch_size ? val->n - k : (size_t)c->o->batch_size);
        make_batch(c, val, idx + k, n, &rng);
        double l;
        rc = cp_trainer_eval(c->net, c->x, c->lbl, n, B, B, &l);
        sum += l * n;
    }
    free(idx);
    *out = sum / (double)val->n;
    return rc;
}

static int check_opts(const cp_train_opts *o)
{
    if (o->epochs < 1 || o->batch_size < 1 || o->lr < 0 || o->weight_decay < 0 || o->bsize < 8)
        return cp_error(CP_EINVAL, "training: bad epochs/batch size/learning rate/weight decay/tile size");
    if (!o->out)
        return cp_error(CP_EINVAL, "training: no output file");
    return CP_OK;
}

int cp_train(const cp_train_opts *o, const cp_dataset *train, const cp_dataset *val, cp_train_result *res)
{
    memset(res, 0, sizeof *res);
    int rc = check_opts(o);
    if (rc)
        return rc;
    ctx c = {.o = o};
    cp_weights *init = NULL, *ck = NULL;
    cp_model *pre = NULL;
    size_t *perm = NULL;
    hist *h = NULL;
    char *ckpath = NULL;
    int nbase[8], nlevels = o->nlevels, nout = 3, start = 0;
    memcpy(nbase, o->nbase, sizeof nbase);
    c.diam_mean = o->diam_mean;
    if (o->resume) {  /* shape, diam_mean and state from the checkpoint */
        if ((rc = cp_weights_load(o->resume, &ck)))
            goto done;
        const cp_wtensor *tn = cp_weights_get(ck, "train.net"), *dm = cp_weights_get(ck, "diam_mean");
        if (!tn || tn->dtype != CP_W_I64 || tn->numel < 4 || tn->numel > 10 || !dm || dm->dtype != CP_W_F32 ||
            dm->numel != 1) {
            rc = cp_error(CP_EFORMAT, "%s: not a cptrain checkpoint (no train.net)", o->resume);
            goto done;
        }
        const int64_t *v = tn->data;
        nlevels = (int)v[0];
        nout = (int)v[1];
        if (nlevels < 2 || nlevels > 8 || (size_t)nlevels + 2 != tn->numel) {
            rc = cp_error(CP_EFORMAT, "%s: bad train.net", o->resume);
            goto done;
        }
        for (int i = 0; i < nlevels; i++)
            nbase[i] = (int)v[2 + i];
        c.diam_mean = *(const float *)dm->data;
    } else if (o->pretrained) {  /* the network's shape comes from the file */
        cp_model_opts mo = {CP_DEVICE_CPU, 1, CP_PRECISION_FP32};
        if ((rc = cp_model_load(o->pretrained, &mo, &pre)))
            goto done;
        const cp_model_info *info = cp_model_get_info(pre);
        if (info->arch != CP_ARCH_CPNET) {
            rc = cp_error(CP_EUNSUPPORTED, "%s: only CPnet (Cellpose 3) models can be trained", o->pretrained);
            goto done;
        }
        nlevels = info->nlevels;
        memcpy(nbase, info->nbase, sizeof nbase);
        nout = info->nout;
        if (c.diam_mean <= 0)
            c.diam_mean = info->diam_mean;
        cp_model_free(pre);
        pre = NULL;
        if ((rc = cp_weights_load(o->pretrained, &init)))
            goto done;
    } else if (nlevels < 2 || nlevels > 8) {
        rc = cp_error(CP_EINVAL, "training: nbase needs 2 to 8 entries");
        goto done;
    }
    if (nbase[0] != 2) {
        rc = cp_error(CP_EINVAL, "training: the network must take 2 input channels (nbase starts with %d)", nbase[0]);
        goto done;
    }
    if (o->bsize % (1 << (nlevels - 2))) {
        rc = cp_error(CP_EINVAL, "training: tile size %d is not a multiple of %d", o->bsize, 1 << (nlevels - 2));
        goto done;
    }
    if (c.diam_mean <= 0)
        c.diam_mean = 30.0;
    c.scale_range = o->scale_max > 1 ? -o->scale_max : o->scale_range >= 0 ? o->scale_range : o->rescale ? 0.5 : 1.0;
    c.shape[0] = nlevels;
    c.shape[1] = nout;
    for (int i = 0; i < nlevels; i++)
        c.shape[2 + i] = nbase[i];
    c.hp[HP_LR] = dbits(o->lr);
    c.hp[HP_WD] = dbits(o->weight_decay);
    c.hp[HP_SGD] = o->sgd;
    c.hp[HP_SEED] = (int64_t)o->seed;
    c.hp[HP_BATCH] = o->batch_size;
    c.hp[HP_BSIZE] = o->bsize;
    c.hp[HP_DIAM] = dbits(c.diam_mean);
    c.hp[HP_RESCALE] = o->rescale;
    c.hp[HP_SRANGE] = dbits(c.scale_range);
    c.hp[HP_EPOCHS] = o->epochs;
    c.hp[HP_NIMG] = o->nimg_per_epoch;
    if (ck) {
        const cp_wtensor *te = cp_weights_get(ck, "train.epoch"), *thp = cp_weights_get(ck, "train.hparams"),
                         *th = cp_weights_get(ck, "train.history");
        if (!te || !thp || !th || te->dtype != CP_W_I64 || thp->dtype != CP_W_I64 || th->dtype != CP_W_I64 ||
            thp->numel != HP_N || te->numel != 1) {
            rc = cp_error(CP_EFORMAT, "%s: not a cptrain checkpoint (no train.epoch/hparams/history)", o->resume);
            goto done;
        }
        const int64_t *hp = thp->data;
        for (int i = 0; i < HP_N; i++)
            if (hp[i] != c.hp[i]) {
                rc = cp_error(CP_EINVAL, "%s: the checkpoint was made with another %s; resume with the same "
                              "options", o->resume, hp_names[i]);
                goto done;
            }
        start = (int)*(const int64_t *)te->data;
        if (start < 0 || start > o->epochs || th->numel != 4 * (size_t)start) {
            rc = cp_error(CP_EFORMAT, "%s: inconsistent epoch count %d", o->resume, start);
            goto done;
        }
    }
    size_t nper = o->nimg_per_epoch > 0 ? (size_t)o->nimg_per_epoch : train->n;
    if (!(h = cp_calloc((size_t)o->epochs, sizeof *h, "log")) ||
        !(perm = cp_malloc_array(nper, sizeof *perm, "permutation"))) {
        rc = CP_ENOMEM;
        goto done;
    }
    if (ck) {
        const int64_t *hb = cp_weights_get(ck, "train.history")->data;
        for (int i = 0; i < start; i++)
            h[i] = (hist){bitsd(hb[4 * i]), bitsd(hb[4 * i + 1]), bitsd(hb[4 * i + 2]), bitsd(hb[4 * i + 3])};
    }
    if ((rc = cp_trainer_create(ck ? ck : init, nbase, nlevels, nout, o->seed, o->threads, o->sgd,
                                o->weight_decay, &c.net)))
        goto done;
    if (ck && (rc = cp_trainer_import_optim(c.net, ck, o->resume)))
        goto done;
    cp_weights_free(init);
    cp_weights_free(ck);
    init = ck = NULL;
    double dsum = 0;
    for (size_t i = 0; i < train->n; i++)
        dsum += train->s[i].diameter;
    c.diam_labels = dsum / (double)train->n;
    res->diam_labels = c.diam_labels;
    size_t m = (size_t)o->bsize * o->bsize;
    if (!(c.x = cp_malloc_array((size_t)o->batch_size * 2, m * sizeof(float), "batch")) ||
        !(c.lbl = cp_malloc_array((size_t)o->batch_size * 3, m * sizeof(float), "batch"))) {
        rc = CP_ENOMEM;
        goto done;
    }
    if (!(ckpath = o->checkpoint ? cp_strdup(o->checkpoint) : cp_malloc(strlen(o->out) + 6, "path"))) {
        rc = CP_ENOMEM;
        goto done;
    }
    if (!o->checkpoint)
        sprintf(ckpath, "%s.ckpt", o->out);
    res->epochs_done = start;
    double t_run = cp_seconds();
    for (int e = start; e < o->epochs; e++) {
        double t0 = cp_seconds();
        cp_xoshiro rng;
        cp_xoshiro_seed(&rng, cp_train_stream_seed(o->seed, e, CP_STREAM_TRAIN));
        cp_train_epoch_order(&rng, train->n, nper, perm);
        double lr = cp_train_lr(o->lr, e, o->epochs), sum = 0;
        for (size_t k = 0; k < nper; k += (size_t)o->batch_size) {
            int n = (int)(nper - k < (size_t)o->batch_size ? nper - k : (size_t)o->batch_size);
            make_batch(&c, train, perm + k, n, &rng);
            double l;
            if ((rc = cp_trainer_step(c.net, c.x, c.lbl, n, o->bsize, o->bsize, lr, &l)))
                goto done;
            sum += l * n;
            res->samples += (size_t)n;
            if (o->progress) {
                cp_train_progress p = {e, o->epochs, k + (size_t)n, nper, sum / (double)(k + (size_t)n)};
                if (o->progress(o->ctx, &p)) {
                    rc = cp_error(CP_EINTR, "training interrupted");
                    goto done;
                }
            }
        }
        h[e].train = sum / (double)nper;
        h[e].lr = lr;
        h[e].val = -1;
        if (val && (e % (o->val_every > 0 ? o->val_every : 1) == 0 || e == o->epochs - 1) &&
            (rc = val_loss(&c, val, &h[e].val)))
            goto done;
        h[e].sec = cp_seconds() - t0;
        res->epochs_done = e + 1;
        res->train_loss = h[e].train;
        res->val_loss = h[e].val;
        if (o->log_csv && (rc = write_log(o->log_csv, h, e + 1)))
            goto done;
        int last = e == o->epochs - 1;
        if (last || (o->checkpoint_every > 0 && (e + 1) % o->checkpoint_every == 0)) {
            /* model before checkpoint: a checkpoint on disk implies its model is there too */
            if ((rc = save_model(&c, o->out, 0, e + 1, h)) || (rc = save_model(&c, ckpath, 1, e + 1, h)))
                goto done;
        }
    }
    if (start >= o->epochs && (rc = save_model(&c, o->out, 0, start, h)))
        goto done;
    res->seconds = cp_seconds() - t_run;
done:
    cp_model_free(pre);
    cp_weights_free(init);
    cp_weights_free(ck);
    cp_trainer_free(c.net);
    free(c.x);
    free(c.lbl);
    free(perm);
    free(h);
    free(ckpath);
    return rc;
}
