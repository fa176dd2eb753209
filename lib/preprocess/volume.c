/* Volumes through the network as Cellpose's eval does it in 3D: norm3D, the
 * volume resize, run_3D's three orthogonal passes summed, the resize back,
 * and flow3D_smooth (scipy's gaussian_filter); stitch mode's per-plane run. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/core.h"
#include "cellpose/preprocess.h"
#include "core/internal.h"

int cp_volume_create(cp_volume **out, int channels, int depth, int height, int width)
{
    *out = NULL;
    if (channels <= 0 || depth <= 0 || height <= 0 || width <= 0)
        return cp_error(CP_EINVAL, "volume: bad size %d x %d x %d x %d", channels, depth, height, width);
    size_t n;
    if (cp_mul_overflow((size_t)channels * (size_t)depth, (size_t)height * (size_t)width, &n) ||
        n > cp_get_max_pixels())
        return cp_error(CP_ELIMIT, "volume: %d x %d x %d x %d samples exceed the limit", channels, depth, height,
                        width);
    cp_volume *v = cp_calloc(1, sizeof *v, "volume");
    if (!v)
        return CP_ENOMEM;
    if (!(v->data = cp_calloc(n, sizeof(float), "volume"))) {
        free(v);
        return CP_ENOMEM;
    }
    v->channels = channels;
    v->depth = depth;
    v->height = height;
    v->width = width;
    *out = v;
    return CP_OK;
}

void cp_volume_free(cp_volume *v)
{
    if (!v)
        return;
    free(v->data);
    free(v);
}

void cp_eval3d_debug_free(cp_eval3d_debug *d)
{
    if (!d)
        return;
    cp_volume_free(d->net_in);
    cp_volume_free(d->net_in_resized);
    d->net_in = d->net_in_resized = NULL;
    for (int k = 0; k < 3; k++) {
        free(d->pass[k]);
        d->pass[k] = NULL;
    }
}

static int clone_volume(const cp_volume *v, cp_volume **out)
{
    int rc = cp_volume_create(out, v->channels, v->depth, v->height, v->width);
    if (rc == CP_OK)
        memcpy((*out)->data, v->data, (size_t)v->channels * v->depth * v->height * v->width * sizeof(float));
    return rc;
}

int cp_volume_net_input(const cp_image *img, cp_arch arch, int chan, int chan2, int normalize, double lower,
                        double upper, cp_volume **out)
{
    *out = NULL;
    int nout = arch == CP_ARCH_CPSAM ? 3 : 2, Z = img->planes;
    size_t np = (size_t)img->height * img->width;
    cp_volume *v;
    int rc = cp_volume_create(&v, nout, Z, img->height, img->width);
    for (int z = 0; z < Z && rc == CP_OK; z++) {
        cp_planes *p;
        if ((rc = cp_select_channels(img, z, arch, chan, chan2, &p)))
            break;
        for (int c = 0; c < nout; c++)
            memcpy(v->data + ((size_t)c * Z + z) * np, p->data + c * np, np * sizeof(float));
        cp_planes_free(p);
    }
    if (rc == CP_OK && normalize)
        rc = cp_normalize3d(v, arch, lower, upper);
    if (rc) {
        if (v)
            cp_volume_free(v);
        return rc;
    }
    *out = v;
    return CP_OK;
}

/* One resize of n images of C channels (src planes c-strided by `sstride`
 * floats between channels, image i at i * simg) to oh x ow, written the same
 * way into dst. */
static int resize_images(const float *src, int n, int C, int ih, int iw, size_t simg, size_t sstride, float *dst,
                         int oh, int ow, size_t dimg, size_t dstride)
{
    cp_planes *in = NULL, *o = NULL;
    int rc = cp_planes_create(&in, C, ih, iw);
    size_t isz = (size_t)ih * iw, osz = (size_t)oh * ow;
    for (int i = 0; i < n && rc == CP_OK; i++) {
        for (int c = 0; c < C; c++)
            memcpy(in->data + c * isz, src + i * simg + c * sstride, isz * sizeof(float));
        if ((rc = cp_resize_linear(in, oh, ow, &o)))
            break;
        for (int c = 0; c < C; c++)
            memcpy(dst + i * dimg + c * dstride, o->data + c * osz, osz * sizeof(float));
        cp_planes_free(o);
        o = NULL;
    }
    cp_planes_free(in);
    return rc;
}

int cp_resize_volume(const cp_volume *in, int depth, int height, int width, cp_volume **out)
{
    *out = NULL;
    int C = in->channels, Z = in->depth;
    cp_volume *a = NULL, *b = NULL;
    int rc;
    if (height != in->height || width != in->width) {
        /* every Z plane (all channels at once, as cv2.resize on Y x X x C) */
        if ((rc = cp_volume_create(&a, C, Z, height, width)))
            return rc;
        size_t isz = (size_t)in->height * in->width, osz = (size_t)height * width;
        rc = resize_images(in->data, Z, C, in->height, in->width, isz, (size_t)Z * isz, a->data, height, width,
                           osz, (size_t)Z * osz);
    } else {
        rc = clone_volume(in, &a);
    }
    if (rc == CP_OK && depth != Z) {
        /* then every Y slice, a Z x X image */
        if ((rc = cp_volume_create(&b, C, depth, height, width)) == CP_OK) {
            float *sl = cp_malloc_array((size_t)C * Z * width, sizeof(float), "slice");
            float *so = cp_malloc_array((size_t)C * depth * width, sizeof(float), "slice");
            if (!sl || !so)
                rc = CP_ENOMEM;
            for (int y = 0; y < height && rc == CP_OK; y++) {
                for (int c = 0; c < C; c++)
                    for (int z = 0; z < Z; z++)
                        memcpy(sl + ((size_t)c * Z + z) * width,
                               a->data + (((size_t)c * Z + z) * height + y) * width, (size_t)width * sizeof(float));
                if ((rc = resize_images(sl, 1, C, Z, width, 0, (size_t)Z * width, so, depth, width, 0,
                                        (size_t)depth * width)))
                    break;
                for (int c = 0; c < C; c++)
                    for (int z = 0; z < depth; z++)
                        memcpy(b->data + (((size_t)c * depth + z) * height + y) * width,
                               so + ((size_t)c * depth + z) * width, (size_t)width * sizeof(float));
            }
            free(sl);
            free(so);
        }
        cp_volume_free(a);
        a = b;
        b = NULL;
    }
    if (rc) {
        cp_volume_free(a);
        return rc;
    }
    *out = a;
    return CP_OK;
}

/* The planes of one orientation as a stack n x C x h x w: pass 0 the Z planes
 * (Y x X), pass 1 the Y planes (Z x X), pass 2 the X planes (Z x Y). */
static void gather_pass(const cp_volume *v, int pass, float *x)
{
    int C = v->channels, Z = v->depth, Y = v->height, X = v->width;
    size_t vn = (size_t)Z * Y * X;
    for (int c = 0; c < C; c++) {
        const float *s = v->data + c * vn;
        for (int z = 0; z < Z; z++)
            for (int y = 0; y < Y; y++) {
                const float *row = s + ((size_t)z * Y + y) * X;
                if (pass == 0)
                    memcpy(x + (((size_t)z * C + c) * Y + y) * X, row, (size_t)X * sizeof(float));
                else if (pass == 1)
                    memcpy(x + (((size_t)y * C + c) * Z + z) * X, row, (size_t)X * sizeof(float));
                else
                    for (int xx = 0; xx < X; xx++)
                        x[(((size_t)xx * C + c) * Z + z) * Y + y] = row[xx];
            }
    }
}

/* yf += one pass's output (n x 3 x h x w), as run_3D adds it: the cellprob
 * to channel 3, the two flows to the channels of the planes' axes. */
static void add_pass(cp_volume *yf, int pass, const float *o)
{
    int Z = yf->depth, Y = yf->height, X = yf->width;
    size_t vn = (size_t)Z * Y * X;
    /* yf channel of the pass's flow 0 and flow 1: dZ 0, dY 1, dX 2 */
    static const int dst[3][2] = {{1, 2}, {0, 2}, {0, 1}};
    for (int z = 0; z < Z; z++)
        for (int y = 0; y < Y; y++)
            for (int x = 0; x < X; x++) {
                size_t i = ((size_t)z * Y + y) * X + x, k;
                size_t hw;
                if (pass == 0) {
                    hw = (size_t)Y * X;
                    k = (size_t)z * 3 * hw + (size_t)y * X + x;
                } else if (pass == 1) {
                    hw = (size_t)Z * X;
                    k = (size_t)y * 3 * hw + (size_t)z * X + x;
                } else {
                    hw = (size_t)Z * Y;
                    k = (size_t)x * 3 * hw + (size_t)z * Y + y;
                }
                yf->data[3 * vn + i] += o[k + 2 * hw];
                yf->data[dst[pass][0] * vn + i] += o[k];
                yf->data[dst[pass][1] * vn + i] += o[k + hw];
            }
}

int cp_run_3d(const cp_net_desc *net, const cp_volume *x, const cp_eval_params *p, cp_volume **out,
              cp_eval3d_debug *dbg)
{
    *out = NULL;
    if (!net || x->channels != net->nchan)
        return cp_error(CP_EINVAL, "run_3D: the volume has %d channels, the network takes %d", x->channels,
                        net ? net->nchan : 0);
    int Z = x->depth, Y = x->height, X = x->width;
    const int n[3] = {Z, Y, X}, h[3] = {Y, Z, Z}, w[3] = {X, X, Y};
    cp_volume *yf;
    int rc = cp_volume_create(&yf, 4, Z, Y, X);
    if (rc)
        return rc;
    size_t vn = (size_t)Z * Y * X;
    float *in = cp_malloc_array(vn, (size_t)x->channels * sizeof(float), "pass input");
    float *o = cp_malloc_array(vn, 3 * sizeof(float), "pass output");
    if (!in || !o)
        rc = CP_ENOMEM;
    for (int k = 0; k < 3 && rc == CP_OK; k++) {
        gather_pass(x, k, in);
        if ((rc = cp_run_net(net, in, n[k], h[k], w[k], p, o)))
            break;
        add_pass(yf, k, o);
        if (dbg && dbg->keep_stages) {
            if (!(dbg->pass[k] = cp_malloc_array(vn, 3 * sizeof(float), "debug pass"))) {
                rc = CP_ENOMEM;
                break;
            }
            memcpy(dbg->pass[k], o, vn * 3 * sizeof(float));
            dbg->pass_n[k] = n[k];
            dbg->pass_h[k] = h[k];
            dbg->pass_w[k] = w[k];
        }
    }
    free(in);
    free(o);
    if (rc) {
        cp_volume_free(yf);
        return rc;
    }
    *out = yf;
    return CP_OK;
}

/* The network input at the network's scale: norm3D, then the resize of
 * step 3 when s or the anisotropy is not 1 (depth trunc(Lz*aniso*s)). */
static int net_input(const cp_net_desc *net, const cp_image *img, const cp_eval_params *p, double aniso,
                     int planes_only, double *s_out, cp_volume **out, cp_eval3d_debug *dbg)
{
    *out = NULL;
    if (img->planes < 1)
        return cp_error(CP_EINVAL, "eval 3D: no planes");
    if (!(p->diameter == p->diameter) || isinf(p->diameter))
        return cp_error(CP_EINVAL, "eval: diameter is not a finite number");
    if (!(aniso > 0) || isinf(aniso))
        return cp_error(CP_EINVAL, "eval 3D: anisotropy %g must be a positive number", aniso);
    double dmean = p->diam_mean > 0 ? p->diam_mean : net->diam_mean;
    double s = cp_rescale(p->diameter, dmean, net->diam_labels, net->arch);
    if (!(s > 0) || isinf(s))
        return cp_error(CP_EINVAL, "eval: bad rescale factor %g", s);
    *s_out = s;
    cp_volume *x;
    int fixed = p->normalize && p->norm_fixed.channels > 0;
    int rc = cp_volume_net_input(img, net->arch, p->chan, p->chan2, p->normalize && !fixed, p->norm_lower,
                                 p->norm_upper, &x);
    if (rc == CP_OK && fixed && (rc = cp_normalize3d_fixed(x, net->arch, &p->norm_fixed)))
        cp_volume_free(x);
    if (rc)
        return rc;
    if (dbg && dbg->keep_stages && (rc = clone_volume(x, &dbg->net_in))) {
        cp_volume_free(x);
        return rc;
    }
    if (s != 1.0 || aniso != 1.0) {
        /* Python: int(Lz * anisotropy * rescale), left to right in double;
         * stitch mode resizes each plane and keeps the planes */
        double dz = planes_only ? img->planes : (double)img->planes * aniso * s;
        int Lz = dz < 2147483647.0 ? (int)dz : -1;
        int Ly = cp_rescaled_len(img->height, s), Lx = cp_rescaled_len(img->width, s);
        if (Lz < 1 || Ly < 1 || Lx < 1) {
            cp_volume_free(x);
            return cp_error(CP_EINVAL, "eval 3D: volume %d x %d x %d at scale %g, anisotropy %g is empty",
                            img->planes, img->height, img->width, s, aniso);
        }
        cp_volume *xr;
        rc = cp_resize_volume(x, Lz, Ly, Lx, &xr);
        cp_volume_free(x);
        if (rc)
            return rc;
        x = xr;
        if (dbg && dbg->keep_stages && (rc = clone_volume(x, &dbg->net_in_resized))) {
            cp_volume_free(x);
            return rc;
        }
    }
    *out = x;
    return CP_OK;
}

int cp_eval_flows3d_net(const cp_net_desc *net, const cp_image *img, const cp_eval_params *p, cp_volume **out,
                        cp_eval3d_debug *dbg)
{
    *out = NULL;
    cp_eval_params defaults;
    if (!p) {
        cp_eval_params_init(&defaults);
        p = &defaults;
    }
    if (dbg) {
        int ks = dbg->keep_stages;
        memset(dbg, 0, sizeof *dbg);
        dbg->keep_stages = ks;
    }
    if (!net)
        return cp_error(CP_EINVAL, "eval: no network");
    double s, aniso = p->anisotropy > 0 ? p->anisotropy : 1.0;
    cp_volume *x, *yf = NULL, *yb;
    int rc = net_input(net, img, p, aniso, 0, &s, &x, dbg);
    if (rc == CP_OK) {
        rc = cp_run_3d(net, x, p, &yf, dbg);
        cp_volume_free(x);
    }
    if (rc == CP_OK && !p->keep_net_size) {
        rc = cp_resize_volume(yf, img->planes, img->height, img->width, &yb);
        cp_volume_free(yf);
        yf = rc == CP_OK ? yb : NULL;
    }
    if (rc) {
        cp_volume_free(yf);
        if (dbg)
            cp_eval3d_debug_free(dbg);
        return rc;
    }
    *out = yf;
    return CP_OK;
}

int cp_eval_flows_planes_net(const cp_net_desc *net, const cp_image *img, const cp_eval_params *p,
                             cp_volume **out)
{
    *out = NULL;
    cp_eval_params defaults;
    if (!p) {
        cp_eval_params_init(&defaults);
        p = &defaults;
    }
    if (!net)
        return cp_error(CP_EINVAL, "eval: no network");
    double s;
    cp_volume *x, *y = NULL, *yb;
    int rc = net_input(net, img, p, 1.0, 1, &s, &x, NULL);
    if (rc)
        return rc;
    int Z = x->depth, H = x->height, W = x->width;
    size_t vn = (size_t)Z * H * W;
    float *in = cp_malloc_array(vn, (size_t)x->channels * sizeof(float), "planes input");
    float *o = cp_malloc_array(vn, 3 * sizeof(float), "planes output");
    if (!in || !o)
        rc = CP_ENOMEM;
    if (rc == CP_OK) {
        gather_pass(x, 0, in);
        rc = cp_run_net(net, in, Z, H, W, p, o);
    }
    cp_volume_free(x);
    free(in);
    /* plane-major n x 3 x H x W to channel-major 3 x Z x H x W */
    if (rc == CP_OK && (rc = cp_volume_create(&y, 3, Z, H, W)) == CP_OK)
        for (int z = 0; z < Z; z++)
            for (int c = 0; c < 3; c++)
                memcpy(y->data + ((size_t)c * Z + z) * H * W, o + ((size_t)z * 3 + c) * H * W,
                       (size_t)H * W * sizeof(float));
    free(o);
    if (rc == CP_OK && !p->keep_net_size) {
        rc = cp_resize_volume(y, Z, img->height, img->width, &yb);
        cp_volume_free(y);
        y = rc == CP_OK ? yb : NULL;
    }
    if (rc) {
        cp_volume_free(y);
        return rc;
    }
    *out = y;
    return CP_OK;
}

/* scipy's 'reflect' (d c b a | a b c d) index for any i. */
static long reflect_index(long i, long n)
{
    long period = 2 * n;
    i %= period;
    if (i < 0)
        i += period;
    return i < n ? i : period - 1 - i;
}

/* gaussian_filter1d along one axis of a Z x Y x X float32 array, in place:
 * kernel exp(-0.5/sigma^2 * x^2) / sum, radius int(4 sigma + 0.5), each line
 * in float64 with the symmetric-kernel sum of ndimage's correlate1d, stored
 * back as float32. */
static int smooth_axis(float *v, const int dims[3], int axis, double sigma)
{
    int r = (int)(4.0 * sigma + 0.5);
    long len = dims[axis];
    size_t stride = axis == 2 ? 1 : axis == 1 ? (size_t)dims[2] : (size_t)dims[1] * dims[2];
    double *w = cp_malloc_array((size_t)2 * r + 1, sizeof *w, "gaussian kernel");
    double *line = cp_malloc_array((size_t)len + 2 * (size_t)r, sizeof *line, "gaussian line");
    if (!w || !line) {
        free(w);
        free(line);
        return CP_ENOMEM;
    }
    double a = -0.5 / (sigma * sigma);
    for (int i = -r; i <= r; i++)
        w[i + r] = exp(a * (double)((long)i * i));
    double sum = cp_np_sum_f64(w, (size_t)2 * r + 1);
    for (int i = 0; i <= 2 * r; i++)
        w[i] /= sum;
    const double *fw = w + r;
    size_t nlines = (size_t)dims[0] * dims[1] * dims[2] / (size_t)len;
    for (size_t l = 0; l < nlines; l++) {
        /* first element of line l: lines are the other two axes in C order */
        size_t inner = axis == 2 ? 1 : stride, base;
        if (axis == 0)
            base = l;
        else if (axis == 1)
            base = (l / inner) * (size_t)len * inner + l % inner;
        else
            base = l * (size_t)len;
        double *ln = line + r;
        for (long i = -r; i < len + r; i++)
            ln[i] = v[base + (size_t)reflect_index(i, len) * stride];
        for (long i = 0; i < len; i++) {
            double acc = ln[i] * fw[0];
            for (int j = -r; j < 0; j++)
                acc += (ln[i + j] + ln[i - j]) * fw[j];
            v[base + (size_t)i * stride] = (float)acc;
        }
    }
    free(w);
    free(line);
    return CP_OK;
}

int cp_gaussian_filter3d(float *v, int depth, int height, int width, const double sigma[3])
{
    const int dims[3] = {depth, height, width};
    for (int a = 0; a < 3; a++) {
        if (!(sigma[a] >= 0) || sigma[a] > 1e4)
            return cp_error(CP_EINVAL, "gaussian filter: sigma %g is not in [0, 1e4]", sigma[a]);
        if (sigma[a] <= 1e-15) /* scipy skips such axes */
            continue;
        int rc = smooth_axis(v, dims, a, sigma[a]);
        if (rc)
            return rc;
    }
    return CP_OK;
}
