/* Private helpers of the measure stage. */
#ifndef CP_MEASURE_INTERNAL_H
#define CP_MEASURE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

/* Distinct non-zero labels of an image and a fast label -> index map. */
typedef struct label_index {
    size_t n;             /* distinct non-zero labels */
    uint32_t *labels;     /* sorted ascending */
    uint32_t max_label;   /* 0 if the image is all background */
    uint32_t *lut;        /* label -> index + 1 (0 = absent), size max_label + 1; NULL if sparse */
} label_index;

int label_index_build(const uint32_t *lab, size_t npix, label_index *ix);
void label_index_free(label_index *ix);

/* Index of label v (v != 0 and present), or SIZE_MAX. */
static inline size_t label_index_of(const label_index *ix, uint32_t v)
{
    if (ix->lut)
        return v <= ix->max_label && ix->lut[v] ? (size_t)ix->lut[v] - 1 : SIZE_MAX;
    size_t lo = 0, hi = ix->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ix->labels[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < ix->n && ix->labels[lo] == v ? lo : SIZE_MAX;
}

/* A cell's bounding box; z1, r1, c1 exclusive. */
typedef struct cell_box {
    int z0, r0, c0, z1, r1, c1;
} cell_box;

/* Bounding boxes of every label of lab[D*H*W] (box[i] for ix->labels[i]). */
int measure_boxes(const uint32_t *lab, int D, int H, int W, const label_index *ix, cell_box *box);

static inline int64_t measure_floordiv(int64_t a, int64_t b)
{
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0)))
        q--;
    return q;
}

static inline int64_t measure_ceildiv(int64_t a, int64_t b) { return -measure_floordiv(-a, b); }

/* Grow *p to hold need elements (capacity *cap, grown by half). -1 on failure. */
int measure_grow(void **p, size_t *cap, size_t need, size_t elem);

/* Andrew's monotone chain on 2D points (pairs) sorted lexicographically, n >= 2;
 * the hull (counter-clockwise in the algebraic sense, no collinear points) goes
 * to hull[] (room for n + 1 points), its size is the result. */
size_t measure_hull2d(const int64_t *pts, size_t n, int64_t *hull);

/* Intensity statistics per channel of img over the cell mask m (first voxel of
 * the crop bb, with the given plane and row strides), n voxels; *acc is
 * scratch grown as needed. CP_ENOMEM on failure. */
struct cp_image;
struct cp_intensity_stats;
int measure_intensity(const struct cp_image *img, const uint8_t *m, size_t plane_stride,
                      size_t row_stride, cell_box bb, int64_t n, double **acc, size_t *acc_cap,
                      struct cp_intensity_stats *ist);

#endif
