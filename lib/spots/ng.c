/* Neuroglancer states and links for spots (the SeeSpot recipe). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/spots.h"
#include "core/internal.h"
#include "spots/spots_internal.h"

char *cp_spot_read_text(const char *path, size_t max, size_t *len);

int cp_spot_fused_paths(const cp_spot_dataset *d, const char *bucket, cp_strlist *out)
{
    int rc = CP_OK;
    for (size_t i = 0; i < d->channels.n && !rc; i++) {
        char buf[4096];
        snprintf(buf, sizeof buf, "s3://%s/%s/image_tile_fusing/fused/channel_%s.zarr", bucket ? bucket : "aind-open-data",
                 d->name ? d->name : "dataset", d->channels.items[i]);
        rc = cp_strlist_push(out, buf);
    }
    return rc;
}

static cJSON *raw_num(double v)
{
    char b[40];
    cp_format_f64(b, sizeof b, v);
    return cJSON_CreateRaw(b);
}

int cp_spot_voxel_size(const cp_spot_dataset *d, double zyx[3], int *found)
{
    zyx[0] = zyx[1] = zyx[2] = 1.0;
    *found = 0;
    if (!d->root || !d->channels.n)
        return CP_OK;
    char path[4096];
    snprintf(path, sizeof path, "%s/image_tile_fusing/fused/channel_%s.zarr/.zattrs", d->root, d->channels.items[0]);
    char *text = cp_spot_read_text(path, 1u << 20, NULL);
    if (!text)
        return CP_OK;
    cJSON *j = cJSON_Parse(text);
    free(text);
    const cJSON *ms = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "multiscales"), 0);
    const cJSON *ds = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(ms, "datasets"), 0);
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(ds, "coordinateTransformations"), *it;
    cJSON_ArrayForEach(it, ct) {
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(it, "type");
        const cJSON *sc = cJSON_GetObjectItemCaseSensitive(it, "scale");
        int n = cJSON_GetArraySize(sc);
        if (cJSON_IsString(ty) && !strcmp(ty->valuestring, "scale") && n >= 3) {
            for (int k = 0; k < 3; k++) {
                const cJSON *v = cJSON_GetArrayItem(sc, n - 3 + k); /* the last three: z, y, x */
                if (cJSON_IsNumber(v) && v->valuedouble > 0)
                    zyx[k] = v->valuedouble;
            }
            *found = 1;
            break;
        }
    }
    cJSON_Delete(j);
    return CP_OK;
}

/* x, y, z voxel size in micrometres (1.0 when unknown). */
static void voxel_size(const cp_spot_dataset *d, double vs[3])
{
    double zyx[3];
    int found;
    cp_spot_voxel_size(d, zyx, &found);
    for (int k = 0; k < 3; k++)
        vs[k] = zyx[2 - k];
}

static const char *channel_color(const char *ch)
{
    if (!strcmp(ch, "488")) return "0, 1, 0";
    if (!strcmp(ch, "514")) return "1, 0, 0";
    if (!strcmp(ch, "561")) return "0, 0, 1";
    if (!strcmp(ch, "594")) return "0, 1, 1";
    if (!strcmp(ch, "638")) return "1, 0, 1";
    return "1, 1, 1";
}

static cJSON *dim(double scale, const char *unit)
{
    cJSON *a = cJSON_CreateArray();
    cJSON_AddItemToArray(a, raw_num(scale));
    cJSON_AddItemToArray(a, cJSON_CreateString(unit));
    return a;
}

static cJSON *build_state(const cp_spot_dataset *d, const char *bucket)
{
    double vs[3];
    voxel_size(d, vs);
    cJSON *st = cJSON_CreateObject();
    cJSON *dims = cJSON_AddObjectToObject(st, "dimensions");
    cJSON_AddItemToObject(dims, "x", dim(vs[0] * 1e-6, "m"));
    cJSON_AddItemToObject(dims, "y", dim(vs[1] * 1e-6, "m"));
    cJSON_AddItemToObject(dims, "z", dim(vs[2] * 1e-6, "m"));
    cJSON_AddItemToObject(dims, "c'", dim(1, ""));
    cJSON_AddItemToObject(dims, "t", dim(0.001, "s"));
    cJSON *layers = cJSON_AddArrayToObject(st, "layers");
    cp_strlist paths = {0};
    cp_spot_fused_paths(d, bucket, &paths);
    for (size_t i = 0; i < paths.n; i++) {
        const char *ch = d->channels.items[i];
        cJSON *l = cJSON_CreateObject();
        char src[4200], shader[600], name[128];
        snprintf(src, sizeof src, "zarr://%s", paths.items[i]);
        snprintf(shader, sizeof shader,
                 "#uicontrol vec3 color color(default=\"white\")\n#uicontrol invlerp normalized(range=[90, 1200])\n"
                 "void main() {\n  emitRGB(vec3(%s) * normalized());\n}\n",
                 channel_color(ch));
        snprintf(name, sizeof name, "CH_%s", ch);
        cJSON_AddStringToObject(l, "type", "image");
        cJSON_AddStringToObject(l, "source", src);
        cJSON_AddStringToObject(l, "blend", "additive");
        cJSON_AddStringToObject(l, "shader", shader);
        cJSON *sc = cJSON_AddObjectToObject(l, "shaderControls");
        cJSON *nz = cJSON_AddObjectToObject(sc, "normalized");
        cJSON *rg = cJSON_AddArrayToObject(nz, "range");
        cJSON_AddItemToArray(rg, cJSON_CreateNumber(90));
        cJSON_AddItemToArray(rg, cJSON_CreateNumber(1200));
        cJSON_AddStringToObject(l, "name", name);
        cJSON_AddBoolToObject(l, "visible", 1);
        cJSON_AddItemToArray(layers, l);
    }
    cp_strlist_free(&paths);
    cJSON_AddStringToObject(st, "layout", "4panel");
    return st;
}

int cp_spot_ng_state(const cp_spot_dataset *d, const cp_stable *t, const uint32_t *rows, size_t n,
                     const cp_ng_opts *o, char **json)
{
    int zi = cp_stable_find(t, "z"), yi = cp_stable_find(t, "y"), xi = cp_stable_find(t, "x"),
        si = cp_stable_find(t, "spot_id");
    if (zi < 0 || yi < 0 || xi < 0 || si < 0)
        return cp_error(CP_EINVAL, "Neuroglancer links need the spot_id, z, y and x columns");
    if (n == 0)
        return cp_error(CP_EINVAL, "no spot to show");
    cJSON *st = NULL;
    if (d->ng_json) {
        char *text = cp_spot_read_text(d->ng_json, 64u << 20, NULL);
        if (!text)
            return CP_EIO;
        st = cJSON_Parse(text);
        free(text);
        if (!st || !cJSON_IsObject(st)) {
            cJSON_Delete(st);
            return cp_error(CP_EFORMAT, "%s: not a JSON object", d->ng_json);
        }
        cJSON *layers = cJSON_GetObjectItemCaseSensitive(st, "layers"), *l;
        if (!cJSON_IsArray(layers)) {
            cJSON_DeleteItemFromObjectCaseSensitive(st, "layers");
            layers = cJSON_AddArrayToObject(st, "layers");
        }
        cJSON_ArrayForEach(l, layers) {
            const cJSON *ty = cJSON_GetObjectItemCaseSensitive(l, "type");
            if (cJSON_IsString(ty) && !strcmp(ty->valuestring, "annotation")) {
                cJSON_DeleteItemFromObjectCaseSensitive(l, "visible");
                cJSON_AddBoolToObject(l, "visible", 0);
            }
        }
    } else {
        st = build_state(d, o ? o->bucket : NULL);
    }
    /* position: mean of the points (double sums in row order) */
    double sx = 0, sy = 0, sz = 0;
    for (size_t i = 0; i < n; i++) {
        sx += cp_scol_num(&t->cols[xi], rows[i]);
        sy += cp_scol_num(&t->cols[yi], rows[i]);
        sz += cp_scol_num(&t->cols[zi], rows[i]);
    }
    cJSON_DeleteItemFromObjectCaseSensitive(st, "position");
    cJSON *pos = cJSON_AddArrayToObject(st, "position");
    cJSON_AddItemToArray(pos, raw_num(sx / (double)n));
    cJSON_AddItemToArray(pos, raw_num(sy / (double)n));
    cJSON_AddItemToArray(pos, raw_num(sz / (double)n));
    cJSON_AddItemToArray(pos, raw_num(0.5));
    cJSON_AddItemToArray(pos, raw_num(0));
    cJSON_DeleteItemFromObjectCaseSensitive(st, "crossSectionScale");
    cJSON_AddItemToObject(st, "crossSectionScale", raw_num(o && o->cross_section_scale > 0 ? o->cross_section_scale : 1.0));
    cJSON *ann = cJSON_CreateObject();
    cJSON_AddStringToObject(ann, "type", "annotation");
    cJSON_AddStringToObject(ann, "name", o && o->layer_name ? o->layer_name : "spots");
    cJSON_AddStringToObject(ann, "tab", "annotations");
    cJSON_AddBoolToObject(ann, "visible", 1);
    cJSON_AddStringToObject(ann, "annotationColor", o && o->color ? o->color : "#FFFF00");
    cJSON_AddItemToObject(ann, "crossSectionAnnotationSpacing", raw_num(3.0));
    cJSON_AddItemToObject(ann, "projectionAnnotationSpacing", raw_num(10));
    cJSON_AddStringToObject(ann, "tool", "annotatePoint");
    cJSON *list = cJSON_AddArrayToObject(ann, "annotations");
    char buf[48];
    for (size_t i = 0; i < n; i++) {
        cJSON *a = cJSON_CreateObject();
        cJSON_AddStringToObject(a, "type", "point");
        cp_scol_format(&t->cols[si], rows[i], 0, buf, sizeof buf);
        cJSON_AddStringToObject(a, "id", buf);
        cJSON *pt = cJSON_AddArrayToObject(a, "point");
        int cols[3] = {xi, yi, zi};
        for (int k = 0; k < 3; k++) {
            cp_scol_format(&t->cols[cols[k]], rows[i], 1, buf, sizeof buf);
            cJSON_AddItemToArray(pt, cJSON_CreateRaw(buf));
        }
        cJSON_AddItemToArray(pt, raw_num(0.5));
        cJSON_AddItemToArray(pt, raw_num(0));
        cJSON_AddItemToArray(list, a);
    }
    cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(st, "layers"), ann);
    *json = cJSON_PrintUnformatted(st);
    cJSON_Delete(st);
    return *json ? CP_OK : cp_error(CP_ENOMEM, "out of memory (Neuroglancer state)");
}

char *cp_spot_ng_url(const char *json)
{
    static const char pre[] = "https://neuroglancer-demo.appspot.com/#!";
    size_t n = strlen(json);
    char *u = cp_malloc(sizeof pre + 3 * n + 1, "URL");
    if (!u)
        return NULL;
    char *p = u + sizeof pre - 1;
    memcpy(u, pre, sizeof pre - 1);
    for (const unsigned char *s = (const unsigned char *)json; *s; s++) {
        if ((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || strchr("-_.~", *s))
            *p++ = (char)*s;
        else
            p += sprintf(p, "%%%02X", *s);
    }
    *p = '\0';
    return u;
}
