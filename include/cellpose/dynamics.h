/* libcellpose dynamics: from flows (dP, cellprob) to a label image or volume,
 * exactly as Cellpose 3 (v3.1.1.3, CPU) and Cellpose 4 (main after v4.0.9) do
 * it (spec cellpose.md section 5, golden/3d/README.md), and labels back to
 * flows (masks_to_flows).
 *
 * 2D layout: dP is 2 x Ly x Lx float32, row-major, dP[0] = dY, dP[1] = dX,
 * network scale (5x unit flows). cellprob is Ly x Lx float32 logits. Labels are
 * uint32, Ly x Lx, 0 = background. 3D functions (suffix 3d) take volumes:
 * see "3D" below.
 *
 * Parity: Euler positions, seeds, masks and flow-QC decisions reproduce Cellpose
 * bit for bit (golden/dynamics, golden/net); the seed order among tied
 * histogram counts follows torch 1.13's unstable argsort (libstdc++ introsort,
 * reimplemented in C). Flows from masks: v3 bit for bit, v4 to ~1e-16.
 *
 * Deterministic: the same bytes for any thread count. On x86-64 CPUs with AVX2
 * and FMA the Euler steps run 16 pixels at a time (bit-identical to the scalar
 * loop; the environment variable CP_DYN_SCALAR=1 forces the scalar loop).
 *
 * Round trip (labels -> masks_to_flows -> x5 flows, cellprob +-4 -> dynamics)
 * gives back the labels (AP at IoU 0.9 = 1 with v3 flows on the test images)
 * except in these border cases: masks smaller than min_size are removed; a mask
 * enclosed by another is swallowed by fill-holes; v4 flows take the raw heat
 * gradient across borders shared with another mask (spec 9.3), so border
 * pixels of touching masks can flow into the neighbour (with no background at
 * all, as in tightly packed tissue, this affects most masks); masks of fewer
 * than 11 pixels give no seed (no histogram bin exceeds 10).
 *
 * V4 needs an image of at least 2x2 (grid_sample normalises by size - 1).
 * Cellpose 4 diffuses QC flows in float32 when the padded image exceeds 4e7
 * pixels; we always use float64 (masks may then differ in rare QC decisions). */
#ifndef CELLPOSE_DYNAMICS_H
#define CELLPOSE_DYNAMICS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Which Cellpose the dynamics follow. cpseg picks it from the model:
 * CPnet (cyto3, nuclei, ...) -> V3, Cellpose-SAM (cpsam) -> V4. */
typedef enum cp_dyn_variant {
    CP_DYN_V3 = 3, /* numba pixel-space bilinear Euler (spec 5.2b), per-mask QC flows */
    CP_DYN_V4 = 4  /* grid_sample Euler (5.2a), global-diffusion QC flows */
} cp_dyn_variant;

typedef struct cp_dyn_params {
    cp_dyn_variant variant;
    int niter;                 /* Euler steps; 0 = cp_dyn_niter(variant, diameter, diam_mean) */
    double diameter;           /* used only when niter == 0; <= 0 means "not given" (200 steps) */
    double diam_mean;          /* v3 model's diam_mean (30 cyto, 17 nuclei); v4 uses 30 */
    float cellprob_threshold;  /* pixels with cellprob > this are followed (default 0) */
    double flow_threshold;     /* flow-QC error bound (default 0.4); <= 0 disables QC */
    int min_size;              /* masks with fewer pixels are removed (default 15); <= 0 disables */
    double max_size_fraction;  /* masks larger than this fraction of the image are removed (0.4) */
    int v3_label_bug;          /* 1: reproduce v3.1.1.3's fill-holes/min-size label-removal bug
                                  (spec 5.6) that removes the wrong masks after QC gaps.
                                  Default 0 (the fixed v4 behaviour) for both variants. */
    int threads;               /* OpenMP threads; 0 = the OpenMP default */
} cp_dyn_params;

/* Cellpose's defaults for a variant (niter 0, no diameter, thresholds 0/0.4,
 * min_size 15, max_size_fraction 0.4, diam_mean 30). */
void cp_dyn_params_default(cp_dyn_params *p, cp_dyn_variant variant);

/* Default Euler steps: v3 trunc((1/(diam_mean/diameter))*200), v4
 * trunc(200/(30/diameter)), both in double; 200 when diameter <= 0. */
int cp_dyn_niter(cp_dyn_variant variant, double diameter, double diam_mean);

/* Figures cpseg reports. Times are wall-clock milliseconds. */
typedef struct cp_dyn_stats {
    int niter;            /* Euler steps used */
    size_t followed;      /* pixels followed (cellprob > threshold) */
    int seeds;            /* histogram seeds */
    int masks_seeded;     /* labels after get_masks */
    int masks_removed_qc; /* labels removed by the flow QC */
    int cells;            /* labels in the result */
    double ms_euler, ms_seeds, ms_qc, ms_fill, ms_total;
} cp_dyn_stats;

/* The whole pipeline: Euler -> get_masks -> flow QC -> fill holes / min size.
 * labels (Ly*Lx) receives 1..K in row-major first-appearance order. stats may
 * be NULL. */
int cp_dynamics(const float *dP, const float *cellprob, int Ly, int Lx,
                const cp_dyn_params *params, uint32_t *labels, cp_dyn_stats *stats);

/* ---- Stages, for tests and debugging ---- */

/* Number of pixels with cellprob > threshold. */
size_t cp_dyn_count_followed(const float *cellprob, size_t npix, float threshold);

/* Euler integration of F = dP*[cellprob > thr]/5 for the followed pixels
 * (row-major order). p (2*N floats, caller-allocated, N = cp_dyn_count_followed)
 * receives the final positions: p[0..N) = y, p[N..2N) = x, as Cellpose's
 * p_final. threads 0 = OpenMP default. */
int cp_dyn_euler(const float *dP, const float *cellprob, int Ly, int Lx, float threshold,
                 cp_dyn_variant variant, int niter, int threads, float *p);

/* The same with Cellpose's interp=False steps (numba steps2D), which its size
 * model uses: each step adds the flow F at (int(y), int(x)) to both
 * coordinates (float32) and clamps them to [0, L-1]. */
int cp_dyn_euler_nointerp(const float *dP, const float *cellprob, int Ly, int Lx, float threshold,
                          int niter, int threads, float *p);

/* get_masks (spec 5.3): histogram of trunc(p), seeds, torch-ordered growth,
 * max_size_fraction removal, first-appearance renumbering. labels (Ly*Lx)
 * receives the result; *nlabels the label count and *nseeds the seed count
 * (either may be NULL). */
int cp_dyn_get_masks(const float *p, const float *cellprob, int Ly, int Lx, float threshold,
                     double max_size_fraction, uint32_t *labels, int *nlabels, int *nseeds);

/* Flow error per label (spec 5.4): err[l-1] for labels 1..max (allocated here,
 * free() it; *nerr = max label). Labels without pixels get NaN. QC flows follow
 * the variant (v3: per-mask diffusion, v4: global). */
int cp_dyn_flow_errors(const uint32_t *labels, int Ly, int Lx, const float *dP,
                       cp_dyn_variant variant, int threads, double **err, uint32_t *nerr);

/* Set labels with flow error > threshold to 0 (no renumbering: gaps remain).
 * *removed (may be NULL) receives the number of labels removed. */
int cp_dyn_remove_bad_flow_masks(uint32_t *labels, int Ly, int Lx, const float *dP,
                                 cp_dyn_variant variant, double threshold, int threads,
                                 int *removed);

/* Fill holes and remove masks < min_size (spec 5.6). v3_label_bug reproduces
 * v3.1.1.3's wrong-label removal when the input has gaps. */
int cp_dyn_fill_holes_and_remove_small(uint32_t *labels, int Ly, int Lx, int min_size,
                                       int v3_label_bug);

/* Renumber labels to 1..K in row-major first-appearance order (0 stays 0).
 * Returns K in *nlabels (may be NULL). */
int cp_dyn_renumber(uint32_t *labels, size_t npix, uint32_t *nlabels);

/* Unit flows from labels by heat diffusion (spec 5.5): mu (2*Ly*Lx doubles,
 * mu[0..] = Y, then X; 0 outside masks). V4: Cellpose's masks_to_flows_gpu
 * (global iteration count, centre = rounded mean); labels must be 1..K
 * without gaps (missing labels are skipped). V3: masks_to_flows_cpu (per-mask
 * diffusion; any labels). Training flows are float32(5*mu). */
int cp_masks_to_flows(const uint32_t *labels, int Ly, int Lx, cp_dyn_variant variant,
                      int threads, double *mu);

/* ---- 3D (Cellpose's do_3D dynamics and stitch3D) ----
 * Layout: dP is 3 x Lz x Ly x Lx float32 (dZ, dY, dX) at network scale (5x
 * unit flows), cellprob Lz x Ly x Lx logits, labels uint32 Lz x Ly x Lx, C
 * order. Bit for bit with Cellpose (golden/3d), the seed order among tied
 * counts as torch 1.13's argsort. Bad sizes give CP_EINVAL; volumes whose
 * padded histogram ((Lz+40)(Ly+40)(Lx+40) bins) exceeds 2^32 give CP_ELIMIT. */

/* Whole 3D pipeline as Cellpose's do_3D: trilinear Euler (grid_sample, v3 and
 * v4 identical), get_masks 3D, no flow QC, fill holes (3D, face-connected
 * background) and min_size in 3D. Uses params->niter / diameter / diam_mean /
 * variant (niter rule), cellprob_threshold, min_size, max_size_fraction,
 * threads; flow_threshold and v3_label_bug are ignored (Cellpose ignores the
 * flow QC in 3D; the 3D labels have no gaps). Needs Lz, Ly, Lx >= 2 (the
 * flows are normalised by size - 1). stats may be NULL (masks_removed_qc 0). */
int cp_dynamics3d(const float *dP, const float *cellprob, int Lz, int Ly, int Lx,
                  const cp_dyn_params *params, uint32_t *labels, cp_dyn_stats *stats);

/* Euler steps for the followed voxels (cellprob > threshold, C order); p is
 * 3*N (N = cp_dyn_count_followed): z[0..N), y[N..2N), x[2N..3N) as Cellpose's
 * p_final. interp 1 = trilinear grid_sample (v3 interp=True and v4; needs
 * every size >= 2), 0 = v3's nearest-voxel steps3D. */
int cp_dyn_euler3d(const float *dP, const float *cellprob, int Lz, int Ly, int Lx, float threshold,
                   int interp, int niter, int threads, float *p);

/* get_masks_torch in 3D: histogram of trunc(p) padded by 20, seeds at 5x5x5
 * maxima with count > 10, torch-ordered growth in 11x11x11 windows,
 * max_size_fraction removal, first-appearance renumbering. */
int cp_dyn_get_masks3d(const float *p, const float *cellprob, int Lz, int Ly, int Lx, float threshold,
                       double max_size_fraction, uint32_t *labels, int *nlabels, int *nseeds);

/* fill_holes_and_remove_small_masks on a volume (v4 behaviour; holes are
 * background not 6-connected to the label's bounding-box border). */
int cp_dyn_fill_holes_and_remove_small3d(uint32_t *labels, int Lz, int Ly, int Lx, int min_size);

/* Cellpose's utils.stitch3D on per-plane labels, in place: plane by plane,
 * the labels 1..max of plane z+1 (present or not) take the label of plane z
 * with the highest IoU (>= stitch_threshold, and the highest for that label
 * of plane z; first on ties) or new labels max+1, ...; until the first
 * non-empty comparison an empty plane resets the running maximum. CP_ELIMIT
 * if the labels would pass 2^32 - 1. */
int cp_stitch3d(uint32_t *masks, int Lz, int Ly, int Lx, double stitch_threshold);

/* Unit flows from 3D labels: mu is 3*Lz*Ly*Lx doubles (Z, Y, X). V3:
 * dynamics.masks_to_flows (sum of the 2D flows of every Z, Y and X plane,
 * accumulated in float32 as Cellpose does; magnitudes up to 2). V4:
 * masks_to_flows_gpu_3d (3D heat diffusion, 7-point stencil, always float64;
 * Cellpose uses float32 above 4e7 padded voxels). */
int cp_masks_to_flows3d(const uint32_t *labels, int Lz, int Ly, int Lx, cp_dyn_variant variant,
                        int threads, double *mu);

#ifdef __cplusplus
}
#endif
#endif
