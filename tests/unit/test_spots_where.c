/* --where: a literal compares at the column's stored precision, the way
 * pandas (numpy 1.x, as SeeSpot pins) compares a Series with a Python scalar.
 * Every expected mask below was printed by pandas 1.5 / numpy 1.24 on the
 * same values (null rows by pandas' rule: only != passes). */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/cellpose.h"
#include "spots/spots_internal.h"
#include "test.h"

/* A one-column table of n rows; the caller fills the values. */
static cp_scol *one_col(cp_stable *t, const char *name, cp_scol_type type, size_t n)
{
    memset(t, 0, sizeof *t);
    if (cp_stable_add_col(t, name, type) || cp_stable_reserve(t, n) || cp_scol_null_bitmap(&t->cols[0], t->cap))
        return NULL;
    t->nrows = n;
    return &t->cols[0];
}

/* The rows passing one condition as "0"/"1" per row ("error" when refused). */
static const char *sel(const cp_stable *t, const char *expr)
{
    static char out[64];
    cp_spot_filter f;
    cp_spot_filter_init(&f);
    cp_spot_where w;
    uint32_t *rows = NULL;
    size_t n = 0;
    int rc = cp_spot_where_parse(expr, &w);
    if (!rc) {
        rc = cp_spot_filter_where(&f, w.col, w.op, w.value);
        free(w.col);
        free(w.value);
    }
    if (!rc)
        rc = cp_spot_filter_rows(t, &f, &rows, &n);
    cp_spot_filter_free(&f);
    if (rc) {
        free(rows);
        return "error";
    }
    memset(out, '0', t->nrows);
    out[t->nrows] = '\0';
    for (size_t i = 0; i < n; i++)
        out[rows[i]] = '1';
    free(rows);
    return out;
}

#define WHERE(t, expr, want)                                                                         \
    do {                                                                                             \
        const char *got_ = sel(t, expr);                                                             \
        int err_ = !strcmp(got_, "error");                                                           \
        CHECKF(!strcmp(got_, want), "'%s': got %s, want %s%s%s", expr, got_, want, err_ ? ": " : "", \
               err_ ? cp_errmsg() : "");                                                             \
    } while (0)

static void test_f32(void)
{
    cp_stable t;
    cp_scol *c = one_col(&t, "r", CP_SCOL_F32, 9);
    CHECK(c != NULL);
    float *v = c->v;
    v[0] = 0.8f;                         /* 0.800000011920929 > 0.8 */
    v[1] = nextafterf(0.8f, 1.0f);       /* one ulp above */
    v[2] = nextafterf(0.8f, 0.0f);       /* one ulp below */
    v[3] = NAN;                          /* null */
    v[4] = 16777216.0f;                  /* 2^24: 16777217 rounds to it */
    v[5] = FLT_MAX;
    v[6] = INFINITY;
    v[7] = -INFINITY;
    v[8] = 0.0f;
    /* the issue: r > 0.8 must not return the spots whose r is 0.8 */
    WHERE(&t, "r == 0.8", "100000000");
    WHERE(&t, "r = 0.8", "100000000");
    WHERE(&t, "r != 0.8", "011111111"); /* NaN != anything */
    WHERE(&t, "r < 0.8", "001000011");
    WHERE(&t, "r <= 0.8", "101000011");
    WHERE(&t, "r > 0.8", "010011100");
    WHERE(&t, "r >= 0.8", "110011100");
    WHERE(&t, "r > 0.80000001", "010011100");
    WHERE(&t, "r == 0.800000011920929", "100000000");
    /* a float literal rounds to float32 (16777216.5 -> 16777216) */
    WHERE(&t, "r == 16777217.0", "000010000");
    WHERE(&t, "r > 16777216.5", "000001100");
    WHERE(&t, "r >= 16777216.5", "000011100");
    /* an integer beyond int16/uint16 compares in float64 (numpy 1 promotes
     * float32 with uint32 to float64) */
    WHERE(&t, "r == 16777217", "000000000");
    WHERE(&t, "r > -32769", "111011101");
    /* |literal| >= 3.4e38 compares in float64 as well */
    WHERE(&t, "r == 3.4028235e38", "000000000");
    WHERE(&t, "r < 1e39", "111011011");
    WHERE(&t, "r <= 1e39", "111011011");
    WHERE(&t, "r == 0", "000000001");
    WHERE(&t, "r == -0", "000000001");
    /* integers beyond 64 bits compare exactly (Python int vs float) */
    WHERE(&t, "r < 100000000000000000000000000000000000000000", "111011011");
    WHERE(&t, "r == 340282346638528859811704183484516925440", "000001000");
    WHERE(&t, "r == 340282346638528859811704183484516925441", "000000000");
    WHERE(&t, "r >= 340282346638528859811704183484516925441", "000000100");
    WHERE(&t, "r <= -340282346638528859811704183484516925441", "000000010");
    WHERE(&t, "r > abc", "error");
    cp_stable_free(&t);
}

static void test_f64(void)
{
    cp_stable t;
    cp_scol *c = one_col(&t, "d", CP_SCOL_F64, 4);
    CHECK(c != NULL);
    double *v = c->v;
    v[0] = 0.8;
    v[1] = nextafter(0.8, 1.0);
    v[2] = NAN;
    v[3] = (double)0.8f;
    WHERE(&t, "d > 0.8", "0101");
    WHERE(&t, "d == 0.8", "1000");
    WHERE(&t, "d != 0.8", "0111");
    cp_stable_free(&t);
}

static void test_ints(void)
{
    cp_stable t;
    cp_scol *c = one_col(&t, "round", CP_SCOL_I8, 5);
    CHECK(c != NULL);
    int8_t *r = c->v;
    r[0] = 2, r[1] = 3, r[2] = -128, r[3] = 127;
    cp_scol_set_null(c, 4);
    /* out-of-range and fractional literals compare exactly */
    WHERE(&t, "round < 300", "11110");
    WHERE(&t, "round > -200", "11110");
    WHERE(&t, "round == 300", "00000");
    WHERE(&t, "round != 300", "11111"); /* null != anything */
    WHERE(&t, "round == 2.5", "00000");
    WHERE(&t, "round >= 2.0001", "01010");
    WHERE(&t, "round < 2.5", "10100");
    WHERE(&t, "round <= -128", "00100");
    WHERE(&t, "round == 2.0", "10000");
    WHERE(&t, "round < 18446744073709551615", "11110");
    WHERE(&t, "round > -9223372036854775809", "11110");
    cp_stable_free(&t);

    c = one_col(&t, "cell_id", CP_SCOL_I32, 5);
    CHECK(c != NULL);
    int32_t *id = c->v;
    id[0] = 2, id[1] = 3, id[2] = INT32_MAX, id[3] = INT32_MIN;
    cp_scol_set_null(c, 4);
    WHERE(&t, "cell_id > 2.5", "01100");
    WHERE(&t, "cell_id < 3000000000", "11110");
    WHERE(&t, "cell_id > -3000000000", "11110");
    WHERE(&t, "cell_id == 2147483647", "00100");
    WHERE(&t, "cell_id == 2147483647.5", "00000");
    WHERE(&t, "cell_id != 2", "01111");
    WHERE(&t, "cell_id < 18446744073709551616", "11110");
    cp_stable_free(&t);

    /* int64 (result tables): an integer literal in int64 compares exactly; a
     * float literal or one in [2^63, 2^64) in float64, as numpy 1 does */
    c = one_col(&t, "n", CP_SCOL_I64, 3);
    CHECK(c != NULL);
    int64_t *n = c->v;
    n[0] = INT64_MAX, n[1] = (1ll << 53) + 1, n[2] = -5;
    WHERE(&t, "n == 9007199254740993", "010");
    WHERE(&t, "n == 9007199254740992.0", "010");
    WHERE(&t, "n > 9007199254740992.0", "100");
    WHERE(&t, "n == 9223372036854775808", "100");
    WHERE(&t, "n < 9223372036854775808", "011");
    WHERE(&t, "n >= 9223372036854775807", "100");
    WHERE(&t, "n < 100000000000000000000", "111");
    WHERE(&t, "n > -100000000000000000000", "111");
    cp_stable_free(&t);
}

static void test_bool_str(void)
{
    cp_stable t;
    cp_scol *c = one_col(&t, "valid_spot", CP_SCOL_BOOL, 3);
    CHECK(c != NULL);
    cp_scol_set_bool(c, 0, 1);
    cp_scol_set_bool(c, 1, 0);
    cp_scol_set_null(c, 2);
    WHERE(&t, "valid_spot == True", "100");
    WHERE(&t, "valid_spot == true", "100");
    WHERE(&t, "valid_spot != True", "011");
    WHERE(&t, "valid_spot == 1", "100");
    WHERE(&t, "valid_spot > 0.5", "100");
    WHERE(&t, "valid_spot < 300", "110");
    WHERE(&t, "valid_spot == 0", "010");
    WHERE(&t, "valid_spot >= False", "110");
    WHERE(&t, "valid_spot == 2", "000");
    WHERE(&t, "valid_spot > -1", "110");
    WHERE(&t, "valid_spot == maybe", "error");
    cp_stable_free(&t);

    memset(&t, 0, sizeof t);
    CHECK_OK(cp_stable_add_col(&t, "chan", CP_SCOL_STR));
    CHECK_OK(cp_stable_reserve(&t, 3));
    int32_t *k = t.cols[0].v;
    CHECK_OK(cp_sdict_intern(&t.cols[0].dict, "488", 3, &k[0]));
    k[1] = -1;
    CHECK_OK(cp_sdict_intern(&t.cols[0].dict, "561", 3, &k[2]));
    t.nrows = 3;
    WHERE(&t, "chan == 488", "100");
    WHERE(&t, "chan != 488", "011");
    WHERE(&t, "chan < 5", "100");
    WHERE(&t, "chan > 5", "001");
    WHERE(&t, "chan == 999", "000");
    WHERE(&t, "chan != 999", "111");
    cp_stable_free(&t);
}

int main(void)
{
    test_f32();
    test_f64();
    test_ints();
    test_bool_str();
    return test_result();
}
