/* Z-stacks as Cellpose's 3D modes read them: the file's array (numpy's for
 * NPY, tifffile's page order for TIFF) with a Z axis and maybe a channel
 * axis, turned into planes x height x width x channels. */
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "cellpose/core.h"
#include "cellpose/io.h"
#include "core/internal.h"
#include "cellpose/zarr.h"
#include "io/io_internal.h"

/* An array seen through element strides over a buffer. */
typedef struct view {
    int ndim;
    size_t shape[4], stride[4];
    int channel_guess; /* the channel axis when none is given (4-D) */
    const void *data;
    cp_dtype dtype;
} view;

static void shape_str(const view *v, char *buf, size_t n)
{
    size_t k = (size_t)snprintf(buf, n, "(");
    for (int i = 0; i < v->ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, i ? ", %zu" : "%zu", v->shape[i]);
    if (k < n)
        snprintf(buf + k, n - k, ")");
}

/* A read image as tifffile would give it: pages first, then channels. */
static void image_view(const cp_image *img, view *v)
{
    size_t P = (size_t)img->planes, C = (size_t)img->channels, H = (size_t)img->height, W = (size_t)img->width;
    memset(v, 0, sizeof *v);
    v->data = img->data;
    v->dtype = img->dtype;
    size_t sh[4], st[4];
    int n = 0;
    if (P > 1)
        sh[n] = P, st[n++] = H * W * C;
    if (C > 1)
        sh[n] = C, st[n++] = 1;
    sh[n] = H, st[n++] = W * C;
    sh[n] = W, st[n++] = C;
    v->ndim = n;
    memcpy(v->shape, sh, sizeof sh);
    memcpy(v->stride, st, sizeof st);
    v->channel_guess = 1;
}

static int array_view(const char *path, const cp_array *a, view *v)
{
    if (a->ndim < 2 || a->ndim > 4)
        return cp_error(CP_EUNSUPPORTED, "%s: a %d-D array is not an image or a volume", path, a->ndim);
    memset(v, 0, sizeof *v);
    v->ndim = a->ndim;
    v->data = a->data;
    v->dtype = a->dtype;
    size_t s = 1;
    for (int i = a->ndim - 1; i >= 0; i--) {
        v->shape[i] = a->shape[i];
        v->stride[i] = s;
        s *= a->shape[i];
    }
    v->channel_guess = 3;
    return CP_OK;
}

static void shape_text(int ndim, const size_t *shape, char *buf, size_t n)
{
    view v = {.ndim = ndim};
    memcpy(v.shape, shape, sizeof(size_t) * (size_t)ndim);
    shape_str(&v, buf, n);
}

static int axis_index(const char *path, int ndim, const char *s, const char *what, int axis, int *out)
{
    int a = axis < 0 ? axis + ndim : axis;
    if (a < 0 || a >= ndim)
        return cp_error(CP_EINVAL, "%s: %s %d is out of range for its %d-D array %s", path, what, axis, ndim, s);
    *out = a;
    return CP_OK;
}

int cp_volume_axes(const char *path, int ndim, const size_t *shape, int channel_guess, int z_axis, int channel_axis,
                   int *z, int *c, int *y, int *x)
{
    char s[96];
    shape_text(ndim, shape, s, sizeof s);
    if (ndim < 3)
        return cp_error(CP_EINVAL, "%s: a 2-D image %s is not a volume", path, s);
    if (ndim > 4)
        return cp_error(CP_EUNSUPPORTED, "%s: a %d-D array %s is not a volume", path, ndim, s);
    *c = -1;
    int rc = axis_index(path, ndim, s, "Z axis", z_axis == CP_AXIS_AUTO ? 0 : z_axis, z);
    if (rc)
        return rc;
    if (ndim == 3 && channel_axis != CP_AXIS_AUTO)
        return cp_error(CP_EINVAL, "%s: its array %s has no channel axis beside Z", path, s);
    if (ndim == 4) {
        if ((rc = axis_index(path, ndim, s, "channel axis", channel_axis == CP_AXIS_AUTO ? channel_guess : channel_axis,
                             c)))
            return rc;
        if (*c == *z)
            return cp_error(CP_EINVAL, "%s: Z and channel axes are both %d in its array %s", path, *z, s);
    }
    int yx[2], k = 0;
    for (int i = 0; i < ndim; i++)
        if (i != *z && i != *c)
            yx[k++] = i;
    *y = yx[0];
    *x = yx[1];
    return CP_OK;
}

static int view_to_image(const char *path, const view *v, int z_axis, int channel_axis, cp_image **out)
{
    char s[96];
    shape_str(v, s, sizeof s);
    int z, c, yx[2];
    int rc = cp_volume_axes(path, v->ndim, v->shape, v->channel_guess, z_axis, channel_axis, &z, &c, &yx[0], &yx[1]);
    if (rc)
        return rc;
    size_t Z = v->shape[z], C = c >= 0 ? v->shape[c] : 1, H = v->shape[yx[0]], W = v->shape[yx[1]];
    if (Z > INT_MAX || C > INT_MAX || H > INT_MAX || W > INT_MAX)
        return cp_error(CP_ELIMIT, "%s: array %s too large", path, s);
    if ((rc = cp_image_create(out, (int)W, (int)H, (int)C, (int)Z, v->dtype)))
        return rc;
    size_t es = cp_dtype_size(v->dtype), sc = c >= 0 ? v->stride[c] : 0;
    const unsigned char *src = v->data;
    unsigned char *dst = (*out)->data;
    for (size_t zz = 0; zz < Z; zz++)
        for (size_t y = 0; y < H; y++)
            for (size_t x = 0; x < W; x++)
                for (size_t cc = 0; cc < C; cc++) {
                    size_t o = zz * v->stride[z] + y * v->stride[yx[0]] + x * v->stride[yx[1]] + cc * sc;
                    memcpy(dst, src + o * es, es);
                    dst += es;
                }
    return CP_OK;
}

/* A Zarr / OME-Zarr folder, whole, through the region reader. */
static int read_zarr_volume(const char *path, int z_axis, int channel_axis, cp_image **out)
{
    cp_vol_reader *r;
    int rc = cp_vol_open(path, z_axis, channel_axis, &r);
    if (rc)
        return rc;
    int64_t d, h, w;
    int c;
    cp_vol_shape(r, &d, &h, &w, &c);
    rc = cp_vol_read(r, 0, 0, 0, d, h, w, out);
    cp_vol_close(r);
    return rc;
}

int cp_image_read_volume(const char *path, int z_axis, int channel_axis, cp_image **out)
{
    *out = NULL;
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return read_zarr_volume(path, z_axis, channel_axis, out);
    FILE *f = fopen(path, "rb");
    if (!f)
        return cp_error(CP_EIO, "%s: cannot open", path);
    unsigned char head[8];
    size_t n = fread(head, 1, sizeof head, f);
    fclose(f);
    view v;
    int rc;
    if (cp_io_sniff(head, n) == CP_FMT_NPY) {
        cp_array *a;
        if ((rc = cp_npy_read(path, &a)))
            return rc;
        if ((rc = array_view(path, a, &v)) == CP_OK)
            rc = view_to_image(path, &v, z_axis, channel_axis, out);
        cp_array_free(a);
        return rc;
    }
    cp_read_opts o = {.pages = CP_PAGES_AUTO, .drop_alpha = 1};
    cp_image *img;
    if ((rc = cp_image_read(path, &o, &img)))
        return rc;
    image_view(img, &v);
    rc = view_to_image(path, &v, z_axis, channel_axis, out);
    cp_image_free(img);
    return rc;
}
