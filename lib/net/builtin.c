/* The built-in nuclei model, embedded in the library so cpseg works without
 * any file lookup (also after `make install`). Trained by
 * scripts/train-builtin.sh; the file is read by the assembler at build time
 * (paths are relative to the top of the source tree, where make runs).
 * Model sha256: 0eb07bb97ad4e290022c3d687a11a9a16d0255df1389244127cbd09e76af9d82
 * (lib/net/models/README.md). Rebuild this object after
 * replacing the model (touch this file). */
#include <string.h>

#include "net/builtin.h"

__asm__(".section .rodata\n"
        ".balign 64\n"
        ".hidden cp_builtin_nuclei_start\n"
        ".globl cp_builtin_nuclei_start\n"
        "cp_builtin_nuclei_start:\n"
        ".incbin \"lib/net/models/cptools_nuclei.pth\"\n"
        ".hidden cp_builtin_nuclei_end\n"
        ".globl cp_builtin_nuclei_end\n"
        "cp_builtin_nuclei_end:\n"
        ".previous\n");

extern const unsigned char cp_builtin_nuclei_start[], cp_builtin_nuclei_end[];

const void *cp_builtin_model_bytes(const char *path, size_t *n)
{
    if (!path || strcmp(path, CP_BUILTIN_MODEL_PATH) != 0)
        return NULL;
    *n = (size_t)(cp_builtin_nuclei_end - cp_builtin_nuclei_start);
    return cp_builtin_nuclei_start;
}
