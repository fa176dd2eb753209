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

/* Start of chunk c of n items cut in P contiguous chunks. */
static inline size_t dyn_chunk_at(size_t n, size_t P, size_t c)
{
    return n / P * c + n % P * c / P;
}

/* Followed pixels (cellprob > threshold) counted in nchunks contiguous chunks
 * of [0, npix) (chunk k starts at dyn_chunk_at(npix, nchunks, k); nchunks = Ly
 * gives rows): first[k] = followed pixels before chunk k, first[nchunks] =
 * all. first has nchunks + 1 entries. */
void dyn_count_followed(const float *cellprob, size_t npix, float threshold, size_t nchunks,
                        int threads, size_t *first);

/* A seed: its histogram count and raster index in the histogram. */
typedef struct dyn_seed {
    int32_t count;
    uint32_t index;
} dyn_seed;

/* libstdc++ std::sort of seeds comparing counts only (ascending): the order
 * torch 1.13's unstable CPU argsort gives to tied counts. */
void dyn_stdsort_seeds(dyn_seed *a, size_t n);

/* Bounding box of a label: rows [r0, r1), columns [c0, c1), npix pixels
 * (all 0 for a label without pixels). */
typedef struct dyn_bbox {
    int r0, r1, c0, c1;
    size_t npix;
} dyn_bbox;

/* Largest label value (0 for an empty image); threads 0 = OpenMP default. */
uint32_t dyn_max_label(const uint32_t *labels, size_t npix, int threads);

/* One pass over a label image (values <= nlab) in `threads` contiguous
 * chunks: per-label pixel counts (box[l].npix; box[0].npix = background),
 * boxes when Lx > 0, and the labels present in raster first-appearance order
 * (chunks merged in order, so the result does not depend on the threads). */
typedef struct dyn_census {
    dyn_bbox *box;   /* nlab + 1 entries */
    uint32_t *order; /* norder labels (never 0) */
    uint32_t norder;
} dyn_census;
int dyn_census_make(dyn_census *c, const uint32_t *labels, size_t npix, int Lx, uint32_t nlab,
                    int threads);
void dyn_census_free(dyn_census *c);

/* labels[i] = map[labels[i]] */
void dyn_apply_map(uint32_t *labels, size_t npix, const uint32_t *map, int threads);

/* cp_dyn_get_masks / cp_dyn_fill_holes_and_remove_small with a thread count
 * (0 = OpenMP default); fill also returns the final label count (may be NULL). */
int dyn_get_masks(const float *p, const float *cellprob, int Ly, int Lx, float threshold,
                  double max_size_fraction, int threads, uint32_t *labels, int *nlabels,
                  int *nseeds);
int dyn_fill_holes_and_remove_small(uint32_t *labels, int Ly, int Lx, int min_size,
                                    int v3_label_bug, int threads, uint32_t *ncells);

#endif
