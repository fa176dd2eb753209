/* The C side of the libtorch shim (lib/net/torch_shim.cpp, the only C++ in
 * the project). No C++ exception crosses these functions. */
#ifndef CP_NET_SHIM_H
#define CP_NET_SHIM_H

#include "cellpose/net.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cp_shim cp_shim;

/* Build the network from validated weights. The weights must outlive the shim
 * (CPU tensors alias their data). path is only used in messages. */
int cp_shim_create(const cp_weights *w, const cp_model_info *info, const cp_model_opts *opts,
                   const char *path, cp_shim **out);
int cp_shim_forward(cp_shim *s, const float *in, int n, int ty, int tx, float *out, float *style);
void cp_shim_free(cp_shim *s);

/* Benchmark helper: seconds per run of a k×k conv2d of the given shape
 * (NCHW or channels-last) on `threads` threads (0 = all cores); < 0 on error. */
double cp_shim_time_conv(int n, int cin, int cout, int h, int w, int k, int reps, int channels_last,
                         int threads);

/* ---- Training (cptrain) --------------------------------------------------
 * A CPnet with its own tensors: from `init` (fine-tune; keys and shapes must
 * be CPnet's for nbase/nout) or, with init NULL, PyTorch's default
 * initialisation drawn from `seed`. Optimiser: AdamW (betas 0.9/0.999, eps
 * 1e-8) or, with sgd, SGD with momentum 0.9; weight_decay as PyTorch's. */
typedef struct cp_trainer cp_trainer;

int cp_trainer_create(const cp_weights *init, const int *nbase, int nlevels, int nout, uint64_t seed,
                      int threads, int sgd, double weight_decay, cp_trainer **out);
/* One optimiser step on n tiles: x n x nchan x h x w, lbl n x 3 x h x w
 * (cellprob, flowY, flowX unit flows). BN uses batch statistics and updates
 * its running statistics (momentum 0.05). *loss is the batch loss before the step. */
int cp_trainer_step(cp_trainer *t, const float *x, const float *lbl, int n, int h, int w, double lr,
                    double *loss);
/* The loss with running statistics, no update. */
int cp_trainer_eval(cp_trainer *t, const float *x, const float *lbl, int n, int h, int w, double *loss);
/* Append the state dict (diam_mean, diam_labels, then CPnet's keys in
 * PyTorch's order) to w; with_optim adds optim.step and optim.m1.* / m2.*. */
int cp_trainer_export(const cp_trainer *t, float diam_mean, float diam_labels, int with_optim,
                      cp_weights *w);
/* Restore the optimiser state written by cp_trainer_export(with_optim). */
int cp_trainer_import_optim(cp_trainer *t, const cp_weights *w, const char *path);
void cp_trainer_free(cp_trainer *t);

#ifdef __cplusplus
}
#endif
#endif
