/* bfloat16 inference (cp_model_opts.precision, CELLPOSE_PRECISION): the
 * parsing of the precision names; where this CPU runs bf16, the forward
 * passes of the golden small models against Cellpose's float32 tiles, masks
 * against the float32 masks and the same bytes for any thread count; the
 * fallback to float32 where it cannot (forced here in a child process with
 * oneDNN limited to AVX2, and on such a CPU in this process too). */
#include <math.h>
#include <spawn.h>
#include <stdint.h>
#include <sys/wait.h>

#include "cellpose/cellpose.h"
#include "test.h"

/* bf16 keeps 8 significant bits: each rounding of a weight or activation
 * errs by up to 2^-9 of its value. */
#define BF16_EPS (1.0 / 512)

static cp_model *load_path(const char *path, int threads, cp_precision p)
{
    cp_model_opts o = {CP_DEVICE_CPU, threads, p};
    cp_model *m = NULL;
    CHECK_OK(cp_model_load(path, &o, &m));
    return m;
}

static cp_model *load(const char *weights, int threads, cp_precision p)
{
    char rel[256];
    snprintf(rel, sizeof rel, "golden/weights/%s", weights);
    return load_path(shared_path(rel), threads, p);
}

static cp_array *golden(const char *run, const char *file)
{
    char rel[512];
    snprintf(rel, sizeof rel, "golden/net/%s/%s", run, file);
    cp_array *a = NULL;
    CHECK_OK(cp_npy_read(shared_path(rel), &a));
    CHECK(!a || a->dtype == CP_F32);
    return a;
}

/* bf16 output vs float32 reference, in units u = 2^-9 (one rounding)
 * relative to the output's scale max|ref|. Measured here (AMX): max|d| 7 u
 * (cpsam tiny) and 32 u (CPnet, 10 layers deep, random weights amplify the
 * error), mean|d| 1.1 u and 3.5 u; the bounds are twice the worse network:
 * max 64 u, mean 8 u. The error must not be zero either: a float32 pass
 * would be ~1e-4 u (mean|d| >= 0.1 u of mean|ref| shows bf16 really ran). */
static void compare_bf16(const char *what, const float *got, const float *ref, size_t n)
{
    double maxd = 0, sumd = 0, maxx = 0, sumx = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        maxd = d > maxd || d != d ? d : maxd;
        sumd += d;
        maxx = fmax(maxx, fabs(ref[i]));
        sumx += fabs(ref[i]);
    }
    double meand = sumd / (double)n, meanx = sumx / (double)n;
    printf("%s: bf16 vs fp32: max|d| %.4g mean|d| %.4g (max|x| %.4g mean|x| %.4g; "
           "max|d|/max|x| %.4f = %.1f roundings)\n",
           what, maxd, meand, maxx, meanx, maxd / maxx, maxd / maxx / BF16_EPS);
    CHECKF(maxd <= 64 * BF16_EPS * maxx && meand <= 8 * BF16_EPS * maxx, "%s: max|d| %g mean|d| %g, max|x| %g", what, maxd,
           meand, maxx);
    CHECKF(meand >= 0.1 * BF16_EPS * meanx, "%s: mean|d| %g: the network did not run in bf16", what, meand);
}

/* Cellpose's float32 tiles (golden/net) through the bf16 network. */
static void test_tiles(const char *run, const char *in_file, const char *out_file, const char *weights)
{
    cp_model *m = load(weights, 1, CP_PRECISION_BF16);
    cp_array *in = golden(run, in_file), *ref = golden(run, out_file);
    if (m && in && ref) {
        const cp_model_info *info = cp_model_get_info(m);
        /* tiles_in (n, C, b, b) / tiles_out (n, 3, b, b), or one padded image
         * (C, b, b) whose net_out (b', b', 3) is the tile cropped */
        int tiled = in->ndim == 4;
        int b = (int)in->shape[in->ndim - 1];
        size_t nout = (size_t)info->nout * b * b;
        float *out = malloc(nout * sizeof *out);
        CHECK_OK(cp_model_forward(m, in->data, 1, b, b, out, NULL));
        if (tiled) {
            compare_bf16(run, out, ref->data, nout);
        } else {
            size_t c = ref->shape[0], off = ((size_t)b - c) / 2;
            float *crop = malloc(c * c * 3 * sizeof *crop);
            for (size_t y = 0; y < c; y++)
                for (size_t x = 0; x < c; x++)
                    for (size_t k = 0; k < 3; k++)
                        crop[(y * c + x) * 3 + k] = out[(k * b + y + off) * b + x + off];
            compare_bf16(run, crop, ref->data, c * c * 3);
            free(crop);
        }
        free(out);
    }
    cp_array_free(in);
    cp_array_free(ref);
    cp_model_free(m);
}

static uint32_t *read_labels(const char *rel)
{
    cp_image *img;
    uint32_t *lab = NULL;
    CHECK_OK(cp_image_read(shared_path(rel), NULL, &img));
    if (img && cp_image_labels_u32(img, rel, &lab) != CP_OK)
        lab = NULL;
    cp_image_free(img);
    return lab;
}

/* Masks need trained weights (the golden ones are random and find no
 * cells): the built-in nuclei model on the DSB2018 image, float32 vs bf16,
 * the share of float32 cells matched at IoU 0.5 and their mean IoU, and
 * AP@0.5 of both against the ground truth. */
static void test_masks(const char *image, const char *truth)
{
    cp_image *img = NULL;
    cp_model_ref ref = {0};
    CHECK_OK(cp_image_read(shared_path(image), NULL, &img));
    CHECK_OK(cp_model_builtin(&ref));
    cp_seg_result r[2];
    int ok = img && ref.path;
    for (int k = 0; ok && k < 2; k++) {
        cp_model *m = load_path(ref.path, 2, k ? CP_PRECISION_BF16 : CP_PRECISION_FP32);
        cp_seg_params sp;
        cp_seg_params_default(&sp);
        ok = m && cp_segment(m, img, &sp, &r[k]) == CP_OK;
        cp_model_free(m);
    }
    cp_model_ref_free(&ref);
    CHECKF(ok, "%s: segmentation failed: %s", image, cp_errmsg());
    if (!ok) {
        cp_image_free(img);
        return;
    }
    cp_match_result mr;
    CHECK_OK(cp_match(r[0].masks, r[1].masks, img->height, img->width, NULL, &mr));
    double matched = (double)mr.tp[0] / (double)mr.n_true;
    printf("%s (built-in model): fp32 %lld cells, bf16 %lld; %.1f%% of fp32 cells matched at IoU 0.5, mean IoU %.4f\n",
           image, (long long)mr.n_true, (long long)mr.n_pred, 100 * matched, mr.mean_iou[0]);
    /* measured: 107 of 107 cells matched, mean IoU 0.9985 */
    CHECKF(matched >= 0.97 && mr.mean_iou[0] >= 0.98, "%s: %.3f matched, IoU %.4f", image, matched,
           mr.mean_iou[0]);
    if (truth) {
        uint32_t *gt = read_labels(truth);
        double ap[2] = {0, 0};
        for (int k = 0; gt && k < 2; k++) {
            cp_match_result g;
            CHECK_OK(cp_match(gt, r[k].masks, img->height, img->width, NULL, &g));
            ap[k] = g.ap[0];
        }
        printf("%s: AP@0.5 vs ground truth: fp32 %.4f, bf16 %.4f\n", image, ap[0], ap[1]);
        CHECKF(fabs(ap[0] - ap[1]) <= 0.02, "%s: AP@0.5 fp32 %.4f bf16 %.4f", image, ap[0], ap[1]);
        free(gt);
    }
    cp_seg_result_free(&r[0]);
    cp_seg_result_free(&r[1]);
    cp_image_free(img);
}

/* The same bytes with 1 and 2 threads (three tiles: one thread does two). */
static void test_threads(const char *weights, int tile)
{
    const int n = 3;
    float *out[2] = {NULL, NULL}, *style[2] = {NULL, NULL}, *in = NULL;
    size_t nout = 0, nstyle = 0;
    const char *ran = "bf16";
    for (int k = 0; k < 2; k++) {
        cp_model *m = load(weights, k + 1, CP_PRECISION_BF16);
        if (!m)
            break;
        const cp_model_info *i = cp_model_get_info(m);
        ran = cp_precision_name(i->precision);
        size_t nin = (size_t)n * i->nchan * tile * tile;
        nout = (size_t)n * i->nout * tile * tile;
        nstyle = (size_t)n * i->nstyle;
        if (!in) {
            in = malloc(nin * sizeof *in);
            uint64_t r = 88172645463325252ULL;
            for (size_t j = 0; j < nin; j++) {
                r ^= r << 13, r ^= r >> 7, r ^= r << 17;
                in[j] = (float)(r >> 40) / (float)(1 << 24) * 4.0f - 1.0f;
            }
        }
        out[k] = malloc(nout * sizeof **out);
        style[k] = calloc(nstyle, sizeof **style);
        CHECK_OK(cp_model_forward(m, in, n, tile, tile, out[k], style[k]));
        cp_model_free(m);
    }
    if (out[1]) {
        CHECKF(!memcmp(out[0], out[1], nout * sizeof **out) && !memcmp(style[0], style[1], nstyle * sizeof **style),
               "%s: %s differs between 1 and 2 threads", weights, ran);
        printf("%s: bf16 requested, %s ran, 1 vs 2 threads: same bytes\n", weights, ran);
    }
    for (int k = 0; k < 2; k++) {
        free(out[k]);
        free(style[k]);
    }
    free(in);
}

static void test_parse(int bf16_runs)
{
    cp_precision p = CP_PRECISION_BF16;
    CHECK_OK(cp_precision_parse("fp32", "--precision", &p));
    CHECK(p == CP_PRECISION_FP32);
    CHECK_OK(cp_precision_parse("bf16", "--precision", &p));
    CHECK(p == CP_PRECISION_BF16);
    CHECK(!strcmp(cp_precision_name(CP_PRECISION_BF16), "bf16") && !strcmp(cp_precision_name(p), "bf16"));
    CHECK(!strcmp(cp_precision_name(CP_PRECISION_FP32), "fp32"));
    const char *bad[] = {"", "BF16", "fp16", "bf16 ", "float32", NULL};
    for (int i = 0; i < 6; i++) {
        CHECKF(cp_precision_parse(bad[i], "--precision", &p) == CP_EINVAL, "'%s' accepted", bad[i]);
        CHECKF(strstr(cp_errmsg(), "--precision") && !strchr(cp_errmsg(), '\n'), "%s", cp_errmsg());
    }

    /* CELLPOSE_PRECISION applies to a load without options */
    const char *w = shared_path("golden/weights/cpsam_tiny_s3.pth");
    char path[4096];
    snprintf(path, sizeof path, "%s", w);
    cp_model *m = NULL;
    setenv("CELLPOSE_PRECISION", "half", 1);
    CHECK(cp_model_load(path, NULL, &m) == CP_EINVAL && !m);
    CHECKF(strstr(cp_errmsg(), "CELLPOSE_PRECISION=half") && strstr(cp_errmsg(), path), "%s", cp_errmsg());
    /* options given: the variable is not consulted */
    cp_model_opts o = {CP_DEVICE_CPU, 1, CP_PRECISION_FP32};
    CHECK_OK(cp_model_load(path, &o, &m));
    cp_model_free(m);
    o.precision = (cp_precision)7;
    CHECK(cp_model_load(path, &o, &m) == CP_EINVAL && !m);

    /* CELLPOSE_PRECISION=bf16 gives the bytes of an explicit bf16 load */
    setenv("CELLPOSE_PRECISION", "bf16", 1);
    cp_model *env = NULL, *ref = NULL;
    CHECK_OK(cp_model_load(path, NULL, &env));
    unsetenv("CELLPOSE_PRECISION");
    ref = load("cpsam_tiny_s3.pth", 1, CP_PRECISION_BF16);
    cp_model *f32 = load("cpsam_tiny_s3.pth", 1, CP_PRECISION_FP32);
    if (env && ref && f32) {
        size_t nin = 3 * 256 * 256;
        float *in = malloc(nin * sizeof *in), *a = malloc(nin * sizeof *a), *b = malloc(nin * sizeof *b),
              *c = malloc(nin * sizeof *c);
        for (size_t j = 0; j < nin; j++)
            in[j] = (float)((j * 2654435761u) % 1000) / 500.0f - 1.0f;
        CHECK_OK(cp_model_forward(env, in, 1, 256, 256, a, NULL));
        CHECK_OK(cp_model_forward(ref, in, 1, 256, 256, b, NULL));
        CHECK_OK(cp_model_forward(f32, in, 1, 256, 256, c, NULL));
        CHECK(!memcmp(a, b, nin * sizeof *a));
        CHECK(!memcmp(a, c, nin * sizeof *a) == !bf16_runs);
        free(in);
        free(a);
        free(b);
        free(c);
    }
    cp_model_free(env);
    cp_model_free(ref);
    cp_model_free(f32);
}

/* The precision a bf16 load gets on this CPU (and, when it is fp32, the
 * info's reason in why). */
static cp_precision bf16_effective(char *why, size_t n)
{
    cp_model *m = load("cpsam_tiny_s3.pth", 1, CP_PRECISION_BF16);
    cp_precision p = CP_PRECISION_FP32;
    if (m) {
        const cp_model_info *i = cp_model_get_info(m);
        p = i->precision;
        CHECK(i->precision_requested == CP_PRECISION_BF16);
        CHECKF((p == CP_PRECISION_BF16) == !i->precision_note[0], "%s: note '%s'", cp_precision_name(p),
               i->precision_note);
        snprintf(why, n, "%s", i->precision_note);
    }
    cp_model_free(m);
    return p;
}

/* Where bf16 is unavailable: the load succeeds in fp32, the info names the
 * reason in one line, and the network gives the bytes of an fp32 load. */
static void test_fallback(const char *weights, int tile)
{
    cp_model *m[2] = {load(weights, 1, CP_PRECISION_FP32), load(weights, 1, CP_PRECISION_BF16)};
    if (m[0] && m[1]) {
        const cp_model_info *f = cp_model_get_info(m[0]), *b = cp_model_get_info(m[1]);
        CHECK(f->precision == CP_PRECISION_FP32 && f->precision_requested == CP_PRECISION_FP32 &&
              !f->precision_note[0]);
        CHECK(b->precision == CP_PRECISION_FP32 && b->precision_requested == CP_PRECISION_BF16);
        CHECKF(strstr(b->precision_note, "bf16 unavailable: this CPU cannot run bfloat16 convolutions "
                                         "(oneDNN needs AVX-512: ") &&
                   !strchr(b->precision_note, '\n') && !strstr(b->precision_note, weights),
               "note: '%s'", b->precision_note);
        size_t nin = (size_t)f->nchan * tile * tile, nout = (size_t)f->nout * tile * tile;
        float *in = malloc(nin * sizeof *in), *o[2] = {malloc(nout * sizeof(float)), malloc(nout * sizeof(float))};
        for (size_t j = 0; j < nin; j++)
            in[j] = (float)((j * 2654435761u) % 1000) / 500.0f - 1.0f;
        for (int k = 0; k < 2; k++)
            CHECK_OK(cp_model_forward(m[k], in, 1, tile, tile, o[k], NULL));
        CHECKF(!memcmp(o[0], o[1], nout * sizeof(float)), "%s: bf16 fallback differs from fp32", weights);
        printf("%s: bf16 requested, fp32 ran (%s): the bytes of fp32\n", weights, b->precision_note);
        free(in);
        free(o[0]);
        free(o[1]);
    }
    cp_model_free(m[0]);
    cp_model_free(m[1]);
}

/* oneDNN reads ONEDNN_MAX_CPU_ISA once per process: the forced fallback runs
 * in a child, this binary again with --fallback. */
static void test_forced_fallback(char **argv)
{
    extern char **environ;
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 2, sizeof *env), *args[] = {argv[0], "--fallback", NULL};
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "ONEDNN_MAX_CPU_ISA=", 19))
            env[k++] = environ[i];
    env[k] = "ONEDNN_MAX_CPU_ISA=AVX2";
    pid_t pid;
    int st = -1, rc = posix_spawn(&pid, "/proc/self/exe", NULL, NULL, args, env);
    CHECKF(rc == 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0,
           "fallback child: spawn %d, status %#x", rc, st);
    free(env);
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "--fallback")) {
        test_fallback("cpsam_tiny_s3.pth", 256);
        test_fallback("cpnet_nucleilike_s2_legacy.pth", 112);
        printf("fallback child (ONEDNN_MAX_CPU_ISA=AVX2): %d passed, %d failed\n", tst_pass, tst_fail);
        return tst_fail != 0;
    }
    fflush(stdout);
    test_forced_fallback(argv);
    /* the forward passes run inside libtorch, which the sanitizers do not
     * instrument: there only the parsing, one small thread check and the
     * fallback */
    const char *san = getenv("CP_SANITIZERS");
    int light = san && *san == '1';
    char why[256] = "";
    int bf16_runs = bf16_effective(why, sizeof why) == CP_PRECISION_BF16;
    test_parse(bf16_runs);
    test_threads("cpnet_nucleilike_s2_legacy.pth", 112);
    if (!bf16_runs) {
        test_fallback("cpsam_tiny_s3.pth", 256);
        printf("bf16 numerics skipped on this CPU: %s\n", why);
    } else if (light) {
        printf("bf16 numerics skipped under the sanitizers (they run inside libtorch)\n");
    } else {
        test_tiles("synth256_s0__cpsam_tiny__dnone", "tiles_in.npy.gz", "tiles_out.npy", "cpsam_tiny_s3.pth");
        test_tiles("synth256_s0__nucleilike__d30", "net_in_padded.npy.gz", "net_out.npy",
                   "cpnet_nucleilike_s2_legacy.pth");
        test_threads("cpsam_tiny_s3.pth", 256);
        test_masks("golden/inputs/stardist_img2d.tif", "golden/inputs/stardist_img2d_gt.tif");
    }
    return test_result();
}
