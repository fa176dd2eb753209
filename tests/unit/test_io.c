/* Image I/O: round trips for every writer, real files from the shared data. */
#include <fcntl.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cellpose/cellpose.h"
#include "test.h"

static const char *tmp(const char *name)
{
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", test_tmp_dir(), name);
    return buf;
}

/* An image whose every sample is distinct and depends on its position. */
static cp_image *pattern(int w, int h, int c, int z, cp_dtype t)
{
    cp_image *img;
    if (cp_image_create(&img, w, h, c, z, t) != CP_OK)
        return NULL;
    size_t n = cp_image_samples(img);
    for (size_t i = 0; i < n; i++) {
        double v = (double)((i * 2654435761u) % 251) + (double)(i % 7);
        switch (t) {
        case CP_U8: ((uint8_t *)img->data)[i] = (uint8_t)v; break;
        case CP_U16: ((uint16_t *)img->data)[i] = (uint16_t)(v * 257); break;
        case CP_U32: ((uint32_t *)img->data)[i] = (uint32_t)(v * 16777259.0); break;
        case CP_I8: ((int8_t *)img->data)[i] = (int8_t)(v - 128); break;
        case CP_I16: ((int16_t *)img->data)[i] = (int16_t)(v * 100 - 12000); break;
        case CP_I32: ((int32_t *)img->data)[i] = (int32_t)(v * 8000000 - 1000000000); break;
        case CP_I64: ((int64_t *)img->data)[i] = (int64_t)(v * 1e15) - 7; break;
        case CP_U64: ((uint64_t *)img->data)[i] = (uint64_t)(v * 1e16) + 3; break;
        case CP_F32: ((float *)img->data)[i] = (float)(v / 3.0 - 20); break;
        case CP_F64: ((double *)img->data)[i] = v / 7.0 - 11; break;
        default: break;
        }
    }
    return img;
}

static int same_image(const cp_image *a, const cp_image *b)
{
    return a && b && a->width == b->width && a->height == b->height && a->channels == b->channels &&
           a->planes == b->planes && a->dtype == b->dtype &&
           memcmp(a->data, b->data, cp_image_samples(a) * cp_dtype_size(a->dtype)) == 0;
}

static void roundtrip(const char *name, int w, int h, int c, int z, cp_dtype t, const cp_write_opts *o)
{
    cp_image *img = pattern(w, h, c, z, t), *back = NULL;
    const char *p = tmp(name);
    CHECK_OK(cp_image_write(p, img, o));
    CHECK_OK(cp_image_read(p, NULL, &back));
    CHECKF(same_image(img, back), "%s: %dx%dx%dx%d %s read back as %dx%dx%dx%d %s", name, z, h, w, c,
           cp_dtype_name(t), back ? back->planes : 0, back ? back->height : 0, back ? back->width : 0,
           back ? back->channels : 0, back ? cp_dtype_name(back->dtype) : "-");
    cp_image_free(img);
    cp_image_free(back);
}

static void test_roundtrips(void)
{
    static const cp_dtype tiff_types[] = {CP_U8, CP_U16, CP_U32, CP_I8, CP_I16, CP_I32, CP_F32, CP_F64, CP_I64, CP_U64};
    char name[64];
    for (size_t i = 0; i < sizeof tiff_types / sizeof tiff_types[0]; i++) {
        snprintf(name, sizeof name, "rt_%s.tif", cp_dtype_name(tiff_types[i]));
        roundtrip(name, 37, 23, 1, 1, tiff_types[i], NULL);
        snprintf(name, sizeof name, "rt_%s_z.tiff", cp_dtype_name(tiff_types[i]));
        roundtrip(name, 19, 11, 2, 3, tiff_types[i], NULL);
        snprintf(name, sizeof name, "rt_%s.npy", cp_dtype_name(tiff_types[i]));
        roundtrip(name, 7, 5, 3, 1, tiff_types[i], NULL);
        snprintf(name, sizeof name, "rt_%s_z.npy.gz", cp_dtype_name(tiff_types[i]));
        roundtrip(name, 7, 5, 1, 6, tiff_types[i], NULL);
    }
    /* NPY shapes that would be ambiguous as 3-D arrays go 4-D */
    roundtrip("rt_narrow_z.npy", 3, 5, 1, 6, CP_U16, NULL);
    roundtrip("rt_5c.npy", 7, 5, 5, 1, CP_F32, NULL);
    roundtrip("rt_2c3z.npy", 7, 5, 2, 3, CP_I32, NULL);
    cp_write_opts o = {0};
    for (int comp = CP_COMPRESS_NONE; comp <= CP_COMPRESS_PACKBITS; comp++) {
        o.compression = (cp_compression)comp;
        snprintf(name, sizeof name, "rt_comp%d.tif", comp);
        roundtrip(name, 300, 250, 1, 1, CP_U16, &o);
        snprintf(name, sizeof name, "rt_comp%d_rgb.tif", comp);
        roundtrip(name, 64, 300, 3, 2, CP_U8, &o);
    }
    o.compression = CP_COMPRESS_DEFAULT;
    o.imagej = 1;
    roundtrip("rt_ij_rgb.tif", 40, 30, 3, 1, CP_U8, &o);
    roundtrip("rt_ij_4z.tif", 40, 30, 1, 4, CP_U16, &o);
    roundtrip("rt_ij_2c3z.tif", 40, 30, 2, 3, CP_F32, &o);
    roundtrip("rt_3z.tif", 40, 30, 1, 3, CP_U16, NULL); /* 3 pages must not turn into channels */
    roundtrip("rt_rgba16.tif", 40, 30, 4, 1, CP_U16, NULL);
    for (int c = 1; c <= 4; c++) {
        snprintf(name, sizeof name, "rt_%dc_8.png", c);
        roundtrip(name, 33, 17, c, 1, CP_U8, NULL);
        snprintf(name, sizeof name, "rt_%dc_16.png", c);
        roundtrip(name, 33, 17, c, 1, CP_U16, NULL);
    }
}

static uint64_t fnv1a(const cp_image *img)
{
    const unsigned char *p = img->data;
    size_t n = cp_image_samples(img) * cp_dtype_size(img->dtype);
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* FNV-1a 64 of the decoded samples (planes, rows, columns, channels; native
 * little-endian bytes), computed independently with tifffile / PIL / numpy. */
static const struct {
    const char *file;
    int z, h, w, c;
    cp_dtype t;
    uint64_t fnv;
} real[] = {
    {"data/nogt/bbbc022_IXMtest_A02_s9.tif", 1, 395, 695, 3, CP_U16, 0x017cf2546bc05a01ull}, /* ImageJ channels */
    {"data/nogt/bpae_actin.tif", 1, 680, 1100, 1, CP_F32, 0x36aa0632d96135f2ull},
    {"data/nogt/cellprofiler_fly_01_POS002_D.tif", 1, 1006, 1000, 1, CP_U8, 0x92f7d541aa8842dfull}, /* palette */
    {"data/nogt/cellprofiler_human_D03f00d0.tif", 1, 512, 512, 1, CP_U8, 0x870b2e2333f4fc46ull}, /* PackBits */
    {"data/nogt/cellprofiler_speckles_1-162hrh2ax2.tif", 1, 1000, 1200, 1, CP_U16, 0x24657f12be68ebadull}, /* BE */
    {"data/nogt/ebimage_cells.tif", 1, 510, 510, 4, CP_U8, 0x8b0c3781b3313ac5ull}, /* JPEG, 4 pages (PIL) */
    {"data/nogt/hela-cells.tif", 1, 512, 672, 3, CP_U16, 0x5903bb0b9ec8fdd7ull}, /* 48-bit RGB */
    {"data/nogt/instanseg_Fluorescence_example.tif", 1, 450, 450, 2, CP_U8, 0xfa16ab8d3d30c222ull},
    {"data/nogt/instanseg_HE_example.tif", 1, 1484, 1380, 3, CP_U8, 0x6ea6a4c51516857full}, /* tiled YCbCr JPEG (PIL) */
    {"data/dsb2018/00071198d059ba7f5914a526d124d28e6d010c92466da21d4a04cd5413362552_img.png", 1, 256, 256, 4, CP_U8,
     0x620ceff629c0ac40ull},
    {"golden/inputs/cell_00849.png", 1, 512, 512, 3, CP_U8, 0x062b6e7a133f10f3ull},
    {"golden/inputs/cell_00849_label.tiff", 1, 512, 512, 1, CP_I16, 0xa2c883c19f096480ull},
    {"golden/inputs/stardist_img2d_gt.tif", 1, 512, 512, 1, CP_U16, 0x5aeeca3df2273548ull},
    {"golden/dynamics/stardist_img2d/gt_renum.npy.gz", 1, 512, 512, 1, CP_U32, 0xe701e41fa15725eeull},
};

static void test_real_files(void)
{
    for (size_t i = 0; i < sizeof real / sizeof real[0]; i++) {
        cp_image *img = NULL;
        int rc = cp_image_read(shared_path(real[i].file), NULL, &img);
        CHECKF(rc == CP_OK, "%s", cp_errmsg());
        if (rc)
            continue;
        CHECKF(img->planes == real[i].z && img->height == real[i].h && img->width == real[i].w &&
                   img->channels == real[i].c && img->dtype == real[i].t,
               "%s: %dx%dx%dx%d %s", real[i].file, img->planes, img->height, img->width, img->channels,
               cp_dtype_name(img->dtype));
        CHECKF(fnv1a(img) == real[i].fnv, "%s: fnv %#llx", real[i].file, (unsigned long long)fnv1a(img));
        cp_image_free(img);
    }
}

/* Readers run in parallel threads (as a batch command does): same pixels as
 * a serial read, and each thread's error message names its own file. */
static void test_threads(void)
{
    static const int pick[] = {0, 5, 8, 9, 13};
    const int n = 5 * 8;
    int bad = 0, badmsg = 0;
    for (int k = 0; k < n; k++) { /* TIFFs whose first IFD offset (in libtiff's message) is 1000 + k */
        char p[4096];
        snprintf(p, sizeof p, "%s/corrupt_%d.tif", test_tmp_dir(), k);
        FILE *f = fopen(p, "wb");
        uint32_t off = 1000u + (uint32_t)k;
        fwrite("II*\0", 1, 4, f);
        fwrite(&off, 4, 1, f);
        fclose(f);
    }
#pragma omp parallel for schedule(dynamic) reduction(+ : bad, badmsg) num_threads(4)
    for (int k = 0; k < n; k++) {
        int i = pick[k % 5];
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", test_shared_dir(), real[i].file);
        cp_image *img = NULL;
        if (cp_image_read(path, NULL, &img) != CP_OK || fnv1a(img) != real[i].fnv)
            bad++;
        cp_image_free(img);
        char corrupt[4096], offset[16];
        snprintf(corrupt, sizeof corrupt, "%s/corrupt_%d.tif", test_tmp_dir(), k);
        snprintf(offset, sizeof offset, "%d", 1000 + k);
        if (cp_image_read(corrupt, NULL, &img) != CP_EFORMAT || !strstr(cp_errmsg(), corrupt) ||
            !strstr(cp_errmsg() + strlen(corrupt), offset))
            badmsg++;
    }
    CHECKF(bad == 0, "%d parallel reads differ", bad);
    CHECKF(badmsg == 0, "%d error messages crossed threads", badmsg);
}

/* A label TIFF and its .npy.gz twin hold the same labels; the raw GT and
 * its renumbered version hold the same objects. */
static void test_label_twins(void)
{
    static const char *pairs[][2] = {
        {"golden/inputs/stardist_img2d_gt.tif", "golden/dynamics/stardist_img2d/gt_renum.npy.gz"},
        {"golden/dynamics/stardist_img2d/gt_renum.tif", "golden/dynamics/stardist_img2d/gt_renum.npy.gz"},
    };
    for (int k = 0; k < 2; k++) {
        cp_image *a = NULL, *b = NULL;
        uint32_t *la = NULL, *lb = NULL;
        CHECK_OK(cp_image_read(shared_path(pairs[k][0]), NULL, &a));
        CHECK_OK(cp_image_read(shared_path(pairs[k][1]), NULL, &b));
        if (a && b) {
            CHECK_OK(cp_image_labels_u32(a, pairs[k][0], &la));
            CHECK_OK(cp_image_labels_u32(b, pairs[k][1], &lb));
            size_t n = cp_image_samples(a);
            CHECK(la && lb && n == cp_image_samples(b));
            if (la && lb && n == cp_image_samples(b) && k == 1) {
                CHECK(memcmp(la, lb, n * sizeof *la) == 0);
            } else if (la && lb && n == cp_image_samples(b)) {
                /* the raw GT has gaps; renumbering must be a one-to-one relabelling */
                static uint32_t fwd[65536], back[65536];
                int bad = 0;
                for (size_t i = 0; i < n; i++) {
                    uint32_t x = la[i], y = lb[i];
                    if (x > 65535 || y > 65535 || (x == 0) != (y == 0)) {
                        bad++;
                        continue;
                    }
                    if (!fwd[x])
                        fwd[x] = y + 1;
                    if (!back[y])
                        back[y] = x + 1;
                    bad += fwd[x] != y + 1 || back[y] != x + 1;
                }
                CHECKF(bad == 0, "%d pixels break the relabelling", bad);
            }
        }
        free(la);
        free(lb);
        cp_image_free(a);
        cp_image_free(b);
    }
}

static cp_dtype dtype_named(const char *s)
{
    static const char *names[] = {"uint8", "uint16", "uint32", "int8", "int16", "int32", "int64", "float32", "float64"};
    static const cp_dtype types[] = {CP_U8, CP_U16, CP_U32, CP_I8, CP_I16, CP_I32, CP_I64, CP_F32, CP_F64};
    for (int i = 0; i < 9; i++)
        if (strcmp(s, names[i]) == 0)
            return types[i];
    return CP_DTYPE_COUNT;
}

/* Every image in MANIFEST.tsv reads with the shape its note gives
 * ("uint16 3x395x695; 3 page(s)" = 3 pages as channels; "512x672x3" = RGB),
 * and every *_masks.tif reads as one uint16 channel of valid labels. */
static void test_manifest(void)
{
    FILE *f = fopen(shared_path("data/MANIFEST.tsv"), "r");
    CHECK(f != NULL);
    if (!f)
        return;
    char line[4096];
    int images = 0, masks = 0;
    while (fgets(line, sizeof line, f)) {
        char *col[9] = {0};
        int n = 0;
        for (char *p = line, *tok; n < 9 && (tok = strsep(&p, "\t\n")) != NULL;)
            col[n++] = tok;
        if (n < 9 || strcmp(col[0], "file") == 0)
            continue;
        char rel[512];
        snprintf(rel, sizeof rel, "data/%s", col[0]);
        size_t len = strlen(col[0]);
        int is_mask = len > 10 && strcmp(col[0] + len - 10, "_masks.tif") == 0;
        char dname[16];
        unsigned a = 0, b = 0, c = 0;
        int pages = 1;
        int dims = sscanf(col[8], "%15s %ux%ux%u", dname, &a, &b, &c) - 1;
        const char *pp = strstr(col[8], " page(s)");
        if (pp) {
            while (pp > col[8] && pp[-1] >= '0' && pp[-1] <= '9')
                pp--;
            pages = atoi(pp);
        }
        cp_dtype want = dtype_named(dname);
        if (!is_mask && want == CP_DTYPE_COUNT)
            continue;
        cp_image *img = NULL;
        int rc = cp_image_read(shared_path(rel), NULL, &img);
        CHECKF(rc == CP_OK, "%s", cp_errmsg());
        if (rc)
            continue;
        if (is_mask) {
            uint32_t *lab = NULL;
            CHECKF(img->dtype == CP_U16 && img->channels == 1 && img->planes == 1, "%s", rel);
            CHECK_OK(cp_image_labels_u32(img, rel, &lab));
            free(lab);
            masks++;
        } else {
            int h = (int)a, w = (int)b, ch = 1;
            if (dims == 3 && (pages > 1 || c > 4)) /* CYX: pages or ImageJ channels */
                ch = (int)a, h = (int)b, w = (int)c;
            else if (dims == 3)
                ch = (int)c;
            CHECKF(img->dtype == want && img->height == h && img->width == w && img->channels == ch && img->planes == 1,
                   "%s: read %dx%dx%d %s, manifest says %s", rel, img->height, img->width, img->channels,
                   cp_dtype_name(img->dtype), col[8]);
            images++;
        }
        cp_image_free(img);
    }
    fclose(f);
    CHECKF(images >= 30 && masks >= 13, "%d images, %d masks", images, masks);
}

/* The library never prints: libtiff and libpng complaints about broken files
 * must end up in cp_errmsg(), not on stderr. Runs first, before anything
 * else has touched libtiff. */
static void test_silent(void)
{
    size_t len = 0;
    unsigned char *buf = NULL;
    FILE *f = fopen(shared_path("data/nogt/ebimage_cells.tif"), "rb");
    if (f) {
        buf = malloc(300000);
        len = fread(buf, 1, 300000, f);
        fclose(f);
    }
    const char *paths[2] = {tmp("s_cut.tif"), tmp("s_cut.png")};
    f = fopen(paths[0], "wb");
    fwrite(buf, 1, len, f);
    fclose(f);
    free(buf);
    f = fopen(shared_path("golden/inputs/cell_00849.png"), "rb");
    buf = malloc(40000);
    len = f ? fread(buf, 1, 40000, f) : 0;
    if (f)
        fclose(f);
    f = fopen(paths[1], "wb");
    fwrite(buf, 1, len, f);
    fclose(f);
    free(buf);

    fflush(stderr);
    int saved = dup(2);
    const char *errpath = tmp("s_stderr.txt");
    int fd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 2);
    close(fd);
    int rcs[2];
    cp_image *img = NULL;
    for (int i = 0; i < 2; i++) {
        rcs[i] = cp_image_read(paths[i], NULL, &img);
        cp_image_free(img);
        img = NULL;
    }
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    CHECK(rcs[0] == CP_EFORMAT && rcs[1] == CP_EFORMAT);
    struct stat st;
    CHECKF(stat(errpath, &st) == 0 && st.st_size == 0, "libraries printed %lld bytes to stderr",
           (long long)st.st_size);
}

/* Cellpose reads PNGs through OpenCV, which drops alpha: so does drop_alpha,
 * and only for PNG. */
static void test_drop_alpha(void)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/rgba.png", test_tmp_dir());
    cp_image *img, *back;
    CHECK_OK(cp_image_create(&img, 3, 2, 4, 1, CP_U8));
    uint8_t *p = img->data;
    for (int i = 0; i < 24; i++)
        p[i] = (uint8_t)(10 * i + 1);
    CHECK_OK(cp_png_write(path, img));
    cp_read_opts o = {.pages = CP_PAGES_AUTO, .drop_alpha = 1};
    CHECK_OK(cp_image_read(path, &o, &back));
    int ok = back->channels == 3;
    for (int px = 0; ok && px < 6; px++)
        for (int c = 0; c < 3; c++)
            ok &= ((uint8_t *)back->data)[3 * px + c] == p[4 * px + c];
    CHECK(ok);
    cp_image_free(back);
    CHECK_OK(cp_image_read(path, NULL, &back));
    CHECK(back->channels == 4);
    cp_image_free(back);
    snprintf(path, sizeof path, "%s/rgba.tif", test_tmp_dir());
    CHECK_OK(cp_image_write(path, img, NULL));
    CHECK_OK(cp_image_read(path, &o, &back));
    CHECK(back->channels == 4); /* TIFF keeps all samples, as tifffile does */
    cp_image_free(back);
    cp_image_free(img);
}

int main(void)
{
    test_drop_alpha();
    test_silent();
    test_roundtrips();
    test_real_files();
    test_threads();
    test_label_twins();
    test_manifest();
    return test_result();
}
