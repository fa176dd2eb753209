/* 3D measurements: the golden scikit-image 0.19.3 regionprops_table of the
 * platynereis crop (golden/3d/metrics3d), and hand-worked volumes whose values
 * follow from the definitions (worked out in the comments). */
#include <omp.h>

#include "cellpose/cellpose.h"
#include "test.h"

static int rel_ok(double a, double b, double tol)
{
    if (a == b)
        return 1;
    return fabs(a - b) <= tol * fmax(fabs(a), fabs(b));
}

#define CHECK_REL(a, b)                                                                  \
    do {                                                                                 \
        double a_ = (a), b_ = (b);                                                       \
        CHECKF(rel_ok(a_, b_, 1e-9), "label %u: %.17g vs %.17g", (unsigned)lbl, a_, b_); \
    } while (0)

static void test_golden(void)
{
    cp_array *a = NULL;
    CHECK_OK(cp_npy_read(shared_path("golden/3d/dynamics3d/platy/gt_renum.npy.gz"), &a));
    if (!a)
        return;
    CHECK(a->ndim == 3 && a->dtype == CP_U32);
    int D = (int)a->shape[0], H = (int)a->shape[1], W = (int)a->shape[2];
    cp_cell_table3d t;
    CHECK_OK(cp_measure_cells3d(a->data, D, H, W, NULL, NULL, &t));
    char *csv = test_slurp(shared_path("golden/3d/metrics3d/platy_gt_renum_props.csv"), NULL);
    CHECK(csv != NULL);
    size_t row = 0;
    char *save = NULL;
    for (char *line = csv ? strtok_r(csv, "\n", &save) : NULL; line; line = strtok_r(NULL, "\n", &save)) {
        if (!strncmp(line, "label", 5))
            continue;
        double v[21];
        int k = 0;
        for (char *p = line; k < 21; k++) {
            v[k] = strtod(p, &p);
            if (*p == ',')
                p++;
        }
        CHECK(row < t.n);
        if (row >= t.n)
            break;
        const cp_cell_props3d *c = t.cells + row++;
        uint32_t lbl = c->label;
        /* label,area,bbox-0..5,centroid-0..2,equivalent_diameter,extent,euler_number,
         * major,minor,solidity,convex_area,inertia_tensor_eigvals-0..2 */
        CHECK(c->label == (uint32_t)v[0] && c->volume == (int64_t)v[1]);
        CHECK(c->bbox_min_plane == (int)v[2] && c->bbox_min_row == (int)v[3] &&
              c->bbox_min_col == (int)v[4] && c->bbox_max_plane == (int)v[5] &&
              c->bbox_max_row == (int)v[6] && c->bbox_max_col == (int)v[7]);
        CHECK_REL(c->centroid_z, v[8]);
        CHECK_REL(c->centroid_y, v[9]);
        CHECK_REL(c->centroid_x, v[10]);
        CHECK_REL(c->equivalent_diameter, v[11]);
        CHECK_REL(c->extent, v[12]);
        CHECKF(c->euler_number == (int)v[13], "label %u: euler %d vs %g", lbl, c->euler_number, v[13]);
        CHECK_REL(c->major_axis_length, v[14]);
        CHECK_REL(c->minor_axis_length, v[15]);
        CHECK_REL(c->solidity, v[16]);
        CHECKF(c->convex_volume == (int64_t)v[17], "label %u: convex %lld vs %g", lbl,
               (long long)c->convex_volume, v[17]);
        for (int e = 0; e < 3; e++)
            CHECK_REL(c->inertia_eigvals[e], v[18 + e]);
    }
    CHECK(row == t.n && t.n == 22);

    /* same bytes for any thread count */
    int nt = omp_get_max_threads();
    omp_set_num_threads(1);
    cp_cell_table3d t1;
    CHECK_OK(cp_measure_cells3d(a->data, D, H, W, NULL, NULL, &t1));
    omp_set_num_threads(nt);
    CHECK(t1.n == t.n && !memcmp(t1.cells, t.cells, t.n * sizeof *t.cells));
    cp_cell_table3d_free(&t1);
    cp_cell_table3d_free(&t);
    free(csv);
    cp_array_free(a);
}

#define D 6
#define H 7
#define W 8

static const cp_cell_props3d *find(const cp_cell_table3d *t, uint32_t label)
{
    for (size_t i = 0; i < t->n; i++)
        if (t->cells[i].label == label)
            return t->cells + i;
    return NULL;
}

static void box(uint32_t *lab, int z0, int y0, int x0, int d, int h, int w, uint32_t v)
{
    for (int z = z0; z < z0 + d; z++)
        for (int y = y0; y < y0 + h; y++)
            for (int x = x0; x < x0 + w; x++)
                lab[(z * H + y) * W + x] = v;
}

static void test_shapes(void)
{
    static uint32_t lab[D * H * W];
    memset(lab, 0, sizeof lab);
    /* one voxel, label 7, at (1, 1, 1) */
    box(lab, 1, 1, 1, 1, 1, 1, 7);
    /* hollow 3x3x3 cube (centre empty), label 3, at (2..4, 3..5, 4..6):
     * one object with one cavity */
    box(lab, 2, 3, 4, 3, 3, 3, 3);
    box(lab, 3, 4, 5, 1, 1, 1, 0);
    /* flat ring in plane 0: 3x3 square without its centre, label 9, rows 0..2,
     * cols 5..7 (touches the volume's faces): one tunnel */
    box(lab, 0, 0, 5, 1, 3, 3, 9);
    box(lab, 0, 1, 6, 1, 1, 1, 0);
    /* two voxels touching at a corner only, label 4: one 26-connected object */
    box(lab, 4, 0, 0, 1, 1, 1, 4);
    box(lab, 5, 1, 1, 1, 1, 1, 4);

    static const double vox[3] = {2, 0.5, 0.5};
    cp_image *img = NULL;
    CHECK_OK(cp_image_create(&img, W, H, 2, D, CP_U16));
    uint16_t *px = img->data;
    for (int i = 0; i < D * H * W; i++) {
        px[2 * i] = (uint16_t)i;
        px[2 * i + 1] = (uint16_t)(1000 - i);
    }
    cp_cell_table3d t;
    CHECK_OK(cp_measure_cells3d(lab, D, H, W, vox, img, &t));
    CHECK(t.n == 4 && t.channels == 2);

    const cp_cell_props3d *c = find(&t, 7);
    CHECK(c && c->volume == 1 && c->convex_volume == 1 && c->euler_number == 1 && c->solidity == 1);
    CHECK(c->centroid_z == 1 && c->centroid_y == 1 && c->centroid_x == 1);
    CHECK(c->major_axis_length == 0 && c->minor_axis_length == 0 && c->aspect_ratio == 1);
    /* marching cubes around one voxel: an octahedron with vertices at the face
     * centres, 8 triangles of side sqrt(1/2): 8 * sqrt(3)/4 * 1/2 = sqrt(3) */
    CHECK_NEAR(c->surface_area, sqrt(3.0), 1e-14);
    /* physical: vertices (+-1, 0, 0), (0, +-.25, 0), (0, 0, +-.25); each face has
     * |cross| = |(-1, .25, 0) x (-1, 0, .25)| = |(1/16, 1/4, 1/4)| = sqrt(33)/16 */
    CHECK_NEAR(c->surface_area_physical, 8 * 0.5 * sqrt(33.0) / 16, 1e-14);
    CHECK(c->volume_physical == 0.5 && !c->touches_edge);
    CHECK(t.intensity[(c - t.cells) * 2].mean == (1 * H + 1) * W + 1);

    c = find(&t, 3);
    CHECK(c && c->volume == 26 && c->euler_number == 2 && c->convex_volume == 27);
    CHECK(c->centroid_z == 3 && c->centroid_y == 4 && c->centroid_x == 5 && c->extent == 26.0 / 27);
    CHECK(c->bbox_min_plane == 2 && c->bbox_max_plane == 5 && c->bbox_max_col == 7);
    /* covariance: per axis sum of squares 9 * (1 + 1) * 2 = 18 over 26, no
     * cross terms: all principal variances 18/26, axes sqrt(20 * 18/26) */
    CHECK_NEAR(c->major_axis_length, sqrt(20 * 18.0 / 26), 1e-14);
    CHECK_NEAR(c->minor_axis_length, sqrt(20 * 18.0 / 26), 1e-14);
    CHECK_NEAR(c->inertia_eigvals[0], 36.0 / 26, 1e-14);
    /* intensity: channel 0 is the voxel index, symmetric about the centre */
    const cp_intensity_stats *is = t.intensity + (c - t.cells) * 2;
    int centre = (3 * H + 4) * W + 5;
    CHECK(is[0].mean == centre && is[1].mean == 1000 - centre && is[0].sum == 26.0 * centre);
    CHECK(is[0].min == (2 * H + 3) * W + 4 && is[0].max == (4 * H + 5) * W + 6);

    c = find(&t, 9);
    CHECK(c && c->volume == 8 && c->euler_number == 0 && c->touches_edge);
    /* coplanar centres: hull of the face centres, a 3x3 square's worth of voxel
     * centres (skimage's Qhull pre-pass would fail and give 0) */
    CHECK(c->convex_volume == 9 && c->solidity == 8.0 / 9);
    CHECK(c->minor_axis_length == 0 && c->aspect_ratio == INFINITY);

    c = find(&t, 4);
    CHECK(c && c->volume == 2 && c->euler_number == 1 && c->convex_volume == 2);
    cp_cell_table3d_free(&t);

    /* a single plane measures as in 2D where the definitions agree */
    cp_cell_table t2;
    CHECK_OK(cp_measure_cells(lab + 4 * H * W, H, W, NULL, &t2));
    CHECK_OK(cp_measure_cells3d(lab + 4 * H * W, 1, H, W, NULL, NULL, &t));
    CHECK(t.n == t2.n && t.n == 2);
    for (size_t i = 0; i < t.n && i < t2.n; i++)
        CHECK(t.cells[i].volume == t2.cells[i].area && t.cells[i].convex_volume == t2.cells[i].convex_area &&
              t.cells[i].euler_number == t2.cells[i].euler_number &&
              t.cells[i].centroid_y == t2.cells[i].centroid_y && isnan(t.cells[i].volume_physical));
    cp_cell_table_free(&t2);
    cp_cell_table3d_free(&t);

    /* errors */
    CHECK(cp_measure_cells3d(lab, D, H, W, NULL, img, &t) == CP_OK);
    cp_cell_table3d_free(&t);
    CHECK(cp_measure_cells3d(lab, D - 1, H, W, NULL, img, &t) == CP_EINVAL);
    static const double bad[3] = {1, 0, 1};
    CHECK(cp_measure_cells3d(lab, D, H, W, bad, NULL, &t) == CP_EINVAL);
    CHECK(cp_measure_cells3d(lab, 0, H, W, NULL, NULL, &t) == CP_EINVAL);
    memset(lab, 0, sizeof lab);
    CHECK_OK(cp_measure_cells3d(lab, D, H, W, NULL, img, &t));
    CHECK(t.n == 0 && t.channels == 2);
    cp_cell_table3d_free(&t);
    cp_image_free(img);
}

int main(void)
{
    test_golden();
    test_shapes();
    return test_result();
}
