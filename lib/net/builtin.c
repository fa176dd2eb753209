/* The built-in nuclei model and its size model, embedded in the library so
 * cpseg works without any file lookup (also after `make install`). Trained
 * by scripts/train-builtin.sh; the files are read by the assembler at build
 * time (paths are relative to the top of the source tree, where make runs;
 * the Makefile rebuilds this object when they change).
 * Model sha256: 0eb07bb97ad4e290022c3d687a11a9a16d0255df1389244127cbd09e76af9d82
 * (lib/net/models/README.md). */
#include <string.h>

#include "net/builtin.h"

#define CP_INCBIN(sym, file)                  \
    __asm__(".section .rodata\n"              \
            ".balign 64\n"                    \
            ".hidden " #sym "_start\n"        \
            ".globl " #sym "_start\n"         \
            #sym "_start:\n"                  \
            ".incbin \"" file "\"\n"          \
            ".hidden " #sym "_end\n"          \
            ".globl " #sym "_end\n"           \
            #sym "_end:\n"                    \
            ".previous\n")

CP_INCBIN(cp_builtin_nuclei, "lib/net/models/cptools_nuclei.pth");
CP_INCBIN(cp_builtin_nuclei_size, "lib/net/models/cptools_nuclei.pth_size.npy");

extern const unsigned char cp_builtin_nuclei_start[], cp_builtin_nuclei_end[];
extern const unsigned char cp_builtin_nuclei_size_start[], cp_builtin_nuclei_size_end[];

const void *cp_builtin_model_bytes(const char *path, size_t *n)
{
    if (!path || strcmp(path, CP_BUILTIN_MODEL_PATH) != 0)
        return NULL;
    *n = (size_t)(cp_builtin_nuclei_end - cp_builtin_nuclei_start);
    return cp_builtin_nuclei_start;
}

const void *cp_builtin_size_bytes(const char *path, size_t *n)
{
    if (!path || strcmp(path, CP_BUILTIN_SIZE_PATH) != 0)
        return NULL;
    *n = (size_t)(cp_builtin_nuclei_size_end - cp_builtin_nuclei_size_start);
    return cp_builtin_nuclei_size_start;
}
