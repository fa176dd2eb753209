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
    cp_model_opts mo = {CP_DEVICE_CPU, 2, CP_PRECISION_FP32};
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

static uint32_t *golden_labels(const char *run, const char *file, size_t n)
{
    cp_array *a = golden(run, file);
    uint32_t *lab = NULL;
    CHECKF(a && a->dtype == CP_U32 && cp_array_count(a) == n, "%s %s: uint32 labels of %zu voxels", run, file, n);
    if (a && a->dtype == CP_U32 && cp_array_count(a) == n) {
        lab = a->data;
        a->data = NULL;
    }
    cp_array_free(a);
    return lab;
}

/* The whole v3 network stage with a resize (diameter 20 of diam_mean 17,
 * anisotropy 2: network at 27 x 68 x 68), stage by stage; then the masks
 * from these flows. */
static void test_network_resized(void)
{
    const char *run = "v3_do3D_a2_d20";
    double t0 = cp_seconds();
    cp_model *m = load("cpnet_nucleilike_s2_legacy.pth");
    cp_image *img = read_input("synth3d_s5_z2.tif");
    if (!m || !img)
        return;
    cp_seg_params sp;
    cp_seg_params_default(&sp);
    sp.do_3d = 1;
    sp.diameter = 20;
    sp.anisotropy = 2;
    cp_eval_params ep;
    cp_eval_params_init(&ep);
    ep.diameter = 20;
    ep.anisotropy = 2;
    cp_eval3d_debug d = {.keep_stages = 1};
    cp_volume *f = NULL;
    CHECK_OK(cp_eval_flows3d(m, img, &ep, &f, &d));
    if (f) {
        cp_array *g = golden(run, "net_in.npy.gz");
        check_volume_exact(d.net_in, g, "net_in");
        cp_array_free(g);
        g = golden(run, "net_in_resized.npy.gz");
        CHECK(d.net_in_resized && d.net_in_resized->depth == 27 && d.net_in_resized->height == 68);
        check_volume_exact(d.net_in_resized, g, "net_in_resized");
        cp_array_free(g);
        static const int p0[4] = {0, 6, 13, 26}, p12[4] = {0, 17, 34, 67};
        check_pass(&d, 0, run, "orient_p0_YX_planes.npy", p0);
        check_pass(&d, 1, run, "orient_p1_ZX_planes.npy", p12);
        check_pass(&d, 2, run, "orient_p2_ZY_planes.npy", p12);
        check_flows(f, run, run, 2);

        /* masks from our flows: Cellpose's, but for voxels whose Euler path
         * the last float32 bits of the network can move */
        cp_seg_result r;
        size_t vn = (size_t)f->depth * f->height * f->width;
        CHECK_OK(cp_segment3d_from_flows(f->data, 4, f->depth, f->height, f->width, CP_ARCH_CPNET, 17, &sp, &r));
        uint32_t *want = golden_labels(run, "masks.npy.gz", vn);
        if (want && r.masks) {
            size_t diff = test_count_diff_u32(want, r.masks, vn);
            CHECKF(diff * 1000 <= vn, "%s: %zu of %zu voxels differ from Cellpose's masks", run, diff, vn);
            CHECKF(r.niter == 235, "%s: niter %d, Cellpose used 235", run, r.niter);
            printf("  %s: masks from our flows: %u cells, %zu voxels differ from Cellpose's\n", run, r.ncells, diff);
        }
        free(want);
        cp_seg_result_free(&r);
    }
    cp_eval3d_debug_free(&d);
    cp_volume_free(f);
    cp_image_free(img);
    cp_model_free(m);
    printf("  %s: %.2f s\n", run, cp_seconds() - t0);
}

/* Cellpose-SAM's passes on the orientation planes only (the whole v4 volume
 * is 192 planes of 256 x 256 tiles): each plane of golden net_in through
 * cp_run_net as run_3D cuts it. */
static void test_v4_passes(void)
{
    const char *run = "v4_do3D_dnone";
    double t0 = cp_seconds();
    cp_model *m = load("cpsam_tiny_s3.pth");
    cp_array *g = golden(run, "net_in.npy.gz");
    CHECK(g && g->ndim == 4 && g->shape[0] == 32 && g->shape[1] == 80 && g->shape[2] == 80 && g->shape[3] == 3);
    if (!m || !g || g->ndim != 4 || g->shape[3] != 3) {
        cp_array_free(g);
        cp_model_free(m);
        return;
    }
    cp_net_desc net;
    cp_model_net_desc(m, &net);
    const float *x = g->data; /* (Z, Y, X, 3) */
    const int Z = 32, Y = 80, X = 80;
    static const int idx[3][4] = {{0, 8, 16, 31}, {0, 20, 40, 79}, {0, 20, 40, 79}};
    static const char *files[3] = {"orient_p0_YX_planes.npy", "orient_p1_ZX_planes.npy", "orient_p2_ZY_planes.npy"};
    const int h[3] = {Y, Z, Z}, w[3] = {X, X, Y};
    for (int k = 0; k < 3; k++) {
        size_t hw = (size_t)h[k] * w[k];
        float *in = malloc(4 * 3 * hw * sizeof(float)), *out = malloc(4 * 3 * hw * sizeof(float));
        for (int j = 0; j < 4; j++)
            for (int a = 0; a < h[k]; a++)
                for (int b = 0; b < w[k]; b++) {
                    int zz = k == 0 ? idx[k][j] : a, yy = k == 0 ? a : k == 1 ? idx[k][j] : b,
                        xx = k == 2 ? idx[k][j] : b;
                    for (int c = 0; c < 3; c++)
                        in[((size_t)j * 3 + c) * hw + (size_t)a * w[k] + b] =
                            x[(((size_t)zz * Y + yy) * X + xx) * 3 + c];
                }
        CHECK_OK(cp_run_net(&net, in, 4, h[k], w[k], NULL, out));
        /* laid out as the debug pass of these 4 planes */
        cp_eval3d_debug d = {0};
        d.pass[k] = out;
        d.pass_h[k] = h[k];
        d.pass_w[k] = w[k];
        static const int ident[4] = {0, 1, 2, 3};
        check_pass(&d, k, run, files[k], ident);
        free(in);
        free(out);
    }
    cp_array_free(g);
    cp_model_free(m);
    printf("  %s passes: %.2f s\n", run, cp_seconds() - t0);
}

/* flow3D_smooth=1 is scipy's gaussian_filter(dP, [0, 1, 1, 1]) on v4's dP. */
static void test_smooth(void)
{
    cp_array *dp = golden("v4_do3D_dnone", "dP.npy"), *want = golden("v4_do3D_dnone_smooth1", "dP.npy");
    CHECK(dp && want && cp_array_count(dp) == 3 * 32 * 80 * 80 && cp_array_count(want) == cp_array_count(dp));
    if (!dp || !want || cp_array_count(dp) != cp_array_count(want)) {
        cp_array_free(dp);
        cp_array_free(want);
        return;
    }
    size_t vn = 32 * 80 * 80, diff = 0;
    const double sigma[3] = {1, 1, 1};
    float *d = dp->data;
    const float *w = want->data;
    for (int c = 0; c < 3; c++)
        CHECK_OK(cp_gaussian_filter3d(d + c * vn, 32, 80, 80, sigma));
    for (size_t i = 0; i < 3 * vn; i++)
        diff += d[i] != w[i];
    CHECKF(diff == 0, "flow3D_smooth: %zu of %zu values differ from scipy's", diff, 3 * vn);
    const double bad[3] = {-1, 0, 0};
    CHECK(cp_gaussian_filter3d(d, 32, 80, 80, bad) == CP_EINVAL);
    cp_array_free(dp);
    cp_array_free(want);
}

/* The golden flows of a run -> masks, against Cellpose's masks voxel for
 * voxel (and the same with 1 and 2 threads when `threads` is set). 3 flow
 * components: do_3D, 2: stitch mode. */
static void check_masks_from_golden_flows(const char *run, const char *dp_run, const char *cp_run, cp_arch arch,
                                          const cp_seg_params *sp, int threads)
{
    cp_array *dp = golden(dp_run, "dP.npy"), *cpb = golden(cp_run, "cellprob.npy");
    const size_t vn = 32 * 80 * 80;
    int nd = dp ? (int)dp->shape[0] : 0;
    CHECK(dp && cpb && (nd == 2 || nd == 3) && cp_array_count(dp) == (size_t)nd * vn && cp_array_count(cpb) == vn);
    if (!dp || !cpb || cp_array_count(dp) != (size_t)nd * vn || cp_array_count(cpb) != vn) {
        cp_array_free(dp);
        cp_array_free(cpb);
        return;
    }
    double t0 = cp_seconds();
    float *flows = malloc((size_t)(nd + 1) * vn * sizeof(float));
    memcpy(flows, dp->data, (size_t)nd * vn * sizeof(float));
    memcpy(flows + nd * vn, cpb->data, vn * sizeof(float));
    uint32_t *want = golden_labels(run, "masks.npy.gz", vn);
    cp_seg_result r[2] = {0};
    for (int t = 0; t < (threads ? 2 : 1); t++) {
        cp_seg_params p = *sp;
        p.threads = threads ? t + 1 : 0;
        CHECK_OK(cp_segment3d_from_flows(flows, nd + 1, 32, 80, 80, arch, 17, &p, &r[t]));
    }
    if (want && r[0].masks && (!threads || r[1].masks)) {
        size_t diff = test_count_diff_u32(want, r[0].masks, vn);
        CHECKF(diff == 0, "%s: %zu voxels differ from Cellpose's masks", run, diff);
        CHECKF(!threads || memcmp(r[0].masks, r[1].masks, vn * 4) == 0, "%s: 1 and 2 threads differ", run);
        uint32_t mx = 0;
        for (size_t i = 0; i < vn; i++)
            mx = want[i] > mx ? want[i] : mx;
        CHECKF(r[0].ncells == mx, "%s: %u cells, Cellpose %u", run, r[0].ncells, mx);
    }
    printf("  %s: masks from Cellpose's flows%s: %.2f s\n", run, threads ? " (1 and 2 threads)" : "",
           cp_seconds() - t0);
    cp_seg_result_free(&r[0]);
    cp_seg_result_free(&r[1]);
    free(want);
    free(flows);
    cp_array_free(dp);
    cp_array_free(cpb);
}

static void test_masks_from_golden_flows(void)
{
    double t0 = cp_seconds();
    cp_seg_params sp;
    cp_seg_params_default(&sp);
    sp.do_3d = 1;
    check_masks_from_golden_flows("v4_do3D_dnone", "v4_do3D_dnone", "v4_do3D_dnone", CP_ARCH_CPSAM, &sp, 1);
    check_masks_from_golden_flows("v4_do3D_dnone_smooth1", "v4_do3D_dnone_smooth1", "v4_do3D_dnone", CP_ARCH_CPSAM,
                                  &sp, 0);
    sp.diameter = 17;
    check_masks_from_golden_flows("v3_do3D_a1_d17", "v3_do3D_a1_d17", "v3_do3D_a1_d17", CP_ARCH_CPNET, &sp, 0);
    sp.do_3d = 0;
    sp.stitch_threshold = 0.5;
    sp.flow_threshold = 1.0;
    check_masks_from_golden_flows("v3_stitch_d17", "v3_stitch_d17", "v3_stitch_d17", CP_ARCH_CPNET, &sp, 1);
    printf("  masks from golden flows: %.2f s\n", cp_seconds() - t0);
}

static void test_errors(void)
{
    cp_seg_params sp;
    cp_seg_params_default(&sp);
    float flows[3 * 2 * 4 * 4] = {0};
    cp_seg_result r;
    CHECK(cp_segment3d_from_flows(flows, 3, 2, 4, 4, CP_ARCH_CPNET, 30, &sp, &r) == CP_EINVAL);
    CHECK(strstr(cp_errmsg(), "stitch threshold") != NULL);
    CHECK(cp_segment3d_from_flows(flows, 5, 2, 4, 4, CP_ARCH_CPNET, 30, &sp, &r) == CP_EINVAL);
    cp_image *v;
    const char *in = shared_path("golden/3d/inputs/synth3d_s5_z2.tif");
    CHECK(cp_image_read_volume(in, 3, CP_AXIS_AUTO, &v) == CP_EINVAL);
    CHECK(strstr(cp_errmsg(), "(16, 80, 80)") != NULL);
    CHECK(cp_image_read_volume(in, 0, 1, &v) == CP_EINVAL);
    CHECK_OK(cp_image_read_volume(in, -3, CP_AXIS_AUTO, &v));
    CHECK(v && v->planes == 16 && v->height == 80 && v->width == 80 && v->channels == 1);
    cp_image *t;
    /* Z on the last axis of the same array: the old planes become rows */
    CHECK_OK(cp_image_read_volume(in, 2, CP_AXIS_AUTO, &t));
    CHECK(t && v && t->planes == 80 && t->height == 16 && t->width == 80 &&
          cp_image_get(t, 5, 3, 7, 0) == cp_image_get(v, 3, 7, 5, 0));
    cp_image_free(t);
    cp_image_free(v);
}

int main(void)
{
    test_errors();
    test_smooth();
    test_masks_from_golden_flows();
    test_v4_passes();
    test_network_resized();
    return test_result();
}
