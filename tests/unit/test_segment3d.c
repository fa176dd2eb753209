/* 3D segmentation against Cellpose's own 3D runs (golden/3d/eval3d): the
 * network stage pass by pass (norm3D input, resized input, each orientation's
 * run_net output, the summed and resized flows), flow3D_smooth, and the masks. */
#include <math.h>

#include "cellpose/cellpose.h"
#include "test.h"

static cp_array *golden(const char *run, const char *file)
{
    char p[512];
    snprintf(p, sizeof p, "golden/3d/eval3d/%s/%s", run, file);
    cp_array *a = NULL;
    if (cp_npy_read(shared_path(p), &a) != CP_OK)
        return NULL;
    return a;
}

static cp_model *load(const char *weights)
{
    char p[256];
    snprintf(p, sizeof p, "golden/weights/%s", weights);
    cp_model *m = NULL;
    cp_model_opts mo = {CP_DEVICE_CPU, 2};
    CHECK_OK(cp_model_load(shared_path(p), &mo, &m));
    return m;
}

static cp_image *read_input(const char *name)
{
    char p[256];
    snprintf(p, sizeof p, "golden/3d/inputs/%s", name);
    cp_image *img = NULL;
    CHECK_OK(cp_image_read(shared_path(p), NULL, &img));
    return img;
}

/* max |a - b| over n values, a read at a[ia(i)], and max |b|. */
typedef struct cmp {
    double maxdiff, maxabs;
    size_t n;
} cmp;

static void cmp_add(cmp *c, double mine, double want)
{
    double d = fabs(mine - want);
    if (!(d <= c->maxdiff))
        c->maxdiff = isnan(d) ? INFINITY : d;
    if (fabs(want) > c->maxabs)
        c->maxabs = fabs(want);
    c->n++;
}

/* The README's tolerance for one pass (k = 1) or a sum of k passes. */
static void cmp_check(const cmp *c, int k, const char *what)
{
    double tol = k * fmin(1e-4, 1e-5 * c->maxabs);
    CHECKF(c->n > 0 && c->maxdiff <= tol, "%s: max |diff| %.3g over %zu values (tolerance %.3g)", what,
           c->maxdiff, c->n, tol);
}

/* golden (Z,Y,X,C) against a volume C x Z x Y x X: exact. */
static void check_volume_exact(const cp_volume *v, const cp_array *g, const char *what)
{
    CHECKF(v && g && g->ndim == 4 && g->shape[0] == (size_t)v->depth && g->shape[1] == (size_t)v->height &&
               g->shape[2] == (size_t)v->width && g->shape[3] == (size_t)v->channels,
           "%s: shape", what);
    if (!v || !g || g->ndim != 4)
        return;
    const float *w = g->data;
    size_t vn = (size_t)v->depth * v->height * v->width, diff = 0;
    for (size_t i = 0; i < vn; i++)
        for (int c = 0; c < v->channels; c++)
            diff += memcmp(&v->data[c * vn + i], &w[i * v->channels + c], 4) != 0;
    CHECKF(diff == 0, "%s: %zu values differ from Cellpose's", what, diff);
}

/* The orient_*_planes file of pass k: planes idx[] of the (n, h, w, 3) pass. */
static void check_pass(const cp_eval3d_debug *d, int k, const char *run, const char *file, const int idx[4])
{
    cp_array *g = golden(run, file);
    int h = d->pass_h[k], w = d->pass_w[k];
    CHECKF(g && g->ndim == 4 && g->shape[0] == 4 && g->shape[1] == (size_t)h && g->shape[2] == (size_t)w &&
               g->shape[3] == 3 && d->pass[k],
           "%s %s: shape", run, file);
    if (g && g->ndim == 4 && g->shape[1] == (size_t)h && g->shape[2] == (size_t)w && d->pass[k]) {
        const float *want = g->data;
        size_t hw = (size_t)h * w;
        cmp c = {0};
        for (int j = 0; j < 4; j++) {
            const float *mine = d->pass[k] + (size_t)idx[j] * 3 * hw;
            for (size_t i = 0; i < hw; i++)
                for (int ch = 0; ch < 3; ch++)
                    cmp_add(&c, mine[ch * hw + i], want[((size_t)j * hw + i) * 3 + ch]);
        }
        char what[256];
        snprintf(what, sizeof what, "%s %s", run, file);
        cmp_check(&c, 1, what);
    }
    cp_array_free(g);
}

/* dP (3,Z,Y,X) and cellprob (Z,Y,X) against channels 0-2 and 3 of flows. */
static void check_flows(const cp_volume *f, const char *run, const char *cellprob_run, int k_dp)
{
    cp_array *dp = golden(run, "dP.npy"), *cpb = golden(cellprob_run, "cellprob.npy");
    size_t vn = (size_t)f->depth * f->height * f->width;
    CHECKF(dp && dp->ndim == 4 && dp->shape[0] == 3 && cp_array_count(dp) == 3 * vn, "%s dP: shape", run);
    CHECKF(cpb && cp_array_count(cpb) == vn, "%s cellprob: shape", run);
    char what[256];
    if (dp && cp_array_count(dp) == 3 * vn) {
        const float *w = dp->data;
        for (int c = 0; c < 3; c++) {
            cmp m = {0};
            for (size_t i = 0; i < vn; i++)
                cmp_add(&m, f->data[c * vn + i], w[c * vn + i]);
            snprintf(what, sizeof what, "%s dP[%d]", run, c);
            cmp_check(&m, k_dp, what);
        }
    }
    if (cpb && cp_array_count(cpb) == vn) {
        cmp m = {0};
        const float *w = cpb->data;
        for (size_t i = 0; i < vn; i++)
            cmp_add(&m, f->data[3 * vn + i], w[i]);
        snprintf(what, sizeof what, "%s cellprob", run);
        cmp_check(&m, 3, what);
    }
    cp_array_free(dp);
    cp_array_free(cpb);
}

static void test_network_runs(void)
{
    static const struct {
        const char *run, *input, *weights;
        double diameter, anisotropy;
        int p0[4], p12[4];
    } runs[] = {
        {"v3_do3D_a1_d17", "synth3d_s5.tif", "cpnet_nucleilike_s2_legacy.pth", 17, 1, {0, 8, 16, 31}, {0, 20, 40, 79}},
        {"v3_do3D_a2_d20", "synth3d_s5_z2.tif", "cpnet_nucleilike_s2_legacy.pth", 20, 2, {0, 6, 13, 26},
         {0, 17, 34, 67}},
        {"v4_do3D_dnone", "synth3d_s5.tif", "cpsam_tiny_s3.pth", 0, 1, {0, 8, 16, 31}, {0, 20, 40, 79}},
    };
    for (size_t r = 0; r < sizeof runs / sizeof *runs; r++) {
        const char *run = runs[r].run;
        double t0 = cp_seconds();
        cp_model *m = load(runs[r].weights);
        cp_image *img = read_input(runs[r].input);
        if (!m || !img)
            return;
        cp_eval_params ep;
        cp_eval_params_init(&ep);
        ep.diameter = runs[r].diameter;
        ep.anisotropy = runs[r].anisotropy;
        cp_eval3d_debug d = {.keep_stages = 1};
        cp_volume *f = NULL;
        CHECK_OK(cp_eval_flows3d(m, img, &ep, &f, &d));
        if (f) {
            cp_array *g = golden(run, "net_in.npy.gz");
            check_volume_exact(d.net_in, g, run);
            cp_array_free(g);
            if (d.net_in_resized) {
                g = golden(run, "net_in_resized.npy.gz");
                check_volume_exact(d.net_in_resized, g, run);
                cp_array_free(g);
            }
            check_pass(&d, 0, run, "orient_p0_YX_planes.npy", runs[r].p0);
            check_pass(&d, 1, run, "orient_p1_ZX_planes.npy", runs[r].p12);
            check_pass(&d, 2, run, "orient_p2_ZY_planes.npy", runs[r].p12);
            check_flows(f, run, run, 2);
        }
        cp_eval3d_debug_free(&d);
        cp_volume_free(f);
        cp_image_free(img);
        cp_model_free(m);
        printf("  %s: network %.2f s\n", run, cp_seconds() - t0);
    }
}

int main(void)
{
    test_network_runs();
    return test_result();
}
