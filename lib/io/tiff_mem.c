/* TIFF into memory: the encoder of tiff.c behind libtiff's client I/O, for
 * outputs that are not files of their own (ZIP entries, pipes). */
#include <stdlib.h>
#include <string.h>
#include <tiffio.h>

#include "io/io_internal.h"

typedef struct membuf {
    unsigned char *data;
    size_t size, cap, pos;
    int failed;
} membuf;

static tmsize_t mem_read(thandle_t h, void *buf, tmsize_t n)
{
    membuf *m = (membuf *)h;
    if (n < 0 || m->pos >= m->size)
        return 0;
    size_t k = m->size - m->pos < (size_t)n ? m->size - m->pos : (size_t)n;
    memcpy(buf, m->data + m->pos, k);
    m->pos += k;
    return (tmsize_t)k;
}

static tmsize_t mem_write(thandle_t h, void *buf, tmsize_t n)
{
    membuf *m = (membuf *)h;
    if (n < 0 || m->pos > SIZE_MAX - (size_t)n) {
        m->failed = 1;
        return -1;
    }
    size_t end = m->pos + (size_t)n;
    if (end > m->cap) {
        size_t cap = m->cap ? m->cap : 4096;
        while (cap < end)
            cap = cap > SIZE_MAX / 2 ? end : cap * 2;
        unsigned char *d = realloc(m->data, cap);
        if (!d) {
            m->failed = 1;
            return -1;
        }
        m->data = d;
        m->cap = cap;
    }
    if (m->pos > m->size) /* a seek past the end leaves a gap of zeros */
        memset(m->data + m->size, 0, m->pos - m->size);
    memcpy(m->data + m->pos, buf, (size_t)n);
    m->pos = end;
    if (end > m->size)
        m->size = end;
    return n;
}

static toff_t mem_seek(thandle_t h, toff_t off, int whence)
{
    membuf *m = (membuf *)h;
    uint64_t base = whence == SEEK_CUR ? m->pos : whence == SEEK_END ? m->size : 0;
    uint64_t p = base + off;
    if (p > SIZE_MAX)
        return (toff_t)-1;
    m->pos = (size_t)p;
    return p;
}

static int mem_close(thandle_t h) { (void)h; return 0; }
static toff_t mem_size(thandle_t h) { return ((membuf *)h)->size; }
static int mem_map(thandle_t h, void **base, toff_t *size) { (void)h, (void)base, (void)size; return 0; }
static void mem_unmap(thandle_t h, void *base, toff_t size) { (void)h, (void)base, (void)size; }

int cp_tiff_write_mem(const cp_image *img, const cp_write_opts *opts, const char *name, void **data, size_t *size)
{
    *data = NULL;
    *size = 0;
    if (!name)
        name = "TIFF";
    if (!img || !img->data)
        return cp_error(CP_EINVAL, "%s: invalid image", name);
    membuf m = {0};
    /* "m": libtiff must not try to memory-map our handle. */
    char mode[4];
    snprintf(mode, sizeof mode, "%sm", cp_tiff_write_mode(img));
    TIFF *t = TIFFClientOpen(name, mode, (thandle_t)&m, mem_read, mem_write, mem_seek, mem_close, mem_size,
                             mem_map, mem_unmap);
    if (!t)
        return cp_error(CP_ENOMEM, "%s: cannot start TIFF output in memory", name);
    int rc = cp_tiff_encode(t, name, img, opts);
    TIFFClose(t);
    if (rc == CP_OK && m.failed)
        rc = cp_error(CP_ENOMEM, "%s: out of memory writing TIFF", name);
    if (rc != CP_OK) {
        free(m.data);
        return rc;
    }
    *data = m.data;
    *size = m.size;
    return CP_OK;
}
