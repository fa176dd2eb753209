/* Private helpers shared by every stage of libcellpose. Not installed. */
#ifndef CP_INTERNAL_H
#define CP_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include "cellpose/core.h"
#include "cellpose/image.h"

#ifdef __cplusplus
extern "C" {
#endif


/* Overflow-checked allocation helpers: NULL on overflow or failure (and the
 * error message is set to CP_ENOMEM with `what`). */
void *cp_malloc(size_t n, const char *what);
void *cp_calloc(size_t count, size_t size, const char *what);
void *cp_malloc_array(size_t count, size_t size, const char *what);
char *cp_strdup(const char *s);
/* 1 when s ends with suffix (case-sensitive). */
int cp_ends_with(const char *s, const char *suffix);

/* numpy's pairwise sum of a contiguous vector (np.add.reduce's order),
 * in the vector's own precision. */
float cp_np_sum_f32(const float *a, size_t n);
double cp_np_sum_f64(const double *a, size_t n);

/* count*size without overflow; returns 0 and sets *out on success. */
int cp_mul_overflow(size_t a, size_t b, size_t *out);

/* Remove every temporary output folder still open (atomic_dir.c); called by
 * cp_atomic_cleanup_all. Async-signal-safe. */
void cp_atomic_dir_cleanup_all(void);

/* Sample i of a raw pixel buffer of type t, as double (exact but for 64-bit
 * integers beyond 2^53). Inline: it sits in every per-pixel loop. */
static inline double cp_sample_f64(const void *data, cp_dtype t, size_t i)
{
    switch (t) {
    case CP_U8: return ((const uint8_t *)data)[i];
    case CP_U16: return ((const uint16_t *)data)[i];
    case CP_U32: return ((const uint32_t *)data)[i];
    case CP_I8: return ((const int8_t *)data)[i];
    case CP_I16: return ((const int16_t *)data)[i];
    case CP_I32: return ((const int32_t *)data)[i];
    case CP_I64: return (double)((const int64_t *)data)[i];
    case CP_U64: return (double)((const uint64_t *)data)[i];
    case CP_F32: return ((const float *)data)[i];
    case CP_F64: return ((const double *)data)[i];
    default: return 0;
    }
}

#ifdef __cplusplus
}
#endif
#endif
