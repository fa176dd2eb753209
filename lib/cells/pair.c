/* Which image a cpseg mask file belongs to. */
#include <stdlib.h>
#include <string.h>

#include "cellpose/cells.h"
#include "cellpose/files.h"
#include "core/internal.h"

#define SEG_SUFFIX "_cp_masks"

int cp_cells_seg_image(const char *masks_path, char **image, char **name)
{
    static const char *ext[] = {".tif", ".tiff", ".png", ".npy", ".npy.gz", ".TIF", ".TIFF", ".PNG"};
    *image = *name = NULL;
    char *stem = cp_path_stem(masks_path);
    char *dir = cp_path_dir(masks_path);
    if (!stem || !dir) {
        free(stem);
        free(dir);
        return CP_ENOMEM;
    }
    size_t n = strlen(stem), k = strlen(SEG_SUFFIX);
    int rc = CP_OK;
    if (n <= k || strcmp(stem + n - k, SEG_SUFFIX) != 0)
        rc = cp_error(CP_EINVAL, "%s: not a cpseg mask file (NAME" SEG_SUFFIX ".tif)", masks_path);
    char *found = NULL;
    if (rc == CP_OK) {
        stem[n - k] = 0;
        for (size_t i = 0; i < sizeof ext / sizeof *ext && rc == CP_OK; i++) {
            size_t len = strlen(stem) + strlen(ext[i]) + 1;
            char *base = cp_malloc(len, "path");
            if (!base) {
                rc = CP_ENOMEM;
                break;
            }
            snprintf(base, len, "%s%s", stem, ext[i]);
            char *cand = cp_path_join(dir, base);
            free(base);
            if (!cand) {
                rc = CP_ENOMEM;
            } else if (cp_path_exists(cand)) {
                if (found) {
                    rc = cp_error(CP_EINVAL, "%s: two images match: %s and %s", masks_path, found, cand);
                    free(cand);
                } else {
                    found = cand;
                }
            } else {
                free(cand);
            }
        }
        if (rc == CP_OK && !found)
            rc = cp_error(CP_EIO, "%s: no image %s/%s.<tif|tiff|png|npy> next to it", masks_path, dir, stem);
    }
    if (rc == CP_OK) {
        *image = found;
        *name = stem;
    } else {
        free(found);
        free(stem);
    }
    free(dir);
    return rc;
}
