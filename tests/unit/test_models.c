/* Model names resolve where Python Cellpose keeps its weights. */
#include <stdlib.h>

#include "cellpose/cellpose.h"
#include "test.h"

static void touch(const char *dir, const char *name)
{
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    if (f)
        fclose(f);
}

int main(void)
{
    char local[4096], home[4096], homemodels[4200];
    snprintf(local, sizeof local, "%s/local", test_tmp_dir());
    snprintf(home, sizeof home, "%s/home", test_tmp_dir());
    snprintf(homemodels, sizeof homemodels, "%s/.cellpose/models", home);
    CHECK_OK(cp_mkdirs(local));
    CHECK_OK(cp_mkdirs(homemodels));
    touch(local, "cyto3");
    touch(homemodels, "cyto3");
    touch(homemodels, "nucleitorch_0");
    setenv("HOME", home, 1);
    setenv("CELLPOSE_LOCAL_MODELS_PATH", local, 1);
    unsetenv("CELLPOSE_MODEL_PATH");

    cp_model_ref r;
    CHECK_OK(cp_model_resolve("cyto3", &r));   /* local path wins over ~/.cellpose */
    CHECK(strncmp(r.path, local, strlen(local)) == 0 && r.diam_mean == 30.0f && strcmp(r.name, "cyto3") == 0);
    cp_model_ref_free(&r);
    CHECK_OK(cp_model_resolve("nuclei", &r));  /* Cellpose's cache name */
    CHECKF(strstr(r.path, "/.cellpose/models/nucleitorch_0") && r.diam_mean == 17.0f, "%s", r.path);
    cp_model_ref_free(&r);

    char path[4096];
    snprintf(path, sizeof path, "%s/cyto3", local);
    CHECK_OK(cp_model_resolve(path, &r));      /* a path: the file's own diam_mean */
    CHECK(r.name == NULL && r.diam_mean == 0.0f);
    cp_model_ref_free(&r);

    CHECK(cp_model_resolve("cpsam", &r) == CP_EIO);
    CHECKF(strstr(cp_errmsg(), "cpsam") && strstr(cp_errmsg(), local) && strstr(cp_errmsg(), homemodels), "%s",
           cp_errmsg());
    CHECK(cp_model_resolve("/no/such/model.pth", &r) == CP_EIO);
    CHECK(cp_model_resolve(NULL, &r) == CP_EINVAL);
    setenv("CELLPOSE_MODEL_PATH", "nuclei", 1);
    CHECK_OK(cp_model_resolve(NULL, &r));
    CHECK(r.diam_mean == 17.0f);
    cp_model_ref_free(&r);
    return test_result();
}
