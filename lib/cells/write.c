/* Cells to files: every selected cell's TIFF (and mask) plus cells.csv, into
 * a folder that appears only when complete, or into a ZIP archive. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cellpose/cells.h"
#include "cellpose/files.h"
#include "cellpose/io.h"
#include "cellpose/zip.h"
#include "core/internal.h"

/* Where the bytes of each output file go. */
typedef struct sink {
    int (*add)(struct sink *s, const char *name, const void *data, size_t size);
    const char *dir;   /* folder sink */
    cp_zip *zip;       /* zip sink */
} sink;

static int dir_add(sink *s, const char *name, const void *data, size_t size)
{
    char *path = cp_path_join(s->dir, name);
    if (!path)
        return CP_ENOMEM;
    int rc = CP_OK;
    FILE *f = fopen(path, "wb");
    if (!f) {
        rc = cp_error(CP_EIO, "%s: cannot create: %s", path, strerror(errno));
    } else {
        size_t w = fwrite(data, 1, size, f);
        int bad = w != size || ferror(f);
        if (fclose(f) != 0 || bad)
            rc = cp_error(CP_EIO, "%s: write failed: %s", path, strerror(errno));
    }
    free(path);
    return rc;
}

static int zip_add(sink *s, const char *name, const void *data, size_t size)
{
    return cp_zip_add(s->zip, name, data, size);
}

typedef struct strbuf {
    char *s;
    size_t len, cap;
} strbuf;

static int sb_printf(strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int sb_printf(strbuf *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0)
            return cp_error(CP_EINVAL, "cells.csv: formatting failed");
        if (b->s && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return CP_OK;
        }
        size_t cap = b->cap ? b->cap : 4096;
        while (cap <= b->len + (size_t)n)
            cap *= 2;
        char *t = realloc(b->s, cap);
        if (!t)
            return cp_error(CP_ENOMEM, "cells.csv: out of memory");
        b->s = t;
        b->cap = cap;
    }
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Keep the boxes the options select (in place); count requested labels that
 * do not occur. */
static int select_boxes(cp_cell_box *b, size_t *n, const cp_cells_opts *o, cp_cells_result *res)
{
    uint32_t *want = NULL;
    size_t nw = 0;
    if (o->labels && o->n_labels) {
        want = cp_malloc_array(o->n_labels, sizeof *want, "label list");
        if (!want)
            return CP_ENOMEM;
        memcpy(want, o->labels, o->n_labels * sizeof *want);
        qsort(want, o->n_labels, sizeof *want, cmp_u32);
        for (size_t i = 0; i < o->n_labels; i++) /* drop duplicates */
            if (nw == 0 || want[nw - 1] != want[i])
                want[nw++] = want[i];
        for (size_t i = 0; i < nw; i++) {
            cp_cell_box key = {.label = want[i]};
            if (!bsearch(&key, b, *n, sizeof *b, cmp_u32)) {
                if (res->n_missing++ == 0)
                    res->first_missing = want[i];
            }
        }
    }
    size_t k = 0;
    for (size_t i = 0; i < *n; i++) {
        if (b[i].area < o->min_area)
            continue;
        if (want && !bsearch(&b[i].label, want, nw, sizeof *want, cmp_u32))
            continue;
        b[k++] = b[i];
    }
    *n = k;
    free(want);
    return CP_OK;
}

/* One cell, encoded: its TIFF bytes (and mask TIFF bytes). */
typedef struct encoded {
    void *tif, *mask;
    size_t tif_size, mask_size;
    cp_zip_prepared ztif, zmask;   /* compressed here when the sink is a ZIP */
    int rc;
    char err[512];
} encoded;

static void encode_cell(const cp_image *img, const uint32_t *labels, const cp_cell_box *box,
                        const cp_cells_opts *o, const cp_cell_scale *sc, const char *name, const cp_zip *zip,
                        encoded *e)
{
    memset(e, 0, sizeof *e);
    cp_image *crop = NULL, *mask = NULL;
    /* A volume's cells are hyperstacks whatever the crop's shape, so every
     * file says its planes (and a one-plane crop still carries the Z spacing). */
    int volume = img->planes > 1;
    cp_write_opts wo = {.compression = CP_COMPRESS_NONE, .imagej = img->channels > 1 || volume, .voxel = o->voxel};
    cp_write_opts wm = {.compression = CP_COMPRESS_NONE, .imagej = volume, .voxel = o->voxel};
    e->rc = cp_cell_extract(img, labels, box, o, sc, &crop, o->mask_too ? &mask : NULL);
    if (e->rc == CP_OK)
        e->rc = cp_tiff_write_mem(crop, &wo, name, &e->tif, &e->tif_size);
    if (e->rc == CP_OK && mask)
        e->rc = cp_tiff_write_mem(mask, &wm, name, &e->mask, &e->mask_size);
    if (e->rc == CP_OK && zip)
        e->rc = cp_zip_prepare(zip, e->tif, e->tif_size, &e->ztif);
    if (e->rc == CP_OK && zip && e->mask)
        e->rc = cp_zip_prepare(zip, e->mask, e->mask_size, &e->zmask);
    if (e->rc != CP_OK) /* messages are per thread: carry it to the writer */
        snprintf(e->err, sizeof e->err, "%s", cp_errmsg());
    cp_image_free(crop);
    cp_image_free(mask);
}

/* "H x W", or "D x H x W" when either image is a volume, into buf (48 bytes). */
static const char *dims(const cp_image *a, int volume, char *buf)
{
    if (volume)
        snprintf(buf, 48, "%d x %d x %d", a->planes, a->height, a->width);
    else
        snprintf(buf, 48, "%d x %d", a->height, a->width);
    return buf;
}

static int check_inputs(const cp_image *img, const cp_image *masks, const char *mname, const char *iname)
{
    if (masks->channels != 1)
        return cp_error(CP_EUNSUPPORTED, "%s: masks must have one channel (found %d)", mname, masks->channels);
    if (img->planes != masks->planes || img->width != masks->width || img->height != masks->height) {
        int vol = img->planes > 1 || masks->planes > 1;
        char a[48], b[48];
        return cp_error(CP_EINVAL, "%s: masks are %s but the image is %s (%s; image: %s)", mname, dims(masks, vol, a),
                        dims(img, vol, b), vol ? "planes x height x width" : "height x width", iname);
    }
    return CP_OK;
}

/* Cells are cut and encoded in batches, then written in label order. Only a
 * ZIP is encoded in parallel (deflate is the work there); a folder's time is
 * the kernel creating files, and a second thread would only spin at the
 * batch barrier. A batch is bounded in cells and in crop bytes. */
#define BATCH 1024
#define BATCH_BYTES ((uint64_t)64 << 20)

static size_t batch_end(const cp_cell_box *b, size_t b0, size_t n, const cp_cells_opts *o, const cp_image *img)
{
    uint64_t bytes = 0;
    size_t i = b0;
    while (i < n && i - b0 < BATCH && (i == b0 || bytes < BATCH_BYTES)) {
        cp_cell_box c;
        cp_cell_crop_box(&b[i], o->pad, o->pad_z, img->width, img->height, img->planes, &c);
        bytes += (uint64_t)(c.max_plane - c.min_plane) * (uint64_t)(c.max_row - c.min_row) *
                 (uint64_t)(c.max_col - c.min_col) * (uint64_t)img->channels * 2;
        i++;
    }
    return i;
}

/* cells.csv: 2-D images keep their columns; volumes add the planes and pad_z. */
static int csv_header(strbuf *csv, int volume)
{
    if (!volume)
        return sb_printf(csv, "label,file,bbox_min_row,bbox_min_col,bbox_max_row,bbox_max_col,area,pad,"
                              "crop_min_row,crop_min_col,crop_max_row,crop_max_col,scale_lo,scale_hi\n");
    return sb_printf(csv, "label,file,bbox_min_plane,bbox_min_row,bbox_min_col,bbox_max_plane,bbox_max_row,"
                          "bbox_max_col,area,pad,pad_z,crop_min_plane,crop_min_row,crop_min_col,crop_max_plane,"
                          "crop_max_row,crop_max_col,scale_lo,scale_hi\n");
}

static int csv_row(strbuf *csv, int volume, const cp_cell_box *b, const cp_cell_box *c, const char *name,
                   const cp_cells_opts *o, const char *scale)
{
    if (!volume)
        return sb_printf(csv, "%u,%s,%d,%d,%d,%d,%llu,%d,%d,%d,%d,%d,%s\n", (unsigned)b->label, name, b->min_row,
                         b->min_col, b->max_row, b->max_col, (unsigned long long)b->area, o->pad, c->min_row,
                         c->min_col, c->max_row, c->max_col, scale);
    return sb_printf(csv, "%u,%s,%d,%d,%d,%d,%d,%d,%llu,%d,%d,%d,%d,%d,%d,%d,%d,%s\n", (unsigned)b->label, name,
                     b->min_plane, b->min_row, b->min_col, b->max_plane, b->max_row, b->max_col,
                     (unsigned long long)b->area, o->pad, o->pad_z < 0 ? o->pad : o->pad_z, c->min_plane, c->min_row,
                     c->min_col, c->max_plane, c->max_row, c->max_col, scale);
}

static int write_cells(const cp_image *img, const cp_image *masks, const char *mname, const cp_cells_opts *opts,
                       sink *out, cp_cells_result *res)
{
    cp_cells_opts defaults;
    cp_cells_opts_init(&defaults);
    const cp_cells_opts *o = opts ? opts : &defaults;
    memset(res, 0, sizeof *res);
    if (!mname)
        mname = "masks";
    if (o->pad < 0)
        return cp_error(CP_EINVAL, "pad %d: must not be negative", o->pad);
    int rc = check_inputs(img, masks, mname, o->image_name ? o->image_name : "image");
    if (rc != CP_OK)
        return rc;
    cp_cell_scale sc;
    if ((rc = cp_cells_scale(img, o, &sc)) != CP_OK)
        return rc;
    uint32_t *labels = NULL;
    if ((rc = cp_image_labels_u32(masks, mname, &labels)) != CP_OK)
        return rc;
    cp_cell_box *boxes = NULL;
    size_t n = 0;
    rc = cp_cell_boxes(labels, masks->width, masks->height, masks->planes, &boxes, &n);
    uint32_t max_label = n ? boxes[n - 1].label : 0;
    if (rc == CP_OK)
        rc = select_boxes(boxes, &n, o, res);

    int volume = masks->planes > 1;
    strbuf csv = {0};
    if (rc == CP_OK)
        rc = csv_header(&csv, volume);
    char scale_txt[64] = ",";
    if (sc.scaled)
        snprintf(scale_txt, sizeof scale_txt, "%.17g,%.17g", sc.lo, sc.hi);

    encoded *enc = cp_calloc(BATCH, sizeof *enc, "cell batch");
    if (!enc && rc == CP_OK)
        rc = CP_ENOMEM;
    int parallel = out->zip != NULL;
    for (size_t b0 = 0, b1; b0 < n && rc == CP_OK; b0 = b1) {
        b1 = batch_end(boxes, b0, n, o, img);
        size_t nb = b1 - b0;
        /* Each cell is independent; the batch is written in label order after. */
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
        for (size_t i = 0; i < nb; i++) {
            char name[64];
            cp_cell_file_name(name, sizeof name, boxes[b0 + i].label, max_label, ".tif");
            encode_cell(img, labels, &boxes[b0 + i], o, &sc, name, out->zip, &enc[i]);
        }
        for (size_t i = 0; i < nb; i++) {
            const cp_cell_box *bx = &boxes[b0 + i];
            encoded *e = &enc[i];
            char name[64], mask_name[64];
            cp_cell_file_name(name, sizeof name, bx->label, max_label, ".tif");
            cp_cell_file_name(mask_name, sizeof mask_name, bx->label, max_label, "_mask.tif");
            if (rc == CP_OK && e->rc != CP_OK)
                rc = cp_error(e->rc, "%s", e->err);
            if (rc == CP_OK)
                rc = out->zip ? cp_zip_add_prepared(out->zip, name, &e->ztif, e->tif)
                              : out->add(out, name, e->tif, e->tif_size);
            if (rc == CP_OK && e->mask)
                rc = out->zip ? cp_zip_add_prepared(out->zip, mask_name, &e->zmask, e->mask)
                              : out->add(out, mask_name, e->mask, e->mask_size);
            if (rc == CP_OK) {
                res->n_cells++;
                res->n_files += e->mask ? 2 : 1;
                res->bytes += e->tif_size + e->mask_size;
                cp_cell_box cb;
                cp_cell_crop_box(bx, o->pad, o->pad_z, img->width, img->height, img->planes, &cb);
                rc = csv_row(&csv, volume, bx, &cb, name, o, scale_txt);
            }
            free(e->tif);
            free(e->mask);
            e->tif = e->mask = NULL;
            cp_zip_prepared_free(&e->ztif);
            cp_zip_prepared_free(&e->zmask);
            if (rc == CP_OK && o->progress && o->progress(o->progress_ud, b0 + i + 1, n))
                rc = cp_error(CP_EINTR, "%s: cancelled", mname);
        }
    }
    if (rc == CP_OK) {
        rc = out->add(out, "cells.csv", csv.s, csv.len);
        if (rc == CP_OK) {
            res->n_files++;
            res->bytes += csv.len;
        }
    }
    free(enc);
    free(csv.s);
    free(boxes);
    free(labels);
    return rc;
}

int cp_cells_write_dir(const cp_image *img, const cp_image *masks, const char *masks_name, const char *outdir,
                       const cp_cells_opts *o, cp_cells_result *res)
{
    cp_cells_result dummy;
    if (!res)
        res = &dummy;
    memset(res, 0, sizeof *res);
    cp_atomic_dir d;
    int rc = cp_atomic_dir_open(&d, outdir, o && o->overwrite);
    if (rc != CP_OK)
        return rc;
    sink s = {.add = dir_add, .dir = d.tmp_path};
    rc = write_cells(img, masks, masks_name, o, &s, res);
    if (rc != CP_OK) {
        cp_atomic_dir_abort(&d);
        return rc;
    }
    return cp_atomic_dir_commit(&d);
}

/* The cells into an open archive, which is closed (or dropped on failure). */
static int write_cells_zip(cp_zip *z, const cp_image *img, const cp_image *masks, const char *masks_name,
                           const cp_cells_opts *o, cp_cells_result *res)
{
    sink s = {.add = zip_add, .zip = z};
    int rc = write_cells(img, masks, masks_name, o, &s, res);
    if (rc != CP_OK) {
        cp_zip_abort(z);
        return rc;
    }
    return cp_zip_close(z);
}

int cp_cells_write_zip_fp(const cp_image *img, const cp_image *masks, const char *masks_name, FILE *fp,
                          const char *name, const cp_cells_opts *o, cp_cells_result *res)
{
    cp_cells_result dummy;
    if (!res)
        res = &dummy;
    memset(res, 0, sizeof *res);
    cp_zip *z;
    int rc = cp_zip_open_fp(&z, fp, name, NULL);
    if (rc != CP_OK)
        return rc;
    return write_cells_zip(z, img, masks, masks_name, o, res);
}

int cp_cells_write_zip(const cp_image *img, const cp_image *masks, const char *masks_name, const char *zip_path,
                       const cp_cells_opts *o, cp_cells_result *res)
{
    cp_cells_result dummy;
    if (!res)
        res = &dummy;
    memset(res, 0, sizeof *res);
    char *parent = cp_path_dir(zip_path);
    int rc = parent ? CP_OK : CP_ENOMEM;
    if (rc == CP_OK && !(o && o->overwrite) && cp_path_exists(zip_path))
        rc = cp_error(CP_EEXIST, "%s: exists and overwriting was not asked for", zip_path);
    if (rc == CP_OK)
        rc = cp_mkdirs(parent);
    free(parent);
    if (rc != CP_OK)
        return rc;
    cp_zip *z;
    rc = cp_zip_open(&z, zip_path, o && o->overwrite, NULL);
    if (rc != CP_OK)
        return rc;
    return write_cells_zip(z, img, masks, masks_name, o, res);
}
