/* Region-by-region reading of a volume file: Zarr / OME-Zarr, TIFF and NPY
 * seen as the array cp_image_read_volume sees, read box by box. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/io_internal.h"
#include "io/zarr_internal.h"

typedef enum { V_ZARR, V_TIFF, V_NPY, V_MEM } vol_kind;

struct cp_vol_reader {
    char *path;
    vol_kind kind;
    int nd;                        /* the file's array ... */
    int64_t shape[CP_ZARR_MAX_DIM];
    int zax, cax, yax, xax;        /* ... and which of its axes are which (cax -1: none) */
    cp_dtype dtype;
    cp_zarr *z;                    /* V_ZARR */
    cp_ome_info ome;
    int ome_multiscale;
    cp_tiff_region *tiff;          /* V_TIFF: the array is (planes?, channels?, height, width) */
    int tiff_pax, tiff_cax;
    int fd;                        /* V_NPY: data at npy.data_offset */
    cp_npy_info npy;
    cp_array *mem;                 /* V_MEM: a .npy.gz read whole */
};

void cp_vol_close(cp_vol_reader *r)
{
    if (!r)
        return;
    cp_zarr_close(r->z);
    cp_tiff_region_close(r->tiff);
    if (r->fd >= 0)
        close(r->fd);
    cp_array_free(r->mem);
    free(r->path);
    free(r);
}

void cp_vol_shape(const cp_vol_reader *r, int64_t *depth, int64_t *height, int64_t *width, int *channels)
{
    *depth = r->shape[r->zax];
    *height = r->shape[r->yax];
    *width = r->shape[r->xax];
    *channels = r->cax >= 0 ? (int)r->shape[r->cax] : 1;
}

cp_dtype cp_vol_dtype(const cp_vol_reader *r) { return r->dtype; }

/* C-order element strides of a box. */
static void c_strides(int nd, const int64_t *count, int64_t *str)
{
    int64_t s = 1;
    for (int k = nd - 1; k >= 0; k--)
        str[k] = s, s *= count[k];
}

/* Axes from cp_image_read_volume's rules (TIFF, NPY, unnamed Zarr axes). */
static int generic_axes(cp_vol_reader *r, int channel_guess, int z_axis, int channel_axis)
{
    size_t sh[CP_ZARR_MAX_DIM];
    for (int i = 0; i < r->nd; i++)
        sh[i] = (size_t)r->shape[i];
    return cp_volume_axes(r->path, r->nd, sh, channel_guess, z_axis, channel_axis, &r->zax, &r->cax, &r->yax,
                          &r->xax);
}

static int name_index(const cp_ome_info *o, const char *name)
{
    for (int i = 0; i < o->ndim; i++)
        if (!strcmp(o->axes[i], name))
            return i;
    return -1;
}

/* Zarr axes by name (z, c, y, x; any other axis must have size 1) unless
 * the caller names the axes. */
static int zarr_axes(cp_vol_reader *r, int z_axis, int channel_axis)
{
    int z = name_index(&r->ome, "z"), c = name_index(&r->ome, "c");
    int y = name_index(&r->ome, "y"), x = name_index(&r->ome, "x");
    if (z_axis != CP_AXIS_AUTO || channel_axis != CP_AXIS_AUTO || z < 0 || y < 0 || x < 0)
        return generic_axes(r, c >= 0 ? c : 1, z_axis, channel_axis);
    for (int i = 0; i < r->nd; i++)
        if (i != z && i != c && i != y && i != x && r->shape[i] != 1)
            return cp_error(CP_EUNSUPPORTED, "%s: axis \"%s\" has %lld entries; only one is supported", r->path,
                            r->ome.axes[i], (long long)r->shape[i]);
    r->zax = z, r->cax = c, r->yax = y, r->xax = x;
    return CP_OK;
}

static int open_zarr(cp_vol_reader *r, int z_axis, int channel_axis)
{
    int rc = cp_ome_open(r->path, 0, &r->ome, &r->z);
    if (rc)
        return rc;
    r->kind = V_ZARR;
    r->nd = cp_zarr_ndim(r->z);
    memcpy(r->shape, cp_zarr_shape(r->z), sizeof(int64_t) * (size_t)r->nd);
    r->dtype = cp_zarr_dtype(r->z);
    r->ome_multiscale = r->ome.level_path[0] != 0;
    return zarr_axes(r, z_axis, channel_axis);
}

static int open_tiff(cp_vol_reader *r, int z_axis, int channel_axis)
{
    cp_image s;
    int rc = cp_tiff_region_open(r->path, &r->tiff, &s);
    if (rc)
        return rc;
    r->kind = V_TIFF;
    r->dtype = s.dtype;
    /* tifffile's order, as cp_image_read_volume sees a TIFF */
    r->nd = 0;
    r->tiff_pax = r->tiff_cax = -1;
    if (s.planes > 1)
        r->tiff_pax = r->nd, r->shape[r->nd++] = s.planes;
    if (s.channels > 1)
        r->tiff_cax = r->nd, r->shape[r->nd++] = s.channels;
    r->shape[r->nd++] = s.height;
    r->shape[r->nd++] = s.width;
    return generic_axes(r, 1, z_axis, channel_axis);
}

static int open_npy(cp_vol_reader *r, int z_axis, int channel_axis)
{
    int rc = cp_npy_info_read(r->path, &r->npy);
    if (rc)
        return rc;
    if (r->npy.compressed) { /* gzip cannot seek: read it whole */
        if ((rc = cp_npy_read(r->path, &r->mem)))
            return rc;
        r->kind = V_MEM;
        r->nd = r->mem->ndim;
        for (int i = 0; i < r->nd; i++)
            r->shape[i] = (int64_t)r->mem->shape[i];
        r->dtype = r->mem->dtype;
        return generic_axes(r, 3, z_axis, channel_axis);
    }
    r->kind = V_NPY;
    r->nd = r->npy.ndim;
    r->dtype = r->npy.dtype;
    uint64_t n = 1;
    for (int i = 0; i < r->nd; i++) {
        r->shape[i] = (int64_t)r->npy.shape[i];
        if (r->npy.shape[i] && n > (UINT64_MAX >> 4) / r->npy.shape[i])
            return cp_error(CP_ELIMIT, "%s: NPY array too large", r->path);
        n *= r->npy.shape[i];
    }
    if ((rc = generic_axes(r, 3, z_axis, channel_axis)))
        return rc;
    r->fd = open(r->path, O_RDONLY);
    struct stat st;
    if (r->fd < 0 || fstat(r->fd, &st) != 0)
        return cp_error(CP_EIO, "%s: cannot open: %s", r->path, strerror(errno));
    if ((uint64_t)st.st_size < r->npy.data_offset + n * cp_dtype_size(r->dtype))
        return cp_error(CP_EFORMAT, "%s: truncated NPY data (header claims %llu bytes)", r->path,
                        (unsigned long long)(n * cp_dtype_size(r->dtype)));
    return CP_OK;
}

int cp_vol_open(const char *path, int z_axis, int channel_axis, cp_vol_reader **out)
{
    *out = NULL;
    cp_vol_reader *r = cp_calloc(1, sizeof *r, "volume reader");
    if (!r)
        return CP_ENOMEM;
    r->fd = -1;
    r->cax = -1;
    if (!(r->path = cp_strdup(path))) {
        free(r);
        return CP_ENOMEM;
    }
    int rc;
    struct stat st;
    if (stat(path, &st) != 0) {
        rc = cp_error(CP_EIO, "%s: cannot open: %s", path, strerror(errno));
    } else if (S_ISDIR(st.st_mode)) {
        rc = open_zarr(r, z_axis, channel_axis);
    } else {
        unsigned char head[8];
        FILE *f = fopen(path, "rb");
        size_t n = f ? fread(head, 1, sizeof head, f) : 0;
        if (f)
            fclose(f);
        cp_format fmt = cp_io_sniff(head, n);
        if (!f)
            rc = cp_error(CP_EIO, "%s: cannot open: %s", path, strerror(errno));
        else if (fmt == CP_FMT_TIFF)
            rc = open_tiff(r, z_axis, channel_axis);
        else if (fmt == CP_FMT_NPY)
            rc = open_npy(r, z_axis, channel_axis);
        else
            rc = cp_error(CP_EUNSUPPORTED, "%s: not a volume we read by regions (OME-Zarr, Zarr, TIFF or NPY)", path);
    }
    if (rc) {
        cp_vol_close(r);
        return rc;
    }
    *out = r;
    return CP_OK;
}

int cp_vol_voxel_size(const cp_vol_reader *r, cp_voxel_size *out, int *found)
{
    memset(out, 0, sizeof *out);
    *found = 0;
    if (r->kind == V_TIFF)
        return cp_tiff_voxel_size(r->path, out, found);
    if (r->kind != V_ZARR || !r->ome_multiscale)
        return CP_OK;
    out->z = r->ome.scale[r->zax];
    out->y = r->ome.scale[r->yax];
    out->x = r->ome.scale[r->xax];
    snprintf(out->unit, sizeof out->unit, "%s", r->ome.unit);
    /* calibrated: a unit, or a scale other than the default 1 */
    *found = out->unit[0] || out->z != 1 || out->y != 1 || out->x != 1;
    if (!*found)
        memset(out, 0, sizeof *out);
    return CP_OK;
}

/* ---- boxes of the file's array, C order, into buf ---------------------- */

static int read_tiff_box(cp_vol_reader *r, const int64_t *start, const int64_t *count, unsigned char *buf)
{
    int y = r->nd - 2, x = r->nd - 1, p = r->tiff_pax, c = r->tiff_cax;
    int p0 = p >= 0 ? (int)start[p] : 0, np = p >= 0 ? (int)count[p] : 1;
    cp_image *tmp;
    int C = c >= 0 ? (int)r->shape[c] : 1;
    int rc = cp_image_create(&tmp, (int)count[x], (int)count[y], C, np, r->dtype);
    if (rc)
        return cp_error(rc, "%s: %s", r->path, cp_errmsg());
    rc = cp_tiff_region_read(r->tiff, p0, np, (int)start[y], (int)count[y], (int)start[x], (int)count[x], tmp);
    if (!rc) {
        int64_t sstr[CP_ZARR_MAX_DIM], dstr[CP_ZARR_MAX_DIM];
        int64_t W = count[x], H = count[y];
        if (p >= 0)
            sstr[p] = H * W * C;
        if (c >= 0)
            sstr[c] = 1;
        sstr[y] = W * C;
        sstr[x] = C;
        c_strides(r->nd, count, dstr);
        size_t es = cp_dtype_size(r->dtype);
        int64_t c0 = c >= 0 ? start[c] : 0;
        cp_zarr_copy_box(r->nd, count, (const unsigned char *)tmp->data + (size_t)c0 * es, sstr, buf, dstr, es);
    }
    cp_image_free(tmp);
    return rc;
}

static int pread_all(int fd, void *buf, size_t n, uint64_t off)
{
    unsigned char *p = buf;
    while (n) {
        ssize_t got = pread(fd, p, n, (off_t)off);
        if (got <= 0)
            return -1;
        p += got, n -= (size_t)got, off += (uint64_t)got;
    }
    return 0;
}

/* Rows of the box, each one pread; a Fortran-order file is the C-order
 * array of the reversed shape, transposed back afterwards. */
static int read_npy_box(cp_vol_reader *r, const int64_t *start, const int64_t *count, unsigned char *buf)
{
    int nd = r->nd;
    size_t es = cp_dtype_size(r->dtype);
    int64_t sh[CP_ZARR_MAX_DIM], st[CP_ZARR_MAX_DIM], ct[CP_ZARR_MAX_DIM], i[CP_ZARR_MAX_DIM] = {0};
    size_t total = 1;
    for (int k = 0; k < nd; k++) {
        int j = r->npy.fortran ? nd - 1 - k : k;
        sh[k] = r->shape[j], st[k] = start[j], ct[k] = count[j];
        total *= (size_t)ct[k];
    }
    if (total == 0)
        return CP_OK;
    unsigned char *dst = buf, *tmp = NULL;
    if (r->npy.fortran && nd > 1 && !(dst = tmp = cp_malloc(total * es, "NPY box")))
        return CP_ENOMEM;
    size_t run = (size_t)ct[nd - 1] * es;
    for (unsigned char *d = dst;; d += run) {
        uint64_t off = 0;
        for (int k = 0; k < nd; k++)
            off = off * (uint64_t)sh[k] + (uint64_t)(st[k] + (k < nd - 1 ? i[k] : 0));
        if (pread_all(r->fd, d, run, r->npy.data_offset + off * es) != 0) {
            free(tmp);
            return cp_error(CP_EFORMAT, "%s: truncated NPY data", r->path);
        }
        int k = nd - 2;
        while (k >= 0 && ++i[k] == ct[k])
            i[k--] = 0;
        if (k < 0)
            break;
    }
    if (r->npy.swap)
        cp_byteswap(dst, total, es);
    if (r->npy.is_bool)
        for (size_t e = 0; e < total; e++)
            dst[e] = dst[e] != 0;
    if (tmp) { /* tmp is C order over the reversed axes */
        int64_t tstr[CP_ZARR_MAX_DIM], sstr[CP_ZARR_MAX_DIM], dstr[CP_ZARR_MAX_DIM];
        c_strides(nd, ct, tstr);
        for (int k = 0; k < nd; k++)
            sstr[k] = tstr[nd - 1 - k];
        c_strides(nd, count, dstr);
        cp_zarr_copy_box(nd, count, tmp, sstr, buf, dstr, es);
        free(tmp);
    }
    return CP_OK;
}

static void read_mem_box(cp_vol_reader *r, const int64_t *start, const int64_t *count, unsigned char *buf)
{
    int64_t sstr[CP_ZARR_MAX_DIM], dstr[CP_ZARR_MAX_DIM];
    c_strides(r->nd, r->shape, sstr);
    c_strides(r->nd, count, dstr);
    size_t es = cp_dtype_size(r->dtype), off = 0;
    for (int k = 0; k < r->nd; k++)
        off += (size_t)(start[k] * sstr[k]);
    cp_zarr_copy_box(r->nd, count, (const unsigned char *)r->mem->data + off * es, sstr, buf, dstr, es);
}

int cp_vol_read(cp_vol_reader *r, int64_t z0, int64_t y0, int64_t x0, int64_t dz, int64_t dy, int64_t dx,
                cp_image **out)
{
    *out = NULL;
    int64_t D, H, W;
    int C;
    cp_vol_shape(r, &D, &H, &W, &C);
    if (z0 < 0 || y0 < 0 || x0 < 0 || dz < 0 || dy < 0 || dx < 0 || z0 > D - dz || y0 > H - dy || x0 > W - dx)
        return cp_error(CP_EINVAL, "%s: box z %lld+%lld, y %lld+%lld, x %lld+%lld is outside the %lldx%lldx%lld volume",
                        r->path, (long long)z0, (long long)dz, (long long)y0, (long long)dy, (long long)x0,
                        (long long)dx, (long long)D, (long long)H, (long long)W);
    if (dz == 0 || dy == 0 || dx == 0)
        return cp_error(CP_EINVAL, "%s: empty box (%lld x %lld x %lld)", r->path, (long long)dz, (long long)dy,
                        (long long)dx);
    if (dz > INT_MAX || dy > INT_MAX || dx > INT_MAX)
        return cp_error(CP_ELIMIT, "%s: box too large", r->path);
    cp_image *img;
    int rc = cp_image_create(&img, (int)dx, (int)dy, C, (int)dz, r->dtype);
    if (rc)
        return cp_error(rc, "%s: %s", r->path, cp_errmsg());
    int64_t start[CP_ZARR_MAX_DIM], count[CP_ZARR_MAX_DIM], sstr[CP_ZARR_MAX_DIM], dstr[CP_ZARR_MAX_DIM];
    for (int k = 0; k < r->nd; k++) {
        start[k] = 0, count[k] = 1, dstr[k] = 0;
        if (k == r->zax)
            start[k] = z0, count[k] = dz, dstr[k] = dy * dx * C;
        else if (k == r->yax)
            start[k] = y0, count[k] = dy, dstr[k] = dx * C;
        else if (k == r->xax)
            start[k] = x0, count[k] = dx, dstr[k] = C;
        else if (k == r->cax)
            count[k] = C, dstr[k] = 1;
    }
    size_t es = cp_dtype_size(r->dtype), n = cp_image_samples(img);
    unsigned char *tmp = n ? cp_malloc(n * es, "volume box") : NULL;
    if (n && !tmp) {
        cp_image_free(img);
        return CP_ENOMEM;
    }
    if (n) {
        switch (r->kind) {
        case V_ZARR: rc = cp_zarr_read(r->z, start, count, tmp); break;
        case V_TIFF: rc = read_tiff_box(r, start, count, tmp); break;
        case V_NPY: rc = read_npy_box(r, start, count, tmp); break;
        case V_MEM: read_mem_box(r, start, count, tmp); break;
        }
    }
    if (!rc && n) { /* the file's axis order -> planes x rows x columns x channels */
        c_strides(r->nd, count, sstr);
        cp_zarr_copy_box(r->nd, count, tmp, sstr, img->data, dstr, es);
    }
    free(tmp);
    if (rc) {
        cp_image_free(img);
        return rc;
    }
    *out = img;
    return CP_OK;
}
