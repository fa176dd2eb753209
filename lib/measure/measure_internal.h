/* Private helpers of the measure stage. */
#ifndef CP_MEASURE_INTERNAL_H
#define CP_MEASURE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

/* Distinct non-zero labels of an image and a fast label -> index map. */
typedef struct label_index {
    size_t n;             /* distinct non-zero labels */
    uint32_t *labels;     /* sorted ascending */
    uint32_t max_label;   /* 0 if the image is all background */
    uint32_t *lut;        /* label -> index + 1 (0 = absent), size max_label + 1; NULL if sparse */
} label_index;

int label_index_build(const uint32_t *lab, size_t npix, label_index *ix);
void label_index_free(label_index *ix);

/* Index of label v (v != 0 and present), or SIZE_MAX. */
static inline size_t label_index_of(const label_index *ix, uint32_t v)
{
    if (ix->lut)
        return v <= ix->max_label && ix->lut[v] ? (size_t)ix->lut[v] - 1 : SIZE_MAX;
    size_t lo = 0, hi = ix->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ix->labels[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < ix->n && ix->labels[lo] == v ? lo : SIZE_MAX;
}

#endif
