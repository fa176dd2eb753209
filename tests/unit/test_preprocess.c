/* Preprocessing and tiling against Cellpose's own arrays (golden/net/<run>):
 * network input (channels + normalisation), resized and padded input, tile
 * layout, tile inputs; blending checked exactly against a direct evaluation
 * of spec 4.6 with known fake networks; flows through the golden weights.
 * CP_TEST_SLOW=1 runs the network on every golden run (default: a subset);
 * PP_VERBOSE=1 prints the differences found. */
#include <dirent.h>
#include <stdint.h>
#include <sys/stat.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "cellpose/cellpose.h"
#include "core/sha256.h"
#include "test.h"

/* ---- helpers ----------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int64_t ordered(float f)
{
    int32_t i;
    memcpy(&i, &f, 4);
    return i < 0 ? -(int64_t)(i & 0x7fffffff) : (int64_t)i;
}

static int64_t ulps(float a, float b)
{
    int64_t d = ordered(a) - ordered(b);
    return d < 0 ? -d : d;
}

/* A C x H x W stack laid out as H x W x C (hwc) or C x H x W, every step-th
 * row and column. */
static float *arrange(const cp_planes *p, int hwc, int step, size_t *n)
{
    int h = (p->height + step - 1) / step, w = (p->width + step - 1) / step;
    *n = (size_t)h * w * p->channels;
    float *o = malloc(*n * sizeof(float));
    size_t k = 0;
    if (hwc) {
        for (int y = 0; y < p->height; y += step)
            for (int x = 0; x < p->width; x += step)
                for (int c = 0; c < p->channels; c++)
                    o[k++] = p->data[((size_t)c * p->height + y) * p->width + x];
    } else {
        for (int c = 0; c < p->channels; c++)
            for (int y = 0; y < p->height; y += step)
                for (int x = 0; x < p->width; x += step)
                    o[k++] = p->data[((size_t)c * p->height + y) * p->width + x];
    }
    return o;
}

/* Wrap a float buffer C x H x W as planes (no copy). */
static cp_planes wrap(float *d, int c, int h, int w)
{
    cp_planes p = {c, h, w, d};
    return p;
}

static cJSON *jget(const cJSON *o, const char *path)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    const cJSON *cur = o;
    for (char *tok = strtok(buf, "."); tok && cur; tok = strtok(NULL, "."))
        cur = cJSON_GetObjectItemCaseSensitive(cur, tok);
    return (cJSON *)cur;
}

/* Compare mine (n floats) with a golden float32 .npy; returns max ulps. */
static int64_t compare_npy(const char *what, const char *run, const char *path, const float *mine,
                           size_t n, double *maxabs)
{
    cp_array *a = NULL;
    int rc = cp_npy_read(path, &a);
    CHECKF(rc == 0, "%s: %s", path, cp_errmsg());
    if (rc)
        return INT64_MAX;
    CHECKF(a->dtype == CP_F32 && cp_array_count(a) == n, "%s %s: %zu values, mine %zu", run, what,
           cp_array_count(a), n);
    int64_t worst = 0;
    double mabs = 0;
    if (a->dtype == CP_F32 && cp_array_count(a) == n) {
        const float *g = a->data;
        for (size_t i = 0; i < n; i++) {
            int64_t u = ulps(mine[i], g[i]);
            if (u > worst)
                worst = u;
            double d = fabs((double)mine[i] - g[i]);
            if (d > mabs)
                mabs = d;
        }
    } else {
        worst = INT64_MAX;
    }
    if (maxabs)
        *maxabs = mabs;
    cp_array_free(a);
    return worst;
}

static void sha_hex(const float *d, size_t n, char hex[65])
{
    cp_sha256_buf(d, n * sizeof(float), hex);
}

/* ---- fake networks ----------------------------------------------------- */

typedef struct fake {
    int nchan;
    int mode;      /* 0 zeros, 1 position/tile dependent, 2 constant 1 + identity cellprob */
    int calls_tiles;
} fake;

static int fake_forward(void *ctx, const float *in, int n, int ty, int tx, float *out)
{
    fake *f = ctx;
    size_t tn = (size_t)ty * tx;
    for (int i = 0; i < n; i++) {
        const float *x = in + (size_t)i * f->nchan * tn;
        float *o = out + (size_t)i * 3 * tn;
        int k = f->calls_tiles++;
        for (size_t j = 0; j < tn; j++) {
            if (f->mode == 0) {
                o[j] = o[tn + j] = o[2 * tn + j] = 0.f;
            } else if (f->mode == 1) {
                o[j] = x[j] * 0.5f + (float)k * 0.125f;
                o[tn + j] = x[tn + j] - (float)(j % 7) * 0.01f;
                o[2 * tn + j] = (float)k + 1.0f / (float)(1 + j % 13);
            } else {
                o[j] = 1.f;
                o[tn + j] = 1.f;
                o[2 * tn + j] = x[j];
            }
        }
    }
    return 0;
}

/* ---- golden runs -------------------------------------------------------- */

typedef struct golden_run {
    char dir[1024];
    cJSON *js;
    cp_arch arch;
    cp_net_desc net;
    cp_eval_params p;
    int s4;
} golden_run;

static int load_run(const char *name, golden_run *r)
{
    memset(r, 0, sizeof *r);
    if (snprintf(r->dir, sizeof r->dir, "%s/golden/net/%s", test_shared_dir(), name) >=
        (int)sizeof r->dir)
        return -1;
    char path[1100];
    snprintf(path, sizeof path, "%s/run.json", r->dir);
    char *txt = test_slurp(path, NULL);
    if (!txt)
        return -1;
    r->js = cJSON_Parse(txt);
    free(txt);
    if (!r->js)
        return -1;
    const char *arch = cJSON_GetStringValue(jget(r->js, "model.arch"));
    r->arch = arch && !strcmp(arch, "cpsam") ? CP_ARCH_CPSAM : CP_ARCH_CPNET;
    cp_eval_params_init(&r->p);
    cJSON *ch = jget(r->js, "params.channels");
    if (cJSON_IsArray(ch)) {
        r->p.chan = cJSON_GetArrayItem(ch, 0)->valueint;
        r->p.chan2 = cJSON_GetArrayItem(ch, 1)->valueint;
    }
    cJSON *d = jget(r->js, "params.diameter");
    r->p.diameter = cJSON_IsNumber(d) ? d->valuedouble : 0;
    cJSON *o = jget(r->js, "params.tile_overlap");
    if (cJSON_IsNumber(o))
        r->p.tile_overlap = o->valuedouble;
    cJSON *b = jget(r->js, "params.batch_size");
    if (cJSON_IsNumber(b))
        r->p.batch_size = b->valueint;
    cJSON *dm = jget(r->js, "model.diam_mean"), *dl = jget(r->js, "model.diam_labels");
    r->net.arch = r->arch;
    r->net.nchan = r->arch == CP_ARCH_CPSAM ? 3 : 2;
    r->net.nout = 3;
    r->net.bsize = r->arch == CP_ARCH_CPSAM ? 256 : 224;
    r->net.diam_mean = cJSON_IsNumber(dm) ? dm->valuedouble : 30.0;
    r->net.diam_labels = cJSON_IsNumber(dl) ? dl->valuedouble : r->net.diam_mean;
    const char *store = cJSON_GetStringValue(jget(r->js, "store"));
    r->s4 = store && !strcmp(store, "s4");
    return 0;
}

static const char *run_file(const golden_run *r, const char *key)
{
    static char path[1400];
    const char *f = cJSON_GetStringValue(jget(jget(r->js, "files"), key));
    if (!f)
        return NULL;
    snprintf(path, sizeof path, "%s/%s", r->dir, f);
    return path;
}

static void check_array(const golden_run *r, const char *name, const char *key, const cp_planes *p,
                        int hwc, int64_t max_ulps)
{
    char k[64];
    snprintf(k, sizeof k, "%s%s", key, r->s4 ? "_s4" : "");
    const char *path = run_file(r, k);
    if (path) {
        size_t n;
        float *a = arrange(p, hwc, r->s4 ? 4 : 1, &n);
        double mabs = 0;
        int64_t u = compare_npy(key, name, path, a, n, &mabs);
        CHECKF(u <= max_ulps, "%s %s: %lld ulps apart (max |d| %g)", name, key, (long long)u, mabs);
        if (getenv("PP_VERBOSE"))
            fprintf(stderr, "%s %s: %lld ulps, n=%zu\n", name, k, (long long)u, n);
        free(a);
    }
    /* the whole array's checksum */
    cJSON *st = jget(jget(r->js, "full_array_stats"), key);
    const char *sha = cJSON_GetStringValue(jget(st, "sha256"));
    if (sha) {
        size_t n;
        float *a = arrange(p, hwc, 1, &n);
        char hex[65];
        sha_hex(a, n, hex);
        CHECKF(!strcmp(hex, sha), "%s %s: full-array sha256 differs", name, key);
        if (getenv("PP_VERBOSE"))
            fprintf(stderr, "%s %s: sha256 %s\n", name, key, strcmp(hex, sha) ? "differs" : "same");
        free(a);
    }
}

static void check_ints(const char *name, const char *what, cJSON *arr, const int *v, int n)
{
    CHECKF(cJSON_GetArraySize(arr) == n, "%s %s: %d values, mine %d", name, what,
           cJSON_GetArraySize(arr), n);
    for (int i = 0; i < n && i < cJSON_GetArraySize(arr); i++)
        CHECKF(cJSON_GetArrayItem(arr, i)->valueint == v[i], "%s %s[%d]: %d, mine %d", name, what,
               i, cJSON_GetArrayItem(arr, i)->valueint, v[i]);
}

/* Network outputs: max|d| <= 1e-4 and <= 1e-5 * max|golden| (README bar). */
static void check_close(const golden_run *r, const char *name, const char *key, const cp_planes *p,
                        int hwc)
{
    char k[64];
    snprintf(k, sizeof k, "%s%s", key, r->s4 ? "_s4" : "");
    const char *path = run_file(r, k);
    size_t n;
    float *a = arrange(p, hwc, r->s4 ? 4 : 1, &n);
    if (path) {
        cp_array *g = NULL;
        int rc = cp_npy_read(path, &g);
        CHECKF(rc == 0, "%s: %s", path, cp_errmsg());
        if (rc == 0) {
            CHECKF(cp_array_count(g) == n && g->dtype == CP_F32, "%s %s: shape", name, k);
            if (cp_array_count(g) == n && g->dtype == CP_F32) {
                const float *gv = g->data;
                double md = 0, mx = 0;
                for (size_t i = 0; i < n; i++) {
                    double d = fabs((double)a[i] - gv[i]);
                    if (d > md)
                        md = d;
                    if (fabs(gv[i]) > mx)
                        mx = fabs(gv[i]);
                }
                CHECKF(md <= 1e-4 && md <= 1e-5 * mx, "%s %s: max |d| %g (max |x| %g)", name, k,
                       md, mx);
                if (getenv("PP_VERBOSE"))
                    fprintf(stderr, "%s %s: max |d| %g (max |x| %g)\n", name, k, md, mx);
            }
            cp_array_free(g);
        }
    }
    free(a);
    /* whole-array statistics (the only check of the parts _s4 leaves out) */
    cJSON *st = jget(jget(r->js, "full_array_stats"), key);
    if (st) {
        a = arrange(p, hwc, 1, &n);
        double mn = a[0], mxv = a[0], sum = 0;
        for (size_t i = 0; i < n; i++) {
            mn = a[i] < mn ? a[i] : mn;
            mxv = a[i] > mxv ? a[i] : mxv;
            sum += a[i];
        }
        double tol = 1e-4;
        CHECKF(fabs(mn - jget(st, "min")->valuedouble) <= tol, "%s %s min %g vs %g", name, key, mn,
               jget(st, "min")->valuedouble);
        CHECKF(fabs(mxv - jget(st, "max")->valuedouble) <= tol, "%s %s max %g vs %g", name, key,
               mxv, jget(st, "max")->valuedouble);
        CHECKF(fabs(sum / n - jget(st, "mean")->valuedouble) <= 1e-5, "%s %s mean %g vs %g", name,
               key, sum / n, jget(st, "mean")->valuedouble);
        free(a);
    }
}

/* The real pipeline with the golden weights: flows against Cellpose's. */
static void test_golden_net(golden_run *r, const char *name, const cp_image *img)
{
    char path[1400];
    snprintf(path, sizeof path, "%s/golden/weights/%s", test_shared_dir(),
             cJSON_GetStringValue(jget(r->js, "weights")));
    cp_model *m = NULL;
    double t0 = now_s();
    int rc = cp_model_load(path, NULL, &m);
    if (getenv("PP_VERBOSE"))
        fprintf(stderr, "%s: load %.2fs\n", name, now_s() - t0);
    CHECKF(rc == 0, "%s: %s", path, cp_errmsg());
    if (rc)
        return;
    cp_eval_debug dbg = {0};
    dbg.keep_stages = 1;
    cp_flows *fl = NULL;
    rc = cp_eval_flows(m, img, 0, &r->p, &fl, &dbg);
    CHECKF(rc == 0, "%s: %s", name, cp_errmsg());
    if (getenv("PP_VERBOSE"))
        fprintf(stderr, "%s: eval %.2fs\n", name, now_s() - t0);
    if (rc == 0) {
        cp_planes dp = wrap(fl->data, 2, fl->height, fl->width);
        cp_planes cpb = wrap(fl->cellprob, 1, fl->height, fl->width);
        check_close(r, name, "dP", &dp, 0);
        check_close(r, name, "cellprob", &cpb, 0);
        check_close(r, name, "net_out", dbg.net_out, 1);
        cp_flows_free(fl);
    }
    cp_eval_debug_free(&dbg);
    cp_model_free(m);
}

static void test_golden_run(const char *name)
{
    golden_run r;
    if (load_run(name, &r)) {
        CHECKF(0, "%s: cannot read run.json", name);
        return;
    }
    char path[800];
    snprintf(path, sizeof path, "%s/golden/inputs/%s", test_shared_dir(),
             cJSON_GetStringValue(jget(r.js, "image")));
    cp_image *img = NULL;
    int rc = cp_image_read(path, NULL, &img);
    CHECKF(rc == 0, "%s: %s", path, cp_errmsg());
    if (rc) {
        cJSON_Delete(r.js);
        return;
    }
    fake f = {r.net.nchan, 0, 0};
    r.net.forward = fake_forward;
    r.net.ctx = &f;
    cp_eval_debug dbg = {0};
    dbg.keep_stages = 1;
    const char *tiles_path = run_file(&r, "tiles_in");
    cp_array *tiles = NULL;
    if (tiles_path) {
        CHECK_OK(cp_npy_read(tiles_path, &tiles));
        if (tiles)
            dbg.keep_tiles = (int)tiles->shape[0];
    }
    cp_flows *fl = NULL;
    rc = cp_eval_flows_net(&r.net, img, 0, &r.p, &fl, &dbg);
    CHECKF(rc == 0, "%s: %s", name, cp_errmsg());
    if (rc == 0) {
        /* channels + normalisation: exact */
        check_array(&r, name, "net_in", dbg.net_in, 1, 0);
        /* resized shape, padding, tiles */
        cJSON *rs = jget(r.js, "resized_shape");
        int mine_rs[2] = {fl->net_height, fl->net_width};
        check_ints(name, "resized_shape", rs, mine_rs, 2);
        int mine_ps[3] = {dbg.padded->channels, dbg.padded->height, dbg.padded->width};
        check_ints(name, "padded_shape", jget(r.js, "padded_shape"), mine_ps, 3);
        check_ints(name, "tile_starts_y", jget(r.js, "tile_starts_y"), dbg.tiling.ystart,
                   dbg.tiling.ny);
        check_ints(name, "tile_starts_x", jget(r.js, "tile_starts_x"), dbg.tiling.xstart,
                   dbg.tiling.nx);
        /* the resized, padded image that is tiled (OpenCV-exact) */
        check_array(&r, name, "net_in_padded", dbg.padded, 0, 0);
        if (!run_file(&r, r.s4 ? "net_in_padded_s4" : "net_in_padded") && fl->rescale == 1.0) {
            /* scale 1: the padded image is net_in moved by the padding */
            int ok = 1;
            for (int c = 0; c < dbg.net_in->channels && ok; c++)
                for (int y = 0; y < dbg.padded->height && ok; y++)
                    for (int x = 0; x < dbg.padded->width; x++) {
                        int iy = y - dbg.pad_y[0], ix = x - dbg.pad_x[0];
                        float want = iy >= 0 && iy < dbg.net_in->height && ix >= 0 &&
                                             ix < dbg.net_in->width
                                         ? dbg.net_in->data[((size_t)c * dbg.net_in->height + iy) *
                                                                dbg.net_in->width + ix]
                                         : 0.f;
                        if (dbg.padded->data[((size_t)c * dbg.padded->height + y) *
                                                 dbg.padded->width + x] != want) {
                            ok = 0;
                            break;
                        }
                    }
            CHECKF(ok, "%s: padded image is not net_in zero-padded", name);
        }
        if (tiles) {
            size_t n = cp_array_count(tiles);
            CHECKF(dbg.ntiles_kept == (int)tiles->shape[0] &&
                       (size_t)dbg.ntiles_kept * r.net.nchan * dbg.tiling.ty * dbg.tiling.tx == n,
                   "%s: tiles_in shape", name);
            if ((size_t)dbg.ntiles_kept * r.net.nchan * dbg.tiling.ty * dbg.tiling.tx == n) {
                size_t bad = 0;
                for (size_t i = 0; i < n; i++)
                    bad += dbg.tiles_in[i] != ((float *)tiles->data)[i];
                CHECKF(bad == 0, "%s: %zu tile input values differ", name, bad);
            }
        }
        CHECK(f.calls_tiles == dbg.tiling.ny * dbg.tiling.nx);
        cp_flows_free(fl);
    }
    /* The network costs seconds per run on this machine's shared cores: by
     * default the small synthetic runs plus one subsampled (real image) run
     * with at most 4 tiles; CP_TEST_SLOW=1 runs every run. */
    static int s4_done;
    cJSON *nt = jget(r.js, "n_tiles");
    int small = (size_t)img->width * img->height <= 65536;
    int pick_s4 = !small && !s4_done && cJSON_IsNumber(nt) && nt->valueint <= 4;
    const char *slow = getenv("CP_TEST_SLOW");
    if (small || pick_s4 || (slow && *slow == '1')) {
        s4_done |= pick_s4;
        test_golden_net(&r, name, img);
    }
    cp_array_free(tiles);
    cp_eval_debug_free(&dbg);
    cp_image_free(img);
    cJSON_Delete(r.js);
}

static int cmpname(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void test_golden(void)
{
    char dir[600];
    snprintf(dir, sizeof dir, "%s/golden/net", test_shared_dir());
    DIR *d = opendir(dir);
    CHECKF(d != NULL, "%s", dir);
    if (!d)
        return;
    struct dirent *e;
    int nrun = 0;
    char names[64][256];
    while ((e = readdir(d)) && nrun < 64) {
        if (e->d_name[0] == '.')
            continue;
        char p[900];
        struct stat st;
        snprintf(p, sizeof p, "%s/%s/run.json", dir, e->d_name);
        if (stat(p, &st) == 0)
            snprintf(names[nrun++], sizeof names[0], "%s", e->d_name);
    }
    closedir(d);
    CHECK(nrun >= 1);
    qsort(names, (size_t)nrun, sizeof names[0], cmpname);
    for (int i = 0; i < nrun; i++)
        test_golden_run(names[i]);
}

/* ---- percentiles -------------------------------------------------------- */

static int cmpf(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* numpy 1.24 percentile "linear", written out on a sorted copy. */
static double ref_percentile(const float *x, size_t n, double q)
{
    float *s = malloc(n * sizeof(float));
    memcpy(s, x, n * sizeof(float));
    qsort(s, n, sizeof(float), cmpf);
    double vi = (double)(n - 1) * (q / 100.0);
    size_t i0 = (size_t)floor(vi);
    if (i0 >= n - 1) {
        double v = s[n - 1];
        free(s);
        return v;
    }
    double g = vi - floor(vi);
    float d32 = s[i0 + 1] - s[i0];
    double r = g >= 0.5 ? (double)s[i0 + 1] - (double)d32 * (1.0 - g) : (double)s[i0] + (double)d32 * g;
    free(s);
    return r;
}

static void test_percentile(void)
{
    float a[4] = {4, 1, 3, 2};
    CHECK(cp_percentile_f32(a, 4, 1) == 1.0 + 1.0 * 0.03);
    float b[4] = {4, 1, 3, 2};
    CHECK(cp_percentile_f32(b, 4, 100) == 4.0);
    float c[4] = {4, 1, 3, 2};
    CHECK(cp_percentile_f32(c, 4, 0) == 1.0);
    float one[1] = {7};
    CHECK(cp_percentile_f32(one, 1, 99) == 7.0);
    /* random data with many ties and sizes: selection = sort */
    uint32_t s = 12345;
    int bad = 0;
    for (int trial = 0; trial < 200; trial++) {
        size_t n = 1 + (size_t)(trial * 37 % 5000);
        float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
        for (size_t i = 0; i < n; i++) {
            s = s * 1664525u + 1013904223u;
            x[i] = trial % 3 == 0 ? (float)(s >> 28) : (float)(s >> 8) / 65536.0f - 100.0f;
        }
        double qs[4] = {1, 99, 50, 0.5 + trial % 7};
        for (int k = 0; k < 4; k++) {
            memcpy(y, x, n * sizeof(float));
            double want = ref_percentile(x, n, qs[k]);
            double got = cp_percentile_f32(y, n, qs[k]);
            bad += want != got;
        }
        free(x);
        free(y);
    }
    CHECKF(bad == 0, "%d percentiles differ from the sorted reference", bad);
}

/* ---- channels and normalisation ---------------------------------------- */

static void test_channels(void)
{
    cp_image *img;
    CHECK_OK(cp_image_create(&img, 3, 2, 3, 1, CP_U16));
    uint16_t *d = img->data;
    for (int i = 0; i < 18; i++)
        d[i] = (uint16_t)(i * 7 % 11);
    cp_planes *p;
    /* v3 chan 0 on 3 channels: float32 mean, then a zero channel */
    CHECK_OK(cp_select_channels(img, 0, CP_ARCH_CPNET, 0, 0, &p));
    CHECK(p->channels == 2);
    int ok = 1;
    for (int i = 0; i < 6; i++) {
        float m = (((float)d[3 * i] + (float)d[3 * i + 1]) + (float)d[3 * i + 2]) / 3.0f;
        ok &= p->data[i] == m && p->data[6 + i] == 0.f;
    }
    CHECK(ok);
    cp_planes_free(p);
    /* chan 2, chan2 3 */
    CHECK_OK(cp_select_channels(img, 0, CP_ARCH_CPNET, 2, 3, &p));
    CHECK(p->data[0] == d[1] && p->data[6] == d[2] && p->data[5] == d[16]);
    cp_planes_free(p);
    /* chan 3 only: second channel zero */
    CHECK_OK(cp_select_channels(img, 0, CP_ARCH_CPNET, 3, 0, &p));
    CHECK(p->data[1] == d[5] && p->data[7] == 0);
    cp_planes_free(p);
    CHECK(cp_select_channels(img, 0, CP_ARCH_CPNET, 4, 0, &p) == CP_EINVAL);
    /* v4: first three channels */
    CHECK_OK(cp_select_channels(img, 0, CP_ARCH_CPSAM, 0, 0, &p));
    CHECK(p->channels == 3 && p->data[12 + 5] == d[17]);
    cp_planes_free(p);
    cp_image_free(img);

    /* one channel into v4: [img, 0, 0]; constant channels */
    CHECK_OK(cp_image_create(&img, 4, 4, 1, 1, CP_F32));
    float *f = img->data;
    for (int i = 0; i < 16; i++)
        f[i] = 5.f;
    CHECK_OK(cp_select_channels(img, 0, CP_ARCH_CPNET, 0, 0, &p));
    CHECK_OK(cp_normalize(p, CP_ARCH_CPNET, 1, 99));
    CHECK(p->data[3] == 5.f); /* v3 leaves a constant channel */
    cp_planes_free(p);
    CHECK_OK(cp_select_channels(img, 0, CP_ARCH_CPSAM, 0, 0, &p));
    CHECK(p->channels == 3);
    CHECK_OK(cp_normalize(p, CP_ARCH_CPSAM, 1, 99));
    CHECK(p->data[3] == 0.f); /* v4 zeroes it */
    cp_planes_free(p);
    /* a tiny range (p99 - p1 <= 1e-3) becomes 0 */
    for (int i = 0; i < 16; i++)
        f[i] = 1.0f + (float)i * 1e-5f;
    CHECK_OK(cp_select_channels(img, 0, CP_ARCH_CPNET, 0, 0, &p));
    CHECK_OK(cp_normalize(p, CP_ARCH_CPNET, 1, 99));
    CHECK(p->data[15] == 0.f && p->data[0] == 0.f);
    cp_planes_free(p);
    /* normal case: (x - p1) / (p99 - p1) in float32 with rounded scalars */
    for (int i = 0; i < 16; i++)
        f[i] = (float)(i * i);
    CHECK_OK(cp_select_channels(img, 0, CP_ARCH_CPNET, 0, 0, &p));
    CHECK_OK(cp_normalize(p, CP_ARCH_CPNET, 2, 95));
    float tmp[16];
    memcpy(tmp, f, sizeof tmp);
    double lo = ref_percentile(tmp, 16, 2), hi = ref_percentile(tmp, 16, 95);
    CHECK(p->data[7] == (49.f - (float)lo) / (float)(hi - lo));
    CHECK(cp_normalize(p, CP_ARCH_CPNET, -1, 99) == CP_EINVAL);
    cp_planes_free(p);
    /* a NaN makes numpy's ptp NaN: v3 leaves the channel, v4 zeroes it */
    f[3] = NAN;
    CHECK_OK(cp_select_channels(img, 0, CP_ARCH_CPNET, 0, 0, &p));
    CHECK_OK(cp_normalize(p, CP_ARCH_CPNET, 1, 99));
    CHECK(p->data[7] == 49.f && isnan(p->data[3]));
    cp_planes_free(p);
    CHECK_OK(cp_select_channels(img, 0, CP_ARCH_CPSAM, 0, 0, &p));
    CHECK_OK(cp_normalize(p, CP_ARCH_CPSAM, 1, 99));
    CHECK(p->data[7] == 0.f && p->data[3] == 0.f);
    cp_planes_free(p);
    cp_image_free(img);
}

/* ---- resize, padding, tiles -------------------------------------------- */

static void test_geometry(void)
{
    int a, b;
    cp_pad_amounts(256, CP_ARCH_CPNET, 224, &a, &b);
    CHECK(a == 8 && b == 8);
    cp_pad_amounts(100, CP_ARCH_CPNET, 224, &a, &b);
    CHECK(a + b + 100 == 128);
    cp_pad_amounts(145, CP_ARCH_CPNET, 224, &a, &b);
    CHECK(a == 15 && 145 + a + b == 176);
    cp_pad_amounts(200, CP_ARCH_CPSAM, 256, &a, &b);
    CHECK(a == 28 && b == 28);
    cp_pad_amounts(250, CP_ARCH_CPSAM, 256, &a, &b);
    CHECK(a + b + 250 == 266);
    cp_pad_amounts(192, CP_ARCH_CPSAM, 256, &a, &b);
    CHECK(a == 32 && b == 32);

    cp_tiling t;
    CHECK_OK(cp_tiling_make(&t, 528, 528, 224, 0.1, 0));
    CHECK(t.ny == 3 && t.ystart[1] == 152 && t.ystart[2] == 304 && t.ty == 224);
    cp_tiling_free(&t);
    CHECK_OK(cp_tiling_make(&t, 528, 528, 256, 0.1, 0));
    CHECK(t.nx == 3 && t.xstart[1] == 136 && t.xstart[2] == 272);
    cp_tiling_free(&t);
    CHECK_OK(cp_tiling_make(&t, 176, 128, 224, 0.1, 0));
    CHECK(t.ny == 1 && t.nx == 1 && t.ty == 176 && t.tx == 128);
    cp_tiling_free(&t);
    /* augment: half-overlapping full tiles, image extended to bsize */
    CHECK_OK(cp_tiling_make(&t, 176, 528, 224, 0.1, 1));
    CHECK(t.ny == 2 && t.height == 224 && t.ty == 224 && t.ystart[1] == 0 && t.nx == 5);
    cp_tiling_free(&t);
    /* overlap clipped to [0.05, 0.5] */
    cp_tiling t2;
    CHECK_OK(cp_tiling_make(&t, 1000, 1000, 224, 5.0, 0));
    CHECK_OK(cp_tiling_make(&t2, 1000, 1000, 224, 0.5, 0));
    CHECK(t.ny == t2.ny && t.ny == 9);
    cp_tiling_free(&t);
    cp_tiling_free(&t2);

    /* taper: ~1 in the middle, 0.5 at 20 px from the edge of a 224 tile */
    double m[224];
    cp_taper_1d(224, 224, 224, m);
    CHECK(fabs(m[112] - 1.0) < 1e-5 && m[0] < 0.1 && fabs(m[20] - 0.5) < 0.05);

    CHECK(cp_rescale(30, 17, 17, CP_ARCH_CPNET) == 17.0 / 30.0);
    CHECK(cp_rescale(0, 30, 25, CP_ARCH_CPNET) == 30.0 / 25.0);
    CHECK(cp_rescale(0, 30, 30, CP_ARCH_CPSAM) == 1.0);
    CHECK(cp_rescale(40, 30, 30, CP_ARCH_CPSAM) == 0.75);
    CHECK(cp_rescaled_len(256, 17.0 / 30.0) == 145);

    /* resize: same size copies; upscale of a constant stays constant;
     * exact 2x downscale averages 2x2 blocks */
    float src[4 * 6];
    for (int i = 0; i < 24; i++)
        src[i] = (float)i;
    cp_planes in = wrap(src, 1, 4, 6), *o;
    CHECK_OK(cp_resize_linear(&in, 4, 6, &o));
    CHECK(!memcmp(o->data, src, sizeof src));
    cp_planes_free(o);
    CHECK_OK(cp_resize_linear(&in, 2, 3, &o));
    CHECK(o->data[0] == (0 + 1 + 6 + 7) / 4.f && o->data[5] == (16 + 17 + 22 + 23) / 4.f);
    cp_planes_free(o);
    /* bilinear with half-pixel centres: 4 -> 8 columns, row 0 */
    CHECK_OK(cp_resize_linear(&in, 4, 12, &o));
    CHECK(o->data[0] == 0.f && o->data[1] == 0.25f && o->data[2] == 0.75f && o->data[11] == 5.f);
    cp_planes_free(o);
}

/* ---- blending: the pipeline against a direct evaluation of 4.6 --------- */

/* Spec 4.6 written out with full-size arrays: float32 sums, float64 weights. */
static float *ref_blend(const cp_planes *P, const cp_tiling *t, fake *f, int py0, int px0, int oh,
                        int ow)
{
    int H = t->height, W = t->width;
    size_t an = (size_t)H * W, tn = (size_t)t->ty * t->tx;
    float *acc = calloc(3 * an, sizeof(float));
    double *navg = calloc(an, sizeof(double));
    int B = 224;
    if (t->ty > B)
        B = t->ty;
    if (t->tx > B)
        B = t->tx;
    double *m1 = malloc(B * sizeof(double));
    for (int i = 0; i < B; i++)
        m1[i] = 1.0 / (1.0 + exp((fabs(i - (B - 1) / 2.0) - (B / 2.0 - 20)) / 7.5));
    int oy = B / 2 - t->ty / 2, ox = B / 2 - t->tx / 2;
    float *tin = malloc(f->nchan * tn * sizeof(float)), *tout = malloc(3 * tn * sizeof(float));
    for (int jy = 0; jy < t->ny; jy++)
        for (int jx = 0; jx < t->nx; jx++) {
            int ys = t->ystart[jy], xs = t->xstart[jx];
            int fr = t->augment && jx % 2 == 1, fc = t->augment && jy % 2 == 1;
            for (int c = 0; c < f->nchan; c++)
                for (int a = 0; a < t->ty; a++)
                    for (int b = 0; b < t->tx; b++) {
                        int y = ys + (fr ? t->ty - 1 - a : a), x = xs + (fc ? t->tx - 1 - b : b);
                        tin[c * tn + a * t->tx + b] =
                            y < P->height && x < P->width
                                ? P->data[((size_t)c * P->height + y) * P->width + x]
                                : 0.f;
                    }
            fake_forward(f, tin, 1, t->ty, t->tx, tout);
            for (int c = 0; c < 3; c++)
                for (int a = 0; a < t->ty; a++)
                    for (int b = 0; b < t->tx; b++) {
                        int sa = fr ? t->ty - 1 - a : a, sb = fc ? t->tx - 1 - b : b;
                        double v = tout[c * tn + sa * t->tx + sb];
                        if ((c == 0 && fr) || (c == 1 && fc))
                            v = -v;
                        double mm = m1[oy + a] * m1[ox + b];
                        size_t i = (size_t)(ys + a) * W + xs + b;
                        acc[c * an + i] = (float)((double)acc[c * an + i] + v * mm);
                        if (c == 0)
                            navg[i] += mm;
                    }
        }
    float *out = malloc(3 * (size_t)oh * ow * sizeof(float));
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < oh; y++)
            for (int x = 0; x < ow; x++) {
                size_t i = (size_t)(y + py0) * W + x + px0;
                out[((size_t)c * oh + y) * ow + x] = (float)((double)acc[c * an + i] / navg[i]);
            }
    free(acc);
    free(navg);
    free(m1);
    free(tin);
    free(tout);
    return out;
}

static void blend_case(cp_arch arch, int h, int w, double diameter, int augment, int mode, int batch)
{
    cp_image *img;
    int C = arch == CP_ARCH_CPSAM ? 3 : 2;
    CHECK_OK(cp_image_create(&img, w, h, 2, 1, CP_F32));
    float *d = img->data;
    uint32_t s = (uint32_t)(h * 31 + w);
    for (size_t i = 0; i < (size_t)w * h * 2; i++) {
        s = s * 1664525u + 1013904223u;
        d[i] = (float)(s >> 8) / 1048576.0f;
    }
    fake f = {C, mode, 0};
    cp_net_desc net = {arch, C, 3, arch == CP_ARCH_CPSAM ? 256 : 224, 30, 30, fake_forward, &f, NULL, 0};
    cp_eval_params p;
    cp_eval_params_init(&p);
    p.chan = 1;
    p.chan2 = 2;
    p.diameter = diameter;
    p.augment = augment;
    p.batch_size = batch;
    cp_eval_debug dbg = {0};
    dbg.keep_stages = 1;
    cp_flows *fl;
    int rc = cp_eval_flows_net(&net, img, 0, &p, &fl, &dbg);
    CHECKF(rc == 0, "%s", cp_errmsg());
    if (rc) {
        cp_image_free(img);
        return;
    }
    fake g = {C, mode, 0};
    float *ref = ref_blend(dbg.padded, &dbg.tiling, &g, dbg.pad_y[0], dbg.pad_x[0],
                           dbg.net_out->height, dbg.net_out->width);
    size_t n = (size_t)3 * dbg.net_out->height * dbg.net_out->width, bad = 0;
    for (size_t i = 0; i < n; i++)
        bad += ref[i] != dbg.net_out->data[i];
    CHECKF(bad == 0, "blend %dx%d arch %d aug %d mode %d: %zu values differ from spec 4.6", h, w,
           (int)arch, augment, mode, bad);
    CHECK(fl->height == h && fl->width == w);
    if (mode == 2) {
        /* cellprob = the input's first channel blended with weights summing
         * to 1: equal to the padded input up to float32 rounding */
        double worst = 0;
        const cp_planes *P = dbg.padded, *O = dbg.net_out;
        for (int y = 0; y < O->height; y++)
            for (int x = 0; x < O->width; x++) {
                double want = P->data[(size_t)(y + dbg.pad_y[0]) * P->width + x + dbg.pad_x[0]];
                double got = O->data[2 * (size_t)O->height * O->width + (size_t)y * O->width + x];
                double e = fabs(got - want);
                if (e > worst)
                    worst = e;
            }
        CHECKF(worst < 1e-5, "identity blend off by %g", worst);
        if (!augment) {
            /* dY = dX = 1 everywhere, blended: 1 within float32 rounding */
            int okc = 1;
            for (size_t i = 0; i < (size_t)2 * O->height * O->width; i++)
                okc &= fabsf(O->data[i] - 1.f) < 1e-6f;
            CHECK(okc);
        }
    }
    free(ref);
    cp_flows_free(fl);
    cp_eval_debug_free(&dbg);
    cp_image_free(img);
}

static void test_blend(void)
{
    blend_case(CP_ARCH_CPNET, 300, 460, 30, 0, 1, 8);
    blend_case(CP_ARCH_CPNET, 300, 460, 30, 0, 1, 3); /* batching does not matter */
    blend_case(CP_ARCH_CPNET, 100, 530, 30, 0, 2, 8);
    blend_case(CP_ARCH_CPNET, 257, 301, 30, 1, 1, 8); /* augment */
    blend_case(CP_ARCH_CPNET, 257, 301, 30, 1, 2, 5);
    blend_case(CP_ARCH_CPSAM, 200, 333, 0, 0, 1, 8);
    blend_case(CP_ARCH_CPSAM, 270, 290, 0, 1, 2, 8);
    blend_case(CP_ARCH_CPSAM, 180, 180, 45, 0, 2, 8); /* resized, one padded tile */
}

static void test_errors(void)
{
    cp_image *img;
    CHECK_OK(cp_image_create(&img, 8, 8, 1, 1, CP_U8));
    fake f = {2, 0, 0};
    cp_net_desc net = {CP_ARCH_CPNET, 2, 3, 224, 30, 30, fake_forward, &f, NULL, 0};
    cp_eval_params p;
    cp_eval_params_init(&p);
    cp_flows *fl;
    p.batch_size = 0;
    CHECK(cp_eval_flows_net(&net, img, 0, &p, &fl, NULL) == CP_EINVAL);
    cp_eval_params_init(&p);
    CHECK(cp_eval_flows_net(&net, img, 1, &p, &fl, NULL) == CP_EINVAL);
    net.nchan = 3;
    CHECK(cp_eval_flows_net(&net, img, 0, &p, &fl, NULL) == CP_EINVAL);
    net.nchan = 2;
    p.diameter = 1e9; /* scale so small the image vanishes */
    CHECK(cp_eval_flows_net(&net, img, 0, &p, &fl, NULL) == CP_EINVAL);
    p.diameter = 30;
    CHECK_OK(cp_eval_flows_net(&net, img, 0, &p, &fl, NULL));
    CHECK(fl->height == 8 && fl->cellprob[63] == 0.f && fl->rescale == 1.0);
    cp_flows_free(fl);
    /* diam_mean override (Cellpose 3 built-in names) */
    p.diam_mean = 17;
    CHECK_OK(cp_eval_flows_net(&net, img, 0, &p, &fl, NULL));
    CHECK(fl->rescale == 17.0 / 30.0 && fl->net_height == 4 && fl->height == 8);
    cp_flows_free(fl);
    cp_image_free(img);
}

int main(void)
{
    test_percentile();
    test_channels();
    test_geometry();
    test_blend();
    test_errors();
    test_golden();
    return test_result();
}
