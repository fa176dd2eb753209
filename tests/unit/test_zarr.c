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

int main(void)
{
    snprintf(tmp, sizeof tmp, "%s/zarr.%d", test_tmp_dir(), (int)getpid());
    mkdir(tmp, 0777);
    test_round_trips();
    test_missing_and_bad();
    return test_result();
}
