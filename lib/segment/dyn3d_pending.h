/* TEMPORARY: the 3D dynamics API of branch dyn3d (include/cellpose/dynamics.h
 * there), declared here until that branch is merged; dyn3d_pending.c fails
 * every call. Both files go when dyn3d lands. */
#ifndef CP_DYN3D_PENDING_H
#define CP_DYN3D_PENDING_H
#include <stdint.h>
#include "cellpose/dynamics.h"

int cp_dynamics3d(const float *dP, const float *cellprob, int Lz, int Ly, int Lx, const cp_dyn_params *params,
                  uint32_t *labels, cp_dyn_stats *stats);
int cp_stitch3d(uint32_t *masks, int Lz, int Ly, int Lx, double stitch_threshold);
int cp_dyn_fill_holes_and_remove_small3d(uint32_t *labels, int Lz, int Ly, int Lx, int min_size);
#endif
