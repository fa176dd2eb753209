/* cpseg --from-flows: a NAME_flows.npy of any content through the dynamics
 * and mask creation (NaN, infinities and huge values included). */
#include "cellpose/cellpose.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = fuzz_file(data, size, ".npy");
    cp_array *a = NULL;
    if (cp_npy_read(p, &a) != CP_OK)
        return 0;
    /* the shape cpseg accepts, small enough to keep an input under a second */
    if (a->ndim == 3 && a->shape[0] == 3 && a->dtype == CP_F32 && a->shape[1] * a->shape[2] <= 128 * 128) {
        cp_seg_params sp;
        cp_seg_params_default(&sp);
        sp.threads = 1;
        cp_seg_result r = {0};
        if (cp_segment_from_flows(a->data, (int)a->shape[1], (int)a->shape[2], CP_ARCH_CPNET, 17.f, &sp, &r) ==
            CP_OK)
            cp_seg_result_free(&r);
    }
    cp_array_free(a);
    return 0;
}
