/* Format dispatch: detect by magic bytes on input, by extension on output. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "cellpose/zarr.h"
#include "io/io_internal.h"

cp_format cp_io_sniff(const unsigned char *h, size_t n)
{
    if (n >= 4 && ((h[0] == 'I' && h[1] == 'I' && (h[2] == 42 || h[2] == 43) && h[3] == 0) ||
                   (h[0] == 'M' && h[1] == 'M' && h[2] == 0 && (h[3] == 42 || h[3] == 43))))
        return CP_FMT_TIFF;
    if (n >= 8 && memcmp(h, "\x89PNG\r\n\x1a\n", 8) == 0)
        return CP_FMT_PNG;
    if (n >= 6 && memcmp(h, "\x93NUMPY", 6) == 0)
        return CP_FMT_NPY;
    if (n >= 2 && h[0] == 0x1f && h[1] == 0x8b) /* gzip: we only read .npy.gz */
        return CP_FMT_NPY;
    return CP_FMT_UNKNOWN;
}

int cp_io_has_ext(const char *path, const char *ext)
{
    const char *dot = strrchr(path, '.');
    const char *slash = strrchr(path, '/');
    return dot && (!slash || dot > slash) && strcasecmp(dot + 1, ext) == 0;
}

/* Keep channels 0..C-2 of every pixel. */
static int drop_last_channel(cp_image **img)
{
    cp_image *in = *img, *o;
    int rc = cp_image_create(&o, in->width, in->height, in->channels - 1, in->planes, in->dtype);
    if (rc != CP_OK) {
        cp_image_free(in);
        *img = NULL;
        return rc;
    }
    size_t es = cp_dtype_size(in->dtype), npix = (size_t)in->width * in->height * in->planes;
    const char *s = in->data;
    char *d = o->data;
    for (size_t i = 0; i < npix; i++)
        memcpy(d + i * o->channels * es, s + i * in->channels * es, o->channels * es);
    cp_image_free(in);
    *img = o;
    return CP_OK;
}

int cp_image_voxel_size(const char *path, cp_voxel_size *out, int *found)
{
    memset(out, 0, sizeof *out);
    *found = 0;
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) { /* OME-Zarr: its scale and unit */
        cp_vol_reader *r;
        int rc = cp_vol_open(path, CP_AXIS_AUTO, CP_AXIS_AUTO, &r);
        if (rc == CP_OK)
            rc = cp_vol_voxel_size(r, out, found);
        cp_vol_close(r);
        return rc;
    }
    FILE *f = fopen(path, "rb");
    if (!f)
        return cp_error(CP_EIO, "%s: cannot open: %s", path, strerror(errno));
    unsigned char head[8];
    size_t n = fread(head, 1, sizeof head, f);
    fclose(f);
    return cp_io_sniff(head, n) == CP_FMT_TIFF ? cp_tiff_voxel_size(path, out, found) : CP_OK;
}

int cp_image_read(const char *path, const cp_read_opts *opts, cp_image **out)
{
    *out = NULL;
    cp_read_opts def = {.pages = CP_PAGES_AUTO};
    if (!opts)
        opts = &def;
    FILE *f = fopen(path, "rb");
    if (!f)
        return cp_error(CP_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
        fclose(f);
        return cp_error(CP_EIO, "%s: is a directory", path);
    }
    unsigned char head[8];
    size_t n = fread(head, 1, sizeof head, f);
    fclose(f);
    switch (cp_io_sniff(head, n)) {
    case CP_FMT_TIFF:
        return cp_tiff_read(path, opts, out);
    case CP_FMT_PNG: {
        int rc = cp_png_read(path, out);
        if (rc == CP_OK && opts->drop_alpha && ((*out)->channels == 2 || (*out)->channels == 4))
            rc = drop_last_channel(out);
        return rc;
    }
    case CP_FMT_NPY: {
        cp_array *a;
        int rc = cp_npy_read(path, &a);
        if (rc)
            return rc;
        rc = cp_npy_to_image(path, a, out);
        cp_array_free(a);
        return rc;
    }
    default:
        if (n == 0)
            return cp_error(CP_EFORMAT, "%s: empty file", path);
        return cp_error(CP_EFORMAT, "%s: not a TIFF, PNG or NPY image", path);
    }
}

/* The NPY shape of an image: Y,X / Y,X,C / Z,Y,X / Z,Y,X,C, chosen so that
 * cp_image_read gives the same image back. */
static int image_write_npy(const char *path, const cp_image *img)
{
    cp_array a = {0};
    a.dtype = img->dtype;
    a.data = img->data;
    size_t z = (size_t)img->planes, y = (size_t)img->height, x = (size_t)img->width, c = (size_t)img->channels;
    if (z == 1 && c == 1) {
        a.ndim = 2, a.shape[0] = y, a.shape[1] = x;
    } else if (z == 1 && c <= 4) {
        a.ndim = 3, a.shape[0] = y, a.shape[1] = x, a.shape[2] = c;
    } else if (c == 1 && x > 4) {
        a.ndim = 3, a.shape[0] = z, a.shape[1] = y, a.shape[2] = x;
    } else {
        a.ndim = 4, a.shape[0] = z, a.shape[1] = y, a.shape[2] = x, a.shape[3] = c;
    }
    return cp_npy_write(path, &a);
}

int cp_image_write(const char *path, const cp_image *img, const cp_write_opts *opts)
{
    if (!img || !img->data || img->width <= 0 || img->height <= 0 || img->channels <= 0 || img->planes <= 0)
        return cp_error(CP_EINVAL, "%s: invalid image", path);
    if (cp_io_has_ext(path, "tif") || cp_io_has_ext(path, "tiff"))
        return cp_tiff_write(path, img, opts);
    if (cp_io_has_ext(path, "png"))
        return cp_png_write(path, img);
    if (cp_io_has_ext(path, "npy"))
        return image_write_npy(path, img);
    if (cp_io_has_ext(path, "gz")) {
        size_t n = strlen(path);
        if (n > 7 && strcasecmp(path + n - 7, ".npy.gz") == 0)
            return image_write_npy(path, img);
    }
    return cp_error(CP_EINVAL, "%s: unknown output format (use .tif, .png, .npy or .npy.gz)", path);
}
