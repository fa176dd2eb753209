/* The functions of shim.h, forwarded to the libtorch backend
 * (libcellpose_torch.so), which is loaded on the first call that needs a
 * network. Commands and programs that never run one (cpseg --from-flows,
 * --version, cpmetrics, ...) never start libtorch.
 *
 * Where it is looked for, first found wins:
 *   1. $CELLPOSE_TORCH_BACKEND (a path to the file; nothing else is tried);
 *   2. next to the libcellpose in use: DIR/cellpose/ when libcellpose.so is
 *      DIR/libcellpose.so (installed), DIR/lib/cellpose/ (build tree);
 *   3. next to the program: BIN/../lib/cellpose/ (installed commands and the
 *      build tree's bin/, tests/ and bench/);
 *   4. CP_TORCH_BACKEND_DIR, PREFIX/lib/cellpose as given to make. */
#include <dlfcn.h>
#include <limits.h>
#include <link.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/internal.h"
#include "net/shim.h"

#ifndef CP_TORCH_BACKEND_DIR
#define CP_TORCH_BACKEND_DIR "/usr/local/lib/cellpose"
#endif

static const cp_torch_host host = {CP_TORCH_ABI, CP_VERSION_STRING, cp_error, cp_weights_get, cp_weights_add,
                                    cp_attn_softmax};

static pthread_once_t once = PTHREAD_ONCE_INIT;
static const cp_torch_backend *B;
/* Why loading failed, repeated to every caller (cp_errmsg is per thread). */
static char failure[2 * PATH_MAX + 512];

/* Load the backend at path: 1 loaded, -1 failed (failure says why, after
 * origin: how the path was chosen). */
static int open_backend(const char *path, const char *origin)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(failure, sizeof failure, "%s%s: cannot load the libtorch backend: %s", origin, path,
                 dlerror());
        return -1;
    }
    cp_torch_backend_init_fn *init = (cp_torch_backend_init_fn *)dlsym(h, CP_TORCH_BACKEND_INIT);
    if (!init) {
        snprintf(failure, sizeof failure, "%s%s: not a cptools libtorch backend (no %s)", origin, path,
                 CP_TORCH_BACKEND_INIT);
        dlclose(h);
        return -1;
    }
    /* from here on libtorch is initialised: it stays loaded, since unloading
     * it is not safe */
    const cp_torch_backend *b = init(&host);
    if (!b) {
        snprintf(failure, sizeof failure, "%s%s: not a cptools libtorch backend", origin, path);
    } else if (b->abi != CP_TORCH_ABI || !b->version || strcmp(b->version, CP_VERSION_STRING)) {
        snprintf(failure, sizeof failure, "%s%s: libtorch backend of cptools %s (interface %d), but "
                 "this libcellpose is %s (interface %d)", origin, path, b->version ? b->version : "?", b->abi,
                 CP_VERSION_STRING, CP_TORCH_ABI);
    } else {
        B = b;
        return 1;
    }
    return -1;
}

/* dir + "/" + rel + "/" CP_TORCH_BACKEND_FILE, loaded if it exists.
 * 0: not there (looked-in list extended), 1 loaded, -1 there but failed. */
static int try_dir(const char *dir, const char *rel, char *looked, size_t cap)
{
    char path[PATH_MAX];
    int n = snprintf(path, sizeof path, "%s%s%s", dir, *rel ? "/" : "", rel);
    if (n < 0 || (size_t)n >= sizeof path)
        return 0;
    size_t used = strlen(looked);
    snprintf(looked + used, cap - used, "%s%s", used ? ", " : "", path);
    size_t room = sizeof path - (size_t)n;
    if ((size_t)snprintf(path + n, room, "/%s", CP_TORCH_BACKEND_FILE) >= room)
        return 0;
    return access(path, F_OK) ? 0 : open_backend(path, "");
}

/* The folder of a file's real path into dir (PATH_MAX), up = 1 for its
 * parent; 0 if unknown. */
static int folder_of(const char *file, int up, char *dir)
{
    if (!realpath(file, dir))
        return 0;
    for (int i = 0; i <= up; i++) {
        char *slash = strrchr(dir, '/');
        if (!slash)
            return 0;
        *(slash == dir ? slash + 1 : slash) = '\0';
    }
    return 1;
}

static void load(void)
{
    const char *env = getenv("CELLPOSE_TORCH_BACKEND");
    if (env && *env) {
        open_backend(env, "CELLPOSE_TORCH_BACKEND=");
        return;
    }
    char looked[4 * PATH_MAX] = "", dir[PATH_MAX];
    int rc = 0;
    /* the shared libcellpose holding this code; the program itself has an
     * empty link-map name and is handled below */
    Dl_info di;
    struct link_map *lm = NULL;
    if (dladdr1((void *)&cp_shim_create, &di, (void **)&lm, RTLD_DL_LINKMAP) && lm && lm->l_name &&
        lm->l_name[0] && folder_of(lm->l_name, 0, dir)) {
        if (!(rc = try_dir(dir, "cellpose", looked, sizeof looked)))
            rc = try_dir(dir, "lib/cellpose", looked, sizeof looked);
    }
    if (!rc && folder_of("/proc/self/exe", 1, dir))
        rc = try_dir(dir, "lib/cellpose", looked, sizeof looked);
    if (!rc)
        rc = try_dir(CP_TORCH_BACKEND_DIR, "", looked, sizeof looked);
    if (!rc)
        snprintf(failure, sizeof failure, "the libtorch backend %s was not found in %s; set "
                 "CELLPOSE_TORCH_BACKEND to its path", CP_TORCH_BACKEND_FILE, looked);
}

/* The backend, loading it on first use; NULL with the error set. */
static const cp_torch_backend *backend(void)
{
    pthread_once(&once, load);
    if (!B)
        cp_error(CP_EMODEL, "%s", failure);
    return B;
}

int cp_shim_create(const cp_weights *w, cp_model_info *info, const cp_model_opts *opts,
                   const char *path, cp_shim **out)
{
    *out = NULL;
    const cp_torch_backend *b = backend();
    return b ? b->shim_create(w, info, opts, path, out) : CP_EMODEL;
}

int cp_shim_forward(cp_shim *s, const float *in, int n, int ty, int tx, float *out, float *style)
{
    return B->shim_forward(s, in, n, ty, tx, out, style); /* s exists: B is loaded */
}

void cp_shim_free(cp_shim *s)
{
    if (s)
        B->shim_free(s);
}

double cp_shim_time_conv(int n, int cin, int cout, int h, int w, int k, int reps, int channels_last,
                         int threads)
{
    const cp_torch_backend *b = backend();
    return b ? b->shim_time_conv(n, cin, cout, h, w, k, reps, channels_last, threads) : -1;
}

double cp_shim_time_matmul(int m, int k, int n, int reps, int bf16, int threads, double *cpu)
{
    const cp_torch_backend *b = backend();
    return b ? b->shim_time_matmul(m, k, n, reps, bf16, threads, cpu) : -1;
}

int cp_trainer_create(const cp_weights *init, const int *nbase, int nlevels, int nout, uint64_t seed,
                      int threads, int sgd, double weight_decay, cp_trainer **out)
{
    *out = NULL;
    const cp_torch_backend *b = backend();
    return b ? b->trainer_create(init, nbase, nlevels, nout, seed, threads, sgd, weight_decay, out)
             : CP_EMODEL;
}

int cp_trainer_step(cp_trainer *t, const float *x, const float *lbl, int n, int h, int w, double lr,
                    double *loss)
{
    return B->trainer_step(t, x, lbl, n, h, w, lr, loss);
}

int cp_trainer_eval(cp_trainer *t, const float *x, const float *lbl, int n, int h, int w, double *loss)
{
    return B->trainer_eval(t, x, lbl, n, h, w, loss);
}

int cp_trainer_export(const cp_trainer *t, float diam_mean, float diam_labels, int with_optim,
                      cp_weights *w)
{
    return B->trainer_export(t, diam_mean, diam_labels, with_optim, w);
}

int cp_trainer_import_optim(cp_trainer *t, const cp_weights *w, const char *path)
{
    return B->trainer_import_optim(t, w, path);
}

void cp_trainer_free(cp_trainer *t)
{
    if (t)
        B->trainer_free(t);
}
