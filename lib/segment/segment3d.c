/* One volume to 3D masks: Cellpose's do_3D (three network passes, 3D
 * dynamics) or its stitch mode (2D per plane, then stitch3D). */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/cellpose.h"
#include "core/internal.h"
#include "segment/internal.h"

static uint32_t max_label(const uint32_t *m, size_t n)
{
    uint32_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (m[i] > k)
            k = m[i];
    return k;
}

/* Stitch mode's masks: the 2D dynamics per plane with the flow QC and no
 * min_size (planes are only hole-filled and renumbered), stitch3D, then fill
 * holes and min_size in 3D. flows: dY, dX, cellprob, each Z x H x W. */
static int stitch_masks(const float *flows, int Z, int H, int W, const cp_dyn_params *dp0, double threshold,
                        int min_size, uint32_t *masks, int *niter)
{
    size_t hw = (size_t)H * W, vn = (size_t)Z * hw;
    cp_dyn_params dp = *dp0;
    dp.min_size = -1;
    float *d2 = cp_malloc_array(hw, 2 * sizeof(float), "plane flows");
    if (!d2)
        return CP_ENOMEM;
    int rc = CP_OK;
    for (int z = 0; z < Z && rc == CP_OK; z++) {
        memcpy(d2, flows + z * hw, hw * sizeof(float));
        memcpy(d2 + hw, flows + vn + z * hw, hw * sizeof(float));
        cp_dyn_stats st;
        rc = cp_dynamics(d2, flows + 2 * vn + z * hw, H, W, &dp, masks + z * hw, &st);
        *niter = st.niter;
    }
    free(d2);
    if (rc == CP_OK)
        rc = cp_stitch3d(masks, Z, H, W, threshold);
    if (rc == CP_OK)
        rc = cp_dyn_fill_holes_and_remove_small3d(masks, Z, H, W, min_size);
    return rc;
}

/* out->flows (flow_channels x planes x H x W) -> out->masks. */
static int volume_masks(cp_arch arch, double diam_mean, const cp_seg_params *p, cp_seg_result *out)
{
    int Z = out->planes, H = out->height, W = out->width;
    size_t vn = (size_t)Z * H * W;
    cp_dyn_params dp;
    cp_seg_dyn_params(p, arch, diam_mean, &dp);
    out->masks = cp_malloc_array(vn, sizeof *out->masks, "masks");
    if (!out->masks)
        return CP_ENOMEM;
    double t0 = cp_seconds();
    int rc;
    if (out->flow_channels == 4) {
        cp_dyn_stats st;
        rc = cp_dynamics3d(out->flows, out->flows + 3 * vn, Z, H, W, &dp, out->masks, &st);
        out->niter = st.niter;
    } else {
        rc = stitch_masks(out->flows, Z, H, W, &dp, p->stitch_threshold, p->min_size, out->masks, &out->niter);
    }
    out->t_dynamics = cp_seconds() - t0;
    if (rc != CP_OK)
        return rc;
    out->ncells = max_label(out->masks, vn);
    if (p->exclude_on_edges)
        cp_seg_exclude_edges(out->masks, Z, H, W, &out->ncells);
    return CP_OK;
}

int cp_segment3d(cp_model *m, const cp_image *vol, const cp_seg_params *p, cp_seg_result *out)
{
    memset(out, 0, sizeof *out);
    if (!m || !vol)
        return cp_error(CP_EINVAL, "segment 3D: no model or volume");
    if (!p->do_3d && vol->planes == 1)
        return cp_segment(m, vol, p, out);
    if (!p->do_3d && !(p->stitch_threshold > 0))
        return cp_error(CP_EINVAL, "%d planes: a volume needs do_3D or a stitch threshold", vol->planes);
    if (p->threads > 0)
        omp_set_num_threads(p->threads);
    const cp_model_info *info = cp_model_get_info(m);
    cp_eval_params ep;
    cp_seg_eval_params(p, info->arch, &ep);
    cp_volume *f = NULL;
    double t0 = cp_seconds();
    int rc = p->do_3d ? cp_eval_flows3d(m, vol, &ep, &f, NULL) : cp_eval_flows_planes(m, vol, &ep, &f);
    size_t vn = (size_t)vol->planes * vol->height * vol->width;
    int smooth = p->flow3d_smooth[0] > 0 || p->flow3d_smooth[1] > 0 || p->flow3d_smooth[2] > 0;
    for (int c = 0; rc == CP_OK && p->do_3d && smooth && c < 3; c++)
        rc = cp_gaussian_filter3d(f->data + c * vn, f->depth, f->height, f->width, p->flow3d_smooth);
    out->t_network = cp_seconds() - t0;
    if (rc != CP_OK) {
        cp_volume_free(f);
        return rc;
    }
    out->planes = f->depth;
    out->height = f->height;
    out->width = f->width;
    out->flow_channels = f->channels;
    out->flows = f->data;
    f->data = NULL;
    cp_volume_free(f);
    double diam_mean = p->diam_mean > 0 ? p->diam_mean : info->diam_mean;
    rc = volume_masks(info->arch, diam_mean, p, out);
    if (rc != CP_OK)
        cp_seg_result_free(out);
    return rc;
}

int cp_segment3d_from_flows(const float *flows, int channels, int planes, int height, int width, cp_arch arch,
                            float diam_mean, const cp_seg_params *p, cp_seg_result *out)
{
    memset(out, 0, sizeof *out);
    if ((channels != 3 && channels != 4) || planes < 1 || height < 1 || width < 1)
        return cp_error(CP_EINVAL, "flows of shape (%d, %d, %d, %d): need 3 (dY, dX, cellprob) or 4 (dZ, dY, dX, "
                                   "cellprob) channels",
                        channels, planes, height, width);
    if (channels == 3 && planes == 1)
        return cp_segment_from_flows(flows, height, width, arch, diam_mean, p, out);
    if (channels == 3 && !(p->stitch_threshold > 0))
        return cp_error(CP_EINVAL, "flows of %d planes without dZ: stitching them needs a stitch threshold", planes);
    if (p->threads > 0)
        omp_set_num_threads(p->threads);
    size_t n;
    if (cp_mul_overflow((size_t)channels * planes, (size_t)height * width, &n))
        return cp_error(CP_ELIMIT, "flows too large");
    out->planes = planes;
    out->height = height;
    out->width = width;
    out->flow_channels = channels;
    if (!(out->flows = cp_malloc_array(n, sizeof *out->flows, "flows")))
        return CP_ENOMEM;
    memcpy(out->flows, flows, n * sizeof *flows);
    double dm = p->diam_mean > 0 ? p->diam_mean : diam_mean > 0 ? diam_mean : 30.0;
    int rc = volume_masks(arch, dm, p, out);
    if (rc != CP_OK)
        cp_seg_result_free(out);
    return rc;
}
