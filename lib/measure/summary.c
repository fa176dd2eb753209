/* Summaries of a measurement column: mean, population std, median, min, max. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/measure.h"
#include "core/internal.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int cp_summarize(const double *v, size_t n, cp_summary *out)
{
    out->n = 0;
    out->mean = out->std = out->median = out->min = out->max = NAN;
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        m += isfinite(v[i]) != 0;
    if (m == 0)
        return CP_OK;
    double *s = cp_malloc_array(m, sizeof *s, "summary");
    if (!s)
        return CP_ENOMEM;
    m = 0;
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        if (isfinite(v[i])) {
            s[m++] = v[i];
            sum += v[i];
        }
    double mean = sum / (double)m, sq = 0;
    for (size_t i = 0; i < m; i++)
        sq += (s[i] - mean) * (s[i] - mean);
    qsort(s, m, sizeof *s, cmp_double);
    out->n = m;
    out->mean = mean;
    out->std = sqrt(sq / (double)m);
    out->median = m % 2 ? s[m / 2] : (s[m / 2 - 1] + s[m / 2]) / 2;
    out->min = s[0];
    out->max = s[m - 1];
    free(s);
    return CP_OK;
}
