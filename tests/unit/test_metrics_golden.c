/* Measurements against the golden vectors: skimage 0.19.3 regionprops_table
 * CSVs (ints exact, floats <= 1e-9 relative) and cellpose.metrics match_v3/v4
 * (TP/FP/FN exact; AP, AJI, boundary scores within 1e-6). */
#include <cjson/cJSON.h>
#include <math.h>

#include "cellpose/cellpose.h"
#include "test.h"

static uint32_t *load_labels(const char *rel, int *h, int *w)
{
    cp_image *img = NULL;
    uint32_t *lab = NULL;
    const char *p = shared_path(rel);
    if (cp_image_read(p, NULL, &img) || cp_image_labels_u32(img, p, &lab)) {
        fprintf(stderr, "%s: %s\n", p, cp_errmsg());
        cp_image_free(img);
        return NULL;
    }
    *h = img->height;
    *w = img->width;
    cp_image_free(img);
    return lab;
}

static int rel_ok(double got, double want, double tol)
{
    if (isnan(want))
        return isnan(got);
    return fabs(got - want) <= tol * fmax(fabs(want), 1e-300) || got == want;
}

/* value of column `name` of the parsed cell */
static double prop(const cp_cell_props *c, const char *name, int *is_int)
{
    *is_int = 1;
    if (!strcmp(name, "label")) return c->label;
    if (!strcmp(name, "area")) return (double)c->area;
    if (!strcmp(name, "bbox-0")) return c->bbox_min_row;
    if (!strcmp(name, "bbox-1")) return c->bbox_min_col;
    if (!strcmp(name, "bbox-2")) return c->bbox_max_row;
    if (!strcmp(name, "bbox-3")) return c->bbox_max_col;
    if (!strcmp(name, "convex_area")) return (double)c->convex_area;
    if (!strcmp(name, "euler_number")) return c->euler_number;
    *is_int = 0;
    if (!strcmp(name, "perimeter")) return c->perimeter;
    if (!strcmp(name, "centroid-0")) return c->centroid_y;
    if (!strcmp(name, "centroid-1")) return c->centroid_x;
    if (!strcmp(name, "eccentricity")) return c->eccentricity;
    if (!strcmp(name, "solidity")) return c->solidity;
    if (!strcmp(name, "extent")) return c->extent;
    if (!strcmp(name, "equivalent_diameter")) return c->equivalent_diameter;
    if (!strcmp(name, "orientation")) return c->orientation;
    if (!strcmp(name, "major_axis_length")) return c->major_axis_length;
    if (!strcmp(name, "minor_axis_length")) return c->minor_axis_length;
    return NAN;
}

static void check_props(const char *labels_rel, const char *csv_rel)
{
    int h, w;
    uint32_t *lab = load_labels(labels_rel, &h, &w);
    CHECKF(lab != NULL, "%s", labels_rel);
    if (!lab)
        return;
    cp_cell_table t;
    CHECK_OK(cp_measure_cells(lab, h, w, NULL, &t));
    char *csv = test_slurp(shared_path(csv_rel), NULL);
    CHECKF(csv != NULL, "%s", csv_rel);
    if (!csv) {
        free(lab);
        return;
    }
    char *save = NULL, *line = strtok_r(csv, "\n", &save);
    char *cols[32];
    int ncol = 0;
    for (char *s2 = NULL, *tok = strtok_r(line, ",", &s2); tok && ncol < 32; tok = strtok_r(NULL, ",", &s2))
        cols[ncol++] = tok;
    size_t row = 0;
    int bad_int = 0, bad_float = 0;
    double worst = 0;
    const char *worst_col = "";
    while ((line = strtok_r(NULL, "\n", &save))) {
        if (row >= t.n) {
            row++;
            continue;
        }
        const cp_cell_props *c = t.cells + row;
        int k = 0;
        for (char *s2 = NULL, *tok = strtok_r(line, ",", &s2); tok && k < ncol; tok = strtok_r(NULL, ",", &s2), k++) {
            int is_int;
            double got = prop(c, cols[k], &is_int), want = strtod(tok, NULL);
            if (is_int) {
                if (got != want) {
                    if (bad_int++ < 5)
                        fprintf(stderr, "%s label %u %s: got %.17g want %s\n", csv_rel, c->label, cols[k], got, tok);
                }
            } else {
                double rel = fabs(got - want) / fmax(fabs(want), 1e-300);
                if (got == want)
                    rel = 0;
                if (rel > worst) {
                    worst = rel;
                    worst_col = cols[k];
                }
                if (!rel_ok(got, want, 1e-9) && bad_float++ < 5)
                    fprintf(stderr, "%s label %u %s: got %.17g want %s\n", csv_rel, c->label, cols[k], got, tok);
            }
        }
        row++;
    }
    CHECKF(row == t.n, "%s: %zu rows, %zu cells", csv_rel, row, t.n);
    CHECKF(bad_int == 0, "%s: %d integer mismatches", csv_rel, bad_int);
    CHECKF(bad_float == 0, "%s: %d float mismatches (worst %g in %s)", csv_rel, bad_float, worst, worst_col);
    fprintf(stderr, "%s: %zu cells, worst relative difference %g (%s)\n", csv_rel, t.n, worst, worst_col);
    free(csv);
    cp_cell_table_free(&t);
    free(lab);
}

static const char *pred_files[3] = {
    "golden/dynamics/stardist_img2d/noisy/v4_niter157/masks.npy.gz",
    "golden/dynamics/stardist_img2d/noisy/v3_niter157/masks.npy.gz",
    "golden/dynamics/cell_00849/clean/v4_niter191/masks.npy.gz",
};
static const char *true_files[3] = {
    "golden/inputs/stardist_img2d_gt.tif",
    "golden/inputs/stardist_img2d_gt.tif",
    "golden/inputs/cell_00849_label.tiff",
};

static void check_match(const char *json_rel, int v3)
{
    char *txt = test_slurp(shared_path(json_rel), NULL);
    CHECKF(txt != NULL, "%s", json_rel);
    if (!txt)
        return;
    cJSON *root = cJSON_Parse(txt);
    cJSON *images = cJSON_GetObjectItem(root, "images");
    CHECK(cJSON_GetArraySize(images) == 3);
    double scales[3] = {0.25, 0.5, 1.0};
    for (int i = 0; i < 3 && i < cJSON_GetArraySize(images); i++) {
        cJSON *im = cJSON_GetArrayItem(images, i);
        int h, w, h2, w2;
        uint32_t *t = load_labels(true_files[i], &h, &w);
        uint32_t *p = load_labels(pred_files[i], &h2, &w2);
        CHECK(t && p && h == h2 && w == w2);
        if (!t || !p) {
            free(t);
            free(p);
            continue;
        }
        cp_match_opts o = {NULL, 0, v3};
        cp_match_result r;
        CHECK_OK(cp_match(t, p, h, w, &o, &r));
        CHECKF(r.n_true == cJSON_GetObjectItem(im, "n_true")->valueint || v3, "n_true %lld",
               (long long)r.n_true);
        for (int k = 0; k < 3; k++) {
            int tp = cJSON_GetArrayItem(cJSON_GetObjectItem(im, "tp"), k)->valueint;
            int fp = cJSON_GetArrayItem(cJSON_GetObjectItem(im, "fp"), k)->valueint;
            int fn = cJSON_GetArrayItem(cJSON_GetObjectItem(im, "fn"), k)->valueint;
            double ap = cJSON_GetArrayItem(cJSON_GetObjectItem(im, "ap"), k)->valuedouble;
            CHECKF(r.tp[k] == tp && r.fp[k] == fp && r.fn[k] == fn, "%s image %d th %d: %lld/%lld/%lld vs %d/%d/%d",
                   json_rel, i, k, (long long)r.tp[k], (long long)r.fp[k], (long long)r.fn[k], tp, fp, fn);
            CHECK_NEAR(r.ap[k], ap, 1e-6);
        }
        CHECK_NEAR(r.aji, cJSON_GetObjectItem(im, "aji")->valuedouble, 1e-6);
        cp_boundary_score bs[3];
        CHECK_OK(cp_boundary_scores(t, p, h, w, scales, 3, bs));
        for (int k = 0; k < 3; k++) {
            CHECK_NEAR(bs[k].precision, cJSON_GetArrayItem(cJSON_GetObjectItem(im, "boundary_precision"), k)->valuedouble, 1e-6);
            CHECK_NEAR(bs[k].recall, cJSON_GetArrayItem(cJSON_GetObjectItem(im, "boundary_recall"), k)->valuedouble, 1e-6);
            CHECK_NEAR(bs[k].fscore, cJSON_GetArrayItem(cJSON_GetObjectItem(im, "boundary_fscore"), k)->valuedouble, 1e-6);
        }
        free(t);
        free(p);
    }
    cJSON_Delete(root);
    free(txt);
}

int main(void)
{
    check_props("golden/inputs/stardist_img2d_gt.tif", "golden/metrics/stardist_img2d_gt_props.csv");
    check_props("golden/inputs/cell_00849_label.tiff", "golden/metrics/cell_00849_label_props.csv");
    check_props("golden/dynamics/stardist_img2d/noisy/v4_niter157/masks.npy.gz",
                "golden/metrics/stardist_img2d_noisy_v4_masks_props.csv");
    check_match("golden/metrics/match_v4.json", 0);
    check_match("golden/metrics/match_v3.json", 1);
    return test_result();
}
