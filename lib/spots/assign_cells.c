/* Spots to the cells of a label volume: each spot's label voxel from its z, y,
 * x, the volume read region by region so neither the spots nor the volume
 * need to fit in memory together with the other's full size. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cellpose/io.h"
#include "cellpose/spots.h"
#include "cellpose/zarr.h"
#include "core/internal.h"
#include "spots/spots_internal.h"

#define DEFAULT_MAX_VOXELS ((int64_t)8 << 20)
/* Regions grow past max_voxels rather than the block index outgrowing this. */
#define MAX_BLOCKS ((int64_t)1 << 22)

/* ---- the label volume, read by regions ---------------------------------- */

typedef struct lvol {
    const char *path;
    cp_vol_reader *r;
    int64_t ext[3]; /* depth, height, width */
} lvol;

static void lvol_close(lvol *v)
{
    cp_vol_close(v->r);
    v->r = NULL;
}

static int lvol_open(lvol *v, const char *path)
{
    memset(v, 0, sizeof *v);
    v->path = path;
    int rc = cp_vol_open(path, CP_AXIS_AUTO, CP_AXIS_AUTO, &v->r);
    if (rc)
        return rc;
    int ch;
    cp_vol_shape(v->r, &v->ext[0], &v->ext[1], &v->ext[2], &ch);
    cp_dtype dt = cp_vol_dtype(v->r);
    if (ch != 1)
        rc = cp_error(CP_EINVAL, "%s: a label volume has one channel, not %d", path, ch);
    else if (cp_dtype_is_float(dt))
        rc = cp_error(CP_EINVAL, "%s: labels must be integers, not %s", path, cp_dtype_name(dt));
    if (rc)
        lvol_close(v);
    return rc;
}

/* The box at o (z, y, x) of size n, as an image of n[0] planes. */
static int lvol_read(lvol *v, const int64_t o[3], const int64_t n[3], cp_image **out)
{
    return cp_vol_read(v->r, o[0], o[1], o[2], n[0], n[1], n[2], out);
}

/* Label of sample i; -1 when negative or beyond int64. */
static int64_t label_of(const cp_image *im, size_t i)
{
    const void *p = im->data;
    int64_t v;
    switch (im->dtype) {
    case CP_U8: return ((const uint8_t *)p)[i];
    case CP_U16: return ((const uint16_t *)p)[i];
    case CP_U32: return ((const uint32_t *)p)[i];
    case CP_U64: {
        uint64_t u = ((const uint64_t *)p)[i];
        return u > (uint64_t)INT64_MAX ? -1 : (int64_t)u;
    }
    case CP_I8: v = ((const int8_t *)p)[i]; break;
    case CP_I16: v = ((const int16_t *)p)[i]; break;
    case CP_I32: v = ((const int32_t *)p)[i]; break;
    case CP_I64: v = ((const int64_t *)p)[i]; break;
    default: return -1;
    }
    return v < 0 ? -1 : v;
}

/* ---- the block grid --------------------------------------------------------- */

typedef struct grid {
    int64_t ext[3], b[3], n[3];
    size_t nblocks;
} grid;

/* The volume's natural read unit (z, y, x): a Zarr chunk, else a row of one
 * plane (TIFF strips and NPY rows are decoded whole). */
static void read_unit(const char *path, const int64_t ext[3], int64_t unit[3])
{
    unit[0] = unit[1] = 1;
    unit[2] = ext[2];
    struct stat st;
    cp_ome_info info;
    cp_zarr *z;
    if (stat(path, &st) || !S_ISDIR(st.st_mode) || cp_ome_open(path, 0, &info, &z))
        return;
    static const char *names[3] = {"z", "y", "x"};
    const int64_t *ch = cp_zarr_chunks(z);
    for (int i = 0; i < info.ndim; i++)
        for (int a = 0; a < 3; a++)
            if (!strcmp(info.axes[i], names[a]))
                unit[a] = ch[i] < ext[a] ? ch[i] : ext[a];
    cp_zarr_close(z);
}

/* Blocks of whole read units, grown along x, then y, then z while they stay
 * within max_voxels (one unit when a unit alone is larger), so each unit is
 * decoded about once. */
static void grid_init(grid *g, const char *path, const int64_t ext[3], int64_t max_voxels)
{
    double vox = (double)ext[0] * (double)ext[1] * (double)ext[2], budget = (double)max_voxels;
    if (vox / budget > (double)MAX_BLOCKS)
        budget = ceil(vox / (double)MAX_BLOCKS);
    read_unit(path, ext, g->b);
    for (int a = 2; a >= 0; a--) {
        double rest = (double)g->b[0] * (double)g->b[1] * (double)g->b[2] / (double)g->b[a];
        int64_t k = (int64_t)(budget / (rest * (double)g->b[a]));
        if (k > 1)
            g->b[a] = k * g->b[a] < ext[a] ? k * g->b[a] : ext[a];
    }
    g->nblocks = 1;
    for (int a = 0; a < 3; a++) {
        g->ext[a] = ext[a];
        g->n[a] = (ext[a] + g->b[a] - 1) / g->b[a];
        g->nblocks *= (size_t)g->n[a];
    }
}

static size_t block_of(const grid *g, const int64_t v[3])
{
    return ((size_t)(v[0] / g->b[0]) * (size_t)g->n[1] + (size_t)(v[1] / g->b[1])) * (size_t)g->n[2] +
           (size_t)(v[2] / g->b[2]);
}

/* Label voxel of a row's spot; 0 when outside the volume or a coordinate is
 * null. */
static int spot_voxel(const cp_scol *const c[3], size_t r, const double s[3], const int64_t ext[3], int64_t v[3])
{
    for (int a = 0; a < 3; a++) {
        if (cp_scol_is_null(c[a], r))
            return 0;
        double p = floor(cp_scol_num(c[a], r) * s[a] + 0.5);
        if (!(p >= 0 && p < (double)ext[a]))
            return 0;
        v[a] = (int64_t)p;
    }
    return 1;
}

static int64_t max_voxels_of(const cp_spot_label_opts *o)
{
    return o && o->max_voxels > 0 ? o->max_voxels : DEFAULT_MAX_VOXELS;
}

/* The caller's progress callback; CP_EINTR when it asks to stop. */
static int report(const cp_spot_label_opts *o, size_t done, size_t total)
{
    if (o && o->progress && o->progress(o->user, done, total))
        return cp_error(CP_EINTR, "interrupted");
    return CP_OK;
}

/* ---- spots to labels ----------------------------------------------------- */

int cp_spot_assign_labels(cp_stable *t, const char *path, const cp_spot_label_opts *o, const char *name)
{
    double s[3];
    const cp_scol *c[3];
    const char *axes[3] = {"z", "y", "x"};
    for (int a = 0; a < 3; a++) {
        s[a] = o && o->scale[a] > 0 ? o->scale[a] : 1.0;
        if (o && o->coords[a])
            axes[a] = o->coords[a];
        int k = cp_stable_find(t, axes[a]);
        if (k < 0 || t->cols[k].type == CP_SCOL_STR)
            return cp_error(CP_EINVAL, "spots to cells need a numeric '%s' column", axes[a]);
        c[a] = &t->cols[k];
    }
    if (cp_stable_find(t, name) >= 0)
        return cp_error(CP_EINVAL, "the spot table already has a column '%s'", name);
    lvol vol;
    int rc = lvol_open(&vol, path);
    if (rc)
        return rc;
    grid g;
    grid_init(&g, path, vol.ext, max_voxels_of(o));
    size_t n = t->nrows;
    uint32_t *bid = cp_malloc_array(n + 1, sizeof *bid, "spot blocks");
    uint32_t *order = cp_malloc_array(n + 1, sizeof *order, "spot blocks");
    size_t *start = cp_calloc(g.nblocks + 2, sizeof *start, "spot blocks");
    cp_image *reg = NULL;
    rc = bid && order && start ? CP_OK : CP_ENOMEM;
    /* bucket the spots inside the volume by block (a counting sort keeps
     * each block's rows ascending) */
    for (size_t r = 0; r < n && !rc; r++) {
        int64_t v[3];
        bid[r] = UINT32_MAX;
        if (spot_voxel(c, r, s, g.ext, v)) {
            bid[r] = (uint32_t)block_of(&g, v);
            start[bid[r] + 1]++;
        }
    }
    for (size_t b = 0; b < g.nblocks && !rc; b++)
        start[b + 1] += start[b];
    for (size_t r = 0; r < n && !rc; r++)
        if (bid[r] != UINT32_MAX)
            order[start[bid[r]]++] = (uint32_t)r;
    for (size_t b = g.nblocks; b > 0 && !rc; b--)
        start[b] = start[b - 1];
    if (!rc)
        start[0] = 0;
    free(bid);
    bid = NULL;
    if (!rc) {
        /* every row gets a value: no null bitmap */
        size_t keep = t->nrows;
        t->nrows = 0;
        rc = cp_stable_add_col(t, name, CP_SCOL_I64);
        t->nrows = keep;
    }
    int64_t *out = rc ? NULL : t->cols[t->ncols - 1].v;
    for (int a = 0; a < 3 && !rc; a++) /* adding the column moved them */
        c[a] = &t->cols[cp_stable_find(t, axes[a])];
    size_t nread = 0, done = 0;
    for (size_t b = 0; b < g.nblocks && !rc; b++)
        nread += start[b] != start[b + 1];
    for (size_t b = 0; b < g.nblocks && !rc; b++) {
        if (start[b] == start[b + 1])
            continue;
        int64_t lo[3] = {INT64_MAX, INT64_MAX, INT64_MAX}, hi[3] = {-1, -1, -1}, v[3], cnt[3];
        for (size_t i = start[b]; i < start[b + 1]; i++) {
            spot_voxel(c, order[i], s, g.ext, v);
            for (int a = 0; a < 3; a++) {
                lo[a] = v[a] < lo[a] ? v[a] : lo[a];
                hi[a] = v[a] > hi[a] ? v[a] : hi[a];
            }
        }
        for (int a = 0; a < 3; a++)
            cnt[a] = hi[a] - lo[a] + 1;
        if ((rc = lvol_read(&vol, lo, cnt, &reg)))
            break;
        for (size_t i = start[b]; i < start[b + 1]; i++) {
            spot_voxel(c, order[i], s, g.ext, v);
            size_t at = ((size_t)(v[0] - lo[0]) * (size_t)cnt[1] + (size_t)(v[1] - lo[1])) * (size_t)cnt[2] +
                        (size_t)(v[2] - lo[2]);
            int64_t L = label_of(reg, at);
            if (L < 0) {
                rc = cp_error(CP_EFORMAT, "%s: the label at z=%lld y=%lld x=%lld is negative or too large", path,
                              (long long)v[0], (long long)v[1], (long long)v[2]);
                break;
            }
            out[order[i]] = L;
        }
        cp_image_free(reg);
        reg = NULL;
        if (!rc)
            rc = report(o, ++done, nread);
    }
    free(order);
    free(start);
    lvol_close(&vol);
    return rc;
}

/* ---- scale from voxel sizes ------------------------------------------------- */

/* Micrometres per unit of a length unit's name; 0 when not a length. */
static double unit_um(const char *u)
{
    static const struct {
        const char *name;
        double um;
    } units[] = {{"", 1},          {"micrometer", 1}, {"micrometre", 1}, {"micron", 1}, {"microns", 1},
                 {"um", 1},        {"\xc2\xb5m", 1},  {"\xce\xbcm", 1},  {"nanometer", 1e-3},
                 {"nanometre", 1e-3}, {"nm", 1e-3},    {"millimeter", 1e3}, {"millimetre", 1e3}, {"mm", 1e3}};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (!strcmp(u, units[i].name))
            return units[i].um;
    return 0;
}

int cp_spot_label_scale(const cp_spot_dataset *d, const char *path, double scale[3])
{
    double spot[3];
    int found;
    cp_spot_voxel_size(d, spot, &found);
    if (!found)
        return cp_error(CP_EINVAL, "%s: no voxel size for the spot coordinates (the fused channel's .zattrs)",
                        d->root ? d->root : "the spot table");
    lvol vol;
    int rc = lvol_open(&vol, path);
    if (rc)
        return rc;
    cp_voxel_size vs;
    rc = cp_vol_voxel_size(vol.r, &vs, &found);
    lvol_close(&vol);
    if (rc)
        return rc;
    if (!found)
        return cp_error(CP_EINVAL, "%s: no voxel size (OME-NGFF scale or ImageJ calibration)", path);
    double um = unit_um(vs.unit), lab[3] = {vs.z, vs.y, vs.x};
    if (um == 0)
        return cp_error(CP_EINVAL, "%s: voxel size unit '%s' is not a length", path, vs.unit);
    for (int a = 0; a < 3; a++) {
        if (!(lab[a] > 0))
            return cp_error(CP_EINVAL, "%s: voxel size %g is not positive", path, lab[a]);
        scale[a] = spot[a] / (lab[a] * um);
    }
    return CP_OK;
}

/* ---- every label of a volume ---------------------------------------------- */

/* Sort and deduplicate ids[0..*n). */
static void sort_unique(int64_t *ids, size_t *n)
{
    if (*n < 2)
        return;
    qsort(ids, *n, sizeof *ids, cp_i64_cmp);
    size_t m = 0;
    for (size_t i = 0; i < *n; i++)
        if (!m || ids[m - 1] != ids[i])
            ids[m++] = ids[i];
    *n = m;
}

int cp_label_volume_ids(const char *path, const cp_spot_label_opts *o, int64_t **idsp, size_t *np)
{
    *idsp = NULL;
    *np = 0;
    lvol vol;
    int rc = lvol_open(&vol, path);
    if (rc)
        return rc;
    grid g;
    grid_init(&g, path, vol.ext, max_voxels_of(o));
    int64_t *ids = NULL;
    size_t n = 0, cap = 0;
    cp_image *reg = NULL;
    for (int64_t bz = 0; bz < g.n[0] && !rc; bz++)
        for (int64_t by = 0; by < g.n[1] && !rc; by++)
            for (int64_t bx = 0; bx < g.n[2] && !rc; bx++) {
                int64_t lo[3] = {bz * g.b[0], by * g.b[1], bx * g.b[2]}, cnt[3];
                for (int a = 0; a < 3; a++)
                    cnt[a] = lo[a] + g.b[a] > g.ext[a] ? g.ext[a] - lo[a] : g.b[a];
                if ((rc = lvol_read(&vol, lo, cnt, &reg)))
                    break;
                size_t nv = (size_t)cnt[0] * (size_t)cnt[1] * (size_t)cnt[2];
                int64_t prev = 0;
                for (size_t i = 0; i < nv && !rc; i++) {
                    int64_t L = label_of(reg, i);
                    if (L < 0) {
                        rc = cp_error(CP_EFORMAT, "%s: a label is negative or too large", path);
                        break;
                    }
                    /* neighbours mostly share a label: only changes are kept */
                    if (L == 0 || L == prev)
                        continue;
                    prev = L;
                    if (n == cap) {
                        /* deduplicate before growing: memory follows the
                         * number of cells, not of voxels */
                        sort_unique(ids, &n);
                        if (n > cap / 2 || !cap) {
                            size_t nc = cap ? cap * 2 : 4096;
                            int64_t *ni = realloc(ids, nc * sizeof *ni);
                            if (!ni) {
                                rc = cp_error(CP_ENOMEM, "out of memory (labels of %s)", path);
                                break;
                            }
                            ids = ni;
                            cap = nc;
                        }
                    }
                    ids[n++] = L;
                }
                cp_image_free(reg);
                reg = NULL;
                if (!rc)
                    rc = report(o, (size_t)((bz * g.n[1] + by) * g.n[2] + bx + 1), g.nblocks);
            }
    if (!rc)
        sort_unique(ids, &n);
    lvol_close(&vol);
    if (rc) {
        free(ids);
        return rc;
    }
    *idsp = ids;
    *np = n;
    return CP_OK;
}
