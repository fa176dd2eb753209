/* PNG via libpng: 8/16-bit gray, gray+alpha, RGB, RGBA; palettes expand to
 * RGB, 1/2/4-bit gray unpacks to one byte per sample (values kept). */
#include <errno.h>
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/io_internal.h"

/* State reachable from libpng's callbacks and after a longjmp. */
typedef struct png_ctx {
    const char *path;
    char msg[256];
    cp_image *img;
    png_bytep *rows;
} png_ctx;

static void png_on_error(png_structp png, png_const_charp msg)
{
    png_ctx *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg)
{
    (void)png, (void)msg;
}

static int png_decode(png_ctx *c, FILE *f, png_structp png, png_infop info)
{
    png_init_io(png, f);
    png_set_user_limits(png, 0x7fffffff, 0x7fffffff);
    png_read_info(png, info);
    png_uint_32 w, h;
    int depth, color, interlace;
    png_get_IHDR(png, info, &w, &h, &depth, &color, &interlace, NULL, NULL);
    int native_channels = png_get_channels(png, info);
    if (color == PNG_COLOR_TYPE_PALETTE)
        png_set_palette_to_rgb(png);
    if (depth < 8 && color != PNG_COLOR_TYPE_PALETTE)
        png_set_packing(png); /* one byte per sample, values unscaled */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (depth == 16)
        png_set_swap(png); /* PNG stores 16-bit samples big-endian */
#endif
    if (interlace != PNG_INTERLACE_NONE)
        png_set_interlace_handling(png);
    png_read_update_info(png, info);
    int channels = png_get_channels(png, info);
    int out_depth = png_get_bit_depth(png, info);
    uint64_t total = (uint64_t)w * h * (uint64_t)channels;
    if (total > cp_get_max_pixels())
        return cp_error(CP_ELIMIT, "%s: PNG of %u x %u x %d channels exceeds the limit of %llu samples", c->path, h,
                        w, channels, (unsigned long long)cp_get_max_pixels());
    /* the filtered rows inflate from the file's IDAT, at most CP_DEFLATE_MAX_EXPANSION-fold: a
       header claiming more is corrupt, refused before allocating */
    struct stat st;
    double stored = (double)h * (1 + ceil((double)w * native_channels * depth / 8));
    if (fstat(fileno(f), &st) == 0 && stored > (double)st.st_size * CP_DEFLATE_MAX_EXPANSION)
        return cp_error(CP_EFORMAT, "%s: PNG header claims %u x %u pixels, more than the file's %lld bytes can hold: "
                        "corrupt", c->path, w, h, (long long)st.st_size);
    int rc = cp_image_create(&c->img, (int)w, (int)h, channels, 1, out_depth == 16 ? CP_U16 : CP_U8);
    if (rc)
        return cp_error(rc, "%s: %s", c->path, cp_errmsg());
    size_t row_bytes = png_get_rowbytes(png, info);
    if (row_bytes != (size_t)w * channels * (out_depth == 16 ? 2 : 1))
        return cp_error(CP_EUNSUPPORTED, "%s: unexpected PNG row layout", c->path);
    c->rows = cp_malloc_array(h, sizeof *c->rows, "PNG rows");
    if (!c->rows)
        return CP_ENOMEM;
    for (png_uint_32 y = 0; y < h; y++)
        c->rows[y] = (png_bytep)c->img->data + (size_t)y * row_bytes;
    png_read_image(png, c->rows);
    png_read_end(png, NULL);
    return CP_OK;
}

int cp_png_read(const char *path, cp_image **out)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return cp_error(CP_EIO, "%s: cannot open: %s", path, strerror(errno));
    png_ctx *c = cp_calloc(1, sizeof *c, "PNG reader");
    if (!c) {
        fclose(f);
        return CP_ENOMEM;
    }
    c->path = path;
    int rc;
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, c, png_on_error, png_on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        rc = cp_error(CP_ENOMEM, "%s: cannot start PNG decoder", path);
    } else if (setjmp(png_jmpbuf(png))) {
        rc = cp_error(CP_EFORMAT, "%s: bad PNG (%s)", path, c->msg[0] ? c->msg : "corrupt or truncated file");
    } else {
        rc = png_decode(c, f, png, info);
    }
    png_destroy_read_struct(&png, &info, NULL);
    fclose(f);
    free(c->rows);
    if (rc == CP_OK)
        *out = c->img;
    else
        cp_image_free(c->img);
    free(c);
    return rc;
}

static int png_encode(png_ctx *c, FILE *f, png_structp png, png_infop info, const cp_image *img)
{
    static const int color_types[5] = {0, PNG_COLOR_TYPE_GRAY, PNG_COLOR_TYPE_GRAY_ALPHA, PNG_COLOR_TYPE_RGB,
                                       PNG_COLOR_TYPE_RGBA};
    png_init_io(png, f);
    int depth = img->dtype == CP_U16 ? 16 : 8;
    png_set_IHDR(png, info, (png_uint_32)img->width, (png_uint_32)img->height, depth, color_types[img->channels],
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (depth == 16)
        png_set_swap(png);
#endif
    size_t row_bytes = (size_t)img->width * img->channels * (depth / 8);
    c->rows = cp_malloc_array((size_t)img->height, sizeof *c->rows, "PNG rows");
    if (!c->rows)
        return CP_ENOMEM;
    for (int y = 0; y < img->height; y++)
        c->rows[y] = (png_bytep)img->data + (size_t)y * row_bytes;
    png_write_image(png, c->rows);
    png_write_end(png, NULL);
    return CP_OK;
}

int cp_png_write(const char *path, const cp_image *img)
{
    if (!img || !img->data || img->width <= 0 || img->height <= 0)
        return cp_error(CP_EINVAL, "%s: invalid image", path);
    if (img->dtype != CP_U8 && img->dtype != CP_U16)
        return cp_error(CP_EUNSUPPORTED, "%s: PNG holds 8- or 16-bit unsigned pixels, not %s (write a .tif)", path,
                        cp_dtype_name(img->dtype));
    if (img->channels < 1 || img->channels > 4 || img->planes != 1)
        return cp_error(CP_EUNSUPPORTED, "%s: PNG holds one plane of 1-4 channels, not %d plane(s) of %d (write a .tif)",
                        path, img->planes, img->channels);
    cp_atomic at;
    int rc = cp_atomic_open(&at, path);
    if (rc)
        return rc;
    png_ctx *c = cp_calloc(1, sizeof *c, "PNG writer");
    if (!c) {
        cp_atomic_abort(&at);
        return CP_ENOMEM;
    }
    c->path = path;
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, c, png_on_error, png_on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        rc = cp_error(CP_ENOMEM, "%s: cannot start PNG encoder", path);
    } else if (setjmp(png_jmpbuf(png))) {
        rc = cp_error(CP_EIO, "%s: cannot write PNG (%s)", path, c->msg);
    } else {
        rc = png_encode(c, at.fp, png, info, img);
    }
    png_destroy_write_struct(&png, &info);
    free(c->rows);
    free(c);
    if (rc) {
        cp_atomic_abort(&at);
        return rc;
    }
    return cp_atomic_commit(&at);
}
