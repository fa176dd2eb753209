/* NPY arrays: every dtype in both byte orders, Fortran order, format
 * versions 1-3, gzip, the image view of arrays, and bad headers. Files are
 * built byte by byte here, independent of the writer. */
#include <stdint.h>
#include <zlib.h>

#include "cellpose/cellpose.h"
#include "test.h"

static const char *tmp(const char *name)
{
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", test_tmp_dir(), name);
    return buf;
}

/* Write an NPY file: header dict text, version, then `data` (already in the
 * file's byte order). gz: gzip it. */
static void write_npy(const char *path, int version, const char *dict, const void *data, size_t n, int gz)
{
    size_t dl = strlen(dict), pre = version == 1 ? 10 : 12;
    size_t total = (pre + dl + 1 + 63) / 64 * 64;
    size_t hl = total - pre;
    unsigned char *buf = calloc(1, total + n);
    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = (unsigned char)version;
    buf[7] = 0;
    buf[8] = (unsigned char)hl;
    buf[9] = (unsigned char)(hl >> 8);
    if (version > 1)
        buf[10] = (unsigned char)(hl >> 16), buf[11] = (unsigned char)(hl >> 24);
    memcpy(buf + pre, dict, dl);
    memset(buf + pre + dl, ' ', hl - dl - 1);
    buf[total - 1] = '\n';
    if (n)
        memcpy(buf + total, data, n);
    if (gz) {
        gzFile g = gzopen(path, "wb");
        gzwrite(g, buf, (unsigned)(total + n));
        gzclose(g);
    } else {
        FILE *f = fopen(path, "wb");
        fwrite(buf, 1, total + n, f);
        fclose(f);
    }
    free(buf);
}

static void put_le(unsigned char *p, uint64_t v, size_t es, int big)
{
    for (size_t b = 0; b < es; b++)
        p[big ? es - 1 - b : b] = (unsigned char)(v >> (8 * b));
}

typedef struct { const char *code; cp_dtype t; size_t es; } dt;
static const dt dtypes[] = {
    {"u1", CP_U8, 1}, {"u2", CP_U16, 2}, {"u4", CP_U32, 4}, {"u8", CP_U64, 8}, {"i1", CP_I8, 1},
    {"i2", CP_I16, 2}, {"i4", CP_I32, 4}, {"i8", CP_I64, 8}, {"f4", CP_F32, 4}, {"f8", CP_F64, 8},
};

/* Value at C-order index i, representable in every dtype's range. */
static double val(const dt *d, size_t i)
{
    double v = (double)((i * 37) % 101);
    if (d->t == CP_I8 || d->t == CP_I16 || d->t == CP_I32 || d->t == CP_I64)
        return v - 50;
    if (d->t == CP_F32 || d->t == CP_F64)
        return v / 4 - 7.5;
    return d->es > 1 ? v * 3 + 200 : v;
}

static uint64_t bits_of(const dt *d, double v)
{
    if (d->t == CP_F32) {
        float f = (float)v;
        uint32_t b;
        memcpy(&b, &f, 4);
        return b;
    }
    if (d->t == CP_F64) {
        uint64_t b;
        memcpy(&b, &v, 8);
        return b;
    }
    return (uint64_t)(int64_t)v;
}

static double get(const cp_array *a, size_t i)
{
    switch (a->dtype) {
    case CP_U8: return ((uint8_t *)a->data)[i];
    case CP_U16: return ((uint16_t *)a->data)[i];
    case CP_U32: return ((uint32_t *)a->data)[i];
    case CP_U64: return (double)((uint64_t *)a->data)[i];
    case CP_I8: return ((int8_t *)a->data)[i];
    case CP_I16: return ((int16_t *)a->data)[i];
    case CP_I32: return ((int32_t *)a->data)[i];
    case CP_I64: return (double)((int64_t *)a->data)[i];
    case CP_F32: return ((float *)a->data)[i];
    case CP_F64: return ((double *)a->data)[i];
    default: return NAN;
    }
}

/* shape (2,3,4): write in C or Fortran order, either byte order, any version. */
static void test_dtypes(void)
{
    const size_t shape[3] = {2, 3, 4}, n = 24;
    char dict[256], name[64];
    for (size_t k = 0; k < sizeof dtypes / sizeof dtypes[0]; k++)
        for (int big = 0; big <= 1; big++)
            for (int fortran = 0; fortran <= 1; fortran++)
                for (int version = 1; version <= 3; version++) {
                    const dt *d = &dtypes[k];
                    unsigned char data[24 * 8];
                    for (size_t i0 = 0; i0 < 2; i0++)
                        for (size_t i1 = 0; i1 < 3; i1++)
                            for (size_t i2 = 0; i2 < 4; i2++) {
                                size_t c = (i0 * 3 + i1) * 4 + i2, f = i0 + 2 * (i1 + 3 * i2);
                                put_le(data + (fortran ? f : c) * d->es, bits_of(d, val(d, c)), d->es, big);
                            }
                    snprintf(dict, sizeof dict, "{'descr': '%c%s', 'fortran_order': %s, 'shape': (2, 3, 4), }",
                             d->es == 1 ? '|' : big ? '>' : '<', d->code, fortran ? "True" : "False");
                    int gz = (k + (size_t)version) % 3 == 0;
                    snprintf(name, sizeof name, "n_%s_%d%d%d.npy%s", d->code, big, fortran, version, gz ? ".gz" : "");
                    write_npy(tmp(name), version, dict, data, n * d->es, gz);
                    cp_array *a = NULL;
                    int rc = cp_npy_read(tmp(name), &a);
                    CHECKF(rc == CP_OK, "%s: %s", name, cp_errmsg());
                    if (rc)
                        continue;
                    CHECK(a->ndim == 3 && a->shape[0] == shape[0] && a->shape[1] == shape[1] &&
                          a->shape[2] == shape[2] && a->dtype == d->t && cp_array_count(a) == n);
                    int bad = 0;
                    for (size_t i = 0; i < n; i++)
                        bad += get(a, i) != val(d, i);
                    CHECKF(bad == 0, "%s: %d values differ", name, bad);
                    cp_array_free(a);
                }
}

static void test_bool_and_shapes(void)
{
    unsigned char b[6] = {0, 1, 1, 0, 2, 1}; /* 2 is not a valid bool but must read as true */
    write_npy(tmp("n_bool.npy"), 1, "{'descr': '|b1', 'fortran_order': False, 'shape': (2, 3), }", b, 6, 0);
    cp_array *a;
    CHECK_OK(cp_npy_read(tmp("n_bool.npy"), &a));
    CHECK(a->dtype == CP_U8 && ((uint8_t *)a->data)[4] == 1 && ((uint8_t *)a->data)[3] == 0);
    cp_array_free(a);
    /* 0-d and 1-d, and a zero-length axis */
    double v = 2.5;
    write_npy(tmp("n_0d.npy"), 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (), }", &v, 8, 0);
    CHECK_OK(cp_npy_read(tmp("n_0d.npy"), &a));
    CHECK(a->ndim == 0 && cp_array_count(a) == 1 && ((double *)a->data)[0] == 2.5);
    cp_array_free(a);
    write_npy(tmp("n_empty.npy"), 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 0), }", NULL, 0, 0);
    CHECK_OK(cp_npy_read(tmp("n_empty.npy"), &a));
    CHECK(a->ndim == 2 && cp_array_count(a) == 0);
    cp_array_free(a);
    /* key order and quoting vary between writers */
    uint16_t u[3] = {7, 8, 9};
    write_npy(tmp("n_order.npy"), 1, "{\"shape\": (3,), \"fortran_order\": False, \"descr\": \"<u2\"}", u, 6, 0);
    CHECK_OK(cp_npy_read(tmp("n_order.npy"), &a));
    CHECK(a->ndim == 1 && a->shape[0] == 3 && ((uint16_t *)a->data)[2] == 9);
    cp_array_free(a);
    /* 8 dimensions is the limit */
    write_npy(tmp("n_8d.npy"), 1, "{'descr': '|u1', 'fortran_order': True, 'shape': (1,1,1,1,1,1,1,2), }", b, 2, 0);
    CHECK_OK(cp_npy_read(tmp("n_8d.npy"), &a));
    CHECK(a->ndim == 8 && a->shape[7] == 2);
    cp_array_free(a);
}

static void test_writer(void)
{
    size_t shape[4] = {2, 3, 5, 1};
    for (int k = 0; k < (int)(sizeof dtypes / sizeof dtypes[0]); k++) {
        cp_array *a;
        CHECK_OK(cp_array_create(&a, 4, shape, dtypes[k].t));
        for (size_t i = 0; i < cp_array_count(a); i++) {
            uint64_t b = bits_of(&dtypes[k], val(&dtypes[k], i));
            memcpy((char *)a->data + i * dtypes[k].es, &b, dtypes[k].es); /* little-endian host */
        }
        const char *path = tmp(k % 2 ? "n_w.npy.gz" : "n_w.npy");
        CHECK_OK(cp_npy_write(path, a));
        cp_array *b;
        CHECK_OK(cp_npy_read(path, &b));
        CHECK(b->ndim == 4 && b->dtype == a->dtype && b->shape[2] == 5 &&
              memcmp(a->data, b->data, cp_array_count(a) * dtypes[k].es) == 0);
        cp_array_free(b);
        cp_array_free(a);
    }
    /* header bytes exactly as numpy 1.24 writes them (128 bytes, data aligned to 64) */
    size_t s2[2] = {3, 4};
    cp_array *a;
    CHECK_OK(cp_array_create(&a, 2, s2, CP_U16));
    CHECK_OK(cp_npy_write(tmp("n_hdr.npy"), a));
    cp_array_free(a);
    FILE *f = fopen(tmp("n_hdr.npy"), "rb");
    unsigned char h[256] = {0};
    size_t got = f ? fread(h, 1, sizeof h, f) : 0;
    if (f)
        fclose(f);
    const char *dict = "{'descr': '<u2', 'fortran_order': False, 'shape': (3, 4), }";
    size_t hl = h[8] | (size_t)h[9] << 8;
    CHECK(got == 128 + 24 && memcmp(h, "\x93NUMPY\x01\x00", 8) == 0 && hl == 118 &&
          memcmp(h + 10, dict, strlen(dict)) == 0 && h[127] == '\n' && h[126] == ' ');
    /* 1-D shapes get the trailing comma */
    size_t s1[1] = {5};
    CHECK_OK(cp_array_create(&a, 1, s1, CP_U8));
    CHECK_OK(cp_npy_write(tmp("n_1d.npy"), a));
    cp_array_free(a);
    f = fopen(tmp("n_1d.npy"), "rb");
    got = f ? fread(h, 1, sizeof h, f) : 0;
    if (f)
        fclose(f);
    CHECK(got == 128 + 5 && memmem(h, 128, "'shape': (5,), }", 16) != NULL && memmem(h, 128, "'|u1'", 5) != NULL);
}

/* The image view: Y,X / Y,X,C (C <= 4) / Z,Y,X / Z,Y,X,C. */
static void test_as_image(void)
{
    static const struct { int ndim; size_t shape[4]; int z, y, x, c; } cases[] = {
        {2, {6, 7}, 1, 6, 7, 1},       {3, {6, 7, 3}, 1, 6, 7, 3}, {3, {6, 7, 4}, 1, 6, 7, 4},
        {3, {6, 7, 5}, 6, 7, 5, 1},    {3, {2, 7, 9}, 2, 7, 9, 1}, {4, {2, 6, 7, 2}, 2, 6, 7, 2},
        {4, {2, 6, 7, 9}, 2, 6, 7, 9},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        cp_array *a;
        CHECK_OK(cp_array_create(&a, cases[k].ndim, cases[k].shape, CP_I16));
        for (size_t i = 0; i < cp_array_count(a); i++)
            ((int16_t *)a->data)[i] = (int16_t)(i * 3 - 50);
        CHECK_OK(cp_npy_write(tmp("n_img.npy"), a));
        cp_image *img;
        CHECK_OK(cp_image_read(tmp("n_img.npy"), NULL, &img));
        CHECKF(img->planes == cases[k].z && img->height == cases[k].y && img->width == cases[k].x &&
                   img->channels == cases[k].c && img->dtype == CP_I16,
               "case %zu: %dx%dx%dx%d", k, img->planes, img->height, img->width, img->channels);
        CHECK(memcmp(img->data, a->data, cp_array_count(a) * 2) == 0);
        cp_image_free(img);
        cp_array_free(a);
    }
    /* 1-D and 5-D arrays are not images */
    size_t s5[5] = {1, 1, 2, 2, 2};
    cp_array *a;
    CHECK_OK(cp_array_create(&a, 5, s5, CP_U8));
    CHECK_OK(cp_npy_write(tmp("n_5d.npy"), a));
    cp_array_free(a);
    cp_image *img;
    CHECK(cp_image_read(tmp("n_5d.npy"), NULL, &img) == CP_EUNSUPPORTED && strstr(cp_errmsg(), "n_5d.npy"));
}

static void expect_fail(const char *name, int code, const char *words)
{
    cp_array *a = NULL;
    int rc = cp_npy_read(tmp(name), &a);
    CHECKF(rc == code && strstr(cp_errmsg(), name) && (!words || strstr(cp_errmsg(), words)) &&
               !strchr(cp_errmsg(), '\n'),
           "%s: rc %d, %s", name, rc, cp_errmsg());
    CHECK(a == NULL);
    cp_array_free(a);
}

static void test_bad_files(void)
{
    unsigned char d[64] = {0};
    write_npy(tmp("n_obj.npy"), 1, "{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", d, 16, 0);
    expect_fail("n_obj.npy", CP_EUNSUPPORTED, "pickle");
    write_npy(tmp("n_struct.npy"), 1, "{'descr': [('a', '<i4')], 'fortran_order': False, 'shape': (2,), }", d, 8, 0);
    expect_fail("n_struct.npy", CP_EUNSUPPORTED, "structured");
    write_npy(tmp("n_c16.npy"), 1, "{'descr': '<c16', 'fortran_order': False, 'shape': (2,), }", d, 32, 0);
    expect_fail("n_c16.npy", CP_EUNSUPPORTED, "c16");
    write_npy(tmp("n_trunc.npy"), 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (10,), }", d, 64, 0);
    expect_fail("n_trunc.npy", CP_EFORMAT, "truncated");
    write_npy(tmp("n_trunc.npy.gz"), 2, "{'descr': '<f8', 'fortran_order': False, 'shape': (10,), }", d, 64, 1);
    expect_fail("n_trunc.npy.gz", CP_EFORMAT, "truncated");
    write_npy(tmp("n_huge.npy"), 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (100000, 100000), }", d, 8, 0);
    expect_fail("n_huge.npy", CP_ELIMIT, NULL);
    /* under the sample limit but far more than the file holds: refused before
       allocating 800 MB (plain), or more than deflate can expand to (gzip) */
    write_npy(tmp("n_claims.npy"), 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (10000, 10000), }", d, 8, 0);
    expect_fail("n_claims.npy", CP_EFORMAT, "header claims 800000000 bytes");
    write_npy(tmp("n_claims.npy.gz"), 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (10000, 10000), }", d, 8,
              1);
    expect_fail("n_claims.npy.gz", CP_EFORMAT, "header claims 800000000 bytes");
    write_npy(tmp("n_overflow.npy"), 1,
              "{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }", d, 8, 0);
    expect_fail("n_overflow.npy", CP_ELIMIT, NULL);
    write_npy(tmp("n_9d.npy"), 1, "{'descr': '|u1', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1), }", d, 1, 0);
    expect_fail("n_9d.npy", CP_EUNSUPPORTED, NULL);
    write_npy(tmp("n_noshape.npy"), 1, "{'descr': '|u1', 'fortran_order': False}", d, 1, 0);
    expect_fail("n_noshape.npy", CP_EFORMAT, "shape");
    write_npy(tmp("n_badshape.npy"), 1, "{'descr': '|u1', 'fortran_order': False, 'shape': (3, -1), }", d, 3, 0);
    expect_fail("n_badshape.npy", CP_EFORMAT, "shape");
    write_npy(tmp("n_badfo.npy"), 1, "{'descr': '|u1', 'fortran_order': 0, 'shape': (3,), }", d, 3, 0);
    expect_fail("n_badfo.npy", CP_EFORMAT, "fortran_order");
    write_npy(tmp("n_v9.npy"), 1, "{'descr': '|u1', 'fortran_order': False, 'shape': (3,), }", d, 3, 0);
    FILE *f = fopen(tmp("n_v9.npy"), "r+b");
    fseek(f, 6, SEEK_SET);
    fputc(9, f);
    fclose(f);
    expect_fail("n_v9.npy", CP_EUNSUPPORTED, "version");
    /* version 2 header length field claiming 4 GB */
    f = fopen(tmp("n_biglen.npy"), "wb");
    fwrite("\x93NUMPY\x02\x00\xff\xff\xff\xff{", 1, 13, f);
    fclose(f);
    expect_fail("n_biglen.npy", CP_EFORMAT, "header");
    f = fopen(tmp("n_short.npy"), "wb");
    fwrite("\x93NUMPY\x01", 1, 7, f);
    fclose(f);
    expect_fail("n_short.npy", CP_EFORMAT, NULL);
    f = fopen(tmp("n_text.npy"), "wb");
    fputs("not numpy at all", f);
    fclose(f);
    expect_fail("n_text.npy", CP_EFORMAT, NULL);
    expect_fail("n_missing.npy", CP_EIO, NULL);
    gzFile g = gzopen(tmp("n_notnpy.npy.gz"), "wb");
    gzputs(g, "II*\0 a gzipped TIFF is not an array");
    gzclose(g);
    expect_fail("n_notnpy.npy.gz", CP_EFORMAT, "gzip");
    /* a corrupt gzip stream */
    write_npy(tmp("n_gzbad.npy.gz"), 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (8,), }", d, 64, 1);
    f = fopen(tmp("n_gzbad.npy.gz"), "r+b");
    fseek(f, 30, SEEK_SET);
    fputc(0xAA, f);
    fputc(0x55, f);
    fclose(f);
    cp_array *a = NULL;
    CHECK(cp_npy_read(tmp("n_gzbad.npy.gz"), &a) != CP_OK && strstr(cp_errmsg(), "n_gzbad.npy.gz"));
    cp_array_free(a);
}

/* Corrupted headers and data: a clean error or a clean read, never a crash. */
static void test_mutations(void)
{
    int16_t v[60];
    for (int i = 0; i < 60; i++)
        v[i] = (int16_t)(i * 11 - 300);
    const char *dict = "{'descr': '<i2', 'fortran_order': True, 'shape': (3, 4, 5), }";
    write_npy(tmp("m_src.npy"), 1, dict, v, sizeof v, 0);
    FILE *f = fopen(tmp("m_src.npy"), "rb");
    unsigned char orig[512], mut[512];
    size_t len = f ? fread(orig, 1, sizeof orig, f) : 0;
    if (f)
        fclose(f);
    CHECK(len == 128 + sizeof v);
    uint32_t seed = 7;
    int reads = 0;
    for (int k = 0; k < 400; k++) {
        memcpy(mut, orig, len);
        for (int j = 0; j < 2; j++) {
            seed = seed * 1103515245u + 12345u;
            size_t at = (seed >> 8) % 128; /* the header */
            static const char alphabet[] = "(),:' 0123456789TF\x00\xff{}[]<>|";
            if (k % 3 == 0)
                mut[at] = (unsigned char)alphabet[(seed >> 3) % (sizeof alphabet - 1)];
            else
                mut[at] ^= (unsigned char)(1u << ((seed >> 4) & 7));
        }
        size_t n = k % 7 == 6 ? (seed >> 8) % len : len;
        int gz = k % 4 == 3;
        const char *path = tmp(gz ? "m_cut.npy.gz" : "m_cut.npy");
        if (gz) {
            gzFile g = gzopen(path, "wb");
            gzwrite(g, mut, (unsigned)n);
            gzclose(g);
        } else {
            f = fopen(path, "wb");
            fwrite(mut, 1, n, f);
            fclose(f);
        }
        cp_array *a = NULL;
        if (cp_npy_read(path, &a) == CP_OK)
            cp_array_free(a);
        else
            CHECKF(strstr(cp_errmsg(), "m_cut.npy") && !strchr(cp_errmsg(), '\n'), "%s", cp_errmsg());
        reads++;
    }
    CHECK(reads == 400);
}

int main(void)
{
    test_dtypes();
    test_bool_and_shapes();
    test_writer();
    test_as_image();
    test_bad_files();
    test_mutations();
    return test_result();
}
