/* Channel selection and percentile normalisation (spec 4.1, 4.2). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/core.h"
#include "cellpose/preprocess.h"
#include "core/internal.h"

int cp_planes_create(cp_planes **out, int channels, int height, int width)
{
    *out = NULL;
    if (channels <= 0 || height <= 0 || width <= 0)
        return cp_error(CP_EINVAL, "planes: bad size %d x %d x %d", channels, height, width);
    size_t n;
    if (cp_mul_overflow((size_t)channels * (size_t)height, (size_t)width, &n) ||
        n > cp_get_max_pixels())
        return cp_error(CP_ELIMIT, "planes: %d x %d x %d samples exceed the limit", channels,
                        height, width);
    cp_planes *p = cp_calloc(1, sizeof *p, "planes");
    if (!p)
        return CP_ENOMEM;
    p->data = cp_calloc(n, sizeof(float), "planes");
    if (!p->data) {
        free(p);
        return CP_ENOMEM;
    }
    p->channels = channels;
    p->height = height;
    p->width = width;
    *out = p;
    return CP_OK;
}

void cp_planes_free(cp_planes *p)
{
    if (!p)
        return;
    free(p->data);
    free(p);
}

int cp_select_channels(const cp_image *img, int plane, cp_arch arch, int chan, int chan2,
                       cp_planes **out)
{
    *out = NULL;
    if (!img || plane < 0 || plane >= img->planes)
        return cp_error(CP_EINVAL, "select channels: plane %d out of range", plane);
    int C = img->channels;
    size_t npix = (size_t)img->width * img->height;
    int nout = arch == CP_ARCH_CPSAM ? 3 : 2;
    if (arch == CP_ARCH_CPNET && C > 1 && (chan < 0 || chan > C || chan2 < 0 || chan2 > C))
        return cp_error(CP_EINVAL, "channels %d,%d: the image has %d channels", chan, chan2, C);
    cp_planes *p;
    int rc = cp_planes_create(&p, nout, img->height, img->width);
    if (rc)
        return rc;
    if (arch == CP_ARCH_CPSAM) {
        for (int c = 0; c < 3 && c < C; c++)
            cp_image_channel_f32(img, plane, c, p->data + c * npix);
    } else if (C == 1) {
        cp_image_channel_f32(img, plane, 0, p->data);
    } else if (chan == 0) {
        /* numpy mean over the last axis of float32: float32 sum in channel
         * order, then divided by C in float32 */
        float *tmp = cp_malloc_array(npix, sizeof(float), "channel");
        if (!tmp) {
            cp_planes_free(p);
            return CP_ENOMEM;
        }
        float *sum = p->data;
        cp_image_channel_f32(img, plane, 0, sum);
        for (int c = 1; c < C; c++) {
            cp_image_channel_f32(img, plane, c, tmp);
            for (size_t i = 0; i < npix; i++)
                sum[i] = sum[i] + tmp[i];
        }
        float fc = (float)C;
        for (size_t i = 0; i < npix; i++)
            sum[i] = sum[i] / fc;
        free(tmp);
    } else {
        cp_image_channel_f32(img, plane, chan - 1, p->data);
        if (chan2 > 0)
            cp_image_channel_f32(img, plane, chan2 - 1, p->data + npix);
    }
    *out = p;
    return CP_OK;
}

/* k-th smallest of x[lo..hi] (inclusive), partitioning x in place. */
static float select_kth(float *x, size_t lo, size_t hi, size_t k)
{
    while (hi > lo) {
        /* median of three as pivot */
        size_t mid = lo + (hi - lo) / 2;
        float a = x[lo], b = x[mid], c = x[hi];
        float piv = a < b ? (b < c ? b : (a < c ? c : a)) : (a < c ? a : (b < c ? c : b));
        size_t i = lo, j = hi;
        for (;;) {
            while (x[i] < piv)
                i++;
            while (piv < x[j])
                j--;
            if (i >= j)
                break;
            float t = x[i];
            x[i] = x[j];
            x[j] = t;
            i++;
            j--;
        }
        /* now x[lo..j] <= piv <= x[j+1..hi] */
        if (k <= j)
            hi = j;
        else
            lo = j + 1;
    }
    return x[k];
}

static float min_range(const float *x, size_t lo, size_t hi)
{
    float m = x[lo];
    for (size_t i = lo + 1; i <= hi; i++)
        if (x[i] < m)
            m = x[i];
    return m;
}

double cp_percentile_f32(float *x, size_t n, double q)
{
    if (n == 0)
        return NAN;
    /* numpy: virtual index (n-1)*(q/100); neighbours floor and floor+1,
     * both the last element when the index reaches n-1 */
    double vi = (double)(n - 1) * (q / 100.0);
    double prev = floor(vi);
    size_t i0, i1;
    double gamma;
    if (vi >= (double)(n - 1)) {
        i0 = i1 = n - 1;
        gamma = vi + 1.0; /* numpy's index -1: any t gives the last value */
    } else if (vi < 0) {
        i0 = i1 = 0;
        gamma = vi - prev;
    } else {
        i0 = (size_t)prev;
        i1 = i0 + 1;
        gamma = vi - prev;
    }
    float a = select_kth(x, 0, n - 1, i0);
    float b = i1 == i0 ? a : min_range(x, i0 + 1, n - 1);
    /* numpy _lerp: b - a in the array's float32, the rest in float64 */
    float d32 = b - a;
    double d = d32;
    if (gamma >= 0.5)
        return (double)b - d * (1.0 - gamma);
    return (double)a + d * gamma;
}

/* numpy's `ptp(x) > 0` is false for a constant channel and also for one
 * holding a NaN (ptp is NaN then): Cellpose skips both. */
static int channel_skipped(const float *x, size_t n)
{
    int differs = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(x[i]))
            return 1;
        differs |= x[i] != x[0];
    }
    return !differs;
}

void cp_norm_strides(int64_t depth, int64_t height, int64_t width, int64_t *sz, int64_t *sy, int64_t *sx)
{
    *sz = *sy = *sx = 1;
    if (depth * height * width > (int64_t)224 * 224 * 224) {
        *sy = height / 224 > 1 ? height / 224 : 1;
        *sx = width / 224 > 1 ? width / 224 : 1;
        *sz = depth > 1 && depth / 50 > 1 ? depth / 50 : 1;
    }
}

static int check_percentiles(double lower, double upper)
{
    if (!(lower >= 0 && lower <= 100 && upper >= 0 && upper <= 100))
        return cp_error(CP_EINVAL, "normalisation percentiles %g, %g: need values in [0, 100]", lower, upper);
    return CP_OK;
}

/* One channel's normalisation in place from its percentile values. */
static void apply_channel(float *x, size_t n, cp_arch arch, int skip, double lo, double hi)
{
    if (skip) {
        if (arch == CP_ARCH_CPSAM)
            memset(x, 0, n * sizeof(float));
    } else if (hi - lo > 1e-3) {
        /* numpy 1.x: float32 array op float64 scalar rounds the scalar */
        float flo = (float)lo, fd = (float)(hi - lo);
        for (size_t i = 0; i < n; i++)
            x[i] = (x[i] - flo) / fd;
    } else {
        memset(x, 0, n * sizeof(float));
    }
}

/* Channel-major C x Z x H x W floats (Z = 1 for an image): per channel,
 * normalize99 as Cellpose calls it with downsample=True: above 224^3 samples
 * the percentiles use every max(1, L/224)-th row and column, and in 3D every
 * max(1, Z/50)-th plane. */
static int normalize_channels(float *data, int C, int Z, int Hi, int Wi, cp_arch arch, double lower,
                              double upper)
{
    int rc = check_percentiles(lower, upper);
    if (rc)
        return rc;
    size_t D = (size_t)Z, H = (size_t)Hi, W = (size_t)Wi, npix = D * H * W;
    int64_t s[3];
    cp_norm_strides(Z, Hi, Wi, &s[0], &s[1], &s[2]);
    size_t sz = (size_t)s[0], sy = (size_t)s[1], sx = (size_t)s[2];
    size_t ns = ((D + sz - 1) / sz) * ((H + sy - 1) / sy) * ((W + sx - 1) / sx);
    float *buf = cp_malloc_array(ns, sizeof(float), "percentile buffer");
    if (!buf)
        return CP_ENOMEM;
    for (int c = 0; c < C; c++) {
        float *x = data + (size_t)c * npix;
        if (channel_skipped(x, npix)) {
            apply_channel(x, npix, arch, 1, 0, 0);
            continue;
        }
        size_t k = 0;
        for (size_t z = 0; z < D; z += sz)
            for (size_t y = 0; y < H; y += sy)
                for (size_t xx = 0; xx < W; xx += sx)
                    buf[k++] = x[(z * H + y) * W + xx];
        double lo = cp_percentile_f32(buf, k, lower);
        double hi = cp_percentile_f32(buf, k, upper);
        apply_channel(x, npix, arch, 0, lo, hi);
    }
    free(buf);
    return CP_OK;
}

int cp_norm_channel_values(float *samples, size_t n, double lower, double upper, int *skip, double *lo, double *hi)
{
    int rc = check_percentiles(lower, upper);
    if (rc)
        return rc;
    *lo = *hi = 0;
    *skip = n == 0 || channel_skipped(samples, n);
    if (*skip)
        return CP_OK;
    *lo = cp_percentile_f32(samples, n, lower);
    *hi = cp_percentile_f32(samples, n, upper);
    return CP_OK;
}

int cp_normalize3d_fixed(cp_volume *v, cp_arch arch, const cp_norm_fixed *nf)
{
    if (nf->channels != v->channels)
        return cp_error(CP_EINVAL, "fixed normalisation for %d channels, the network input has %d", nf->channels,
                        v->channels);
    size_t npix = (size_t)v->depth * v->height * v->width;
    for (int c = 0; c < v->channels; c++)
        apply_channel(v->data + (size_t)c * npix, npix, arch, nf->skip[c], nf->lo[c], nf->hi[c]);
    return CP_OK;
}

int cp_normalize(cp_planes *p, cp_arch arch, double lower, double upper)
{
    return normalize_channels(p->data, p->channels, 1, p->height, p->width, arch, lower, upper);
}

int cp_normalize3d(cp_volume *v, cp_arch arch, double lower, double upper)
{
    return normalize_channels(v->data, v->channels, v->depth, v->height, v->width, arch, lower, upper);
}
