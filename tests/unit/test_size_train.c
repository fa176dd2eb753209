/* Training size models (Cellpose 3's train_size): the ridge regression
 * against numpy (tests/unit/size_fit_ref.py) on synthetic styles and
 * against Cellpose's own fit on the golden training styles
 * (../shared/golden/size/train), and size files written byte for byte as
 * Cellpose's np.save wrote them. */
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cellpose/cellpose.h"
#include "test.h"

static const char *const WEIGHTS[2] = {"cpnet_cyto3like_s1.pth", "cpnet_nucleilike_s2_legacy.pth"};
static const char *const NETS[2] = {"cyto3like", "nucleilike"};

static const char *tmp_path(const char *name)
{
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", test_tmp_dir(), name);
    return buf;
}

static cp_array *npy_at(const char *path, cp_dtype t)
{
    cp_array *a = NULL;
    CHECK_OK(cp_npy_read(path, &a));
    if (a && a->dtype != t) {
        CHECKF(0, "%s: dtype %d", path, (int)a->dtype);
        cp_array_free(a);
        a = NULL;
    }
    return a;
}

/* ---- size files: np.save's bytes ---------------------------------------- */

static void test_save_golden(void)
{
    for (int w = 0; w < 2; w++) {
        char rel[512];
        snprintf(rel, sizeof rel, "golden/size/models/%s_size.npy", WEIGHTS[w]);
        size_t ng = 0;
        char *gold = test_slurp(shared_path(rel), &ng);
        cp_size_model *sm = NULL, *back = NULL;
        CHECK_OK(cp_size_model_load(shared_path(rel), &sm));
        if (!gold || !sm) {
            free(gold);
            cp_size_model_free(sm);
            continue;
        }
        const char *out = tmp_path("saved_size.npy");
        CHECK_OK(cp_size_model_save(sm, out));
        size_t n = 0;
        char *mine = test_slurp(out, &n);
        CHECKF(mine && n == ng && !memcmp(mine, gold, n), "%s: saved file differs from Cellpose's (%zu vs %zu bytes)",
               WEIGHTS[w], n, ng);
        CHECK_OK(cp_size_model_load(out, &back));
        CHECK(back && back->nstyle == sm->nstyle && !memcmp(back->A, sm->A, 256 * sizeof *sm->A) &&
              !memcmp(back->smean, sm->smean, 256 * sizeof *sm->smean) && back->diam_mean == sm->diam_mean &&
              !memcmp(&back->ymean, &sm->ymean, 4));
        unlink(out);
        free(mine);
        free(gold);
        cp_size_model_free(sm);
        cp_size_model_free(back);
    }
    /* a short style vector (tiny networks): SHORT_BINBYTES, read back */
    double A[3] = {1.5, -2.25, 0.125};
    float sme[3] = {0.25f, -0.5f, 1.0f};
    cp_size_model small = {3, A, sme, 17.0, -0.375f}, *back = NULL;
    const char *out = tmp_path("small_size.npy");
    CHECK_OK(cp_size_model_save(&small, out));
    CHECK_OK(cp_size_model_load(out, &back));
    CHECK(back && back->nstyle == 3 && !memcmp(back->A, A, sizeof A) && !memcmp(back->smean, sme, sizeof sme) &&
          back->diam_mean == 17.0 && back->ymean == -0.375f);
    cp_size_model_free(back);
    unlink(out);
    cp_size_model bad = {0, A, sme, 17.0, 0};
    CHECK(cp_size_model_save(&bad, out) == CP_EINVAL && access(out, F_OK) != 0);
    CHECK(cp_size_model_save(&small, "/nonexistent/dir/x_size.npy") == CP_EIO);
}

/* ---- the regression on Cellpose's own training styles ------------------- */

static void test_fit_golden(void)
{
    for (int w = 0; w < 2; w++) {
        char rel[512], rel2[512];
        snprintf(rel, sizeof rel, "golden/size/train/%s/styles.npy.gz", NETS[w]);
        snprintf(rel2, sizeof rel2, "golden/size/train/%s/y.npy", NETS[w]);
        cp_array *S = npy_at(shared_path(rel), CP_F32);
        cp_array *Y = npy_at(shared_path(rel2), CP_F32);
        snprintf(rel, sizeof rel, "golden/size/models/%s_size.npy", WEIGHTS[w]);
        cp_size_model *gold = NULL, *sm = NULL;
        CHECK_OK(cp_size_model_load(shared_path(rel), &gold));
        if (S && Y && gold && S->ndim == 2 && S->shape[1] == 256 && Y->shape[0] == S->shape[0]) {
            CHECK_OK(cp_size_model_fit(S->data, Y->data, S->shape[0], 256, 1.0, gold->diam_mean, &sm));
            if (sm) {
                /* the means are float32 as numpy computes them: bit for bit */
                CHECKF(!memcmp(sm->smean, gold->smean, 256 * 4), "%s: smean differs", NETS[w]);
                CHECKF(!memcmp(&sm->ymean, &gold->ymean, 4), "%s: ymean %.9g vs %.9g", NETS[w], (double)sm->ymean,
                       (double)gold->ymean);
                CHECK(sm->diam_mean == gold->diam_mean && sm->nstyle == 256);
                /* Cellpose forms X X^T and X y in float32 (BLAS); ours are
                 * double: A agrees to the float32 rounding of those sums */
                double dmax = 0, amax = 0;
                for (int k = 0; k < 256; k++) {
                    dmax = fmax(dmax, fabs(sm->A[k] - gold->A[k]));
                    amax = fmax(amax, fabs(gold->A[k]));
                }
                CHECKF(dmax <= 1e-5 * amax, "%s: A differs by %.3g (max |A| %.3g)", NETS[w], dmax, amax);
                printf("  %s: max |A - A_cellpose| = %.3g (max |A| %.3g)\n", NETS[w], dmax, amax);
            }
        }
        cp_size_model_free(sm);
        cp_size_model_free(gold);
        cp_array_free(S);
        cp_array_free(Y);
    }
}

/* ---- the regression against numpy on synthetic styles ------------------- */

/* Deterministic pseudo-styles: a few latent factors (so X X^T is far from
 * diagonal) plus noise, and targets that depend on them. */
static void synth(size_t n, int k, uint64_t seed, float *S, float *y)
{
    cp_xoshiro r;
    cp_xoshiro_seed(&r, seed);
    for (size_t i = 0; i < n; i++) {
        double f[3];
        for (int j = 0; j < 3; j++)
            f[j] = cp_xoshiro_uniform(&r) - 0.5;
        for (int c = 0; c < k; c++)
            S[i * k + c] = (float)(f[c % 3] * (1 + c % 5) + 0.3 * (cp_xoshiro_uniform(&r) - 0.5) + 0.01 * c);
        y[i] = (float)(0.8 * f[0] - 0.4 * f[1] + 0.1 * (cp_xoshiro_uniform(&r) - 0.5) + 0.2);
    }
}

static int write_f32(const char *path, int ndim, const size_t *shape, const float *v)
{
    cp_array *a = NULL;
    int rc = cp_array_create(&a, ndim, shape, CP_F32);
    if (!rc) {
        memcpy(a->data, v, cp_array_count(a) * sizeof *v);
        rc = cp_npy_write(path, a);
    }
    cp_array_free(a);
    return rc;
}

static void fit_vs_numpy(size_t n, int k, double l2, uint64_t seed)
{
    float *S = malloc(n * (size_t)k * sizeof *S), *y = malloc(n * sizeof *y);
    if (!S || !y) {
        CHECK(0);
        free(S);
        free(y);
        return;
    }
    synth(n, k, seed, S, y);
    const char *dir = tmp_path("fitref");
    mkdir(dir, 0777);
    char sp[4200], yp[4200], cmd[20000], p[4200];
    snprintf(sp, sizeof sp, "%s/styles.npy", dir);
    snprintf(yp, sizeof yp, "%s/y.npy", dir);
    CHECK_OK(write_f32(sp, 2, (size_t[]){n, (size_t)k}, S));
    CHECK_OK(write_f32(yp, 1, (size_t[]){n}, y));
    const char *root = getenv("CP_ROOT");
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s/tests/unit/size_fit_ref.py' '%s' '%s' %.17g '%s'",
             root && *root ? root : ".", sp, yp, l2, dir);
    CHECKF(system(cmd) == 0, "%s", cmd);
    cp_size_model *sm = NULL;
    CHECK_OK(cp_size_model_fit(S, y, n, k, l2, 30.0, &sm));
    snprintf(p, sizeof p, "%s/A.npy", dir);
    cp_array *A = npy_at(p, CP_F64);
    snprintf(p, sizeof p, "%s/smean.npy", dir);
    cp_array *sme = npy_at(p, CP_F32);
    snprintf(p, sizeof p, "%s/ymean.npy", dir);
    cp_array *ym = npy_at(p, CP_F32);
    if (sm && A && sme && ym && cp_array_count(A) == (size_t)k) {
        CHECKF(!memcmp(sm->smean, sme->data, (size_t)k * 4), "n %zu k %d: smean differs from numpy's", n, k);
        CHECKF(!memcmp(&sm->ymean, ym->data, 4), "n %zu k %d: ymean %.9g vs numpy %.9g", n, k, (double)sm->ymean,
               (double)*(float *)ym->data);
        const double *a = A->data;
        double dmax = 0, amax = 0;
        for (int c = 0; c < k; c++) {
            dmax = fmax(dmax, fabs(sm->A[c] - a[c]));
            amax = fmax(amax, fabs(a[c]));
        }
        CHECKF(amax > 0.01 && dmax <= 1e-10 * amax, "n %zu k %d l2 %g: A differs from numpy by %.3g (max %.3g)", n,
               k, l2, dmax, amax);
    }
    cp_size_model_free(sm);
    cp_array_free(A);
    cp_array_free(sme);
    cp_array_free(ym);
    free(S);
    free(y);
}

static void test_fit_numpy(void)
{
    fit_vs_numpy(80, 256, 1.0, 1);    /* Cellpose's shape: 10 epochs x 8 images, fewer samples than styles */
    fit_vs_numpy(300, 32, 1.0, 2);    /* numpy's pairwise sum beyond 128 terms */
    fit_vs_numpy(7, 5, 0.25, 3);      /* the short sum; another l2 */
    fit_vs_numpy(1000, 64, 0.0, 4);   /* no regularisation: plain least squares */
}

/* ---- input errors ------------------------------------------------------- */

static void test_fit_errors(void)
{
    float S[6 * 4] = {0}, y[6] = {0};
    cp_size_model *sm = (cp_size_model *)1;
    CHECK(cp_size_model_fit(S, y, 0, 4, 1.0, 30, &sm) == CP_EINVAL && !sm);
    CHECK(cp_size_model_fit(S, y, 6, 0, 1.0, 30, &sm) == CP_EINVAL && !sm);
    CHECK(cp_size_model_fit(S, y, 6, 4, -1.0, 30, &sm) == CP_EINVAL && !sm);
    CHECK(cp_size_model_fit(S, y, 6, 4, 1.0, 0, &sm) == CP_EINVAL && !sm);
    CHECK(cp_size_model_fit(S, y, 6, 4, NAN, 30, &sm) == CP_EINVAL && !sm);
    /* identical styles and no regularisation: singular, refused in one line */
    CHECK(cp_size_model_fit(S, y, 6, 4, 0.0, 30, &sm) == CP_EINVAL && !sm && strstr(cp_errmsg(), "singular"));
    /* with l2 the same styles give A = 0: the geometric mean diameter */
    for (int i = 0; i < 6; i++)
        y[i] = (float)log(2.0);
    CHECK_OK(cp_size_model_fit(S, y, 6, 4, 1.0, 30, &sm));
    if (sm) {
        CHECK(sm->A[0] == 0 && sm->A[3] == 0);
        CHECK_NEAR(cp_size_model_predict(sm, S), 60.0, 1e-5);
        cp_size_model_free(sm);
    }
}

int main(void)
{
    test_save_golden();
    test_fit_golden();
    test_fit_numpy();
    test_fit_errors();
    return test_result();
}
