/* The model compiled into libcellpose (lib/net/models/cptools_nuclei.pth)
 * and its size model (cptools_nuclei.pth_size.npy). */
#ifndef CP_NET_BUILTIN_H
#define CP_NET_BUILTIN_H

#include <stddef.h>

/* The name cp_model_builtin() resolves to; cp_weights_load() reads it from memory. */
#define CP_BUILTIN_MODEL_PATH "builtin:cptools_nuclei"
#define CP_BUILTIN_MODEL_NAME "cptools_nuclei"
/* Its size model, as cp_size_model_path() names it; cp_size_model_load() reads it from memory. */
#define CP_BUILTIN_SIZE_PATH "builtin:cptools_nuclei_size"

/* The bytes of the built-in model if path names it, else NULL. */
const void *cp_builtin_model_bytes(const char *path, size_t *n);
/* The bytes of the built-in size model if path names it, else NULL. */
const void *cp_builtin_size_bytes(const char *path, size_t *n);

#endif
