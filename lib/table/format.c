/* Numbers as table text: Python's repr of a float (so tables compare as text
 * with Python output) and the shortest %g that reads back. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/table.h"

/* Correctly rounded p-digit mantissa of x, derived from its 17-digit
 * expansion d17 (exponent e) by decimal rounding; if the dropped tail is
 * exactly "5000..." the 17 digits do not decide the rounding, so ask printf.
 * Writes "d.ddde<exp>" into out. */
static void round_digits(double x, const char *d17, int e, int p, char *out)
{
    int tie = d17[p] == '5';
    for (int i = p + 1; i < 17 && tie; i++)
        tie = d17[i] == '0';
    if (tie) {
        snprintf(out, 40, "%.*e", p - 1, fabs(x));
        return;
    }
    char d[18];
    memcpy(d, d17, (size_t)p);
    int ee = e;
    if (d17[p] >= '5') {
        int i = p - 1;
        while (i >= 0 && d[i] == '9')
            d[i--] = '0';
        if (i >= 0) {
            d[i]++;
        } else { /* 99..9 -> 100..0 */
            d[0] = '1';
            ee++;
        }
    }
    char *o = out;
    *o++ = d[0];
    *o++ = '.';
    for (int i = 1; i < p; i++)
        *o++ = d[i];
    if (p == 1)
        *o++ = '0';
    sprintf(o, "e%d", ee);
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
    /* 17 digits always round-trip; shorten while the correctly rounded
     * shorter form still reads back to x (round-tripping is monotone in the
     * number of digits, so the first failure ends the search). */
    char tmp[40], cand[40], d17[18];
    double ax = fabs(x);
    snprintf(tmp, sizeof tmp, "%.16e", ax);
    int nd = 0;
    for (const char *q = tmp; *q && *q != 'e'; q++)
        if (*q >= '0' && *q <= '9')
            d17[nd++] = *q;
    int e17 = atoi(strchr(tmp, 'e') + 1);
    for (int p = 16; p >= 1; p--) {
        round_digits(ax, d17, e17, p, cand);
        if (strtod(cand, NULL) != ax)
            break;
        strcpy(tmp, cand);
    }
    if (x < 0) {
        memmove(tmp + 1, tmp, strlen(tmp) + 1);
        tmp[0] = '-';
    }
    /* tmp = [-]d[.ddd]e[+-]XX */
    char digits[24];
    int neg = tmp[0] == '-';
    nd = 0;
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

/* %g with the fewest digits that read back to the same value: a k-digit
 * decimal that round-trips is what %.kg prints, so trying k upward from lo
 * finds the shortest (hi digits always round-trip). */
static int shortest_g(char *buf, size_t n, double v, int lo, int hi, int as_float)
{
    if (isnan(v))
        return snprintf(buf, n, "nan");
    if (isinf(v))
        return snprintf(buf, n, v < 0 ? "-inf" : "inf");
    for (int p = lo; p < hi; p++) {
        int k = snprintf(buf, n, "%.*g", p, v);
        if (as_float ? strtof(buf, NULL) == (float)v : strtod(buf, NULL) == v)
            return k;
    }
    return snprintf(buf, n, "%.*g", hi, v);
}

int cp_format_f32(char *buf, size_t n, float v) { return shortest_g(buf, n, v, 6, 9, 1); }

int cp_format_f64(char *buf, size_t n, double v) { return shortest_g(buf, n, v, 15, 17, 0); }
