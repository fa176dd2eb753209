/* Image I/O: round trips for every writer, real files from the shared data. */
#include <stdint.h>

#include "cellpose/cellpose.h"
#include "test.h"

static const char *tmp(const char *name)
{
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", test_tmp_dir(), name);
    return buf;
}

/* An image whose every sample is distinct and depends on its position. */
static cp_image *pattern(int w, int h, int c, int z, cp_dtype t)
{
    cp_image *img;
    if (cp_image_create(&img, w, h, c, z, t) != CP_OK)
        return NULL;
    size_t n = cp_image_samples(img);
    for (size_t i = 0; i < n; i++) {
        double v = (double)((i * 2654435761u) % 251) + (double)(i % 7);
        switch (t) {
        case CP_U8: ((uint8_t *)img->data)[i] = (uint8_t)v; break;
        case CP_U16: ((uint16_t *)img->data)[i] = (uint16_t)(v * 257); break;
        case CP_U32: ((uint32_t *)img->data)[i] = (uint32_t)(v * 16777259.0); break;
        case CP_I8: ((int8_t *)img->data)[i] = (int8_t)(v - 128); break;
        case CP_I16: ((int16_t *)img->data)[i] = (int16_t)(v * 100 - 12000); break;
        case CP_I32: ((int32_t *)img->data)[i] = (int32_t)(v * 8000000 - 1000000000); break;
        case CP_I64: ((int64_t *)img->data)[i] = (int64_t)(v * 1e15) - 7; break;
        case CP_U64: ((uint64_t *)img->data)[i] = (uint64_t)(v * 1e16) + 3; break;
        case CP_F32: ((float *)img->data)[i] = (float)(v / 3.0 - 20); break;
        case CP_F64: ((double *)img->data)[i] = v / 7.0 - 11; break;
        default: break;
        }
    }
    return img;
}

static int same_image(const cp_image *a, const cp_image *b)
{
    return a && b && a->width == b->width && a->height == b->height && a->channels == b->channels &&
           a->planes == b->planes && a->dtype == b->dtype &&
           memcmp(a->data, b->data, cp_image_samples(a) * cp_dtype_size(a->dtype)) == 0;
}

static void roundtrip(const char *name, int w, int h, int c, int z, cp_dtype t, const cp_write_opts *o)
{
    cp_image *img = pattern(w, h, c, z, t), *back = NULL;
    const char *p = tmp(name);
    CHECK_OK(cp_image_write(p, img, o));
    CHECK_OK(cp_image_read(p, NULL, &back));
    CHECKF(same_image(img, back), "%s: %dx%dx%dx%d %s read back as %dx%dx%dx%d %s", name, z, h, w, c,
           cp_dtype_name(t), back ? back->planes : 0, back ? back->height : 0, back ? back->width : 0,
           back ? back->channels : 0, back ? cp_dtype_name(back->dtype) : "-");
    cp_image_free(img);
    cp_image_free(back);
}

static void test_roundtrips(void)
{
    static const cp_dtype tiff_types[] = {CP_U8, CP_U16, CP_U32, CP_I8, CP_I16, CP_I32, CP_F32, CP_F64, CP_I64, CP_U64};
    char name[64];
    for (size_t i = 0; i < sizeof tiff_types / sizeof tiff_types[0]; i++) {
        snprintf(name, sizeof name, "rt_%s.tif", cp_dtype_name(tiff_types[i]));
        roundtrip(name, 37, 23, 1, 1, tiff_types[i], NULL);
        snprintf(name, sizeof name, "rt_%s_z.tiff", cp_dtype_name(tiff_types[i]));
        roundtrip(name, 19, 11, 2, 3, tiff_types[i], NULL);
        snprintf(name, sizeof name, "rt_%s.npy", cp_dtype_name(tiff_types[i]));
        roundtrip(name, 7, 5, 3, 1, tiff_types[i], NULL);
        snprintf(name, sizeof name, "rt_%s_z.npy.gz", cp_dtype_name(tiff_types[i]));
        roundtrip(name, 7, 5, 1, 6, tiff_types[i], NULL);
    }
    cp_write_opts o = {0};
    for (int comp = CP_COMPRESS_NONE; comp <= CP_COMPRESS_PACKBITS; comp++) {
        o.compression = (cp_compression)comp;
        snprintf(name, sizeof name, "rt_comp%d.tif", comp);
        roundtrip(name, 300, 250, 1, 1, CP_U16, &o);
        snprintf(name, sizeof name, "rt_comp%d_rgb.tif", comp);
        roundtrip(name, 64, 300, 3, 2, CP_U8, &o);
    }
    o.compression = CP_COMPRESS_DEFAULT;
    o.imagej = 1;
    roundtrip("rt_ij_rgb.tif", 40, 30, 3, 1, CP_U8, &o);
    roundtrip("rt_ij_4z.tif", 40, 30, 1, 4, CP_U16, &o);
    roundtrip("rt_ij_2c3z.tif", 40, 30, 2, 3, CP_F32, &o);
    roundtrip("rt_3z.tif", 40, 30, 1, 3, CP_U16, NULL); /* 3 pages must not turn into channels */
    roundtrip("rt_rgba16.tif", 40, 30, 4, 1, CP_U16, NULL);
    for (int c = 1; c <= 4; c++) {
        snprintf(name, sizeof name, "rt_%dc_8.png", c);
        roundtrip(name, 33, 17, c, 1, CP_U8, NULL);
        snprintf(name, sizeof name, "rt_%dc_16.png", c);
        roundtrip(name, 33, 17, c, 1, CP_U16, NULL);
    }
}

static void test_real_files(void)
{
    cp_image *img = NULL;
    CHECK_OK(cp_image_read(shared_path("golden/inputs/cell_00849.png"), NULL, &img));
    CHECK(img && img->width == 512 && img->height == 512 && img->channels == 3 && img->dtype == CP_U8);
    cp_image_free(img);
}

int main(void)
{
    test_roundtrips();
    test_real_files();
    return test_result();
}
