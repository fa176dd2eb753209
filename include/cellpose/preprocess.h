/* libcellpose preprocessing and tiling: from an image to flows.
 *
 * Reproduces Cellpose's steps (spec sections 4.1-4.8) in its order and float
 * arithmetic: channel selection, percentile normalisation, diameter rescale
 * (OpenCV INTER_LINEAR), padding, overlapping tiles, taper-mask blending,
 * optional test-time augmentation, batches, crop and resize back.
 *
 * Conventions follow the network: CP_ARCH_CPNET means Cellpose 3 rules
 * (2 channels, chan/chan2, tiles 224), CP_ARCH_CPSAM Cellpose 4 rules
 * (first 3 channels, tiles 256, image padded to a full tile). */
#ifndef CELLPOSE_PREPROCESS_H
#define CELLPOSE_PREPROCESS_H

#include <stddef.h>
#include <stdint.h>

#include "cellpose/image.h"
#include "cellpose/net.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Planar float32 stack: data[(c*height + y)*width + x]. */
typedef struct cp_planes {
    int channels, height, width;
    float *data;
} cp_planes;

/* New zero-filled stack (CP_ELIMIT beyond cp_get_max_pixels()). */
int cp_planes_create(cp_planes **out, int channels, int height, int width);
void cp_planes_free(cp_planes *p);

/* ---- stages (each usable on its own) ---------------------------------- */

/* 4.1: channels of one plane of `img` for the network, as float32 planes.
 * CPNET: chan/chan2 are 1-based, 0 = gray/none; output always 2 channels
 * ([img, 0] for one channel, [mean of channels, 0] for chan 0, else
 * [img[chan-1], img[chan2-1] or 0]). CPSAM: first 3 channels, zeros appended;
 * chan/chan2 ignored. CP_EINVAL if chan/chan2 exceed the image's channels. */
int cp_select_channels(const cp_image *img, int plane, cp_arch arch, int chan, int chan2,
                       cp_planes **out);

/* numpy.percentile(x, q), method "linear", of n float32 values (q in [0,100]).
 * Exact (same float64 result as numpy 1.24). Reorders x (selection, no sort). */
double cp_percentile_f32(float *x, size_t n, double q);

/* 4.2: per-channel normalisation in place: x = (x - p_lo) / (p_hi - p_lo) in
 * float32 with p_lo/p_hi the lower/upper percentiles (1 and 99 by default);
 * p_hi - p_lo <= 1e-3 gives 0. Constant channels stay unchanged (CPNET) or
 * become 0 (CPSAM). Above 224^3 pixels the percentiles use a subsample. */
int cp_normalize(cp_planes *p, cp_arch arch, double lower, double upper);

/* ---- volumes (3D) ------------------------------------------------------ */

/* Channel-major float32 volume: data[((c*depth + z)*height + y)*width + x]. */
typedef struct cp_volume {
    int channels, depth, height, width;
    float *data;
} cp_volume;

/* New zero-filled volume (CP_ELIMIT beyond cp_get_max_pixels()). */
int cp_volume_create(cp_volume **out, int channels, int depth, int height, int width);
void cp_volume_free(cp_volume *v);

/* norm3D: cp_normalize with the percentiles of each channel taken over the
 * whole volume (normalize99 on Z x Y x X; above 224^3 voxels every
 * max(1, Z/50)-th plane and every max(1, L/224)-th row and column). */
int cp_normalize3d(cp_volume *v, cp_arch arch, double lower, double upper);

/* Normalisation values fixed in advance, so that the blocks of a volume are
 * normalised as the whole volume is (cp_blocks_plan). */
#define CP_NORM_MAX_CHANNELS 4
typedef struct cp_norm_fixed {
    int channels;                      /* 0: none, each call normalises from its own image */
    int skip[CP_NORM_MAX_CHANNELS];    /* constant or NaN channel: left (CPNET) or 0 (CPSAM) */
    double lo[CP_NORM_MAX_CHANNELS], hi[CP_NORM_MAX_CHANNELS]; /* the percentile values */
} cp_norm_fixed;

/* norm3D's sampling strides of a depth x height x width volume: 1, or above
 * 224^3 voxels every max(1, Z/50)-th plane and max(1, L/224)-th row/column. */
void cp_norm_strides(int64_t depth, int64_t height, int64_t width, int64_t *sz, int64_t *sy, int64_t *sx);
/* One channel's values from its norm3D samples (reordered): *skip as
 * cp_normalize3d skips a channel (constant or NaN), else the percentiles. */
int cp_norm_channel_values(float *samples, size_t n, double lower, double upper, int *skip, double *lo,
                           double *hi);
/* cp_normalize3d with given values: the same float32 arithmetic. */
int cp_normalize3d_fixed(cp_volume *v, cp_arch arch, const cp_norm_fixed *nf);

/* 4.3: resize factor. CPNET: diam_mean/diameter, or diam_mean/diam_labels when
 * diameter <= 0. CPSAM: 30/diameter, or 1 when diameter <= 0. */
double cp_rescale(double diameter, double diam_mean, double diam_labels, cp_arch arch);
/* The resized length trunc(L*s). */
int cp_rescaled_len(int len, double s);

/* OpenCV cv2.resize(..., INTER_LINEAR) on float32 planes, bit for bit
 * (half-pixel centres, replicated edges, no antialiasing; an exact 2x
 * downscale takes OpenCV's INTER_AREA path as OpenCV does). */
int cp_resize_linear(const cp_planes *in, int out_h, int out_w, cp_planes **out);

/* 4.4: zeros before/after along one axis of length len. */
void cp_pad_amounts(int len, cp_arch arch, int bsize, int *before, int *after);

/* 4.5 / 4.7: tiles along the two axes of a padded image. */
typedef struct cp_tiling {
    int ny, nx;          /* tiles per axis; tile k = (k / nx, k % nx), row-major */
    int ty, tx;          /* tile size */
    int height, width;   /* size of the tiled area (>= padded size with augment) */
    int *ystart, *xstart;
    int augment;
} cp_tiling;

/* Fill t for a padded image height x width. bsize: nominal tile size;
 * overlap is clipped to [0.05, 0.5]; augment selects the 4.7 rules. */
int cp_tiling_make(cp_tiling *t, int height, int width, int bsize, double overlap, int augment);
void cp_tiling_free(cp_tiling *t);

/* 4.6 taper mask for one axis: m[i] = 1/(1+exp((|i-c| - (B/2-20))/7.5)),
 * B = max(224, ty, tx), restricted to the len-long centred window used by a
 * tile of size ty x tx along an axis of tile length len. out has len values. */
void cp_taper_1d(int ty, int tx, int len, double *out);

/* ---- the pipeline ------------------------------------------------------ */

/* A network seen through one call: in n x nchan x ty x tx -> out n x nout x ty x tx
 * (nout >= 3: dY, dX, cellprob first). Returns CP_OK or an error code (with
 * the message set). */
typedef int (*cp_forward_fn)(void *ctx, const float *in, int n, int ty, int tx, float *out);
/* The same pass also giving each tile's L2-normalised style (n x nstyle). */
typedef int (*cp_forward_style_fn)(void *ctx, const float *in, int n, int ty, int tx, float *out,
                                   float *style);

typedef struct cp_net_desc {
    cp_arch arch;
    int nchan, nout, bsize;
    double diam_mean, diam_labels;
    cp_forward_fn forward;
    void *ctx;
    cp_forward_style_fn forward_style; /* optional: used instead of forward, and the
                                          image's style is returned in cp_flows */
    int nstyle;                        /* style length per tile when forward_style is set */
} cp_net_desc;

typedef struct cp_eval_params {
    int chan, chan2;      /* CPNET channel choice (1-based, 0 = gray/none); default 0, 0 */
    double diameter;      /* <= 0: none (CPNET uses diam_labels; CPSAM scale 1). Default 0 */
    double diam_mean;     /* > 0 replaces the network's diam_mean (Cellpose 3 built-in
                             names use 30, or 17 for nuclei); default 0 */
    int normalize;        /* default 1 */
    double norm_lower, norm_upper;  /* default 1, 99 */
    double tile_overlap;  /* default 0.1 */
    int batch_size;       /* tiles per forward call, default 8 */
    int augment;          /* default 0 */
    int bsize;            /* tile size; 0 = the network's (224 / 256) */
    int keep_net_size;    /* 1: flows stay at the network's resolution trunc(L*s)
                             (Cellpose's resample=False); default 0 */
    double anisotropy;    /* 3D only: Z sampling relative to Y/X (Z is resized by
                             anisotropy*s); <= 0 means 1. Default 1 */
    cp_norm_fixed norm_fixed; /* 3D only, with normalize: these values instead of the
                                 volume's own percentiles (channels 0 = off, default) */
} cp_eval_params;

void cp_eval_params_init(cp_eval_params *p);

/* Network output at the image's resolution. data is 3 x height x width:
 * dY = data, dX = data + n, cellprob = data + 2n (n = height*width). */
typedef struct cp_flows {
    int height, width;
    float *data;
    float *dY, *dX, *cellprob;
    double rescale;                 /* s used (1 = no resize) */
    int net_height, net_width;      /* trunc(L*s): resolution the network saw */
    float *style;                   /* nstyle: the image's style as Cellpose's run_net makes
                                       it (tile styles summed in tile order, then divided by
                                       the L2 norm, float32); NULL without forward_style */
    int nstyle;
} cp_flows;

void cp_flows_free(cp_flows *f);

/* Intermediate stages, for debugging and tests. Zero it, set the request
 * fields, pass it to the eval call, read the results, then
 * cp_eval_debug_free() (also before reusing it). On failure the call frees
 * what it had filled. */
typedef struct cp_eval_debug {
    int keep_stages;      /* request: fill net_in, padded, net_out */
    int keep_tiles;       /* request: keep inputs/outputs of the first N tiles */
    cp_planes *net_in;    /* C x Ly x Lx: channels + normalisation, original size */
    cp_planes *padded;    /* C x Lyp x Lxp: resized and zero-padded (what is tiled) */
    cp_planes *net_out;   /* 3 x Lyr x Lxr: stitched and cropped, before resize back */
    float *tiles_in;      /* ntiles_kept x C x ty x tx (augmented tiles as fed) */
    float *tiles_out;     /* ntiles_kept x nout x ty x tx (raw network output) */
    int ntiles_kept;
    cp_tiling tiling;     /* tile layout */
    int pad_y[2], pad_x[2];  /* zeros before/after, per axis */
} cp_eval_debug;

void cp_eval_debug_free(cp_eval_debug *d);

/* Image (one plane) -> flows, with any forward function. dbg may be NULL.
 * Works tile-batch by tile-batch: memory is the image, its padded copy, the
 * float32 accumulator and one batch of tiles. */
int cp_eval_flows_net(const cp_net_desc *net, const cp_image *img, int plane,
                      const cp_eval_params *p, cp_flows **out, cp_eval_debug *dbg);

/* Cellpose's run_net on a stack of n planes already normalised and at the
 * network's scale: x is n x nchan x height x width, out n x 3 x height x width
 * (dY, dX, cellprob of each plane; for planes of another orientation, the flows
 * along the planes' first and second axes). Padding, tiles, blending as in
 * cp_eval_flows_net; planes share batches as in Cellpose (max(1, batch_size /
 * tiles per plane) planes per group). Only tile_overlap, batch_size, augment
 * and bsize of p are used (p may be NULL). */
int cp_run_net(const cp_net_desc *net, const float *x, int n, int height, int width,
               const cp_eval_params *p, float *out);

/* ---- 3D (Cellpose eval with do_3D, or a stack for stitching) ---------- */

/* The network input of a volume (img->planes = Z): cp_select_channels on
 * every plane, then with normalize cp_normalize3d (Cellpose's norm3D). */
int cp_volume_net_input(const cp_image *img, cp_arch arch, int chan, int chan2, int normalize, double lower,
                        double upper, cp_volume **out);

/* Cellpose's 3D resize: every Z plane to height x width (when that differs),
 * then every Y slice (Z x X) to depth x width (when the depth differs), each
 * with cp_resize_linear over all channels. */
int cp_resize_volume(const cp_volume *in, int depth, int height, int width, cp_volume **out);

/* Stages of the 3D eval, for tests: zero it, set keep_stages, pass it, read,
 * cp_eval3d_debug_free(). */
typedef struct cp_eval3d_debug {
    int keep_stages;
    cp_volume *net_in;          /* C x Z x Y x X after norm3D */
    cp_volume *net_in_resized;  /* at the network's scale (NULL when not resized) */
    float *pass[3];             /* raw run_net output of each pass: n x 3 x h x w with
                                   pass 0 the Z planes (Y x X), 1 the Y planes (Z x X),
                                   2 the X planes (Z x Y), at the network's scale */
    int pass_n[3], pass_h[3], pass_w[3];
} cp_eval3d_debug;
void cp_eval3d_debug_free(cp_eval3d_debug *d);

/* Cellpose's run_3D: cp_run_net over the Z, Y and X planes of x (nchan x Z x
 * Y x X) and their sum in float32 in pass order into *out, 4 x Z x Y x X:
 * dZ (passes 1 + 2), dY (0 + 2), dX (0 + 1), cellprob (0 + 1 + 2). */
int cp_run_3d(const cp_net_desc *net, const cp_volume *x, const cp_eval_params *p, cp_volume **out,
              cp_eval3d_debug *dbg);

/* A volume (img->planes = Z) -> flows 4 x Z x Y x X (dZ, dY, dX, cellprob)
 * at the image's size, as CellposeModel.eval(do_3D=True) before dynamics:
 * norm3D, the resize to trunc(Z*anisotropy*s) x trunc(Y*s) x trunc(X*s)
 * when s or p->anisotropy is not 1, cp_run_3d, the resize back (skipped
 * with p->keep_net_size). dbg may be NULL. */
int cp_eval_flows3d_net(const cp_net_desc *net, const cp_image *img, const cp_eval_params *p, cp_volume **out,
                        cp_eval3d_debug *dbg);
/* Stitch mode's network stage: norm3D, every Z plane at scale s through
 * cp_run_net, resized back: 3 x Z x Y x X (dY, dX, cellprob). */
int cp_eval_flows_planes_net(const cp_net_desc *net, const cp_image *img, const cp_eval_params *p,
                             cp_volume **out);
/* The same two with a loaded model. */
int cp_eval_flows3d(cp_model *m, const cp_image *img, const cp_eval_params *p, cp_volume **out,
                    cp_eval3d_debug *dbg);
int cp_eval_flows_planes(cp_model *m, const cp_image *img, const cp_eval_params *p, cp_volume **out);

/* scipy.ndimage.gaussian_filter on a depth x height x width float32 array in
 * place, sigma per axis (Z, Y, X; 0 skips an axis), truncate 4, mode
 * 'reflect': Cellpose's flow3D_smooth on one flow component. */
int cp_gaussian_filter3d(float *v, int depth, int height, int width, const double sigma[3]);

/* The network of a loaded model as a cp_net_desc (forward: cp_model_forward;
 * forward_style set for CPnet models). */
void cp_model_net_desc(cp_model *m, cp_net_desc *net);

/* The same with a loaded model (cp_model_forward). */
int cp_eval_flows(cp_model *m, const cp_image *img, int plane, const cp_eval_params *p,
                  cp_flows **out, cp_eval_debug *dbg);

#ifdef __cplusplus
}
#endif
#endif
