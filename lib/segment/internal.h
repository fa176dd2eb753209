/* Shared by the 2D and 3D segmentation entry points. Not installed. */
#ifndef CP_SEGMENT_INTERNAL_H
#define CP_SEGMENT_INTERNAL_H

#include "cellpose/dynamics.h"
#include "cellpose/preprocess.h"
#include "cellpose/segment.h"

/* The dynamics and network parameters cp_seg_params stands for. */
void cp_seg_dyn_params(const cp_seg_params *p, cp_arch arch, double diam_mean, cp_dyn_params *dp);
void cp_seg_eval_params(const cp_seg_params *p, cp_arch arch, cp_eval_params *ep);
/* Cellpose's remove_edge_masks on D x H x W labels 1..*ncells (renumbered). */
void cp_seg_exclude_edges(uint32_t *m, int D, int H, int W, uint32_t *ncells);

#endif
