/* Private helpers of the dynamics stage. */
#ifndef CP_DYNAMICS_INTERNAL_H
#define CP_DYNAMICS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <omp.h>

/* OpenMP team size for a `threads` parameter (0 = default). */
static inline int dyn_threads(int threads)
{
    return threads > 0 ? threads : omp_get_max_threads();
}

/* A seed: its histogram count and raster index in the histogram. */
typedef struct dyn_seed {
    int32_t count;
    uint32_t index;
} dyn_seed;

/* libstdc++ std::sort of seeds comparing counts only (ascending): the order
 * torch 1.13's unstable CPU argsort gives to tied counts. */
void dyn_stdsort_seeds(dyn_seed *a, size_t n);

/* Bounding boxes of labels 1..nlab: rows [r0, r1), columns [c0, c1); r1 == 0
 * for labels without pixels. Returned array has nlab+1 entries (index 0 unused). */
typedef struct dyn_bbox {
    int r0, r1, c0, c1;
    size_t npix;
} dyn_bbox;
dyn_bbox *dyn_bboxes(const uint32_t *labels, int Ly, int Lx, uint32_t nlab);

uint32_t dyn_max_label(const uint32_t *labels, size_t npix);

#endif
