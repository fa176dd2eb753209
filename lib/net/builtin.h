/* The model compiled into libcellpose (lib/net/models/cptools_nuclei.pth). */
#ifndef CP_NET_BUILTIN_H
#define CP_NET_BUILTIN_H

#include <stddef.h>

/* The name cp_model_builtin() resolves to; cp_weights_load() reads it from memory. */
#define CP_BUILTIN_MODEL_PATH "builtin:cptools_nuclei"
#define CP_BUILTIN_MODEL_NAME "cptools_nuclei"

/* The bytes of the built-in model if path names it, else NULL. */
const void *cp_builtin_model_bytes(const char *path, size_t *n);

#endif
