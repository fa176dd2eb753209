/* PNG reading and writing: every colour type and bit depth written by libpng
 * with known values, 16-bit byte order checked against hand-built bytes, and
 * corrupt files. */
#include <png.h>
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

/* Stored value of sample c at (y, x) for a PNG of the given bit depth. */
static unsigned value(int depth, int y, int x, int c)
{
    unsigned k = (unsigned)(y * 131 + x * 31 + c * 1009) * 2654435761u >> 7;
    return depth == 16 ? k % 65536 : k % (1u << depth);
}

static void palette_entry(int i, png_color *col)
{
    col->red = (png_byte)(i * 3 + 1);
    col->green = (png_byte)(255 - i);
    col->blue = (png_byte)(i * 7);
}

/* Write a PNG with libpng directly; samples per pixel from the colour type. */
static int write_png_trns(const char *path, int w, int h, int color, int depth, int interlace, int trns)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png))) {
        fclose(f);
        return -1;
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, depth, color,
                 interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    if (color == PNG_COLOR_TYPE_PALETTE) {
        png_color pal[256];
        for (int i = 0; i < 256; i++)
            palette_entry(i, &pal[i]);
        png_set_PLTE(png, info, pal, 1 << depth);
        if (trns) {
            png_byte alpha[256];
            for (int i = 0; i < 256; i++)
                alpha[i] = (png_byte)(255 - i);
            png_set_tRNS(png, info, alpha, 1 << depth, NULL);
        }
    }
    png_write_info(png, info);
    int spp = color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_PALETTE ? 1
              : color == PNG_COLOR_TYPE_GRAY_ALPHA                          ? 2
              : color == PNG_COLOR_TYPE_RGB                                 ? 3
                                                                            : 4;
    size_t row_bytes = ((size_t)w * spp * depth + 7) / 8;
    unsigned char *img = calloc((size_t)h, row_bytes);
    png_bytep *rows = malloc(sizeof *rows * (size_t)h);
    for (int y = 0; y < h; y++) {
        unsigned char *r = img + (size_t)y * row_bytes;
        rows[y] = r;
        for (int x = 0; x < w; x++)
            for (int c = 0; c < spp; c++) {
                unsigned v = value(depth, y, x, c);
                size_t i = (size_t)x * spp + c;
                if (depth == 16) {
                    r[i * 2] = (unsigned char)(v >> 8); /* PNG is big-endian */
                    r[i * 2 + 1] = (unsigned char)v;
                } else if (depth == 8) {
                    r[i] = (unsigned char)v;
                } else {
                    size_t bit = i * depth;
                    r[bit / 8] |= (unsigned char)(v << (8 - depth - bit % 8));
                }
            }
    }
    png_write_image(png, rows);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    free(rows);
    free(img);
    return fclose(f);
}

static int write_png(const char *path, int w, int h, int color, int depth, int interlace)
{
    return write_png_trns(path, w, h, color, depth, interlace, 0);
}

/* A palette with transparency expands to RGBA, alpha from tRNS. */
static void test_palette_alpha(void)
{
    const char *path = tmp("p_trns.png");
    CHECK(write_png_trns(path, 9, 5, PNG_COLOR_TYPE_PALETTE, 8, 0, 1) == 0);
    cp_image *img;
    CHECK_OK(cp_image_read(path, NULL, &img));
    CHECK(img->channels == 4 && img->dtype == CP_U8);
    int bad = 0;
    for (int y = 0; y < 5; y++)
        for (int x = 0; x < 9 && img->channels == 4; x++) {
            int idx = (int)value(8, y, x, 0);
            png_color col;
            palette_entry(idx, &col);
            bad += cp_image_get(img, 0, y, x, 0) != col.red || cp_image_get(img, 0, y, x, 2) != col.blue ||
                   cp_image_get(img, 0, y, x, 3) != 255 - idx;
        }
    CHECK(bad == 0);
    cp_image_free(img);
}

static void check_png(int color, int depth, int interlace)
{
    char name[64];
    snprintf(name, sizeof name, "p_c%d_d%d_i%d.png", color, depth, interlace);
    const char *path = tmp(name);
    int w = 29, h = 13;
    CHECKF(write_png(path, w, h, color, depth, interlace) == 0, "%s: generator failed", name);
    cp_image *img = NULL;
    int rc = cp_image_read(path, NULL, &img);
    CHECKF(rc == CP_OK, "%s: %s", name, cp_errmsg());
    if (rc)
        return;
    int palette = color == PNG_COLOR_TYPE_PALETTE;
    int spp = palette ? 3 : color == PNG_COLOR_TYPE_GRAY ? 1 : color == PNG_COLOR_TYPE_GRAY_ALPHA ? 2
              : color == PNG_COLOR_TYPE_RGB ? 3 : 4;
    cp_dtype want = depth == 16 ? CP_U16 : CP_U8;
    CHECKF(img->width == w && img->height == h && img->channels == spp && img->planes == 1 && img->dtype == want,
           "%s: got %dx%dx%d %s", name, img->height, img->width, img->channels, cp_dtype_name(img->dtype));
    if (img->width == w && img->height == h && img->channels == spp) {
        int bad = 0;
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                for (int c = 0; c < spp; c++) {
                    unsigned want_v;
                    if (palette) {
                        png_color col;
                        palette_entry((int)value(depth, y, x, 0), &col);
                        want_v = c == 0 ? col.red : c == 1 ? col.green : col.blue;
                    } else {
                        want_v = value(depth, y, x, c);
                    }
                    bad += cp_image_get(img, 0, y, x, c) != want_v;
                }
        CHECKF(bad == 0, "%s: %d samples differ", name, bad);
    }
    cp_image_free(img);
}

static void test_color_types(void)
{
    static const int gray_depths[] = {1, 2, 4, 8, 16};
    for (int i = 0; i < 5; i++)
        check_png(PNG_COLOR_TYPE_GRAY, gray_depths[i], 0);
    for (int i = 0; i < 4; i++)
        check_png(PNG_COLOR_TYPE_PALETTE, gray_depths[i], 0);
    for (int d = 8; d <= 16; d += 8) {
        check_png(PNG_COLOR_TYPE_GRAY_ALPHA, d, 0);
        check_png(PNG_COLOR_TYPE_RGB, d, 0);
        check_png(PNG_COLOR_TYPE_RGBA, d, 0);
        check_png(PNG_COLOR_TYPE_RGB, d, 1);
    }
    check_png(PNG_COLOR_TYPE_GRAY, 4, 1);
    check_png(PNG_COLOR_TYPE_PALETTE, 8, 1);
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24), p[1] = (unsigned char)(v >> 16), p[2] = (unsigned char)(v >> 8), p[3] = (unsigned char)v;
}

/* Append one chunk (length, type, data, CRC). */
static size_t chunk(unsigned char *out, const char *type, const unsigned char *data, uint32_t len)
{
    put32(out, len);
    memcpy(out + 4, type, 4);
    if (len)
        memcpy(out + 8, data, len);
    put32(out + 8 + len, (uint32_t)crc32(crc32(0, NULL, 0), out + 4, len + 4));
    return 12 + len;
}

/* A PNG built byte by byte: 16-bit grey, 3x1, big-endian samples. */
static size_t handmade_png(unsigned char *buf, uint32_t w, uint32_t h, const unsigned char *raw, size_t rawlen)
{
    size_t n = 0;
    memcpy(buf, "\x89PNG\r\n\x1a\n", 8);
    n = 8;
    unsigned char ihdr[13];
    put32(ihdr, w);
    put32(ihdr + 4, h);
    ihdr[8] = 16, ihdr[9] = 0, ihdr[10] = 0, ihdr[11] = 0, ihdr[12] = 0;
    n += chunk(buf + n, "IHDR", ihdr, 13);
    unsigned char z[256];
    uLongf zlen = sizeof z;
    compress(z, &zlen, raw, (uLong)rawlen);
    n += chunk(buf + n, "IDAT", z, (uint32_t)zlen);
    n += chunk(buf + n, "IEND", NULL, 0);
    return n;
}

static void test_byte_order(void)
{
    /* reading: bytes 01 02 | a0 b0 | ff 00 on disk are 0x0102, 0xa0b0, 0xff00 */
    unsigned char raw[] = {0, 0x01, 0x02, 0xa0, 0xb0, 0xff, 0x00};
    unsigned char buf[512];
    size_t n = handmade_png(buf, 3, 1, raw, sizeof raw);
    const char *path = tmp("p_hand16.png");
    test_write_bytes(path, buf, n);
    cp_image *img;
    CHECK_OK(cp_image_read(path, NULL, &img));
    CHECK(img->dtype == CP_U16 && img->width == 3 && img->channels == 1);
    CHECK(cp_image_get(img, 0, 0, 0, 0) == 0x0102 && cp_image_get(img, 0, 0, 1, 0) == 0xa0b0 &&
          cp_image_get(img, 0, 0, 2, 0) == 0xff00);

    /* writing: our 16-bit samples must land big-endian in the IDAT stream */
    path = tmp("p_w16.png");
    CHECK_OK(cp_png_write(path, img));
    cp_image_free(img);
    size_t len;
    unsigned char *f = test_slurp(path, &len);
    CHECK(f && len > 33 && f[24] == 16 && f[25] == 0); /* IHDR: depth 16, grey */
    unsigned char z[4096];
    size_t zn = 0;
    for (size_t p = 8; f && p + 12 <= len;) {
        uint32_t cl = (uint32_t)f[p] << 24 | (uint32_t)f[p + 1] << 16 | (uint32_t)f[p + 2] << 8 | f[p + 3];
        if (memcmp(f + p + 4, "IDAT", 4) == 0 && zn + cl <= sizeof z) {
            memcpy(z + zn, f + p + 8, cl);
            zn += cl;
        }
        p += 12 + (size_t)cl;
    }
    unsigned char out[64];
    uLongf on = sizeof out;
    CHECK(uncompress(out, &on, z, (uLong)zn) == Z_OK && on == 7);
    /* the filter byte may differ; undo "Sub" (1) or none (0) for one row */
    if (out[0] == 1)
        for (int i = 3; i < 7; i++)
            out[i] = (unsigned char)(out[i] + out[i - 2]);
    CHECKF(out[0] <= 1 && memcmp(out + 1, raw + 1, 6) == 0, "filter %d bytes %02x %02x %02x %02x %02x %02x", out[0],
           out[1], out[2], out[3], out[4], out[5], out[6]);
    free(f);
}

static void test_writer(void)
{
    cp_image *img;
    /* unsupported for PNG: float, several planes, five channels; no file is left */
    CHECK_OK(cp_image_create(&img, 4, 4, 1, 1, CP_F32));
    CHECK(cp_png_write(tmp("p_bad.png"), img) == CP_EUNSUPPORTED && strstr(cp_errmsg(), "p_bad.png"));
    cp_image_free(img);
    CHECK_OK(cp_image_create(&img, 4, 4, 1, 2, CP_U8));
    CHECK(cp_image_write(tmp("p_bad.png"), img, NULL) == CP_EUNSUPPORTED);
    cp_image_free(img);
    CHECK_OK(cp_image_create(&img, 4, 4, 5, 1, CP_U8));
    CHECK(cp_image_write(tmp("p_bad.png"), img, NULL) == CP_EUNSUPPORTED);
    cp_image_free(img);
    FILE *f = fopen(tmp("p_bad.png"), "rb");
    CHECK(f == NULL);
    if (f)
        fclose(f);
}

static void test_bad_files(void)
{
    cp_image *img = NULL;
    unsigned char buf[512];
    unsigned char raw[] = {0, 1, 2, 3, 4, 5, 6};
    /* IHDR claiming 100000 x 100000 must fail on the limit, not allocate */
    size_t n = handmade_png(buf, 100000, 100000, raw, sizeof raw);
    const char *path = tmp("p_huge.png");
    test_write_bytes(path, buf, n);
    CHECK(cp_image_read(path, NULL, &img) == CP_ELIMIT && strstr(cp_errmsg(), "p_huge.png"));
    /* under the limit, but more than its bytes can inflate to: corrupt, and
       refused before allocating */
    n = handmade_png(buf, 20000, 20000, raw, sizeof raw);
    path = tmp("p_claims.png");
    test_write_bytes(path, buf, n);
    CHECK(cp_image_read(path, NULL, &img) == CP_EFORMAT);
    CHECKF(strstr(cp_errmsg(), "p_claims.png: PNG header claims 20000 x 20000 pixels") != NULL, "%s", cp_errmsg());
    /* too little data for the image */
    n = handmade_png(buf, 3, 5, raw, sizeof raw);
    path = tmp("p_short.png");
    test_write_bytes(path, buf, n);
    CHECK(cp_image_read(path, NULL, &img) == CP_EFORMAT && strstr(cp_errmsg(), "p_short.png"));
    /* bad CRC */
    n = handmade_png(buf, 3, 1, raw, sizeof raw);
    buf[44] ^= 0x55; /* inside the IDAT data */
    path = tmp("p_crc.png");
    test_write_bytes(path, buf, n);
    CHECK(cp_image_read(path, NULL, &img) == CP_EFORMAT && strstr(cp_errmsg(), "p_crc.png"));
    CHECKF(!strchr(cp_errmsg(), '\n'), "%s", cp_errmsg());

    /* truncations and corrupted bytes of a real-size file */
    path = tmp("p_src.png");
    write_png(path, 64, 48, PNG_COLOR_TYPE_RGB, 16, 0);
    size_t len;
    unsigned char *orig = test_slurp(path, &len);
    CHECK(orig != NULL);
    if (!orig)
        return;
    const char *cut = tmp("p_cut.png");
    int failed = 0;
    for (int k = 1; k < 8; k++) {
        test_write_bytes(cut, orig, len * k / 8);
        int rc = cp_image_read(cut, NULL, &img);
        failed += rc == CP_EFORMAT && strstr(cp_errmsg(), "p_cut.png") != NULL;
        if (rc == CP_OK)
            cp_image_free(img);
    }
    CHECK(failed == 7);
    unsigned char *mut = malloc(len);
    uint32_t seed = 99;
    for (int k = 0; k < 200; k++) {
        memcpy(mut, orig, len);
        seed = seed * 1103515245u + 12345u;
        mut[(seed >> 8) % (k < 100 ? 64 : len)] ^= (unsigned char)(1u << ((seed >> 4) & 7));
        test_write_bytes(cut, mut, len);
        if (cp_image_read(cut, NULL, &img) == CP_OK)
            cp_image_free(img);
    }
    CHECK(1); /* no crash under ASan/UBSan */
    free(mut);
    free(orig);
}

int main(void)
{
    test_color_types();
    test_palette_alpha();
    test_byte_order();
    test_writer();
    test_bad_files();
    return test_result();
}
