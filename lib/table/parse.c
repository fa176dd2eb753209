/* Field text to numbers: the fast path reads decimal digits into an integer
 * and scales once (exact when the mantissa fits 53 bits and the power of ten
 * is exact, Clinger's fast path); anything else goes through strtod. Floats
 * are the double rounded to float, the value pandas' read_csv + astype
 * (float32) gives. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "table/table_internal.h"

static const double pow10_exact[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                       1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                       1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* pandas' default missing-value tokens (the ones a spot table can hold). */
int cp_parse_na(const char *s, size_t n)
{
    if (n == 0)
        return 1;
    if (n > 5 || (s[0] >= '0' && s[0] <= '9') || s[0] == '.')
        return 0;
#define IS(lit) (n == sizeof lit - 1 && memcmp(s, lit, n) == 0)
    switch (n) {
    case 2: return IS("NA");
    case 3: return IS("NaN") || IS("nan") || IS("N/A") || IS("n/a") || IS("#NA") || IS("NaT");
    case 4: return IS("NULL") || IS("null") || IS("None") || IS("<NA>") || IS("-NaN") || IS("-nan") || IS("#N/A");
    default: return 0;
    }
#undef IS
}

static int slow_f64(const char *s, size_t n, double *out)
{
    char buf[128];
    if (n >= sizeof buf)
        return -1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    char *end;
    errno = 0;
    double v = strtod(buf, &end);
    while (*end && isspace((unsigned char)*end))
        end++;
    if (end == buf || *end || isnan(v))
        return -1;
    if (buf[0] == '0' && (buf[1] == 'x' || buf[1] == 'X'))
        return -1;
    *out = v;
    return 0;
}

int cp_parse_f64(const char *s, size_t n, double *out)
{
    while (n && (s[0] == ' ' || s[0] == '\t'))
        s++, n--;
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    if (cp_parse_na(s, n))
        return 1;
    const char *p = s, *e = s + n;
    int neg = 0;
    if (p < e && (*p == '+' || *p == '-'))
        neg = *p++ == '-';
    uint64_t m = 0;
    int sig = 0, exp10 = 0, any = 0, lost = 0;
    for (; p < e && (unsigned)(*p - '0') < 10; p++, any = 1) {
        if (sig < 19) {
            m = m * 10 + (uint64_t)(*p - '0');
            sig += m != 0;
        } else {
            exp10++;
            lost |= *p != '0';
        }
    }
    if (p < e && *p == '.') {
        for (p++; p < e && (unsigned)(*p - '0') < 10; p++, any = 1) {
            if (sig < 19) {
                m = m * 10 + (uint64_t)(*p - '0');
                sig += m != 0;
                exp10--;
            } else {
                lost |= *p != '0';
            }
        }
    }
    if (!any)
        return slow_f64(s, n, out);
    if (p < e && (*p == 'e' || *p == 'E')) {
        p++;
        int eneg = 0, ev = 0, edig = 0;
        if (p < e && (*p == '+' || *p == '-'))
            eneg = *p++ == '-';
        for (; p < e && (unsigned)(*p - '0') < 10; p++, edig++)
            if (ev < 100000)
                ev = ev * 10 + (*p - '0');
        if (!edig)
            return -1;
        exp10 += eneg ? -ev : ev;
    }
    if (p != e)
        return slow_f64(s, n, out);
    if (m == 0) {
        *out = neg ? -0.0 : 0.0;
        return 0;
    }
    if (lost || m > (1ull << 53) || exp10 < -22 || exp10 > 22)
        return slow_f64(s, n, out);
    double v = (double)m;
    v = exp10 < 0 ? v / pow10_exact[-exp10] : v * pow10_exact[exp10];
    *out = neg ? -v : v;
    return 0;
}

int cp_parse_f32(const char *s, size_t n, float *out)
{
    double d;
    int rc = cp_parse_f64(s, n, &d);
    if (rc == 0)
        *out = (float)d;
    return rc;
}

int cp_parse_i64(const char *s, size_t n, int64_t *out)
{
    while (n && s[0] == ' ')
        s++, n--;
    while (n && s[n - 1] == ' ')
        n--;
    if (cp_parse_na(s, n))
        return 1;
    const char *p = s, *e = s + n;
    int neg = 0;
    if (p < e && (*p == '+' || *p == '-'))
        neg = *p++ == '-';
    if (p == e)
        return -1;
    uint64_t v = 0;
    for (; p < e && (unsigned)(*p - '0') < 10; p++) {
        v = v * 10 + (uint64_t)(*p - '0');
        if (v > (1ull << 62))
            return -1;
    }
    if (p == e) {
        *out = neg ? -(int64_t)v : (int64_t)v;
        return 0;
    }
    /* "12.0": pandas writes integer columns holding NaN as floats. */
    double d;
    if (cp_parse_f64(s, n, &d) == 0 && d == floor(d) && fabs(d) < 9e15) {
        *out = (int64_t)d;
        return 0;
    }
    return -1;
}

int cp_parse_bool(const char *s, size_t n, int *out)
{
    if ((n == 4 && strncasecmp(s, "true", 4) == 0) || (n == 1 && s[0] == '1') ||
        (n == 3 && memcmp(s, "1.0", 3) == 0)) {
        *out = 1;
        return 0;
    }
    if ((n == 5 && strncasecmp(s, "false", 5) == 0) || (n == 1 && s[0] == '0') ||
        (n == 3 && memcmp(s, "0.0", 3) == 0)) {
        *out = 0;
        return 0;
    }
    return cp_parse_na(s, n) ? 1 : -1;
}

