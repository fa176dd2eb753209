/* Python's repr of a float, so tables compare as text with Python output. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/measure.h"

/* digits with p significant digits in %e form round-trips? */
static int roundtrips(double x, int p, char *tmp)
{
    snprintf(tmp, 40, "%.*e", p - 1, x);
    return strtod(tmp, NULL) == x;
}

char *cp_format_double(double x, char *buf)
{
    if (isnan(x)) {
        strcpy(buf, "nan");
        return buf;
    }
    if (isinf(x)) {
        strcpy(buf, x > 0 ? "inf" : "-inf");
        return buf;
    }
    if (x == 0) {
        strcpy(buf, signbit(x) ? "-0.0" : "0.0");
        return buf;
    }
    /* Shortest p: round-tripping is monotone in p, most measurements need
     * 15-17 digits, so test those first and search lower only if needed. */
    char tmp[40];
    int p;
    if (!roundtrips(x, 16, tmp))
        p = 17;
    else if (!roundtrips(x, 15, tmp))
        p = 16;
    else {
        int lo = 1, hi = 15; /* hi round-trips */
        while (lo < hi) {
            int mid = (lo + hi) / 2;
            if (roundtrips(x, mid, tmp))
                hi = mid;
            else
                lo = mid + 1;
        }
        p = hi;
    }
    snprintf(tmp, sizeof tmp, "%.*e", p - 1, x);
    /* tmp = [-]d[.ddd]e[+-]XX */
    char digits[24];
    int nd = 0, neg = tmp[0] == '-';
    const char *q = tmp + neg;
    for (; *q && *q != 'e'; q++)
        if (*q >= '0' && *q <= '9')
            digits[nd++] = *q;
    int e = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    char *o = buf;
    if (neg)
        *o++ = '-';
    if (e >= -5 + 1 && e < 16) {
        if (e >= 0) {
            for (int i = 0; i <= e; i++)
                *o++ = i < nd ? digits[i] : '0';
            *o++ = '.';
            if (nd > e + 1)
                for (int i = e + 1; i < nd; i++)
                    *o++ = digits[i];
            else
                *o++ = '0';
        } else {
            *o++ = '0';
            *o++ = '.';
            for (int i = 0; i < -e - 1; i++)
                *o++ = '0';
            for (int i = 0; i < nd; i++)
                *o++ = digits[i];
        }
        *o = 0;
    } else {
        *o++ = digits[0];
        if (nd > 1) {
            *o++ = '.';
            for (int i = 1; i < nd; i++)
                *o++ = digits[i];
        }
        sprintf(o, "e%c%02d", e < 0 ? '-' : '+', e < 0 ? -e : e);
    }
    return buf;
}
