/* Measurements on hand-worked images; expected values derived in comments
 * from the formulas (spec appendix A, section 6), not from the code. */
#include "cellpose/cellpose.h"
#include "test.h"

#define H 12
#define W 12

static void fill(uint32_t *lab, int r0, int c0, int h, int w, uint32_t v)
{
    for (int r = r0; r < r0 + h; r++)
        for (int c = c0; c < c0 + w; c++)
            lab[r * W + c] = v;
}

static const cp_cell_props *find(const cp_cell_table *t, uint32_t label)
{
    for (size_t i = 0; i < t->n; i++)
        if (t->cells[i].label == label)
            return t->cells + i;
    return NULL;
}

static void test_shapes(void)
{
    uint32_t lab[H * W] = {0};
    /* 4x4 square, label 5, rows 2-5, cols 3-6 */
    fill(lab, 2, 3, 4, 4, 5);
    /* ring: 5x5 square with a 3x3 hole, label 1000, rows 7-11, cols 0-4
     * (touches the left and bottom border) */
    fill(lab, 7, 0, 5, 5, 1000);
    fill(lab, 8, 1, 3, 3, 0);
    /* diagonal line, label 2: (0,7) (1,8) (2,9) (3,10) (4,11) (touches top/right) */
    for (int i = 0; i < 5; i++)
        lab[i * W + 7 + i] = 2;
    /* one pixel, label 9, at (9, 8) */
    lab[9 * W + 8] = 9;

    cp_cell_table t;
    CHECK_OK(cp_measure_cells(lab, H, W, NULL, &t));
    CHECK(t.n == 4);
    /* non-consecutive labels come out in increasing order */
    CHECK(t.cells[0].label == 2 && t.cells[1].label == 5 && t.cells[2].label == 9 &&
          t.cells[3].label == 1000);

    const cp_cell_props *s = find(&t, 5);
    CHECK(s && s->area == 16);
    CHECK(s->bbox_min_row == 2 && s->bbox_min_col == 3 && s->bbox_max_row == 6 && s->bbox_max_col == 7);
    CHECK(s->centroid_y == 3.5 && s->centroid_x == 4.5);
    /* mu20 = mu02 = 4 * (2.25+0.25+0.25+2.25) = 20, mu11 = 0: l1 = l2 = 20/16 = 1.25;
     * axes 4*sqrt(1.25) = 2*sqrt(5) */
    CHECK_NEAR(s->major_axis_length, 2 * sqrt(5.0), 1e-14);
    CHECK_NEAR(s->minor_axis_length, 2 * sqrt(5.0), 1e-14);
    CHECK(s->eccentricity == 0 && s->aspect_ratio == 1);
    CHECK_NEAR(s->orientation, M_PI / 4, 0); /* a == c, b = 0: +pi/4 */
    /* border = the 12 outer pixels; corners code 5, edges code 25: weight 1 each */
    CHECK_NEAR(s->perimeter, 12, 1e-12);
    CHECK(s->convex_area == 16 && s->solidity == 1 && s->extent == 1 && s->euler_number == 1);
    CHECK_NEAR(s->equivalent_diameter, sqrt(64 / M_PI), 1e-14);
    CHECK(!s->touches_edge);

    const cp_cell_props *r = find(&t, 1000);
    CHECK(r && r->area == 16);
    /* the hole: one 8-connected object minus one 4-connected hole */
    CHECK(r->euler_number == 0);
    /* hull covers the hole: 25 pixels */
    CHECK(r->convex_area == 25);
    CHECK_NEAR(r->solidity, 16.0 / 25, 1e-15);
    CHECK_NEAR(r->extent, 16.0 / 25, 1e-15);
    /* all 16 pixels are border; codes 5 (corners), 15 and 5 (edges): 16 x 1 */
    CHECK_NEAR(r->perimeter, 16, 1e-12);
    /* mu20 = 5*(4+1+0+1+4) - 3*(1+0+1) = 44 = mu02: axes 4*sqrt(44/16) */
    CHECK_NEAR(r->major_axis_length, 4 * sqrt(2.75), 1e-13);
    CHECK_NEAR(r->minor_axis_length, 4 * sqrt(2.75), 1e-13);
    CHECK(r->centroid_y == 9 && r->centroid_x == 2);
    CHECK(r->touches_edge);

    const cp_cell_props *d = find(&t, 2);
    CHECK(d && d->area == 5);
    /* mu20 = mu02 = mu11 = 10: a = c = 2, b = -2: l1 = 4, l2 = 0 */
    CHECK_NEAR(d->major_axis_length, 8, 1e-14);
    CHECK(d->minor_axis_length == 0);
    CHECK(d->eccentricity == 1);
    CHECK(isinf(d->aspect_ratio) && d->aspect_ratio > 0);
    CHECK_NEAR(d->orientation, -M_PI / 4, 0); /* a == c, b < 0 */
    /* only the 3 inner pixels have two diagonal border neighbours (code 21,
     * sqrt 2); the end pixels have code 11 (weight 0) */
    CHECK_NEAR(d->perimeter, 3 * sqrt(2.0), 1e-14);
    /* hull of the edge midpoints is the strip |r - c| <= 0.5: the 5 pixels */
    CHECK(d->convex_area == 5);
    CHECK_NEAR(d->extent, 0.2, 1e-16);
    CHECK(d->euler_number == 1 && d->touches_edge);

    const cp_cell_props *o = find(&t, 9);
    CHECK(o && o->area == 1 && o->perimeter == 0); /* code 1 has weight 0 */
    CHECK(o->major_axis_length == 0 && o->minor_axis_length == 0 && o->eccentricity == 0);
    CHECK(o->aspect_ratio == 1); /* documented: a single pixel is round */
    CHECK(o->convex_area == 1 && o->solidity == 1 && o->extent == 1 && o->euler_number == 1);
    CHECK_NEAR(o->equivalent_diameter, sqrt(4 / M_PI), 1e-15);
    CHECK(o->bbox_max_row == 10 && o->bbox_max_col == 9);
    cp_cell_table_free(&t);

    /* labels far beyond the pixel count (sparse label lookup) */
    uint32_t big[6] = {4000000000u, 4000000000u, 0, 7, 0, 4000000000u};
    CHECK_OK(cp_measure_cells(big, 2, 3, NULL, &t));
    CHECK(t.n == 2 && t.cells[0].label == 7 && t.cells[1].label == 4000000000u);
    CHECK(t.cells[1].area == 3 && t.cells[1].bbox_max_row == 2 && t.cells[0].centroid_x == 0);
    cp_cell_table_free(&t);
    cp_match_result mr;
    CHECK_OK(cp_match(big, big, 2, 3, NULL, &mr));
    CHECK(mr.tp[0] == 2 && mr.fp[0] == 0 && mr.aji == 1);

    /* an empty image has no cells */
    uint32_t zero[4] = {0};
    CHECK_OK(cp_measure_cells(zero, 2, 2, NULL, &t));
    CHECK(t.n == 0);
    cp_cell_table_free(&t);
}

static void test_intensity(void)
{
    uint32_t lab[H * W] = {0};
    fill(lab, 2, 3, 4, 4, 5);
    cp_image *img;
    CHECK_OK(cp_image_create(&img, W, H, 2, 1, CP_U16));
    uint16_t *px = img->data;
    for (int r = 0; r < H; r++)
        for (int c = 0; c < W; c++) {
            px[(r * W + c) * 2] = (uint16_t)(10 * r + c);
            px[(r * W + c) * 2 + 1] = 7;
        }
    cp_cell_table t;
    CHECK_OK(cp_measure_cells(lab, H, W, img, &t));
    CHECK(t.n == 1 && t.channels == 2);
    const cp_intensity_stats *s = t.intensity;
    /* ch0 = 10r + c, r in 2..5, c in 3..6: mean 10*3.5 + 4.5 = 39.5, min 23,
     * max 56, sum 16*39.5 = 632, variance 100*1.25 + 1.25 */
    CHECK(s[0].mean == 39.5 && s[0].min == 23 && s[0].max == 56 && s[0].sum == 632);
    CHECK_NEAR(s[0].std, sqrt(126.25), 1e-12);
    CHECK(s[1].mean == 7 && s[1].min == 7 && s[1].max == 7 && s[1].sum == 112 && s[1].std == 0);
    cp_cell_table_free(&t);

    cp_image *bad;
    CHECK_OK(cp_image_create(&bad, W - 1, H, 1, 1, CP_U8));
    CHECK(cp_measure_cells(lab, H, W, bad, &t) == CP_EINVAL);
    cp_image_free(bad);
    cp_image_free(img);
}

static void test_summary(void)
{
    double v[] = {3, 1, INFINITY, 2, NAN};
    cp_summary s;
    CHECK_OK(cp_summarize(v, 5, &s));
    /* finite values 3, 1, 2 */
    CHECK(s.n == 3 && s.mean == 2 && s.median == 2 && s.min == 1 && s.max == 3);
    CHECK_NEAR(s.std, sqrt(2.0 / 3), 1e-15);
    double e[] = {4, 1, 3, 2};
    CHECK_OK(cp_summarize(e, 4, &s));
    CHECK(s.median == 2.5);
    CHECK_OK(cp_summarize(e, 0, &s));
    CHECK(s.n == 0 && isnan(s.mean));
}

static uint64_t rng = 88172645463325252ULL;
static double rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0;
}

/* brute force over all injective maps of the smaller side */
static double best(const double *c, int nr, int nc, int r, unsigned used)
{
    if (r == nr)
        return 0;
    double b = INFINITY;
    for (int j = 0; j < nc; j++)
        if (!(used & (1u << j))) {
            double v = c[r * nc + j] + best(c, nr, nc, r + 1, used | (1u << j));
            if (v < b)
                b = v;
        }
    return b;
}

static void test_assignment(void)
{
    for (int trial = 0; trial < 300; trial++) {
        int nr = 1 + (int)(rnd() * 6), nc = 1 + (int)(rnd() * 6);
        double c[36], ct[36];
        for (int i = 0; i < nr * nc; i++) {
            c[i] = trial % 3 == 0 ? (double)(int)(rnd() * 4) - 2 : rnd() * 10 - 5; /* with ties */
        }
        for (int i = 0; i < nr; i++)
            for (int j = 0; j < nc; j++)
                ct[j * nr + i] = c[i * nc + j];
        double want = nr <= nc ? best(c, nr, nc, 0, 0) : best(ct, nc, nr, 0, 0);
        size_t rows[6], cols[6], np;
        CHECK_OK(cp_linear_sum_assignment(c, (size_t)nr, (size_t)nc, rows, cols, &np));
        double got = 0;
        unsigned ur = 0, uc = 0;
        for (size_t k = 0; k < np; k++) {
            got += c[rows[k] * nc + cols[k]];
            ur |= 1u << rows[k];
            uc |= 1u << cols[k];
            if (k)
                CHECK(rows[k] > rows[k - 1]);
        }
        CHECKF(np == (size_t)(nr < nc ? nr : nc), "pairs %zu", np);
        CHECKF(__builtin_popcount(ur) == (int)np && __builtin_popcount(uc) == (int)np, "not one-to-one");
        CHECKF(fabs(got - want) < 1e-9, "%dx%d: cost %g, optimum %g", nr, nc, got, want);
    }
    /* a row with no admissible column */
    size_t ptr[3] = {0, 1, 2};
    uint32_t cl[2] = {0, 0};
    double cs[2] = {1, 2};
    int32_t r2c[2];
    CHECK(cp_assign_sparse(2, 2, ptr, cl, cs, r2c) == CP_EINVAL);
}

static void test_match(void)
{
    /* truth: A (label 1) 4x4 at (0,0); B (label 4) 4x4 at (6,0); C (label 7) 2x2 at (0,8)
     * pred:  A' = A exactly (label 3); B' = B shifted one column (label 1);
     *        D (label 2) 3x3 at (8,8), touching nothing */
    uint32_t t[H * W] = {0}, p[H * W] = {0};
    fill(t, 0, 0, 4, 4, 1);
    fill(t, 6, 0, 4, 4, 4);
    fill(t, 0, 8, 2, 2, 7);
    fill(p, 0, 0, 4, 4, 3);
    fill(p, 6, 1, 4, 4, 1);
    fill(p, 8, 8, 3, 3, 2);
    cp_match_result r;
    double th[3] = {0.5, 0.6, 0.75};
    cp_match_opts o = {th, 3, 0};
    CHECK_OK(cp_match(t, p, H, W, &o, &r));
    CHECK(r.n_true == 3 && r.n_pred == 3);
    /* IoU(A, A') = 1; IoU(B, B') = 12 / 20 = 0.6 */
    CHECK(r.tp[0] == 2 && r.fp[0] == 1 && r.fn[0] == 1);
    CHECK(r.tp[1] == 2); /* IoU >= th is inclusive */
    CHECK(r.tp[2] == 1 && r.fp[2] == 2 && r.fn[2] == 2);
    CHECK(r.ap[0] == 0.5 && r.ap[2] == 0.2);
    CHECK(r.precision[0] == 2.0 / 3 && r.recall[0] == 2.0 / 3 && r.f1[0] == 2.0 / 3);
    CHECK_NEAR(r.mean_iou[0], 0.8, 1e-15);
    CHECK(r.mean_iou[2] == 1);
    /* AJI: (16 + 12) / (16 + 20 + 4 + 9) = 28 / 49 */
    CHECK(r.aji_intersection == 28 && r.aji_union == 49);
    CHECK_NEAR(r.aji, 4.0 / 7, 1e-15);
    /* Cellpose v3 counts masks by the largest label: 7 true, 3 predicted */
    o.v3_counts = 1;
    CHECK_OK(cp_match(t, p, H, W, &o, &r));
    CHECK(r.n_true == 7 && r.fn[0] == 5 && r.fp[0] == 1);
    /* empty prediction: no TP, AP 0; both empty: 0/0 */
    uint32_t z[H * W] = {0};
    CHECK_OK(cp_match(t, z, H, W, NULL, &r));
    CHECK(r.tp[0] == 0 && r.fn[0] == 3 && r.ap[0] == 0 && r.n_thresholds == 3);
    CHECK_OK(cp_match(z, z, H, W, NULL, &r));
    CHECK(isnan(r.ap[0]));

    /* optimal, not greedy. Row 0: t1 = cols 0-5, t2 = cols 6-8; p1 = cols 2-7;
     * p2 = cols 0-1 of rows 0 and 1.
     * t1 & p1: 4 px, union 8 -> 0.5;  t2 & p1: 2 px, union 7 -> 0.2857;
     * t1 & p2: 2 px, union 6 + 4 - 2 = 8 -> 0.25 */
    uint32_t a[2 * W] = {0}, b[2 * W] = {0};
    for (int c = 0; c < 6; c++)
        a[c] = 1;
    for (int c = 6; c < 9; c++)
        a[c] = 2;
    for (int c = 2; c < 8; c++)
        b[c] = 1;
    b[0] = b[1] = 2;
    b[W] = b[W + 1] = 2;
    double th2[1] = {0.25};
    cp_match_opts o2 = {th2, 1, 0};
    CHECK_OK(cp_match(a, b, 2, W, &o2, &r));
    /* greedy would take t1-p1 (0.5) and leave t2 (0.2857 only with p1): 1 TP;
     * the optimum takes t1-p2 (0.25) and t2-p1 (0.2857): 2 TP */
    CHECKF(r.tp[0] == 2, "tp %lld", (long long)r.tp[0]);
}

static void test_boundary(void)
{
    uint32_t t[H * W] = {0};
    fill(t, 1, 1, 4, 4, 1);
    fill(t, 6, 6, 5, 5, 2);
    cp_boundary_score b[2];
    double sc[2] = {0.5, 1};
    CHECK_OK(cp_boundary_scores(t, t, H, W, sc, 2, b));
    CHECK(b[0].precision == 1 && b[0].recall == 1 && b[0].fscore == 1 && b[1].fscore == 1);
    CHECK(b[0].fp == 0 && b[0].fn == 0 && b[0].tp > 0);
    /* no prediction: recall 0, precision 0/0 */
    uint32_t z[H * W] = {0};
    CHECK_OK(cp_boundary_scores(t, z, H, W, sc, 1, b));
    CHECK(b[0].recall == 0 && isnan(b[0].precision) && b[0].fp == 0);
}

static void test_format(void)
{
    char b[40];
    CHECK(!strcmp(cp_format_double(1.0, b), "1.0"));
    CHECK(!strcmp(cp_format_double(0.1, b), "0.1"));
    CHECK(!strcmp(cp_format_double(-2.5, b), "-2.5"));
    CHECK(!strcmp(cp_format_double(1e-5, b), "1e-05"));
    CHECK(!strcmp(cp_format_double(0.0001, b), "0.0001"));
    CHECK(!strcmp(cp_format_double(1e16, b), "1e+16"));
    CHECK(!strcmp(cp_format_double(123456789012345.0, b), "123456789012345.0"));
    CHECK(!strcmp(cp_format_double(1.5e300, b), "1.5e+300"));
    CHECK(!strcmp(cp_format_double(89.84062043356593, b), "89.84062043356593"));
    CHECK(!strcmp(cp_format_double(0.1 + 0.2, b), "0.30000000000000004"));
    CHECK(!strcmp(cp_format_double(INFINITY, b), "inf"));
    CHECK(!strcmp(cp_format_double(NAN, b), "nan"));
    CHECK(!strcmp(cp_format_double(5e-324, b), "5e-324"));
    /* round trip on random doubles */
    int bad = 0;
    for (int i = 0; i < 20000; i++) {
        double x = (rnd() - 0.5) * pow(10, (int)(rnd() * 40) - 20);
        if (strtod(cp_format_double(x, b), NULL) != x)
            bad++;
    }
    CHECK(bad == 0);
}

int main(void)
{
    test_shapes();
    test_intensity();
    test_summary();
    test_assignment();
    test_match();
    test_boundary();
    test_format();
    return test_result();
}
