/* libcellpose network: Cellpose weight files and the forward pass (libtorch).
 *
 * A model is loaded from an official Cellpose state_dict file (torch.save zip
 * or legacy container). The architecture (CPnet of Cellpose 3, or the
 * Cellpose-SAM transformer of Cellpose 4) is recognised from the keys. */
#ifndef CELLPOSE_NET_H
#define CELLPOSE_NET_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum cp_arch {
    CP_ARCH_CPNET = 1,  /* Cellpose 3 residual U-Net: 2 input channels, tiles 224 */
    CP_ARCH_CPSAM = 2   /* Cellpose-SAM ViT: 3 input channels, tiles 256 */
} cp_arch;

/* Arithmetic of the network. BF16 is Cellpose 4's default (use_bfloat16):
 * weights and activations in bfloat16, the output converted back to
 * float32; its numbers depend on the CPU's bf16 support (AMX, AVX512-BF16 or
 * emulation on AVX-512), not on the thread count. Where the CPU cannot run
 * bfloat16 convolutions (no AVX-512) the model loads in FP32 instead and its
 * info says so (precision, precision_note). */
typedef enum cp_precision { CP_PRECISION_FP32 = 0, CP_PRECISION_BF16 = 1 } cp_precision;

typedef struct cp_model_info {
    cp_arch arch;
    int nchan;          /* input channels: 2 (CPnet) or 3 (cpsam) */
    int nout;           /* output channels: 3 (dY, dX, cellprob) */
    int bsize;          /* default tile size: 224 or 256 */
    float diam_mean;    /* from the file */
    float diam_labels;  /* from the file */
    int nbase[8];       /* CPnet: channel widths per level, nbase[0] = nchan */
    int nlevels;        /* CPnet: entries used in nbase */
    int embed, depth, heads, patch;  /* cpsam */
    uint64_t nparams;   /* values in the state dict */
    char sha256[65];    /* checksum of the weight file, hex */
    int nstyle;         /* length of the style vector per tile (256 for built-ins) */
    /* Set by cp_model_load (FP32 from cp_model_read_info): the precision
     * asked for, the one the network runs in, and why they differ ("" when
     * they do not), one line without the file name. */
    cp_precision precision_requested;
    cp_precision precision;
    char precision_note[256];
} cp_model_info;

typedef enum cp_device { CP_DEVICE_CPU = 0, CP_DEVICE_CUDA = 1 } cp_device;

typedef struct cp_model_opts {
    cp_device device;   /* CPU unless asked */
    int threads;        /* tiles computed at once, one thread each; 0 = all
                           cores. The caller's OpenMP setting is restored */
    cp_precision precision; /* FP32 unless asked */
} cp_model_opts;

/* "fp32" or "bf16" -> *out; else CP_EINVAL naming `what` (a flag or
 * variable) and the value. */
int cp_precision_parse(const char *s, const char *what, cp_precision *out);
const char *cp_precision_name(cp_precision p);

typedef struct cp_model cp_model;

/* ---- State dicts (torch.save files) ------------------------------------ */

#define CP_WMAX_DIMS 8

/* BF16 (uint16 bfloat16 bits) only in the weights a model loads for bf16
 * inference: its large float tensors, rounded once at load. */
typedef enum cp_wdtype { CP_W_F32 = 0, CP_W_I64 = 1, CP_W_BF16 = 2 } cp_wdtype;

typedef struct cp_wtensor {
    char *name;                     /* key, a leading "module." removed */
    int ndim;                       /* 0 for a scalar */
    int64_t shape[CP_WMAX_DIMS];
    cp_wdtype dtype;                /* float storages load as F32, integer ones as I64 */
    size_t numel;
    void *data;                     /* contiguous C order: float, int64_t (or bf16 bits) */
    /* as stored in the file (views of larger storages keep their layout): */
    int64_t storage_offset;
    int64_t stride[CP_WMAX_DIMS];
    int64_t storage_numel;
} cp_wtensor;

typedef struct cp_weights {
    size_t n;
    cp_wtensor *t;                  /* in file order */
    int legacy;                     /* 1: legacy (pre-1.6) container, 0: zip */
    char sha256[65];                /* checksum of the file, hex ("" if built in memory) */
} cp_weights;

/* Read a torch.save state dict (zip or legacy container). Only tensors
 * rebuilt by torch._utils._rebuild_tensor_v2 from torch.*Storage objects are
 * accepted; the pickle is interpreted, never executed. */
int cp_weights_load(const char *path, cp_weights **out);
/* The same from a buffer; name is used in messages. */
int cp_weights_load_mem(const void *data, size_t n, const char *name, cp_weights **out);
/* Tensor by key, or NULL. */
const cp_wtensor *cp_weights_get(const cp_weights *w, const char *name);
void cp_weights_free(cp_weights *w);
/* An empty dict to fill with cp_weights_add (for training / conversion). */
int cp_weights_new(cp_weights **out);
/* Append a copy of a contiguous tensor. */
int cp_weights_add(cp_weights *w, const char *name, int ndim, const int64_t *shape,
                   cp_wdtype dtype, const void *data);
/* Write in torch.save's zip format (loadable by torch.load), atomically. */
int cp_weights_save(const cp_weights *w, const char *path);

/* Load weights. opts may be NULL: CPU, all cores, or CUDA when the
 * environment says CELLPOSE_DEVICE=cuda (an error if libtorch has no CUDA),
 * float32 or what CELLPOSE_PRECISION (fp32 | bf16) says.
 * Errors name the file and the missing or mismatched key/shape; every key
 * must be present with its shape and no other key may appear.
 * The first load makes libtorch keep freed blocks >= 1 MB for reuse (up to
 * 2 GiB), which removes the page-fault cost of large activations. */
int cp_model_load(const char *path, const cp_model_opts *opts, cp_model **out);
/* The same checks of the weights, and their info, without building the
 * network: libtorch is loaded only by the first cp_model_load (or training). */
int cp_model_read_info(const char *path, cp_model_info *info);
void cp_model_free(cp_model *m);
const cp_model_info *cp_model_get_info(const cp_model *m);

/* Forward pass on a batch of n tiles, in: n × nchan × ty × tx float32
 * (C order), out: n × nout × ty × tx. style (n × nstyle, the L2-normalised
 * style vector of each tile; zeros for cpsam) may be NULL.
 * ty and tx must be multiples of 2^(nlevels-2) (8 for built-in CPnets) or
 * equal bsize (cpsam). On the CPU each tile is computed by one thread from
 * start to end, so the output does not depend on n or the thread count, to
 * the bit. Between CPU types it can differ in the last bits: libtorch's
 * libraries (oneDNN, OpenBLAS) pick their kernels by instruction set. */
int cp_model_forward(cp_model *m, const float *in, int n, int ty, int tx, float *out, float *style);

#ifdef __cplusplus
}
#endif
#endif
