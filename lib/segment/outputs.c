/* The files cpseg writes for one image, named as Cellpose names them. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/cellpose.h"
#include "core/internal.h"

static const struct {
    cp_seg_output kind;
    const char *word;   /* in --save lists */
    const char *suffix; /* after NAME */
} kinds[CP_SEG_OUTPUT_KINDS] = {
    {CP_SEG_OUT_MASKS, "masks", "_cp_masks.tif"},     {CP_SEG_OUT_MASKS_NPY, "masks_npy", "_masks.npy"},
    {CP_SEG_OUT_FLOWS, "flows", "_flows.npy"},        {CP_SEG_OUT_OVERLAY, "overlay", "_overlay.png"},
    {CP_SEG_OUT_OUTLINES, "outlines", "_cp_outlines.txt"}, {CP_SEG_OUT_ROIS, "rois", "_rois.zip"},
    {CP_SEG_OUT_PNG, "png", "_cp_masks.png"},
};

static int kind_index(cp_seg_output k)
{
    for (int i = 0; i < CP_SEG_OUTPUT_KINDS; i++)
        if (kinds[i].kind == k)
            return i;
    return -1;
}

int cp_seg_parse_outputs(const char *list, unsigned *flags)
{
    *flags = 0;
    const char *s = list;
    while (*s) {
        const char *e = strchr(s, ',');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        int hit = 0;
        for (int i = 0; i < CP_SEG_OUTPUT_KINDS && !hit; i++)
            if (strlen(kinds[i].word) == n && strncmp(kinds[i].word, s, n) == 0) {
                *flags |= kinds[i].kind;
                hit = 1;
            }
        if (!hit)
            return cp_error(CP_EINVAL, "'%.*s' is not one of masks, masks_npy, flows, overlay, outlines, rois, png",
                            (int)n, s);
        s += n;
        if (*s == ',')
            s++;
    }
    return CP_OK;
}

int cp_seg_output_path(const char *input, const char *savedir, cp_seg_output kind, char **path)
{
    *path = NULL;
    int i = kind_index(kind);
    if (i < 0)
        return cp_error(CP_EINVAL, "unknown output kind %d", (int)kind);
    char *stem = cp_path_stem(input);
    char *dir = savedir ? cp_strdup(savedir) : cp_path_dir(input);
    if (!stem || !dir) {
        free(stem);
        free(dir);
        return CP_ENOMEM;
    }
    size_t n = strlen(stem);
    if (n > 6 && strcmp(stem + n - 6, "_flows") == 0) /* masks from NAME_flows.npy are NAME's */
        stem[n - 6] = 0;
    size_t len = strlen(stem) + strlen(kinds[i].suffix) + 1;
    char *name = cp_malloc(len, "path");
    if (name) {
        snprintf(name, len, "%s%s", stem, kinds[i].suffix);
        *path = cp_path_join(dir, name);
    }
    free(name);
    free(stem);
    free(dir);
    return *path ? CP_OK : CP_ENOMEM;
}

static int planes_of(const cp_seg_result *r)
{
    return r->planes > 1 ? r->planes : 1;
}

/* Outputs that hold one plane only. */
static int refuse_volume(const char *path, const cp_seg_result *r, const char *what)
{
    if (planes_of(r) == 1)
        return CP_OK;
    return cp_error(CP_EUNSUPPORTED, "%s: %s hold one plane; these masks have %d (use the TIFF masks or rois)", path,
                    what, planes_of(r));
}

static int masks_image(const cp_seg_result *r, int allow_u32, cp_image **out)
{
    int u16 = r->ncells < 65536 || !allow_u32;
    int rc = cp_image_create(out, r->width, r->height, 1, planes_of(r), u16 ? CP_U16 : CP_U32);
    if (rc != CP_OK)
        return rc;
    size_t n = (size_t)r->width * r->height * planes_of(r);
    if (u16) {
        uint16_t *d = (*out)->data;
        for (size_t i = 0; i < n; i++)
            d[i] = (uint16_t)r->masks[i];
    } else {
        memcpy((*out)->data, r->masks, n * sizeof *r->masks);
    }
    return CP_OK;
}

static int write_masks(const char *path, const cp_seg_result *r)
{
    cp_image *m;
    int rc = masks_image(r, 1, &m);
    if (rc == CP_OK)
        rc = cp_image_write(path, m, NULL);
    cp_image_free(m);
    return rc;
}

static int write_masks_png(const char *path, const cp_seg_result *r)
{
    if (r->ncells >= 65536)
        return cp_error(CP_EUNSUPPORTED, "%s: %u cells do not fit a 16-bit PNG; use the TIFF masks", path,
                        r->ncells);
    int rc0 = refuse_volume(path, r, "PNG masks");
    if (rc0)
        return rc0;
    cp_image *m;
    int rc = masks_image(r, 0, &m);
    if (rc == CP_OK)
        rc = cp_png_write(path, m);
    cp_image_free(m);
    return rc;
}

static int write_masks_npy(const char *path, const cp_seg_result *r)
{
    cp_image *m;
    int rc = masks_image(r, 1, &m);
    if (rc != CP_OK)
        return rc;
    cp_array a = {2, {(size_t)r->height, (size_t)r->width}, m->dtype, m->data};
    if (planes_of(r) > 1)
        a = (cp_array){3, {(size_t)r->planes, (size_t)r->height, (size_t)r->width}, m->dtype, m->data};
    rc = cp_npy_write(path, &a);
    cp_image_free(m);
    return rc;
}

static int write_flows(const char *path, const cp_seg_result *r)
{
    if (!r->flows)
        return cp_error(CP_EINVAL, "%s: no flows to write", path);
    cp_array a = {3, {3, (size_t)r->height, (size_t)r->width}, CP_F32, r->flows};
    int C = r->flow_channels > 0 ? r->flow_channels : 3;
    if (planes_of(r) > 1 || C != 3)
        a = (cp_array){4, {(size_t)C, (size_t)planes_of(r), (size_t)r->height, (size_t)r->width}, CP_F32, r->flows};
    return cp_npy_write(path, &a);
}

/* One plane's ROIs into the zip; position 0 (an image) or the 1-based plane,
 * which then also names them LABEL_zPLANE. */
static int add_plane_rois(cp_zip *z, const uint32_t *masks, int H, int W, int position)
{
    cp_outline *o;
    size_t n;
    int rc = cp_outlines_list(masks, H, W, &o, &n);
    if (rc != CP_OK)
        return rc;
    for (size_t i = 0; rc == CP_OK && i < n; i++) {
        if (o[i].n <= 4)
            continue; /* as Cellpose: too small to be a polygon */
        char name[48], entry[56];
        if (position > 0)
            snprintf(name, sizeof name, "%u_z%d", o[i].label, position);
        else
            snprintf(name, sizeof name, "%u", o[i].label);
        snprintf(entry, sizeof entry, "%s.roi", name);
        uint8_t *buf;
        size_t len;
        rc = cp_roi_encode_at(&o[i], name, position, &buf, &len);
        if (rc == CP_OK)
            rc = cp_zip_add(z, entry, buf, len);
        free(buf);
    }
    cp_outlines_free(o, n);
    return rc;
}

static int write_rois(const char *path, const cp_seg_result *r)
{
    cp_zip *z;
    int rc = cp_zip_open(&z, path, 1, NULL);
    int Z = planes_of(r);
    size_t hw = (size_t)r->height * r->width;
    for (int k = 0; rc == CP_OK && k < Z; k++)
        rc = add_plane_rois(z, r->masks + k * hw, r->height, r->width, Z > 1 ? k + 1 : 0);
    if (rc == CP_OK)
        rc = cp_zip_close(z);
    else if (z)
        cp_zip_abort(z);
    return rc;
}

static int write_outlines(const char *path, const cp_seg_result *r)
{
    int rc0 = refuse_volume(path, r, "outlines files");
    if (rc0)
        return rc0;
    cp_outline *o;
    size_t n;
    int rc = cp_outlines_list(r->masks, r->height, r->width, &o, &n);
    if (rc == CP_OK)
        rc = cp_write_outlines_txt(path, o, n);
    cp_outlines_free(o, n);
    return rc;
}

/* Maximum projections along Z of a volume's image (every channel) and of
 * its labels (the largest label): the overlay of a volume. */
static int project_volume(const cp_image *img, const uint32_t *masks, cp_image **pimg, uint32_t **pmasks)
{
    int Z = img->planes, C = img->channels;
    size_t hw = (size_t)img->width * img->height;
    int rc = cp_image_create(pimg, img->width, img->height, C, 1, CP_F32);
    if (rc != CP_OK)
        return rc;
    uint32_t *pm = cp_calloc(hw, sizeof *pm, "projection");
    if (!pm) {
        cp_image_free(*pimg);
        *pimg = NULL;
        return CP_ENOMEM;
    }
    float *d = (*pimg)->data;
    for (size_t i = 0; i < hw; i++) {
        for (int c = 0; c < C; c++) {
            double v = cp_sample_f64(img->data, img->dtype, i * C + c);
            for (int z = 1; z < Z; z++) {
                double w = cp_sample_f64(img->data, img->dtype, (z * hw + i) * C + c);
                v = w > v ? w : v;
            }
            d[i * C + c] = (float)v;
        }
        for (int z = 0; z < Z; z++)
            pm[i] = masks[z * hw + i] > pm[i] ? masks[z * hw + i] : pm[i];
    }
    *pmasks = pm;
    return CP_OK;
}

static int write_overlay(const char *path, const cp_seg_result *r, const cp_image *img)
{
    if (!img)
        return cp_error(CP_EINVAL, "%s: an overlay needs the image", path);
    if (img->width != r->width || img->height != r->height || (planes_of(r) > 1 && img->planes != r->planes))
        return cp_error(CP_EINVAL, "%s: image is %dx%dx%d but masks are %dx%dx%d", path, img->planes, img->height,
                        img->width, planes_of(r), r->height, r->width);
    cp_image *proj = NULL;
    uint32_t *pm = NULL;
    int rc = planes_of(r) > 1 ? project_volume(img, r->masks, &proj, &pm) : CP_OK;
    cp_image *rgb = NULL;
    if (rc == CP_OK)
        rc = cp_render_overlay(proj ? proj : img, pm ? pm : r->masks, &rgb);
    if (rc == CP_OK)
        rc = cp_png_write(path, rgb);
    cp_image_free(rgb);
    cp_image_free(proj);
    free(pm);
    return rc;
}

int cp_seg_write_output(cp_seg_output kind, const char *path, const cp_seg_result *r, const cp_image *img)
{
    switch (kind) {
    case CP_SEG_OUT_MASKS: return write_masks(path, r);
    case CP_SEG_OUT_MASKS_NPY: return write_masks_npy(path, r);
    case CP_SEG_OUT_FLOWS: return write_flows(path, r);
    case CP_SEG_OUT_OVERLAY: return write_overlay(path, r, img);
    case CP_SEG_OUT_OUTLINES: return write_outlines(path, r);
    case CP_SEG_OUT_ROIS: return write_rois(path, r);
    case CP_SEG_OUT_PNG: return write_masks_png(path, r);
    }
    return cp_error(CP_EINVAL, "unknown output kind %d", (int)kind);
}

/* Scale one channel of plane 0 to 0..255 between its 1st and 99th percentiles. */
static int channel_u8(const cp_image *img, int c, uint8_t *out)
{
    size_t n = (size_t)img->width * img->height;
    float *v = cp_malloc_array(n, sizeof *v, "overlay channel");
    float *s = cp_malloc_array(n, sizeof *s, "overlay channel");
    if (!v || !s) {
        free(v);
        free(s);
        return CP_ENOMEM;
    }
    cp_image_channel_f32(img, 0, c, v);
    memcpy(s, v, n * sizeof *s);
    double lo = cp_percentile_f32(s, n, 1.0), hi = cp_percentile_f32(s, n, 99.0);
    for (size_t i = 0; i < n; i++) {
        double t = hi > lo ? (v[i] - lo) / (hi - lo) : 0.0;
        t = t < 0 ? 0 : t > 1 ? 1 : t;
        out[i] = (uint8_t)(t * 255.0 + 0.5);
    }
    free(v);
    free(s);
    return CP_OK;
}

/* A well-spread, reproducible colour per label: golden-ratio hues. */
static void label_colour(uint32_t label, uint8_t rgb[3])
{
    double h = fmod(label * 0.6180339887498949, 1.0) * 6.0, s = 0.75, v = 1.0;
    int i = (int)h;
    double f = h - i, p = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f));
    double r, g, b;
    switch (i % 6) {
    case 0: r = v, g = t, b = p; break;
    case 1: r = q, g = v, b = p; break;
    case 2: r = p, g = v, b = t; break;
    case 3: r = p, g = q, b = v; break;
    case 4: r = t, g = p, b = v; break;
    default: r = v, g = p, b = q; break;
    }
    rgb[0] = (uint8_t)(r * 255 + 0.5);
    rgb[1] = (uint8_t)(g * 255 + 0.5);
    rgb[2] = (uint8_t)(b * 255 + 0.5);
}

int cp_render_overlay(const cp_image *img, const uint32_t *masks, cp_image **rgb)
{
    *rgb = NULL;
    size_t n = (size_t)img->width * img->height;
    int rc = cp_image_create(rgb, img->width, img->height, 3, 1, CP_U8);
    if (rc != CP_OK)
        return rc;
    uint8_t *base = cp_malloc_array(n, 3, "overlay");
    uint8_t *edge = cp_malloc(n, "overlay outlines");
    if (!base || !edge) {
        rc = CP_ENOMEM;
        goto done;
    }
    int colour = img->channels >= 3;
    for (int c = 0; c < (colour ? 3 : 1) && rc == CP_OK; c++)
        rc = channel_u8(img, c, base + c * n);
    if (rc == CP_OK)
        rc = cp_masks_to_outlines(masks, img->height, img->width, edge);
    if (rc != CP_OK)
        goto done;
    uint8_t *o = (*rgb)->data;
    for (size_t i = 0; i < n; i++) {
        for (int c = 0; c < 3; c++)
            o[3 * i + c] = base[(colour ? c : 0) * n + i];
        if (edge[i]) {
            o[3 * i] = o[3 * i + 1] = o[3 * i + 2] = 255;
        } else if (masks[i]) {
            uint8_t col[3];
            label_colour(masks[i], col);
            for (int c = 0; c < 3; c++)
                o[3 * i + c] = (uint8_t)((o[3 * i + c] + col[c] + 1) / 2);
        }
    }
done:
    free(base);
    free(edge);
    if (rc != CP_OK) {
        cp_image_free(*rgb);
        *rgb = NULL;
    }
    return rc;
}
