/* libcellpose measurements: per-cell shape and intensity properties (the
 * scikit-image 0.19 regionprops definitions), summaries, and segmentation
 * quality against ground truth (Cellpose's matching, AP, AJI, boundary
 * scores). Label images are 2D uint32 arrays, row-major, 0 = background;
 * labels need not be consecutive. */
#ifndef CELLPOSE_MEASURE_H
#define CELLPOSE_MEASURE_H

#include <stddef.h>
#include <stdint.h>

#include "cellpose/image.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- per-cell shape ---------------------------------------------------- */

typedef struct cp_cell_props {
    uint32_t label;
    int64_t area;                         /* pixel count */
    double perimeter;                     /* skimage perimeter, 4-neighbourhood */
    double centroid_y, centroid_x;        /* mean (row, col) */
    int bbox_min_row, bbox_min_col;       /* inclusive */
    int bbox_max_row, bbox_max_col;       /* exclusive */
    double major_axis_length, minor_axis_length;
    /* major/minor; +inf when minor is 0 and major > 0 (cells one pixel wide),
     * 1 for a single pixel (both axes 0) */
    double aspect_ratio;
    double eccentricity;
    double orientation;                   /* radians, skimage convention */
    double solidity, extent, equivalent_diameter;
    int64_t convex_area;                  /* pixels of skimage's convex_hull_image */
    int euler_number;                     /* 8-connected objects - 4-connected holes */
    int touches_edge;                     /* 1 if the cell has a pixel on the image border */
} cp_cell_props;

typedef struct cp_intensity_stats {
    double mean, min, max, sum, std;      /* std: population (divide by n) */
} cp_intensity_stats;

typedef struct cp_cell_table {
    size_t n;                  /* cells, in increasing label order */
    cp_cell_props *cells;
    int channels;              /* intensity channels measured (0 = none) */
    cp_intensity_stats *intensity; /* n*channels, cell-major: [cell*channels + c] */
} cp_cell_table;

/* Measure every label of labels[height*width]. intensity may be NULL; if
 * given, it must be height x width with one plane and any number of channels.
 * Deterministic for any OpenMP thread count. */
int cp_measure_cells(const uint32_t *labels, int height, int width, const cp_image *intensity,
                     cp_cell_table *out);
void cp_cell_table_free(cp_cell_table *t);

/* ---- per-cell shape in 3D ------------------------------------------------ */

/* Label volumes: uint32 planes x height x width (z, y, x), 0 = background.
 * Definitions are scikit-image 0.19 regionprops in 3D (coordinates in voxels,
 * z = plane index); the extra ones say how they are computed. */
typedef struct cp_cell_props3d {
    uint32_t label;
    int64_t volume;                       /* voxel count (skimage area) */
    double centroid_z, centroid_y, centroid_x;
    int bbox_min_plane, bbox_min_row, bbox_min_col; /* inclusive */
    int bbox_max_plane, bbox_max_row, bbox_max_col; /* exclusive */
    double inertia_eigvals[3];            /* of skimage's inertia tensor, descending */
    /* sqrt(10 (e0 + e1 - e2)) and sqrt(10 (e1 + e2 - e0)), from the covariance
     * directly so thin cells keep their precision */
    double major_axis_length, minor_axis_length;
    double aspect_ratio;                  /* major/minor; +inf when minor is 0 < major, 1 for one voxel */
    double solidity, extent;
    double equivalent_diameter;           /* (6 volume / pi)^(1/3) */
    /* voxels whose centre is in the convex hull of the voxels' face centres
     * (skimage convex_hull_image); also when the centres are coplanar, where
     * skimage's Qhull pre-pass fails and returns an empty hull */
    int64_t convex_volume;
    int euler_number;                     /* 26-connected objects - tunnels + cavities */
    /* mesh_surface_area(marching_cubes(pad(cell_mask, 1), 0.5)) (Lewiner),
     * in voxel units; surface_area_physical with the voxel size given (NaN if none) */
    double surface_area, surface_area_physical;
    double volume_physical;               /* volume x voxel volume; NaN without voxel size */
    int touches_edge;                     /* a voxel on a face of the volume */
} cp_cell_props3d;

typedef struct cp_cell_table3d {
    size_t n;                  /* cells, in increasing label order */
    cp_cell_props3d *cells;
    int channels;              /* intensity channels measured (0 = none) */
    cp_intensity_stats *intensity; /* n*channels, cell-major */
} cp_cell_table3d;

/* Measure every label of labels[planes*height*width]. voxel_size (z, y, x
 * extent of a voxel in any one unit) may be NULL: the physical columns are then
 * NaN. intensity may be NULL; if given it must be planes x height x width with
 * any number of channels. Deterministic for any OpenMP thread count. */
int cp_measure_cells3d(const uint32_t *labels, int planes, int height, int width,
                       const double *voxel_size, const cp_image *intensity, cp_cell_table3d *out);
void cp_cell_table3d_free(cp_cell_table3d *t);

/* ---- summaries ------------------------------------------------------------ */

typedef struct cp_summary {
    size_t n;                  /* finite values summarised */
    double mean, std, median, min, max; /* std: population; median: numpy's (mean of
                                           the two middle values for even n); NaN if n = 0 */
} cp_summary;

/* Summarise the finite values of v[n] (infinities and NaN are skipped). */
int cp_summarize(const double *v, size_t n, cp_summary *out);

/* ---- assignment ---------------------------------------------------------- */

/* Minimum-cost assignment on a sparse bipartite graph: every row must get one
 * of its columns, every column is used at most once. Row r's edges are
 * cols[row_ptr[r] .. row_ptr[r+1]-1] with costs cost[...] (any finite sign).
 * Exact shortest-augmenting-path algorithm (Jonker-Volgenant style with
 * Dijkstra on reduced costs). row_to_col[nrows] receives the column of each
 * row. CP_EINVAL if no complete assignment exists. */
int cp_assign_sparse(size_t nrows, size_t ncols, const size_t *row_ptr, const uint32_t *cols,
                     const double *cost, int32_t *row_to_col);

/* Dense rectangular linear assignment, as scipy.optimize.linear_sum_assignment:
 * cost[nrows*ncols] row-major; min(nrows, ncols) pairs are returned in
 * rows[]/cols[] (sorted by row), *npairs set. */
int cp_linear_sum_assignment(const double *cost, size_t nrows, size_t ncols, size_t *rows,
                             size_t *cols, size_t *npairs);

/* ---- quality against ground truth ---------------------------------------- */

#define CP_MATCH_MAX_THRESHOLDS 64

typedef struct cp_match_opts {
    const double *thresholds;  /* IoU thresholds; NULL = 0.5, 0.75, 0.9 */
    int n_thresholds;
    /* count masks by the maximum label (Cellpose v3) instead of the number
     * of distinct labels (Cellpose v4, the default) */
    int v3_counts;
} cp_match_opts;

typedef struct cp_match_result {
    int n_thresholds;
    double thresholds[CP_MATCH_MAX_THRESHOLDS];
    int64_t n_true, n_pred;
    int64_t tp[CP_MATCH_MAX_THRESHOLDS], fp[CP_MATCH_MAX_THRESHOLDS], fn[CP_MATCH_MAX_THRESHOLDS];
    /* per threshold: AP = TP/(TP+FP+FN), precision, recall, F1 (NaN on 0/0),
     * mean IoU of the true-positive pairs, and its sum (for pooling) */
    double ap[CP_MATCH_MAX_THRESHOLDS], precision[CP_MATCH_MAX_THRESHOLDS],
        recall[CP_MATCH_MAX_THRESHOLDS], f1[CP_MATCH_MAX_THRESHOLDS],
        mean_iou[CP_MATCH_MAX_THRESHOLDS], iou_sum[CP_MATCH_MAX_THRESHOLDS];
    /* Cellpose's aggregated Jaccard index: sum of intersections of the pairs
     * of the th = 0.5 assignment over the foreground union */
    double aji;
    int64_t aji_intersection, aji_union;
} cp_match_result;

/* Compare prediction with truth (both height x width). opts may be NULL.
 * Only the voxel count matters: for volumes pass height = planes x height
 * (matching and AJI over voxels, as cellpose.metrics does in 3D). */
int cp_match(const uint32_t *truth, const uint32_t *pred, int height, int width,
             const cp_match_opts *opts, cp_match_result *out);

/* Derived ratios from counts (used for pooled results over several images). */
void cp_match_finish(cp_match_result *r);

typedef struct cp_boundary_score {
    double scale;
    int64_t tp, fp, fn;        /* pixels of the dilated outlines */
    double precision, recall, fscore;
} cp_boundary_score;

/* Cellpose's boundary_scores for one image: outlines (masks_to_outlines) of
 * truth and pred dilated by a disk of radius max(1, scale * d), d = median
 * equivalent diameter of the true masks; out[n_scales]. */
int cp_boundary_scores(const uint32_t *truth, const uint32_t *pred, int height, int width,
                       const double *scales, int n_scales, cp_boundary_score *out);
void cp_boundary_finish(cp_boundary_score *s);

/* ---- output ---------------------------------------------------------------- */

/* Python repr of a double: the shortest decimal that reads back to the same
 * value, "inf", "-inf", "nan"; fixed notation with a ".0" for integral values
 * when 1e-4 <= |x| < 1e16, else d.ddde+XX. buf needs 32 bytes. Returns buf. */
char *cp_format_double(double x, char *buf);

#ifdef __cplusplus
}
#endif
#endif
