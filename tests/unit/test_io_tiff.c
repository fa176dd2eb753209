/* TIFF reading and writing. A generator writes every layout we claim to read
 * straight through libtiff, with known sample values; each must come back
 * exactly (JPEG: within the codec's error). */
#include <stdint.h>
#include <sys/stat.h>
#include <tiffio.h>
#include <unistd.h>

#include "cellpose/cellpose.h"
#include "test.h"

static const char *tmp(const char *name)
{
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", test_tmp_dir(), name);
    return buf;
}

typedef struct gen {
    uint32_t w, h;
    uint16_t spp, bps, fmt, planar, photometric, compression;
    uint32_t tile;   /* tile edge (multiple of 16), 0 = strips */
    uint32_t rps;    /* rows per strip, 0 = libtiff default */
    int pages;
    int bigtiff, bigendian, predictor;
    const char *desc;
    int jpeg_quality;
} gen;

/* The value of sample s of pixel (y, x) on page p, for any sample type. */
static double expected(const gen *g, int p, uint32_t y, uint32_t x, int s)
{
    uint64_t k = ((uint64_t)p * 7919 + (uint64_t)y * 131 + (uint64_t)x * 31 + (uint64_t)s * 1009) % 9973;
    if (g->compression == COMPRESSION_JPEG) /* smooth, so JPEG error stays small */
        return 40 + x + y + s * 20 + p * 5;
    if (g->bps < 8)
        return (double)(k % (1u << g->bps));
    if (g->fmt == SAMPLEFORMAT_IEEEFP)
        return (double)(k % 2048) / 4.0 - 256.0; /* exact in half, float and double */
    double range = g->bps >= 32 ? 4.0e9 : (double)(1ull << g->bps);
    double v = (double)(k * 104729 % (uint64_t)(range > 1e7 ? 1e7 : range));
    if (g->bps >= 32)
        v *= 397; /* use the high bits too */
    if (g->fmt == SAMPLEFORMAT_INT)
        v -= range / 2;
    return v;
}

static uint16_t float_to_half(float f)
{
    uint32_t b;
    memcpy(&b, &f, 4);
    uint32_t sign = (b >> 16) & 0x8000;
    int exp = (int)((b >> 23) & 0xff) - 127 + 15;
    uint32_t man = b & 0x7fffff;
    if (exp <= 0)
        return (uint16_t)sign; /* our test values are never subnormal */
    return (uint16_t)(sign | (uint32_t)exp << 10 | man >> 13);
}

static void store(const gen *g, unsigned char *dst, double v)
{
    if (g->fmt == SAMPLEFORMAT_IEEEFP) {
        if (g->bps == 16) {
            uint16_t h = float_to_half((float)v);
            memcpy(dst, &h, 2);
        } else if (g->bps == 32) {
            float f = (float)v;
            memcpy(dst, &f, 4);
        } else {
            memcpy(dst, &v, 8);
        }
        return;
    }
    int64_t i = (int64_t)v;
    switch (g->bps) {
    case 8: *dst = (unsigned char)i; break;
    case 16: { uint16_t t = (uint16_t)i; memcpy(dst, &t, 2); } break;
    case 32: { uint32_t t = (uint32_t)i; memcpy(dst, &t, 4); } break;
    case 64: { uint64_t t = (uint64_t)i; memcpy(dst, &t, 8); } break;
    }
}

/* Fill one row (or tile row) of `n` pixels starting at column x0. */
static void fill_row(const gen *g, unsigned char *row, int p, uint32_t y, uint32_t x0, uint32_t n, int s_only)
{
    int nsamp = s_only >= 0 ? 1 : g->spp;
    if (g->bps < 8) {
        size_t bytes = ((size_t)n * nsamp * g->bps + 7) / 8;
        memset(row, 0, bytes);
        for (uint32_t i = 0; i < n; i++)
            for (int c = 0; c < nsamp; c++) {
                size_t bit = ((size_t)i * nsamp + c) * g->bps;
                unsigned v = (unsigned)expected(g, p, y, x0 + i, s_only >= 0 ? s_only : c);
                row[bit / 8] |= (unsigned char)(v << (8 - g->bps - bit % 8));
            }
        return;
    }
    size_t es = g->bps / 8;
    for (uint32_t i = 0; i < n; i++)
        for (int c = 0; c < nsamp; c++)
            store(g, row + ((size_t)i * nsamp + c) * es, expected(g, p, y, x0 + i, s_only >= 0 ? s_only : c));
}

static int write_gen(const char *path, const gen *g)
{
    char mode[8] = "w";
    if (g->bigtiff)
        strcat(mode, "8");
    if (g->bigendian)
        strcat(mode, "b");
    TIFF *t = TIFFOpen(path, mode);
    if (!t)
        return -1;
    int separate = g->planar == PLANARCONFIG_SEPARATE;
    for (int p = 0; p < g->pages; p++) {
        TIFFSetField(t, TIFFTAG_IMAGEWIDTH, g->w);
        TIFFSetField(t, TIFFTAG_IMAGELENGTH, g->h);
        TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, g->spp);
        TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, g->bps);
        TIFFSetField(t, TIFFTAG_SAMPLEFORMAT, g->fmt ? g->fmt : SAMPLEFORMAT_UINT);
        TIFFSetField(t, TIFFTAG_PLANARCONFIG, g->planar ? g->planar : PLANARCONFIG_CONTIG);
        TIFFSetField(t, TIFFTAG_PHOTOMETRIC, g->photometric);
        TIFFSetField(t, TIFFTAG_COMPRESSION, g->compression ? g->compression : COMPRESSION_NONE);
        if (g->predictor)
            TIFFSetField(t, TIFFTAG_PREDICTOR, g->predictor);
        if (g->spp == 2 || (g->spp == 4 && g->photometric == PHOTOMETRIC_RGB)) {
            uint16_t extra = EXTRASAMPLE_UNSPECIFIED;
            TIFFSetField(t, TIFFTAG_EXTRASAMPLES, 1, &extra);
        }
        if (g->photometric == PHOTOMETRIC_PALETTE) {
            uint16_t map[3][256];
            for (int i = 0; i < 256; i++)
                map[0][i] = (uint16_t)(i * 257), map[1][i] = (uint16_t)((255 - i) * 257), map[2][i] = 0;
            TIFFSetField(t, TIFFTAG_COLORMAP, map[0], map[1], map[2]);
        }
        if (g->compression == COMPRESSION_JPEG) {
            TIFFSetField(t, TIFFTAG_JPEGQUALITY, g->jpeg_quality ? g->jpeg_quality : 95);
            if (g->photometric == PHOTOMETRIC_YCBCR)
                TIFFSetField(t, TIFFTAG_JPEGCOLORMODE, JPEGCOLORMODE_RGB);
        }
        if (g->desc && p == 0)
            TIFFSetField(t, TIFFTAG_IMAGEDESCRIPTION, g->desc);
        int nplanes = separate ? g->spp : 1;
        if (g->tile) {
            TIFFSetField(t, TIFFTAG_TILEWIDTH, g->tile);
            TIFFSetField(t, TIFFTAG_TILELENGTH, g->tile);
            tmsize_t ts = TIFFTileSize(t), trow = TIFFTileRowSize(t);
            unsigned char *buf = calloc(1, (size_t)ts);
            for (int s = 0; s < nplanes; s++)
                for (uint32_t y = 0; y < g->h; y += g->tile)
                    for (uint32_t x = 0; x < g->w; x += g->tile) {
                        memset(buf, 0, (size_t)ts);
                        /* edge tiles carry the pattern on, as a real encoder's padding would */
                        for (uint32_t r = 0; r < g->tile; r++)
                            fill_row(g, buf + (size_t)r * trow, p, y + r, x, g->tile, separate ? s : -1);
                        if (TIFFWriteTile(t, buf, x, y, 0, (uint16_t)s) < 0)
                            return -1;
                    }
            free(buf);
        } else {
            TIFFSetField(t, TIFFTAG_ROWSPERSTRIP, g->rps ? g->rps : TIFFDefaultStripSize(t, 0));
            unsigned char *row = calloc(1, (size_t)TIFFScanlineSize(t) + 64);
            for (int s = 0; s < nplanes; s++)
                for (uint32_t y = 0; y < g->h; y++) {
                    fill_row(g, row, p, y, 0, g->w, separate ? s : -1);
                    if (TIFFWriteScanline(t, row, y, (uint16_t)s) < 0)
                        return -1;
                }
            free(row);
        }
        if (!TIFFWriteDirectory(t))
            return -1;
    }
    TIFFClose(t);
    return 0;
}

/* Compare an image against the generator; pages map to (plane, channel) via
 * page_plane/page_chan0 (nchan_per_page samples each). Returns max abs error. */
static double compare(const gen *g, const cp_image *img, int pages_as_channels)
{
    double worst = 0;
    for (int p = 0; p < g->pages; p++)
        for (uint32_t y = 0; y < g->h; y++)
            for (uint32_t x = 0; x < g->w; x++)
                for (int s = 0; s < g->spp; s++) {
                    int plane = pages_as_channels ? 0 : p, c = pages_as_channels ? p * g->spp + s : s;
                    double d = fabs(cp_image_get(img, plane, (int)y, (int)x, c) - expected(g, p, y, x, s));
                    if (d > worst)
                        worst = d;
                }
    return worst;
}

static cp_dtype dtype_of(const gen *g)
{
    if (g->bps < 8)
        return CP_U8;
    int s = g->fmt == SAMPLEFORMAT_INT;
    if (g->fmt == SAMPLEFORMAT_IEEEFP)
        return g->bps == 64 ? CP_F64 : CP_F32;
    switch (g->bps) {
    case 8: return s ? CP_I8 : CP_U8;
    case 16: return s ? CP_I16 : CP_U16;
    case 32: return s ? CP_I32 : CP_U32;
    default: return s ? CP_I64 : CP_U64;
    }
}

/* Write g, read it back with `pages` and check shape and every sample. */
static void check_layout(const char *name, const gen *g, cp_pages pages, double tol)
{
    const char *path = tmp(name);
    CHECKF(write_gen(path, g) == 0, "%s: generator failed", name);
    cp_read_opts o = {.pages = pages};
    cp_image *img = NULL;
    int rc = cp_image_read(path, &o, &img);
    CHECKF(rc == CP_OK, "%s: %s", name, cp_errmsg());
    if (rc)
        return;
    int as_channels = g->pages > 1 && (pages == CP_PAGES_CHANNELS || (pages == CP_PAGES_AUTO && g->spp == 1 &&
                                                                      g->pages <= 4 && !g->desc));
    int want_c = as_channels ? g->pages * g->spp : g->spp, want_z = as_channels ? 1 : g->pages;
    CHECKF(img->width == (int)g->w && img->height == (int)g->h && img->channels == want_c && img->planes == want_z &&
               img->dtype == dtype_of(g),
           "%s: got %dx%dx%dx%d %s, want %dx%ux%ux%d %s", name, img->planes, img->height, img->width, img->channels,
           cp_dtype_name(img->dtype), want_z, g->h, g->w, want_c, cp_dtype_name(dtype_of(g)));
    if (img->width == (int)g->w && img->height == (int)g->h && img->channels == want_c && img->planes == want_z) {
        double err = compare(g, img, as_channels);
        CHECKF(err <= tol, "%s: max error %g (tolerance %g)", name, err, tol);
    }
    cp_image_free(img);
}

static const gen base = {.w = 45, .h = 37, .spp = 1, .bps = 8, .fmt = SAMPLEFORMAT_UINT,
                         .planar = PLANARCONFIG_CONTIG, .photometric = PHOTOMETRIC_MINISBLACK,
                         .compression = COMPRESSION_NONE, .pages = 1};

static void test_sample_types(void)
{
    static const struct { uint16_t bps, fmt; } types[] = {
        {8, SAMPLEFORMAT_UINT}, {16, SAMPLEFORMAT_UINT}, {32, SAMPLEFORMAT_UINT}, {64, SAMPLEFORMAT_UINT},
        {8, SAMPLEFORMAT_INT}, {16, SAMPLEFORMAT_INT}, {32, SAMPLEFORMAT_INT}, {64, SAMPLEFORMAT_INT},
        {16, SAMPLEFORMAT_IEEEFP}, {32, SAMPLEFORMAT_IEEEFP}, {64, SAMPLEFORMAT_IEEEFP},
        {1, SAMPLEFORMAT_UINT}, {2, SAMPLEFORMAT_UINT}, {4, SAMPLEFORMAT_UINT},
    };
    char name[96];
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        for (int be = 0; be <= 1; be++) {
            gen g = base;
            g.bps = types[i].bps;
            g.fmt = types[i].fmt;
            g.bigendian = be;
            snprintf(name, sizeof name, "t_bps%d_fmt%d_%s.tif", g.bps, g.fmt, be ? "be" : "le");
            check_layout(name, &g, CP_PAGES_AUTO, 0);
            g.spp = 3; /* interleaved samples, odd width: bit rows pad per row */
            g.photometric = PHOTOMETRIC_RGB;
            snprintf(name, sizeof name, "t_bps%d_fmt%d_%s_rgb.tif", g.bps, g.fmt, be ? "be" : "le");
            check_layout(name, &g, CP_PAGES_AUTO, 0);
        }
}

static void test_layouts(void)
{
    static const uint16_t comps[] = {COMPRESSION_NONE, COMPRESSION_LZW, COMPRESSION_ADOBE_DEFLATE,
                                     COMPRESSION_PACKBITS, COMPRESSION_DEFLATE, COMPRESSION_ZSTD, COMPRESSION_LZMA,
                                     COMPRESSION_WEBP};
    char name[96];
    for (size_t ci = 0; ci < sizeof comps / sizeof comps[0]; ci++) {
        if (!TIFFIsCODECConfigured(comps[ci]) || comps[ci] == COMPRESSION_WEBP)
            continue;
        for (int spp = 1; spp <= 4; spp++)
            for (int planar = 1; planar <= 2; planar++)
                for (int tiled = 0; tiled <= 1; tiled++) {
                    if (spp == 1 && planar == 2)
                        continue;
                    gen g = base;
                    g.w = 70, g.h = 41; /* partial edge tiles and strips */
                    g.spp = (uint16_t)spp;
                    g.bps = 16;
                    g.planar = (uint16_t)planar;
                    g.photometric = spp >= 3 ? PHOTOMETRIC_RGB : PHOTOMETRIC_MINISBLACK;
                    g.compression = comps[ci];
                    g.tile = tiled ? 16 : 0;
                    g.rps = 7;
                    g.predictor = comps[ci] == COMPRESSION_LZW || comps[ci] == COMPRESSION_ADOBE_DEFLATE ? 2 : 0;
                    snprintf(name, sizeof name, "t_c%u_s%d_p%d_t%d.tif", comps[ci], spp, planar, tiled);
                    check_layout(name, &g, CP_PAGES_AUTO, 0);
                }
    }
    gen g = base;
    g.bigtiff = 1;
    g.bps = 32;
    g.fmt = SAMPLEFORMAT_IEEEFP;
    g.pages = 3;
    check_layout("t_bigtiff.tif", &g, CP_PAGES_AUTO, 0);
    g.bigendian = 1;
    g.tile = 32;
    g.compression = COMPRESSION_ADOBE_DEFLATE;
    check_layout("t_bigtiff_be_tiled.tif", &g, CP_PAGES_PLANES, 0);
    /* predictor 3 (floating point) */
    g = base;
    g.bps = 32;
    g.fmt = SAMPLEFORMAT_IEEEFP;
    g.compression = COMPRESSION_ADOBE_DEFLATE;
    g.predictor = 3;
    check_layout("t_fpredict.tif", &g, CP_PAGES_AUTO, 0);
}

static void test_pages(void)
{
    gen g = base;
    g.bps = 16;
    g.pages = 3;
    check_layout("t_3pages_auto.tif", &g, CP_PAGES_AUTO, 0);     /* -> 3 channels */
    check_layout("t_3pages_planes.tif", &g, CP_PAGES_PLANES, 0); /* -> 3 planes */
    g.pages = 5;
    check_layout("t_5pages_auto.tif", &g, CP_PAGES_AUTO, 0); /* -> 5 planes */
    check_layout("t_5pages_chan.tif", &g, CP_PAGES_CHANNELS, 0);
    g.pages = 2;
    g.spp = 3;
    g.photometric = PHOTOMETRIC_RGB;
    check_layout("t_2rgbpages.tif", &g, CP_PAGES_AUTO, 0); /* multi-sample pages: planes */

    /* descriptions that only look like metadata fall back to the page rule */
    static const char *junk[] = {
        "ImageJ=", "ImageJ=1\nchannels=99999999999999999999\nslices=-3\n", "{\"shape\": [", "{\"shape\": [2, 2, 99, 1]}",
        "{\"shape\": [9223372036854775807, 9223372036854775807, 37, 45]}", "Pixels SizeC=\"2\"",
        "<OME><Pixels DimensionOrder=\"XY\" SizeC=\"2\" SizeZ=\"2\" SizeT=\"1\"", "<OME><Pixels SizeC=\"2147483647\" "
        "SizeZ=\"2147483647\" SizeT=\"2147483647\" DimensionOrder=\"XYCZT\">",
    };
    g = base;
    g.pages = 4;
    for (size_t k = 0; k < sizeof junk / sizeof junk[0]; k++) {
        g.desc = junk[k];
        const char *jp = tmp("t_junkdesc.tif");
        write_gen(jp, &g);
        cp_image *img = NULL;
        CHECKF(cp_image_read(jp, NULL, &img) == CP_OK && img->channels == 4 && img->planes == 1, "%s: %s", junk[k],
               cp_errmsg());
        cp_image_free(img);
    }

    /* first page only */
    g = base;
    g.pages = 4;
    const char *path = tmp("t_first.tif");
    write_gen(path, &g);
    cp_read_opts o = {.pages = CP_PAGES_FIRST};
    cp_image *img;
    CHECK_OK(cp_image_read(path, &o, &img));
    CHECK(img->channels == 1 && img->planes == 1);
    g.pages = 1;
    CHECK(compare(&g, img, 0) == 0);
    cp_image_free(img);
}

/* ImageJ orders pages channel fastest, then slice, then frame. */
static void test_imagej(void)
{
    gen g = base;
    g.bps = 16;
    g.pages = 2 * 3 * 2;
    g.desc = "ImageJ=1.53f\nimages=12\nchannels=2\nslices=3\nframes=2\nhyperstack=true\nmode=composite\n";
    const char *path = tmp("t_ij.tif");
    CHECK(write_gen(path, &g) == 0);
    cp_image *img;
    CHECK_OK(cp_image_read(path, NULL, &img));
    CHECKF(img->channels == 2 && img->planes == 6, "%d channels %d planes", img->channels, img->planes);
    int bad = 0;
    for (int p = 0; p < g.pages; p++)
        for (uint32_t y = 0; y < g.h; y += 5)
            for (uint32_t x = 0; x < g.w; x += 3)
                bad += cp_image_get(img, p / 2, (int)y, (int)x, p % 2) != expected(&g, p, y, x, 0);
    CHECK(bad == 0);
    cp_image_free(img);
    /* ImageJ with 4 slices must stay planes even though 4 pages would be channels */
    g.pages = 4;
    g.desc = "ImageJ=1.53f\nimages=4\nslices=4\n";
    check_layout("t_ij_slices.tif", &g, CP_PAGES_AUTO, 0);
    g.desc = "ImageJ=1.53f\nimages=4\n"; /* a plain stack: slices */
    check_layout("t_ij_images.tif", &g, CP_PAGES_AUTO, 0);
    /* ImageJ's > 4 GB layout (one IFD, more images) is refused, not half-read */
    g.pages = 1;
    g.desc = "ImageJ=1.53f\nimages=5\nslices=5\n";
    path = tmp("t_ij_big.tif");
    CHECK(write_gen(path, &g) == 0);
    CHECK(cp_image_read(path, NULL, &img) == CP_EUNSUPPORTED && strstr(cp_errmsg(), "t_ij_big.tif"));
    cp_read_opts first = {.pages = CP_PAGES_FIRST};
    CHECK_OK(cp_image_read(path, &first, &img));
    cp_image_free(img);
    g.pages = 4;
    /* inconsistent ImageJ counts: the page rule applies */
    g.desc = "ImageJ=1.53f\nimages=9\nchannels=3\nslices=3\n";
    path = tmp("t_ij_bad.tif");
    CHECK(write_gen(path, &g) == 0);
    CHECK_OK(cp_image_read(path, NULL, &img));
    CHECK(img->channels == 4 && img->planes == 1);
    cp_image_free(img);
}

/* Files written by tifffile (testdata/io, see testdata/README.md): its plain
 * {"shape"} description, OME-XML in both dimension orders, ImageJ TZCYX. */
static void test_metadata_files(void)
{
    static const struct { const char *name; int z, c; cp_dtype t; } files[] = {
        {"tifffile_zcyx.tif", 3, 2, CP_U16}, {"ome_zcyx.ome.tif", 3, 2, CP_U16}, {"ome_czyx.ome.tif", 3, 2, CP_U16},
        {"imagej_tzcyx.tif", 6, 2, CP_U16},  {"imagej_4z.tif", 4, 1, CP_F32},
    };
    const char *td = getenv("CP_TESTDATA");
    for (int k = 0; k < 5; k++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/io/%s", td && *td ? td : "testdata", files[k].name);
        cp_image *img = NULL;
        int rc = cp_image_read(path, NULL, &img);
        CHECKF(rc == CP_OK, "%s", cp_errmsg());
        if (rc)
            continue;
        CHECKF(img->planes == files[k].z && img->channels == files[k].c && img->height == 5 && img->width == 7 &&
                   img->dtype == files[k].t,
               "%s: %dx%dx%dx%d", files[k].name, img->planes, img->height, img->width, img->channels);
        int bad = 0;
        for (int z = 0; z < img->planes && img->channels == files[k].c && img->planes == files[k].z; z++)
            for (int c = 0; c < img->channels; c++)
                for (int y = 0; y < 5; y++)
                    for (int x = 0; x < 7; x++) {
                        double want;
                        if (k <= 1)
                            want = (((z * 2 + c) * 5 + y) * 7 + x) * 7 + 1;
                        else if (k == 2)
                            want = (((c * 3 + z) * 5 + y) * 7 + x) * 5 + 3;
                        else if (k == 3)
                            want = ((((z / 3) * 3 + z % 3) * 2 + c) * 5 + y) * 7 * 3 + x * 3 + 2;
                        else
                            want = ((z * 5 + y) * 7 + x) / 8.0;
                        bad += cp_image_get(img, z, y, x, c) != want;
                    }
        CHECKF(bad == 0, "%s: %d samples differ", files[k].name, bad);
        cp_image_free(img);
    }
}

static void test_photometric(void)
{
    /* palette: index values, as tifffile and Cellpose read them */
    gen g = base;
    g.photometric = PHOTOMETRIC_PALETTE;
    check_layout("t_palette.tif", &g, CP_PAGES_AUTO, 0);
    g.bps = 4;
    check_layout("t_palette4.tif", &g, CP_PAGES_AUTO, 0);
    /* min-is-white: stored values, not inverted */
    g = base;
    g.photometric = PHOTOMETRIC_MINISWHITE;
    check_layout("t_miniswhite.tif", &g, CP_PAGES_AUTO, 0);
    /* JPEG: grey, RGB and YCbCr (decoded to RGB), strips and tiles */
    g = base;
    g.w = 67, g.h = 50;
    g.compression = COMPRESSION_JPEG;
    check_layout("t_jpeg_gray.tif", &g, CP_PAGES_AUTO, 6);
    g.spp = 3;
    g.photometric = PHOTOMETRIC_RGB;
    check_layout("t_jpeg_rgb.tif", &g, CP_PAGES_AUTO, 6);
    g.photometric = PHOTOMETRIC_YCBCR;
    g.rps = 16;
    check_layout("t_jpeg_ycbcr.tif", &g, CP_PAGES_AUTO, 10);
    g.tile = 32;
    check_layout("t_jpeg_ycbcr_tiled.tif", &g, CP_PAGES_AUTO, 10);
    g.pages = 3;
    g.tile = 0;
    g.spp = 1;
    g.photometric = PHOTOMETRIC_MINISBLACK;
    check_layout("t_jpeg_pages.tif", &g, CP_PAGES_AUTO, 6);

    /* uncompressed YCbCr goes through libtiff's RGBA conversion: neutral chroma is grey */
    const char *path = tmp("t_ycbcr_raw.tif");
    TIFF *t = TIFFOpen(path, "w");
    TIFFSetField(t, TIFFTAG_IMAGEWIDTH, 4);
    TIFFSetField(t, TIFFTAG_IMAGELENGTH, 2);
    TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, 3);
    TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, 8);
    TIFFSetField(t, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_YCBCR);
    TIFFSetField(t, TIFFTAG_YCBCRSUBSAMPLING, 1, 1);
    TIFFSetField(t, TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG);
    unsigned char row[12];
    for (int y = 0; y < 2; y++) {
        for (int x = 0; x < 4; x++)
            row[x * 3] = (unsigned char)(50 + 40 * x + 10 * y), row[x * 3 + 1] = 128, row[x * 3 + 2] = 128;
        TIFFWriteScanline(t, row, (uint32_t)y, 0);
    }
    TIFFClose(t);
    cp_image *img;
    CHECK_OK(cp_image_read(path, NULL, &img));
    CHECK(img->channels == 3 && img->dtype == CP_U8 && img->width == 4 && img->height == 2);
    double worst = 0;
    for (int y = 0; y < 2; y++)
        for (int x = 0; x < 4; x++)
            for (int c = 0; c < 3; c++) {
                double d = fabs(cp_image_get(img, 0, y, x, c) - (50 + 40 * x + 10 * y));
                worst = d > worst ? d : worst;
            }
    CHECKF(worst <= 2, "YCbCr max error %g", worst);
    cp_image_free(img);
}

/* Pages of different sizes: reduced-resolution pages are skipped; any other
 * mismatch fails clearly unless only the first page is asked for. */
static void test_mixed_pages(void)
{
    const char *path = tmp("t_mixed.tif");
    for (int reduced = 0; reduced <= 1; reduced++) {
        TIFF *t = TIFFOpen(path, "w");
        for (int p = 0; p < 2; p++) {
            uint32_t w = p ? 8 : 16;
            TIFFSetField(t, TIFFTAG_IMAGEWIDTH, w);
            TIFFSetField(t, TIFFTAG_IMAGELENGTH, w);
            TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, 8);
            TIFFSetField(t, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_MINISBLACK);
            if (p && reduced)
                TIFFSetField(t, TIFFTAG_SUBFILETYPE, FILETYPE_REDUCEDIMAGE);
            unsigned char row[16];
            for (uint32_t y = 0; y < w; y++) {
                memset(row, (int)(y + p * 100), sizeof row);
                TIFFWriteScanline(t, row, y, 0);
            }
            TIFFWriteDirectory(t);
        }
        TIFFClose(t);
        cp_image *img = NULL;
        int rc = cp_image_read(path, NULL, &img);
        if (reduced) {
            CHECKF(rc == CP_OK && img->width == 16 && img->channels == 1 && img->planes == 1, "%s", cp_errmsg());
            CHECK(img && cp_image_get(img, 0, 5, 3, 0) == 5);
        } else {
            CHECK(rc == CP_EUNSUPPORTED);
            CHECKF(strstr(cp_errmsg(), "t_mixed.tif") && strstr(cp_errmsg(), "page 2"), "%s", cp_errmsg());
            cp_read_opts o = {.pages = CP_PAGES_FIRST};
            CHECK_OK(cp_image_read(path, &o, &img));
        }
        cp_image_free(img);
    }
}

static void test_writer(void)
{
    cp_image *img;
    CHECK_OK(cp_image_create(&img, 30, 20, 2, 3, CP_U16));
    uint16_t *d = img->data;
    for (size_t i = 0; i < cp_image_samples(img); i++)
        d[i] = (uint16_t)(i * 37);
    const char *path = tmp("w_hyper.tif");
    cp_write_opts o = {.imagej = 1};
    CHECK_OK(cp_tiff_write(path, img, &o));
    TIFF *t = TIFFOpen(path, "r");
    CHECK(t != NULL);
    if (t) {
        CHECK(TIFFNumberOfDirectories(t) == 6);
        char *desc = NULL, *soft = NULL;
        uint16_t comp = 0;
        CHECK(TIFFGetField(t, TIFFTAG_IMAGEDESCRIPTION, &desc) && strstr(desc, "channels=2\n") &&
              strstr(desc, "slices=3\n") && strstr(desc, "images=6\n") && strncmp(desc, "ImageJ=", 7) == 0);
        CHECK(TIFFGetField(t, TIFFTAG_SOFTWARE, &soft) && strncmp(soft, "cptools ", 8) == 0);
        CHECK(TIFFGetField(t, TIFFTAG_COMPRESSION, &comp) && comp == COMPRESSION_ADOBE_DEFLATE);
        /* page 3 is plane 1, channel 0 */
        TIFFSetDirectory(t, 2);
        uint16_t row[30];
        for (uint32_t y = 0; y <= 4; y++) /* deflate strips decode sequentially */
            TIFFReadScanline(t, row, y, 0);
        CHECK(row[7] == (uint16_t)((((1 * 20 + 4) * 30 + 7) * 2 + 0) * 37));
        TIFFClose(t);
    }
    cp_image *back;
    CHECK_OK(cp_image_read(path, NULL, &back));
    CHECK(back->channels == 2 && back->planes == 3 && memcmp(back->data, img->data, cp_image_samples(img) * 2) == 0);
    cp_image_free(back);

    /* the in-memory encoder gives the very bytes of the file, even right
     * after a failed read left a libtiff message behind */
    cp_image *junk = NULL;
    test_write_bytes(tmp("w_junk.tif"), "II*\0\x08\0\0\0\xff\xff", 10);
    CHECK(cp_image_read(tmp("w_junk.tif"), NULL, &junk) == CP_EFORMAT);
    path = tmp("w_hyper.tif"); /* tmp() reuses its buffer */
    void *mem = NULL;
    size_t mem_size = 0, file_size = 0;
    CHECK_OK(cp_tiff_write_mem(img, &o, "mem.tif", &mem, &mem_size));
    unsigned char *file = test_slurp(path, &file_size);
    CHECK(file && mem && file_size == mem_size && memcmp(file, mem, mem_size) == 0);
    free(file);
    free(mem);

    /* overwrite in place; no temporary file left behind */
    CHECK_OK(cp_tiff_write(path, img, NULL));
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "test $(ls -A '%s' | grep -c '^\\.w_hyper') = 0", test_tmp_dir());
    CHECK(system(cmd) == 0);
    /* unwritable destination */
    CHECK(cp_tiff_write("/nonexistent-dir/x.tif", img, NULL) == CP_EIO);
    CHECK(strstr(cp_errmsg(), "/nonexistent-dir/x.tif") != NULL);
    cp_image_free(img);

    /* RGB u8 stays one interleaved page, photometric RGB */
    CHECK_OK(cp_image_create(&img, 5, 4, 3, 1, CP_U8));
    path = tmp("w_rgb.tif");
    CHECK_OK(cp_image_write(path, img, NULL));
    t = TIFFOpen(path, "r");
    uint16_t spp = 0, photo = 0;
    CHECK(t && TIFFGetField(t, TIFFTAG_SAMPLESPERPIXEL, &spp) && spp == 3);
    CHECK(t && TIFFGetField(t, TIFFTAG_PHOTOMETRIC, &photo) && photo == PHOTOMETRIC_RGB);
    CHECK(t && TIFFNumberOfDirectories(t) == 1);
    if (t)
        TIFFClose(t);
    cp_image_free(img);
}

/* Pixels of a written TIFF as ImageJ reads an ImageJ stack: the strips of all
 * pages back to back, page after page, the first at the first page's first
 * strip (issue 17: directories between pages were read as pixels). Checks
 * offset[k+1] == offset[k] + count[k] over every strip of every page, and,
 * uncompressed, that the block from the first strip holds every page's
 * samples in page order (page = plane x channels + channel). */
static void check_contiguous(const char *what, const char *path, const cp_image *img, int one_page_rgb,
                             int uncompressed)
{
    TIFF *t = TIFFOpen(path, "r");
    CHECKF(t != NULL, "%s", what);
    if (!t)
        return;
    int npages = one_page_rgb ? img->planes : img->planes * img->channels;
    CHECKF(TIFFNumberOfDirectories(t) == (tdir_t)npages, "%s: %u pages", what, (unsigned)TIFFNumberOfDirectories(t));
    uint64_t first = 0, next = 0, gaps = 0, strips = 0;
    for (int p = 0; p < npages && TIFFSetDirectory(t, (tdir_t)p); p++) {
        uint32_t ns = TIFFNumberOfStrips(t);
        for (uint32_t k = 0; k < ns; k++, strips++) {
            uint64_t off = TIFFGetStrileOffset(t, k), cnt = TIFFGetStrileByteCount(t, k);
            if (strips == 0)
                first = off;
            else
                gaps += off != next;
            next = off + cnt;
        }
    }
    TIFFClose(t);
    CHECKF(gaps == 0 && strips >= (uint64_t)npages, "%s: %llu of %llu strips not right after the previous one", what,
           (unsigned long long)gaps, (unsigned long long)strips);
    if (!uncompressed)
        return;
    size_t n = 0, es = cp_dtype_size(img->dtype), page = (size_t)img->width * img->height * es;
    unsigned char *file = test_slurp(path, &n);
    size_t total = cp_image_samples(img) * es;
    CHECKF(file && first + total == next && next <= n, "%s: block of %llu..%llu in %zu bytes", what,
           (unsigned long long)first, (unsigned long long)next, n);
    int bad = 0;
    if (file && next <= n && first + total == next) {
        const unsigned char *block = file + first, *src = img->data;
        size_t C = (size_t)img->channels, px = (size_t)img->width * img->height;
        for (int p = 0; p < npages && !one_page_rgb; p++)
            for (size_t i = 0; i < px; i++) {
                size_t z = (size_t)p / C, c = (size_t)p % C;
                bad += memcmp(block + (size_t)p * page + i * es, src + ((z * px + i) * C + c) * es, es) != 0;
            }
        if (one_page_rgb)
            bad += memcmp(block, src, total) != 0;
    }
    CHECKF(bad == 0, "%s: %d samples differ from ImageJ's reading", what, bad);
    free(file);
}

static void test_contiguous_pages(void)
{
    /* cpcells' cells (u16, 1 to 5 channels, ImageJ), tiny and with several
     * strips per page; stacks; RGB kept as one page; deflate too */
    struct { int w, h, c, z; cp_dtype dt; int imagej; cp_compression comp; } cases[] = {
        {2, 2, 3, 1, CP_U16, 1, CP_COMPRESS_NONE},   {1, 1, 2, 1, CP_U16, 1, CP_COMPRESS_NONE},
        {3, 2, 5, 1, CP_U16, 1, CP_COMPRESS_NONE},   {300, 400, 4, 1, CP_U16, 1, CP_COMPRESS_NONE},
        {17, 9, 1, 1, CP_U16, 0, CP_COMPRESS_NONE},  {40, 30, 2, 3, CP_F32, 0, CP_COMPRESS_NONE},
        {200, 500, 3, 2, CP_U8, 0, CP_COMPRESS_NONE}, {300, 400, 3, 1, CP_U16, 1, CP_COMPRESS_DEFLATE},
        {64, 50, 6, 2, CP_U8, 0, CP_COMPRESS_LZW},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        cp_image *img;
        CHECK_OK(cp_image_create(&img, cases[k].w, cases[k].h, cases[k].c, cases[k].z, cases[k].dt));
        unsigned char *d = img->data;
        for (size_t i = 0; i < cp_image_samples(img) * cp_dtype_size(img->dtype); i++)
            d[i] = (unsigned char)(i * 131 + i / 251); /* no two pages alike */
        cp_write_opts o = {.compression = cases[k].comp, .imagej = cases[k].imagej};
        int rgb = (img->channels == 3 || img->channels == 4) && !o.imagej &&
                  (img->dtype == CP_U8 || img->dtype == CP_U16);
        int raw = cases[k].comp == CP_COMPRESS_NONE;
        char what[96];
        snprintf(what, sizeof what, "case %zu file", k);
        CHECK_OK(cp_tiff_write(tmp("w_contig.tif"), img, &o));
        check_contiguous(what, tmp("w_contig.tif"), img, rgb, raw);
        void *mem = NULL;
        size_t size = 0;
        CHECK_OK(cp_tiff_write_mem(img, &o, "mem.tif", &mem, &size));
        CHECK(mem && test_write_bytes(tmp("w_contig_mem.tif"), mem, size) == 0);
        snprintf(what, sizeof what, "case %zu memory", k);
        check_contiguous(what, tmp("w_contig_mem.tif"), img, rgb, raw);
        free(mem);
        cp_image *back;
        CHECK_OK(cp_image_read(tmp("w_contig.tif"), NULL, &back));
        CHECKF(back && back->channels == img->channels && back->planes == img->planes &&
                   memcmp(back->data, img->data, cp_image_samples(img) * cp_dtype_size(img->dtype)) == 0,
               "case %zu reads back", k);
        cp_image_free(back);
        cp_image_free(img);
    }
}

/* Minimal little-endian TIFF with one strip, built by hand so the header can lie. */
static size_t handmade_tiff(unsigned char *buf, uint32_t w, uint32_t h, uint32_t bytecount, uint16_t spp)
{
    size_t n = 0;
    memcpy(buf, "II*\0", 4);
    uint32_t ifd = 8;
    memcpy(buf + 4, &ifd, 4);
    n = 8;
    struct { uint16_t tag, type; uint32_t count, value; } e[] = {
        {256, 4, 1, w}, {257, 4, 1, h}, {258, 3, 1, 8}, {259, 3, 1, 1}, {262, 3, 1, 1},
        {273, 4, 1, 200}, {277, 3, 1, spp}, {278, 4, 1, h}, {279, 4, 1, bytecount},
    };
    uint16_t count = sizeof e / sizeof e[0];
    memcpy(buf + n, &count, 2);
    n += 2;
    for (int i = 0; i < count; i++) {
        memcpy(buf + n, &e[i].tag, 2);
        memcpy(buf + n + 2, &e[i].type, 2);
        memcpy(buf + n + 4, &e[i].count, 4);
        memcpy(buf + n + 8, &e[i].value, 4);
        n += 12;
    }
    memset(buf + n, 0, 4);
    n += 4;
    memset(buf + n, 7, 200 + 64 - n);
    return 200 + 64;
}

static void test_bad_files(void)
{
    cp_image *img = NULL;
    /* missing */
    CHECK(cp_image_read(tmp("no_such.tif"), NULL, &img) == CP_EIO);
    CHECKF(strstr(cp_errmsg(), "no_such.tif") != NULL, "%s", cp_errmsg());
    /* empty and not an image */
    const char *path = tmp("b_empty.tif");
    test_write_bytes(path, "", 0);
    CHECK(cp_image_read(path, NULL, &img) == CP_EFORMAT && strstr(cp_errmsg(), "b_empty.tif"));
    path = tmp("b_text.tif");
    test_write_bytes(path, "hello world\n", 12);
    CHECK(cp_image_read(path, NULL, &img) == CP_EFORMAT && strstr(cp_errmsg(), "b_text.tif"));
    /* TIFF magic followed by garbage */
    path = tmp("b_garbage.tif");
    test_write_bytes(path, "II*\0\xff\xff\xff\x7f garbage", 16);
    CHECK(cp_image_read(path, NULL, &img) == CP_EFORMAT && strstr(cp_errmsg(), "b_garbage.tif"));
    CHECKF(strchr(cp_errmsg(), '\n') == NULL, "%s", cp_errmsg());

    /* a header claiming 100000 x 100000 pixels must fail before allocating */
    unsigned char buf[512];
    size_t n = handmade_tiff(buf, 100000, 100000, 64, 1);
    path = tmp("b_huge.tif");
    test_write_bytes(path, buf, n);
    CHECK(cp_image_read(path, NULL, &img) == CP_ELIMIT && strstr(cp_errmsg(), "b_huge.tif"));
    /* under the limit, but more pixels than the file's bytes can hold: corrupt
       (libtiff alone would read a lone strip as many and return garbage) */
    n = handmade_tiff(buf, 4000, 3000, 64, 1);
    path = tmp("b_short.tif");
    test_write_bytes(path, buf, n);
    CHECK(cp_image_read(path, NULL, &img) == CP_EFORMAT);
    CHECKF(strstr(cp_errmsg(), "b_short.tif: TIFF header claims 12000000 bytes of uncompressed pixel data") != NULL,
           "%s", cp_errmsg());
    /* the handmade file itself is sound at a size its data covers */
    n = handmade_tiff(buf, 8, 8, 64, 1);
    path = tmp("b_small.tif");
    test_write_bytes(path, buf, n);
    CHECK_OK(cp_image_read(path, NULL, &img));
    CHECK(img && img->width == 8 && cp_image_get(img, 0, 7, 7, 0) == 7);
    cp_image_free(img);
    img = NULL;
    /* the file ends inside the only strip */
    n = handmade_tiff(buf, 8, 8, 64, 1);
    path = tmp("b_short.tif");
    test_write_bytes(path, buf, 200 + 10);
    CHECK(cp_image_read(path, NULL, &img) != CP_OK && strstr(cp_errmsg(), "b_short.tif"));
    /* limit applies to real files too */
    cp_set_max_pixels(1000);
    CHECK(cp_image_read(tmp("t_3pages_auto.tif"), NULL, &img) == CP_ELIMIT);
    cp_set_max_pixels(0);

    /* truncated at every eighth of a compressed multi-page file, and corrupted
     * bytes all through it: clean errors, never a crash */
    gen g = base;
    g.w = 64, g.h = 64, g.bps = 16, g.pages = 2, g.compression = COMPRESSION_ADOBE_DEFLATE, g.tile = 32;
    path = tmp("b_src.tif");
    write_gen(path, &g);
    size_t len;
    unsigned char *orig = test_slurp(path, &len);
    CHECK(orig != NULL);
    if (!orig)
        return;
    const char *cut = tmp("b_cut.tif");
    int failed = 0;
    for (int k = 1; k < 8; k++) {
        test_write_bytes(cut, orig, len * k / 8);
        int rc = cp_image_read(cut, NULL, &img);
        failed += rc != CP_OK;
        if (rc == CP_OK)
            cp_image_free(img);
        else
            CHECKF(strstr(cp_errmsg(), "b_cut.tif") && !strchr(cp_errmsg(), '\n'), "%s", cp_errmsg());
    }
    CHECK(failed == 7);
    free(orig);

    /* corrupted bytes in every codec and layout: clean errors or a clean
     * read, never a crash (the check is reaching the end under ASan/UBSan) */
    static const struct { uint16_t comp, spp, planar, bps, fmt; uint32_t tile; int bigtiff, pages; } src[] = {
        {COMPRESSION_ADOBE_DEFLATE, 1, 1, 16, 1, 32, 0, 2}, {COMPRESSION_LZW, 3, 2, 8, 1, 0, 0, 1},
        {COMPRESSION_PACKBITS, 2, 1, 8, 1, 16, 1, 1},       {COMPRESSION_JPEG, 3, 1, 8, 1, 0, 0, 1},
        {COMPRESSION_NONE, 1, 1, 4, 1, 0, 0, 3},            {COMPRESSION_LZW, 1, 1, 32, 3, 16, 1, 2},
    };
    unsigned char *mut = NULL;
    uint32_t seed = 12345;
    int reads = 0;
    for (size_t si = 0; si < sizeof src / sizeof src[0]; si++) {
        g = base;
        g.w = 48, g.h = 40;
        g.compression = src[si].comp, g.spp = src[si].spp, g.planar = src[si].planar, g.bps = src[si].bps;
        g.fmt = src[si].fmt, g.tile = src[si].tile, g.bigtiff = src[si].bigtiff, g.pages = src[si].pages;
        g.photometric = g.spp == 3 ? PHOTOMETRIC_RGB : PHOTOMETRIC_MINISBLACK;
        if (write_gen(path, &g) != 0)
            continue;
        orig = test_slurp(path, &len);
        if (!orig)
            continue;
        mut = realloc(mut, len);
        for (int k = 0; k < 120; k++) {
            memcpy(mut, orig, len);
            for (int j = 0; j < 3; j++) {
                seed = seed * 1103515245u + 12345u;
                size_t at = (seed >> 8) % len;
                if (k % 2 == 0) /* half the time aim at the IFDs and tag data near the end or start */
                    at = k % 4 == 0 ? (seed >> 8) % (len < 256 ? len : 256) : len - 1 - (seed >> 8) % (len < 512 ? len : 512);
                mut[at] ^= (unsigned char)(1u << ((seed >> 4) & 7));
            }
            test_write_bytes(cut, mut, k % 5 == 4 ? len - (seed >> 8) % len : len);
            if (cp_image_read(cut, NULL, &img) == CP_OK)
                cp_image_free(img);
            else
                CHECKF(strstr(cp_errmsg(), "b_cut.tif") && !strchr(cp_errmsg(), '\n'), "%s", cp_errmsg());
            reads++;
        }
        free(orig);
    }
    CHECK(reads == 720);
    free(mut);
}

int main(void)
{
    /* the library must never print: libtiff's complaints go to cp_errmsg() */
    test_sample_types();
    test_layouts();
    test_pages();
    test_imagej();
    test_metadata_files();
    test_photometric();
    test_mixed_pages();
    test_writer();
    test_contiguous_pages();
    test_bad_files();
    return test_result();
}
