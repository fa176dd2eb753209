/* Per-cell crops and the ZIP writer, on real images of ../shared/data.
 * Expected values come from independent brute-force scans here (per-label
 * loops over the whole mask), not from the library's one-pass code. */
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cellpose/cellpose.h"
#include "test.h"

#define DSB_RGBA "data/dsb2018/00ae65c1c6631ae6f2be1a449902976e6eb8483bf6b0740d00530220832c6d3e"
#define STARDIST "data/nuclei-extra/stardist_img2d"
#define NEURIPS16 "data/wholecell/neurips_cell_00528"
#define BPAE_F32 "data/nogt/bpae_nuclei.tif"

static cp_image *load(const char *rel)
{
    cp_image *img = NULL;
    CHECK_OK(cp_image_read(shared_path(rel), NULL, &img));
    return img;
}

static cp_image *load2(const char *stem, const char *suffix)
{
    char rel[512];
    snprintf(rel, sizeof rel, "%s%s", stem, suffix);
    return load(rel);
}

/* Box of one label by a plain scan of lab[d*h*w] (the reference for the
 * one-pass code). */
static int brute_box3(const uint32_t *lab, int w, int h, int d, uint32_t l, cp_cell_box *b)
{
    memset(b, 0, sizeof *b);
    b->label = l;
    b->min_plane = d, b->min_row = h, b->min_col = w;
    for (int z = 0; z < d; z++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                if (lab[((size_t)z * h + y) * w + x] == l) {
                    b->area++;
                    if (z < b->min_plane) b->min_plane = z;
                    if (y < b->min_row) b->min_row = y;
                    if (x < b->min_col) b->min_col = x;
                    if (z + 1 > b->max_plane) b->max_plane = z + 1;
                    if (y + 1 > b->max_row) b->max_row = y + 1;
                    if (x + 1 > b->max_col) b->max_col = x + 1;
                }
    return b->area > 0;
}

static int brute_box(const uint32_t *lab, int w, int h, uint32_t l, cp_cell_box *b)
{
    return brute_box3(lab, w, h, 1, l, b);
}

static int same_box(const cp_cell_box *a, const cp_cell_box *b)
{
    return a->label == b->label && a->min_plane == b->min_plane && a->min_row == b->min_row &&
           a->min_col == b->min_col && a->max_plane == b->max_plane && a->max_row == b->max_row &&
           a->max_col == b->max_col && a->area == b->area;
}

static void test_boxes_synthetic(void)
{
    /* gaps, a huge label, a label in two separate pieces */
    enum { W = 7, H = 5 };
    uint32_t lab[H * W] = {
        0, 0, 5, 5, 0, 0, 4000000000u,
        0, 9, 9, 0, 0, 0, 4000000000u,
        0, 9, 0, 0, 5, 0, 0,
        0, 0, 0, 0, 5, 5, 0,
        1, 0, 0, 0, 0, 0, 0,
    };
    cp_cell_box *b;
    size_t n;
    CHECK_OK(cp_cell_boxes(lab, W, H, 1, &b, &n));
    uint32_t want[] = {1, 5, 9, 4000000000u};
    CHECK(n == 4);
    for (size_t i = 0; i < n && i < 4; i++) {
        cp_cell_box r;
        brute_box(lab, W, H, want[i], &r);
        CHECKF(same_box(&b[i], &r),
               "label %u: got %d,%d,%d,%d area %llu", want[i], b[i].min_row, b[i].min_col, b[i].max_row,
               b[i].max_col, (unsigned long long)b[i].area);
    }
    free(b);
    char name[64];
    cp_cell_file_name(name, sizeof name, 7, 999, ".tif");
    CHECK(strcmp(name, "cell_0007.tif") == 0);
    cp_cell_file_name(name, sizeof name, 7, 123456, "_mask.tif");
    CHECK(strcmp(name, "cell_000007_mask.tif") == 0);
}

/* Volumes: boxes over planes, a label in two separate planes, one in the
 * last plane, one voxel; crops grown by pad in Y, X and pad_z in Z. */
static void test_boxes_3d(void)
{
    enum { W = 5, H = 4, D = 3 };
    uint32_t lab[D * H * W] = {0};
#define AT(z, y, x) lab[((z) * H + (y)) * W + (x)]
    AT(0, 0, 0) = 7;
    AT(2, 3, 4) = 7;          /* box = the whole volume */
    AT(1, 1, 1) = AT(1, 1, 2) = AT(1, 2, 1) = 3;
    AT(2, 0, 3) = 4000000000u;
    AT(0, 3, 0) = AT(1, 3, 0) = 9;
#undef AT
    cp_cell_box *b;
    size_t n;
    CHECK_OK(cp_cell_boxes(lab, W, H, D, &b, &n));
    uint32_t want[] = {3, 7, 9, 4000000000u};
    CHECK(n == 4);
    for (size_t i = 0; i < n && i < 4; i++) {
        cp_cell_box r;
        brute_box3(lab, W, H, D, want[i], &r);
        CHECKF(same_box(&b[i], &r), "label %u: got %d,%d,%d,%d,%d,%d area %llu", want[i], b[i].min_plane,
               b[i].min_row, b[i].min_col, b[i].max_plane, b[i].max_row, b[i].max_col,
               (unsigned long long)b[i].area);
    }
    CHECK(n >= 2 && b[1].min_plane == 0 && b[1].max_plane == 3 && b[1].area == 2);
    /* the same labels as one tall 2-D image: the planes stack up as rows */
    cp_cell_box *b2;
    size_t n2;
    CHECK_OK(cp_cell_boxes(lab, W, H * D, 1, &b2, &n2));
    CHECK(n2 == n && b2[0].min_plane == 0 && b2[0].max_plane == 1 && b2[0].min_row == H + 1 && b2[0].area == 3);
    free(b2);
    /* crops: pad_z < 0 follows pad; clipped at every edge */
    cp_cell_box c;
    cp_cell_crop_box(&b[0], 1, -1, W, H, D, &c); /* label 3: plane 1, rows 1-2, cols 1-2 */
    CHECK(c.label == 3 && c.area == 3 && c.min_plane == 0 && c.max_plane == 3 && c.min_row == 0 && c.max_row == 4 &&
          c.min_col == 0 && c.max_col == 4);
    cp_cell_crop_box(&b[0], 0, 0, W, H, D, &c);
    CHECK(c.min_plane == 1 && c.max_plane == 2 && c.min_row == 1 && c.max_row == 3 && c.min_col == 1 && c.max_col == 3);
    cp_cell_crop_box(&b[0], 0, 1000000, W, H, D, &c);
    CHECK(c.min_plane == 0 && c.max_plane == 3 && c.min_row == 1 && c.max_row == 3);
    cp_cell_crop_box(&b[3], 2000000000, 2000000000, W, H, D, &c); /* no overflow before clipping */
    CHECK(c.min_plane == 0 && c.max_plane == D && c.min_row == 0 && c.max_row == H && c.min_col == 0 && c.max_col == W);
    free(b);
    CHECK(cp_cell_boxes(lab, W, H, 0, &b, &n) == CP_EINVAL && b == NULL && n == 0);
    uint32_t zeros[8] = {0};
    CHECK_OK(cp_cell_boxes(zeros, 2, 2, 2, &b, &n));
    CHECK(b == NULL && n == 0);
}

/* The golden label volume with a 2-channel u16 image made from the golden
 * volume: boxes equal brute force, crops equal the source inside the cell
 * (0 outside), masks 255 on the cell, for a padding with pad_z != pad. */
static void test_crops_3d(void)
{
    cp_read_opts planes = {.pages = CP_PAGES_PLANES};
    cp_image *vol = NULL, *mk = NULL, *img = NULL;
    CHECK_OK(cp_image_read(shared_path("golden/3d/inputs/synth3d_s5.tif"), NULL, &vol));
    CHECK_OK(cp_image_read(shared_path("golden/3d/inputs/synth3d_s5_labels.tif"), &planes, &mk));
    if (!vol || !mk)
        return;
    int W = vol->width, H = vol->height, D = vol->planes;
    CHECK(D == 32 && mk->planes == D && vol->channels == 1);
    CHECK_OK(cp_image_create(&img, W, H, 2, D, CP_U16));
    uint16_t *px = img->data;
    for (size_t i = 0; i < (size_t)W * H * D; i++) {
        px[2 * i] = ((uint16_t *)vol->data)[i];
        px[2 * i + 1] = (uint16_t)(i * 7919 % 65521);
    }
    uint32_t *lab;
    CHECK_OK(cp_image_labels_u32(mk, "masks", &lab));
    cp_cell_box *b;
    size_t n;
    CHECK_OK(cp_cell_boxes(lab, W, H, D, &b, &n));
    CHECK(n == 10);
    cp_cells_opts o;
    cp_cells_opts_init(&o);
    CHECK(o.pad_z == -1);
    o.pad = 3, o.pad_z = 1;
    cp_cell_scale sc;
    CHECK_OK(cp_cells_scale(img, &o, &sc));
    size_t bad_box = 0, bad_shape = 0, bad_px = 0, bad_mask = 0;
    for (size_t k = 0; k < n; k++) {
        cp_cell_box r;
        brute_box3(lab, W, H, D, b[k].label, &r);
        if (!same_box(&b[k], &r))
            bad_box++;
        int z0 = r.min_plane - 1 < 0 ? 0 : r.min_plane - 1, z1 = r.max_plane + 1 > D ? D : r.max_plane + 1;
        int y0 = r.min_row - 3 < 0 ? 0 : r.min_row - 3, y1 = r.max_row + 3 > H ? H : r.max_row + 3;
        int x0 = r.min_col - 3 < 0 ? 0 : r.min_col - 3, x1 = r.max_col + 3 > W ? W : r.max_col + 3;
        cp_image *crop, *mask;
        CHECK_OK(cp_cell_extract(img, lab, &b[k], &o, &sc, &crop, &mask));
        if (crop->planes != z1 - z0 || crop->height != y1 - y0 || crop->width != x1 - x0 || crop->channels != 2 ||
            mask->planes != crop->planes || mask->channels != 1) {
            bad_shape++;
        } else {
            for (int z = z0; z < z1; z++)
                for (int y = y0; y < y1; y++)
                    for (int x = x0; x < x1; x++) {
                        int in = lab[((size_t)z * H + y) * W + x] == r.label;
                        if (cp_image_get(mask, z - z0, y - y0, x - x0, 0) != (in ? 255 : 0))
                            bad_mask++;
                        for (int c = 0; c < 2; c++)
                            if (cp_image_get(crop, z - z0, y - y0, x - x0, c) != (in ? cp_image_get(img, z, y, x, c) : 0))
                                bad_px++;
                    }
        }
        cp_image_free(crop);
        cp_image_free(mask);
    }
    CHECKF(bad_box == 0 && bad_shape == 0 && bad_px == 0 && bad_mask == 0, "boxes %zu shapes %zu pixels %zu mask %zu",
           bad_box, bad_shape, bad_px, bad_mask);

    /* written and read back: same crop, planes and channels, calibration kept */
    char out[4096], path[4200];
    snprintf(out, sizeof out, "%s/vol_cells", test_tmp_dir());
    cp_voxel_size vx = {.z = 2.5, .y = 0.5, .x = 0.25, .unit = "\xc2\xb5m"};
    o.voxel = &vx;
    o.mask_too = 1;
    cp_cells_result res;
    CHECK_OK(cp_cells_write_dir(img, mk, "masks", out, &o, &res));
    CHECK(res.n_cells == 10 && res.n_files == 21);
    size_t bad = 0;
    for (size_t k = 0; k < n; k++) {
        char name[64];
        cp_cell_file_name(name, sizeof name, b[k].label, 10, ".tif");
        snprintf(path, sizeof path, "%s/%s", out, name);
        cp_image *back = NULL, *crop = NULL;
        cp_voxel_size got;
        int found = 0;
        cp_cell_extract(img, lab, &b[k], &o, &sc, &crop, NULL);
        if (cp_image_read(path, NULL, &back) != CP_OK || cp_image_voxel_size(path, &got, &found) != CP_OK ||
            back->planes != crop->planes || back->channels != 2 || back->width != crop->width ||
            back->height != crop->height || memcmp(back->data, crop->data, cp_image_samples(crop) * 2) != 0 ||
            !found || got.z != 2.5 || fabs(got.y - 0.5) > 1e-7 || fabs(got.x - 0.25) > 1e-7 ||
            strcmp(got.unit, vx.unit) != 0)
            bad++;
        cp_image_free(back);
        cp_image_free(crop);
    }
    CHECKF(bad == 0, "%zu cell files differ from their crop or calibration", bad);
    free(b);

    /* dimensions that differ: both files named, nothing written */
    snprintf(out, sizeof out, "%s/vol_bad", test_tmp_dir());
    o.image_name = "IMG.tif";
    CHECK(cp_cells_write_dir(vol, mk, "MASKS.tif", out, &o, NULL) == CP_OK); /* one channel is fine */
    vol->planes = 16, vol->height *= 2; /* same pixels, another shape */
    o.overwrite = 1;
    CHECK(cp_cells_write_dir(vol, mk, "MASKS.tif", out, &o, NULL) == CP_EINVAL);
    CHECKF(strcmp(cp_errmsg(), "MASKS.tif: masks are 32 x 80 x 80 but the image is 16 x 160 x 80 "
                               "(planes x height x width; image: IMG.tif)") == 0, "%s", cp_errmsg());
    vx.z = 0;
    void *data = NULL;
    size_t size = 0;
    cp_write_opts wo = {.voxel = &vx};
    CHECK(cp_tiff_write_mem(mk, &wo, "bad voxel", &data, &size) == CP_EINVAL && data == NULL);
    free(lab);
    cp_image_free(img);
    cp_image_free(vol);
    cp_image_free(mk);
}

/* Every cell of a real image: one-pass boxes equal brute force; each crop has
 * the padded, clipped shape, equals the source inside the cell and is 0
 * outside. Returns the number of cells checked. */
static size_t check_crops(const char *stem, const char *img_suffix, int pad, int keep_bg)
{
    cp_image *img = load2(stem, img_suffix), *mk = load2(stem, "_masks.tif");
    if (!img || !mk)
        return 0;
    uint32_t *lab;
    CHECK_OK(cp_image_labels_u32(mk, "masks", &lab));
    cp_cell_box *b;
    size_t n;
    CHECK_OK(cp_cell_boxes(lab, mk->width, mk->height, 1, &b, &n));
    cp_cells_opts o;
    cp_cells_opts_init(&o);
    o.pad = pad;
    o.keep_background = keep_bg;
    cp_cell_scale sc;
    CHECK_OK(cp_cells_scale(img, &o, &sc));
    CHECK(!sc.scaled);
    int w = img->width, h = img->height, C = img->channels;
    size_t bad_box = 0, bad_shape = 0, bad_in = 0, bad_out = 0, bad_mask = 0;
    uint32_t maxl = 0;
    for (size_t i = 0; i < (size_t)w * h; i++)
        if (lab[i] > maxl)
            maxl = lab[i];
    size_t expect_cells = 0;
    for (uint32_t l = 1; l <= maxl; l++) {
        cp_cell_box r;
        if (!brute_box(lab, w, h, l, &r))
            continue;
        expect_cells++;
        const cp_cell_box *g = NULL;
        for (size_t k = 0; k < n; k++)
            if (b[k].label == l)
                g = &b[k];
        if (!g || !same_box(g, &r)) {
            bad_box++;
            continue;
        }
        cp_image *crop, *mask;
        CHECK_OK(cp_cell_extract(img, lab, g, &o, &sc, &crop, &mask));
        int r0 = r.min_row - pad < 0 ? 0 : r.min_row - pad, c0 = r.min_col - pad < 0 ? 0 : r.min_col - pad;
        int r1 = r.max_row + pad > h ? h : r.max_row + pad, c1 = r.max_col + pad > w ? w : r.max_col + pad;
        if (crop->dtype != CP_U16 || crop->width != c1 - c0 || crop->height != r1 - r0 || crop->channels != C) {
            bad_shape++;
        } else {
            for (int y = 0; y < crop->height; y++)
                for (int x = 0; x < crop->width; x++) {
                    int in = lab[(size_t)(r0 + y) * w + c0 + x] == l;
                    if (((uint8_t *)mask->data)[(size_t)y * crop->width + x] != (in ? 255 : 0))
                        bad_mask++;
                    for (int c = 0; c < C; c++) {
                        double got = cp_image_get(crop, 0, y, x, c), src = cp_image_get(img, 0, r0 + y, c0 + x, c);
                        if ((in || keep_bg) && got != src)
                            bad_in++;
                        if (!in && !keep_bg && got != 0)
                            bad_out++;
                    }
                }
        }
        cp_image_free(crop);
        cp_image_free(mask);
    }
    CHECKF(n == expect_cells, "%s: %zu boxes, %zu labels", stem, n, expect_cells);
    CHECKF(bad_box == 0, "%s: %zu boxes differ from brute force", stem, bad_box);
    CHECKF(bad_shape == 0, "%s: %zu crops of the wrong shape", stem, bad_shape);
    CHECKF(bad_in == 0, "%s: %zu samples differ from the source inside the cell", stem, bad_in);
    CHECKF(bad_out == 0, "%s: %zu samples not 0 outside the cell", stem, bad_out);
    CHECKF(bad_mask == 0, "%s: %zu mask pixels wrong", stem, bad_mask);
    free(b);
    free(lab);
    cp_image_free(img);
    cp_image_free(mk);
    return n;
}

static void test_scaling(void)
{
    cp_image *img = load(BPAE_F32);
    if (!img)
        return;
    CHECK(img->dtype == CP_F32);
    cp_cells_opts o;
    cp_cells_opts_init(&o);
    cp_cell_scale sc;
    CHECK_OK(cp_cells_scale(img, &o, &sc));
    double lo = INFINITY, hi = -INFINITY;
    size_t n = cp_image_samples(img), imin = 0, imax = 0;
    for (size_t i = 0; i < n; i++) {
        double v = ((float *)img->data)[i];
        if (v < lo) lo = v, imin = i;
        if (v > hi) hi = v, imax = i;
    }
    CHECK(sc.scaled && sc.lo == lo && sc.hi == hi);
    /* A whole-image "cell" (keep background) so every pixel is mapped. */
    uint32_t *lab = calloc(n, sizeof *lab);
    cp_cell_box box = {.label = 1, .max_plane = 1, .max_row = img->height, .max_col = img->width, .area = 1};
    o.keep_background = 1;
    cp_image *crop;
    CHECK_OK(cp_cell_extract(img, lab, &box, &o, &sc, &crop, NULL));
    const uint16_t *c = crop->data;
    CHECK(c[imin] == 0 && c[imax] == 65535);
    size_t bad = 0;
    for (size_t i = 0; i < n; i += 97) {
        double v = ((float *)img->data)[i];
        double want = floor((v - lo) * 65535.0 / (hi - lo) + 0.5);
        if (c[i] != want)
            bad++;
    }
    CHECKF(bad == 0, "%zu samples off the documented formula", bad);
    cp_image_free(crop);
    /* --range: clipped at both ends, applies to u16 as well */
    o.use_range = 1, o.range_lo = 10, o.range_hi = 20;
    cp_image *u16;
    CHECK_OK(cp_image_create(&u16, 4, 1, 1, 1, CP_U16));
    uint16_t px[4] = {5, 10, 15, 30};
    memcpy(u16->data, px, sizeof px);
    cp_cell_box b4 = {.label = 1, .max_plane = 1, .max_row = 1, .max_col = 4, .area = 4};
    uint32_t l4[4] = {1, 1, 1, 1};
    CHECK_OK(cp_cells_scale(u16, &o, &sc));
    CHECK_OK(cp_cell_extract(u16, l4, &b4, &o, &sc, &crop, NULL));
    c = crop->data;
    CHECKF(c[0] == 0 && c[1] == 0 && c[2] == 32768 && c[3] == 65535, "%u %u %u %u", c[0], c[1], c[2], c[3]);
    cp_image_free(crop);
    cp_image_free(u16);
    o.range_hi = 10;
    CHECK(cp_cells_scale(img, &o, &sc) == CP_EINVAL);
    free(lab);
    cp_image_free(img);
}

/* Count entries of dir whose name starts with '.' (our temporaries). */
static int hidden_entries(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (e->d_name[0] == '.' && strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    if (d)
        closedir(d);
    return n;
}

static long file_size(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 ? (long)st.st_size : -1;
}

static int same_file(const char *a, const char *b)
{
    FILE *f = fopen(a, "rb"), *g = fopen(b, "rb");
    int same = f && g;
    while (same) {
        int x = fgetc(f), y = fgetc(g);
        if (x != y)
            same = 0;
        if (x == EOF || y == EOF)
            break;
    }
    if (f) fclose(f);
    if (g) fclose(g);
    return same;
}

static void test_write(void)
{
    cp_image *img = load2(DSB_RGBA, "_img.png"), *mk = load2(DSB_RGBA, "_masks.tif");
    if (!img || !mk)
        return;
    char out[4096], zip1[4096], zip2[4096], cmd[16384];
    const char *T = test_tmp_dir();
    snprintf(out, sizeof out, "%s/dsb_cells", T);
    snprintf(zip1, sizeof zip1, "%s/dsb1.zip", T);
    snprintf(zip2, sizeof zip2, "%s/dsb2.zip", T);
    cp_cells_opts o;
    cp_cells_opts_init(&o);
    o.pad = 2;
    o.mask_too = 1;
    cp_cells_result res;
    CHECK_OK(cp_cells_write_dir(img, mk, "masks", out, &o, &res));
    CHECKF(res.n_cells == 70 && res.n_files == 141, "%zu cells, %zu files", res.n_cells, res.n_files);
    CHECK(hidden_entries(T) == 0);
    /* read back: 4 channels (RGBA), u16, equal to a fresh extraction */
    uint32_t *lab;
    CHECK_OK(cp_image_labels_u32(mk, "masks", &lab));
    cp_cell_box *b;
    size_t n;
    CHECK_OK(cp_cell_boxes(lab, mk->width, mk->height, 1, &b, &n));
    cp_cell_scale sc = {0};
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        char name[64], path[4200];
        cp_cell_file_name(name, sizeof name, b[i].label, 70, ".tif");
        snprintf(path, sizeof path, "%s/%s", out, name);
        cp_image *back = NULL, *crop = NULL;
        if (cp_image_read(path, NULL, &back) != CP_OK) {
            bad++;
            continue;
        }
        cp_cell_extract(img, lab, &b[i], &o, &sc, &crop, NULL);
        if (back->dtype != CP_U16 || back->channels != 4 || back->width != crop->width ||
            back->height != crop->height || memcmp(back->data, crop->data, cp_image_samples(crop) * 2) != 0)
            bad++;
        cp_image_free(back);
        cp_image_free(crop);
    }
    CHECKF(bad == 0, "%zu cell files differ from their crop", bad);
    free(b);
    free(lab);

    /* existing output refused, then replaced with overwrite */
    CHECK(cp_cells_write_dir(img, mk, "masks", out, &o, NULL) == CP_EEXIST);
    o.overwrite = 1;
    o.mask_too = 0;
    CHECK_OK(cp_cells_write_dir(img, mk, "masks", out, &o, &res));
    snprintf(cmd, sizeof cmd, "%s/cell_0001_mask.tif", out);
    CHECK(!cp_path_exists(cmd)); /* replaced as a whole, not merged */
    CHECK(hidden_entries(T) == 0);

    /* ZIP: byte-identical between runs, same bytes as the folder */
    CHECK_OK(cp_cells_write_zip(img, mk, "masks", zip1, &o, NULL));
    CHECK_OK(cp_cells_write_zip(img, mk, "masks", zip2, &o, NULL));
    CHECK(file_size(zip1) > 0 && same_file(zip1, zip2));
    snprintf(cmd, sizeof cmd, "cd '%s' && rm -rf unz && mkdir unz && cd unz && unzip -q ../dsb1.zip && diff -r . ../dsb_cells",
             T);
    CHECK(system(cmd) == 0);

    /* selection */
    uint32_t want[] = {3, 7, 10, 9999};
    o.labels = want, o.n_labels = 4;
    o.min_area = 0;
    snprintf(out, sizeof out, "%s/dsb_sel", T);
    CHECK_OK(cp_cells_write_dir(img, mk, "masks", out, &o, &res));
    CHECK(res.n_cells == 3 && res.n_missing == 1 && res.first_missing == 9999);

    /* bad input: size mismatch, float masks; nothing left behind */
    cp_image *small = load2(STARDIST, "_masks.tif");
    snprintf(out, sizeof out, "%s/bad", T);
    CHECK(cp_cells_write_dir(img, small, "small", out, &o, NULL) == CP_EINVAL);
    CHECK(strstr(cp_errmsg(), "small") != NULL);
    cp_image *fm;
    CHECK_OK(cp_image_create(&fm, img->width, img->height, 1, 1, CP_F32));
    CHECK(cp_cells_write_dir(img, fm, "fmasks", out, &o, NULL) == CP_EFORMAT);
    CHECK(cp_cells_write_zip(img, fm, "fmasks", zip1, &o, NULL) == CP_EFORMAT);
    CHECK(same_file(zip1, zip2)); /* the old archive is untouched */
    snprintf(cmd, sizeof cmd, "%s/dsb1.zip/sub", T);
    CHECK(cp_cells_write_dir(img, mk, "masks", cmd, &o, NULL) == CP_EIO);
    CHECK(!cp_path_exists(out) && hidden_entries(T) == 0);
    cp_image_free(fm);
    cp_image_free(small);
    cp_image_free(img);
    cp_image_free(mk);
}

static void test_zip_formats(void)
{
    const char *T = test_tmp_dir();
    char path[2048], cmd[8192];
    /* forced ZIP64 records and many entries (> 65535, stored) */
    snprintf(path, sizeof path, "%s/z64.zip", T);
    cp_zip *z;
    cp_zip_opts zo = {.level = 6, .force_zip64 = 1};
    CHECK_OK(cp_zip_open(&z, path, 0, &zo));
    const char *text = "hello hello hello hello hello\n";
    CHECK_OK(cp_zip_add(z, "a.txt", text, strlen(text)));
    CHECK_OK(cp_zip_add(z, "dir/b.bin", "", 0));
    CHECK(cp_zip_add(z, "a.txt", "x", 1) == CP_EINVAL); /* duplicate */
    CHECK(cp_zip_add(z, "../x", "x", 1) == CP_EINVAL);
    CHECK_OK(cp_zip_close(z));
    snprintf(cmd, sizeof cmd, "unzip -tq '%s' >/dev/null && /usr/bin/python3 -c \"import zipfile,sys; z=zipfile.ZipFile(sys.argv[1]); "
             "assert z.testzip() is None; assert z.read('a.txt')==b'%s'; assert z.namelist()==['a.txt','dir/b.bin']\" '%s'",
             path, "hello hello hello hello hello\\n", path);
    CHECK(system(cmd) == 0);

    snprintf(path, sizeof path, "%s/many.zip", T);
    cp_zip_opts st = {.level = 0};
    CHECK_OK(cp_zip_open(&z, path, 0, &st));
    int ok = 1;
    for (int i = 0; i < 70000 && ok; i++) {
        char name[32], data[32];
        snprintf(name, sizeof name, "e%05d", i);
        snprintf(data, sizeof data, "%d", i * 7);
        ok = cp_zip_add(z, name, data, strlen(data)) == CP_OK;
    }
    CHECK(ok && cp_zip_count(z) == 70000);
    CHECK_OK(cp_zip_close(z));
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 -c \"import zipfile,sys; z=zipfile.ZipFile(sys.argv[1]); "
             "assert z.testzip() is None; n=z.namelist(); assert len(n)==70000 and n[69999]=='e69999'; "
             "assert z.read('e12345')==b'86415'\" '%s'", path);
    CHECK(system(cmd) == 0);
    snprintf(cmd, sizeof cmd, "unzip -tq '%s' >/dev/null", path);
    CHECK(system(cmd) == 0);
    CHECK(cp_zip_open(&z, path, 0, NULL) == CP_EEXIST);
    CHECK(cp_crc32(0, "123456789", 9) == 0xCBF43926u);
}

/* Bench input (scripts/bench.d/cpcells.sh): an SIZE x SIZE u16 image of
 * pseudo-random texture and N disc-shaped cells on a grid. */
static int make_bench_input(const char *dir, int n, int size)
{
    int g = 1;
    while (g * g < n)
        g++;
    double pitch = (double)size / g, rad = pitch * 0.4;
    cp_image *img, *mk;
    if (cp_image_create(&img, size, size, 1, 1, CP_U16) || cp_image_create(&mk, size, size, 1, 1, CP_U16))
        return 1;
    uint16_t *p = img->data, *m = mk->data;
    uint32_t r = 12345;
    for (size_t i = 0; i < (size_t)size * size; i++) {
        r = r * 1664525u + 1013904223u;
        p[i] = (uint16_t)(1000 + (r >> 20));
    }
    for (int k = 0; k < n; k++) {
        double cy = (k / g + 0.5) * pitch, cx = (k % g + 0.5) * pitch;
        for (int y = (int)(cy - rad); y <= (int)(cy + rad); y++)
            for (int x = (int)(cx - rad); x <= (int)(cx + rad); x++)
                if (y >= 0 && x >= 0 && y < size && x < size && (y - cy) * (y - cy) + (x - cx) * (x - cx) <= rad * rad)
                    m[(size_t)y * size + x] = (uint16_t)(k + 1);
    }
    char a[4096], b[4096];
    snprintf(a, sizeof a, "%s/bench_img.tif", dir);
    snprintf(b, sizeof b, "%s/bench_masks.tif", dir);
    int rc = cp_tiff_write(a, img, NULL) || cp_tiff_write(b, mk, NULL);
    if (rc)
        fprintf(stderr, "%s\n", cp_errmsg());
    cp_image_free(img);
    cp_image_free(mk);
    return rc;
}

static void test_atomic_dir_and_pairing(void)
{
    const char *T = test_tmp_dir();
    char path[2048], f[2200];
    /* a temporary output folder goes away with cp_atomic_cleanup_all (what
     * the commands' signal handler calls) */
    snprintf(path, sizeof path, "%s/adir", T);
    cp_atomic_dir d;
    CHECK_OK(cp_atomic_dir_open(&d, path, 0));
    for (int i = 0; i < 300; i++) { /* more than one getdents buffer */
        snprintf(f, sizeof f, "%s/file_with_a_longish_name_%04d.tif", d.tmp_path, i);
        FILE *fp = fopen(f, "w");
        if (fp)
            fclose(fp);
    }
    char *tmp = strdup(d.tmp_path);
    cp_atomic_cleanup_all();
    CHECK(!cp_path_exists(tmp) && !cp_path_exists(path));
    cp_atomic_dir_abort(&d);
    free(tmp);
    CHECK(hidden_entries(T) == 0);

    /* cpseg pairing: NAME_cp_masks.tif -> NAME.<ext>, exactly one */
    snprintf(path, sizeof path, "%s/seg", T);
    cp_mkdirs(path);
    const char *files[] = {"a.png", "a_cp_masks.tif", "b_cp_masks.tif", "c.tif", "c.npy", "c_cp_masks.tif"};
    for (size_t i = 0; i < 6; i++) {
        snprintf(f, sizeof f, "%s/%s", path, files[i]);
        FILE *fp = fopen(f, "w");
        if (fp)
            fclose(fp);
    }
    char *img, *name;
    snprintf(f, sizeof f, "%s/a_cp_masks.tif", path);
    CHECK_OK(cp_cells_seg_image(f, &img, &name));
    char want[2200];
    snprintf(want, sizeof want, "%s/a.png", path);
    CHECK(img && strcmp(img, want) == 0 && strcmp(name, "a") == 0);
    free(img);
    free(name);
    snprintf(f, sizeof f, "%s/b_cp_masks.tif", path);
    CHECK(cp_cells_seg_image(f, &img, &name) == CP_EIO);
    snprintf(f, sizeof f, "%s/c_cp_masks.tif", path);
    CHECK(cp_cells_seg_image(f, &img, &name) == CP_EINVAL);
    snprintf(f, sizeof f, "%s/a.png", path);
    CHECK(cp_cells_seg_image(f, &img, &name) == CP_EINVAL);
}

/* Streaming to a FILE* gives the same bytes as the atomic file writer. */
static void test_stream(void)
{
    cp_image *img = load2(STARDIST, "_img.tif"), *mk = load2(STARDIST, "_masks.tif");
    if (!img || !mk)
        return;
    char a[2048], b[2048];
    snprintf(a, sizeof a, "%s/sd_file.zip", test_tmp_dir());
    snprintf(b, sizeof b, "%s/sd_stream.zip", test_tmp_dir());
    cp_cells_opts o;
    cp_cells_opts_init(&o);
    o.mask_too = 1;
    cp_cells_result r1, r2;
    CHECK_OK(cp_cells_write_zip(img, mk, "masks", a, &o, &r1));
    FILE *fp = fopen(b, "wb");
    CHECK_OK(cp_cells_write_zip_fp(img, mk, "masks", fp, "stream", &o, &r2));
    fclose(fp);
    CHECK(same_file(a, b) && r1.n_files == 251 && r2.n_files == 251 && r1.bytes == r2.bytes);
    cp_image_free(img);
    cp_image_free(mk);
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "--make-bench-input") == 0)
        return make_bench_input(argv[2], atoi(argv[3]), atoi(argv[4]));
    test_boxes_synthetic();
    test_boxes_3d();
    test_crops_3d();
    CHECK(check_crops(STARDIST, "_img.tif", 0, 0) == 125);           /* u16 */
    CHECK(check_crops(DSB_RGBA, "_img.png", 5, 0) == 70);            /* u8 RGBA, pad clipped at edges */
    CHECK(check_crops(NEURIPS16, "_img.tif", 3, 1) == 44);           /* u16, keep background */
    CHECK(check_crops("data/wholecell/maize_clsm", "_img.tif", 1, 0) == 460); /* no background at all */
    test_scaling();
    test_write();
    test_zip_formats();
    test_atomic_dir_and_pairing();
    test_stream();
    return test_result();
}
