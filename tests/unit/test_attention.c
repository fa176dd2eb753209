/* The row pass of Cellpose-SAM's attention (lib/net/attention.c) against a
 * double-precision softmax, and its three builds against each other: the
 * same bits whatever the CPU. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "net/shim.h"
#include "test.h"

static uint64_t rng = 88172645463325252ull;
static float urand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) / 16777216.0);
}

typedef struct {
    int64_t m, h, w;
    float *s, *rh, *rw;
} rows;

static rows make_rows(int64_t m, int64_t h, int64_t w, float spread)
{
    rows r = {m, h, w, malloc(sizeof(float) * m * h * w), malloc(sizeof(float) * m * h), malloc(sizeof(float) * m * w)};
    for (int64_t i = 0; i < m * h * w; i++)
        r.s[i] = (urand() - 0.5f) * spread;
    for (int64_t i = 0; i < m * h; i++)
        r.rh[i] = urand() - 0.5f;
    for (int64_t i = 0; i < m * w; i++)
        r.rw[i] = urand() - 0.5f;
    return r;
}

static void free_rows(rows *r)
{
    free(r->s);
    free(r->rh);
    free(r->rw);
}

/* softmax(s * scale + rh + rw) in double: the independent answer */
static void reference(const rows *r, float scale, double *out)
{
    int64_t n = r->h * r->w;
    for (int64_t i = 0; i < r->m; i++) {
        double mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < n; j++) {
            double a = (double)r->s[i * n + j] * scale + r->rh[i * r->h + j / r->w] + r->rw[i * r->w + j % r->w];
            out[i * n + j] = a;
            mx = a > mx ? a : mx;
        }
        for (int64_t j = 0; j < n; j++)
            sum += out[i * n + j] = exp(out[i * n + j] - mx);
        for (int64_t j = 0; j < n; j++)
            out[i * n + j] /= sum;
    }
}

static float bf16_value(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void check_case(int64_t m, int64_t h, int64_t w, float spread)
{
    rows r = make_rows(m, h, w, spread);
    int64_t n = h * w, len = m * n;
    double *ref = malloc(sizeof(double) * len);
    float *base = malloc(sizeof(float) * len), *s = malloc(sizeof(float) * len);
    uint16_t *b16 = malloc(sizeof(uint16_t) * len), *o16 = malloc(sizeof(uint16_t) * len);
    reference(&r, 0.125f, ref);

    memcpy(base, r.s, sizeof(float) * len);
    CHECK(cp_attn_softmax_isa(CP_ISA_BASE, base, m, h, w, r.rh, r.rw, 0.125f, base, 0) == 0);
    double worst = 0;
    for (int64_t i = 0; i < len; i++) {
        double e = fabs(base[i] - ref[i]) / (ref[i] + 1e-30);
        if (ref[i] > 1e-30 && e > worst)
            worst = e;
    }
    CHECKF(worst < 4e-6, "%lldx%lldx%lld spread %g: worst relative error %.3g", (long long)m, (long long)h,
           (long long)w, spread, worst);
    double rowsum = 0;
    for (int64_t j = 0; j < n; j++)
        rowsum += base[j];
    CHECK_NEAR(rowsum, 1.0, 1e-5);

    /* bf16 out: the float result rounded to the nearest bfloat16 */
    memcpy(s, r.s, sizeof(float) * len);
    CHECK(cp_attn_softmax_isa(CP_ISA_BASE, s, m, h, w, r.rh, r.rw, 0.125f, b16, 1) == 0);
    int64_t bad_round = 0;
    for (int64_t i = 0; i < len; i++) {
        float v = bf16_value(b16[i]), up = bf16_value((uint16_t)(b16[i] + 1)),
              down = b16[i] ? bf16_value((uint16_t)(b16[i] - 1)) : 0;
        if (fabsf(v - base[i]) > fabsf(up - base[i]) || fabsf(v - base[i]) > fabsf(down - base[i]))
            bad_round++;
    }
    CHECKF(bad_round == 0, "%lld bf16 values are not the nearest", (long long)bad_round);

    /* every build this CPU has: the same bits as the baseline build */
    int isas[] = {CP_ISA_AVX2, CP_ISA_AVX512};
    for (size_t k = 0; k < sizeof isas / sizeof *isas; k++) {
        memcpy(s, r.s, sizeof(float) * len);
        if (cp_attn_softmax_isa(isas[k], s, m, h, w, r.rh, r.rw, 0.125f, s, 0))
            continue; /* not on this CPU */
        CHECKF(!memcmp(s, base, sizeof(float) * len), "isa %d differs from the baseline build (float)", isas[k]);
        memcpy(s, r.s, sizeof(float) * len);
        CHECK(cp_attn_softmax_isa(isas[k], s, m, h, w, r.rh, r.rw, 0.125f, o16, 1) == 0);
        CHECKF(!memcmp(o16, b16, sizeof(uint16_t) * len), "isa %d differs from the baseline build (bf16)", isas[k]);
    }
    /* the dispatcher picks one of them */
    memcpy(s, r.s, sizeof(float) * len);
    cp_attn_softmax(s, m, h, w, r.rh, r.rw, 0.125f, s, 0);
    CHECK(!memcmp(s, base, sizeof(float) * len));

    free(ref);
    free(base);
    free(s);
    free(b16);
    free(o16);
    free_rows(&r);
}

/* One score far above the rest: probability 1 there, exactly 0 or a value
 * below float's normal range elsewhere (exp of -1000 underflows). */
static void test_dominant(void)
{
    float s[64], rh[4] = {0}, rw[16] = {0};
    for (int j = 0; j < 64; j++)
        s[j] = j == 37 ? 8000.0f : (float)j;
    CHECK(cp_attn_softmax_isa(CP_ISA_BASE, s, 1, 4, 16, rh, rw, 0.125f, s, 0) == 0);
    CHECK(s[37] == 1.0f);
    for (int j = 0; j < 64; j++)
        if (j != 37)
            CHECKF(s[j] < 1e-37f, "s[%d] = %g", j, s[j]);
}

int main(void)
{
    check_case(3, 32, 32, 40.0f); /* ViT-L's 32x32 token grid */
    check_case(5, 7, 13, 20.0f);  /* rows and row segments off the vector width */
    check_case(2, 3, 5, 200.0f);  /* a whole row shorter than a vector, wide range */
    check_case(4, 16, 16, 1e-3f); /* nearly flat rows */
    test_dominant();
    return test_result();
}
