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

#ifdef __cplusplus
}
#endif
#endif
