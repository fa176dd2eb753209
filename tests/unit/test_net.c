/* Network: torch.save reader (zip + legacy) against the golden per-tensor
 * checksums, malformed files, and the forward passes against Cellpose's own
 * tile outputs. CP_BENCH=1 turns this binary into the network benchmark. */
#include <cjson/cJSON.h>
#include <omp.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "cellpose/cellpose.h"
#include "core/sha256.h"
#include "net/shim.h"
#include "test.h"

static int spit(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = fwrite(p, 1, n, f);
    return fclose(f) == 0 && w == n ? 0 : -1;
}

static const char *tmp_path(const char *name)
{
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", test_tmp_dir(), name);
    return buf;
}

/* A float32 .npy or .npy.gz (C order, little-endian); shape into dims. */
static float *read_npy_f32(const char *path, int *ndim, long dims[8])
{
    gzFile g = gzopen(path, "rb");
    if (!g)
        return NULL;
    unsigned char h[10];
    float *data = NULL;
    if (gzread(g, h, 10) != 10 || memcmp(h, "\x93NUMPY", 6))
        goto out;
    unsigned hl = h[8] | h[9] << 8;
    char *hdr = calloc(1, hl + 1);
    if (gzread(g, hdr, hl) != (int)hl || !strstr(hdr, "'<f4'") || strstr(hdr, "True")) {
        free(hdr);
        goto out;
    }
    char *s = strchr(strstr(hdr, "'shape'"), '(') + 1;
    long n = 1;
    *ndim = 0;
    while (*s && *s != ')') {
        char *e;
        long v = strtol(s, &e, 10);
        if (e == s)
            break;
        dims[(*ndim)++] = v;
        n *= v;
        s = e;
        while (*s == ',' || *s == ' ')
            s++;
    }
    free(hdr);
    data = malloc((size_t)n * 4);
    if (gzread(g, data, (unsigned)(n * 4)) != (int)(n * 4)) {
        free(data);
        data = NULL;
    }
out:
    gzclose(g);
    return data;
}

/* ---- weights against the golden tensor list ---------------------------- */

static void check_against_json(const char *wname)
{
    char rel[256];
    snprintf(rel, sizeof rel, "golden/weights/%s.pth", wname);
    char path[4096];
    snprintf(path, sizeof path, "%s", shared_path(rel));
    snprintf(rel, sizeof rel, "golden/weights/%s_tensors.json", wname);
    char *js = test_slurp(shared_path(rel), NULL);
    CHECKF(js != NULL, "%s", rel);
    if (!js)
        return;
    cJSON *root = cJSON_Parse(js);
    free(js);
    cJSON *list = cJSON_GetObjectItem(root, "tensors");
    cp_weights *w = NULL;
    CHECK_OK(cp_weights_load(path, &w));
    if (!w) {
        cJSON_Delete(root);
        return;
    }
    CHECKF(w->n == (size_t)cJSON_GetArraySize(list), "%s: %zu tensors", wname, w->n);
    CHECK(w->legacy == (strstr(wname, "legacy") != NULL));
    int bad = 0, k = 0;
    cJSON *it;
    cJSON_ArrayForEach(it, list) {
        const char *key = cJSON_GetObjectItem(it, "key")->valuestring;
        const cp_wtensor *t = k < (int)w->n ? &w->t[k] : NULL;
        k++;
        if (!t || strcmp(t->name, key)) {
            CHECKF(0, "%s: tensor %d is %s, expected %s", wname, k - 1, t ? t->name : "-", key);
            bad++;
            continue;
        }
        cJSON *shape = cJSON_GetObjectItem(it, "shape"), *stride = cJSON_GetObjectItem(it, "stride");
        int ok = t->ndim == cJSON_GetArraySize(shape);
        for (int d = 0; ok && d < t->ndim; d++)
            ok = t->shape[d] == (int64_t)cJSON_GetArrayItem(shape, d)->valuedouble &&
                 t->stride[d] == (int64_t)cJSON_GetArrayItem(stride, d)->valuedouble;
        ok = ok && t->storage_offset == (int64_t)cJSON_GetObjectItem(it, "storage_offset")->valuedouble;
        ok = ok && t->storage_numel == (int64_t)cJSON_GetObjectItem(it, "storage_numel")->valuedouble;
        const char *dt = cJSON_GetObjectItem(it, "dtype")->valuestring;
        ok = ok && (t->dtype == CP_W_F32 ? !strcmp(dt, "float32") : !strcmp(dt, "int64"));
        char hex[65];
        cp_sha256_buf(t->data, t->numel * (t->dtype == CP_W_F32 ? 4 : 8), hex);
        ok = ok && !strcmp(hex, cJSON_GetObjectItem(it, "sha256_le")->valuestring);
        double sum = 0;
        for (size_t i = 0; i < t->numel; i++)
            sum += t->dtype == CP_W_F32 ? ((float *)t->data)[i] : (double)((int64_t *)t->data)[i];
        double ref = cJSON_GetObjectItem(it, "sum")->valuedouble;
        ok = ok && fabs(sum - ref) <= 1e-9 * (1 + fabs(ref));
        if (!ok) {
            CHECKF(0, "%s: tensor %s differs (sha %s)", wname, key, hex);
            bad++;
        }
    }
    CHECKF(bad == 0, "%s: %d tensors differ", wname, bad);
    cJSON_Delete(root);
    cp_weights_free(w);
}

/* Round trip through our zip writer. */
static void test_save_roundtrip(void)
{
    cp_weights *w = NULL, *r = NULL;
    CHECK_OK(cp_weights_load(shared_path("golden/weights/cpsam_tiny_s3.pth"), &w));
    if (!w)
        return;
    const char *out = tmp_path("resaved.pth");
    CHECK_OK(cp_weights_save(w, out));
    CHECK_OK(cp_weights_load(out, &r));
    if (r) {
        CHECK(r->n == w->n && !r->legacy);
        int same = r->n == w->n;
        for (size_t k = 0; same && k < w->n; k++) {
            const cp_wtensor *a = &w->t[k], *b = &r->t[k];
            same = !strcmp(a->name, b->name) && a->ndim == b->ndim && a->numel == b->numel &&
                   !memcmp(a->shape, b->shape, sizeof a->shape) &&
                   !memcmp(a->data, b->data, a->numel * 4);
        }
        CHECK(same);
        /* zip data offsets are 64-byte aligned and the pickle is found under archive/ */
        size_t n;
        char *p = test_slurp(out, &n);
        CHECK(p && n > 64 && !memcmp(p, "PK\3\4", 4));
        free(p);
    }
    cp_weights_free(r);
    cp_weights_free(w);
}

/* ---- malformed files --------------------------------------------------- */

static void expect_fail(const char *path, const char *what, const char *needle)
{
    cp_weights *w = (cp_weights *)1;
    int rc = cp_weights_load(path, &w);
    CHECKF(rc != 0 && w == NULL, "%s: loaded", what);
    const char *m = cp_errmsg();
    CHECKF(strstr(m, path) != NULL, "%s: message without the file: %s", what, m);
    CHECKF(!strchr(m, '\n'), "%s: multi-line message", what);
    if (needle)
        CHECKF(strstr(m, needle) != NULL, "%s: message '%s' lacks '%s'", what, m, needle);
}

static void test_bad_files(void)
{
    size_t n;
    char *zipb = test_slurp(shared_path("golden/weights/cpsam_tiny_s3.pth"), &n);
    char *leg = NULL;
    size_t nl = 0;
    leg = test_slurp(shared_path("golden/weights/cpnet_nucleilike_s2_legacy.pth"), &nl);
    CHECK(zipb && leg);
    if (!zipb || !leg)
        return;
    const char *p = tmp_path("cut.pth");
    /* truncated zip at several points: inside headers, inside data, before the directory */
    size_t cuts[] = {0, 3, 30, 100, 1000, n / 3, n / 2, n - 100, n - 22, n - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        spit(p, zipb, cuts[i]);
        expect_fail(p, "truncated zip", NULL);
    }
    size_t lcuts[] = {1, 10, 50, 300, 5000, nl / 2, nl - 8, nl - 1};
    for (size_t i = 0; i < sizeof lcuts / sizeof *lcuts; i++) {
        spit(p, leg, lcuts[i]);
        expect_fail(p, "truncated legacy", NULL);
    }
    spit(p, "hello world, not a model\n", 25);
    expect_fail(p, "text file", "not a torch.save file");
    spit(p, "PK\3\4garbage", 11);
    expect_fail(p, "bad zip", "zip");
    /* a pickle that asks for os.system */
    static const char evil[] = "\x80\x02" "cos\nsystem\n" "X\x04\x00\x00\x00true" "\x85R.";
    spit(p, evil, sizeof evil - 1);
    expect_fail(p, "evil global", "os.system");
    /* the same trick inside a zip container: replace data.pkl of a real file */
    cp_weights *w = NULL;
    /* corrupt every byte of the legacy pickle header region once (no crash) */
    for (size_t i = 0; i < 2000; i += 7) {
        char save = leg[i];
        leg[i] = (char)(leg[i] ^ 0x5a);
        spit(p, leg, 4000); /* small prefix: must fail, never crash */
        cp_weights_load(p, &w);
        cp_weights_free(w);
        w = NULL;
        leg[i] = save;
    }
    /* byte flips everywhere in a small zip of our own, and in the legacy pickle:
     * any outcome but a crash or a leak is fine (run under ASan) */
    cp_weights *sm;
    cp_weights_new(&sm);
    int64_t s23[2] = {2, 3}, s4[4] = {1, 2, 2, 2};
    float f6[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    int64_t i1 = 7;
    cp_weights_add(sm, "module.a.weight", 2, s23, CP_W_F32, f6);
    cp_weights_add(sm, "b.num_batches_tracked", 0, NULL, CP_W_I64, &i1);
    cp_weights_add(sm, "c", 4, s4, CP_W_F32, f6);
    const char *sp = tmp_path("small.pth");
    CHECK_OK(cp_weights_save(sm, sp));
    cp_weights_free(sm);
    size_t ns;
    char *small = test_slurp(sp, &ns);
    CHECK_OK(cp_weights_load(sp, &w));
    CHECK(w && w->n == 3 && !strcmp(w->t[0].name, "a.weight") && w->t[1].dtype == CP_W_I64 &&
          w->t[1].ndim == 0 && ((int64_t *)w->t[1].data)[0] == 7 && ((float *)w->t[2].data)[7] == 8);
    cp_weights_free(w);
    int loaded = 0, failed = 0;
    static const unsigned char flips[] = {0x01, 0x80, 0xff, 0x20};
    for (size_t i = 0; small && i < ns; i++)
        for (size_t f = 0; f < sizeof flips; f++) {
            small[i] = (char)(small[i] ^ flips[f]);
            w = NULL;
            if (cp_weights_load_mem(small, ns, "fuzz.pth", &w) == 0)
                loaded++;
            else
                failed++;
            cp_weights_free(w);
            small[i] = (char)(small[i] ^ flips[f]);
        }
    for (size_t i = 0; i < ns; i++) { /* every truncation */
        w = NULL;
        CHECK(cp_weights_load_mem(small, i, "cut.pth", &w) != 0 && !w);
    }
    printf("small zip fuzz: %d loaded, %d refused\n", loaded, failed);
    /* an evil global inside a zip container (same length, so the zip stays valid
     * apart from the CRC: the check must refuse it either way, naming the global
     * once the CRC is made to match) */
    char *hit = small ? memmem(small, ns, "collections\nOrderedDict\n", 24) : NULL;
    CHECK(hit != NULL);
    if (hit) {
        memcpy(hit, "subprocess\ncheck_output\n", 24);
        w = NULL;
        CHECK(cp_weights_load_mem(small, ns, "evil.pth", &w) != 0 && !w);
        CHECKF(strstr(cp_errmsg(), "CRC"), "%s", cp_errmsg());
        /* fix the CRC of data.pkl in the local and central headers */
        char *pk = memmem(small, ns, "archive/data.pkl", 16);
        CHECK(pk != NULL);
        if (pk) {
            unsigned char *lh = (unsigned char *)pk - 30;
            size_t doff = 30 + 16 + (size_t)(lh[28] | lh[29] << 8);
            uint32_t sz = (uint32_t)(lh[18] | lh[19] << 8 | lh[20] << 16 | (uint32_t)lh[21] << 24);
            uint32_t crc = (uint32_t)crc32(0L, lh + doff, sz);
            char *cd = memmem(pk + 16, ns - (size_t)(pk + 16 - small), "archive/data.pkl", 16);
            CHECK(cd != NULL);
            for (int k = 0; k < 4 && cd; k++) {
                lh[14 + k] = (unsigned char)(crc >> (8 * k));
                ((unsigned char *)cd - 46)[16 + k] = (unsigned char)(crc >> (8 * k));
            }
            CHECK(cp_weights_load_mem(small, ns, "evil.pth", &w) != 0 && !w);
            CHECKF(strstr(cp_errmsg(), "subprocess.check_output") && strstr(cp_errmsg(), "evil.pth"),
                   "%s", cp_errmsg());
        }
    }
    /* the same archive with a zip64 end record (torch writes one past 4 GB) */
    free(small);
    small = test_slurp(sp, &ns);
    if (small && ns > 22) {
        const unsigned char *eo = (const unsigned char *)small + ns - 22;
        CHECK(eo[0] == 'P' && eo[1] == 'K' && eo[2] == 5 && eo[3] == 6);
        unsigned cnt = eo[10] | eo[11] << 8;
        uint32_t cdsz = eo[12] | eo[13] << 8 | eo[14] << 16 | (uint32_t)eo[15] << 24;
        uint32_t cdoff = eo[16] | eo[17] << 8 | eo[18] << 16 | (uint32_t)eo[19] << 24;
        size_t base = ns - 22;
        unsigned char *z = calloc(1, base + 56 + 20 + 22);
        memcpy(z, small, base);
        unsigned char *r = z + base;
        uint64_t v[] = {0x06064b50u, 44, 0, 0, cnt, cnt, cdsz, cdoff};
        int widths[] = {4, 8, 4, 8, 8, 8, 8, 8}; /* sig, size, versions, disks, counts, cd */
        for (int f = 0, o = 0; f < 8; o += widths[f], f++)
            for (int k = 0; k < widths[f]; k++)
                r[o + k] = (unsigned char)(v[f] >> (8 * k));
        unsigned char *loc = r + 56;
        loc[0] = 'P'; loc[1] = 'K'; loc[2] = 6; loc[3] = 7;
        for (int k = 0; k < 8; k++)
            loc[8 + k] = (unsigned char)((uint64_t)base >> (8 * k));
        loc[16] = 1;
        unsigned char *e = loc + 20;
        memcpy(e, eo, 22);
        memset(e + 8, 0xff, 12); /* counts, size and offset "in the zip64 record" */
        cp_weights *w64 = NULL;
        CHECK_OK(cp_weights_load_mem(z, base + 98, "zip64.pth", &w64));
        CHECK(w64 && w64->n == 3 && ((float *)w64->t[2].data)[7] == 8);
        cp_weights_free(w64);
        loc[0] = 'X'; /* locator gone */
        w64 = NULL;
        CHECK(cp_weights_load_mem(z, base + 98, "zip64.pth", &w64) != 0 && !w64);
        CHECKF(strstr(cp_errmsg(), "zip64"), "%s", cp_errmsg());
        free(z);
    }
    /* a damaged tensor byte */
    free(small);
    small = test_slurp(sp, &ns);
    if (small) {
        char *d8 = memmem(small, ns, f6, sizeof f6); /* tensor "c" (a.weight holds 6 floats) */
        CHECK(d8 != NULL);
        if (d8) {
            d8[5] ^= 1;
            w = NULL;
            CHECK(cp_weights_load_mem(small, ns, "damaged.pth", &w) != 0 && !w);
            CHECKF(strstr(cp_errmsg(), "damaged.pth") && strstr(cp_errmsg(), "archive/data/2") &&
                   strstr(cp_errmsg(), "CRC"), "%s", cp_errmsg());
        }
    }
    CHECK(failed > 0);
    free(small);
    size_t pre = nl < 80000 ? nl : 80000;
    for (size_t i = 0; i < 60000 && i < pre; i += 199)
        for (size_t f = 0; f < sizeof flips; f += 2) {
            leg[i] = (char)(leg[i] ^ flips[f]);
            w = NULL;
            CHECK(cp_weights_load_mem(leg, pre, "legacy-prefix.pth", &w) != 0);
            cp_weights_free(w);
            leg[i] = (char)(leg[i] ^ flips[f]);
        }
    free(zipb);
    free(leg);
}

/* Models: wrong keys and wrong shapes, made with our own writer. */
static void test_bad_models(void)
{
    cp_weights *w = NULL;
    CHECK_OK(cp_weights_load(shared_path("golden/weights/cpsam_tiny_s3.pth"), &w));
    if (!w)
        return;
    const char *p = tmp_path("renamed.pth");
    cp_model *m = NULL;
    /* renamed key */
    char *old = w->t[10].name;
    char keep[256];
    snprintf(keep, sizeof keep, "%s", old);
    w->t[10].name = strdup("encoder.blocks.0.attn.qkv.weigth");
    CHECK_OK(cp_weights_save(w, p));
    CHECK(cp_model_load(p, NULL, &m) != 0 && m == NULL);
    CHECKF(strstr(cp_errmsg(), p) && strstr(cp_errmsg(), keep), "%s (want %s)", cp_errmsg(), keep);
    free(w->t[10].name);
    w->t[10].name = old;
    /* wrong shape */
    cp_wtensor *t = (cp_wtensor *)cp_weights_get(w, "encoder.neck.2.weight");
    CHECK(t != NULL);
    if (t) {
        t->shape[3] = 1;
        t->shape[2] = 9;
        CHECK_OK(cp_weights_save(w, p));
        CHECK(cp_model_load(p, NULL, &m) != 0 && m == NULL);
        CHECKF(strstr(cp_errmsg(), p) && strstr(cp_errmsg(), "encoder.neck.2.weight") &&
               strstr(cp_errmsg(), "(256, 256, 9, 1)"), "%s", cp_errmsg());
        t->shape[3] = 3;
        t->shape[2] = 3;
    }
    cp_weights_free(w);
    /* CPnet with a wrong shape and a missing key */
    CHECK_OK(cp_weights_load(shared_path("golden/weights/cpnet_cyto3like_s1.pth"), &w));
    if (!w)
        return;
    t = (cp_wtensor *)cp_weights_get(w, "upsample.up.res_up_1.conv.conv_2.full.weight");
    if (t) {
        t->shape[1] = 128;
        t->shape[0] = 128;
        CHECK_OK(cp_weights_save(w, p));
        CHECK(cp_model_load(p, NULL, &m) != 0 && m == NULL);
        CHECKF(strstr(cp_errmsg(), "upsample.up.res_up_1.conv.conv_2.full.weight"), "%s", cp_errmsg());
        t->shape[1] = 256;
        t->shape[0] = 64;
    }
    w->t[5].name[0] = 'X';
    CHECK_OK(cp_weights_save(w, p));
    CHECK(cp_model_load(p, NULL, &m) != 0 && m == NULL);
    w->t[5].name[0] = 'd';
    CHECKF(strstr(cp_errmsg(), w->t[5].name), "%s", cp_errmsg());
    cp_weights_free(w);
    /* neither architecture */
    cp_weights_new(&w);
    int64_t one = 1;
    float v = 30;
    cp_weights_add(w, "diam_mean", 1, &one, CP_W_F32, &v);
    CHECK_OK(cp_weights_save(w, p));
    CHECK(cp_model_load(p, NULL, &m) != 0);
    CHECKF(strstr(cp_errmsg(), "W2") && strstr(cp_errmsg(), "output.2.weight"), "%s", cp_errmsg());
    cp_weights_free(w);
}

static int bench(void);
static int bench_vit(void);

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ---- forward passes against Cellpose's own tiles ---------------------- */

static void compare(const char *what, const float *got, const float *ref, size_t n)
{
    double maxd = 0, maxx = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        if (!(d <= maxd)) {
            maxd = d;
            at = i;
        }
        if (fabs(ref[i]) > maxx)
            maxx = fabs(ref[i]);
    }
    printf("%s: max|d| %.3g (at %zu), max|x| %.3g\n", what, maxd, at, maxx);
    CHECKF(maxd <= 1e-4 && maxd <= 1e-5 * maxx, "%s: max|d| %g at %zu (got %g, want %g), max|x| %g",
           what, maxd, at, (double)got[at], (double)ref[at], maxx);
}

static void test_forward(const char *run, const char *weights, int ntiles, int with_style)
{
    char rel[512];
    cp_model *m = NULL;
    snprintf(rel, sizeof rel, "golden/weights/%s", weights);
    CHECK_OK(cp_model_load(shared_path(rel), NULL, &m));
    if (!m)
        return;
    const cp_model_info *info = cp_model_get_info(m);
    int nd, nd2;
    long dims[8], dims2[8];
    snprintf(rel, sizeof rel, "golden/net/%s/tiles_in.npy.gz", run);
    float *tin = read_npy_f32(shared_path(rel), &nd, dims);
    snprintf(rel, sizeof rel, "golden/net/%s/tiles_out.npy", run);
    float *tout = read_npy_f32(shared_path(rel), &nd2, dims2);
    CHECKF(tin && tout && nd == 4 && nd2 == 4, "%s: golden tiles", run);
    if (!tin || !tout) {
        cp_model_free(m);
        return;
    }
    CHECK(dims[1] == info->nchan && dims2[1] == info->nout && dims[0] >= ntiles);
    int b = (int)dims[2];
    size_t nout = (size_t)ntiles * (size_t)info->nout * (size_t)b * (size_t)b;
    float *out = calloc(nout, sizeof *out);
    float *style = calloc((size_t)ntiles * (size_t)info->nstyle, sizeof *style);
    CHECK_OK(cp_model_forward(m, tin, ntiles, b, b, out, style));
    char what[600];
    snprintf(what, sizeof what, "%s: %d tile(s)", run, ntiles);
    compare(what, out, tout, nout);
    if (with_style) {
        snprintf(rel, sizeof rel, "golden/net/%s/tiles_style.npy", run);
        float *sref = read_npy_f32(shared_path(rel), &nd, dims);
        CHECK(sref && dims[1] == info->nstyle);
        if (sref) {
            snprintf(what, sizeof what, "%s: style", run);
            compare(what, style, sref, (size_t)ntiles * (size_t)info->nstyle);
        }
        free(sref);
    }
    /* a batch of one gives the same numbers as the first tile of a batch */
    if (ntiles > 1) {
        float *one = calloc(nout / (size_t)ntiles, sizeof *one);
        CHECK_OK(cp_model_forward(m, tin + (size_t)info->nchan * (size_t)b * (size_t)b, 1, b, b, one, NULL));
        snprintf(what, sizeof what, "%s: tile 1 alone", run);
        compare(what, one, tout + nout / (size_t)ntiles, nout / (size_t)ntiles);
        free(one);
    }
    /* the first tile twice in one batch: both copies give the golden output */
    if (ntiles == 1) {
        size_t tin1 = (size_t)info->nchan * (size_t)b * (size_t)b;
        float *in2 = malloc(2 * tin1 * sizeof *in2), *out2 = malloc(2 * nout * sizeof *out2);
        memcpy(in2, tin, tin1 * sizeof *in2);
        memcpy(in2 + tin1, tin, tin1 * sizeof *in2);
        CHECK_OK(cp_model_forward(m, in2, 2, b, b, out2, NULL));
        snprintf(what, sizeof what, "%s: tile 0 twice, second copy", run);
        compare(what, out2 + nout, tout, nout);
        free(in2);
        free(out2);
    }
    /* wrong tile sizes are refused */
    CHECK(cp_model_forward(m, tin, 1, b - 4, b, out, NULL) != 0);
    free(out);
    free(style);
    free(tin);
    free(tout);
    cp_model_free(m);
}

/* Legacy weights, a tile smaller than 224: one 176x176 tile is the whole
 * padded image, so Cellpose's stitched net_out is this tile cropped at 15. */
static void test_forward_legacy(void)
{
    const char *run = "golden/net/synth256_s0__nucleilike__d30/";
    char rel[256];
    cp_model *m = NULL;
    CHECK_OK(cp_model_load(shared_path("golden/weights/cpnet_nucleilike_s2_legacy.pth"), NULL, &m));
    int nd, nd2;
    long d[8], d2[8];
    snprintf(rel, sizeof rel, "%snet_in_padded.npy.gz", run);
    float *in = read_npy_f32(shared_path(rel), &nd, d);
    snprintf(rel, sizeof rel, "%snet_out.npy", run);
    float *ref = read_npy_f32(shared_path(rel), &nd2, d2);
    CHECK(m && in && ref && nd == 3 && d[0] == 2 && d[1] == 176 && nd2 == 3 && d2[0] == 145 && d2[2] == 3);
    if (m && in && ref) {
        float *out = malloc(3 * 176 * 176 * sizeof *out), *crop = malloc(145 * 145 * 3 * sizeof *crop);
        CHECK_OK(cp_model_forward(m, in, 1, 176, 176, out, NULL));
        for (int y = 0; y < 145; y++)
            for (int x = 0; x < 145; x++)
                for (int c = 0; c < 3; c++)
                    crop[(y * 145 + x) * 3 + c] = out[(c * 176 + y + 15) * 176 + x + 15];
        compare("synth256_s0__nucleilike__d30 (legacy weights, 176 tile)", crop, ref, 145 * 145 * 3);
        /* same bytes whatever the thread count */
        cp_model *m1 = NULL;
        cp_model_opts o = {CP_DEVICE_CPU, 1, CP_PRECISION_FP32};
        CHECK_OK(cp_model_load(shared_path("golden/weights/cpnet_nucleilike_s2_legacy.pth"), &o, &m1));
        if (m1) {
            float *out1 = malloc(3 * 176 * 176 * sizeof *out1);
            int omp_before = omp_get_max_threads();
            CHECK_OK(cp_model_forward(m1, in, 1, 176, 176, out1, NULL));
            CHECKF(omp_get_max_threads() == omp_before, "OpenMP threads %d, was %d",
                   omp_get_max_threads(), omp_before);
            size_t ndiff = 0;
            for (size_t i = 0; i < 3 * 176 * 176; i++)
                ndiff += out1[i] != out[i];
            printf("1 thread vs all cores: %zu values differ\n", ndiff);
            CHECK(ndiff == 0);
            free(out1);
            cp_model_free(m1);
        }
        free(out);
        free(crop);
    }
    free(in);
    free(ref);
    cp_model_free(m);
}

/* The same bytes whatever the thread count: three tiles through each kind of
 * network with 1, 2 and 3 threads (more threads than tiles included). Which
 * kernels libtorch's libraries pick depends on the CPU, so tests/run also runs
 * this binary with OpenBLAS's Haswell kernels (those of AMD Zen CPUs), under
 * which a thread-count-dependent forward pass differs here too. */
static void test_threads(const char *weights, int tile)
{
    char what[256];
    const int n = 3, threads[] = {1, 2, 3};
    float *ref = NULL, *ref_style = NULL;
    size_t nin = 0, nout = 0;
    float *in = NULL;
    for (int k = 0; k < 3; k++) {
        cp_model *m = NULL;
        cp_model_opts o = {CP_DEVICE_CPU, threads[k], CP_PRECISION_FP32};
        CHECK_OK(cp_model_load(shared_path(weights), &o, &m));
        if (!m)
            break;
        const cp_model_info *i = cp_model_get_info(m);
        if (!in) {
            nin = (size_t)n * i->nchan * tile * tile;
            nout = (size_t)n * i->nout * tile * tile;
            in = malloc(nin * sizeof *in);
            uint64_t r = 88172645463325252ULL;
            for (size_t j = 0; j < nin; j++) {
                r ^= r << 13, r ^= r >> 7, r ^= r << 17;
                in[j] = (float)(r >> 40) / (float)(1 << 24) * 4.0f - 1.0f;
            }
        }
        float *out = malloc(nout * sizeof *out), *style = calloc((size_t)n * i->nstyle, sizeof *style);
        CHECK_OK(cp_model_forward(m, in, n, tile, tile, out, style));
        if (!ref) {
            ref = out;
            ref_style = style;
        } else {
            size_t nd = 0, ns = 0;
            for (size_t j = 0; j < nout; j++)
                nd += memcmp(&out[j], &ref[j], sizeof *out) != 0;
            for (size_t j = 0; j < (size_t)n * i->nstyle; j++)
                ns += memcmp(&style[j], &ref_style[j], sizeof *style) != 0;
            snprintf(what, sizeof what, "%s: %d threads vs 1", weights, threads[k]);
            CHECKF(nd == 0 && ns == 0, "%s: %zu outputs and %zu style values differ", what, nd, ns);
            free(out);
            free(style);
        }
        cp_model_free(m);
    }
    free(ref);
    free(ref_style);
    free(in);
}

static void test_device(void)
{
    const char *w = shared_path("golden/weights/cpsam_tiny_s3.pth");
    char path[4096];
    snprintf(path, sizeof path, "%s", w);
    cp_model *m = NULL;
    setenv("CELLPOSE_DEVICE", "tpu", 1);
    CHECK(cp_model_load(path, NULL, &m) == CP_EINVAL && !m);
    CHECKF(strstr(cp_errmsg(), "CELLPOSE_DEVICE") != NULL, "%s", cp_errmsg());
    setenv("CELLPOSE_DEVICE", "cuda", 1);
    int rc = cp_model_load(path, NULL, &m);
    /* this libtorch is CPU-only here; with CUDA the load simply succeeds */
    CHECKF(rc == 0 || (strstr(cp_errmsg(), "CUDA") && strstr(cp_errmsg(), path)), "%s", cp_errmsg());
    cp_model_free(m);
    unsetenv("CELLPOSE_DEVICE");
}

static void test_info(void)
{
    cp_model *m = NULL;
    CHECK_OK(cp_model_load(shared_path("golden/weights/cpnet_nucleilike_s2_legacy.pth"), NULL, &m));
    if (m) {
        const cp_model_info *i = cp_model_get_info(m);
        CHECK(i->arch == CP_ARCH_CPNET && i->nchan == 2 && i->nout == 3 && i->bsize == 224);
        CHECK(i->nlevels == 5 && i->nbase[1] == 32 && i->nbase[4] == 256 && i->nstyle == 256);
        CHECK_NEAR(i->diam_mean, 17, 0);
        CHECK(i->nparams == 6610430);
        /* sha256sum of the file; above 16 MB it is hashed on a second
           thread while the file is parsed */
        CHECK(!strcmp(i->sha256, "3d8e77fdb121d10c28ed731e0b16fb6b4703b7f8cd472bfeeff48efd8a149205"));
        cp_model_free(m);
    }
    CHECK_OK(cp_model_load(shared_path("golden/weights/cpsam_tiny_s3.pth"), NULL, &m));
    if (m) {
        const cp_model_info *i = cp_model_get_info(m);
        CHECK(i->arch == CP_ARCH_CPSAM && i->nchan == 3 && i->nout == 3 && i->bsize == 256);
        CHECK(i->embed == 64 && i->depth == 4 && i->heads == 4 && i->patch == 8);
        CHECK(i->nparams == 981122);
        CHECK_NEAR(i->diam_mean, 30, 0);
        CHECK(!strcmp(i->sha256, "70c847e25e609eae42d44640867aab8fcd4cb514b9d296d208cb9bb7b4e9dae3"));
        cp_model_free(m);
    }
    CHECK_OK(cp_model_load(shared_path("golden/weights/cpnet_cyto3like_s1.pth"), NULL, &m));
    if (m) {
        CHECK(!strcmp(cp_model_get_info(m)->sha256,
                      "c48eacf721ec2e7e97cb7e24cc7cbb2f505d40bd235c4c023da5824ed16813ed"));
        cp_model_free(m);
    }
}

/* Each part with its time, so slow parts show in the log. */
#define T(call)                                                                \
    do {                                                                       \
        double t0_ = now_s();                                                  \
        call;                                                                  \
        printf("%-60s %.1f s\n", #call, now_s() - t0_);                        \
    } while (0)

int main(void)
{
    if (getenv("CP_BENCH") && *getenv("CP_BENCH") == '1')
        return bench();
    if (getenv("CP_BENCH") && !strcmp(getenv("CP_BENCH"), "vit"))
        return bench_vit();
    /* CP_NET_KERNELS_ONLY=1 (tests/run's rerun under other BLAS kernels):
       only what the GEMM kernels can change */
    int kernels_only = getenv("CP_NET_KERNELS_ONLY") && *getenv("CP_NET_KERNELS_ONLY") == '1';
    if (!kernels_only) {
        T(test_info());
        T(test_bad_models());
    }
    /* under the sanitizers the forward runs inside libtorch, which is not
       instrumented: the legacy CPnet and cpsam runs cover the shim's paths */
    const char *san = getenv("CP_SANITIZERS");
    int light = san && *san == '1';
    if (!light)
        T(test_forward("synth256_s0__cyto3like__d30", "cpnet_cyto3like_s1.pth", 2, 1));
    T(test_forward("synth256_s0__cpsam_tiny__dnone", "cpsam_tiny_s3.pth", 1, 0));
    T(test_forward_legacy());
    if (!light)
        T(test_threads("golden/weights/cpnet_cyto3like_s1.pth", 224));
    T(test_threads("golden/weights/cpsam_tiny_s3.pth", 256));
    if (kernels_only)
        return test_result();
    T(test_device());
    T(check_against_json("cpnet_cyto3like_s1"));
    T(check_against_json("cpnet_nucleilike_s2_legacy"));
    T(check_against_json("cpsam_tiny_s3"));
    T(test_save_roundtrip());
    T(test_bad_files());
    return test_result();
}

/* ---- benchmark (CP_BENCH=1): not a test -------------------------------- */


/* Multiply-accumulates of the convolutions of a CPnet on one b×b tile
 * (BN, ReLU, additions and the style Linear layers are left out). */
static double cpnet_macs(const cp_model_info *i, int b)
{
    const int *nb = i->nbase;
    int L = i->nlevels - 1;
    double macs = 0;
    for (int n = 0; n < L; n++) {
        double hw = (double)(b >> n) * (double)(b >> n);
        double cin = nb[n], cout = nb[n + 1];
        macs += hw * (cout * cin * 9 + 3 * cout * cout * 9 + cout * cin);
        double uin = n + 2 <= L ? nb[n + 2] : nb[L], uout = nb[n + 1];
        macs += hw * (uout * uin * 9 + 3 * uout * uout * 9 + uout * uin);
    }
    macs += (double)b * b * nb[1] * i->nout;
    return macs;
}

/* The network's convolutions one by one: (cin, cout, k, side) and count. */
typedef struct convshape { int cin, cout, k, side, count; } convshape;

static int cpnet_convs(const cp_model_info *i, int b, convshape *v)
{
    const int *nb = i->nbase;
    int L = i->nlevels - 1, n = 0;
    for (int l = 0; l < L; l++) {
        int side = b >> l, cin = nb[l], cout = nb[l + 1];
        int uin = l + 2 <= L ? nb[l + 2] : nb[L], uout = nb[l + 1];
        v[n++] = (convshape){cin, cout, 3, side, 1};
        v[n++] = (convshape){cout, cout, 3, side, 3};
        v[n++] = (convshape){cin, cout, 1, side, 1};
        v[n++] = (convshape){uin, uout, 3, side, 1};
        v[n++] = (convshape){uout, uout, 3, side, 3};
        v[n++] = (convshape){uin, uout, 1, side, 1};
    }
    v[n++] = (convshape){nb[1], i->nout, 1, b, 1};
    return n;
}

/* Multiply-accumulates of a Cellpose-SAM tile: per block the qkv, proj and
 * MLP (width 4E) products and the two N x N attention products, then the
 * neck (1x1 and 3x3 convolutions to 256) and the output 1x1 convolution. */
static double vit_macs(const cp_model_info *i)
{
    double E = i->embed, N = (double)(i->bsize / i->patch) * (i->bsize / i->patch);
    return i->depth * N * (12 * E * E + 2 * N * E) + N * (256 * E + 256 * 256 * 9 + 192 * 256);
}

/* CPU time of the whole process (all threads), seconds. */
static double cpu_s(void)
{
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return (double)r.ru_utime.tv_sec + 1e-6 * r.ru_utime.tv_usec + (double)r.ru_stime.tv_sec +
           1e-6 * r.ru_stime.tv_usec;
}

static long peak_rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6))
            kb = atol(line + 6);
    if (f)
        fclose(f);
    return kb;
}

/* CP_BENCH=vit CP_BENCH_WEIGHTS=cpsam.pth [CP_BENCH_PRECISION=bf16]: one
 * tile per thread (as cpseg runs them), best of CP_BENCH_REPS rounds
 * alternating with the fp32 matrix-multiply peak probe (each thread its own
 * one-thread Linear of the MLP's shape at the same time), so load from
 * other processes biases neither; peak RSS of this process (weights, one
 * tile's activations per thread, the probe's 20 MB). */
static int bench_vit(void)
{
    const char *th = getenv("CP_THREADS"), *wp = getenv("CP_BENCH_WEIGHTS"), *pr = getenv("CP_BENCH_PRECISION");
    int threads = th && atoi(th) > 0 ? atoi(th) : (int)sysconf(_SC_NPROCESSORS_ONLN);
    int reps = getenv("CP_BENCH_REPS") ? atoi(getenv("CP_BENCH_REPS")) : 2;
    cp_model_opts o = {CP_DEVICE_CPU, threads, pr && !strcmp(pr, "bf16") ? CP_PRECISION_BF16 : CP_PRECISION_FP32};
    cp_model *m = NULL;
    double t0 = now_s();
    if (!wp || cp_model_load(wp, &o, &m)) {
        fprintf(stderr, "bench: %s\n", wp ? cp_errmsg() : "CP_BENCH_WEIGHTS not set");
        return 1;
    }
    double load = now_s() - t0;
    const cp_model_info *info = cp_model_get_info(m);
    int b = info->bsize, n = threads;
    size_t nin = (size_t)n * info->nchan * b * b, nout = (size_t)n * info->nout * b * b;
    float *in = malloc(nin * 4), *out = malloc(nout * 4);
    uint32_t r = 12345;
    for (size_t k = 0; k < nin; k++) {
        r = r * 1664525u + 1013904223u;
        in[k] = (float)(r >> 8) / 16777216.0f * 4 - 1;
    }
    int E = info->embed, N = (b / info->patch) * (b / info->patch);
    double tv = 1e30, tp = 1e30, tb = 1e30, cv = 1e30, cp = 1e30, cb = 1e30, c;
    for (int rep = 0; rep < reps; rep++) {
        t0 = now_s();
        double u0 = cpu_s();
        if (cp_model_forward(m, in, n, b, b, out, NULL)) {
            fprintf(stderr, "bench: %s\n", cp_errmsg());
            return 1;
        }
        tv = fmin(tv, now_s() - t0);
        cv = fmin(cv, (cpu_s() - u0) / n);
        double t = cp_shim_time_matmul(N, E, 4 * E, 3, 0, threads, &c);
        if (t > 0) {
            tp = fmin(tp, t);
            cp = fmin(cp, c);
        }
        if (info->precision == CP_PRECISION_BF16 && (t = cp_shim_time_matmul(N, E, 4 * E, 3, 1, threads, &c)) > 0) {
            tb = fmin(tb, t);
            cb = fmin(cb, c);
        }
    }
    double g = 2 * vit_macs(info) * n / 1e9 / tv, peak = 2.0 * N * E * 4 * E * threads / 1e9 / tp;
    double gc = 2 * vit_macs(info) / 1e9 / cv, peakc = 2.0 * N * E * 4 * E / 1e9 / cp;
    double load_avg = -1;
    FILE *la = fopen("/proc/loadavg", "r");
    if (la) {
        if (fscanf(la, "%lf", &load_avg) != 1)
            load_avg = -1;
        fclose(la);
    }
    printf("net: Cellpose-SAM (E %d, depth %d, %d heads), %s, %d threads, one %dx%d tile per thread: "
           "%.2f s/tile (%.2f s per round of %d), %.1f GFLOP/s (%.2f TFLOP/tile); fp32 matmul peak "
           "%.1f GFLOP/s (%d one-thread %dx%dx%d Linear at once); ratio %.2f (goal >= 0.7 for fp32); "
           "load %.1f s, peak RSS %.0f MB; best of %d, load average %.1f\n",
           E, info->depth, info->heads, cp_precision_name(info->precision), threads, b, b, tv / n, tv, n, g,
           2 * vit_macs(info) / 1e12, peak, threads, N, E, 4 * E, g / peak, load, peak_rss_kb() / 1024.0,
           reps, load_avg);
    printf("net: the same in CPU time (what other processes' load inflates least): %.2f CPU s/tile, "
           "%.1f GFLOP per CPU second; fp32 matmul peak %.1f per CPU second; ratio %.2f\n", cv, gc, peakc,
           gc / peakc);
    if (tb < 1e30)
        printf("net: bf16 matmul peak (same probe) %.1f GFLOP/s = %.2fx the fp32 one (CPU time: %.1f per CPU "
               "second, %.2fx)\n", 2.0 * N * E * 4 * E * threads / 1e9 / tb, tp / tb, 2.0 * N * E * 4 * E / 1e9 / cb,
               cp / cb);
    free(in);
    free(out);
    cp_model_free(m);
    return 0;
}

static int bench(void)
{
    const char *th = getenv("CP_THREADS"), *pr = getenv("CP_BENCH_PRECISION");
    cp_model_opts o = {CP_DEVICE_CPU, th ? atoi(th) : 0,
                       pr && !strcmp(pr, "bf16") ? CP_PRECISION_BF16 : CP_PRECISION_FP32};
    cp_model *m = NULL;
    if (cp_model_load(shared_path("golden/weights/cpnet_cyto3like_s1.pth"), &o, &m)) {
        fprintf(stderr, "bench: %s\n", cp_errmsg());
        return 1;
    }
    const cp_model_info *info = cp_model_get_info(m);
    int b = 224, n = 8, reps = getenv("CP_BENCH_REPS") ? atoi(getenv("CP_BENCH_REPS")) : 3;
    size_t nin = (size_t)n * 2 * b * b, nout = (size_t)n * 3 * b * b;
    float *in = malloc(nin * 4), *out = malloc(nout * 4);
    uint32_t r = 12345;
    for (size_t k = 0; k < nin; k++) {
        r = r * 1664525u + 1013904223u;
        in[k] = (float)(r >> 8) / 16777216.0f * 4 - 1;
    }
    cp_model_forward(m, in, n, b, b, out, NULL); /* warm-up */
    /* the best this libtorch does: large 3x3 convolutions like the net's own,
     * in both layouts; net and probes alternate and the best run of each
     * counts, so load from other processes biases neither side */
    struct { int c, hw; } cv[] = {{64, 112}, {128, 56}, {256, 28}};
    double per_batch = 1e30, best[6], conv_only = 1e30;
    convshape cs[64];
    int ncs = cpnet_convs(info, b, cs);
    for (int k = 0; k < 6; k++)
        best[k] = 1e30;
    for (int rep = 0; rep < reps; rep++) {
        double t0 = now_s();
        if (cp_model_forward(m, in, n, b, b, out, NULL)) {
            fprintf(stderr, "bench: %s\n", cp_errmsg());
            return 1;
        }
        double t = now_s() - t0;
        if (t < per_batch)
            per_batch = t;
        for (int k = 0; k < 6; k++) {
            t = cp_shim_time_conv(n, cv[k % 3].c, cv[k % 3].c, cv[k % 3].hw, cv[k % 3].hw, 3, 1, k >= 3, o.threads);
            if (t > 0 && t < best[k])
                best[k] = t;
        }
        double sum = 0;
        for (int k = 0; k < ncs; k++)
            sum += cs[k].count * cp_shim_time_conv(n, cs[k].cin, cs[k].cout, cs[k].side, cs[k].side,
                                                   cs[k].k, 1, 1, o.threads);
        if (sum < conv_only)
            conv_only = sum;
    }
    double gflop = 2 * cpnet_macs(info, b) * n / 1e9;
    double peak = 0;
    for (int k = 0; k < 6; k++) {
        int c = cv[k % 3].c, hw = cv[k % 3].hw;
        double g = 2.0 * n * c * c * 9.0 * hw * hw / 1e9 / best[k];
        printf("net: peak probe conv3x3 %dx%dx%dx%d -> %d (%s): %.1f GFLOP/s\n", n, c, hw, hw, c,
               k >= 3 ? "channels-last" : "NCHW", g);
        if (g > peak)
            peak = g;
    }
    double load = -1;
    FILE *la = fopen("/proc/loadavg", "r");
    if (la) {
        if (fscanf(la, "%lf", &load) != 1)
            load = -1;
        fclose(la);
    }
    printf("net: best of %d runs; load average %.1f on %ld cores\n", reps, load, sysconf(_SC_NPROCESSORS_ONLN));
    /* a 1024x1024 image at diameter 30: padded 1040, 6x6 tiles of 224 */
    int tiles = 36;
    double mpx = 1024.0 * 1024.0 / 1e6;
    double achieved = gflop / per_batch;
    printf("net: cyto3-shaped CPnet, %s, batch %d tiles of %d, %ld threads: %.3f s/batch, %.1f ms/tile; "
           "peak RSS %.0f MB\n", cp_precision_name(info->precision), n, b,
           th && atoi(th) > 0 ? atol(th) : sysconf(_SC_NPROCESSORS_ONLN), per_batch, 1e3 * per_batch / n,
           peak_rss_kb() / 1024.0);
    printf("net: network time per megapixel (1024x1024 image, diameter 30, %d tiles): %.2f s/Mpx\n",
           tiles, per_batch / n * tiles / mpx);
    printf("net: conv FLOPs per batch %.2f GFLOP; achieved %.1f GFLOP/s; peak conv %.1f GFLOP/s; "
           "ratio peak/achieved %.2f\n", gflop, achieved, peak, peak / achieved);
    printf("net: the same %d convolutions run alone (channels-last): %.3f s/batch; "
           "network/conv-only ratio %.2f (goal <= 1.5)\n", ncs, conv_only, per_batch / conv_only);
    free(in);
    free(out);
    cp_model_free(m);

    /* the tiny Cellpose-SAM (the ViT-L has the same structure at E = 1024) */
    if (cp_model_load(shared_path("golden/weights/cpsam_tiny_s3.pth"), &o, &m)) {
        fprintf(stderr, "bench: %s\n", cp_errmsg());
        return 1;
    }
    info = cp_model_get_info(m);
    b = info->bsize;
    nin = (size_t)n * 3 * b * b;
    in = calloc(nin, 4);
    out = malloc((size_t)n * 3 * b * b * 4);
    for (size_t k = 0; k < nin; k++)
        in[k] = (float)(k % 97) / 97.0f;
    cp_model_forward(m, in, n, b, b, out, NULL);
    double tv = 1e30;
    for (int rep = 0; rep < reps; rep++) {
        double t0 = now_s();
        cp_model_forward(m, in, n, b, b, out, NULL);
        if (now_s() - t0 < tv)
            tv = now_s() - t0;
    }
    double vmacs = vit_macs(info);
    printf("net: tiny Cellpose-SAM (E %d, depth %d), batch %d tiles of %d: %.3f s/batch, %.1f ms/tile, "
           "%.1f GFLOP/s (matmul + conv FLOPs)\n", info->embed, info->depth, n, b, tv, 1e3 * tv / n,
           2 * vmacs * n / 1e9 / tv);
    free(in);
    free(out);
    cp_model_free(m);
    return 0;
}
