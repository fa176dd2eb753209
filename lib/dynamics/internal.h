/* Private helpers of the dynamics stage. */
#ifndef CP_DYNAMICS_INTERNAL_H
#define CP_DYNAMICS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
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

/* Euler cycle detection (a step is a pure function of the float32 state, so
 * a revisited state, bit for bit, repeats with its period): states are saved
 * at steps 1, 2, 4, ..., 32 and then every 32 steps, which catches cycles of
 * period <= 32 within about two save intervals of entering them; fixed
 * points and 2-cycles (the usual end of a trajectory) are caught at once by
 * comparing with the two previous states. */
static inline int dyn_next_save(int t)
{
    return t < 32 ? 2 * t : t + 32;
}

/* Run STEP_CALL (which updates the float array S of NC coordinates) NITER
 * times, skipping whole periods once the state cycles. */
#define DYN_FOLLOW(STEP_CALL, S, NC, NITER)                                     \
    do {                                                                        \
        uint32_t sv_[NC], q1_[NC], q2_[NC], u_[NC];                             \
        memcpy(sv_, S, sizeof sv_);                                             \
        memcpy(q1_, S, sizeof q1_);                                             \
        memset(q2_, 0, sizeof q2_);                                             \
        int tsave_ = 0, nsave_ = 1;                                             \
        for (int t_ = 1; t_ <= (NITER); t_++) {                                 \
            STEP_CALL;                                                          \
            memcpy(u_, S, sizeof u_);                                           \
            int period_ = 0;                                                    \
            if (!memcmp(u_, q1_, sizeof u_))                                    \
                period_ = 1;                                                    \
            else if (t_ > 1 && !memcmp(u_, q2_, sizeof u_))                     \
                period_ = 2;                                                    \
            else if (!memcmp(u_, sv_, sizeof u_))                               \
                period_ = t_ - tsave_;                                          \
            if (period_) {                                                      \
                int rem_ = ((NITER) - t_) % period_;                            \
                for (int r_ = 0; r_ < rem_; r_++)                               \
                    STEP_CALL;                                                  \
                break;                                                          \
            }                                                                   \
            memcpy(q2_, q1_, sizeof q2_);                                       \
            memcpy(q1_, u_, sizeof q1_);                                        \
            if (t_ == nsave_) {                                                 \
                memcpy(sv_, u_, sizeof sv_);                                    \
                tsave_ = t_;                                                    \
                nsave_ = dyn_next_save(t_);                                     \
            }                                                                   \
        }                                                                       \
    } while (0)

/* A seed: its histogram count and raster index in the histogram. */
typedef struct dyn_seed {
    int32_t count;
    uint32_t index;
} dyn_seed;

/* libstdc++ std::sort of seeds comparing counts only (ascending): the order
 * torch 1.13's unstable CPU argsort gives to tied counts. */
void dyn_stdsort_seeds(dyn_seed *a, size_t n);

/* Bounding box of a label: planes [p0, p1) (3D; 0, 1 in 2D), rows [r0, r1),
 * columns [c0, c1), npix pixels (all 0 for a label without pixels). */
typedef struct dyn_bbox {
    int p0, p1, r0, r1, c0, c1;
    size_t npix;
} dyn_bbox;

/* Largest label value (0 for an empty image); threads 0 = OpenMP default. */
uint32_t dyn_max_label(const uint32_t *labels, size_t npix, int threads);

/* One pass over a label image or volume (values <= nlab) in `threads`
 * contiguous chunks: per-label pixel counts (box[l].npix; box[0].npix =
 * background), boxes when Lx > 0 (rows of Lx pixels, planes of Ly rows; Ly is
 * only read then), and the labels present in raster first-appearance order
 * (chunks merged in order, so the result does not depend on the threads). */
typedef struct dyn_census {
    dyn_bbox *box;   /* nlab + 1 entries */
    uint32_t *order; /* norder labels (never 0) */
    uint32_t norder;
} dyn_census;
int dyn_census_make(dyn_census *c, const uint32_t *labels, size_t npix, int Ly, int Lx,
                    uint32_t nlab, int threads);
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

/* The same on a volume (Lz planes; Lz = 1 and d3 = 0 is the 2D case: get_masks
 * pads the histogram in z, and fill treats the end planes as borders, only in 3D). Sizes are checked by the callers. */
int dyn_get_masks_nd(const float *p, const float *cellprob, int Lz, int Ly, int Lx, int d3,
                     float threshold, double max_size_fraction, int threads, uint32_t *labels,
                     int *nlabels, int *nseeds);
int dyn_fill_holes_nd(uint32_t *labels, int Lz, int Ly, int Lx, int d3, int min_size,
                      int v3_label_bug, int threads, uint32_t *ncells);

/* Checks a volume size: CP_EINVAL for a dimension <= 0, CP_ELIMIT when
 * 4 x Lz x Ly x Lx doubles would not fit in size_t; *nvox = Lz * Ly * Lx. */
int dyn_dims3(int Lz, int Ly, int Lx, const char *what, size_t *nvox);

#endif
