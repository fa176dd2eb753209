/* libcellpose training: Cellpose 3's recipe for CPnet (train_seg) in C.
 *
 * Data: image/label pairs, normalised as at inference (channels chan/chan2,
 * per-channel percentiles 1/99), flow targets from cp_masks_to_flows (V3)
 * computed once per image, per-image diameters as Cellpose's
 * utils.diameters (median sqrt(area) / (sqrt(pi)/2), at least 5).
 * Samples: random flip, rotation, scale (1 +- scale_range/2, divided by
 * diameter/diam_mean when rescale is on) and crop to bsize x bsize tiles,
 * flow vectors rotated with the image (random_rotate_and_resize).
 * Loss: MSE(y[:, :2], 5 flows) / 2 + BCEWithLogits(y[:, 2], cellprob).
 * Optimiser: AdamW (default) or SGD momentum 0.9; learning rate warms up
 * linearly over 10 epochs, then stays, then halves every 10 (5) epochs over
 * the last 100 (50) epochs when there are more than 300 (99) epochs.
 *
 * Deterministic: the same seed and thread count give the same losses and the
 * same weight bytes; the random stream of epoch e depends only on (seed, e),
 * so a run resumed from a checkpoint continues exactly as an uninterrupted one. */
#ifndef CELLPOSE_TRAIN_H
#define CELLPOSE_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct cp_model;       /* net.h */
struct cp_size_model;  /* models.h */

/* ---- data --------------------------------------------------------------- */

typedef struct cp_train_sample {
    char *image_path, *mask_path;
    int height, width;
    float *x;          /* 2 x height x width, normalised */
    float *lbl;        /* 3 x height x width: cellprob (0/1), flowY, flowX (unit) */
    double diameter;   /* median label diameter, >= 5 */
    int nmasks;
} cp_train_sample;

typedef struct cp_dataset {
    size_t n;
    cp_train_sample *s;
    size_t skipped;    /* pairs dropped for having fewer than min_masks masks */
} cp_dataset;

typedef struct cp_dataset_opts {
    int chan, chan2;          /* Cellpose 3 channels (0 = gray) */
    const char *mask_filter;  /* NULL: try "_masks" then "_cp_masks" */
    const char *img_filter;   /* stem suffix removed before the mask suffix; NULL: "_img" if present */
    int min_masks;            /* drop images with fewer masks (Cellpose: 5); 0 keeps all */
    int threads;
} cp_dataset_opts;

void cp_dataset_opts_init(cp_dataset_opts *o);
/* Every image in dir with a label file next to it. CP_EIO if dir holds no
 * pair; CP_EFORMAT naming the files if a label image's size differs. */
int cp_dataset_load(const char *dir, const cp_dataset_opts *o, cp_dataset **out);
void cp_dataset_free(cp_dataset *d);

/* Median diameter of the labels (0 if none), as Cellpose's utils.diameters. */
double cp_label_diameter(const uint32_t *labels, size_t n, int *nmasks);

/* ---- augmentation ------------------------------------------------------- */

/* xoshiro256** seeded by splitmix64. */
typedef struct cp_xoshiro {
    uint64_t s[4];
} cp_xoshiro;
void cp_xoshiro_seed(cp_xoshiro *r, uint64_t seed);
uint64_t cp_xoshiro_next(cp_xoshiro *r);
double cp_xoshiro_uniform(cp_xoshiro *r);  /* [0, 1) */

typedef struct cp_augment {
    int flip;          /* mirror x before rotating */
    double theta;      /* rotation, radians */
    double scale;      /* output pixels per input pixel */
    double dx, dy;     /* crop offset */
} cp_augment;

/* Draw the transform for an h x w sample into a bsize tile, as Cellpose:
 * flip with p 0.5, theta uniform in [0, 2 pi), scale uniform in
 * 1 +- scale_range/2 divided by rescale, random crop offset. A negative
 * scale_range -m (m >= 1) instead draws the scale from 1/m..m symmetrically in
 * log: shrinking or enlarging by a factor uniform in [1, m], equal odds. */
void cp_augment_draw(cp_xoshiro *r, int h, int w, int bsize, double scale_range, double rescale,
                     cp_augment *a);
/* Apply it: x (nchan x h x w, bilinear, zeros outside) and lbl (3 x h x w:
 * cellprob nearest, flows bilinear then rotated) to xo (nchan x bsize^2) and
 * lo (3 x bsize^2). lbl/lo may be NULL. */
void cp_augment_apply(const cp_augment *a, const float *x, int nchan, const float *lbl, int h, int w,
                      int bsize, float *xo, float *lo);

/* ---- training ----------------------------------------------------------- */

typedef struct cp_train_progress {
    int epoch, nepochs;      /* 0-based epoch being trained */
    size_t done, total;      /* samples this epoch */
    double loss;             /* running mean of this epoch's loss */
} cp_train_progress;

typedef struct cp_train_opts {
    int nbase[8], nlevels;   /* fresh network: nbase[0] = 2 input channels */
    const char *pretrained;  /* CPnet weight file to fine-tune, or NULL */
    int epochs;              /* default 100 */
    int nimg_per_epoch;      /* > 0: samples per epoch drawn with replacement; 0: every image once */
    int batch_size;          /* default 8 */
    double lr;               /* default 0.005 (AdamW) */
    double weight_decay;     /* default 1e-5 */
    int sgd;                 /* SGD momentum 0.9 instead of AdamW */
    uint64_t seed;           /* default 0 */
    int threads;             /* libtorch threads; 0 = all cores */
    int bsize;               /* tile size, multiple of 2^(levels-2); default 224 */
    double diam_mean;        /* <= 0: the pretrained model's, else 30 */
    int rescale;             /* scale each sample by diam_mean / its diameter (default 1) */
    double scale_range;      /* < 0: 0.5 with rescale, 1.0 without (Cellpose) */
    double scale_max;        /* > 1: scale in 1/scale_max..scale_max instead (see
                              * cp_augment_draw's negative scale_range) */
    int val_every;           /* validation loss every N epochs (default 1) */
    const char *out;         /* model file written at checkpoints and at the end */
    const char *checkpoint;  /* NULL: out + ".ckpt" */
    int checkpoint_every;    /* epochs between checkpoints (default 10; 0 = only at the end) */
    const char *resume;      /* checkpoint to continue from, or NULL */
    const char *log_csv;     /* loss log (rewritten at each epoch), or NULL */
    /* called after every batch; a non-zero return stops training (CP_EINTR) */
    int (*progress)(void *ctx, const cp_train_progress *p);
    void *ctx;
} cp_train_opts;

void cp_train_opts_init(cp_train_opts *o);

/* Learning rate of an epoch (Cellpose's schedule). */
double cp_train_lr(double lr, int epoch, int nepochs);

typedef struct cp_train_result {
    int epochs_done;
    double train_loss, val_loss;  /* last epoch's (val_loss < 0: none) */
    double diam_labels;
    double seconds;               /* this run */
    size_t samples;               /* samples trained on in this run */
} cp_train_result;

/* Train on `train` (and report the loss on `val`, may be NULL). Writes
 * o->out (a Cellpose CPnet state dict), checkpoints and the log atomically. */
int cp_train(const cp_train_opts *o, const cp_dataset *train, const cp_dataset *val, cp_train_result *res);

/* ---- size model (Cellpose 3's train_size) -------------------------------- */

/* Cellpose's recipe: each epoch, every training image (or nimg_per_epoch
 * drawn with replacement) is flipped, rotated, scaled by s in
 * 1 +- scale_range/2 and cropped to bsize x bsize (no resize to diam_mean);
 * the network's style of that one crop is paired with the target
 * y = log(diameter) - log(diam_mean) + log(s), all float32. The ridge
 * regression of y on the styles is then fitted by cp_size_model_fit. */
typedef struct cp_size_train_opts {
    int epochs;              /* default 10 */
    int nimg_per_epoch;      /* > 0: samples per epoch drawn with replacement; 0: every image once */
    int bsize;               /* crop size, a multiple of 2^(levels-2); default 512 */
    double scale_range;      /* default 1.0 */
    double l2;               /* ridge regularisation; default 1.0 */
    int batch_size;          /* crops per network call; does not change the result (default 8) */
    uint64_t seed;           /* default 0 */
    int threads;             /* libtorch threads; 0 = all cores (the result does not depend on it) */
    /* called after every batch; a non-zero return stops (CP_EINTR) */
    int (*progress)(void *ctx, const cp_train_progress *p);
    void *ctx;
} cp_size_train_opts;

void cp_size_train_opts_init(cp_size_train_opts *o);

typedef struct cp_size_train_result {
    size_t samples;          /* training crops */
    double train_corr;       /* correlation of fitted and target y (Cellpose's "train correlation") */
    double test_corr;        /* test crops: target diameter vs the size model's estimate, clipped at
                                5 as Cellpose's "test correlation"; NaN without a test set */
    size_t test_samples;
    double seconds;
} cp_size_train_result;

/* The ridge regression, Cellpose's formulas: smean = mean of the styles
 * (float32, summed in row order), X = styles - smean (float32), ymean =
 * mean(y) (float32, numpy's pairwise sum), A = (X X^T + l2 I)^-1 X (y - ymean),
 * with X X^T, X y and the solve (Cholesky) in double: deterministic, and
 * within rounding of numpy's float64 solve. styles: n x nstyle, y: n.
 * diam_mean goes into the model as given. */
int cp_size_model_fit(const float *styles, const float *y, size_t n, int nstyle, double l2, double diam_mean,
                      struct cp_size_model **out);

/* Train the size model of network m (a CPnet: its style length and
 * diam_mean) on `train`; `test` (may be NULL) gives test_corr with one crop
 * per image. The same seed gives the same model for any thread count and
 * batch size. */
int cp_train_size(struct cp_model *m, const cp_dataset *train, const cp_dataset *test,
                  const cp_size_train_opts *o, struct cp_size_model **out, cp_size_train_result *res);

#ifdef __cplusplus
}
#endif
#endif
