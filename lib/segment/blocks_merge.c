/* The merge of blockwise segmentation: labels of neighbouring blocks that
 * are one cell are linked (union-find on their IoU where both boxes see the
 * volume), numbered 1..M by first voxel, and written core by core. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cellpose/cellpose.h"
#include "core/internal.h"
#include "segment/blocks_internal.h"

typedef struct cell {
    int64_t voxels, first;
    int64_t lo[3], hi[3];
} cell;

typedef struct merge {
    const cp_blocks_plan *pl;
    const char *workdir;
    int64_t *off;        /* nblocks + 1: global index of each block's label 1 */
    uint32_t *nlab;      /* labels per block */
    cell *lab;           /* per global label: its core statistics */
    uint32_t *parent;    /* union-find */
    uint32_t *final;     /* per global label: the output label, 0 = not in any core */
    int64_t total, cells, links;
} merge;

/* ---- labels.npy regions --------------------------------------------------- */

/* Read the region r0..r1 (global) of block k's labels (its box b) into out. */
static int read_region(const merge *M, int64_t k, const cp_block_box *b, const int64_t r0[3], const int64_t r1[3],
                       uint32_t *out)
{
    char *dir = cp_blocks_dir(M->workdir, k);
    char *path = dir ? cp_path_join(dir, "labels.npy") : NULL;
    free(dir);
    if (!path)
        return CP_ENOMEM;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    unsigned char h[12];
    int rc = CP_OK;
    if (fd < 0) {
        rc = cp_error(CP_EIO, "%s: %s", path, strerror(errno));
        free(path);
        return rc;
    }
    size_t hoff = 0;
    if (pread(fd, h, sizeof h, 0) != (ssize_t)sizeof h || memcmp(h, "\x93NUMPY", 6) != 0)
        rc = cp_error(CP_EFORMAT, "%s: not NPY", path);
    else if (h[6] == 1)
        hoff = 10 + (size_t)(h[8] | h[9] << 8);
    else
        hoff = 12 + (size_t)(h[8] | h[9] << 8 | h[10] << 16 | (size_t)h[11] << 24);
    int64_t by = b->box1[1] - b->box0[1], bx = b->box1[2] - b->box0[2];
    int64_t bz = b->box1[0] - b->box0[0];
    off_t end = lseek(fd, 0, SEEK_END);
    if (rc == CP_OK && end != (off_t)(hoff + (size_t)(bz * by * bx) * 4))
        rc = cp_error(CP_EFORMAT, "%s: not the block's %" PRId64 " x %" PRId64 " x %" PRId64 " labels", path, bz,
                      by, bx);
    int64_t dy = r1[1] - r0[1], dx = r1[2] - r0[2];
    for (int64_t z = r0[0]; z < r1[0] && rc == CP_OK; z++)
        for (int64_t y = r0[1]; y < r1[1] && rc == CP_OK; y++) {
            off_t at = (off_t)(hoff + (size_t)(((z - b->box0[0]) * by + (y - b->box0[1])) * bx +
                                               (r0[2] - b->box0[2])) * 4);
            size_t n = (size_t)dx * 4;
            if (pread(fd, out + ((z - r0[0]) * dy + (y - r0[1])) * dx, n, at) != (ssize_t)n)
                rc = cp_error(CP_EIO, "%s: cannot read", path);
        }
    close(fd);
    free(path);
    return rc;
}

/* ---- block statistics ---------------------------------------------------- */

static int load_blocks(merge *M)
{
    const cp_blocks_plan *pl = M->pl;
    int64_t nb = pl->nblocks;
    if (!(M->off = cp_calloc((size_t)nb + 1, sizeof *M->off, "block offsets")) ||
        !(M->nlab = cp_calloc((size_t)nb, sizeof *M->nlab, "block labels")))
        return CP_ENOMEM;
    size_t cap = 0;
    for (int64_t k = 0; k < nb; k++) {
        cJSON *o;
        int rc = cp_blocks_read_block_json(pl, M->workdir, k, &o);
        if (rc)
            return rc;
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "core");
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(o, "labels");
        int na = cJSON_IsArray(a) ? cJSON_GetArraySize(a) : -1;
        if (!cJSON_IsNumber(n) || na != n->valuedouble) {
            cJSON_Delete(o);
            return cp_error(CP_EFORMAT, "block %" PRId64 ": bad block.json", k);
        }
        M->nlab[k] = (uint32_t)na;
        M->off[k + 1] = M->off[k] + na;
        if (M->off[k + 1] >= UINT32_MAX) {
            cJSON_Delete(o);
            return cp_error(CP_ELIMIT, "more than 2^32 labels over all blocks");
        }
        if ((size_t)M->off[k + 1] > cap) {
            cap = (size_t)M->off[k + 1] * 2;
            cell *c = realloc(M->lab, cap * sizeof *c);
            if (!c) {
                cJSON_Delete(o);
                return cp_error(CP_ENOMEM, "out of memory for the label table");
            }
            M->lab = c;
        }
        const cJSON *e;
        int64_t g = M->off[k];
        cJSON_ArrayForEach(e, a) {
            cell *c = &M->lab[g++];
            memset(c, 0, sizeof *c);
            int ne = cJSON_GetArraySize(e);
            double v[8] = {0};
            for (int i = 0; i < ne && i < 8; i++)
                v[i] = cJSON_GetArrayItem(e, i)->valuedouble;
            if (!cJSON_IsArray(e) || (ne != 1 && ne != 8) || (ne == 1 && v[0] != 0)) {
                cJSON_Delete(o);
                return cp_error(CP_EFORMAT, "block %" PRId64 ": bad label statistics", k);
            }
            c->voxels = (int64_t)v[0];
            c->first = (int64_t)v[1];
            for (int i = 0; i < 3; i++) {
                c->lo[i] = (int64_t)v[2 + i];
                c->hi[i] = (int64_t)v[5 + i];
            }
        }
        cJSON_Delete(o);
    }
    M->total = M->off[nb];
    return CP_OK;
}

/* ---- union-find ------------------------------------------------------------ */

static uint32_t find(uint32_t *p, uint32_t a)
{
    while (p[a] != a) {
        p[a] = p[p[a]];
        a = p[a];
    }
    return a;
}

/* The smaller index becomes the root: the same sets give the same roots
 * whatever the order of the links. */
static int unite(uint32_t *p, uint32_t a, uint32_t b)
{
    a = find(p, a);
    b = find(p, b);
    if (a == b)
        return 0;
    if (a < b)
        p[b] = a;
    else
        p[a] = b;
    return 1;
}

/* ---- pair counts: open addressing on (la, lb) ----------------------------- */

typedef struct pairs {
    uint64_t *key;   /* la << 32 | lb; 0 = empty (labels are >= 1) */
    int64_t *count;
    size_t cap, n;
} pairs;

static int pairs_add(pairs *h, uint64_t key)
{
    if (2 * (h->n + 1) > h->cap) {
        size_t nc = h->cap ? 2 * h->cap : 1024;
        uint64_t *k = cp_calloc(nc, sizeof *k, "label pairs");
        int64_t *c = cp_calloc(nc, sizeof *c, "label pairs");
        if (!k || !c) {
            free(k);
            free(c);
            return CP_ENOMEM;
        }
        for (size_t i = 0; i < h->cap; i++)
            if (h->key[i]) {
                size_t j = (size_t)(h->key[i] * 0x9E3779B97F4A7C15ull) & (nc - 1);
                while (k[j])
                    j = (j + 1) & (nc - 1);
                k[j] = h->key[i];
                c[j] = h->count[i];
            }
        free(h->key);
        free(h->count);
        h->key = k;
        h->count = c;
        h->cap = nc;
    }
    size_t j = (size_t)(key * 0x9E3779B97F4A7C15ull) & (h->cap - 1);
    while (h->key[j] && h->key[j] != key)
        j = (j + 1) & (h->cap - 1);
    if (!h->key[j]) {
        h->key[j] = key;
        h->n++;
    }
    h->count[j]++;
    return CP_OK;
}

/* Link the labels of blocks k and j over the region both boxes cover. */
static int link_pair(merge *M, int64_t k, int64_t j)
{
    cp_block_box a, b;
    cp_blocks_box(M->pl, k, &a);
    cp_blocks_box(M->pl, j, &b);
    int64_t r0[3], r1[3];
    size_t n = 1;
    for (int i = 0; i < 3; i++) {
        r0[i] = a.box0[i] > b.box0[i] ? a.box0[i] : b.box0[i];
        r1[i] = a.box1[i] < b.box1[i] ? a.box1[i] : b.box1[i];
        if (r1[i] <= r0[i])
            return CP_OK;
        n *= (size_t)(r1[i] - r0[i]);
    }
    uint32_t *la = cp_malloc_array(n, sizeof *la, "overlap labels");
    uint32_t *lb = cp_malloc_array(n, sizeof *lb, "overlap labels");
    int64_t *ca = cp_calloc((size_t)M->nlab[k] + 1, sizeof *ca, "label sizes");
    int64_t *cb = cp_calloc((size_t)M->nlab[j] + 1, sizeof *cb, "label sizes");
    pairs h = {0};
    int rc = la && lb && ca && cb ? CP_OK : CP_ENOMEM;
    if (rc == CP_OK)
        rc = read_region(M, k, &a, r0, r1, la);
    if (rc == CP_OK)
        rc = read_region(M, j, &b, r0, r1, lb);
    for (size_t i = 0; i < n && rc == CP_OK; i++) {
        if (la[i] > M->nlab[k] || lb[i] > M->nlab[j])
            rc = cp_error(CP_EFORMAT, "block %" PRId64 " or %" PRId64 ": a label beyond its count", k, j);
        ca[la[i]]++;
        cb[lb[i]]++;
        if (la[i] && lb[i] && rc == CP_OK)
            rc = pairs_add(&h, (uint64_t)la[i] << 32 | lb[i]);
    }
    for (size_t i = 0; i < h.cap && rc == CP_OK; i++) {
        if (!h.key[i])
            continue;
        uint32_t x = (uint32_t)(h.key[i] >> 32), y = (uint32_t)h.key[i];
        int64_t inter = h.count[i], uni = ca[x] + cb[y] - inter;
        if ((double)inter >= CP_BLOCKS_LINK_IOU * (double)uni)
            M->links += unite(M->parent, (uint32_t)(M->off[k] + x - 1), (uint32_t)(M->off[j] + y - 1));
    }
    free(h.key);
    free(h.count);
    free(la);
    free(lb);
    free(ca);
    free(cb);
    return rc;
}

static int link_all(merge *M)
{
    const cp_blocks_plan *pl = M->pl;
    if (!(M->parent = cp_malloc_array((size_t)M->total + 1, sizeof *M->parent, "union-find")))
        return CP_ENOMEM;
    for (int64_t g = 0; g < M->total; g++)
        M->parent[g] = (uint32_t)g;
    for (int64_t k = 0; k < pl->nblocks; k++) {
        int64_t idx[3] = {k / (pl->grid[1] * pl->grid[2]), k / pl->grid[2] % pl->grid[1], k % pl->grid[2]};
        /* the 13 neighbours after k in raster order (faces, edges, corners) */
        for (int d = 14; d < 27; d++) {
            int64_t o[3] = {d / 9 - 1, d / 3 % 3 - 1, d % 3 - 1}, t[3];
            int in = 1;
            for (int a = 0; a < 3; a++) {
                t[a] = idx[a] + o[a];
                in &= t[a] >= 0 && t[a] < pl->grid[a];
            }
            if (!in)
                continue;
            int rc = link_pair(M, k, (t[0] * pl->grid[1] + t[1]) * pl->grid[2] + t[2]);
            if (rc)
                return rc;
        }
    }
    return CP_OK;
}

/* ---- final labels ---------------------------------------------------------- */

typedef struct root_key {
    int64_t first;
    uint32_t root;
} root_key;

static int by_first(const void *a, const void *b)
{
    int64_t x = ((const root_key *)a)->first, y = ((const root_key *)b)->first;
    return x < y ? -1 : x > y;
}

static int number_cells(merge *M, cell **cells_out)
{
    int64_t T = M->total;
    int64_t *key = cp_malloc_array((size_t)T + 1, sizeof *key, "cell order");
    M->final = cp_calloc((size_t)T + 1, sizeof *M->final, "final labels");
    root_key *rk = cp_malloc_array((size_t)T + 1, sizeof *rk, "cell order");
    if (!key || !rk || !M->final) {
        free(key);
        free(rk);
        return CP_ENOMEM;
    }
    for (int64_t g = 0; g < T; g++)
        key[g] = INT64_MAX;
    for (int64_t g = 0; g < T; g++)
        if (M->lab[g].voxels) {
            uint32_t r = find(M->parent, (uint32_t)g);
            if (M->lab[g].first < key[r])
                key[r] = M->lab[g].first;
        }
    size_t nr = 0;
    for (int64_t g = 0; g < T; g++)
        if (key[g] != INT64_MAX)
            rk[nr++] = (root_key){key[g], (uint32_t)g};
    qsort(rk, nr, sizeof *rk, by_first);
    /* key[root] becomes the root's final label */
    for (size_t i = 0; i < nr; i++)
        key[rk[i].root] = (int64_t)i + 1;
    free(rk);
    cell *cells = cp_calloc(nr + 1, sizeof *cells, "cells");
    if (!cells) {
        free(key);
        return CP_ENOMEM;
    }
    for (int64_t g = 0; g < T; g++) {
        const cell *c = &M->lab[g];
        if (!c->voxels)
            continue;
        uint32_t f = (uint32_t)key[find(M->parent, (uint32_t)g)];
        M->final[g] = f;
        cell *o = &cells[f];
        if (!o->voxels) {
            *o = *c;
            continue;
        }
        o->voxels += c->voxels;
        for (int a = 0; a < 3; a++) {
            if (c->lo[a] < o->lo[a])
                o->lo[a] = c->lo[a];
            if (c->hi[a] > o->hi[a])
                o->hi[a] = c->hi[a];
        }
    }
    free(key);
    M->cells = (int64_t)nr;
    *cells_out = cells;
    return CP_OK;
}

/* Block k's core with final labels into buf (core size, C order). */
static int final_core(const merge *M, int64_t k, const cp_block_box *b, uint32_t *buf, size_t n)
{
    int rc = read_region(M, k, b, b->core0, b->core1, buf);
    const uint32_t *f = M->final + M->off[k];
    for (size_t i = 0; i < n && rc == CP_OK; i++) {
        if (buf[i] > M->nlab[k])
            return cp_error(CP_EFORMAT, "block %" PRId64 ": a label beyond its count", k);
        buf[i] = buf[i] ? f[buf[i] - 1] : 0;
    }
    return rc;
}

static size_t core_size(const cp_block_box *b, int64_t count[3])
{
    size_t n = 1;
    for (int a = 0; a < 3; a++)
        n *= (size_t)(count[a] = b->core1[a] - b->core0[a]);
    return n;
}

static int write_tiff(const merge *M, const char *out)
{
    const cp_blocks_plan *pl = M->pl;
    cp_image *img;
    int rc = cp_image_create(&img, (int)pl->shape[2], (int)pl->shape[1], 1, (int)pl->shape[0], CP_U32);
    if (rc)
        return rc;
    size_t bn = (size_t)pl->block[0] * pl->block[1] * pl->block[2];
    uint32_t *buf = cp_malloc_array(bn, sizeof *buf, "block core");
    if (!buf)
        rc = CP_ENOMEM;
    uint32_t *v = img ? img->data : NULL;
    for (int64_t k = 0; k < pl->nblocks && rc == CP_OK; k++) {
        cp_block_box b;
        cp_blocks_box(pl, k, &b);
        int64_t c[3];
        size_t n = core_size(&b, c);
        if ((rc = final_core(M, k, &b, buf, n)))
            break;
        for (int64_t z = 0; z < c[0]; z++)
            for (int64_t y = 0; y < c[1]; y++)
                memcpy(v + ((b.core0[0] + z) * pl->shape[1] + b.core0[1] + y) * pl->shape[2] + b.core0[2],
                       buf + (z * c[1] + y) * c[2], (size_t)c[2] * sizeof *buf);
    }
    free(buf);
    if (rc == CP_OK) {
        cp_write_opts wo = {.voxel = pl->voxel_found ? &pl->voxel : NULL};
        rc = cp_image_write(out, img, &wo);
    }
    cp_image_free(img);
    return rc;
}

static int write_zarr(const merge *M, const char *out)
{
    const cp_blocks_plan *pl = M->pl;
    cp_atomic_dir d = {0};
    int rc = cp_atomic_dir_open(&d, out, 1);
    if (rc)
        return rc;
    cp_zarr_opts zo = {.codec = CP_ZARR_ZLIB};
    cp_zarr *z = NULL;
    rc = cp_ome_create(d.tmp_path, 3, pl->shape, pl->block, CP_U32, pl->voxel_found ? &pl->voxel : NULL, &zo, 1,
                       &z);
    size_t bn = (size_t)pl->block[0] * pl->block[1] * pl->block[2];
    uint32_t *buf = rc == CP_OK ? cp_malloc_array(bn, sizeof *buf, "block core") : NULL;
    if (rc == CP_OK && !buf)
        rc = CP_ENOMEM;
    for (int64_t k = 0; k < pl->nblocks && rc == CP_OK; k++) {
        cp_block_box b;
        cp_blocks_box(pl, k, &b);
        int64_t c[3];
        size_t n = core_size(&b, c);
        if ((rc = final_core(M, k, &b, buf, n)) == CP_OK)
            rc = cp_zarr_write(z, b.core0, c, buf);
    }
    free(buf);
    if (z)
        cp_zarr_close(z);
    if (rc == CP_OK)
        rc = cp_atomic_dir_commit(&d);
    else
        cp_atomic_dir_abort(&d);
    return rc;
}

static int write_table(const char *path, const cell *cells, int64_t n)
{
    static const char *const cols[] = {"label", "voxels", "z0", "y0", "x0", "z1", "y1", "x1"};
    cp_atomic at;
    int rc = cp_atomic_open(&at, path);
    if (rc)
        return rc;
    cp_table_writer w;
    cp_tw_begin(&w, at.fp, CP_FMT_CSV, CP_FLOATS_SHORTEST, cols, 8);
    for (int64_t i = 1; i <= n; i++) {
        cp_tw_int(&w, i);
        cp_tw_int(&w, cells[i].voxels);
        for (int a = 0; a < 3; a++)
            cp_tw_int(&w, cells[i].lo[a]);
        for (int a = 0; a < 3; a++)
            cp_tw_int(&w, cells[i].hi[a]);
        cp_tw_end_row(&w);
    }
    if ((rc = cp_tw_end(&w))) {
        cp_atomic_abort(&at);
        return rc;
    }
    return cp_atomic_commit(&at);
}

static int missing_error(const cp_blocks_plan *pl, const char *workdir)
{
    int64_t *miss, nm;
    int rc = cp_blocks_missing(pl, workdir, &miss, &nm);
    if (rc || nm == 0) {
        free(miss);
        return rc;
    }
    char list[512] = "";
    size_t len = 0;
    int64_t shown = 0;
    for (; shown < nm && len + 40 < sizeof list; shown++)
        len += (size_t)snprintf(list + len, sizeof list - len, "%s%" PRId64, shown ? "," : "", miss[shown]);
    if (shown < nm)
        snprintf(list + len, sizeof list - len, ",... (%" PRId64 " in all)", nm);
    free(miss);
    return cp_error(CP_EINVAL, "%s: %" PRId64 " of %" PRId64 " blocks missing or failed, rerun them: %s", workdir,
                    nm, pl->nblocks, list);
}

int cp_blocks_merge(const char *workdir, const char *out, const char *table, cp_blocks_merge_stats *st)
{
    memset(st, 0, sizeof *st);
    double t0 = cp_seconds();
    cp_blocks_plan *pl;
    int rc = cp_blocks_plan_read(workdir, &pl);
    if (rc)
        return rc;
    merge M = {.pl = pl, .workdir = workdir};
    cell *cells = NULL;
    if ((rc = missing_error(pl, workdir)) == CP_OK && (rc = load_blocks(&M)) == CP_OK &&
        (rc = link_all(&M)) == CP_OK && (rc = number_cells(&M, &cells)) == CP_OK) {
        int tif = cp_ends_with(out, ".tif") || cp_ends_with(out, ".tiff");
        rc = tif ? write_tiff(&M, out) : write_zarr(&M, out);
    }
    if (rc == CP_OK && table)
        rc = write_table(table, cells, M.cells);
    for (int64_t g = 0; g < M.total; g++)
        st->labels += M.lab[g].voxels > 0;
    st->links = M.links;
    st->cells = M.cells;
    st->seconds = cp_seconds() - t0;
    free(cells);
    free(M.off);
    free(M.nlab);
    free(M.lab);
    free(M.parent);
    free(M.final);
    cp_blocks_plan_free(pl);
    return rc;
}
