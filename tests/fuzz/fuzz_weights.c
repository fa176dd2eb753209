/* torch.save files: the zip container, the legacy container, the restricted
 * unpickler and the tensor metadata. */
#include "cellpose/cellpose.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cp_weights *w = NULL;
    if (cp_weights_load_mem(data, size, "fuzz.pth", &w) == CP_OK)
        cp_weights_free(w);
    return 0;
}
