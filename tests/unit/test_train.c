/* Training: augmentation geometry, schedule, data pairing, a tiny network on
 * real DSB2018 images (loss goes down, deterministic, resumable, loadable). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <unistd.h>

#include "cellpose/cellpose.h"
#include "test.h"

static const char *const ids[] = {
    "00071198d059ba7f5914a526d124d28e6d010c92466da21d4a04cd5413362552",
    "003cee89357d9fe13516167fd67b609a164651b21934585648c740d2c3d86dc1",
    "0280fa8f60f6bcae0f97d93c28f60be194f9309ff610dc5845e60455b0f87c21",
};

static char dir[2048];

static void link_pairs(void)
{
    snprintf(dir, sizeof dir, "%s/train_pairs", test_tmp_dir());
    cp_mkdirs(dir);
    for (size_t i = 0; i < sizeof ids / sizeof *ids; i++) {
        char src[PATH_MAX + 256], dst[PATH_MAX + 256];
        for (int k = 0; k < 2; k++) {
            if (!realpath(shared_path("data/dsb2018"), src))
                return;
            size_t n = strlen(src);
            snprintf(src + n, sizeof src - n, "/%s%s", ids[i], k ? "_masks.tif" : "_img.png");
            snprintf(dst, sizeof dst, "%s/%s%s", dir, ids[i], k ? "_masks.tif" : "_img.png");
            unlink(dst);
            CHECKF(symlink(src, dst) == 0, "%s", dst);
        }
    }
}

/* A 90 degree rotation maps (dy, dx) = (a, b) to (b, -a) at the rotated
 * pixel, and the rotated flows are the flows of the rotated labels. */
static void test_rotation(void)
{
    enum { S = 32 };
    uint32_t lab[S * S] = {0};
    for (int y = 6; y < 20; y++)
        for (int x = 4; x < 26; x++)
            lab[y * S + x] = (x < 15) ? 1 : 2;
    double mu[2 * S * S];
    CHECK_OK(cp_masks_to_flows(lab, S, S, CP_DYN_V3, 1, mu));
    float x[S * S], lbl[3 * S * S], xo[S * S], lo[3 * S * S];
    for (int i = 0; i < S * S; i++) {
        x[i] = (float)lab[i];
        lbl[i] = lab[i] ? 1.0f : 0.0f;
        lbl[S * S + i] = (float)mu[i];
        lbl[2 * S * S + i] = (float)mu[S * S + i];
    }
    /* identity */
    cp_augment id = {0, 0.0, 1.0, 0, 0};
    cp_augment_apply(&id, x, 1, lbl, S, S, S, xo, lo);
    CHECK(memcmp(x, xo, sizeof x) == 0);
    CHECK(memcmp(lbl, lo, sizeof lbl) == 0);
    /* 90 degrees: output (yo, xo) reads input (y, x) = (S - xo, yo) */
    cp_augment r90 = {0, M_PI / 2, 1.0, 0, 0};
    cp_augment_apply(&r90, x, 1, lbl, S, S, S, xo, lo);
    int bad = 0, n = 0;
    for (int yo = 0; yo < S; yo++)
        for (int xx = 1; xx < S; xx++) {
            int ys = S - xx, xs = yo;
            size_t o = (size_t)yo * S + xx, i = (size_t)ys * S + xs;
            if (fabsf(xo[o] - x[i]) > 1e-4f)
                bad++;
            if (!lab[i])
                continue;
            n++;
            float dy = lbl[S * S + i], dx = lbl[2 * S * S + i];
            /* v' = R v with R = [[c, -s], [s, c]] in (x, y): dx' = -dy, dy' = dx */
            if (fabsf(lo[S * S + o] - dx) > 1e-5f || fabsf(lo[2 * S * S + o] + dy) > 1e-5f)
                bad++;
        }
    CHECKF(bad == 0 && n > 300, "%d mismatches over %d mask pixels", bad, n);
    /* the rotated flows agree with masks_to_flows of the rotated labels */
    uint32_t rl[S * S];
    for (int i = 0; i < S * S; i++)
        rl[i] = (uint32_t)lroundf(xo[i]);
    double rmu[2 * S * S];
    CHECK_OK(cp_masks_to_flows(rl, S, S, CP_DYN_V3, 1, rmu));
    double dot = 0;
    int m = 0;
    for (int i = 0; i < S * S; i++)
        if (rl[i]) {
            dot += rmu[i] * lo[S * S + i] + rmu[S * S + i] * lo[2 * S * S + i];
            m++;
        }
    CHECKF(dot / m > 0.8, "mean cosine %.3f between rotated flows and flows of rotated labels", dot / m);
    /* a mirror negates dx */
    cp_augment fl = {1, 0.0, 1.0, 0, 0};
    cp_augment_apply(&fl, x, 1, lbl, S, S, S, xo, lo);
    CHECK(lo[2 * S * S + 10 * S + 5] == -lbl[2 * S * S + 10 * S + (S - 1 - 5)]);
    CHECK(xo[10 * S + 5] == x[10 * S + S - 1 - 5]);
}

static void test_schedule(void)
{
    CHECK(cp_train_lr(0.009, 0, 20) == 0);
    CHECK_NEAR(cp_train_lr(0.009, 3, 20), 0.003, 1e-15);
    CHECK(cp_train_lr(0.009, 9, 20) == 0.009 && cp_train_lr(0.009, 19, 20) == 0.009);
    /* 100 epochs: the last 50 halve every 5 */
    CHECK(cp_train_lr(0.01, 49, 100) == 0.01);
    CHECK(cp_train_lr(0.01, 50, 100) == 0.005 && cp_train_lr(0.01, 54, 100) == 0.005);
    CHECK(cp_train_lr(0.01, 55, 100) == 0.0025);
    CHECK(cp_train_lr(0.01, 99, 100) == 0.01 / 1024);
    /* 400 epochs: the last 100 halve every 10 */
    CHECK(cp_train_lr(0.01, 299, 400) == 0.01 && cp_train_lr(0.01, 300, 400) == 0.005);
    CHECK(cp_train_lr(0.01, 399, 400) == 0.01 / 1024);
}

/* --scale-max M: scales in [1/M, M], as many below 1 as above, and the same
 * draws as the linear range otherwise (one uniform per sample) */
static void test_scale_max(void)
{
    cp_xoshiro r, q;
    cp_xoshiro_seed(&r, 5);
    cp_xoshiro_seed(&q, 5);
    int below = 0, n = 4000;
    double lo = 1e9, hi = 0;
    for (int i = 0; i < n; i++) {
        cp_augment a, b;
        cp_augment_draw(&r, 100, 100, 64, -2.0, 1.0, &a);
        cp_augment_draw(&q, 100, 100, 64, 1.0, 1.0, &b);
        CHECK(a.flip == b.flip && a.theta == b.theta);
        /* the linear draw 0.5 + u maps to the log-symmetric one */
        double u = b.scale - 0.5, s = 1.0 + fabs(2.0 * u - 1.0);
        CHECK_NEAR(a.scale, u < 0.5 ? 1.0 / s : s, 1e-12);
        below += a.scale < 1;
        lo = a.scale < lo ? a.scale : lo;
        hi = a.scale > hi ? a.scale : hi;
    }
    CHECKF(lo >= 0.5 && lo < 0.51 && hi <= 2 && hi > 1.99, "%g..%g", lo, hi);
    CHECKF(abs(2 * below - n) < 200, "%d of %d below 1", below, n);
}

static void test_diameter(void)
{
    /* areas 4, 9, 16 -> median sqrt 3 -> 3 / (sqrt(pi)/2) */
    uint32_t l[64] = {0};
    for (int i = 0; i < 4; i++) l[i] = 1;
    for (int i = 4; i < 13; i++) l[i] = 2;
    for (int i = 13; i < 29; i++) l[i] = 5;
    int nm;
    CHECK_NEAR(cp_label_diameter(l, 64, &nm), 3.0 / (sqrt(M_PI) / 2.0), 1e-12);
    CHECK(nm == 3);
}

static int file_eq(const char *a, const char *b)
{
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int eq = fa && fb;
    while (eq) {
        int ca = fgetc(fa), cb = fgetc(fb);
        if (ca != cb)
            eq = 0;
        if (ca == EOF || cb == EOF)
            break;
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return eq;
}

/* CSV files equal except for the timing column. */
static int csv_eq(const char *a, const char *b)
{
    FILE *fa = fopen(a, "r"), *fb = fopen(b, "r");
    char la[256], lb[256];
    int eq = fa && fb;
    while (eq) {
        char *ra = fgets(la, sizeof la, fa), *rb = fgets(lb, sizeof lb, fb);
        if (!ra || !rb) {
            eq = !ra && !rb;
            break;
        }
        char *ca = strrchr(la, ','), *cb = strrchr(lb, ',');
        if (ca) *ca = 0;
        if (cb) *cb = 0;
        eq = strcmp(la, lb) == 0;
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return eq;
}

static int stop_at_epoch(void *ctx, const cp_train_progress *p)
{
    return p->epoch == *(int *)ctx;
}

static double read_losses(const char *csv, double *v, int max)
{
    FILE *f = fopen(csv, "r");
    char line[256];
    int n = 0;
    if (!f)
        return -1;
    if (fgets(line, sizeof line, f))
        while (n < max && fgets(line, sizeof line, f))
            v[n++] = atof(strchr(line, ',') + 1);
    fclose(f);
    return n;
}

static void test_training(void)
{
    link_pairs();
    cp_dataset *d = NULL;
    cp_dataset_opts dopt;
    cp_dataset_opts_init(&dopt);
    CHECK_OK(cp_dataset_load(dir, &dopt, &d));
    if (!d)
        return;
    CHECK(d->n == 3);
    CHECK(d->s[0].nmasks == 27);
    const char *tmp = test_tmp_dir();
    char out[3][4096], csv[3][4096], ck[4096];
    for (int i = 0; i < 3; i++) {
        snprintf(out[i], sizeof out[i], "%s/tiny%d.pth", tmp, i);
        snprintf(csv[i], sizeof csv[i], "%s/tiny%d.csv", tmp, i);
    }
    cp_train_opts o;
    cp_train_opts_init(&o);
    int nb[] = {2, 8, 16, 32};
    memcpy(o.nbase, nb, sizeof nb);
    o.nlevels = 4;
    o.epochs = 12;
    o.nimg_per_epoch = 6;
    o.batch_size = 3;
    o.bsize = 64;
    o.lr = 0.02;
    o.seed = 7;
    o.threads = 1;
    o.diam_mean = 17;
    o.checkpoint_every = 0;
    cp_train_result r;
    /* two identical runs */
    for (int i = 0; i < 2; i++) {
        o.out = out[i];
        o.log_csv = csv[i];
        CHECK_OK(cp_train(&o, d, d, &r));
    }
    CHECK(r.epochs_done == 12);
    CHECK(file_eq(out[0], out[1]));
    CHECK(csv_eq(csv[0], csv[1]));
    double l[12];
    CHECK(read_losses(csv[0], l, 12) == 12);
    double first = (l[0] + l[1] + l[2]) / 3, last = (l[9] + l[10] + l[11]) / 3;
    CHECKF(last < 0.8 * first, "loss %.4f -> %.4f", first, last);
    /* the model loads as a CPnet with our shapes and segments */
    cp_model *m = NULL;
    CHECK_OK(cp_model_load(out[0], NULL, &m));
    if (m) {
        const cp_model_info *info = cp_model_get_info(m);
        CHECK(info->nlevels == 4 && info->nbase[1] == 8 && info->nbase[3] == 32 && info->nout == 3);
        CHECK(info->diam_mean == 17.0f);
        CHECK_NEAR(info->diam_labels, (float)r.diam_labels, 1e-4);
        cp_model_free(m);
    }
    /* interrupted during epoch 7 (checkpoint at 5), resumed: the same bytes as one run */
    snprintf(ck, sizeof ck, "%s/tiny_resume.ckpt", tmp);
    o.out = out[2];
    o.log_csv = csv[2];
    o.checkpoint = ck;
    o.checkpoint_every = 5;
    int stop = 7;
    o.progress = stop_at_epoch;
    o.ctx = &stop;
    CHECK(cp_train(&o, d, d, &r) == CP_EINTR);
    CHECK(r.epochs_done == 7);
    o.progress = NULL;
    cp_train_opts part = o;
    part.resume = ck;
    CHECK_OK(cp_train(&part, d, d, &r));
    CHECK(r.epochs_done == 12 && r.samples == 7 * 6);
    CHECK(file_eq(out[0], out[2]));
    CHECK(csv_eq(csv[0], csv[2]));
    /* a checkpoint with other options is refused */
    part.lr = 0.01;
    CHECK(cp_train(&part, d, d, &r) == CP_EINVAL);
    CHECK(strstr(cp_errmsg(), "--lr") != NULL);
    /* fine-tune from the trained model: shape taken from the file */
    cp_train_opts ft;
    cp_train_opts_init(&ft);
    ft.pretrained = out[0];
    ft.epochs = 2;
    ft.bsize = 64;
    ft.batch_size = 2;
    ft.threads = 1;
    ft.checkpoint_every = 0;
    snprintf(out[1], sizeof out[1], "%s/tiny_ft.pth", tmp);
    ft.out = out[1];
    CHECK_OK(cp_train(&ft, d, NULL, &r));
    CHECK_OK(cp_model_load(out[1], NULL, &m));
    if (m) {
        CHECK(cp_model_get_info(m)->nbase[2] == 16 && cp_model_get_info(m)->diam_mean == 17.0f);
        cp_model_free(m);
    }
    cp_dataset_free(d);
}

static void test_bad_input(void)
{
    cp_dataset *d = NULL;
    char empty[2048];
    snprintf(empty, sizeof empty, "%s/no_pairs", test_tmp_dir());
    cp_mkdirs(empty);
    CHECK(cp_dataset_load(empty, NULL, &d) == CP_EIO && !d);
    CHECK(strstr(cp_errmsg(), "no image/label pairs") != NULL);
    /* labels of another size */
    char mis[1024], src[PATH_MAX + 256], dst[PATH_MAX + 256];
    snprintf(mis, sizeof mis, "%s/mismatch", test_tmp_dir());
    cp_mkdirs(mis);
    char data[PATH_MAX];
    if (!realpath(shared_path("data/dsb2018"), data))
        return;
    snprintf(src, sizeof src, "%s/%s_img.png", data, ids[0]);
    snprintf(dst, sizeof dst, "%s/a_img.png", mis);
    unlink(dst);
    CHECK(symlink(src, dst) == 0);
    snprintf(src, sizeof src, "%s/0121d6759c5adb290c8e828fc882f37dfaf3663ec885c663859948c154a443ed_masks.tif", data);
    snprintf(dst, sizeof dst, "%s/a_masks.tif", mis);
    unlink(dst);
    CHECK(symlink(src, dst) == 0);
    CHECK(cp_dataset_load(mis, NULL, &d) == CP_EFORMAT && !d);
    CHECKF(strstr(cp_errmsg(), "a_masks.tif") && strstr(cp_errmsg(), "320x256"), "%s", cp_errmsg());
}

int main(void)
{
    test_rotation();
    test_schedule();
    test_scale_max();
    test_diameter();
    test_bad_input();
    test_training();
    return test_result();
}
