/* Private helpers shared by every stage of libcellpose. Not installed. */
#ifndef CP_INTERNAL_H
#define CP_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include "cellpose/core.h"

#ifdef __cplusplus
extern "C" {
#endif


/* Overflow-checked allocation helpers: NULL on overflow or failure (and the
 * error message is set to CP_ENOMEM with `what`). */
void *cp_malloc(size_t n, const char *what);
void *cp_calloc(size_t count, size_t size, const char *what);
void *cp_malloc_array(size_t count, size_t size, const char *what);
char *cp_strdup(const char *s);

/* count*size without overflow; returns 0 and sets *out on success. */
int cp_mul_overflow(size_t a, size_t b, size_t *out);

/* Remove every temporary output folder still open (atomic_dir.c); called by
 * cp_atomic_cleanup_all. Async-signal-safe. */
void cp_atomic_dir_cleanup_all(void);

#ifdef __cplusplus
}
#endif
#endif
