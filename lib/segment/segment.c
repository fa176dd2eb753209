/* One image to masks: the network stage (preprocess + net) then dynamics,
 * with the variant and defaults Cellpose pairs with each network. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/cellpose.h"
#include "core/internal.h"
#include "segment/internal.h"

/* Cellpose's CLI gives CPnet models a diameter of 30 when none is given. */
#define CP_V3_DEFAULT_DIAMETER 30.0

/* The defaults of the two stages, so that each is written once. */
void cp_seg_params_default(cp_seg_params *p)
{
    cp_eval_params e;
    cp_dyn_params d;
    cp_eval_params_init(&e);
    cp_dyn_params_default(&d, CP_DYN_V3);
    memset(p, 0, sizeof *p);
    p->normalize = e.normalize;
    p->norm_lo = (float)e.norm_lower;
    p->norm_hi = (float)e.norm_upper;
    p->tile_overlap = (float)e.tile_overlap;
    p->batch_size = e.batch_size;
    p->cellprob_threshold = d.cellprob_threshold;
    p->flow_threshold = (float)d.flow_threshold;
    p->min_size = d.min_size;
    p->max_size_fraction = (float)d.max_size_fraction;
    p->anisotropy = 1.0;
}

static double effective_diameter(const cp_seg_params *p, cp_arch arch)
{
    if (p->diameter > 0)
        return p->diameter;
    return arch == CP_ARCH_CPNET ? CP_V3_DEFAULT_DIAMETER : 0.0;
}

/* Drop masks touching a face of the D x H x W labels (Cellpose's
 * remove_edge_masks: in 3D the Z faces count too); keep the others' order. */
void cp_seg_exclude_edges(uint32_t *m, int D, int H, int W, uint32_t *ncells)
{
    uint32_t n = *ncells;
    uint32_t *map = calloc((size_t)n + 1, sizeof *map);
    if (!map)
        return;
    size_t hw = (size_t)H * W;
    for (int z = 0; z < D; z++) {
        const uint32_t *pl = m + z * hw;
        int face = D > 1 && (z == 0 || z == D - 1);
        for (size_t i = 0; face && i < hw; i++)
            map[pl[i]] = 1;
        for (int x = 0; x < W; x++) {
            map[pl[x]] = 1;
            map[pl[(size_t)(H - 1) * W + x]] = 1;
        }
        for (int y = 0; y < H; y++) {
            map[pl[(size_t)y * W]] = 1;
            map[pl[(size_t)y * W + W - 1]] = 1;
        }
    }
    uint32_t k = 0;
    for (uint32_t l = 1; l <= n; l++)
        map[l] = map[l] ? 0 : ++k;
    map[0] = 0;
    for (size_t i = 0; i < (size_t)D * hw; i++)
        m[i] = map[m[i]];
    *ncells = k;
    free(map);
}

void cp_seg_dyn_params(const cp_seg_params *p, cp_arch arch, double diam_mean, cp_dyn_params *dp)
{
    cp_dyn_variant v = p->dynamics ? (cp_dyn_variant)p->dynamics : arch == CP_ARCH_CPSAM ? CP_DYN_V4 : CP_DYN_V3;
    cp_dyn_params_default(dp, v);
    dp->niter = p->niter;
    dp->diameter = effective_diameter(p, arch);
    dp->diam_mean = diam_mean;
    dp->cellprob_threshold = p->cellprob_threshold;
    dp->flow_threshold = p->flow_threshold;
    dp->min_size = p->min_size;
    dp->max_size_fraction = p->max_size_fraction;
    dp->v3_label_bug = p->v3_label_bug;
    dp->threads = p->threads;
}

void cp_seg_eval_params(const cp_seg_params *p, cp_arch arch, cp_eval_params *ep)
{
    cp_eval_params_init(ep);
    ep->chan = p->chan;
    ep->chan2 = p->chan2;
    ep->diameter = effective_diameter(p, arch);
    ep->normalize = p->normalize;
    ep->norm_lower = p->norm_lo;
    ep->norm_upper = p->norm_hi;
    ep->tile_overlap = p->tile_overlap;
    ep->batch_size = p->batch_size;
    ep->augment = p->augment;
    ep->diam_mean = p->diam_mean;
    ep->anisotropy = p->anisotropy > 0 ? p->anisotropy : 1.0;
    ep->norm_fixed = p->norm_fixed;
}

static int run_dynamics(const float *dP, const float *cellprob, int H, int W, cp_arch arch, double diam_mean,
                        const cp_seg_params *p, cp_seg_result *out)
{
    cp_dyn_params dp;
    cp_seg_dyn_params(p, arch, diam_mean, &dp);
    out->masks = cp_malloc_array((size_t)H * W, sizeof *out->masks, "masks");
    if (!out->masks)
        return CP_ENOMEM;
    cp_dyn_stats st;
    double t0 = cp_seconds();
    int rc = cp_dynamics(dP, cellprob, H, W, &dp, out->masks, &st);
    out->t_dynamics = cp_seconds() - t0;
    if (rc != CP_OK)
        return rc;
    out->ncells = (uint32_t)st.cells;
    out->niter = st.niter;
    if (p->exclude_on_edges)
        cp_seg_exclude_edges(out->masks, 1, H, W, &out->ncells);
    return CP_OK;
}

int cp_segment(cp_model *m, const cp_image *img, const cp_seg_params *p, cp_seg_result *out)
{
    memset(out, 0, sizeof *out);
    out->planes = 1;
    out->flow_channels = 3;
    if (p->threads > 0)
        omp_set_num_threads(p->threads);
    const cp_model_info *info = cp_model_get_info(m);
    cp_eval_params ep;
    cp_seg_eval_params(p, info->arch, &ep);
    cp_flows *f;
    double t0 = cp_seconds();
    int rc = cp_eval_flows(m, img, 0, &ep, &f, NULL);
    out->t_network = cp_seconds() - t0;
    if (rc != CP_OK)
        return rc;
    out->height = f->height;
    out->width = f->width;
    out->flows = f->data; /* 3 x H x W: dY, dX, cellprob */
    f->data = NULL;
    cp_flows_free(f);
    double diam_mean = p->diam_mean > 0 ? p->diam_mean : info->diam_mean;
    size_t n = (size_t)out->height * out->width;
    rc = run_dynamics(out->flows, out->flows + 2 * n, out->height, out->width, info->arch, diam_mean, p, out);
    if (rc != CP_OK)
        cp_seg_result_free(out);
    return rc;
}

int cp_segment_from_flows(const float *flows, int height, int width, cp_arch arch, float diam_mean,
                          const cp_seg_params *p, cp_seg_result *out)
{
    memset(out, 0, sizeof *out);
    out->planes = 1;
    out->flow_channels = 3;
    if (p->threads > 0)
        omp_set_num_threads(p->threads);
    size_t n = (size_t)height * width;
    out->height = height;
    out->width = width;
    out->flows = cp_malloc_array(3 * n, sizeof *out->flows, "flows");
    if (!out->flows)
        return CP_ENOMEM;
    memcpy(out->flows, flows, 3 * n * sizeof *flows);
    double dm = p->diam_mean > 0 ? p->diam_mean : diam_mean > 0 ? diam_mean : 30.0;
    int rc = run_dynamics(out->flows, out->flows + 2 * n, height, width, arch, dm, p, out);
    if (rc != CP_OK)
        cp_seg_result_free(out);
    return rc;
}

void cp_seg_result_free(cp_seg_result *r)
{
    free(r->masks);
    free(r->flows);
    memset(r, 0, sizeof *r);
}
