/* libcellpose images: one in-memory type for every pixel layout we read. */
#ifndef CELLPOSE_IMAGE_H
#define CELLPOSE_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum cp_dtype {
    CP_U8 = 0,
    CP_U16,
    CP_U32,
    CP_I8,
    CP_I16,
    CP_I32,
    CP_I64,
    CP_F32,
    CP_F64,
    CP_U64,
    CP_DTYPE_COUNT
} cp_dtype;

/* Bytes per sample, and a short name ("u16", "f32", ...). */
size_t cp_dtype_size(cp_dtype t);
const char *cp_dtype_name(cp_dtype t);
int cp_dtype_is_float(cp_dtype t);
int cp_dtype_is_signed(cp_dtype t);

/* Pixel layout: data[((plane*height + y)*width + x)*channels + c] — row-major,
 * channels interleaved (numpy Y×X×C), planes (Z or pages) outermost. */
typedef struct cp_image {
    int width, height, channels, planes;
    cp_dtype dtype;
    void *data;     /* owned; freed by cp_image_free */
} cp_image;

/* New zero-filled image. Fails with CP_ELIMIT beyond cp_get_max_pixels(). */
int cp_image_create(cp_image **out, int width, int height, int channels, int planes, cp_dtype dtype);
void cp_image_free(cp_image *img);
/* Samples in the image (width*height*channels*planes). */
size_t cp_image_samples(const cp_image *img);
/* Deep copy. */
int cp_image_clone(const cp_image *src, cp_image **out);

/* One sample as double (exact for every type but 64-bit integers > 2^53). */
double cp_image_get(const cp_image *img, int plane, int y, int x, int c);
/* Copy one channel of one plane into out[height*width] as float32. */
void cp_image_channel_f32(const cp_image *img, int plane, int c, float *out);

/* Validate an image as a label image (one channel, integer type, no negative
 * values, values < 2^32) and return its labels as uint32 in *out
 * (height*width*planes values, owned by the caller). `name` is used in messages. */
int cp_image_labels_u32(const cp_image *img, const char *name, uint32_t **out);

#ifdef __cplusplus
}
#endif
#endif
