/* libcellpose segmentation: one call from an image to masks (network, then
 * dynamics), and the files Cellpose writes for it. */
#ifndef CELLPOSE_SEGMENT_H
#define CELLPOSE_SEGMENT_H

#include <stddef.h>
#include <stdint.h>

#include "cellpose/image.h"
#include "cellpose/net.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cp_seg_params {
    /* network (see cp_preprocess) */
    float diameter;           /* pixels; 0 = none: v3 uses 30, v4 scale 1 */
    int chan, chan2;          /* Cellpose 3 channels, 1-based, 0 = gray/none */
    int normalize;            /* percentile normalisation (default on) */
    float norm_lo, norm_hi;   /* percentiles, default 1 and 99 */
    float tile_overlap;       /* default 0.1 */
    int batch_size;           /* tiles per forward call, default 8 */
    int augment;              /* test-time flips */
    /* dynamics */
    int niter;                /* 0 = Cellpose's default from the diameter */
    float cellprob_threshold; /* default 0 */
    float flow_threshold;     /* default 0.4; 0 disables the flow-error QC */
    int min_size;             /* default 15; -1 disables */
    float max_size_fraction;  /* default 0.4 */
    int exclude_on_edges;     /* drop masks touching the image border */
    int dynamics;             /* 0 = follow the model (CPnet: v3, cpsam: v4), else CP_DYN_V3 / CP_DYN_V4 */
} cp_seg_params;

void cp_seg_params_default(cp_seg_params *p);

typedef struct cp_seg_result {
    int height, width;
    uint32_t *masks;          /* height*width labels 1..ncells, 0 = background */
    uint32_t ncells;
    float *flows;             /* 3*height*width: dY, dX, cellprob logit (image resolution) */
    int niter;                /* Euler steps used */
    double t_network, t_dynamics; /* seconds */
} cp_seg_result;

/* Image -> flows -> masks. */
int cp_segment(cp_model *m, const cp_image *img, const cp_seg_params *p, cp_seg_result *out);
/* Saved flows (3*H*W as above) -> masks: new thresholds without the network.
 * arch selects the default dynamics variant and niter rule. */
int cp_segment_from_flows(const float *flows, int height, int width, cp_arch arch, float diam_mean,
                          const cp_seg_params *p, cp_seg_result *out);
void cp_seg_result_free(cp_seg_result *r);

#ifdef __cplusplus
}
#endif
#endif
