#include <stdlib.h>
#include <string.h>

#include "cellpose/imagej.h"
#include "core/internal.h"

int cp_write_outlines_txt(const char *path, const cp_outline *o, size_t count)
{
    cp_atomic a;
    int rc = cp_atomic_open(&a, path);
    if (rc != CP_OK)
        return rc;
    for (size_t i = 0; i < count; i++) {
        if (o[i].n > 4)
            for (size_t k = 0; k < o[i].n; k++)
                fprintf(a.fp, k ? ",%d,%d" : "%d,%d", (int)o[i].xy[2 * k], (int)o[i].xy[2 * k + 1]);
        fputc('\n', a.fp);
    }
    return cp_atomic_commit(&a);
}

enum {
    ROI_HEADER = 64,
    ROI_HEADER2 = 64,
    ROI_VERSION = 226,
    ROI_FREEHAND = 7,
    ROI_OVERLAY_LABELS = 8,
    ROI_OVERLAY_BACKGROUNDS = 32
};

static void put16(uint8_t *p, int v)
{
    p[0] = (uint8_t)((unsigned)v >> 8);
    p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

int cp_roi_encode(const cp_outline *o, const char *name, uint8_t **buf, size_t *len)
{
    return cp_roi_encode_at(o, name, 0, buf, len);
}

int cp_roi_encode_at(const cp_outline *o, const char *name, int position, uint8_t **buf, size_t *len)
{
    *buf = NULL;
    *len = 0;
    if (o->n == 0 || o->n > 65535)
        return cp_error(CP_EINVAL, "ROI of label %u: %zu points (1 to 65535 allowed)", o->label, o->n);
    int32_t x0 = o->xy[0], x1 = o->xy[0], y0 = o->xy[1], y1 = o->xy[1];
    for (size_t i = 1; i < o->n; i++) {
        int32_t x = o->xy[2 * i], y = o->xy[2 * i + 1];
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        if (y > y1) y1 = y;
    }
    if (x0 < 0 || y0 < 0 || x1 + 1 > 32767 || y1 + 1 > 32767)
        return cp_error(CP_EUNSUPPORTED, "ROI of label %u: coordinates beyond ImageJ's 16-bit range", o->label);
    size_t namelen = name ? strlen(name) : 0; /* ASCII names (label numbers) */
    size_t coords = 4 * o->n;
    size_t h2 = ROI_HEADER + coords;
    size_t total = h2 + ROI_HEADER2 + 2 * namelen;
    uint8_t *b = cp_calloc(total, 1, "ROI");
    if (!b)
        return CP_ENOMEM;
    memcpy(b, "Iout", 4);
    put16(b + 4, ROI_VERSION);
    b[6] = ROI_FREEHAND;
    put16(b + 8, y0);
    put16(b + 10, x0);
    put16(b + 12, y1 + 1);
    put16(b + 14, x1 + 1);
    put16(b + 16, (int)o->n);
    put16(b + 50, ROI_OVERLAY_BACKGROUNDS | ROI_OVERLAY_LABELS);
    if (position > 0)
        put32(b + 56, (uint32_t)position); /* ImageJ's POSITION: the stack slice */
    put32(b + 60, (uint32_t)h2);
    for (size_t i = 0; i < o->n; i++) {
        put16(b + ROI_HEADER + 2 * i, o->xy[2 * i] - x0);
        put16(b + ROI_HEADER + 2 * o->n + 2 * i, o->xy[2 * i + 1] - y0);
    }
    if (namelen) {
        put32(b + h2 + 16, (uint32_t)(h2 + ROI_HEADER2)); /* name offset */
        put32(b + h2 + 20, (uint32_t)namelen);            /* in UTF-16 characters */
        for (size_t i = 0; i < namelen; i++)
            put16(b + h2 + ROI_HEADER2 + 2 * i, (unsigned char)name[i]);
    }
    *buf = b;
    *len = total;
    return CP_OK;
}
