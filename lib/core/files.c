#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "cellpose/files.h"
#include "core/internal.h"

int cp_strlist_push(cp_strlist *l, const char *s)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 16;
        char **p = realloc(l->items, cap * sizeof *p);
        if (!p)
            return cp_error(CP_ENOMEM, "out of memory listing files");
        l->items = p;
        l->cap = cap;
    }
    char *d = cp_strdup(s);
    if (!d)
        return CP_ENOMEM;
    l->items[l->n++] = d;
    return CP_OK;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void cp_strlist_sort(cp_strlist *l)
{
    if (l->n > 1)
        qsort(l->items, l->n, sizeof *l->items, cmp_str);
}

void cp_strlist_free(cp_strlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->items[i]);
    free(l->items);
    memset(l, 0, sizeof *l);
}

int cp_ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static int ends_with_ci(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcasecmp(s + n - m, suffix) == 0;
}

int cp_is_image_name(const char *path)
{
    static const char *ext[] = {".tif", ".tiff", ".png", ".npy", ".npy.gz"};
    for (size_t i = 0; i < sizeof ext / sizeof *ext; i++)
        if (ends_with_ci(path, ext[i]))
            return 1;
    return 0;
}

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static int list_dir(const char *dir, int recursive, const char *glob, cp_strlist *out)
{
    DIR *d = opendir(dir);
    if (!d)
        return cp_error(CP_EIO, "%s: cannot open folder: %s", dir, strerror(errno));
    int rc = CP_OK;
    struct dirent *e;
    while (rc == CP_OK && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue; /* hidden files, and our own temporary outputs */
        char *p = cp_path_join(dir, e->d_name);
        if (!p) {
            rc = CP_ENOMEM;
            break;
        }
        struct stat st;
        if (stat(p, &st) == 0 && S_ISDIR(st.st_mode)) {
            if (recursive)
                rc = list_dir(p, recursive, glob, out);
        } else if (cp_is_image_name(p) && (!glob || fnmatch(glob, e->d_name, 0) == 0)) {
            rc = cp_strlist_push(out, p);
        }
        free(p);
    }
    closedir(d);
    return rc;
}

int cp_list_images(const char *dir, int recursive, const char *glob, cp_strlist *out)
{
    size_t first = out->n;
    int rc = list_dir(dir, recursive, glob, out);
    if (rc == CP_OK && out->n > first) {
        cp_strlist tail = {out->items + first, out->n - first, 0};
        cp_strlist_sort(&tail);
    }
    return rc;
}

int cp_is_zarr_dir(const char *path)
{
    static const char *marks[] = {".zarray", ".zgroup"};
    for (size_t i = 0; i < 2; i++) {
        char *p = cp_path_join(path, marks[i]);
        int yes = p && cp_path_exists(p);
        free(p);
        if (yes)
            return 1;
    }
    return 0;
}

/* A Zarr folder given as an input is one volume; without its trailing
 * slashes so that its stem names the outputs. */
static int push_zarr(const char *path, cp_strlist *out)
{
    char *p = cp_strdup(path);
    if (!p)
        return CP_ENOMEM;
    for (size_t n = strlen(p); n > 1 && p[n - 1] == '/'; n--)
        p[n - 1] = 0;
    int rc = cp_strlist_push(out, p);
    free(p);
    return rc;
}

int cp_expand_inputs(const char *const *paths, size_t n, int recursive, const char *glob, cp_strlist *out)
{
    for (size_t i = 0; i < n; i++) {
        struct stat st;
        if (stat(paths[i], &st) != 0)
            return cp_error(CP_EIO, "%s: %s", paths[i], strerror(errno));
        int rc = !S_ISDIR(st.st_mode)      ? cp_strlist_push(out, paths[i])
                 : cp_is_zarr_dir(paths[i]) ? push_zarr(paths[i], out)
                                            : cp_list_images(paths[i], recursive, glob, out);
        if (rc != CP_OK)
            return rc;
    }
    return CP_OK;
}

char *cp_path_stem(const char *path)
{
    const char *b = base_name(path);
    size_t n = strlen(b);
    if (ends_with_ci(b, ".npy.gz"))
        n -= 7;
    else {
        const char *dot = strrchr(b, '.');
        if (dot && dot != b)
            n = (size_t)(dot - b);
    }
    char *s = cp_malloc(n + 1, "path");
    if (s) {
        memcpy(s, b, n);
        s[n] = 0;
    }
    return s;
}

char *cp_path_pair_key(const char *path)
{
    static const char *suffix[] = {"_cp_masks", "_masks", "_seg", "_flows", "_labels", "_label", "_gt"};
    char *s = cp_path_stem(path);
    if (!s)
        return NULL;
    for (size_t i = 0; i < sizeof suffix / sizeof *suffix; i++) {
        size_t n = strlen(s), m = strlen(suffix[i]);
        if (n > m && strcmp(s + n - m, suffix[i]) == 0) {
            s[n - m] = 0;
            break;
        }
    }
    return s;
}

char *cp_path_dir(const char *path)
{
    const char *s = strrchr(path, '/');
    if (!s)
        return cp_strdup(".");
    if (s == path)
        return cp_strdup("/");
    size_t n = (size_t)(s - path);
    char *d = cp_malloc(n + 1, "path");
    if (d) {
        memcpy(d, path, n);
        d[n] = 0;
    }
    return d;
}

char *cp_path_join(const char *dir, const char *name)
{
    if (!dir || !*dir)
        return cp_strdup(name);
    size_t a = strlen(dir), b = strlen(name);
    int slash = dir[a - 1] != '/';
    char *p = cp_malloc(a + slash + b + 1, "path");
    if (p) {
        memcpy(p, dir, a);
        if (slash)
            p[a] = '/';
        memcpy(p + a + slash, name, b + 1);
    }
    return p;
}

int cp_path_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

int cp_mkdirs(const char *path)
{
    char *p = cp_strdup(path);
    if (!p)
        return CP_ENOMEM;
    int rc = CP_OK;
    for (char *s = p + 1;; s++) {
        if (*s == '/' || *s == 0) {
            char c = *s;
            *s = 0;
            if (mkdir(p, 0777) != 0 && errno != EEXIST) {
                rc = cp_error(CP_EIO, "%s: cannot create folder: %s", p, strerror(errno));
                break;
            }
            *s = c;
            if (!c)
                break;
        }
    }
    if (rc == CP_OK) {
        struct stat st;
        if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
            rc = cp_error(CP_EIO, "%s: not a folder", path);
    }
    free(p);
    return rc;
}
