/* TEMPORARY (branch blocks): the cp_vol_* part of zarr.h over
 * cp_image_read_volume (the whole volume in memory), and the Zarr writers
 * refused, until branch zarr lands the real ones. Delete on `git merge zarr`. */
#include <stdlib.h>
#include <string.h>

#include "cellpose/core.h"
#include "cellpose/zarr.h"
#include "core/internal.h"

struct cp_vol_reader {
    char *path;
    cp_image *img;
};

int cp_vol_open(const char *path, int z_axis, int channel_axis, cp_vol_reader **out)
{
    *out = NULL;
    cp_vol_reader *r = cp_calloc(1, sizeof *r, "volume reader");
    if (!r)
        return CP_ENOMEM;
    int rc = cp_image_read_volume(path, z_axis, channel_axis, &r->img);
    if (rc == CP_OK && !(r->path = cp_strdup(path)))
        rc = CP_ENOMEM;
    if (rc) {
        cp_vol_close(r);
        return rc;
    }
    *out = r;
    return CP_OK;
}

void cp_vol_close(cp_vol_reader *r)
{
    if (!r)
        return;
    cp_image_free(r->img);
    free(r->path);
    free(r);
}

void cp_vol_shape(const cp_vol_reader *r, int64_t *depth, int64_t *height, int64_t *width, int *channels)
{
    *depth = r->img->planes;
    *height = r->img->height;
    *width = r->img->width;
    *channels = r->img->channels;
}

cp_dtype cp_vol_dtype(const cp_vol_reader *r) { return r->img->dtype; }

int cp_vol_voxel_size(const cp_vol_reader *r, cp_voxel_size *out, int *found)
{
    return cp_image_voxel_size(r->path, out, found);
}

int cp_vol_read(cp_vol_reader *r, int64_t z0, int64_t y0, int64_t x0, int64_t dz, int64_t dy, int64_t dx,
                cp_image **out)
{
    *out = NULL;
    const cp_image *v = r->img;
    if (z0 < 0 || y0 < 0 || x0 < 0 || dz < 1 || dy < 1 || dx < 1 || z0 + dz > v->planes || y0 + dy > v->height ||
        x0 + dx > v->width)
        return cp_error(CP_EINVAL, "%s: box outside the volume", r->path);
    cp_image *o;
    int rc = cp_image_create(&o, (int)dx, (int)dy, v->channels, (int)dz, v->dtype);
    if (rc)
        return rc;
    size_t es = cp_dtype_size(v->dtype) * (size_t)v->channels;
    for (int64_t z = 0; z < dz; z++)
        for (int64_t y = 0; y < dy; y++)
            memcpy((char *)o->data + ((size_t)(z * dy + y) * dx) * es,
                   (const char *)v->data + (((size_t)(z0 + z) * v->height + (size_t)(y0 + y)) * v->width + x0) * es,
                   (size_t)dx * es);
    *out = o;
    return CP_OK;
}

int cp_ome_create(const char *path, int ndim, const int64_t *shape, const int64_t *chunks, cp_dtype dtype,
                  const cp_voxel_size *vs, const cp_zarr_opts *opts, int overwrite, cp_zarr **out)
{
    (void)ndim, (void)shape, (void)chunks, (void)dtype, (void)vs, (void)opts, (void)overwrite;
    *out = NULL;
    return cp_error(CP_EUNSUPPORTED, "%s: OME-Zarr output is not in this build yet (write a .tif)", path);
}

int cp_zarr_write(cp_zarr *z, const int64_t *start, const int64_t *count, const void *buf)
{
    (void)z, (void)start, (void)count, (void)buf;
    return cp_error(CP_EUNSUPPORTED, "Zarr output is not in this build yet");
}

void cp_zarr_close(cp_zarr *z) { (void)z; }
