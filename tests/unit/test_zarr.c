/* Zarr v2 arrays, OME-NGFF groups and region reads: our own round trips,
 * then arrays written by python zarr read by us and ours read by it. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cellpose/core.h"
#include "cellpose/io.h"
#include "cellpose/zarr.h"
#include "test.h"

static char tmp[2048];

static const char *tpath(const char *name)
{
    static char b[4][4096];
    static int k;
    k = (k + 1) % 4;
    snprintf(b[k], sizeof b[k], "%s/%s", tmp, name);
    return b[k];
}

/* Deterministic bytes for element i of any dtype (floats stay finite). */
static void fill_pattern(void *buf, cp_dtype t, size_t n, unsigned seed)
{
    size_t es = cp_dtype_size(t);
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        unsigned char *p = (unsigned char *)buf + i * es;
        if (t == CP_F32) {
            float f = (float)((double)(s % 100000) / 7.0 - 5000);
            memcpy(p, &f, 4);
        } else if (t == CP_F64) {
            double d = (double)(s % 1000000) / 3.0 - 1e5;
            memcpy(p, &d, 8);
        } else {
            memcpy(p, &s, es);
        }
    }
}

/* Element offset of box coordinates inside a C-order array of `shape`. */
static size_t offset_of(int nd, const int64_t *shape, const int64_t *idx)
{
    size_t o = 0;
    for (int k = 0; k < nd; k++)
        o = o * (size_t)shape[k] + (size_t)idx[k];
    return o;
}

/* Compare buf (the box start..start+count, C order) with the same box of the
 * whole array `full`; returns the number of differing elements. */
static size_t box_diff(int nd, const int64_t *shape, const void *full, const int64_t *start, const int64_t *count,
                       const void *buf, size_t es)
{
    int64_t i[CP_ZARR_MAX_DIM] = {0}, g[CP_ZARR_MAX_DIM];
    size_t n = 1, diff = 0;
    for (int k = 0; k < nd; k++)
        n *= (size_t)count[k];
    for (size_t e = 0; e < n; e++) {
        size_t r = e;
        for (int k = nd - 1; k >= 0; k--) {
            i[k] = (int64_t)(r % (size_t)count[k]);
            r /= (size_t)count[k];
            g[k] = start[k] + i[k];
        }
        diff += memcmp((const char *)full + offset_of(nd, shape, g) * es, (const char *)buf + e * es, es) != 0;
    }
    return diff;
}

static size_t count_of(int nd, const int64_t *c)
{
    size_t n = 1;
    for (int k = 0; k < nd; k++)
        n *= (size_t)c[k];
    return n;
}

/* Write a whole array through several partial boxes, read it back whole and
 * by a box, for one dtype/codec/separator. */
static void round_trip(const char *name, int nd, const int64_t *shape, const int64_t *chunks, cp_dtype t,
                       const cp_zarr_opts *o)
{
    size_t n = count_of(nd, shape), es = cp_dtype_size(t);
    unsigned char *full = malloc(n * es), *back = calloc(n, es);
    fill_pattern(full, t, n, (unsigned)t + 7);
    cp_zarr *z = NULL;
    CHECK_OK(cp_zarr_create(tpath(name), nd, shape, chunks, t, o, 0, &z));
    if (!z) {
        free(full), free(back);
        return;
    }
    /* first half then second half along dimension 0, so chunks straddling
     * the cut are read, updated and rewritten */
    int64_t st[CP_ZARR_MAX_DIM] = {0}, ct[CP_ZARR_MAX_DIM];
    memcpy(ct, shape, sizeof(int64_t) * (size_t)nd);
    int64_t cut = shape[0] / 2 + 1;
    if (cut > shape[0])
        cut = shape[0];
    size_t plane = n / (size_t)shape[0];
    ct[0] = cut;
    CHECK_OK(cp_zarr_write(z, st, ct, full));
    st[0] = cut;
    ct[0] = shape[0] - cut;
    CHECK_OK(cp_zarr_write(z, st, ct, full + (size_t)cut * plane * es));
    cp_zarr_close(z);
    CHECK_OK(cp_zarr_open(tpath(name), &z));
    if (!z) {
        free(full), free(back);
        return;
    }
    CHECK(cp_zarr_ndim(z) == nd && cp_zarr_dtype(z) == t);
    CHECK(memcmp(cp_zarr_shape(z), shape, sizeof(int64_t) * (size_t)nd) == 0);
    memset(st, 0, sizeof st);
    CHECK_OK(cp_zarr_read(z, st, shape, back));
    CHECKF(memcmp(full, back, n * es) == 0, "%s whole read", name);
    for (int k = 0; k < nd; k++) {
        st[k] = shape[k] / 3;
        ct[k] = (shape[k] - st[k]) / 2 + 1;
    }
    CHECK_OK(cp_zarr_read(z, st, ct, back));
    CHECKF(box_diff(nd, shape, full, st, ct, back, es) == 0, "%s box read", name);
    cp_zarr_close(z);
    free(full);
    free(back);
}

static void test_round_trips(void)
{
    const int64_t shape[3] = {5, 37, 29}, chunks[3] = {2, 16, 8};
    const cp_zarr_opts codecs[] = {
        {CP_ZARR_RAW, 0, NULL, 0, '.'},         {CP_ZARR_ZLIB, 0, NULL, 0, '/'},
        {CP_ZARR_GZIP, 6, NULL, 0, '.'},        {CP_ZARR_ZSTD, 3, NULL, 0, '/'},
        {CP_ZARR_BLOSC, 5, "lz4", 1, '.'},      {CP_ZARR_BLOSC, 3, "zstd", 2, '/'},
    };
    char name[64];
    for (int t = 0; t < CP_DTYPE_COUNT; t++)
        for (size_t c = 0; c < sizeof codecs / sizeof codecs[0]; c++) {
            if (c != (size_t)t % 6 && t != CP_U16)
                continue; /* every dtype once, every codec on u16 */
            snprintf(name, sizeof name, "rt_%s_%zu", cp_dtype_name((cp_dtype)t), c);
            round_trip(name, 3, shape, chunks, (cp_dtype)t, &codecs[c]);
        }
    const int64_t s1[1] = {100}, c1[1] = {7}, s4[4] = {2, 3, 11, 13}, c4[4] = {1, 2, 4, 5};
    round_trip("rt_1d", 1, s1, c1, CP_I32, NULL);
    round_trip("rt_4d", 4, s4, c4, CP_F32, NULL);
    /* chunks larger than the array: one edge chunk, written full-size */
    const int64_t sb[2] = {3, 5}, cb[2] = {8, 8};
    round_trip("rt_big_chunk", 2, sb, cb, CP_U8, NULL);
    struct stat st;
    CHECK(stat(tpath("rt_big_chunk/0.0"), &st) == 0);
    cp_zarr *z;
    CHECK_OK(cp_zarr_open(tpath("rt_big_chunk"), &z));
    CHECK(cp_zarr_chunks(z)[0] == 8);
    cp_zarr_close(z);
    /* refused without overwrite */
    CHECK(cp_zarr_create(tpath("rt_1d"), 1, s1, c1, CP_I32, NULL, 0, &z) == CP_EEXIST);
}

/* Threads writing disjoint chunks of one array at once, then overwrite
 * leaving no stale chunk behind. */
static void test_parallel_and_overwrite(void)
{
    const int64_t shape[3] = {8, 40, 40}, chunks[3] = {1, 20, 20};
    size_t n = 8 * 40 * 40;
    uint16_t *full = malloc(n * 2), *back = calloc(n, 2);
    fill_pattern(full, CP_U16, n, 5);
    cp_zarr *z = NULL;
    CHECK_OK(cp_zarr_create(tpath("par"), 3, shape, chunks, CP_U16, NULL, 0, &z));
    int fails = 0;
    if (z) {
#pragma omp parallel for schedule(static, 1) num_threads(4) reduction(+ : fails)
        for (int i = 0; i < 8 * 4; i++) { /* one chunk each */
            int64_t st[3] = {i / 4, (i % 4) / 2 * 20, i % 2 * 20}, ct[3] = {1, 20, 20};
            uint16_t tile[400];
            for (int y = 0; y < 20; y++)
                memcpy(tile + y * 20, full + ((size_t)st[0] * 40 + (size_t)st[1] + (size_t)y) * 40 + (size_t)st[2], 40);
            fails += cp_zarr_write(z, st, ct, tile) != CP_OK;
        }
        const int64_t st0[3] = {0, 0, 0};
        CHECK_OK(cp_zarr_read(z, st0, shape, back));
        CHECK(fails == 0 && memcmp(full, back, n * 2) == 0);
        cp_zarr_close(z);
    }
    /* replaced by a smaller array: the old chunk files must not show through */
    const int64_t s2[3] = {2, 30, 30};
    CHECK_OK(cp_zarr_create(tpath("par"), 3, s2, chunks, CP_U16, NULL, 1, &z));
    if (z) {
        const int64_t st0[3] = {0, 0, 0};
        CHECK_OK(cp_zarr_read(z, st0, s2, back));
        size_t nz = 0;
        for (size_t i = 0; i < 2 * 30 * 30; i++)
            nz += back[i] != 0;
        CHECK(nz == 0);
        cp_zarr_close(z);
    }
    struct stat st;
    CHECK(stat(tpath("par/0.0.0"), &st) != 0);
    free(full);
    free(back);
}

static void write_text(const char *path, const char *text)
{
    CHECK(test_write_bytes(path, text, strlen(text)) == 0);
}

static void test_missing_and_bad(void)
{
    char d[4096];
    snprintf(d, sizeof d, "%s", tpath("hand"));
    mkdir(d, 0777);
    write_text(tpath("hand/.zarray"),
               "{\"zarr_format\":2,\"shape\":[3,4],\"chunks\":[2,2],\"dtype\":\">i2\",\"order\":\"C\","
               "\"fill_value\":-7,\"filters\":null,\"compressor\":null}");
    /* chunk 0.1 (rows 0-1, cols 2-3) stored big-endian: 1 2 / 3 4 */
    const unsigned char c01[8] = {0, 1, 0, 2, 0, 3, 0, 4};
    CHECK(test_write_bytes(tpath("hand/0.1"), c01, 8) == 0);
    cp_zarr *z = NULL;
    CHECK_OK(cp_zarr_open(d, &z));
    if (!z)
        return;
    int16_t v[12];
    const int64_t st[2] = {0, 0}, ct[2] = {3, 4};
    CHECK_OK(cp_zarr_read(z, st, ct, v));
    const int16_t want[12] = {-7, -7, 1, 2, -7, -7, 3, 4, -7, -7, -7, -7};
    CHECK(memcmp(v, want, sizeof want) == 0);
    /* a truncated chunk names its file */
    CHECK(test_write_bytes(tpath("hand/1.0"), c01, 5) == 0);
    CHECK(cp_zarr_read(z, st, ct, v) == CP_EFORMAT);
    CHECKF(strstr(cp_errmsg(), "hand/1.0") != NULL, "%s", cp_errmsg());
    const int64_t bad[2] = {2, 0}, badc[2] = {2, 1};
    CHECK(cp_zarr_read(z, bad, badc, v) == CP_EINVAL);
    cp_zarr_close(z);

    /* corrupt compressed chunks */
    static const char *codec_json[] = {"{\"id\":\"zlib\",\"level\":1}", "{\"id\":\"gzip\",\"level\":1}",
                                       "{\"id\":\"zstd\",\"level\":1}",
                                       "{\"id\":\"blosc\",\"cname\":\"lz4\",\"clevel\":5,\"shuffle\":1}"};
    for (int i = 0; i < 4; i++) {
        char text[512];
        snprintf(text, sizeof text,
                 "{\"zarr_format\":2,\"shape\":[4],\"chunks\":[4],\"dtype\":\"<u4\",\"order\":\"C\","
                 "\"fill_value\":0,\"filters\":null,\"compressor\":%s}", codec_json[i]);
        write_text(tpath("hand/.zarray"), text);
        const unsigned char junk[40] = {0x78, 0x9c, 2, 0x10, 0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3};
        CHECK(test_write_bytes(tpath("hand/0"), junk, sizeof junk) == 0);
        uint32_t u[4];
        const int64_t s0[1] = {0}, c0[1] = {4};
        CHECK_OK(cp_zarr_open(d, &z));
        if (!z)
            continue;
        int rc = cp_zarr_read(z, s0, c0, u);
        CHECKF(rc == CP_EFORMAT && strstr(cp_errmsg(), "hand/0"), "codec %d: rc %d %s", i, rc, cp_errmsg());
        cp_zarr_close(z);
    }

    /* headers refused before any allocation */
    static const struct { const char *json; int rc; const char *word; } hdr[] = {
        {"{\"zarr_format\":2,\"shape\":[1000000,1000000,1000000],\"chunks\":[10,10,10],\"dtype\":\"<u2\","
         "\"compressor\":null,\"fill_value\":0,\"filters\":null,\"order\":\"C\"}", CP_ELIMIT, "2^53"},
        {"{\"zarr_format\":2,\"shape\":[10,10],\"chunks\":[100000,100000],\"dtype\":\"<u2\","
         "\"compressor\":null,\"fill_value\":0,\"filters\":null,\"order\":\"C\"}", CP_ELIMIT, "limit"},
        {"{\"zarr_format\":2,\"shape\":[10],\"chunks\":[5],\"dtype\":\"<u2\",\"compressor\":null,"
         "\"fill_value\":0,\"filters\":[{\"id\":\"delta\",\"dtype\":\"<u2\"}],\"order\":\"C\"}", CP_EUNSUPPORTED, "delta"},
        {"{\"zarr_format\":2,\"shape\":[10],\"chunks\":[5],\"dtype\":\"<u2\",\"compressor\":{\"id\":\"lzma\"},"
         "\"fill_value\":0,\"filters\":null,\"order\":\"C\"}", CP_EUNSUPPORTED, "lzma"},
        {"{\"zarr_format\":3,\"shape\":[10],\"chunks\":[5],\"dtype\":\"<u2\"}", CP_EUNSUPPORTED, "zarr_format"},
        {"{\"zarr_format\":2,\"shape\":[10],\"chunks\":[5],\"dtype\":\"<c8\",\"compressor\":null}", CP_EUNSUPPORTED,
         "<c8"},
        {"{\"zarr_format\":2,\"shape\":[10],\"chunks\":[0],\"dtype\":\"<u2\",\"compressor\":null}", CP_EFORMAT,
         "chunks"},
        {"{\"zarr_format\":2,\"shape\":[10],\"chunks\":[5],\"dtype\":\"|u1\",\"fill_value\":300}", CP_EFORMAT,
         "fill_value"},
        {"{\"zarr_format\":2,", CP_EFORMAT, "JSON"},
    };
    for (size_t i = 0; i < sizeof hdr / sizeof hdr[0]; i++) {
        write_text(tpath("hand/.zarray"), hdr[i].json);
        z = NULL;
        int rc = cp_zarr_open(d, &z);
        CHECKF(rc == hdr[i].rc && strstr(cp_errmsg(), hdr[i].word) && strstr(cp_errmsg(), ".zarray") && !z,
               "header %zu: rc %d: %s", i, rc, cp_errmsg());
        cp_zarr_close(z);
    }
    CHECK(cp_zarr_open(tpath("nowhere"), &z) == CP_EIO);
}

/* ---- python zarr and tifffile as the peer ------------------------------ */

static int peer(const char *mode, const char *dir)
{
    const char *root = getenv("CP_ROOT");
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s/tests/unit/zarr_peer.py' %s '%s'", root && *root ? root : ".",
             mode, dir);
    return system(cmd);
}

/* Element (i[0..nd)) of a C-order cp_array. */
static const unsigned char *array_at(const cp_array *a, const int64_t *i)
{
    size_t o = 0;
    for (int k = 0; k < a->ndim; k++)
        o = o * a->shape[k] + (size_t)i[k];
    return (const unsigned char *)a->data + o * cp_dtype_size(a->dtype);
}

static void read_python_arrays(const char *dir)
{
    char list[8192], line[256];
    snprintf(list, sizeof list, "%s/cases.txt", dir);
    FILE *f = fopen(list, "r");
    CHECKF(f != NULL, "%s", list);
    int ncases = 0;
    while (f && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (!line[0])
            continue;
        char zp[8192], np[8300];
        snprintf(zp, sizeof zp, "%s/%s", dir, line);
        snprintf(np, sizeof np, "%s.npy", zp);
        cp_zarr *z = NULL;
        cp_array *want = NULL;
        CHECK_OK(cp_zarr_open(zp, &z));
        CHECK_OK(cp_npy_read(np, &want));
        if (!z || !want) {
            cp_zarr_close(z);
            cp_array_free(want);
            continue;
        }
        ncases++;
        int nd = cp_zarr_ndim(z);
        const int64_t *shape = cp_zarr_shape(z);
        int same = nd == want->ndim && cp_zarr_dtype(z) == want->dtype;
        for (int k = 0; same && k < nd; k++)
            same = (size_t)shape[k] == want->shape[k];
        CHECKF(same, "%s: shape or dtype", line);
        size_t es = cp_dtype_size(want->dtype), n = cp_array_count(want);
        unsigned char *got = malloc(n * es);
        int64_t st[CP_ZARR_MAX_DIM] = {0}, ct[CP_ZARR_MAX_DIM];
        if (same) {
            CHECK_OK(cp_zarr_read(z, st, shape, got));
            CHECKF(memcmp(got, want->data, n * es) == 0, "%s: whole array differs from python zarr's", line);
            for (int k = 0; k < nd; k++) { /* a box crossing chunk borders */
                st[k] = shape[k] / 4 + 1 < shape[k] ? shape[k] / 4 + 1 : 0;
                ct[k] = (shape[k] - st[k] + 1) / 2;
            }
            CHECK_OK(cp_zarr_read(z, st, ct, got));
            CHECKF(box_diff(nd, shape, want->data, st, ct, got, es) == 0, "%s: box differs", line);
        }
        free(got);
        cp_zarr_close(z);
        cp_array_free(want);
    }
    if (f)
        fclose(f);
    CHECKF(ncases >= 13, "%d cases", ncases);
}

/* Every sample of vol_read boxes against an array holding the volume, whose
 * axes z, c (-1: none), y, x are given; extra axes of size 1 index 0. */
static void check_vol(const char *path, const cp_array *want, int za, int ca, int ya, int xa, int z_axis,
                      int channel_axis)
{
    cp_vol_reader *r = NULL;
    CHECK_OK(cp_vol_open(path, z_axis, channel_axis, &r));
    if (!r)
        return;
    int64_t D, H, W;
    int C;
    cp_vol_shape(r, &D, &H, &W, &C);
    CHECKF((size_t)D == want->shape[za] && (size_t)H == want->shape[ya] && (size_t)W == want->shape[xa] &&
               C == (ca >= 0 ? (int)want->shape[ca] : 1) && cp_vol_dtype(r) == want->dtype,
           "%s: shape %lld %lld %lld %d", path, (long long)D, (long long)H, (long long)W, C);
    const int64_t boxes[][6] = {{0, 0, 0, D, H, W}, {D > 2, H / 3, W / 4, D > 2 ? D - 2 : D, H / 2, W / 2}, {D - 1, H - 1, W - 1, 1, 1, 1},
                                {0, H / 2, 3, D, 1, W - 3}};
    for (size_t b = 0; b < sizeof boxes / sizeof boxes[0]; b++) {
        const int64_t *bx = boxes[b];
        cp_image *img = NULL;
        CHECK_OK(cp_vol_read(r, bx[0], bx[1], bx[2], bx[3], bx[4], bx[5], &img));
        if (!img)
            continue;
        size_t es = cp_dtype_size(want->dtype), diff = 0;
        int64_t i[CP_ZARR_MAX_DIM] = {0};
        for (int p = 0; p < img->planes; p++)
            for (int y = 0; y < img->height; y++)
                for (int x = 0; x < img->width; x++)
                    for (int c = 0; c < img->channels; c++) {
                        i[za] = bx[0] + p, i[ya] = bx[1] + y, i[xa] = bx[2] + x;
                        if (ca >= 0)
                            i[ca] = c;
                        size_t o = (((size_t)p * img->height + y) * img->width + x) * img->channels + c;
                        diff += memcmp((unsigned char *)img->data + o * es, array_at(want, i), es) != 0;
                    }
        CHECKF(img->planes == bx[3] && img->height == bx[4] && img->width == bx[5] && diff == 0,
               "%s box %zu: %zu samples differ", path, b, diff);
        cp_image_free(img);
    }
    cp_image *img = NULL;
    CHECK(cp_vol_read(r, 0, 0, 0, D + 1, 1, 1, &img) == CP_EINVAL && !img);
    cp_vol_close(r);
}

static cp_array *load(const char *dir, const char *name)
{
    char p[8192];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    cp_array *a = NULL;
    CHECK_OK(cp_npy_read(p, &a));
    return a;
}

static void read_python_volumes(const char *dir)
{
    char p[8192];
    /* OME group: level 0, level 1, scales multiplied by the multiscale's */
    cp_ome_info info;
    cp_zarr *z = NULL;
    snprintf(p, sizeof p, "%s/ome_group", dir);
    CHECK_OK(cp_ome_open(p, 0, &info, &z));
    CHECK(info.ndim == 5 && !strcmp(info.axes[0], "t") && !strcmp(info.axes[1], "c") && !strcmp(info.axes[4], "x"));
    CHECK(info.scale[2] == 5 && info.scale[3] == 1 && info.scale[4] == 0.5 && !strcmp(info.unit, "micrometer"));
    CHECK(!strcmp(info.level_path, "s0") && z && cp_zarr_shape(z)[3] == 30);
    cp_zarr_close(z);
    CHECK_OK(cp_ome_open(p, 1, &info, &z));
    CHECK(!strcmp(info.level_path, "s1") && info.scale[3] == 2 && info.scale[4] == 1 && z && cp_zarr_shape(z)[3] == 15);
    cp_zarr_close(z);
    CHECK(cp_ome_open(p, 2, &info, &z) == CP_EINVAL && !z);

    cp_array *a = load(dir, "ome_group.npy");
    if (a)
        check_vol(p, a, 2, 1, 3, 4, CP_AXIS_AUTO, CP_AXIS_AUTO);
    cp_array_free(a);
    cp_vol_reader *r = NULL;
    CHECK_OK(cp_vol_open(p, CP_AXIS_AUTO, CP_AXIS_AUTO, &r));
    cp_voxel_size vs;
    int found = 0;
    if (r) {
        CHECK_OK(cp_vol_voxel_size(r, &vs, &found));
        CHECK(found && vs.z == 5 && vs.y == 1 && vs.x == 0.5 && !strcmp(vs.unit, "micrometer"));
    }
    cp_vol_close(r);

    /* NGFF 0.3: axes as strings, scale 1 (so no voxel size) */
    snprintf(p, sizeof p, "%s/ome03", dir);
    CHECK_OK(cp_ome_open(p, 0, &info, &z));
    CHECK(info.ndim == 3 && !strcmp(info.axes[0], "z") && !strcmp(info.axes[2], "x") && info.scale[0] == 1 &&
          !info.unit[0] && z && cp_zarr_shape(z)[0] == 6);
    cp_zarr_close(z);
    if ((a = load(dir, "ome_group.npy"))) {
        a->ndim = 3; /* its (t=0, c=0) volume */
        memmove(a->shape, a->shape + 2, 3 * sizeof a->shape[0]);
        check_vol(p, a, 0, -1, 1, 2, CP_AXIS_AUTO, CP_AXIS_AUTO);
    }
    cp_array_free(a);
    r = NULL;
    CHECK_OK(cp_vol_open(p, CP_AXIS_AUTO, CP_AXIS_AUTO, &r));
    if (r) {
        CHECK_OK(cp_vol_voxel_size(r, &vs, &found));
        CHECK(!found);
    }
    cp_vol_close(r);
    /* an ImageJ TIFF's calibration */
    snprintf(p, sizeof p, "%s/hyper.tif", dir);
    r = NULL;
    CHECK_OK(cp_vol_open(p, CP_AXIS_AUTO, CP_AXIS_AUTO, &r));
    if (r) {
        CHECK_OK(cp_vol_voxel_size(r, &vs, &found));
        CHECKF(found && vs.z == 2 && fabs(vs.x - 0.5) < 1e-6 && fabs(vs.y - 0.5) < 1e-6 && !strcmp(vs.unit, "um"),
               "%d %g %g %g %s", found, vs.z, vs.y, vs.x, vs.unit);
    }
    cp_vol_close(r);

    /* plain arrays: (z, y, x) and (c, z, y, x) by default */
    snprintf(p, sizeof p, "%s/zlib_u16", dir);
    if ((a = load(dir, "zlib_u16.npy")))
        check_vol(p, a, 0, -1, 1, 2, CP_AXIS_AUTO, CP_AXIS_AUTO);
    cp_array_free(a);
    snprintf(p, sizeof p, "%s/zlib_4d_u32", dir);
    if ((a = load(dir, "zlib_4d_u32.npy"))) {
        check_vol(p, a, 1, 0, 2, 3, CP_AXIS_AUTO, CP_AXIS_AUTO);
        check_vol(p, a, 0, 1, 2, 3, 0, 1); /* axes as the caller says */
    }
    cp_array_free(a);

    /* TIFF: BigTIFF tiles, classic strips, an ImageJ hyperstack (Z, C) */
    static const char *tifs[] = {"tiled", "striped", "hyper"};
    for (int i = 0; i < 3; i++) {
        char n[64];
        snprintf(n, sizeof n, "%s.npy", tifs[i]);
        snprintf(p, sizeof p, "%s/%s.tif", dir, tifs[i]);
        if ((a = load(dir, n)))
            check_vol(p, a, 0, a->ndim == 4 ? 1 : -1, a->ndim - 2, a->ndim - 1, CP_AXIS_AUTO, CP_AXIS_AUTO);
        cp_array_free(a);
    }
    /* only the tiles a box touches are decoded: a garbled tile elsewhere
       does not matter, one inside the box is an error naming the file */
    snprintf(p, sizeof p, "%s/tiled_bad.tif", dir);
    r = NULL;
    CHECK_OK(cp_vol_open(p, CP_AXIS_AUTO, CP_AXIS_AUTO, &r));
    if (r && (a = load(dir, "tiled.npy"))) {
        cp_image *img = NULL;
        CHECK_OK(cp_vol_read(r, 0, 0, 0, 5, 64, 64, &img));
        const int64_t shp[3] = {5, 70, 90}, st[3] = {0, 0, 0}, ct[3] = {5, 64, 64};
        CHECK(img && box_diff(3, shp, a->data, st, ct, img->data, 2) == 0);
        cp_image_free(img);
        img = NULL;
        CHECK(cp_vol_read(r, 4, 60, 80, 1, 10, 10, &img) == CP_EFORMAT && !img);
        CHECKF(strstr(cp_errmsg(), "tiled_bad.tif") != NULL, "%s", cp_errmsg());
    }
    cp_array_free(a);
    cp_vol_close(r);

    /* NPY read by seeking: C order, and Fortran order big-endian */
    snprintf(p, sizeof p, "%s/tiled.npy", dir);
    if ((a = load(dir, "tiled.npy"))) {
        check_vol(p, a, 0, -1, 1, 2, CP_AXIS_AUTO, CP_AXIS_AUTO);
        check_vol(p, a, 1, -1, 0, 2, 1, CP_AXIS_AUTO); /* Z as the middle axis */
    }
    cp_array_free(a);
    snprintf(p, sizeof p, "%s/fortran_be.npy", dir);
    if ((a = load(dir, "fortran_be.npy")))
        check_vol(p, a, 0, -1, 1, 2, CP_AXIS_AUTO, CP_AXIS_AUTO);
    cp_array_free(a);
}

/* Arrays and an OME group written by us, checked by python zarr. */
static void write_for_python(const char *dir)
{
    const cp_zarr_opts codecs[] = {
        {CP_ZARR_RAW, 0, NULL, 0, '/'},    {CP_ZARR_ZLIB, 0, NULL, 0, '.'},     {CP_ZARR_GZIP, 9, NULL, 0, '/'},
        {CP_ZARR_ZSTD, 5, NULL, 0, '.'},   {CP_ZARR_BLOSC, 5, "lz4", 1, '/'},   {CP_ZARR_BLOSC, 3, "zstd", 2, '.'},
        {CP_ZARR_BLOSC, 5, "blosclz", 0, '.'}, {CP_ZARR_BLOSC, 5, "zlib", 1, '/'}, {CP_ZARR_BLOSC, 9, "lz4hc", 2, '.'},
    };
    const cp_dtype types[] = {CP_U16, CP_F32, CP_I8, CP_U64, CP_F64, CP_I32, CP_U8, CP_I64, CP_U32};
    const int64_t shape[3] = {5, 23, 31}, chunks[3] = {2, 8, 16};
    char p[8192];
    for (size_t i = 0; i < sizeof codecs / sizeof codecs[0]; i++) {
        snprintf(p, sizeof p, "%s/cw_%zu", dir, i);
        cp_array *a = NULL;
        const size_t sh[3] = {5, 23, 31};
        CHECK_OK(cp_array_create(&a, 3, sh, types[i]));
        if (!a)
            continue;
        fill_pattern(a->data, types[i], cp_array_count(a), (unsigned)i);
        cp_zarr *z = NULL;
        CHECK_OK(cp_zarr_create(p, 3, shape, chunks, types[i], &codecs[i], 1, &z));
        const int64_t st[3] = {0, 0, 0};
        if (z)
            CHECK_OK(cp_zarr_write(z, st, shape, a->data));
        cp_zarr_close(z);
        strcat(p, ".npy");
        CHECK_OK(cp_npy_write(p, a));
        cp_array_free(a);
    }
    /* OME group (c, z, y, x), default codec, written by two boxes */
    snprintf(p, sizeof p, "%s/cw_ome", dir);
    const int64_t s4[4] = {2, 6, 20, 18}, c4[4] = {1, 4, 16, 16};
    const size_t z4[4] = {2, 6, 20, 18};
    cp_voxel_size vs = {2, 0.5, 0.25, "micron"};
    cp_array *a = NULL;
    CHECK_OK(cp_array_create(&a, 4, z4, CP_U16));
    cp_zarr *z = NULL;
    CHECK_OK(cp_ome_create(p, 4, s4, c4, CP_U16, &vs, NULL, 0, &z));
    if (a && z) {
        fill_pattern(a->data, CP_U16, cp_array_count(a), 99);
        const int64_t st0[4] = {0, 0, 0, 0}, ct0[4] = {1, 6, 20, 18}, st1[4] = {1, 0, 0, 0};
        CHECK_OK(cp_zarr_write(z, st0, ct0, a->data));
        CHECK_OK(cp_zarr_write(z, st1, ct0, (uint16_t *)a->data + 6 * 20 * 18));
    }
    cp_zarr_close(z);
    strcat(p, ".npy");
    if (a)
        CHECK_OK(cp_npy_write(p, a));
    snprintf(p, sizeof p, "%s/cw_ome.json", dir);
    write_text(p, "{\"axes\": [\"c\", \"z\", \"y\", \"x\"], \"scale\": [1, 2, 0.5, 0.25], "
                  "\"units\": [null, \"micrometer\", \"micrometer\", \"micrometer\"]}");
    /* and read back by us */
    snprintf(p, sizeof p, "%s/cw_ome", dir);
    if (a)
        check_vol(p, a, 1, 0, 2, 3, CP_AXIS_AUTO, CP_AXIS_AUTO);
    cp_vol_reader *r = NULL;
    CHECK_OK(cp_vol_open(p, CP_AXIS_AUTO, CP_AXIS_AUTO, &r));
    int found = 0;
    cp_voxel_size back;
    if (r)
        CHECK_OK(cp_vol_voxel_size(r, &back, &found));
    CHECK(found && back.z == 2 && back.y == 0.5 && back.x == 0.25 && !strcmp(back.unit, "micrometer"));
    cp_vol_close(r);
    CHECK(cp_ome_create(p, 4, s4, c4, CP_U16, &vs, NULL, 0, &z) == CP_EEXIST);
    cp_array_free(a);
    CHECKF(peer("check", dir) == 0, "python zarr disagrees with what we wrote (see above)");
}

int main(void)
{
    snprintf(tmp, sizeof tmp, "%s/zarr.%d", test_tmp_dir(), (int)getpid());
    mkdir(tmp, 0777);
    test_round_trips();
    test_parallel_and_overwrite();
    test_missing_and_bad();
    char py[4096];
    snprintf(py, sizeof py, "%s/py", tmp);
    mkdir(py, 0777);
    CHECKF(peer("write", py) == 0, "python zarr could not write the test arrays");
    read_python_arrays(py);
    read_python_volumes(py);
    write_for_python(py);
    return test_result();
}
