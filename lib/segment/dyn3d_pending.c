/* TEMPORARY stand-ins until branch dyn3d is merged (see dyn3d_pending.h).
 * Weak, so that the real functions win if both are linked. */
#include "cellpose/core.h"
#include "segment/dyn3d_pending.h"

__attribute__((weak)) int cp_dynamics3d(const float *dP, const float *cellprob, int Lz, int Ly, int Lx,
                                        const cp_dyn_params *params, uint32_t *labels, cp_dyn_stats *stats)
{
    (void)dP, (void)cellprob, (void)Lz, (void)Ly, (void)Lx, (void)params, (void)labels, (void)stats;
    return cp_error(CP_EUNSUPPORTED, "3D dynamics are not in this build yet");
}

__attribute__((weak)) int cp_stitch3d(uint32_t *masks, int Lz, int Ly, int Lx, double stitch_threshold)
{
    (void)masks, (void)Lz, (void)Ly, (void)Lx, (void)stitch_threshold;
    return cp_error(CP_EUNSUPPORTED, "3D stitching is not in this build yet");
}

__attribute__((weak)) int cp_dyn_fill_holes_and_remove_small3d(uint32_t *labels, int Lz, int Ly, int Lx,
                                                                int min_size)
{
    (void)labels, (void)Lz, (void)Ly, (void)Lx, (void)min_size;
    return cp_error(CP_EUNSUPPORTED, "3D fill holes is not in this build yet");
}
