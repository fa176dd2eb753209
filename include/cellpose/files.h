/* libcellpose file sets: listing image folders and Cellpose file naming. */
#ifndef CELLPOSE_FILES_H
#define CELLPOSE_FILES_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cp_strlist {
    char **items;
    size_t n, cap;
} cp_strlist;

int cp_strlist_push(cp_strlist *l, const char *s);
void cp_strlist_sort(cp_strlist *l);   /* byte order (strcmp), like `LC_ALL=C sort` */
void cp_strlist_free(cp_strlist *l);

/* 1 if the name ends in an image extension we read (.tif .tiff .png .npy
 * .npy.gz, any case). */
int cp_is_image_name(const char *path);

/* Append the image files in dir (recursive: sub-folders too) whose base name
 * matches the fnmatch pattern glob (NULL = all), sorted by path. */
int cp_list_images(const char *dir, int recursive, const char *glob, cp_strlist *out);

/* 1 if path is a Zarr array or group folder (holds .zarray or .zgroup). */
int cp_is_zarr_dir(const char *path);

/* Expand inputs (files kept as given, folders listed as above, a Zarr
 * folder kept as one input, a volume) into out. A missing path is an error
 * naming it. */
int cp_expand_inputs(const char *const *paths, size_t n, int recursive, const char *glob, cp_strlist *out);

/* Base name without folder and extension (".npy.gz" counts as one), newly
 * allocated: "a/b/img_1.ome.tif" -> "img_1.ome". */
char *cp_path_stem(const char *path);

/* The stem with one Cellpose output suffix removed (_cp_masks, _masks, _seg,
 * _flows, _label, _labels, _gt), so masks pair with their image:
 * "x/img_cp_masks.tif" -> "img". Newly allocated. */
char *cp_path_pair_key(const char *path);

/* Folder part of a path ("." if none), newly allocated. */
char *cp_path_dir(const char *path);

/* "dir/name" newly allocated (dir NULL or "" gives name). */
char *cp_path_join(const char *dir, const char *name);

/* 1 if the path exists (any type). */
int cp_path_exists(const char *path);

/* mkdir -p. */
int cp_mkdirs(const char *path);

#ifdef __cplusplus
}
#endif
#endif
