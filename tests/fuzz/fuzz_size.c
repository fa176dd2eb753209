/* Cellpose size model files (MODEL_size.npy: a pickled dict of numpy arrays)
 * through the restricted unpickler's numpy models. */
#include "cellpose/cellpose.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cp_size_model *sm = NULL;
    if (cp_size_model_load(fuzz_file(data, size, "_size.npy"), &sm) == CP_OK)
        cp_size_model_free(sm);
    return 0;
}
