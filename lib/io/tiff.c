/* TIFF via libtiff: every sample layout and compression libtiff decodes,
 * multi-page stacks as channels or planes, ImageJ hyperstacks. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <tiffio.h>

#include "cellpose/table.h" /* cp_format_double: ImageJ writes numbers as Python does */
#include "io/io_internal.h"

/* ---- silent libtiff: messages go to a per-thread buffer ----------------- */

static _Thread_local char tiff_msg[512];

static void tiff_on_error(const char *module, const char *fmt, va_list ap)
{
    (void)module;
    vsnprintf(tiff_msg, sizeof tiff_msg, fmt, ap);
    for (char *p = tiff_msg; *p; p++) /* one-line messages */
        if (*p == '\n' || *p == '\r')
            *p = ' ';
}

static void tiff_on_warning(const char *module, const char *fmt, va_list ap)
{
    (void)module, (void)fmt, (void)ap;
}

static pthread_once_t tiff_handlers_once = PTHREAD_ONCE_INIT;
static void install_handlers(void)
{
    TIFFSetErrorHandler(tiff_on_error);
    TIFFSetWarningHandler(tiff_on_warning);
}

static void tiff_quiet(void)
{
    pthread_once(&tiff_handlers_once, install_handlers);
    tiff_msg[0] = 0;
}

/* cp_error with libtiff's own explanation appended when it gave one. */
static int tiff_fail(int code, const char *path, const char *what)
{
    if (tiff_msg[0])
        return cp_error(code, "%s: %s (%s)", path, what, tiff_msg);
    return cp_error(code, "%s: %s", path, what);
}

/* ---- page description -------------------------------------------------- */

typedef enum { MODE_RAW, MODE_RGBA } page_mode;

typedef struct page_info {
    toff_t offset; /* of its IFD: seeking there is O(1), TIFFSetDirectory walks the chain */
    uint32_t w, h;
    uint16_t spp, bps, fmt, photometric, planar, compression;
    int tiled;
    page_mode mode;
    int channels; /* samples per pixel we deliver */
    cp_dtype dtype;
} page_info;

static int dtype_for(const char *path, const page_info *p, cp_dtype *out)
{
    int fmt = p->fmt;
    if (fmt == SAMPLEFORMAT_VOID)
        fmt = SAMPLEFORMAT_UINT;
    if (p->bps < 8 && (p->bps == 1 || p->bps == 2 || p->bps == 4) && fmt == SAMPLEFORMAT_UINT) {
        *out = CP_U8;
        return CP_OK;
    }
    if (fmt == SAMPLEFORMAT_UINT || fmt == SAMPLEFORMAT_INT) {
        int s = fmt == SAMPLEFORMAT_INT;
        switch (p->bps) {
        case 8: *out = s ? CP_I8 : CP_U8; return CP_OK;
        case 16: *out = s ? CP_I16 : CP_U16; return CP_OK;
        case 32: *out = s ? CP_I32 : CP_U32; return CP_OK;
        case 64: *out = s ? CP_I64 : CP_U64; return CP_OK;
        }
    } else if (fmt == SAMPLEFORMAT_IEEEFP) {
        switch (p->bps) {
        case 16: *out = CP_F32; return CP_OK; /* half floats widen */
        case 32: *out = CP_F32; return CP_OK;
        case 64: *out = CP_F64; return CP_OK;
        }
    } else {
        return cp_error(CP_EUNSUPPORTED, "%s: TIFF sample format %d is not supported (complex or unknown)", path, fmt);
    }
    return cp_error(CP_EUNSUPPORTED, "%s: TIFF with %d-bit %s samples is not supported", path, p->bps,
                    fmt == SAMPLEFORMAT_IEEEFP ? "float" : "integer");
}

static int describe_page(const char *path, TIFF *t, page_info *p)
{
    memset(p, 0, sizeof *p);
    p->offset = TIFFCurrentDirOffset(t);
    uint16_t v16;
    if (!TIFFGetField(t, TIFFTAG_IMAGEWIDTH, &p->w) || !TIFFGetField(t, TIFFTAG_IMAGELENGTH, &p->h))
        return tiff_fail(CP_EFORMAT, path, "TIFF page without image size");
    if (p->w == 0 || p->h == 0)
        return cp_error(CP_EFORMAT, "%s: TIFF page of size %ux%u", path, p->w, p->h);
    TIFFGetFieldDefaulted(t, TIFFTAG_SAMPLESPERPIXEL, &p->spp);
    TIFFGetFieldDefaulted(t, TIFFTAG_BITSPERSAMPLE, &p->bps);
    TIFFGetFieldDefaulted(t, TIFFTAG_SAMPLEFORMAT, &p->fmt);
    TIFFGetFieldDefaulted(t, TIFFTAG_PLANARCONFIG, &p->planar);
    TIFFGetFieldDefaulted(t, TIFFTAG_COMPRESSION, &p->compression);
    if (!TIFFGetField(t, TIFFTAG_PHOTOMETRIC, &v16))
        v16 = p->spp >= 3 ? PHOTOMETRIC_RGB : PHOTOMETRIC_MINISBLACK;
    p->photometric = v16;
    p->tiled = TIFFIsTiled(t);
    if (p->spp == 0 || p->spp > 64)
        return cp_error(CP_EUNSUPPORTED, "%s: TIFF with %u samples per pixel is not supported", path, p->spp);
    if (p->compression != COMPRESSION_NONE && !TIFFIsCODECConfigured(p->compression))
        return cp_error(CP_EUNSUPPORTED, "%s: TIFF compression %u is not available in this libtiff", path,
                        p->compression);
    p->mode = MODE_RAW;
    if (p->photometric == PHOTOMETRIC_YCBCR) {
        if (p->compression == COMPRESSION_JPEG)
            TIFFSetField(t, TIFFTAG_JPEGCOLORMODE, JPEGCOLORMODE_RGB); /* libjpeg converts */
        else
            p->mode = MODE_RGBA; /* subsampled YCbCr: let libtiff's RGBA path convert */
    }
    if (p->compression == COMPRESSION_OJPEG)
        p->mode = MODE_RGBA;
    if (p->mode == MODE_RGBA) {
        char emsg[1024];
        if (!TIFFRGBAImageOK(t, emsg))
            return cp_error(CP_EUNSUPPORTED, "%s: cannot decode this TIFF layout (%s)", path, emsg);
        p->channels = p->spp >= 4 ? 4 : 3;
        p->dtype = CP_U8;
        return CP_OK;
    }
    p->channels = p->spp;
    return dtype_for(path, p, &p->dtype);
}

static int same_layout(const page_info *a, const page_info *b)
{
    return a->w == b->w && a->h == b->h && a->channels == b->channels && a->dtype == b->dtype;
}

/* ---- decoding ---------------------------------------------------------- */

static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            bits = sign | exp << 23 | (man & 0x3ff) << 13;
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | man << 13;
    } else {
        bits = sign | (exp + 127 - 15) << 23 | man << 13;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Where one page's decoded rows go: the window wy0..wy0+wh, wx0..wx0+ww
 * of the page (all of it for whole reads) lands at row 0, column 0 of the
 * image's plane. */
typedef struct sink {
    const page_info *p;
    cp_image *img;
    int plane, chan0;
    uint32_t wy0, wx0, wh, ww;
} sink;

static int whole_page(const sink *k) { return k->wy0 == 0 && k->wx0 == 0 && k->wh == k->p->h && k->ww == k->p->w; }

/* Copy the pixels x0..x0+n of one decoded page row y (samples `nsamp` per
 * pixel, for sample plane s when planar) that fall in the window. */
static void put_row(const sink *k, const unsigned char *src, uint32_t y, uint32_t x0, uint32_t n, int nsamp, int s)
{
    const page_info *p = k->p;
    cp_image *img = k->img;
    if (y < k->wy0 || y - k->wy0 >= k->wh)
        return;
    uint32_t ia = x0 < k->wx0 ? k->wx0 - x0 : 0;
    uint32_t ib = x0 + n > k->wx0 + k->ww ? (k->wx0 + k->ww > x0 ? k->wx0 + k->ww - x0 : 0) : n;
    if (ia >= ib)
        return;
    size_t es = cp_dtype_size(img->dtype);
    size_t C = (size_t)img->channels;
    unsigned char *dst = (unsigned char *)img->data +
                         ((((size_t)k->plane * img->height + (y - k->wy0)) * img->width + (x0 + ia - k->wx0)) * C +
                          (size_t)k->chan0 + s) * es;
    /* pixel i of the row (ia <= i < ib) goes to dst + (i - ia)*C*es */
    if (p->bps < 8) {
        unsigned mask = (1u << p->bps) - 1;
        for (uint32_t i = ia; i < ib; i++)
            for (int c = 0; c < nsamp; c++) {
                size_t bit = ((size_t)i * nsamp + c) * p->bps;
                dst[(i - ia) * C + c] = (unsigned char)((src[bit >> 3] >> (8 - p->bps - (bit & 7))) & mask);
            }
        return;
    }
    if (p->bps == 16 && p->fmt == SAMPLEFORMAT_IEEEFP) {
        for (uint32_t i = ia; i < ib; i++)
            for (int c = 0; c < nsamp; c++) {
                uint16_t h;
                memcpy(&h, src + ((size_t)i * nsamp + c) * 2, 2);
                float f = half_to_float(h);
                memcpy(dst + ((size_t)(i - ia) * C + c) * 4, &f, 4);
            }
        return;
    }
    if ((size_t)nsamp == C) {
        memcpy(dst, src + (size_t)ia * C * es, (size_t)(ib - ia) * C * es);
        return;
    }
    for (uint32_t i = ia; i < ib; i++)
        memcpy(dst + (size_t)(i - ia) * C * es, src + (size_t)i * nsamp * es, (size_t)nsamp * es);
}

static int decode_strips(const char *path, TIFF *t, const sink *k, int nplanes, int nsamp)
{
    const page_info *p = k->p;
    uint32_t rps = p->h;
    TIFFGetFieldDefaulted(t, TIFFTAG_ROWSPERSTRIP, &rps);
    if (rps == 0 || rps > p->h)
        rps = p->h;
    uint32_t per_plane = (p->h + rps - 1) / rps;
    if ((uint64_t)TIFFNumberOfStrips(t) < (uint64_t)per_plane * nplanes)
        return cp_error(CP_EFORMAT, "%s: TIFF has %u strips, expected %u", path, (unsigned)TIFFNumberOfStrips(t),
                        per_plane * nplanes);
    tmsize_t row_bytes = TIFFScanlineSize(t);
    tmsize_t strip_size = TIFFStripSize(t);
    if (row_bytes <= 0 || strip_size <= 0 || (uint64_t)row_bytes * rps > (uint64_t)strip_size)
        return tiff_fail(CP_EFORMAT, path, "bad TIFF strip size");
    /* Rows laid out exactly as the image's: decode straight into it. */
    size_t es = cp_dtype_size(k->img->dtype);
    int direct = whole_page(k) && nplanes == 1 && nsamp == k->img->channels && p->bps == 8 * es &&
                 (size_t)row_bytes == (size_t)p->w * (size_t)nsamp * es;
    unsigned char *buf = direct ? NULL : cp_malloc((size_t)strip_size, "TIFF strip");
    if (!direct && !buf)
        return CP_ENOMEM;
    int rc = CP_OK;
    for (int s = 0; s < nplanes && rc == CP_OK; s++)
        for (uint32_t i = 0; i < per_plane; i++) {
            uint32_t y0 = i * rps, rows = p->h - y0 < rps ? p->h - y0 : rps;
            if (y0 + rows <= k->wy0 || y0 >= k->wy0 + k->wh)
                continue; /* outside the window: not decoded */
            tmsize_t want = row_bytes * (tmsize_t)rows;
            unsigned char *dst = direct ? (unsigned char *)k->img->data +
                                              ((size_t)k->plane * p->h + y0) * (size_t)row_bytes
                                        : buf;
            tmsize_t got = TIFFReadEncodedStrip(t, (uint32_t)s * per_plane + i, dst, direct ? want : strip_size);
            if (got < want) {
                rc = tiff_fail(CP_EFORMAT, path, "cannot decode TIFF strip (corrupt or truncated file)");
                break;
            }
            for (uint32_t r = 0; !direct && r < rows; r++)
                put_row(k, buf + (size_t)r * row_bytes, y0 + r, 0, p->w, nsamp, s);
        }
    free(buf);
    return rc;
}

static int decode_tiles(const char *path, TIFF *t, const sink *k, int nplanes, int nsamp)
{
    const page_info *p = k->p;
    uint32_t tw = 0, th = 0;
    TIFFGetField(t, TIFFTAG_TILEWIDTH, &tw);
    TIFFGetField(t, TIFFTAG_TILELENGTH, &th);
    if (tw == 0 || th == 0)
        return cp_error(CP_EFORMAT, "%s: TIFF tile size %ux%u", path, tw, th);
    uint64_t cap = (uint64_t)p->w * p->h * 4 > (1u << 24) ? (uint64_t)p->w * p->h * 4 : (1u << 24);
    if ((uint64_t)tw * th > cap)
        return cp_error(CP_EFORMAT, "%s: TIFF tiles of %ux%u are implausibly large for a %ux%u image", path, tw, th,
                        p->w, p->h);
    tmsize_t tile_size = TIFFTileSize(t), row_bytes = TIFFTileRowSize(t);
    if (tile_size <= 0 || row_bytes <= 0 || (uint64_t)row_bytes * th > (uint64_t)tile_size)
        return tiff_fail(CP_EFORMAT, path, "bad TIFF tile size");
    uint64_t across = (p->w + (uint64_t)tw - 1) / tw, down = (p->h + (uint64_t)th - 1) / th;
    if ((uint64_t)TIFFNumberOfTiles(t) < across * down * nplanes)
        return cp_error(CP_EFORMAT, "%s: TIFF has %u tiles, expected %llu", path, (unsigned)TIFFNumberOfTiles(t),
                        (unsigned long long)(across * down * nplanes));
    unsigned char *buf = cp_malloc((size_t)tile_size, "TIFF tile");
    if (!buf)
        return CP_ENOMEM;
    int rc = CP_OK;
    for (int s = 0; s < nplanes && rc == CP_OK; s++)
        for (uint32_t y = 0; y < p->h && rc == CP_OK; y += th)
            for (uint32_t x = 0; x < p->w; x += tw) {
                if (y + th <= k->wy0 || y >= k->wy0 + k->wh || x + tw <= k->wx0 || x >= k->wx0 + k->ww)
                    continue; /* outside the window: not decoded */
                tmsize_t got = TIFFReadEncodedTile(t, TIFFComputeTile(t, x, y, 0, (uint16_t)s), buf, tile_size);
                if (got < tile_size) {
                    rc = tiff_fail(CP_EFORMAT, path, "cannot decode TIFF tile (corrupt or truncated file)");
                    break;
                }
                uint32_t rows = p->h - y < th ? p->h - y : th, cols = p->w - x < tw ? p->w - x : tw;
                for (uint32_t r = 0; r < rows; r++)
                    put_row(k, buf + (size_t)r * row_bytes, y + r, x, cols, nsamp, s);
            }
    free(buf);
    return rc;
}

static int decode_rgba(const char *path, TIFF *t, const sink *k)
{
    const page_info *p = k->p;
    uint32_t *raster = cp_malloc_array((size_t)p->w * p->h, sizeof *raster, "TIFF RGBA raster");
    if (!raster)
        return CP_ENOMEM;
    if (!TIFFReadRGBAImageOriented(t, p->w, p->h, raster, ORIENTATION_TOPLEFT, 0)) {
        free(raster);
        return tiff_fail(CP_EFORMAT, path, "cannot decode TIFF image (corrupt or truncated file)");
    }
    cp_image *img = k->img;
    for (uint32_t y = 0; y < k->wh; y++)
        for (uint32_t x = 0; x < k->ww; x++) {
            uint32_t v = raster[(size_t)(y + k->wy0) * p->w + x + k->wx0];
            unsigned char px[4] = {TIFFGetR(v), TIFFGetG(v), TIFFGetB(v), TIFFGetA(v)};
            unsigned char *d = (unsigned char *)img->data +
                               (((size_t)k->plane * img->height + y) * img->width + x) * img->channels + k->chan0;
            memcpy(d, px, (size_t)p->channels);
        }
    free(raster);
    return CP_OK;
}

static int decode_page(const char *path, TIFF *t, const sink *k)
{
    const page_info *p = k->p;
    if (!TIFFSetSubDirectory(t, p->offset))
        return tiff_fail(CP_EFORMAT, path, "cannot read TIFF page");
    if (p->photometric == PHOTOMETRIC_YCBCR && p->compression == COMPRESSION_JPEG)
        TIFFSetField(t, TIFFTAG_JPEGCOLORMODE, JPEGCOLORMODE_RGB);
    if (p->mode == MODE_RGBA)
        return decode_rgba(path, t, k);
    int separate = p->planar == PLANARCONFIG_SEPARATE && p->spp > 1;
    int nplanes = separate ? p->spp : 1, nsamp = separate ? 1 : p->spp;
    return p->tiled ? decode_tiles(path, t, k, nplanes, nsamp) : decode_strips(path, t, k, nplanes, nsamp);
}

/* ---- page arrangement -------------------------------------------------- */
/* Pages become (plane, channel) by the first of: ImageJ hyperstack counts,
 * OME-XML sizes and dimension order, a tifffile {"shape": [Z, C, Y, X]}
 * description, and the page-count rule of cp_pages. */

typedef struct layout {
    int channels, planes;     /* of the image */
    int sizes[3];             /* page index digits, fastest first ... */
    char axes[3];             /* ... and what each is: 'C', 'Z' or 'T' */
} layout;

/* "key=value" at the start of a line of an ImageJ description. */
static int imagej_value(const char *desc, const char *key)
{
    size_t n = strlen(key);
    for (const char *p = desc; (p = strstr(p, key)) != NULL; p += n)
        if ((p == desc || p[-1] == '\n') && p[n] == '=') {
            long v = strtol(p + n + 1, NULL, 10);
            return v > 0 && v < INT_MAX ? (int)v : 0;
        }
    return 0;
}

/* key="value" inside [tag, end). */
static int xml_attr_int(const char *tag, const char *end, const char *key)
{
    size_t n = strlen(key);
    for (const char *p = tag; (p = strstr(p, key)) != NULL && p < end; p += n)
        if (p[-1] == ' ' && p[n] == '=' && p[n + 1] == '"') {
            long v = strtol(p + n + 2, NULL, 10);
            return v > 0 && v < INT_MAX ? (int)v : 0;
        }
    return 0;
}

static int set_czt(layout *L, const char *order, int c, int z, int t, int spp, int n)
{
    if (c > n || z > n || t > n || (int64_t)c * z * t != n) /* n is small: no overflow */
        return 0;
    for (int i = 0; i < 3; i++) {
        L->axes[i] = order[i];
        L->sizes[i] = order[i] == 'C' ? c : order[i] == 'Z' ? z : t;
    }
    L->channels = c * spp;
    L->planes = z * t;
    return 1;
}

static int from_imagej(layout *L, const char *desc, int spp, int n)
{
    if (strncmp(desc, "ImageJ=", 7) != 0)
        return 0;
    int c = imagej_value(desc, "channels"), z = imagej_value(desc, "slices"), t = imagej_value(desc, "frames");
    if (!c && !z && !t)
        z = imagej_value(desc, "images"); /* a plain ImageJ stack is slices */
    return set_czt(L, "CZT", c ? c : 1, z ? z : 1, t ? t : 1, spp, n);
}

static int from_ome(layout *L, const char *desc, int spp, int n)
{
    const char *px = strstr(desc, "Pixels ");
    if (!strstr(desc, "<OME") && !strstr(desc, ":OME"))
        return 0;
    if (!px || px == desc || (px[-1] != '<' && px[-1] != ':') || strstr(px + 7, "Pixels ")) /* one series only */
        return 0;
    const char *end = strchr(px, '>');
    if (!end)
        return 0;
    int c = xml_attr_int(px, end, "SizeC"), z = xml_attr_int(px, end, "SizeZ"), t = xml_attr_int(px, end, "SizeT");
    const char *o = strstr(px, "DimensionOrder=\"");
    if (!c || !z || !t || !o || o > end || strncmp(o + 16, "XY", 2) != 0)
        return 0;
    char order[4] = {o[18], o[19], o[20], 0};
    if (!strchr(order, 'C') || !strchr(order, 'Z') || !strchr(order, 'T'))
        return 0;
    if (spp > 1) { /* RGB pages: SizeC counts samples */
        if (c % spp)
            return 0;
        c /= spp;
    }
    return set_czt(L, order, c, z, t, spp, n);
}

/* tifffile's default description: {"shape": [Z, C, Y, X]}. Only the 4-D
 * (two page axes) case says more than the page count. */
static int from_tifffile(layout *L, const char *desc, const page_info *p0, int n)
{
    const char *s = strstr(desc, "\"shape\": [");
    if (desc[0] != '{' || !s)
        return 0;
    long d[8];
    int nd = 0;
    for (s += 10; nd < 8;) {
        char *e;
        d[nd++] = strtol(s, &e, 10);
        if (e == s)
            return 0;
        s = e;
        while (*s == ' ' || *s == ',')
            s++;
        if (*s == ']')
            break;
    }
    int tail = p0->channels > 1 ? 3 : 2; /* Y, X (, S) */
    if (nd != tail + 2 || d[2] != (long)p0->h || d[3] != (long)p0->w)
        return 0;
    if (d[0] <= 0 || d[1] <= 0 || d[0] > INT_MAX || d[1] > INT_MAX)
        return 0;
    return set_czt(L, "CZT", (int)d[1], (int)d[0], 1, p0->channels, n);
}

static layout arrange(TIFF *t, const page_info *pages, int n, cp_pages mode)
{
    int spp = pages[0].channels;
    layout L = {spp, n, {1, n, 1}, {'C', 'Z', 'T'}}; /* pages as planes */
    if (n == 1 || mode == CP_PAGES_PLANES)
        return L;
    if (mode == CP_PAGES_CHANNELS) {
        set_czt(&L, "CZT", n, 1, 1, spp, n);
        return L;
    }
    const char *desc = NULL;
    if (TIFFSetSubDirectory(t, pages[0].offset) && TIFFGetField(t, TIFFTAG_IMAGEDESCRIPTION, &desc) && desc &&
        (from_imagej(&L, desc, spp, n) || from_ome(&L, desc, spp, n) || from_tifffile(&L, desc, &pages[0], n)))
        return L;
    if (spp == 1 && n <= 4)
        set_czt(&L, "CZT", n, 1, 1, spp, n);
    return L;
}

/* Where page i goes: its channel offset and plane. */
static void page_place(const layout *L, int i, int spp, int *plane, int *chan0)
{
    int idx[3];
    for (int k = 0; k < 3; k++) {
        idx[k] = i % L->sizes[k];
        i /= L->sizes[k];
    }
    int c = 0, z = 0, t = 0, nz = 1;
    for (int k = 0; k < 3; k++) {
        if (L->axes[k] == 'C')
            c = idx[k];
        else if (L->axes[k] == 'Z')
            z = idx[k], nz = L->sizes[k];
        else
            t = idx[k];
    }
    *plane = t * nz + z;
    *chan0 = c * spp;
}

/* ---- reading ----------------------------------------------------------- */

#define TIFF_MAX_PAGES 1000000

static int list_pages(const char *path, TIFF *t, cp_pages mode, page_info **out, int *count)
{
    page_info *pages = NULL;
    int n = 0, cap = 0, rc = CP_OK;
    do {
        uint32_t sub = 0;
        if (n > 0 && TIFFGetField(t, TIFFTAG_SUBFILETYPE, &sub) && (sub & FILETYPE_REDUCEDIMAGE))
            continue; /* thumbnails and pyramid levels are not data */
        if (n == TIFF_MAX_PAGES) {
            rc = cp_error(CP_ELIMIT, "%s: TIFF has more than %d pages", path, TIFF_MAX_PAGES);
            break;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            page_info *np = realloc(pages, (size_t)cap * sizeof *np);
            if (!np) {
                rc = cp_error(CP_ENOMEM, "out of memory listing TIFF pages");
                break;
            }
            pages = np;
        }
        if ((rc = describe_page(path, t, &pages[n])) != CP_OK)
            break;
        if (n > 0 && !same_layout(&pages[0], &pages[n])) {
            rc = cp_error(CP_EUNSUPPORTED,
                          "%s: TIFF page %d is %ux%u with %d %s samples but page 1 is %ux%u with %d %s samples; "
                          "read the first page only",
                          path, n + 1, pages[n].w, pages[n].h, pages[n].channels, cp_dtype_name(pages[n].dtype),
                          pages[0].w, pages[0].h, pages[0].channels, cp_dtype_name(pages[0].dtype));
            break;
        }
        n++;
        if (mode == CP_PAGES_FIRST)
            break;
        tiff_msg[0] = 0;
    } while (TIFFReadDirectory(t));
    if (rc == CP_OK && mode != CP_PAGES_FIRST && tiff_msg[0])
        rc = tiff_fail(CP_EFORMAT, path, "cannot read the next TIFF page");
    if (rc) {
        free(pages);
        return rc;
    }
    *out = pages;
    *count = n;
    return CP_OK;
}

/* The most a codec can expand its input: a file cannot hold more pixel data
 * than its size times this, so a header claiming more is corrupt, and we
 * refuse it before allocating (libtiff invents strips for a lone one). */
static uint64_t max_expansion(uint16_t compression)
{
    switch (compression) {
    case COMPRESSION_NONE: return 1;
    case COMPRESSION_PACKBITS: return 64;                         /* 2 bytes -> 128 */
    case COMPRESSION_LZW: return 4096;                            /* one 9..12-bit code -> <= 4096 bytes */
    case COMPRESSION_ADOBE_DEFLATE: case COMPRESSION_DEFLATE: return CP_DEFLATE_MAX_EXPANSION;
    default: return 1u << 16;
    }
}

static int check_data_size(const char *path, TIFF *t, const page_info *pages, int n)
{
    struct stat st;
    if (fstat(TIFFFileno(t), &st))
        return cp_error(CP_EIO, "%s: cannot stat: %s", path, strerror(errno));
    double fsize = (double)st.st_size, need = 0, ratio = 1;
    for (int i = 0; i < n; i++) {
        const page_info *p = &pages[i];
        need += ceil((double)p->w * p->spp * p->bps / 8) * p->h;
        if ((double)max_expansion(p->compression) > ratio)
            ratio = (double)max_expansion(p->compression);
    }
    if (need > fsize * ratio)
        return cp_error(CP_EFORMAT, "%s: TIFF header claims %.0f bytes of %s pixel data but the file has %.0f "
                        "bytes: corrupt", path, need, ratio == 1 ? "uncompressed" : "compressed", fsize);
    return CP_OK;
}

/* Open a TIFF and arrange its pages: the part of reading shared by whole
 * and region reads. */
static int open_pages(const char *path, cp_pages mode, TIFF **tp, page_info **pagesp, int *np, layout *Lp)
{
    tiff_quiet();
    errno = 0;
    TIFF *t = TIFFOpen(path, "rm"); /* "m": no mmap, so a file truncated under us cannot SIGBUS */
    if (!t)
        return tiff_fail(errno == ENOENT || errno == EACCES ? CP_EIO : CP_EFORMAT, path, "cannot open TIFF");
    page_info *pages = NULL;
    int n = 0;
    int rc = list_pages(path, t, mode, &pages, &n);
    if (rc) {
        TIFFClose(t);
        return rc;
    }
    const char *desc = NULL;
    if (mode != CP_PAGES_FIRST && n == 1 && TIFFSetSubDirectory(t, pages[0].offset) &&
        TIFFGetField(t, TIFFTAG_IMAGEDESCRIPTION, &desc) && desc && strncmp(desc, "ImageJ=", 7) == 0 &&
        imagej_value(desc, "images") > 1) {
        /* ImageJ's > 4 GB layout: one IFD, the other images follow raw */
        int images = imagej_value(desc, "images"); /* desc dies with t */
        free(pages);
        TIFFClose(t);
        return cp_error(CP_EUNSUPPORTED, "%s: ImageJ stack of %d images stored as one TIFF page is not supported; "
                        "read the first page only or resave as BigTIFF", path, images);
    }
    layout L = arrange(t, pages, n, mode);
    const page_info *p0 = &pages[0];
    if (p0->w > INT_MAX || p0->h > INT_MAX)
        rc = cp_error(CP_ELIMIT, "%s: TIFF of %u x %u pixels is too large", path, p0->h, p0->w);
    if (rc) {
        free(pages);
        TIFFClose(t);
        return rc;
    }
    *tp = t;
    *pagesp = pages;
    *np = n;
    *Lp = L;
    return CP_OK;
}

/* Decode the pages holding planes p0..p0+np of the window into img. */
static int decode_window(const char *path, TIFF *t, const page_info *pages, int n, const layout *L, cp_image *img,
                         int p0, int np, uint32_t y0, uint32_t x0)
{
    int rc = CP_OK;
    for (int i = 0; rc == CP_OK && i < n; i++) {
        sink k = {&pages[i], img, 0, 0, y0, x0, (uint32_t)img->height, (uint32_t)img->width};
        page_place(L, i, pages[0].channels, &k.plane, &k.chan0);
        if (k.plane < p0 || k.plane >= p0 + np)
            continue;
        k.plane -= p0;
        rc = decode_page(path, t, &k);
    }
    return rc;
}

int cp_tiff_read(const char *path, const cp_read_opts *opts, cp_image **out)
{
    *out = NULL;
    cp_pages mode = opts ? opts->pages : CP_PAGES_AUTO;
    TIFF *t;
    page_info *pages;
    int n;
    layout L;
    int rc = open_pages(path, mode, &t, &pages, &n, &L);
    if (rc)
        return rc;
    const page_info *p0 = &pages[0];
    uint64_t total = (uint64_t)p0->w * p0->h * (uint64_t)L.channels * (uint64_t)L.planes;
    if (total > cp_get_max_pixels()) {
        rc = cp_error(CP_ELIMIT, "%s: TIFF of %u x %u x %d channels x %d planes exceeds the limit of %llu samples",
                      path, p0->h, p0->w, L.channels, L.planes, (unsigned long long)cp_get_max_pixels());
    } else if ((rc = check_data_size(path, t, pages, n)) == CP_OK) {
        cp_image *img = NULL;
        rc = cp_image_create(&img, (int)p0->w, (int)p0->h, L.channels, L.planes, p0->dtype);
        if (rc)
            rc = cp_error(rc, "%s: %s", path, cp_errmsg());
        if (rc == CP_OK)
            rc = decode_window(path, t, pages, n, &L, img, 0, L.planes, 0, 0);
        if (rc == CP_OK)
            *out = img;
        else
            cp_image_free(img);
    }
    free(pages);
    TIFFClose(t);
    return rc;
}

struct cp_tiff_region {
    char *path;
    TIFF *t;
    page_info *pages;
    int n;
    layout L;
};

int cp_tiff_region_open(const char *path, cp_tiff_region **out, cp_image *shape)
{
    *out = NULL;
    cp_tiff_region *r = cp_calloc(1, sizeof *r, "TIFF reader");
    if (!r)
        return CP_ENOMEM;
    int rc = (r->path = cp_strdup(path)) ? open_pages(path, CP_PAGES_AUTO, &r->t, &r->pages, &r->n, &r->L) : CP_ENOMEM;
    /* strip and tile buffers follow the header: refuse one the file cannot back */
    if (!rc && (rc = check_data_size(path, r->t, r->pages, r->n))) {
        TIFFClose(r->t);
        free(r->pages);
    }
    if (rc) {
        free(r->path);
        free(r);
        return rc;
    }
    memset(shape, 0, sizeof *shape);
    shape->planes = r->L.planes;
    shape->channels = r->L.channels;
    shape->height = (int)r->pages[0].h;
    shape->width = (int)r->pages[0].w;
    shape->dtype = r->pages[0].dtype;
    *out = r;
    return CP_OK;
}

int cp_tiff_region_read(cp_tiff_region *r, int p0, int np, int y0, int dy, int x0, int dx, cp_image *dst)
{
    const page_info *q = &r->pages[0];
    if (p0 < 0 || np < 0 || y0 < 0 || dy < 0 || x0 < 0 || dx < 0 || p0 > r->L.planes - np ||
        (uint32_t)y0 + (uint32_t)dy > q->h || (uint32_t)x0 + (uint32_t)dx > q->w)
        return cp_error(CP_EINVAL, "%s: box outside the TIFF", r->path);
    if (dst->planes != np || dst->height != dy || dst->width != dx || dst->channels != r->L.channels ||
        dst->dtype != q->dtype)
        return cp_error(CP_EINVAL, "%s: region image of the wrong shape", r->path);
    if (np == 0 || dy == 0 || dx == 0)
        return CP_OK;
    tiff_quiet();
    return decode_window(r->path, r->t, r->pages, r->n, &r->L, dst, p0, np, (uint32_t)y0, (uint32_t)x0);
}

void cp_tiff_region_close(cp_tiff_region *r)
{
    if (!r)
        return;
    TIFFClose(r->t);
    free(r->pages);
    free(r->path);
    free(r);
}

/* The text after "key=" at the start of a line of an ImageJ description, up
 * to the end of the line, into buf; 0 if absent. */
static int imagej_text(const char *desc, const char *key, char *buf, size_t size)
{
    size_t n = strlen(key);
    for (const char *p = desc; (p = strstr(p, key)) != NULL; p += n)
        if ((p == desc || p[-1] == '\n') && p[n] == '=') {
            /* ImageJ escapes non-ASCII as \uXXXX ("\u00B5m"): back to UTF-8 */
            const char *v = p + n + 1;
            size_t k = 0;
            while (*v && *v != '\r' && *v != '\n' && k + 4 < size) {
                unsigned cp = 0;
                int hex = v[0] == '\\' && v[1] == 'u';
                for (int i = 2; hex && i < 6; i++) {
                    char c = v[i];
                    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                          : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
                    hex = d >= 0;
                    cp = cp * 16 + (unsigned)(d >= 0 ? d : 0);
                }
                if (hex && cp >= 0x80 && cp < 0x800) {
                    buf[k++] = (char)(0xC0 | cp >> 6);
                    buf[k++] = (char)(0x80 | (cp & 0x3F));
                    v += 6;
                } else {
                    buf[k++] = *v++;
                }
            }
            buf[k] = 0;
            return 1;
        }
    return 0;
}

int cp_tiff_voxel_size(const char *path, cp_voxel_size *out, int *found)
{
    memset(out, 0, sizeof *out);
    *found = 0;
    tiff_quiet();
    errno = 0;
    TIFF *t = TIFFOpen(path, "rm");
    if (!t)
        return tiff_fail(errno == ENOENT || errno == EACCES ? CP_EIO : CP_EFORMAT, path, "cannot open TIFF");
    const char *desc = NULL;
    float xr = 0, yr = 0;
    char num[64];
    if (TIFFGetField(t, TIFFTAG_IMAGEDESCRIPTION, &desc) && desc && strncmp(desc, "ImageJ=", 7) == 0 &&
        imagej_text(desc, "unit", out->unit, sizeof out->unit) && out->unit[0] &&
        strcmp(out->unit, "pixel") && TIFFGetField(t, TIFFTAG_XRESOLUTION, &xr) &&
        TIFFGetField(t, TIFFTAG_YRESOLUTION, &yr) && xr > 0 && yr > 0 && isfinite(xr) && isfinite(yr)) {
        out->x = 1.0 / xr;
        out->y = 1.0 / yr;
        out->z = imagej_text(desc, "spacing", num, sizeof num) ? strtod(num, NULL) : 1.0;
        *found = out->z > 0 && isfinite(out->z);
    }
    TIFFClose(t);
    if (!*found)
        memset(out, 0, sizeof *out);
    return CP_OK;
}

/* ---- writing ----------------------------------------------------------- */

static int sample_format(cp_dtype t)
{
    return cp_dtype_is_float(t) ? SAMPLEFORMAT_IEEEFP : cp_dtype_is_signed(t) ? SAMPLEFORMAT_INT : SAMPLEFORMAT_UINT;
}

/* Rows per strip: strips of about 64 KiB. */
static uint32_t strip_rows(const cp_image *img, int nsamp)
{
    size_t row_bytes = (size_t)img->width * nsamp * cp_dtype_size(img->dtype);
    uint32_t rps = row_bytes >= 65536 ? 1 : (uint32_t)(65536 / row_bytes);
    return rps > (uint32_t)img->height ? (uint32_t)img->height : rps;
}

/* One page's directory, without its pixels: the strip arrays are left empty
 * (TIFFDeferStrileArrayWriting) and filled in by write_page_data. */
static int write_page_dir(TIFF *t, const char *path, const cp_image *img, int nsamp, const char *desc,
                          const char *software, uint16_t compression, const cp_voxel_size *vx)
{
    size_t es = cp_dtype_size(img->dtype);
    TIFFSetField(t, TIFFTAG_IMAGEWIDTH, (uint32_t)img->width);
    TIFFSetField(t, TIFFTAG_IMAGELENGTH, (uint32_t)img->height);
    TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, (uint16_t)nsamp);
    TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, (uint16_t)(es * 8));
    TIFFSetField(t, TIFFTAG_SAMPLEFORMAT, (uint16_t)sample_format(img->dtype));
    TIFFSetField(t, TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG);
    TIFFSetField(t, TIFFTAG_PHOTOMETRIC, nsamp >= 3 ? PHOTOMETRIC_RGB : PHOTOMETRIC_MINISBLACK);
    if (nsamp == 4) {
        uint16_t extra = EXTRASAMPLE_UNASSALPHA;
        TIFFSetField(t, TIFFTAG_EXTRASAMPLES, 1, &extra);
    }
    TIFFSetField(t, TIFFTAG_COMPRESSION, compression);
    TIFFSetField(t, TIFFTAG_ROWSPERSTRIP, strip_rows(img, nsamp));
    if (software)
        TIFFSetField(t, TIFFTAG_SOFTWARE, software);
    if (desc)
        TIFFSetField(t, TIFFTAG_IMAGEDESCRIPTION, desc);
    if (vx) { /* ImageJ's own choice of ResolutionUnit */
        uint16_t unit = strcmp(vx->unit, "inch") == 0 ? RESUNIT_INCH
                      : strcmp(vx->unit, "cm") == 0   ? RESUNIT_CENTIMETER : RESUNIT_NONE;
        TIFFSetField(t, TIFFTAG_XRESOLUTION, 1.0 / vx->x);
        TIFFSetField(t, TIFFTAG_YRESOLUTION, 1.0 / vx->y);
        TIFFSetField(t, TIFFTAG_RESOLUTIONUNIT, unit);
    }
    return TIFFDeferStrileArrayWriting(t) && TIFFWriteCheck(t, 0, path) && TIFFWriteDirectory(t) ? 0 : -1;
}

/* Directory i of a file being written, read back in page order: 0 is found
 * from the header, the others follow the chain one step. */
static int next_dir(TIFF *t, int i)
{
    return i == 0 ? TIFFSetDirectory(t, 0) : TIFFReadDirectory(t);
}

/* The strips of the current directory, appended at the end of the file, then
 * their offsets and counts written in place (TIFFFlush). */
static int write_page_data(TIFF *t, const cp_image *img, int plane, int chan0, int nsamp, unsigned char *strip)
{
    size_t es = cp_dtype_size(img->dtype), C = (size_t)img->channels;
    uint32_t w = (uint32_t)img->width, h = (uint32_t)img->height, rps = strip_rows(img, nsamp);
    size_t row_bytes = (size_t)w * nsamp * es;
    const unsigned char *base = img->data;
    for (uint32_t y0 = 0, s = 0; y0 < h; y0 += rps, s++) {
        uint32_t rows = h - y0 < rps ? h - y0 : rps;
        for (uint32_t r = 0; r < rows; r++) {
            const unsigned char *src = base + (((size_t)plane * h + y0 + r) * w * C + (size_t)chan0) * es;
            unsigned char *dst = strip + (size_t)r * row_bytes;
            if ((size_t)nsamp == C) {
                memcpy(dst, src, row_bytes);
            } else {
                for (uint32_t x = 0; x < w; x++)
                    memcpy(dst + (size_t)x * nsamp * es, src + (size_t)x * C * es, (size_t)nsamp * es);
            }
        }
        if (TIFFWriteEncodedStrip(t, s, strip, (tmsize_t)(rows * row_bytes)) < 0)
            return -1;
    }
    return TIFFFlush(t) ? 0 : -1;
}

/* unit= and spacing= lines of an ImageJ description; two-byte UTF-8
 * characters escaped as ImageJ writes them ("\u00B5m"), which imagej_text
 * reads back. */
static void imagej_calibration(char *buf, size_t size, const cp_voxel_size *vx)
{
    size_t n = (size_t)snprintf(buf, size, "unit=");
    for (const unsigned char *u = (const unsigned char *)vx->unit; *u && n + 8 < size; u++) {
        if ((u[0] & 0xE0) == 0xC0 && (u[1] & 0xC0) == 0x80) {
            n += (size_t)snprintf(buf + n, size - n, "\\u%04X", (unsigned)((u[0] & 0x1F) << 6 | (u[1] & 0x3F)));
            u++;
        } else if (*u >= ' ' && *u != '\\') {
            buf[n++] = (char)*u;
        }
    }
    char num[32];
    snprintf(buf + n, size - n, "\nspacing=%s\n", cp_format_double(vx->z, num));
}

/* Encode img as the pages of an open TIFF (a file or memory); `path` names it
 * in messages. Flushes but does not close t.
 *
 * Layout: header, every page's directory, then every page's pixels back to
 * back in page order. ImageJ (and tifffile, for ImageJ files) reads an
 * uncompressed stack as ONE block of images x page bytes from the first
 * strip, ignoring the other directories; pixels interleaved with directories
 * would be read as pixels. So all directories are written first, then the
 * strips, each page appended after the previous, their offsets and counts
 * written into the directories. Arrays of more than one strip live outside
 * their directory: those are reserved (TIFFForceStrileArrayWriting on zeros)
 * before any pixels and rewritten in place. */
int cp_tiff_encode(TIFF *t, const char *path, const cp_image *img, const cp_write_opts *opts)
{
    if (!img || !img->data || img->width <= 0 || img->height <= 0 || img->channels <= 0 || img->planes <= 0 ||
        (unsigned)img->dtype >= CP_DTYPE_COUNT)
        return cp_error(CP_EINVAL, "%s: invalid image", path);
    cp_write_opts def = {0};
    if (!opts)
        opts = &def;
    uint16_t compression;
    switch (opts->compression) {
    case CP_COMPRESS_NONE: compression = COMPRESSION_NONE; break;
    case CP_COMPRESS_LZW: compression = COMPRESSION_LZW; break;
    case CP_COMPRESS_PACKBITS: compression = COMPRESSION_PACKBITS; break;
    case CP_COMPRESS_DEFAULT:
    case CP_COMPRESS_DEFLATE: compression = COMPRESSION_ADOBE_DEFLATE; break;
    default: return cp_error(CP_EINVAL, "%s: unknown TIFF compression %d", path, (int)opts->compression);
    }
    const cp_voxel_size *vx = opts->voxel && opts->voxel->unit[0] ? opts->voxel : NULL;
    if (vx && !(vx->x > 0 && vx->y > 0 && vx->z > 0 && isfinite(vx->x) && isfinite(vx->y) && isfinite(vx->z)))
        return cp_error(CP_EINVAL, "%s: voxel size %g x %g x %g: must be positive", path, vx->z, vx->y, vx->x);
    tiff_quiet();
    /* RGB(A) 8/16-bit stays one interleaved page unless Fiji channels are asked for. */
    int C = img->channels, Z = img->planes;
    int rgb = (C == 3 || C == 4) && (img->dtype == CP_U8 || img->dtype == CP_U16) && !opts->imagej;
    int nsamp = rgb ? C : 1, page_channels = rgb ? 1 : C;
    int npages = Z * page_channels;
    char desc[512], soft[64];
    const char *descp = NULL;
    /* Multi-page output always says how its pages are arranged, so it reads back as written. */
    if (opts->imagej || npages > 1 || vx) {
        int n = snprintf(desc, sizeof desc, "ImageJ=1.11a\nimages=%d\n", npages);
        if (page_channels > 1)
            n += snprintf(desc + n, sizeof desc - n, "channels=%d\n", page_channels);
        if (Z > 1)
            n += snprintf(desc + n, sizeof desc - n, "slices=%d\n", Z);
        if (page_channels > 1 && Z > 1)
            n += snprintf(desc + n, sizeof desc - n, "hyperstack=true\n");
        if (page_channels > 1)
            n += snprintf(desc + n, sizeof desc - n, "mode=composite\n");
        if (vx)
            imagej_calibration(desc + n, sizeof desc - n, vx);
        descp = desc;
    }
    snprintf(soft, sizeof soft, "cptools %s", CP_VERSION_STRING);
    const char *software = opts->software ? opts->software : soft;

    size_t es = cp_dtype_size(img->dtype);
    uint32_t rps = strip_rows(img, nsamp);
    unsigned char *strip = cp_malloc_array((size_t)img->width * nsamp * rps, es, "TIFF strip");
    if (!strip)
        return CP_ENOMEM;
    int rc = CP_OK;
    for (int i = 0; rc == CP_OK && i < npages; i++)
        if (write_page_dir(t, path, img, nsamp, descp, software, compression, vx) != 0)
            rc = tiff_fail(CP_EIO, path, "cannot write TIFF");
    if (rps < (uint32_t)img->height) /* more than one strip a page */
        for (int i = 0; rc == CP_OK && i < npages; i++)
            if (!next_dir(t, i) || !TIFFForceStrileArrayWriting(t))
                rc = tiff_fail(CP_EIO, path, "cannot write TIFF");
    for (int i = 0; rc == CP_OK && i < npages; i++)
        if (!next_dir(t, i) || write_page_data(t, img, i / page_channels, i % page_channels, nsamp, strip) != 0)
            rc = tiff_fail(CP_EIO, path, "cannot write TIFF");
    TIFFFlush(t);
    if (rc == CP_OK && tiff_msg[0])
        rc = tiff_fail(CP_EIO, path, "cannot write TIFF");
    free(strip);
    return rc;
}

/* Big images need BigTIFF ("w8"); the threshold leaves room for headers. */
const char *cp_tiff_write_mode(const cp_image *img)
{
    uint64_t bytes = (uint64_t)cp_image_samples(img) * cp_dtype_size(img->dtype);
    return bytes > ((uint64_t)3 << 30) ? "w8" : "w";
}

int cp_tiff_write(const char *path, const cp_image *img, const cp_write_opts *opts)
{
    if (!img || !img->data)
        return cp_error(CP_EINVAL, "%s: invalid image", path);
    tiff_quiet();
    cp_atomic at;
    int rc = cp_atomic_open(&at, path);
    if (rc)
        return rc;
    int fd = dup(at.fd); /* TIFFClose closes its descriptor; the atomic file keeps its own */
    TIFF *t = fd >= 0 ? TIFFFdOpen(fd, path, cp_tiff_write_mode(img)) : NULL;
    if (!t) {
        if (fd >= 0)
            close(fd);
        rc = tiff_fail(CP_EIO, path, "cannot start TIFF output");
    }
    if (t) {
        rc = cp_tiff_encode(t, path, img, opts);
        TIFFClose(t);
    }
    if (rc) {
        cp_atomic_abort(&at);
        return rc;
    }
    return cp_atomic_commit(&at);
}
