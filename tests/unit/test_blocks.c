/* Blockwise segmentation without a network: plans, plan.json round trips,
 * the merge of synthetic block labels (exact), missing blocks, and the
 * whole-volume normalisation values against cp_normalize3d. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/cellpose.h"
#include "test.h"

enum { Z = 8, Y = 12, X = 12 };
static uint32_t G[Z][Y][X]; /* the cells, as one segmentation of the whole volume would give them */

static void box_fill(int z0, int z1, int y0, int y1, int x0, int x1, uint32_t l)
{
    for (int z = z0; z < z1; z++)
        for (int y = y0; y < y1; y++)
            for (int x = x0; x < x1; x++)
                G[z][y][x] = l;
}

/* Block k's labels: G over the box, numbered backwards (local label = n+1-rank
 * of the cell in the box), plus in block `spurious` a label only in its
 * overlap. */
static int write_blocks(const cp_blocks_plan *pl, const char *work, int64_t skip, int64_t spurious)
{
    for (int64_t k = 0; k < pl->nblocks; k++) {
        if (k == skip)
            continue;
        cp_block_box b;
        cp_blocks_box(pl, k, &b);
        int64_t dz = b.box1[0] - b.box0[0], dy = b.box1[1] - b.box0[1], dx = b.box1[2] - b.box0[2];
        uint32_t *lab = calloc((size_t)(dz * dy * dx), sizeof *lab);
        uint32_t map[16] = {0}, n = 0;
        for (int64_t z = 0; z < dz; z++)
            for (int64_t y = 0; y < dy; y++)
                for (int64_t x = 0; x < dx; x++) {
                    uint32_t g = G[b.box0[0] + z][b.box0[1] + y][b.box0[2] + x];
                    if (g && !map[g])
                        map[g] = ++n;
                }
        for (int64_t z = 0; z < dz; z++)
            for (int64_t y = 0; y < dy; y++)
                for (int64_t x = 0; x < dx; x++) {
                    uint32_t g = G[b.box0[0] + z][b.box0[1] + y][b.box0[2] + x];
                    lab[(z * dy + y) * dx + x] = g ? n + 1 - map[g] : 0;
                }
        for (int64_t i = 0; k == spurious && i < dz * dy * dx; i++) {
            /* the first background voxel of the overlap (not the core) */
            int64_t c[3] = {b.box0[0] + i / (dy * dx), b.box0[1] + i / dx % dy, b.box0[2] + i % dx};
            int core = 1;
            for (int a = 0; a < 3; a++)
                core &= c[a] >= b.core0[a] && c[a] < b.core1[a];
            if (!core && !lab[i]) {
                lab[i] = n + 1;
                break;
            }
        }
        int rc = cp_blocks_write_block(pl, work, k, lab);
        free(lab);
        if (rc)
            return rc;
    }
    return CP_OK;
}

/* G renumbered by first voxel in raster order, and each cell's voxels and bbox. */
static void expected(uint32_t *E, int64_t st[][7], uint32_t *n)
{
    uint32_t map[16] = {0};
    *n = 0;
    for (int i = 0; i < Z * Y * X; i++) {
        uint32_t g = (&G[0][0][0])[i];
        if (g && !map[g])
            map[g] = ++*n;
        E[i] = g ? map[g] : 0;
        if (!g)
            continue;
        int64_t *s = st[E[i]], c[3] = {i / (Y * X), i / X % Y, i % X};
        if (s[0]++ == 0)
            for (int a = 0; a < 3; a++)
                s[1 + a] = c[a], s[4 + a] = c[a] + 1;
        for (int a = 0; a < 3; a++) {
            s[1 + a] = c[a] < s[1 + a] ? c[a] : s[1 + a];
            s[4 + a] = c[a] + 1 > s[4 + a] ? c[a] + 1 : s[4 + a];
        }
    }
}

static void check_table(const char *path, int64_t st[][7], uint32_t n)
{
    FILE *f = fopen(path, "r");
    CHECKF(f != NULL, "%s", path);
    if (!f)
        return;
    char line[256];
    CHECK(fgets(line, sizeof line, f) && strcmp(line, "label,voxels,z0,y0,x0,z1,y1,x1\n") == 0);
    uint32_t rows = 0;
    while (fgets(line, sizeof line, f)) {
        long long v[8];
        rows++;
        int got = sscanf(line, "%lld,%lld,%lld,%lld,%lld,%lld,%lld,%lld", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
                         &v[6], &v[7]);
        CHECKF(got == 8 && v[0] == rows, "row %u: %s", rows, line);
        for (int i = 0; i < 7 && got == 8 && rows <= n; i++)
            CHECKF(v[1 + i] == st[rows][i], "cell %u column %d: %lld, want %lld", rows, i + 1, v[1 + i],
                   (long long)st[rows][i]);
    }
    CHECKF(rows == n, "%u rows, want %u", rows, n);
    fclose(f);
}

static void merge_and_check(const char *input, const int64_t bs[3], const int64_t ov[3], const char *tag)
{
    char work[512], out[600], table[600], zout[600];
    snprintf(work, sizeof work, "%s/blocks_%s", test_tmp_dir(), tag);
    snprintf(out, sizeof out, "%s/out.tif", work);
    snprintf(zout, sizeof zout, "%s/out.zarr", work);
    snprintf(table, sizeof table, "%s/cells.csv", work);
    cp_seg_params p;
    cp_seg_params_default(&p);
    p.stitch_threshold = 0.5;
    p.normalize = 0;
    cp_blocks_plan *pl = NULL;
    CHECK_OK(cp_blocks_plan_create(input, CP_AXIS_AUTO, CP_AXIS_AUTO, bs, ov, &p, CP_ARCH_CPNET, "builtin", "abc",
                                   &pl));
    if (!pl)
        return;
    CHECK_OK(cp_blocks_plan_write(pl, work));
    int64_t last = pl->nblocks - 1;
    /* a missing block: the merge names it */
    CHECK_OK(write_blocks(pl, work, last, last - 1));
    cp_blocks_merge_stats ms;
    CHECK(cp_blocks_merge(work, out, table, &ms) == CP_EINVAL);
    char want[64];
    snprintf(want, sizeof want, "rerun them: %lld", (long long)last);
    CHECKF(strstr(cp_errmsg(), want) != NULL, "%s", cp_errmsg());
    CHECK(!cp_path_exists(out));
    CHECK(!cp_blocks_done(pl, work, last) && cp_blocks_done(pl, work, 0));
    CHECK_OK(write_blocks(pl, work, -1, last - 1));

    CHECK_OK(cp_blocks_merge(work, out, table, &ms));
    uint32_t *E = calloc(Z * Y * X, sizeof *E), n;
    int64_t st[16][7] = {{0}};
    expected(E, st, &n);
    CHECKF(ms.cells == n, "%s: %lld cells, want %u", tag, (long long)ms.cells, n);
    cp_image *img = NULL;
    CHECK_OK(cp_image_read_volume(out, CP_AXIS_AUTO, CP_AXIS_AUTO, &img));
    if (img) {
        CHECK(img->planes == Z && img->height == Y && img->width == X && img->dtype == CP_U32);
        CHECKF(test_count_diff_u32(img->data, E, Z * Y * X) == 0, "%s: %zu voxels differ", tag,
               test_count_diff_u32(img->data, E, Z * Y * X));
        cp_image_free(img);
    }
    check_table(table, st, n);
    /* OME-Zarr: chunk by chunk, the same labels */
    CHECK_OK(cp_blocks_merge(work, zout, NULL, &ms));
    cp_zarr *z = NULL;
    cp_ome_info info;
    CHECK_OK(cp_ome_open(zout, 0, &info, &z));
    if (z) {
        uint32_t *buf = calloc(Z * Y * X, sizeof *buf);
        int64_t s0[3] = {0, 0, 0}, cnt[3] = {Z, Y, X};
        CHECK(cp_zarr_dtype(z) == CP_U32 && memcmp(cp_zarr_chunks(z), pl->block, sizeof pl->block) == 0);
        CHECK_OK(cp_zarr_read(z, s0, cnt, buf));
        CHECK(test_count_diff_u32(buf, E, Z * Y * X) == 0);
        free(buf);
        cp_zarr_close(z);
    }
    free(E);
    cp_blocks_plan_free(pl);
}

static void test_plan_json(const char *input)
{
    char work[512];
    snprintf(work, sizeof work, "%s/blocks_plan", test_tmp_dir());
    cp_seg_params p;
    cp_seg_params_default(&p);
    p.do_3d = 1;
    p.diameter = 10;
    p.anisotropy = 2.5;
    p.flow_threshold = 0.3f;
    cp_blocks_plan *pl = NULL, *back = NULL;
    CHECK_OK(cp_blocks_plan_create(input, CP_AXIS_AUTO, CP_AXIS_AUTO, NULL, NULL, &p, CP_ARCH_CPSAM, "m.pt", "f00",
                                   &pl));
    if (!pl)
        return;
    /* defaults: blocks clipped to the volume, overlap 2 diameters (Z: over the anisotropy) */
    CHECK(pl->block[0] == Z && pl->block[1] == Y && pl->block[2] == X && pl->nblocks == 1);
    CHECK(pl->overlap[0] == 8 && pl->overlap[1] == 20 && pl->overlap[2] == 20);
    CHECK(pl->params.norm_fixed.channels == 3);
    CHECK_OK(cp_blocks_plan_write(pl, work));
    CHECK_OK(cp_blocks_plan_read(work, &back));
    if (back) {
        CHECK(strcmp(back->sha256, pl->sha256) == 0 && strcmp(back->input, pl->input) == 0);
        CHECK(back->arch == CP_ARCH_CPSAM && strcmp(back->model_path, "m.pt") == 0);
        CHECK(memcmp(back->overlap, pl->overlap, sizeof pl->overlap) == 0);
        CHECK(memcmp(&back->params.norm_fixed, &pl->params.norm_fixed, sizeof pl->params.norm_fixed) == 0);
        CHECK_OK(cp_blocks_check_params(back, &p));
        cp_seg_params q = p;
        q.flow_threshold = 0.4f;
        CHECK(cp_blocks_check_params(back, &q) == CP_EINVAL && strstr(cp_errmsg(), "flow_threshold"));
        cp_blocks_plan_free(back);
    }
    cp_blocks_plan_free(pl);
    p.do_3d = 0;
    CHECK(cp_blocks_plan_create(input, CP_AXIS_AUTO, CP_AXIS_AUTO, NULL, NULL, &p, CP_ARCH_CPNET, "", "", &pl) ==
          CP_EINVAL);
}

/* The plan's values (norm3D samples of the whole volume) give cp_normalize3d's bytes. */
static void test_norm_fixed(void)
{
    int64_t s[3];
    cp_norm_strides(100, 1000, 1000, &s[0], &s[1], &s[2]);
    CHECK(s[0] == 2 && s[1] == 4 && s[2] == 4);
    cp_norm_strides(50, 224, 224, &s[0], &s[1], &s[2]);
    CHECK(s[0] == 1 && s[1] == 1 && s[2] == 1);
    cp_volume *a, *b;
    CHECK_OK(cp_volume_create(&a, 2, 6, 20, 30));
    CHECK_OK(cp_volume_create(&b, 2, 6, 20, 30));
    size_t n = 6 * 20 * 30;
    uint32_t r = 12345;
    for (size_t i = 0; i < n; i++) {
        r = r * 1103515245u + 12345u;
        a->data[i] = b->data[i] = (float)(r >> 16) / 7.0f;
    }
    for (size_t i = 0; i < n; i++) /* channel 1 constant */
        a->data[n + i] = b->data[n + i] = 3.0f;
    CHECK_OK(cp_normalize3d(a, CP_ARCH_CPSAM, 1, 99));
    cp_norm_fixed nf = {.channels = 2};
    float *tmp = malloc(n * sizeof *tmp);
    for (int c = 0; c < 2; c++) {
        memcpy(tmp, b->data + c * n, n * sizeof *tmp);
        CHECK_OK(cp_norm_channel_values(tmp, n, 1, 99, &nf.skip[c], &nf.lo[c], &nf.hi[c]));
    }
    CHECK(!nf.skip[0] && nf.skip[1]);
    CHECK_OK(cp_normalize3d_fixed(b, CP_ARCH_CPSAM, &nf));
    CHECK(memcmp(a->data, b->data, 2 * n * sizeof(float)) == 0);
    nf.channels = 3;
    CHECK(cp_normalize3d_fixed(b, CP_ARCH_CPSAM, &nf) == CP_EINVAL);
    free(tmp);
    cp_volume_free(a);
    cp_volume_free(b);
}

int main(void)
{
    box_fill(2, 6, 3, 9, 3, 9, 1);     /* in all 8 blocks of the 2x2x2 grid */
    box_fill(0, 2, 0, 2, 0, 2, 2);     /* one block */
    box_fill(5, 8, 0, 2, 4, 8, 3);     /* across the X face only */
    box_fill(0, 1, 10, 12, 10, 12, 4); /* one block, at the far corner */
    box_fill(6, 8, 10, 12, 0, 3, 5);
    char input[512];
    snprintf(input, sizeof input, "%s/blocks_vol.tif", test_tmp_dir());
    cp_image *img;
    CHECK_OK(cp_image_create(&img, X, Y, 1, Z, CP_U16));
    for (int i = 0; i < Z * Y * X; i++)
        ((uint16_t *)img->data)[i] = (uint16_t)(100 + (&G[0][0][0])[i] * 50 + i % 7);
    CHECK_OK(cp_image_write(input, img, NULL));
    cp_image_free(img);

    merge_and_check(input, (int64_t[3]){4, 6, 6}, (int64_t[3]){2, 2, 2}, "g222");
    merge_and_check(input, (int64_t[3]){8, 5, 4}, (int64_t[3]){1, 3, 1}, "g133");
    test_plan_json(input);
    test_norm_fixed();
    return test_result();
}
