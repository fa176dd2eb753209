/* Minimal test harness: every check counts; a test binary ends with
 * `RESULT <passed> <failed>` which tests/run adds up. */
#ifndef CP_TEST_H
#define CP_TEST_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int tst_pass, tst_fail;

#define CHECK(cond) CHECKF(cond, "%s", "")
#define CHECKF(cond, ...)                                                      \
    do {                                                                       \
        if (cond) {                                                            \
            tst_pass++;                                                        \
        } else {                                                               \
            tst_fail++;                                                        \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);    \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
        }                                                                      \
    } while (0)
/* A call into libcellpose that must succeed; prints cp_errmsg() otherwise. */
#define CHECK_OK(call)                                                         \
    do {                                                                       \
        int rc_ = (call);                                                      \
        CHECKF(rc_ == 0, "rc=%d: %s", rc_, cp_errmsg());                       \
    } while (0)
#define CHECK_NEAR(a, b, tol)                                                  \
    do {                                                                       \
        double a_ = (a), b_ = (b);                                             \
        CHECKF(fabs(a_ - b_) <= (tol), "%.17g vs %.17g (tol %g)", a_, b_,      \
               (double)(tol));                                                 \
    } while (0)

/* Number of positions where two label arrays differ. */
static inline size_t test_count_diff_u32(const uint32_t *a, const uint32_t *b, size_t n)
{
    size_t d = 0;
    for (size_t i = 0; i < n; i++)
        d += a[i] != b[i];
    return d;
}

static inline int test_result(void)
{
    printf("RESULT %d %d\n", tst_pass, tst_fail);
    return tst_fail ? 1 : 0;
}

/* ../shared (golden vectors, data) — tests/run exports CP_SHARED. */
static inline const char *test_shared_dir(void)
{
    const char *s = getenv("CP_SHARED");
    return s && *s ? s : "../shared";
}

/* Build "<CP_SHARED>/<rel>" into a static buffer (one at a time). */
static inline const char *shared_path(const char *rel)
{
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", test_shared_dir(), rel);
    return buf;
}

/* A scratch folder for this test binary (tests/run exports CP_TMP). */
static inline const char *test_tmp_dir(void)
{
    const char *s = getenv("CP_TMP");
    return s && *s ? s : "/tmp";
}

/* Write n bytes to path (0 on success). */
static inline int test_write_bytes(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = fwrite(data, 1, n, f);
    return fclose(f) == 0 && w == n ? 0 : -1;
}

/* A whole file in memory with a NUL after it (free() it); NULL if it cannot
 * be read. n (may be NULL) receives its size. void * so any byte type fits. */
static inline void *test_slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = len >= 0 ? malloc((size_t)len + 1) : NULL;
    if (b && fread(b, 1, (size_t)len, f) != (size_t)len) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b) {
        b[len] = 0;
        if (n)
            *n = (size_t)len;
    }
    return b;
}

#endif
