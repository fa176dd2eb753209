#include <stdlib.h>
#include <string.h>

#include "cellpose/image.h"
#include "core/internal.h"

static const size_t dtype_sizes[CP_DTYPE_COUNT] = {1, 2, 4, 1, 2, 4, 8, 4, 8, 8};
static const char *dtype_names[CP_DTYPE_COUNT] = {"u8", "u16", "u32", "i8", "i16",
                                                  "i32", "i64", "f32", "f64", "u64"};

size_t cp_dtype_size(cp_dtype t) { return (unsigned)t < CP_DTYPE_COUNT ? dtype_sizes[t] : 0; }

const char *cp_dtype_name(cp_dtype t) { return (unsigned)t < CP_DTYPE_COUNT ? dtype_names[t] : "?"; }

int cp_dtype_is_float(cp_dtype t) { return t == CP_F32 || t == CP_F64; }

int cp_dtype_is_signed(cp_dtype t)
{
    return t == CP_I8 || t == CP_I16 || t == CP_I32 || t == CP_I64 || cp_dtype_is_float(t);
}

size_t cp_image_samples(const cp_image *img)
{
    return (size_t)img->width * img->height * img->channels * img->planes;
}

int cp_image_create(cp_image **out, int width, int height, int channels, int planes, cp_dtype dtype)
{
    *out = NULL;
    if (width <= 0 || height <= 0 || channels <= 0 || planes <= 0 || (unsigned)dtype >= CP_DTYPE_COUNT)
        return cp_error(CP_EINVAL, "invalid image shape %dx%dx%dx%d", planes, height, width, channels);
    uint64_t n = (uint64_t)width * height * channels * planes;
    if (n > cp_get_max_pixels())
        return cp_error(CP_ELIMIT, "image of %d x %d x %d channels x %d planes exceeds the limit of %llu samples",
                        height, width, channels, planes, (unsigned long long)cp_get_max_pixels());
    cp_image *img = cp_calloc(1, sizeof *img, "image");
    if (!img)
        return CP_ENOMEM;
    img->data = cp_calloc((size_t)n, dtype_sizes[dtype], "image pixels");
    if (!img->data) {
        free(img);
        return CP_ENOMEM;
    }
    img->width = width;
    img->height = height;
    img->channels = channels;
    img->planes = planes;
    img->dtype = dtype;
    *out = img;
    return CP_OK;
}

void cp_image_free(cp_image *img)
{
    if (!img)
        return;
    free(img->data);
    free(img);
}

int cp_image_clone(const cp_image *src, cp_image **out)
{
    int rc = cp_image_create(out, src->width, src->height, src->channels, src->planes, src->dtype);
    if (rc == CP_OK)
        memcpy((*out)->data, src->data, cp_image_samples(src) * cp_dtype_size(src->dtype));
    return rc;
}

double cp_image_get(const cp_image *img, int plane, int y, int x, int c)
{
    size_t i = (((size_t)plane * img->height + y) * img->width + x) * img->channels + c;
    return cp_sample_f64(img->data, img->dtype, i);
}

void cp_image_channel_f32(const cp_image *img, int plane, int c, float *out)
{
    size_t npix = (size_t)img->width * img->height;
    size_t base = (size_t)plane * npix * img->channels + c;
    for (size_t i = 0; i < npix; i++)
        out[i] = (float)cp_sample_f64(img->data, img->dtype, base + i * img->channels);
}

int cp_image_labels_u32(const cp_image *img, const char *name, uint32_t **out)
{
    *out = NULL;
    if (img->channels != 1)
        return cp_error(CP_EFORMAT, "%s: a label image needs one channel, found %d", name, img->channels);
    if (cp_dtype_is_float(img->dtype))
        return cp_error(CP_EFORMAT, "%s: label image has floating-point pixels (%s); labels must be integers",
                        name, cp_dtype_name(img->dtype));
    size_t n = cp_image_samples(img);
    uint32_t *lab = cp_malloc_array(n, sizeof *lab, "labels");
    if (!lab)
        return CP_ENOMEM;
    /* Unsigned types up to 32 bits cannot be out of range: copy directly. */
    if (img->dtype == CP_U8 || img->dtype == CP_U16 || img->dtype == CP_U32) {
        for (size_t i = 0; i < n; i++)
            lab[i] = img->dtype == CP_U8    ? ((const uint8_t *)img->data)[i]
                     : img->dtype == CP_U16 ? ((const uint16_t *)img->data)[i]
                                            : ((const uint32_t *)img->data)[i];
        *out = lab;
        return CP_OK;
    }
    for (size_t i = 0; i < n; i++) {
        double v = cp_sample_f64(img->data, img->dtype, i);
        if (v < 0 || v > 4294967295.0) {
            free(lab);
            return cp_error(CP_EFORMAT, "%s: label value %.0f at pixel (%zu, %zu) is %s", name, v,
                            (i / img->width) % img->height, i % img->width,
                            v < 0 ? "negative" : "larger than 2^32-1");
        }
        lab[i] = (uint32_t)v;
    }
    *out = lab;
    return CP_OK;
}
