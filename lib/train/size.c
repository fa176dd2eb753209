/* Cellpose 3's size model training (train.train_size, v3.1.1.3): the styles
 * of randomly scaled crops of the training images, then the ridge regression
 * of the log diameter on them. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/cellpose.h"
#include "core/internal.h"
#include "train/internal.h"

void cp_size_train_opts_init(cp_size_train_opts *o)
{
    memset(o, 0, sizeof *o);
    o->epochs = 10;
    o->bsize = 512;
    o->scale_range = 1.0;
    o->l2 = 1.0;
    o->batch_size = 8;
}

/* Solve G x = b for symmetric positive definite G (k x k, upper triangle
 * used, overwritten by its Cholesky factor); -1 if G is not positive definite. */
static int cholesky_solve(double *G, double *b, int k)
{
    for (int j = 0; j < k; j++) {  /* G = U^T U, U upper */
        double d = G[(size_t)j * k + j];
        for (int i = 0; i < j; i++)
            d -= G[(size_t)i * k + j] * G[(size_t)i * k + j];
        if (!(d > 0))
            return -1;
        d = sqrt(d);
        G[(size_t)j * k + j] = d;
        for (int c = j + 1; c < k; c++) {
            double v = G[(size_t)j * k + c];
            for (int i = 0; i < j; i++)
                v -= G[(size_t)i * k + j] * G[(size_t)i * k + c];
            G[(size_t)j * k + c] = v / d;
        }
    }
    for (int j = 0; j < k; j++) {  /* U^T z = b */
        double v = b[j];
        for (int i = 0; i < j; i++)
            v -= G[(size_t)i * k + j] * b[i];
        b[j] = v / G[(size_t)j * k + j];
    }
    for (int j = k - 1; j >= 0; j--) {  /* U x = z */
        double v = b[j];
        for (int c = j + 1; c < k; c++)
            v -= G[(size_t)j * k + c] * b[c];
        b[j] = v / G[(size_t)j * k + j];
    }
    return 0;
}

static double correlation(const double *a, const double *b, size_t n)
{
    double ma = 0, mb = 0, sab = 0, saa = 0, sbb = 0;
    for (size_t i = 0; i < n; i++) {
        ma += a[i];
        mb += b[i];
    }
    ma /= (double)n;
    mb /= (double)n;
    for (size_t i = 0; i < n; i++) {
        sab += (a[i] - ma) * (b[i] - mb);
        saa += (a[i] - ma) * (a[i] - ma);
        sbb += (b[i] - mb) * (b[i] - mb);
    }
    return sab / sqrt(saa * sbb);
}

int cp_size_model_fit(const float *styles, const float *y, size_t n, int nstyle, double l2, double diam_mean,
                      cp_size_model **out)
{
    *out = NULL;
    if (n < 1 || nstyle < 1 || nstyle > 65536 || !(l2 >= 0) || !(diam_mean > 0) || isinf(diam_mean))
        return cp_error(CP_EINVAL, "size model: %zu samples of %d styles, l2 %g, diam_mean %g", n, nstyle, l2,
                        diam_mean);
    size_t k = (size_t)nstyle;
    cp_size_model *sm = cp_calloc(1, sizeof *sm, "size model");
    float *X = cp_malloc_array(n, k * sizeof *X, "size regression"), *yc = cp_malloc_array(n, sizeof *yc, "y");
    double *G = cp_calloc(k * k, sizeof *G, "size regression"), *b = cp_calloc(k, sizeof *b, "size regression");
    int rc = CP_OK;
    if (!sm || !X || !yc || !G || !b || !(sm->A = cp_malloc_array(k, sizeof *sm->A, "size model")) ||
        !(sm->smean = cp_calloc(k, sizeof *sm->smean, "size model"))) {
        rc = CP_ENOMEM;
        goto done;
    }
    sm->nstyle = nstyle;
    sm->diam_mean = diam_mean;
    /* styles.mean(axis=0): float32 sums in row order, then a float32 divide */
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < k; j++)
            sm->smean[j] += styles[i * k + j];
    for (size_t j = 0; j < k; j++)
        sm->smean[j] /= (float)n;
    sm->ymean = (float)((double)cp_np_sum_f32(y, n) / (double)n);
    for (size_t i = 0; i < n; i++) {
        yc[i] = y[i] - sm->ymean;
        for (size_t j = 0; j < k; j++)
            X[i * k + j] = styles[i * k + j] - sm->smean[j];
    }
    /* X X^T + l2 I and X y in double, summed in sample order */
    for (size_t i = 0; i < n; i++) {
        const float *x = X + i * k;
        for (size_t a = 0; a < k; a++) {
            double xa = x[a];
            b[a] += xa * yc[i];
            for (size_t c = a; c < k; c++)
                G[a * k + c] += xa * x[c];
        }
    }
    for (size_t a = 0; a < k; a++)
        G[a * k + a] += l2;
    if (cholesky_solve(G, b, nstyle)) {
        rc = cp_error(CP_EINVAL, "size model: the regression is singular (%zu samples, l2 %g)", n, l2);
        goto done;
    }
    memcpy(sm->A, b, k * sizeof *b);
    for (size_t j = 0; j < k; j++)
        if (!isfinite(sm->A[j])) {
            rc = cp_error(CP_EINVAL, "size model: the regression gives a non-finite coefficient");
            goto done;
        }
done:
    free(X);
    free(yc);
    free(G);
    free(b);
    if (rc) {
        cp_size_model_free(sm);
        return rc;
    }
    *out = sm;
    return CP_OK;
}

/* One batch: crops of samples idx[0..nb) drawn from rng, their styles and
 * targets y = log(diameter) - log(diam_mean) + log(scale) (float32, as
 * Cellpose's diams array). */
typedef struct batch {
    cp_model *m;
    const cp_size_train_opts *o;
    double diam_mean;
    float *x, *out;
    cp_augment *aug;
} batch;

static int run_batch(batch *B, const cp_dataset *d, const size_t *idx, int nb, cp_xoshiro *rng, float *styles,
                     float *y)
{
    int bs = B->o->bsize;
    size_t m = (size_t)bs * bs;
    for (int i = 0; i < nb; i++) {  /* the draws stay in order; only applying them is parallel */
        const cp_train_sample *s = &d->s[idx[i]];
        cp_augment_draw(rng, s->height, s->width, bs, B->o->scale_range, 0.0, &B->aug[i]);
        float scale = (float)B->aug[i].scale;
        y[i] = (float)(log(s->diameter) - log(B->diam_mean) + (double)logf(scale));
    }
#pragma omp parallel for schedule(static)
    for (int i = 0; i < nb; i++) {
        const cp_train_sample *s = &d->s[idx[i]];
        cp_augment_apply(&B->aug[i], s->x, 2, NULL, s->height, s->width, bs, B->x + (size_t)i * 2 * m, NULL);
    }
    return cp_model_forward(B->m, B->x, nb, bs, bs, B->out, styles);
}

int cp_train_size(cp_model *m, const cp_dataset *train, const cp_dataset *test, const cp_size_train_opts *o,
                  cp_size_model **out, cp_size_train_result *res)
{
    *out = NULL;
    memset(res, 0, sizeof *res);
    res->test_corr = NAN;
    const cp_model_info *info = cp_model_get_info(m);
    if (info->arch != CP_ARCH_CPNET)
        return cp_error(CP_EUNSUPPORTED, "size model: only CPnet (Cellpose 3) networks have styles to train on");
    int mult = 1 << (info->nlevels - 2);
    if (o->epochs < 1 || o->batch_size < 1 || o->bsize < mult || o->bsize % mult || o->nimg_per_epoch < 0 ||
        !(o->scale_range >= 0 && o->scale_range < 2))
        return cp_error(CP_EINVAL, "size model training: bad epochs, batch size, scale range or crop size %d "
                        "(a multiple of %d)", o->bsize, mult);
    if (!train || !train->n)
        return cp_error(CP_EINVAL, "size model training: no training images");
    if (o->threads > 0)
        omp_set_num_threads(o->threads);
    double t0 = cp_seconds();
    size_t nper = o->nimg_per_epoch > 0 ? (size_t)o->nimg_per_epoch : train->n, ns = (size_t)info->nstyle;
    size_t total = (size_t)o->epochs * nper, m2 = (size_t)o->bsize * o->bsize;
    size_t ntest = test ? test->n : 0, nall = total + ntest;
    batch B = {.m = m, .o = o, .diam_mean = info->diam_mean};
    float *styles = cp_malloc_array(nall, ns * sizeof *styles, "styles");
    float *y = cp_malloc_array(nall, sizeof *y, "size targets");
    size_t *perm = cp_malloc_array(nper > ntest ? nper : ntest, sizeof *perm, "permutation");
    double *t = cp_malloc_array(nall, sizeof *t, "correlation"), *p = cp_malloc_array(nall, sizeof *p, "corr");
    B.x = cp_malloc_array((size_t)o->batch_size * 2, m2 * sizeof *B.x, "batch");
    B.out = cp_malloc_array((size_t)o->batch_size * info->nout, m2 * sizeof *B.out, "batch");
    B.aug = cp_malloc_array((size_t)o->batch_size, sizeof *B.aug, "batch");
    int rc = !styles || !y || !perm || !t || !p || !B.x || !B.out || !B.aug ? CP_ENOMEM : CP_OK;
    if (!rc && !(info->diam_mean > 0))
        rc = cp_error(CP_EINVAL, "size model: the network's diam_mean is %g", info->diam_mean);
    for (int e = 0; e < o->epochs && !rc; e++) {
        cp_xoshiro rng;
        cp_xoshiro_seed(&rng, cp_train_stream_seed(o->seed, e, CP_STREAM_SIZE));
        cp_train_epoch_order(&rng, train->n, nper, perm);
        for (size_t k = 0; k < nper && !rc; k += (size_t)o->batch_size) {
            int nb = (int)(nper - k < (size_t)o->batch_size ? nper - k : (size_t)o->batch_size);
            size_t at = (size_t)e * nper + k;
            rc = run_batch(&B, train, perm + k, nb, &rng, styles + at * ns, y + at);
            if (!rc && o->progress) {
                cp_train_progress pg = {e, o->epochs, k + (size_t)nb, nper, NAN};
                if (o->progress(o->ctx, &pg))
                    rc = cp_error(CP_EINTR, "size model training interrupted");
            }
        }
    }
    cp_size_model *sm = NULL;
    if (!rc)
        rc = cp_size_model_fit(styles, y, total, info->nstyle, o->l2, info->diam_mean, &sm);
    if (!rc) {  /* train correlation of the centred targets and A . (s - smean) */
        for (size_t i = 0; i < total; i++) {
            double dot = 0;
            for (size_t j = 0; j < ns; j++)
                dot += sm->A[j] * (double)(styles[i * ns + j] - sm->smean[j]);
            t[i] = (double)(y[i] - sm->ymean);
            p[i] = dot;
        }
        res->train_corr = correlation(t, p, total);
    }
    if (!rc && ntest) {  /* one crop of each test image: its true diameter vs the estimate */
        cp_xoshiro rng;
        cp_xoshiro_seed(&rng, cp_train_stream_seed(o->seed, 0, CP_STREAM_SIZE_TEST));
        for (size_t i = 0; i < ntest; i++)
            perm[i] = i;
        float *ts = styles + total * ns, *ty = y + total;
        for (size_t k = 0; k < ntest && !rc; k += (size_t)o->batch_size) {
            int nb = (int)(ntest - k < (size_t)o->batch_size ? ntest - k : (size_t)o->batch_size);
            rc = run_batch(&B, test, perm + k, nb, &rng, ts + k * ns, ty + k);
        }
        for (size_t i = 0; i < ntest && !rc; i++) {
            t[i] = exp((double)ty[i]) * info->diam_mean;
            p[i] = cp_size_model_predict(sm, ts + i * ns);
        }
        if (!rc && ntest > 1)
            res->test_corr = correlation(t, p, ntest);
        res->test_samples = ntest;
    }
    free(styles);
    free(y);
    free(perm);
    free(t);
    free(p);
    free(B.x);
    free(B.out);
    free(B.aug);
    if (rc) {
        cp_size_model_free(sm);
        return rc;
    }
    res->samples = total;
    res->seconds = cp_seconds() - t0;
    *out = sm;
    return CP_OK;
}
