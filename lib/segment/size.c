/* Cellpose 3's automatic diameter (models.SizeModel.eval, v3.1.1.3): the size
 * model's regression on the image's style, then a segmentation at that
 * diameter whose masks' median diameter is the estimate. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/cellpose.h"
#include "core/internal.h"

/* Cellpose's size pass uses its eval defaults, not the caller's settings. */
#define SIZE_PASS_NITER 200
#define SIZE_PASS_MIN_SIZE 15

double cp_size_model_predict(const cp_size_model *sm, const float *style)
{
    double dot = 0.0;
    for (int k = 0; k < sm->nstyle; k++)
        dot += sm->A[k] * (double)(style[k] - sm->smean[k]); /* the difference is float32 */
    double d = exp(dot + log(sm->diam_mean) + (double)sm->ymean);
    if (!(d > 5.0) && !isnan(d)) /* np.maximum(5, d): NaN passes */
        d = 5.0;
    return d == 0.0 || isnan(d) ? sm->diam_mean : d;
}

/* cv2.resize(INTER_NEAREST): source index min(floor(i * (1 / (dst / src))), src - 1). */
static void resize_nearest(const uint32_t *src, int sh, int sw, uint32_t *dst, int dh, int dw)
{
    double fy = 1.0 / ((double)dh / sh), fx = 1.0 / ((double)dw / sw);
    for (int y = 0; y < dh; y++) {
        int sy = (int)floor(y * fy);
        sy = sy < sh - 1 ? sy : sh - 1;
        for (int x = 0; x < dw; x++) {
            int sx = (int)floor(x * fx);
            sx = sx < sw - 1 ? sx : sw - 1;
            dst[(size_t)y * dw + x] = src[(size_t)sy * sw + sx];
        }
    }
}

int cp_size_pass_masks(const float *dP, const float *cellprob, int Lyr, int Lxr, int Ly, int Lx,
                       int v3_label_bug, int threads, uint32_t *masks)
{
    if (Lyr <= 0 || Lxr <= 0 || Ly <= 0 || Lx <= 0)
        return cp_error(CP_EINVAL, "size pass: bad sizes %dx%d -> %dx%d", Lxr, Lyr, Lx, Ly);
    size_t nr = (size_t)Lyr * Lxr, n = (size_t)Ly * Lx;
    memset(masks, 0, n * sizeof *masks);
    cp_dyn_params dp;
    cp_dyn_params_default(&dp, CP_DYN_V3);
    size_t followed = cp_dyn_count_followed(cellprob, nr, dp.cellprob_threshold);
    if (followed == 0)
        return CP_OK;
    float *p = cp_malloc_array(followed, 2 * sizeof *p, "final positions");
    uint32_t *lr = cp_calloc(nr, sizeof *lr, "size pass masks");
    int rc = !p || !lr ? CP_ENOMEM : CP_OK, nl = 0;
    if (!rc)
        rc = cp_dyn_euler_nointerp(dP, cellprob, Lyr, Lxr, dp.cellprob_threshold, SIZE_PASS_NITER, threads, p);
    if (!rc)
        rc = cp_dyn_get_masks(p, cellprob, Lyr, Lxr, dp.cellprob_threshold, dp.max_size_fraction, lr, &nl, NULL);
    if (!rc && nl > 0)
        rc = cp_dyn_remove_bad_flow_masks(lr, Lyr, Lxr, dP, CP_DYN_V3, dp.flow_threshold, threads, NULL);
    /* masks go back to the image's size before fill holes / min size, as in Cellpose */
    if (!rc) {
        if (Lyr == Ly && Lxr == Lx)
            memcpy(masks, lr, n * sizeof *masks);
        else
            resize_nearest(lr, Lyr, Lxr, masks, Ly, Lx);
        rc = cp_dyn_fill_holes_and_remove_small(masks, Ly, Lx, SIZE_PASS_MIN_SIZE, v3_label_bug);
    }
    free(p);
    free(lr);
    if (rc)
        memset(masks, 0, n * sizeof *masks);
    return rc;
}

/* Passes 1 and 2 see the image as Cellpose's Cellpose.eval hands it to
 * SizeModel.eval: channels, normalisation and batch size only. */
static void size_eval_params(const cp_seg_params *p, cp_eval_params *ep)
{
    cp_eval_params_init(ep);
    ep->chan = p->chan;
    ep->chan2 = p->chan2;
    ep->normalize = p->normalize;
    ep->norm_lower = p->norm_lo;
    ep->norm_upper = p->norm_hi;
    ep->batch_size = p->batch_size;
}

int cp_estimate_diameter(cp_model *m, const cp_size_model *sm, const cp_image *img, const cp_seg_params *p,
                         cp_size_estimate *out)
{
    memset(out, 0, sizeof *out);
    const cp_model_info *info = cp_model_get_info(m);
    if (info->arch != CP_ARCH_CPNET)
        return cp_error(CP_EUNSUPPORTED, "Cellpose-SAM has no size model: give a diameter");
    if (info->nstyle != sm->nstyle)
        return cp_error(CP_EINVAL, "size model for styles of %d values, but the network gives %d", sm->nstyle,
                        info->nstyle);
    if (p->threads > 0)
        omp_set_num_threads(p->threads);
    /* pass 1: the style at the network's own scale (diam_mean / diam_labels) */
    cp_eval_params ep;
    size_eval_params(p, &ep);
    ep.diam_mean = p->diam_mean;
    ep.keep_net_size = 1; /* only the style is used */
    cp_flows *f = NULL;
    double t0 = cp_seconds();
    int rc = cp_eval_flows(m, img, 0, &ep, &f, NULL);
    if (rc)
        return rc;
    out->diam_style = cp_size_model_predict(sm, f->style);
    out->style = f->style;
    out->nstyle = f->nstyle;
    f->style = NULL;
    cp_flows_free(f);
    f = NULL;
    if (isinf(out->diam_style)) {
        cp_size_estimate_free(out);
        return cp_error(CP_EINVAL, "size model: the style gives an infinite diameter");
    }
    /* pass 2: segment at rescale sm.diam_mean / diam_style, masks at that resolution */
    size_eval_params(p, &ep);
    ep.diameter = out->diam_style;
    ep.diam_mean = sm->diam_mean;
    ep.keep_net_size = 1; /* Cellpose's resample=False */
    rc = cp_eval_flows(m, img, 0, &ep, &f, NULL);
    out->t_network = cp_seconds() - t0;
    if (rc)
        return rc;
    out->rescale = f->rescale;
    out->net_height = f->height;
    out->net_width = f->width;
    size_t n = (size_t)img->height * img->width, nr = (size_t)f->height * f->width;
    out->masks = cp_malloc_array(n, sizeof *out->masks, "size pass masks");
    if (!out->masks) {
        cp_flows_free(f);
        return CP_ENOMEM;
    }
    t0 = cp_seconds();
    rc = cp_size_pass_masks(f->data, f->data + 2 * nr, f->height, f->width, img->height, img->width,
                            p->v3_label_bug, p->threads, out->masks);
    cp_flows_free(f);
    if (rc) {
        cp_size_estimate_free(out);
        return rc;
    }
    int nm = 0;
    double d = cp_label_diameter(out->masks, n, &nm);
    out->t_dynamics = cp_seconds() - t0;
    out->nmasks = (uint32_t)nm;
    out->fallback = d == 0.0 || isnan(d);
    out->diam = out->fallback ? sm->diam_mean : d;
    return CP_OK;
}

void cp_size_estimate_free(cp_size_estimate *e)
{
    free(e->masks);
    e->masks = NULL;
    free(e->style);
    e->style = NULL;
}
