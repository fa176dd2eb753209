#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cellpose/files.h"
#include "cellpose/models.h"
#include "core/internal.h"
#include "net/builtin.h"

static const struct {
    const char *name, *file;
    float diam_mean;
} known[] = {
    {"nuclei", "nucleitorch_0", 17.0f}, {"cyto", "cytotorch_0", 30.0f}, {"cyto2", "cyto2torch_0", 30.0f},
    {"cyto3", "cyto3", 30.0f},          {"cpsam", "cpsam", 0.0f},
};

static int is_file(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static int found(cp_model_ref *out, char *path, const char *name, float diam_mean)
{
    out->path = path;
    out->name = name ? cp_strdup(name) : NULL;
    out->diam_mean = diam_mean;
    return CP_OK;
}

int cp_model_resolve(const char *spec, cp_model_ref *out)
{
    memset(out, 0, sizeof *out);
    if (!spec || !*spec)
        spec = getenv("CELLPOSE_MODEL_PATH");
    if (!spec || !*spec)
        return cp_error(CP_EINVAL, "no model given (use --model NAME|PATH or set CELLPOSE_MODEL_PATH)");
    if (!strcmp(spec, CP_BUILTIN_MODEL_PATH) || !strcmp(spec, CP_BUILTIN_MODEL_NAME) || !strcmp(spec, "builtin"))
        return cp_model_builtin(out);
    if (strchr(spec, '/') || is_file(spec)) {
        if (!is_file(spec))
            return cp_error(CP_EIO, "%s: model file not found", spec);
        return found(out, cp_strdup(spec), NULL, 0.0f);
    }
    const char *file = spec;
    float diam = 0.0f;
    for (size_t i = 0; i < sizeof known / sizeof *known; i++)
        if (strcmp(spec, known[i].name) == 0 || strcmp(spec, known[i].file) == 0) {
            file = known[i].file;
            diam = known[i].diam_mean;
        }
    char home_models[4096] = "";
    const char *home = getenv("HOME");
    if (home && *home)
        snprintf(home_models, sizeof home_models, "%s/.cellpose/models", home);
    const char *local = getenv("CELLPOSE_LOCAL_MODELS_PATH");
    const char *dirs[2] = {local, home_models};
    for (int d = 0; d < 2; d++) {
        if (!dirs[d] || !*dirs[d])
            continue;
        char *p = cp_path_join(dirs[d], file);
        if (!p)
            return CP_ENOMEM;
        if (is_file(p))
            return found(out, p, spec, diam);
        free(p);
    }
    return cp_error(CP_EIO,
                    "model '%s' not found: looked for '%s' in $CELLPOSE_LOCAL_MODELS_PATH (%s) and %s; "
                    "copy the weight file there (Python Cellpose downloads it on first use) or give --model PATH",
                    spec, file, local && *local ? local : "unset",
                    *home_models ? home_models : "~/.cellpose/models");
}

void cp_model_ref_free(cp_model_ref *r)
{
    free(r->path);
    free(r->name);
    memset(r, 0, sizeof *r);
}

int cp_model_builtin(cp_model_ref *out)
{
    if (!cp_builtin_model_bytes(CP_BUILTIN_MODEL_PATH, &(size_t){0}))
        return cp_error(CP_EIO, "this build of cptools has no built-in model");
    memset(out, 0, sizeof *out);
    /* compiled into the library: no file to find (see lib/net/builtin.c) */
    return found(out, cp_strdup(CP_BUILTIN_MODEL_PATH), CP_BUILTIN_MODEL_NAME, 0.0f);
}

int cp_size_model_path(const cp_model_ref *ref, char **path)
{
    *path = NULL;
    if (!ref || !ref->path)
        return cp_error(CP_EINVAL, "size model: no model");
    if (!strcmp(ref->path, CP_BUILTIN_MODEL_PATH)) /* compiled in: nothing to look for */
        return (*path = cp_strdup(CP_BUILTIN_SIZE_PATH)) ? CP_OK : CP_ENOMEM;
    const char *file = NULL;
    for (size_t i = 0; ref->name && i < sizeof known / sizeof *known; i++)
        if (strcmp(ref->name, known[i].name) == 0 || strcmp(ref->name, known[i].file) == 0)
            file = known[i].file;
    if (file && !strcmp(file, "cpsam"))
        return cp_error(CP_EUNSUPPORTED, "cpsam: Cellpose-SAM has no size model: give --diameter D");
    if (file) {
        /* Cellpose's names in its models folder: size_cyto3.npy, size_nucleitorch_0.npy */
        char *dir = cp_path_dir(ref->path), name[256];
        snprintf(name, sizeof name, "size_%s.npy", file);
        *path = dir ? cp_path_join(dir, name) : NULL;
        free(dir);
    } else {
        size_t n = strlen(ref->path);
        *path = cp_malloc(n + sizeof "_size.npy", "path");
        if (*path) /* Cellpose appends to the path as a string: X.pth -> X.pth_size.npy */
            snprintf(*path, n + sizeof "_size.npy", "%s_size.npy", ref->path);
    }
    if (!*path)
        return CP_ENOMEM;
    if (!is_file(*path))
        return cp_error(CP_EIO, "%s: size model not found (needed to estimate the diameter of %s; Cellpose's "
                        "train_size writes it): give --diameter D instead", *path, ref->path);
    return CP_OK;
}
