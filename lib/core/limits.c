#include <stdatomic.h>

#include "core/internal.h"

#define CP_DEFAULT_MAX_SAMPLES ((uint64_t)1 << 31)

static _Atomic uint64_t max_samples = CP_DEFAULT_MAX_SAMPLES;

void cp_set_max_pixels(uint64_t n) { atomic_store(&max_samples, n ? n : CP_DEFAULT_MAX_SAMPLES); }

uint64_t cp_get_max_pixels(void) { return atomic_load(&max_samples); }
