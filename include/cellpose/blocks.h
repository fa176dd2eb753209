/* libcellpose blockwise 3D segmentation of volumes larger than memory: a
 * plan splits the volume into overlapping blocks, each block is segmented
 * alone (one job per block, memory bounded by the block), and a merge links
 * the labels of neighbouring blocks that are the same cell and writes one
 * label volume and a per-cell table.
 *
 * The work folder WORK holds plan.json and blocks/K/ (labels.npy: the
 * block's labels over its whole box, uint32 (Z, Y, X); block.json: label
 * count and per-label core statistics), each written atomically. */
#ifndef CELLPOSE_BLOCKS_H
#define CELLPOSE_BLOCKS_H

#include <stdint.h>

#include "cellpose/io.h"
#include "cellpose/models.h"
#include "cellpose/segment.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Block core edge (voxels of the input) when none is given. */
#define CP_BLOCKS_DEFAULT_SIZE 256

typedef struct cp_blocks_plan {
    char *input;                /* the volume (absolute path) */
    int z_axis, channel_axis;   /* as for cp_vol_open (CP_AXIS_AUTO when not given) */
    int64_t shape[3];           /* Z, Y, X */
    int channels;
    int64_t block[3];           /* core size along Z, Y, X */
    int64_t overlap[3];         /* added on each side of a core (clipped at the volume's faces) */
    int64_t grid[3];            /* blocks along Z, Y, X; block k = (k / (gy*gx), k / gx % gy, k % gx) */
    int64_t nblocks;
    cp_voxel_size voxel;        /* written to the output; voxel_found 0: none known */
    int voxel_found;
    cp_arch arch;
    char *model_path;           /* the weights the blocks must use */
    char model_sha256[65];
    cp_seg_params params;       /* the segmentation, with the whole volume's
                                   normalisation in params.norm_fixed */
    char sha256[65];            /* of plan.json's text; every block records it */
} cp_blocks_plan;

/* One block: its core (where its labels are the result) and its box (core
 * plus overlap, clipped), as [start, end) per axis Z, Y, X. */
typedef struct cp_block_box {
    int64_t core0[3], core1[3];
    int64_t box0[3], box1[3];
} cp_block_box;

/* Plan the blocks of a volume: block (NULL or 0 entries: CP_BLOCKS_DEFAULT_SIZE,
 * clipped to the volume) and overlap (NULL or negative entries: twice the
 * diameter, in Z divided by p->anisotropy with do_3d; the diameter is
 * p->diameter or 30). With p->normalize, the percentiles are taken once over
 * the whole volume as cp_normalize3d takes them (norm3D's subsample: only
 * every max(1, Z/50)-th plane is read, band by band) and kept in
 * params.norm_fixed, so every block is normalised as the whole volume is. A
 * channel counts as constant (skipped) from those samples. arch is the
 * model's (it decides the network's channels); model_path/sha256 identify it. */
int cp_blocks_plan_create(const char *input, int z_axis, int channel_axis, const int64_t block[3],
                          const int64_t overlap[3], const cp_seg_params *p, cp_arch arch, const char *model_path,
                          const char *model_sha256, cp_blocks_plan **out);
/* Write workdir/plan.json atomically (creating workdir) and set pl->sha256. */
int cp_blocks_plan_write(cp_blocks_plan *pl, const char *workdir);
/* Read workdir/plan.json. */
int cp_blocks_plan_read(const char *workdir, cp_blocks_plan **out);
void cp_blocks_plan_free(cp_blocks_plan *pl);

/* CP_OK when p segments as the plan does (threads and the
 * normalisation values aside), else CP_EINVAL naming the first difference. */
int cp_blocks_check_params(const cp_blocks_plan *pl, const cp_seg_params *p);

/* Core and box of block k (0 <= k < nblocks). */
void cp_blocks_box(const cp_blocks_plan *pl, int64_t k, cp_block_box *b);

/* 1 when workdir/blocks/k is complete and belongs to this plan. */
int cp_blocks_done(const cp_blocks_plan *pl, const char *workdir, int64_t k);

typedef struct cp_block_run {
    int skipped;                /* already done: nothing recomputed */
    uint32_t labels;            /* labels in the block's box */
    int64_t box[3];             /* the box's size */
    double t_read, t_segment, t_write;
} cp_block_run;

/* Segment block k with m and the plan's settings (p_threads: OpenMP threads,
 * 0 = the caller's) and write workdir/blocks/k atomically; a finished block
 * of this plan is skipped. Memory: the box and cp_segment3d's on it. */
int cp_blocks_run(const cp_blocks_plan *pl, const char *workdir, int64_t k, cp_model *m, int threads,
                  cp_block_run *info);
/* Write block k from its labels over the whole box (box size in C order,
 * labels 0..n): the statistics of block.json are computed here. */
int cp_blocks_write_block(const cp_blocks_plan *pl, const char *workdir, int64_t k, const uint32_t *labels);

/* Link threshold: labels of two neighbouring blocks are the same cell when
 * their IoU over the region both boxes cover is at least this. */
#define CP_BLOCKS_LINK_IOU 0.5

typedef struct cp_blocks_merge_stats {
    int64_t labels;             /* labels over all blocks (with a core voxel) */
    int64_t links;              /* label pairs linked across blocks */
    int64_t cells;              /* cells written */
    double seconds;
} cp_blocks_merge_stats;

/* Merge the blocks of workdir into out: an OME-Zarr folder (uint32, chunks
 * the block size, the plan's voxel size) written block core by block core,
 * never holding the volume; or, when out ends in .tif/.tiff, a TIFF
 * assembled in memory. Final labels are 1..M in the order of each cell's
 * first voxel in raster order (Z, Y, X). table (NULL = none) gets one CSV row
 * per cell: label, voxels, z0, y0, x0, z1, y1, x1 (bbox, end exclusive).
 * Missing or foreign blocks: CP_EINVAL, the message listing them. */
int cp_blocks_merge(const char *workdir, const char *out, const char *table, cp_blocks_merge_stats *st);

/* The blocks of workdir not done (cp_blocks_done), ascending; *missing is
 * malloc'd (NULL when none). */
int cp_blocks_missing(const cp_blocks_plan *pl, const char *workdir, int64_t **missing, int64_t *n);

#ifdef __cplusplus
}
#endif
#endif
