/* Distinct labels of a label image and the label -> index map. */
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "measure/measure_internal.h"

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

int label_index_build(const uint32_t *lab, size_t npix, label_index *ix)
{
    memset(ix, 0, sizeof *ix);
    uint32_t mx = 0;
    for (size_t i = 0; i < npix; i++)
        if (lab[i] > mx)
            mx = lab[i];
    ix->max_label = mx;
    if (mx == 0)
        return CP_OK;
    /* A direct table when it is not much larger than the image itself. */
    if ((uint64_t)mx <= 4 * (uint64_t)npix + 65536) {
        ix->lut = cp_calloc((size_t)mx + 1, sizeof *ix->lut, "label table");
        if (!ix->lut)
            return CP_ENOMEM;
        for (size_t i = 0; i < npix; i++)
            ix->lut[lab[i]] = 1;
        size_t n = 0;
        for (uint32_t v = 1; v <= mx && v != 0; v++)
            n += ix->lut[v];
        ix->labels = cp_malloc_array(n, sizeof *ix->labels, "labels");
        if (!ix->labels) {
            label_index_free(ix);
            return CP_ENOMEM;
        }
        n = 0;
        for (uint64_t v = 1; v <= mx; v++)
            if (ix->lut[v]) {
                ix->labels[n] = (uint32_t)v;
                ix->lut[v] = (uint32_t)++n;
            }
        ix->lut[0] = 0;
        ix->n = n;
        return CP_OK;
    }
    size_t nz = 0;
    for (size_t i = 0; i < npix; i++)
        nz += lab[i] != 0;
    uint32_t *v = cp_malloc_array(nz, sizeof *v, "labels");
    if (!v)
        return CP_ENOMEM;
    nz = 0;
    for (size_t i = 0; i < npix; i++)
        if (lab[i])
            v[nz++] = lab[i];
    qsort(v, nz, sizeof *v, cmp_u32);
    size_t n = 0;
    for (size_t i = 0; i < nz; i++)
        if (n == 0 || v[n - 1] != v[i])
            v[n++] = v[i];
    ix->labels = v;
    ix->n = n;
    return CP_OK;
}

void label_index_free(label_index *ix)
{
    free(ix->labels);
    free(ix->lut);
    memset(ix, 0, sizeof *ix);
}
