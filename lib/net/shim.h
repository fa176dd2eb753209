/* The C side of the libtorch shim (lib/net/torch_shim.cpp, the only C++ in
 * the project). No C++ exception crosses these functions.
 *
 * torch_shim.cpp is built as its own shared object, the backend
 * (lib/cellpose/libcellpose_torch.so), the only part linked with libtorch:
 * lib/net/backend.c implements the functions below by loading it on the
 * first call that needs a network, so a process that never runs one never
 * starts libtorch (~0.4 s and 160 MB). */
#ifndef CP_NET_SHIM_H
#define CP_NET_SHIM_H

#include "cellpose/net.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cp_shim cp_shim;

/* Build the network from validated weights. The weights must outlive the shim
 * (CPU tensors alias their data). path is only used in messages. Sets
 * info->precision (and precision_note when it is not opts->precision). */
int cp_shim_create(const cp_weights *w, cp_model_info *info, const cp_model_opts *opts,
                   const char *path, cp_shim **out);
/* The weights for a bf16 model: float tensors of CP_WBF16_MIN elements or
 * more (the matrices) load as CP_W_BF16, rounded as libtorch rounds, and
 * never exist as float32 in memory (ViT-L: 0.6 GB instead of 1.2 + 0.6);
 * the small ones (norms, biases, position tables) stay float32. */
#define CP_WBF16_MIN 65536
int cp_weights_load_bf16(const char *path, size_t bf16_min, cp_weights **out);
int cp_shim_forward(cp_shim *s, const float *in, int n, int ty, int tx, float *out, float *style);
void cp_shim_free(cp_shim *s);

/* Benchmark helper: seconds per run of a k×k conv2d of the given shape
 * (NCHW or channels-last) on `threads` threads (0 = all cores); < 0 on error. */
double cp_shim_time_conv(int n, int cin, int cout, int h, int w, int k, int reps, int channels_last,
                         int threads);
/* Benchmark helper: the matrix-multiply peak as the network's tiles meet it.
 * Each of `threads` threads (0 = all cores) runs its own one-thread Linear
 * layer (m x k input, n x k weight: ATen's GEMM, float32 or with bf16 set
 * bfloat16) at the same time; seconds per round (best of reps), < 0 on error.
 * *cpu: the threads' mean CPU time per Linear in the best round (robust to other
 * processes' load where wall time is not). */
double cp_shim_time_matmul(int m, int k, int n, int reps, int bf16, int threads, double *cpu);

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

/* ---- The backend's interface ---------------------------------------------
 * Its one exported symbol, cp_torch_backend_init, takes what it needs of
 * libcellpose (passed in rather than linked, so the backend serves a program
 * linked with libcellpose.a as well as libcellpose.so, with one copy of the
 * error state) and returns the functions above. Both sides check abi and
 * version before anything else: bump CP_TORCH_ABI when a structure of
 * net.h or these tables change. */
#define CP_TORCH_ABI 5

/* The row pass of SAM's attention (lib/net/attention.c): for m rows of
 * scores s (m x h*w, rows contiguous), s * scale + rh[row][j / w] +
 * rw[row][j % w] (rh m x h, rw m x w), then each row's softmax into out:
 * float (may be s) or, with out_bf16, bfloat16 rounded to nearest even.
 * The same bits on every x86-64 CPU: cp_attn_softmax_isa runs the AVX-512,
 * AVX2 or baseline build (-1 when this CPU lacks it), cp_attn_softmax the
 * best there is. */
enum { CP_ISA_BASE, CP_ISA_AVX2, CP_ISA_AVX512 };
void cp_attn_softmax(float *s, int64_t m, int64_t h, int64_t w, const float *rh, const float *rw, float scale,
                     void *out, int out_bf16);
int cp_attn_softmax_isa(int isa, float *s, int64_t m, int64_t h, int64_t w, const float *rh, const float *rw,
                        float scale, void *out, int out_bf16);

typedef struct cp_torch_host {
    int abi;              /* CP_TORCH_ABI */
    const char *version;  /* CP_VERSION_STRING */
    int (*error)(int code, const char *fmt, ...)
#if defined(__GNUC__)
        __attribute__((format(printf, 2, 3)))
#endif
        ;
    const cp_wtensor *(*weights_get)(const cp_weights *w, const char *name);
    int (*weights_add)(cp_weights *w, const char *name, int ndim, const int64_t *shape, cp_wdtype dtype,
                       const void *data);
    void (*attn_softmax)(float *s, int64_t m, int64_t h, int64_t w, const float *rh, const float *rw,
                         float scale, void *out, int out_bf16);
} cp_torch_host;

typedef struct cp_torch_backend {
    int abi;
    const char *version;
    int (*shim_create)(const cp_weights *, cp_model_info *, const cp_model_opts *, const char *,
                       cp_shim **);
    int (*shim_forward)(cp_shim *, const float *, int, int, int, float *, float *);
    void (*shim_free)(cp_shim *);
    double (*shim_time_conv)(int, int, int, int, int, int, int, int, int);
    int (*trainer_create)(const cp_weights *, const int *, int, int, uint64_t, int, int, double,
                          cp_trainer **);
    int (*trainer_step)(cp_trainer *, const float *, const float *, int, int, int, double, double *);
    int (*trainer_eval)(cp_trainer *, const float *, const float *, int, int, int, double *);
    int (*trainer_export)(const cp_trainer *, float, float, int, cp_weights *);
    int (*trainer_import_optim)(cp_trainer *, const cp_weights *, const char *);
    void (*trainer_free)(cp_trainer *);
    double (*shim_time_matmul)(int, int, int, int, int, int, double *);
} cp_torch_backend;

#define CP_TORCH_BACKEND_FILE "libcellpose_torch.so"
#define CP_TORCH_BACKEND_INIT "cp_torch_backend_init"
typedef const cp_torch_backend *cp_torch_backend_init_fn(const cp_torch_host *host);

#ifdef __cplusplus
}
#endif
#endif
