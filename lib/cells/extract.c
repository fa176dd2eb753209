/* One cell's crop as 16-bit pixels (and optionally its 0/255 mask). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/cells.h"
#include "core/internal.h"

void cp_cells_opts_init(cp_cells_opts *o)
{
    memset(o, 0, sizeof *o);
    o->pad_z = -1;
}

int cp_cells_scale(const cp_image *img, const cp_cells_opts *o, cp_cell_scale *s)
{
    memset(s, 0, sizeof *s);
    if (o && o->use_range) {
        if (!isfinite(o->range_lo) || !isfinite(o->range_hi) || !(o->range_hi > o->range_lo))
            return cp_error(CP_EINVAL, "range %g..%g: the upper end must be above the lower end",
                            o->range_lo, o->range_hi);
        s->scaled = 1;
        s->lo = o->range_lo;
        s->hi = o->range_hi;
        return CP_OK;
    }
    if (img->dtype == CP_U8 || img->dtype == CP_U16)
        return CP_OK;
    s->scaled = 1;
    size_t n = cp_image_samples(img);
    double lo = INFINITY, hi = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        double v = cp_sample_f64(img->data, img->dtype, i);
        if (!isfinite(v))
            continue;
        if (v < lo)
            lo = v;
        if (v > hi)
            hi = v;
    }
    if (lo > hi) /* no finite sample at all */
        lo = hi = 0;
    s->lo = lo;
    s->hi = hi;
    return CP_OK;
}

/* The documented mapping (cells.h); kept in one place so tests can rely on it. */
static uint16_t to_u16(double v, const cp_cell_scale *s)
{
    if (!s->scaled)
        return (uint16_t)v;
    if (!(s->hi > s->lo) || isnan(v) || v <= s->lo)
        return 0;
    if (v >= s->hi)
        return 65535;
    double t = floor((v - s->lo) * 65535.0 / (s->hi - s->lo) + 0.5);
    return t >= 65535.0 ? 65535 : t <= 0 ? 0 : (uint16_t)t;
}

int cp_cell_extract(const cp_image *img, const uint32_t *labels, const cp_cell_box *box,
                    const cp_cells_opts *o, const cp_cell_scale *s, cp_image **crop, cp_image **mask)
{
    *crop = NULL;
    if (mask)
        *mask = NULL;
    cp_cell_box cb;
    cp_cell_crop_box(box, o->pad, o->pad_z, img->width, img->height, img->planes, &cb);
    int w = cb.max_col - cb.min_col, h = cb.max_row - cb.min_row, d = cb.max_plane - cb.min_plane;
    int nc = img->channels;
    int rc = cp_image_create(crop, w, h, nc, d, CP_U16);
    if (rc != CP_OK)
        return rc;
    if (mask && (rc = cp_image_create(mask, w, h, 1, d, CP_U8)) != CP_OK) {
        cp_image_free(*crop);
        *crop = NULL;
        return rc;
    }
    uint16_t *out = (*crop)->data;
    uint8_t *mk = mask ? (*mask)->data : NULL;
    const uint32_t lab = box->label;
    for (int zy = 0; zy < d * h; zy++) {
        size_t row = ((size_t)(cb.min_plane + zy / h) * img->height + cb.min_row + zy % h) * img->width + cb.min_col;
        const uint32_t *lrow = labels + row;
        size_t src = row * nc;
        uint16_t *orow = out + (size_t)zy * w * nc;
        for (int x = 0; x < w; x++) {
            int inside = lrow[x] == lab;
            if (mk)
                mk[(size_t)zy * w + x] = inside ? 255 : 0;
            if (!inside && !o->keep_background)
                continue; /* stays 0 from cp_image_create */
            size_t si = src + (size_t)x * nc;
            uint16_t *op = orow + (size_t)x * nc;
            if (!s->scaled && img->dtype == CP_U16) {
                memcpy(op, (const uint16_t *)img->data + si, nc * sizeof *op);
            } else if (!s->scaled && img->dtype == CP_U8) {
                for (int c = 0; c < nc; c++)
                    op[c] = ((const uint8_t *)img->data)[si + c];
            } else {
                for (int c = 0; c < nc; c++)
                    op[c] = to_u16(cp_sample_f64(img->data, img->dtype, si + c), s);
            }
        }
    }
    return CP_OK;
}

void cp_cell_file_name(char *buf, size_t size, uint32_t label, uint32_t max_label, const char *suffix)
{
    int digits = 1;
    for (uint32_t v = max_label; v >= 10; v /= 10)
        digits++;
    if (digits < 4)
        digits = 4;
    snprintf(buf, size, "cell_%0*u%s", digits, (unsigned)label, suffix ? suffix : "");
}
