/* numpy's pairwise summation (pairwise_sum in numpy's loops): the order
 * np.add.reduce adds a contiguous vector in, which golden results depend on. */
#include "core/internal.h"

#define NP_PAIRWISE_SUM(NAME, T)                                                  \
    T NAME(const T *a, size_t n)                                                  \
    {                                                                             \
        if (n < 8) {                                                              \
            T r = 0;                                                              \
            for (size_t i = 0; i < n; i++)                                        \
                r += a[i];                                                        \
            return r;                                                             \
        }                                                                         \
        if (n <= 128) {                                                           \
            T r[8];                                                               \
            size_t i;                                                             \
            for (int j = 0; j < 8; j++)                                           \
                r[j] = a[j];                                                      \
            for (i = 8; i < n - n % 8; i += 8)                                    \
                for (int j = 0; j < 8; j++)                                       \
                    r[j] += a[i + j];                                             \
            T res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7])); \
            for (; i < n; i++)                                                    \
                res += a[i];                                                      \
            return res;                                                           \
        }                                                                         \
        size_t n2 = n / 2;                                                        \
        n2 -= n2 % 8;                                                             \
        return NAME(a, n2) + NAME(a + n2, n - n2);                                \
    }

NP_PAIRWISE_SUM(cp_np_sum_f32, float)
NP_PAIRWISE_SUM(cp_np_sum_f64, double)
