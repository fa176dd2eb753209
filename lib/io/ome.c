/* OME-NGFF 0.4 multiscale groups (and the 0.1-0.3 forms still met): the
 * .zattrs "multiscales" metadata around Zarr arrays. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/files.h"
#include "core/internal.h"
#include "io/zarr_internal.h"

/* Axis names when the metadata gives none: NGFF 0.1/0.2 arrays are
 * (t, c, z, y, x) cut from the left. */
static void default_axes(cp_ome_info *info, int ndim)
{
    static const char *tczyx[5] = {"t", "c", "z", "y", "x"};
    info->ndim = ndim;
    for (int i = 0; i < ndim; i++) {
        int k = 5 - ndim + i;
        snprintf(info->axes[i], sizeof info->axes[i], "%s", k >= 0 ? tczyx[k] : "");
        info->scale[i] = 1;
    }
}

/* The "scale" of a coordinateTransformations list into scale[] (multiplied
 * in, so a multiscale-wide transform can follow the level's). */
static int apply_scale(const char *file, const cJSON *ct, int ndim, double *scale)
{
    const cJSON *t;
    cJSON_ArrayForEach(t, ct) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(t, "type");
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(t, "scale");
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "scale"))
            continue; /* translations do not change the voxel size */
        if (!cJSON_IsArray(s) || cJSON_GetArraySize(s) != ndim)
            return cp_error(CP_EFORMAT, "%s: scale does not have %d entries", file, ndim);
        for (int i = 0; i < ndim; i++) {
            const cJSON *v = cJSON_GetArrayItem(s, i);
            if (!cJSON_IsNumber(v) || !(v->valuedouble > 0))
                return cp_error(CP_EFORMAT, "%s: scale entry %d is not a positive number", file, i);
            scale[i] *= v->valuedouble;
        }
    }
    return CP_OK;
}

static int parse_axes(const char *file, const cJSON *axes, int ndim, cp_ome_info *info)
{
    default_axes(info, ndim);
    if (!axes)
        return CP_OK;
    if (!cJSON_IsArray(axes) || cJSON_GetArraySize(axes) != ndim)
        return cp_error(CP_EFORMAT, "%s: %d axes for a %d-D array", file, cJSON_GetArraySize(axes), ndim);
    for (int i = 0; i < ndim; i++) {
        const cJSON *a = cJSON_GetArrayItem(axes, i), *name = a, *unit = NULL, *type = NULL;
        if (cJSON_IsObject(a)) { /* 0.4: {"name", "type", "unit"}; 0.3: plain strings */
            name = cJSON_GetObjectItemCaseSensitive(a, "name");
            unit = cJSON_GetObjectItemCaseSensitive(a, "unit");
            type = cJSON_GetObjectItemCaseSensitive(a, "type");
        }
        if (!cJSON_IsString(name))
            return cp_error(CP_EFORMAT, "%s: axis %d has no name", file, i);
        snprintf(info->axes[i], sizeof info->axes[i], "%s", name->valuestring);
        const char *n = name->valuestring;
        int space = cJSON_IsString(type) ? !strcmp(type->valuestring, "space") : n[0] && !n[1] && strchr("zyx", n[0]);
        if (space && cJSON_IsString(unit) && !info->unit[0])
            snprintf(info->unit, sizeof info->unit, "%s", unit->valuestring);
    }
    return CP_OK;
}

int cp_ome_open(const char *path, int level, cp_ome_info *info, cp_zarr **out)
{
    *out = NULL;
    memset(info, 0, sizeof *info);
    int rc, missing;
    cJSON *attrs = cp_zarr_read_json(path, ".zattrs", &rc, &missing);
    if (!attrs && !missing)
        return rc;
    const cJSON *ms = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(attrs, "multiscales"), 0);
    if (!ms) { /* a plain array folder */
        cJSON_Delete(attrs);
        if (level != 0)
            return cp_error(CP_EINVAL, "%s: a plain Zarr array has no level %d", path, level);
        if ((rc = cp_zarr_open(path, out)))
            return rc;
        default_axes(info, cp_zarr_ndim(*out));
        return CP_OK;
    }
    char *file = cp_path_join(path, ".zattrs");
    const cJSON *ds = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(ms, "datasets"), level);
    const cJSON *dpath = cJSON_GetObjectItemCaseSensitive(ds, "path");
    char *apath = NULL;
    if (!file) {
        rc = CP_ENOMEM;
    } else if (level < 0 || !cJSON_IsString(dpath)) {
        rc = cp_error(level < 0 || !ds ? CP_EINVAL : CP_EFORMAT, "%s: no dataset path for level %d", file, level);
    } else if (strstr(dpath->valuestring, "..") || dpath->valuestring[0] == '/' ||
               strlen(dpath->valuestring) >= sizeof info->level_path) {
        rc = cp_error(CP_EFORMAT, "%s: dataset path \"%.60s\" leaves the group", file, dpath->valuestring);
    } else if (!(apath = cp_path_join(path, dpath->valuestring))) {
        rc = CP_ENOMEM;
    } else if ((rc = cp_zarr_open(apath, out)) == CP_OK) {
        snprintf(info->level_path, sizeof info->level_path, "%s", dpath->valuestring);
        int nd = cp_zarr_ndim(*out);
        if ((rc = parse_axes(file, cJSON_GetObjectItemCaseSensitive(ms, "axes"), nd, info)) == CP_OK &&
            (rc = apply_scale(file, cJSON_GetObjectItemCaseSensitive(ds, "coordinateTransformations"), nd,
                              info->scale)) == CP_OK)
            rc = apply_scale(file, cJSON_GetObjectItemCaseSensitive(ms, "coordinateTransformations"), nd, info->scale);
        if (rc) {
            cp_zarr_close(*out);
            *out = NULL;
        }
    }
    free(apath);
    free(file);
    cJSON_Delete(attrs);
    return rc;
}

/* NGFF units are UDUNITS-2 names; ImageJ writes "micron" and friends. */
static const char *ngff_unit(const char *u)
{
    static const char *map[][2] = {{"micron", "micrometer"}, {"um", "micrometer"}, {"\xc2\xb5m", "micrometer"},
                                   {"microns", "micrometer"}, {"nm", "nanometer"}, {"mm", "millimeter"},
                                   {"cm", "centimeter"}, {"m", "meter"}, {"inch", "inch"}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (!strcmp(u, map[i][0]))
            return map[i][1];
    return u;
}

int cp_ome_create(const char *path, int ndim, const int64_t *shape, const int64_t *chunks, cp_dtype dtype,
                  const cp_voxel_size *vs, const cp_zarr_opts *opts, int overwrite, cp_zarr **out)
{
    *out = NULL;
    if (ndim < 2 || ndim > 5)
        return cp_error(CP_EINVAL, "%s: an OME-Zarr image has 2 to 5 axes, not %d", path, ndim);
    char *zattrs = cp_path_join(path, ".zattrs"), *zgroup = cp_path_join(path, ".zgroup");
    int rc = zattrs && zgroup ? CP_OK : CP_ENOMEM;
    if (!rc && !overwrite && (cp_path_exists(zattrs) || cp_path_exists(zgroup)))
        rc = cp_error(CP_EEXIST, "%s: Zarr group exists (overwrite not asked for)", path);
    free(zattrs);
    free(zgroup);
    if (!rc)
        rc = cp_mkdirs(path);
    if (!rc && overwrite)
        rc = cp_zarr_remove_chunks(path);
    if (rc)
        return rc;
    cp_ome_info axes;
    default_axes(&axes, ndim);
    const char *unit = vs && vs->unit[0] ? ngff_unit(vs->unit) : NULL;
    cJSON *root = cJSON_CreateObject(), *msl = cJSON_AddArrayToObject(root, "multiscales");
    cJSON *ms = cJSON_CreateObject(), *ax = cJSON_CreateArray(), *dsl = cJSON_CreateArray();
    cJSON *ds = cJSON_CreateObject(), *ctl = cJSON_CreateArray(), *ct = cJSON_CreateObject();
    cJSON *scale = cJSON_CreateArray();
    cJSON_AddItemToArray(msl, ms);
    cJSON_AddItemToObject(ms, "axes", ax);
    for (int i = 0; i < ndim; i++) {
        cJSON *a = cJSON_CreateObject();
        const char *n = axes.axes[i];
        int space = n[0] && strchr("zyx", n[0]);
        cJSON_AddStringToObject(a, "name", n);
        cJSON_AddStringToObject(a, "type", space ? "space" : n[0] == 't' ? "time" : "channel");
        if (space && unit)
            cJSON_AddStringToObject(a, "unit", unit);
        cJSON_AddItemToArray(ax, a);
        double s = 1;
        if (vs && n[0] == 'z' && vs->z > 0)
            s = vs->z;
        else if (vs && n[0] == 'y' && vs->y > 0)
            s = vs->y;
        else if (vs && n[0] == 'x' && vs->x > 0)
            s = vs->x;
        cJSON_AddItemToArray(scale, cJSON_CreateNumber(s));
    }
    cJSON_AddItemToObject(ms, "datasets", dsl);
    cJSON_AddItemToArray(dsl, ds);
    cJSON_AddItemToObject(ds, "coordinateTransformations", ctl);
    cJSON_AddItemToArray(ctl, ct);
    cJSON_AddItemToObject(ct, "scale", scale);
    cJSON_AddStringToObject(ct, "type", "scale");
    cJSON_AddStringToObject(ds, "path", "0");
    cJSON_AddStringToObject(ms, "name", "image");
    cJSON_AddStringToObject(ms, "version", "0.4");
    cJSON *zg = cJSON_CreateObject();
    cJSON_AddNumberToObject(zg, "zarr_format", 2);
    rc = cp_zarr_write_json(path, ".zgroup", zg);
    if (!rc)
        rc = cp_zarr_write_json(path, ".zattrs", root);
    cJSON_Delete(zg);
    cJSON_Delete(root);
    char *apath = rc ? NULL : cp_path_join(path, "0");
    if (!rc && !apath)
        rc = CP_ENOMEM;
    if (!rc)
        rc = cp_zarr_create(apath, ndim, shape, chunks, dtype, opts, overwrite, out);
    free(apath);
    return rc;
}
