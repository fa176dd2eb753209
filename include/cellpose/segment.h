/* libcellpose segmentation: one call from an image to masks (network, then
 * dynamics), and the files Cellpose writes for it. */
#ifndef CELLPOSE_SEGMENT_H
#define CELLPOSE_SEGMENT_H

#include <stddef.h>
#include <stdint.h>

#include "cellpose/image.h"
#include "cellpose/models.h"
#include "cellpose/net.h"
#include "cellpose/preprocess.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cp_seg_params {
    /* network (see cp_preprocess) */
    double diameter;          /* pixels; 0 = none: v3 uses 30, v4 scale 1 (double: an
                                 estimated diameter is used as Cellpose's float64) */
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
    int v3_label_bug;         /* 1: reproduce Cellpose 3.1's fill-holes label bug (cp_dyn_params) */
    float diam_mean;          /* 0 = the model file's; Cellpose 3 built-in names use 30 (nuclei 17) */
    int threads;              /* OpenMP threads for this call; 0 = the caller's setting */
    /* volumes (cp_segment3d) */
    int do_3d;                /* Cellpose's do_3D: three network passes, 3D dynamics */
    double stitch_threshold;  /* > 0 without do_3d: 2D per plane, then stitch3D at this IoU */
    double anisotropy;        /* Z spacing over Y/X spacing (do_3d); default 1 */
    double flow3d_smooth[3];  /* do_3d: Gaussian sigma on dP along Z, Y, X; 0 = none */
    cp_norm_fixed norm_fixed; /* volumes: normalise with these values (a block of a larger
                                 volume, cp_blocks_plan); channels 0 = from the volume */
} cp_seg_params;

void cp_seg_params_default(cp_seg_params *p);

typedef struct cp_seg_result {
    int height, width;
    int planes;               /* Z: 1 for an image (0 is read as 1) */
    uint32_t *masks;          /* planes*height*width labels 1..ncells, 0 = background */
    uint32_t ncells;
    int flow_channels;        /* 3 (0 is read as 3): dY, dX, cellprob logit per plane;
                                 4 (do_3d): dZ, dY, dX, cellprob */
    float *flows;             /* flow_channels*planes*height*width, channel-major, at the
                                 image's resolution */
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

/* A volume (vol->planes = Z) -> flows -> 3D masks, as CellposeModel.eval with
 * z_axis=0: p->do_3d runs Cellpose's do_3D (cp_eval_flows3d with
 * p->anisotropy, flow3D_smooth on dP, 3D dynamics without flow QC, 3D fill
 * holes and min_size); otherwise p->stitch_threshold > 0 runs its stitch mode
 * (norm3D, the 2D network and dynamics with the flow QC per plane and no
 * min_size, stitch3D, then 3D fill holes and min_size). A single plane
 * without do_3d is cp_segment. Neither flag on a volume is CP_EINVAL.
 * out->flows has 4 channels with do_3d, 3 in stitch mode. */
int cp_segment3d(cp_model *m, const cp_image *vol, const cp_seg_params *p, cp_seg_result *out);
/* Saved flows -> masks without the network: flows is channels x planes x
 * height x width as in cp_seg_result (4 channels: do_3D dynamics; 3: stitch
 * mode on the planes). */
int cp_segment3d_from_flows(const float *flows, int channels, int planes, int height, int width, cp_arch arch,
                            float diam_mean, const cp_seg_params *p, cp_seg_result *out);

/* ---- Automatic diameter: Cellpose 3's size model (diameter 0) ------------ */

typedef struct cp_size_estimate {
    double diam;              /* the estimate: median diameter of the size pass's masks
                                 (utils.diameters), or the size model's diam_mean if none */
    double diam_style;        /* the regression's estimate from the style (pass 1) */
    double rescale;           /* scale of the size pass: diam_mean / diam_style */
    int net_height, net_width;/* resolution of the size pass, trunc(L * rescale) */
    uint32_t nmasks;          /* masks of the size pass */
    int fallback;             /* 1: no masks, diam is the size model's diam_mean */
    uint32_t *masks;          /* the size pass's labels at the image's size */
    float *style;             /* pass 1's style (nstyle values), which the regression reads */
    int nstyle;
    double t_network, t_dynamics; /* seconds */
} cp_size_estimate;

/* Cellpose 3's SizeModel.eval on one 2D image (its first plane), as
 * models.Cellpose(...).eval(diameter=0) runs it; then segment with
 * p->diameter = out->diam. Pass 1: the network at its own scale (diam_mean /
 * diam_labels, p->diam_mean as in cp_segment) gives the style, and
 * cp_size_model_predict the diameter diam_style. Pass 2: the network at
 * sm->diam_mean / diam_style, dynamics at that resolution with interp=False
 * steps and Cellpose's defaults (200 steps, thresholds 0 and 0.4, masks up to
 * 0.4 of the image), masks resized (nearest) to the image, then fill holes
 * and min size 15. Only p's channels, normalisation, batch size, threads and
 * v3_label_bug apply, as in Cellpose. CPnet models only. */
int cp_estimate_diameter(cp_model *m, const cp_size_model *sm, const cp_image *img, const cp_seg_params *p,
                         cp_size_estimate *out);
void cp_size_estimate_free(cp_size_estimate *e);

/* Pass 2's masks from its network output at its own resolution (dP 2 x Lyr x
 * Lxr, dY then dX; cellprob Lyr x Lxr) into masks (Ly x Lx). */
int cp_size_pass_masks(const float *dP, const float *cellprob, int Lyr, int Lxr, int Ly, int Lx,
                       int v3_label_bug, int threads, uint32_t *masks);

/* Files written per image, named like Cellpose's next to the image (or in a
 * save folder): NAME is the image's name without extension. For a volume
 * (planes > 1): masks are a Z-stack with ImageJ metadata (images=Z,
 * slices=Z), masks_npy (Z, Y, X), flows (flow_channels, Z, Y, X), the
 * overlay the maximum projection along Z of the image and of the labels,
 * ROIs one per cell and plane (named LABEL_zPLANE, ImageJ position = plane,
 * 1-based); outlines and PNG masks hold one plane and fail (CP_EUNSUPPORTED). */
typedef enum cp_seg_output {
    CP_SEG_OUT_MASKS = 1 << 0,     /* NAME_cp_masks.tif: u16, u32 above 65535 cells */
    CP_SEG_OUT_MASKS_NPY = 1 << 1, /* NAME_masks.npy */
    CP_SEG_OUT_FLOWS = 1 << 2,     /* NAME_flows.npy: float32 3xHxW dY, dX, cellprob */
    CP_SEG_OUT_OVERLAY = 1 << 3,   /* NAME_overlay.png: image, coloured masks, white outlines */
    CP_SEG_OUT_OUTLINES = 1 << 4,  /* NAME_cp_outlines.txt: ImageJ outlines */
    CP_SEG_OUT_ROIS = 1 << 5,      /* NAME_rois.zip: ImageJ ROI set */
    CP_SEG_OUT_PNG = 1 << 6        /* NAME_cp_masks.png: 16-bit PNG (TIFF above 65535 cells) */
} cp_seg_output;
#define CP_SEG_OUTPUT_KINDS 7

/* "masks_npy,flows,overlay,outlines,rois,png" (any subset) -> flags. */
int cp_seg_parse_outputs(const char *list, unsigned *flags);
/* Path of one output for an input image (or NAME_flows.npy input). */
int cp_seg_output_path(const char *input, const char *savedir, cp_seg_output kind, char **path);
/* Write one output atomically. img is needed only for the overlay. */
int cp_seg_write_output(cp_seg_output kind, const char *path, const cp_seg_result *r, const cp_image *img);

/* Render masks over an image: RGB u8, the image (first channel as gray, or the
 * first three as RGB) scaled between its 1st and 99th percentiles, each cell
 * blended half-and-half with its colour, outlines white. */
int cp_render_overlay(const cp_image *img, const uint32_t *masks, cp_image **rgb);

#ifdef __cplusplus
}
#endif
#endif
