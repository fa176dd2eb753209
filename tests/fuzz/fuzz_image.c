/* TIFF (ImageJ and OME metadata included), PNG, NPY and NPY.gz through the
 * one image reader, which picks the format by magic bytes. The page mode and
 * alpha handling vary with the input's length, so plain files are seeds. */
#include <stdlib.h>

#include "cellpose/cellpose.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int gz = size >= 2 && data[0] == 0x1f && data[1] == 0x8b; /* .npy.gz goes by name */
    cp_read_opts o = {0};
    o.pages = (cp_pages)(size % 4);
    o.drop_alpha = (size >> 2) & 1;
    const char *p = fuzz_file(data, size, gz ? ".npy.gz" : ".img");
    cp_image *img = NULL;
    if (cp_image_read(p, &o, &img) == CP_OK) {
        uint32_t *labels = NULL;
        if (cp_image_labels_u32(img, p, &labels) == CP_OK)
            free(labels);
        cp_image_free(img);
    }
    return 0;
}
