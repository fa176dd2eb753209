/* Shared by the fuzz targets. Each target defines libFuzzer's entry point;
 * the same file links with libFuzzer (make fuzz) or with replay.c, which runs
 * saved inputs through it as a regression test (make check). */
#ifndef CP_FUZZ_H
#define CP_FUZZ_H
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Our readers take paths: the input in a per-process file whose name ends
 * with suffix (readers that choose by extension see the right one). */
const char *fuzz_file(const uint8_t *data, size_t size, const char *suffix);
/* A per-process empty folder (removed at exit). */
const char *fuzz_dir(void);

#endif
