/* cp_eval_flows with a loaded model: the pipeline over cp_model_forward. */
#include "cellpose/core.h"
#include "cellpose/net.h"
#include "cellpose/preprocess.h"
#include "core/internal.h"

static int model_forward(void *ctx, const float *in, int n, int ty, int tx, float *out)
{
    return cp_model_forward((cp_model *)ctx, in, n, ty, tx, out, NULL);
}

static int model_forward_style(void *ctx, const float *in, int n, int ty, int tx, float *out, float *style)
{
    return cp_model_forward((cp_model *)ctx, in, n, ty, tx, out, style);
}

void cp_model_net_desc(cp_model *m, cp_net_desc *net)
{
    const cp_model_info *info = cp_model_get_info(m);
    *net = (cp_net_desc){
        .arch = info->arch,
        .nchan = info->nchan,
        .nout = info->nout,
        .bsize = info->bsize,
        .diam_mean = info->diam_mean,
        .diam_labels = info->diam_labels,
        .forward = model_forward,
        .ctx = m,
        /* cpsam gives zeros: no style to report */
        .forward_style = info->arch == CP_ARCH_CPNET && info->nstyle > 0 ? model_forward_style : NULL,
        .nstyle = info->nstyle,
    };
}

int cp_eval_flows(cp_model *m, const cp_image *img, int plane, const cp_eval_params *p,
                  cp_flows **out, cp_eval_debug *dbg)
{
    *out = NULL;
    if (!m)
        return cp_error(CP_EINVAL, "eval: no model");
    cp_net_desc net;
    cp_model_net_desc(m, &net);
    return cp_eval_flows_net(&net, img, plane, p, out, dbg);
}

int cp_eval_flows3d(cp_model *m, const cp_image *img, const cp_eval_params *p, cp_volume **out,
                    cp_eval3d_debug *dbg)
{
    *out = NULL;
    if (!m)
        return cp_error(CP_EINVAL, "eval: no model");
    cp_net_desc net;
    cp_model_net_desc(m, &net);
    net.forward_style = NULL; /* run_3D's style is not used */
    return cp_eval_flows3d_net(&net, img, p, out, dbg);
}

int cp_eval_flows_planes(cp_model *m, const cp_image *img, const cp_eval_params *p, cp_volume **out)
{
    *out = NULL;
    if (!m)
        return cp_error(CP_EINVAL, "eval: no model");
    cp_net_desc net;
    cp_model_net_desc(m, &net);
    net.forward_style = NULL;
    return cp_eval_flows_planes_net(&net, img, p, out);
}
