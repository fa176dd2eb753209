/* Blockwise 3D segmentation: the plan (grid, whole-volume normalisation,
 * plan.json), one block's run, and the blocks' files. The merge is in
 * blocks_merge.c. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cellpose/blocks.h"
#include "cellpose/cellpose.h"
#include "core/internal.h"
#include "core/sha256.h"
#include "segment/blocks_internal.h"

/* lib/spots/dataset.c */
char *cp_spot_read_text(const char *path, size_t max, size_t *len);

#define PLAN_FORMAT "cptools-blocks 1"
/* the plan's scan for the percentiles: samples per read, planes per read */
#define SCAN_BOX_SAMPLES ((int64_t)1 << 26)
#define SCAN_SLAB 16

/* ---- the grid -------------------------------------------------------------- */

void cp_blocks_box(const cp_blocks_plan *pl, int64_t k, cp_block_box *b)
{
    int64_t idx[3] = {k / (pl->grid[1] * pl->grid[2]), k / pl->grid[2] % pl->grid[1], k % pl->grid[2]};
    for (int a = 0; a < 3; a++) {
        b->core0[a] = idx[a] * pl->block[a];
        b->core1[a] = b->core0[a] + pl->block[a] < pl->shape[a] ? b->core0[a] + pl->block[a] : pl->shape[a];
        b->box0[a] = b->core0[a] > pl->overlap[a] ? b->core0[a] - pl->overlap[a] : 0;
        b->box1[a] = b->core1[a] + pl->overlap[a] < pl->shape[a] ? b->core1[a] + pl->overlap[a] : pl->shape[a];
    }
}

static int make_grid(cp_blocks_plan *pl, const int64_t block[3], const int64_t overlap[3])
{
    const cp_seg_params *p = &pl->params;
    double d = p->diameter > 0 ? p->diameter : 30.0;
    double aniso = p->do_3d && p->anisotropy > 0 ? p->anisotropy : 1.0;
    pl->nblocks = 1;
    for (int a = 0; a < 3; a++) {
        int64_t b = block && block[a] > 0 ? block[a] : CP_BLOCKS_DEFAULT_SIZE;
        pl->block[a] = b < pl->shape[a] ? b : pl->shape[a];
        pl->overlap[a] = overlap && overlap[a] >= 0 ? overlap[a] : (int64_t)ceil(2.0 * d / (a == 0 ? aniso : 1.0));
        pl->grid[a] = (pl->shape[a] + pl->block[a] - 1) / pl->block[a];
        if (pl->grid[a] > INT64_MAX / pl->nblocks)
            return cp_error(CP_ELIMIT, "blocks: too many blocks");
        pl->nblocks *= pl->grid[a];
    }
    if (pl->nblocks > 100000000)
        return cp_error(CP_ELIMIT, "%s: %" PRId64 " blocks: give larger blocks", pl->input, pl->nblocks);
    return CP_OK;
}

/* ---- whole-volume normalisation ------------------------------------------- */

/* Append the norm3D samples of plane `plane` of img (rows y0.. of the
 * volume) to each channel's buffer. */
static int sample_band(const cp_image *img, int plane, int64_t y0, const int64_t st[3], const cp_seg_params *p,
                       cp_arch arch, float **buf, size_t *k, int nch)
{
    cp_planes *pp;
    int rc = cp_select_channels(img, plane, arch, p->chan, p->chan2, &pp);
    if (rc)
        return rc;
    for (int c = 0; c < nch; c++) {
        size_t n = k[c];
        for (int64_t y = 0; y < img->height; y++) {
            if ((y0 + y) % st[1])
                continue;
            const float *row = pp->data + ((size_t)c * img->height + (size_t)y) * img->width;
            for (int64_t x = 0; x < img->width; x += st[2])
                buf[c][n++] = row[x];
        }
        k[c] = n;
    }
    cp_planes_free(pp);
    return CP_OK;
}

static int whole_volume_norm(cp_blocks_plan *pl, cp_vol_reader *r)
{
    cp_seg_params *p = &pl->params;
    int nch = pl->arch == CP_ARCH_CPSAM ? 3 : 2;
    int64_t st[3];
    cp_norm_strides(pl->shape[0], pl->shape[1], pl->shape[2], &st[0], &st[1], &st[2]);
    size_t ns = (size_t)((pl->shape[0] + st[0] - 1) / st[0]) * (size_t)((pl->shape[1] + st[1] - 1) / st[1]) *
                (size_t)((pl->shape[2] + st[2] - 1) / st[2]);
    float *buf[3] = {0};
    size_t k[3] = {0};
    int rc = CP_OK;
    for (int c = 0; c < nch && rc == CP_OK; c++)
        if (!(buf[c] = cp_malloc_array(ns, sizeof(float), "percentile samples")))
            rc = CP_ENOMEM;
    /* Boxes of up to SCAN_SLAB planes when every plane is sampled, so that
     * deep chunks (Zarr) are not decompressed once per plane; one plane
     * otherwise. Rows: as many as SCAN_BOX_SAMPLES allows. */
    int64_t slab = st[0] == 1 ? SCAN_SLAB : 1;
    if (slab > pl->shape[0])
        slab = pl->shape[0];
    int64_t band = SCAN_BOX_SAMPLES / (slab * pl->shape[2] * pl->channels);
    if (band < 1)
        band = 1;
    for (int64_t z = 0; z < pl->shape[0] && rc == CP_OK; z += slab == 1 ? st[0] : slab) {
        int64_t dz = z + slab < pl->shape[0] ? slab : pl->shape[0] - z;
        for (int64_t y = 0; y < pl->shape[1] && rc == CP_OK; y += band) {
            int64_t dy = y + band < pl->shape[1] ? band : pl->shape[1] - y;
            cp_image *img;
            if ((rc = cp_vol_read(r, z, y, 0, dz, dy, pl->shape[2], &img)))
                break;
            for (int i = 0; i < dz && rc == CP_OK; i++)
                rc = sample_band(img, i, y, st, p, pl->arch, buf, k, nch);
            cp_image_free(img);
        }
    }
    p->norm_fixed.channels = nch;
    for (int c = 0; c < nch && rc == CP_OK; c++)
        rc = cp_norm_channel_values(buf[c], k[c], p->norm_lo, p->norm_hi, &p->norm_fixed.skip[c],
                                    &p->norm_fixed.lo[c], &p->norm_fixed.hi[c]);
    for (int c = 0; c < nch; c++)
        free(buf[c]);
    return rc;
}

int cp_blocks_plan_create(const char *input, int z_axis, int channel_axis, const int64_t block[3],
                          const int64_t overlap[3], const cp_seg_params *p, cp_arch arch, const char *model_path,
                          const char *model_sha256, cp_blocks_plan **out)
{
    *out = NULL;
    if (!p->do_3d && !(p->stitch_threshold > 0))
        return cp_error(CP_EINVAL, "blocks: give a 3D mode (do_3D or a stitch threshold)");
    if (p->exclude_on_edges)
        return cp_error(CP_EUNSUPPORTED, "blocks: exclude_on_edges is not supported blockwise");
    cp_blocks_plan *pl = cp_calloc(1, sizeof *pl, "plan");
    if (!pl)
        return CP_ENOMEM;
    pl->params = *p;
    pl->params.threads = 0;
    memset(&pl->params.norm_fixed, 0, sizeof pl->params.norm_fixed);
    pl->z_axis = z_axis;
    pl->channel_axis = channel_axis;
    pl->arch = arch;
    snprintf(pl->model_sha256, sizeof pl->model_sha256, "%s", model_sha256 ? model_sha256 : "");
    char *abs = realpath(input, NULL);
    int rc = CP_OK;
    if (!abs)
        rc = cp_error(CP_EIO, "%s: %s", input, strerror(errno));
    pl->input = abs;
    if (rc == CP_OK && !(pl->model_path = cp_strdup(model_path ? model_path : "")))
        rc = CP_ENOMEM;
    cp_vol_reader *r = NULL;
    if (rc == CP_OK)
        rc = cp_vol_open(input, z_axis, channel_axis, &r);
    if (rc == CP_OK) {
        cp_vol_shape(r, &pl->shape[0], &pl->shape[1], &pl->shape[2], &pl->channels);
        if (pl->shape[0] < 2)
            rc = cp_error(CP_EINVAL, "%s: one plane: blocks are for volumes", input);
    }
    if (rc == CP_OK)
        rc = cp_vol_voxel_size(r, &pl->voxel, &pl->voxel_found);
    if (rc == CP_OK)
        rc = make_grid(pl, block, overlap);
    if (rc == CP_OK && p->normalize)
        rc = whole_volume_norm(pl, r);
    cp_vol_close(r);
    if (rc) {
        cp_blocks_plan_free(pl);
        return rc;
    }
    *out = pl;
    return CP_OK;
}

void cp_blocks_plan_free(cp_blocks_plan *pl)
{
    if (!pl)
        return;
    free(pl->input);
    free(pl->model_path);
    free(pl);
}

/* ---- plan.json ---------------------------------------------------------------- */

static cJSON *int3(const int64_t v[3])
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < 3; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber((double)v[i]));
    return a;
}

/* The segmentation settings: every field of cp_seg_params that changes the
 * labels (threads and the normalisation values are kept elsewhere). */
#define SEG_FIELDS(X)                                                                                              \
    X(diameter, diameter) X(chan, chan) X(chan2, chan2) X(normalize, normalize) X(norm_lo, norm_lo)                \
    X(norm_hi, norm_hi) X(tile_overlap, tile_overlap) X(batch_size, batch_size) X(augment, augment)               \
    X(niter, niter) X(cellprob_threshold, cellprob_threshold) X(flow_threshold, flow_threshold)                    \
    X(min_size, min_size) X(max_size_fraction, max_size_fraction) X(dynamics, dynamics)                            \
    X(v3_label_bug, v3_label_bug) X(diam_mean, diam_mean) X(do_3d, do_3D) X(stitch_threshold, stitch_threshold)   \
    X(anisotropy, anisotropy) X(flow3d_smooth[0], flow3D_smooth_z) X(flow3d_smooth[1], flow3D_smooth_y)           \
    X(flow3d_smooth[2], flow3D_smooth_x)

static char *plan_text(const cp_blocks_plan *pl)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "format", PLAN_FORMAT);
    cJSON_AddStringToObject(o, "input", pl->input);
    if (pl->z_axis != CP_AXIS_AUTO)
        cJSON_AddNumberToObject(o, "z_axis", pl->z_axis);
    if (pl->channel_axis != CP_AXIS_AUTO)
        cJSON_AddNumberToObject(o, "channel_axis", pl->channel_axis);
    cJSON_AddItemToObject(o, "shape", int3(pl->shape));
    cJSON_AddNumberToObject(o, "channels", pl->channels);
    cJSON_AddItemToObject(o, "block_size", int3(pl->block));
    cJSON_AddItemToObject(o, "overlap", int3(pl->overlap));
    cJSON_AddItemToObject(o, "grid", int3(pl->grid));
    cJSON_AddNumberToObject(o, "blocks", (double)pl->nblocks);
    if (pl->voxel_found) {
        cJSON *v = cJSON_AddObjectToObject(o, "voxel_size");
        cJSON_AddNumberToObject(v, "z", pl->voxel.z);
        cJSON_AddNumberToObject(v, "y", pl->voxel.y);
        cJSON_AddNumberToObject(v, "x", pl->voxel.x);
        cJSON_AddStringToObject(v, "unit", pl->voxel.unit);
    }
    cJSON *m = cJSON_AddObjectToObject(o, "model");
    cJSON_AddStringToObject(m, "path", pl->model_path);
    cJSON_AddStringToObject(m, "sha256", pl->model_sha256);
    cJSON_AddStringToObject(m, "arch", pl->arch == CP_ARCH_CPSAM ? "cpsam" : "cpnet");
    const cp_seg_params *p = &pl->params;
    cJSON *s = cJSON_AddObjectToObject(o, "segmentation");
#define ADD(field, name) cJSON_AddNumberToObject(s, #name, (double)p->field);
    SEG_FIELDS(ADD)
#undef ADD
    const cp_norm_fixed *nf = &p->norm_fixed;
    cJSON *n = cJSON_AddArrayToObject(o, "normalization");
    for (int c = 0; c < nf->channels; c++) {
        cJSON *ch = cJSON_CreateObject();
        cJSON_AddBoolToObject(ch, "skip", nf->skip[c]);
        cJSON_AddNumberToObject(ch, "lo", nf->lo[c]);
        cJSON_AddNumberToObject(ch, "hi", nf->hi[c]);
        cJSON_AddItemToArray(n, ch);
    }
    char *t = cJSON_Print(o);
    cJSON_Delete(o);
    if (!t)
        cp_error(CP_ENOMEM, "plan.json: out of memory");
    return t;
}

int cp_blocks_write_text(const char *path, const char *text)
{
    cp_atomic at;
    int rc = cp_atomic_open(&at, path);
    if (rc)
        return rc;
    if (fputs(text, at.fp) < 0 || fputc('\n', at.fp) < 0) {
        cp_atomic_abort(&at);
        return cp_error(CP_EIO, "%s: cannot write", path);
    }
    return cp_atomic_commit(&at);
}

int cp_blocks_plan_write(cp_blocks_plan *pl, const char *workdir)
{
    int rc = cp_mkdirs(workdir);
    if (rc)
        return rc;
    char *t = plan_text(pl);
    if (!t)
        return CP_ENOMEM;
    cp_sha256_buf(t, strlen(t), pl->sha256);
    char *path = cp_path_join(workdir, "plan.json");
    rc = path ? cp_blocks_write_text(path, t) : CP_ENOMEM;
    free(path);
    free(t);
    return rc;
}

static int get_num(const cJSON *o, const char *key, const char *path, double *v)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(j))
        return cp_error(CP_EFORMAT, "%s: no number \"%s\"", path, key);
    *v = j->valuedouble;
    return CP_OK;
}

static int get_int3(const cJSON *o, const char *key, const char *path, int64_t lo, int64_t v[3])
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != 3)
        return cp_error(CP_EFORMAT, "%s: \"%s\" is not 3 numbers", path, key);
    for (int i = 0; i < 3; i++) {
        const cJSON *e = cJSON_GetArrayItem(a, i);
        if (!cJSON_IsNumber(e) || e->valuedouble < (double)lo || e->valuedouble > 1e15 ||
            e->valuedouble != floor(e->valuedouble))
            return cp_error(CP_EFORMAT, "%s: \"%s\" holds a bad value", path, key);
        v[i] = (int64_t)e->valuedouble;
    }
    return CP_OK;
}

static const char *get_str(const cJSON *o, const char *key)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(j) ? j->valuestring : NULL;
}

static int parse_plan(cp_blocks_plan *pl, const cJSON *o, const char *path)
{
    const char *fmt = get_str(o, "format"), *in = get_str(o, "input");
    if (!fmt || strcmp(fmt, PLAN_FORMAT) != 0 || !in)
        return cp_error(CP_EFORMAT, "%s: not a plan of cpseg --plan (%s)", path, PLAN_FORMAT);
    if (!(pl->input = cp_strdup(in)))
        return CP_ENOMEM;
    double v = 0;
    pl->z_axis = get_num(o, "z_axis", path, &v) == CP_OK ? (int)v : CP_AXIS_AUTO;
    pl->channel_axis = get_num(o, "channel_axis", path, &v) == CP_OK ? (int)v : CP_AXIS_AUTO;
    int rc;
    if ((rc = get_int3(o, "shape", path, 1, pl->shape)) || (rc = get_int3(o, "block_size", path, 1, pl->block)) ||
        (rc = get_int3(o, "overlap", path, 0, pl->overlap)) || (rc = get_num(o, "channels", path, &v)))
        return rc;
    pl->channels = (int)v;
    if ((rc = make_grid(pl, pl->block, pl->overlap)))
        return rc;
    int64_t g[3];
    if ((rc = get_int3(o, "grid", path, 1, g)) || (rc = get_num(o, "blocks", path, &v)))
        return rc;
    if (memcmp(g, pl->grid, sizeof g) != 0 || v != (double)pl->nblocks)
        return cp_error(CP_EFORMAT, "%s: grid and block count do not follow from shape and block size", path);
    const cJSON *vs = cJSON_GetObjectItemCaseSensitive(o, "voxel_size");
    if (cJSON_IsObject(vs)) {
        const char *u = get_str(vs, "unit");
        if ((rc = get_num(vs, "z", path, &pl->voxel.z)) || (rc = get_num(vs, "y", path, &pl->voxel.y)) ||
            (rc = get_num(vs, "x", path, &pl->voxel.x)))
            return rc;
        snprintf(pl->voxel.unit, sizeof pl->voxel.unit, "%s", u ? u : "");
        pl->voxel_found = 1;
    }
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, "model");
    const char *mp = get_str(m, "path"), *ms = get_str(m, "sha256"), *ma = get_str(m, "arch");
    if (!mp || !ms || !ma)
        return cp_error(CP_EFORMAT, "%s: no model path, sha256 and arch", path);
    if (!(pl->model_path = cp_strdup(mp)))
        return CP_ENOMEM;
    snprintf(pl->model_sha256, sizeof pl->model_sha256, "%s", ms);
    pl->arch = strcmp(ma, "cpsam") == 0 ? CP_ARCH_CPSAM : CP_ARCH_CPNET;
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(o, "segmentation");
    cp_seg_params *p = &pl->params;
    cp_seg_params_default(p);
#define GET(field, name)                                                                                           \
    if ((rc = get_num(s, #name, path, &v)))                                                                        \
        return rc;                                                                                                 \
    p->field = (__typeof__(p->field))v;
    SEG_FIELDS(GET)
#undef GET
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(o, "normalization"), *ch;
    int nc = cJSON_IsArray(n) ? cJSON_GetArraySize(n) : -1;
    if (nc < 0 || nc > CP_NORM_MAX_CHANNELS)
        return cp_error(CP_EFORMAT, "%s: bad \"normalization\"", path);
    p->norm_fixed.channels = nc;
    int c = 0;
    cJSON_ArrayForEach(ch, n) {
        const cJSON *sk = cJSON_GetObjectItemCaseSensitive(ch, "skip");
        if (!cJSON_IsBool(sk) || (rc = get_num(ch, "lo", path, &p->norm_fixed.lo[c])) ||
            (rc = get_num(ch, "hi", path, &p->norm_fixed.hi[c])))
            return rc ? rc : cp_error(CP_EFORMAT, "%s: bad \"normalization\"", path);
        p->norm_fixed.skip[c++] = cJSON_IsTrue(sk);
    }
    return CP_OK;
}

int cp_blocks_plan_read(const char *workdir, cp_blocks_plan **out)
{
    *out = NULL;
    char *path = cp_path_join(workdir, "plan.json");
    if (!path)
        return CP_ENOMEM;
    size_t len;
    char *text = cp_spot_read_text(path, 1u << 20, &len);
    if (!text) {
        int rc = cp_error(CP_EIO, "%s: no plan here (%s): run cpseg --plan first", workdir, cp_errmsg());
        free(path);
        return rc;
    }
    cp_blocks_plan *pl = cp_calloc(1, sizeof *pl, "plan");
    cJSON *o = cJSON_Parse(text);
    int rc = !pl ? CP_ENOMEM : !cJSON_IsObject(o) ? cp_error(CP_EFORMAT, "%s: not JSON", path) : CP_OK;
    if (rc == CP_OK)
        rc = parse_plan(pl, o, path);
    if (rc == CP_OK) {
        /* the hash is of the text as written, without the final newline */
        while (len > 0 && text[len - 1] == '\n')
            len--;
        cp_sha256_buf(text, len, pl->sha256);
    }
    cJSON_Delete(o);
    free(text);
    free(path);
    if (rc) {
        cp_blocks_plan_free(pl);
        return rc;
    }
    *out = pl;
    return CP_OK;
}

int cp_blocks_check_params(const cp_blocks_plan *pl, const cp_seg_params *p)
{
    const cp_seg_params *q = &pl->params;
#define CMP(field, name)                                                                                           \
    if ((double)p->field != (double)q->field)                                                                      \
        return cp_error(CP_EINVAL, "%s %g differs from the plan's %g: plan again or give the plan's settings",     \
                        #name, (double)p->field, (double)q->field);
    SEG_FIELDS(CMP)
#undef CMP
    return CP_OK;
}

/* ---- blocks ------------------------------------------------------------------ */

char *cp_blocks_dir(const char *workdir, int64_t k)
{
    char name[64];
    snprintf(name, sizeof name, "blocks/%" PRId64, k);
    return cp_path_join(workdir, name);
}

int cp_blocks_read_block_json(const cp_blocks_plan *pl, const char *workdir, int64_t k, cJSON **out)
{
    *out = NULL;
    char *dir = cp_blocks_dir(workdir, k);
    char *path = dir ? cp_path_join(dir, "block.json") : NULL;
    int rc = CP_OK;
    char *text = path ? cp_spot_read_text(path, (size_t)1 << 31, NULL) : NULL;
    cJSON *o = text ? cJSON_Parse(text) : NULL;
    if (!path)
        rc = CP_ENOMEM;
    else if (!text)
        rc = cp_error(CP_EIO, "block %" PRId64 ": not done", k);
    else if (!cJSON_IsObject(o))
        rc = cp_error(CP_EFORMAT, "%s: not JSON", path);
    else {
        const char *ps = get_str(o, "plan_sha256");
        const cJSON *kk = cJSON_GetObjectItemCaseSensitive(o, "block");
        if (!ps || strcmp(ps, pl->sha256) != 0 || !cJSON_IsNumber(kk) || kk->valuedouble != (double)k)
            rc = cp_error(CP_EINVAL, "block %" PRId64 ": made for another plan", k);
    }
    free(text);
    free(path);
    free(dir);
    if (rc)
        cJSON_Delete(o);
    else
        *out = o;
    return rc;
}

int cp_blocks_done(const cp_blocks_plan *pl, const char *workdir, int64_t k)
{
    cJSON *o;
    if (cp_blocks_read_block_json(pl, workdir, k, &o) != CP_OK)
        return 0;
    cJSON_Delete(o);
    return 1;
}

int cp_blocks_missing(const cp_blocks_plan *pl, const char *workdir, int64_t **missing, int64_t *n)
{
    *missing = NULL;
    *n = 0;
    int64_t cap = 0;
    for (int64_t k = 0; k < pl->nblocks; k++) {
        if (cp_blocks_done(pl, workdir, k))
            continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            int64_t *m = realloc(*missing, (size_t)cap * sizeof *m);
            if (!m) {
                free(*missing);
                *missing = NULL;
                return cp_error(CP_ENOMEM, "out of memory");
            }
            *missing = m;
        }
        (*missing)[(*n)++] = k;
    }
    return CP_OK;
}

typedef struct label_stat {
    int64_t voxels;
    int64_t lo[3], hi[3];      /* bbox, global, end exclusive */
    int64_t first;             /* global raster index of the first core voxel */
} label_stat;

/* Per-label statistics over the core of a box of labels. */
static int core_stats(const cp_blocks_plan *pl, const cp_block_box *b, const uint32_t *lab, uint32_t n,
                      label_stat **out)
{
    label_stat *s = cp_calloc((size_t)n + 1, sizeof *s, "label statistics");
    if (!s)
        return CP_ENOMEM;
    int64_t by = b->box1[1] - b->box0[1], bx = b->box1[2] - b->box0[2];
    for (int64_t z = b->core0[0]; z < b->core1[0]; z++)
        for (int64_t y = b->core0[1]; y < b->core1[1]; y++) {
            const uint32_t *row = lab + ((z - b->box0[0]) * by + (y - b->box0[1])) * bx - b->box0[2];
            for (int64_t x = b->core0[2]; x < b->core1[2]; x++) {
                uint32_t l = row[x];
                if (!l)
                    continue;
                label_stat *t = &s[l];
                int64_t c[3] = {z, y, x};
                if (t->voxels++ == 0) {
                    t->first = (z * pl->shape[1] + y) * pl->shape[2] + x;
                    for (int a = 0; a < 3; a++) {
                        t->lo[a] = c[a];
                        t->hi[a] = c[a] + 1;
                    }
                }
                for (int a = 0; a < 3; a++) {
                    if (c[a] < t->lo[a])
                        t->lo[a] = c[a];
                    if (c[a] + 1 > t->hi[a])
                        t->hi[a] = c[a] + 1;
                }
            }
        }
    *out = s;
    return CP_OK;
}

static char *block_text(const cp_blocks_plan *pl, int64_t k, const cp_block_box *b, uint32_t n,
                        const label_stat *s)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "plan_sha256", pl->sha256);
    cJSON_AddNumberToObject(o, "block", (double)k);
    cJSON_AddItemToObject(o, "core_start", int3(b->core0));
    cJSON_AddItemToObject(o, "core_end", int3(b->core1));
    cJSON_AddItemToObject(o, "box_start", int3(b->box0));
    cJSON_AddItemToObject(o, "box_end", int3(b->box1));
    cJSON_AddNumberToObject(o, "labels", n);
    /* label l at index l-1: [core voxels] or [voxels, first, z0, y0, x0, z1, y1, x1] */
    cJSON *a = cJSON_AddArrayToObject(o, "core");
    for (uint32_t l = 1; l <= n; l++) {
        cJSON *e = cJSON_CreateArray();
        cJSON_AddItemToArray(e, cJSON_CreateNumber((double)s[l].voxels));
        if (s[l].voxels) {
            cJSON_AddItemToArray(e, cJSON_CreateNumber((double)s[l].first));
            for (int i = 0; i < 3; i++)
                cJSON_AddItemToArray(e, cJSON_CreateNumber((double)s[l].lo[i]));
            for (int i = 0; i < 3; i++)
                cJSON_AddItemToArray(e, cJSON_CreateNumber((double)s[l].hi[i]));
        }
        cJSON_AddItemToArray(a, e);
    }
    char *t = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!t)
        cp_error(CP_ENOMEM, "block.json: out of memory");
    return t;
}

int cp_blocks_write_block(const cp_blocks_plan *pl, const char *workdir, int64_t k, const uint32_t *labels)
{
    if (k < 0 || k >= pl->nblocks)
        return cp_error(CP_EINVAL, "block %" PRId64 " of %" PRId64 ": no such block", k, pl->nblocks);
    cp_block_box b;
    cp_blocks_box(pl, k, &b);
    size_t shape[3], n = 1;
    for (int a = 0; a < 3; a++)
        n *= shape[a] = (size_t)(b.box1[a] - b.box0[a]);
    uint32_t nl = 0;
    for (size_t i = 0; i < n; i++)
        if (labels[i] > nl)
            nl = labels[i];
    label_stat *s = NULL;
    int rc = core_stats(pl, &b, labels, nl, &s);
    char *text = rc == CP_OK ? block_text(pl, k, &b, nl, s) : NULL;
    free(s);
    if (!text)
        return rc ? rc : CP_ENOMEM;
    char *dir = cp_blocks_dir(workdir, k);
    cp_atomic_dir d = {0};
    rc = dir ? cp_atomic_dir_open(&d, dir, 1) : CP_ENOMEM;
    char *lp = rc == CP_OK ? cp_path_join(d.tmp_path, "labels.npy") : NULL;
    char *jp = rc == CP_OK ? cp_path_join(d.tmp_path, "block.json") : NULL;
    if (rc == CP_OK && (!lp || !jp))
        rc = CP_ENOMEM;
    if (rc == CP_OK) {
        cp_array a = {.ndim = 3, .dtype = CP_U32, .data = (void *)labels};
        memcpy(a.shape, shape, sizeof shape);
        rc = cp_npy_write(lp, &a);
    }
    if (rc == CP_OK)
        rc = cp_blocks_write_text(jp, text);
    if (rc == CP_OK)
        rc = cp_atomic_dir_commit(&d);
    else if (d.tmp_path)
        cp_atomic_dir_abort(&d);
    free(lp);
    free(jp);
    free(dir);
    free(text);
    return rc;
}

int cp_blocks_run(const cp_blocks_plan *pl, const char *workdir, int64_t k, cp_model *m, int threads,
                  cp_block_run *info)
{
    memset(info, 0, sizeof *info);
    if (k < 0 || k >= pl->nblocks)
        return cp_error(CP_EINVAL, "block %" PRId64 " of %" PRId64 ": no such block", k, pl->nblocks);
    cp_block_box b;
    cp_blocks_box(pl, k, &b);
    for (int a = 0; a < 3; a++)
        info->box[a] = b.box1[a] - b.box0[a];
    if (cp_blocks_done(pl, workdir, k)) {
        info->skipped = 1;
        return CP_OK;
    }
    double t0 = cp_seconds();
    cp_vol_reader *r;
    int rc = cp_vol_open(pl->input, pl->z_axis, pl->channel_axis, &r);
    if (rc)
        return rc;
    int64_t Z, Y, X;
    int C;
    cp_vol_shape(r, &Z, &Y, &X, &C);
    cp_image *img = NULL;
    if (Z != pl->shape[0] || Y != pl->shape[1] || X != pl->shape[2] || C != pl->channels)
        rc = cp_error(CP_EINVAL, "%s: the volume changed since the plan", pl->input);
    else
        rc = cp_vol_read(r, b.box0[0], b.box0[1], b.box0[2], info->box[0], info->box[1], info->box[2], &img);
    cp_vol_close(r);
    if (rc)
        return rc;
    info->t_read = cp_seconds() - t0;
    cp_seg_params p = pl->params;
    p.threads = threads;
    cp_seg_result res = {0};
    t0 = cp_seconds();
    rc = cp_segment3d(m, img, &p, &res);
    cp_image_free(img);
    info->t_segment = cp_seconds() - t0;
    if (rc == CP_OK) {
        info->labels = res.ncells;
        t0 = cp_seconds();
        rc = cp_blocks_write_block(pl, workdir, k, res.masks);
        info->t_write = cp_seconds() - t0;
    }
    cp_seg_result_free(&res);
    return rc;
}
