/* 3D dynamics against Cellpose's own 3D outputs (golden/3d): Euler positions,
 * seeded masks, final masks, stitch3D and flows from labels, bit for bit,
 * on flows from real 3D labels (dynamics3d/platy, v3 and v4) and on the
 * random-network eval runs (eval3d, hundreds of tied seeds). Plus thread
 * invariance and size checks; the AVX2 Euler steps equal the scalar ones. */
#include <limits.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "cellpose/cellpose.h"
#include "test.h"

static const char *g3(const char *rel)
{
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/golden/3d/%s", test_shared_dir(), rel);
    return buf;
}

/* A golden array of the given dtype, ndim and element count (NULL + a
 * failed check otherwise). */
static cp_array *load(const char *rel, cp_dtype want, size_t count)
{
    cp_array *a = NULL;
    const char *p = g3(rel);
    int rc = cp_npy_read(p, &a);
    CHECKF(rc == 0, "%s: %s", p, cp_errmsg());
    if (rc)
        return NULL;
    if (a->dtype != want || cp_array_count(a) != count) {
        CHECKF(0, "%s: dtype %d count %zu, expected %d %zu", p, (int)a->dtype,
               cp_array_count(a), (int)want, count);
        cp_array_free(a);
        return NULL;
    }
    return a;
}

static size_t diff_bytes(const void *a, const void *b, size_t n, size_t elem)
{
    size_t d = 0;
    for (size_t i = 0; i < n; i++)
        d += memcmp((const char *)a + i * elem, (const char *)b + i * elem, elem) != 0;
    return d;
}

/* labels equal to the golden file `rel` (uint32 .npy.gz) */
static void check_labels(const uint32_t *got, size_t n, const char *rel, const char *what)
{
    cp_array *ref = load(rel, CP_U32, n);
    if (!ref)
        return;
    size_t d = diff_bytes(got, ref->data, n, 4);
    CHECKF(d == 0, "%s vs %s: %zu of %zu voxels differ", what, rel, d, n);
    cp_array_free(ref);
}

static size_t nfollowed(const float *cellprob, size_t n)
{
    return cp_dyn_count_followed(cellprob, n, 0.0f);
}

/* The AVX2 trilinear steps (the default where the CPU has AVX2) against the
 * scalar loop (CP_DYN_SCALAR=1): the same p bytes. */
static void check_scalar_same(const char *name, const float *dP, const float *cellprob, int Lz,
                              int Ly, int Lx, int niter, const float *p, size_t n)
{
    static int said;
    const char *why = getenv("CP_DYN_SCALAR") ? "CP_DYN_SCALAR is set"
                      : !__builtin_cpu_supports("avx2") ? "this CPU has no AVX2" : NULL;
    if (why) {
        if (!said++)
            printf("    # AVX2 vs scalar Euler steps not compared: %s\n", why);
        return;
    }
    float *q = malloc(3 * n * sizeof *q + 1);
    setenv("CP_DYN_SCALAR", "1", 1);
    CHECK_OK(cp_dyn_euler3d(dP, cellprob, Lz, Ly, Lx, 0.0f, 1, niter, 0, q));
    unsetenv("CP_DYN_SCALAR");
    size_t d = diff_bytes(p, q, 3 * n, 4);
    CHECKF(d == 0, "%s: AVX2 and scalar steps differ at %zu of %zu", name, d, 3 * n);
    free(q);
}

/* One do_3D golden run: dP/cellprob, niter, the folder with p_final (if
 * any), masks_seeded and masks. */
static void check_do3d(const char *name, const float *dP, const float *cellprob, int Lz, int Ly,
                       int Lx, cp_dyn_variant v, int niter, int interp, const char *dir,
                       int has_p)
{
    size_t nvox = (size_t)Lz * Ly * Lx, n = nfollowed(cellprob, nvox);
    char rel[512];
    float *p = malloc(3 * n * sizeof *p + 1);
    uint32_t *lab = malloc(nvox * sizeof *lab);
    CHECK_OK(cp_dyn_euler3d(dP, cellprob, Lz, Ly, Lx, 0.0f, interp, niter, 0, p));
    if (interp)
        check_scalar_same(name, dP, cellprob, Lz, Ly, Lx, niter, p, n);
    if (has_p) {
        snprintf(rel, sizeof rel, "%s/p_final.npy.gz", dir);
        cp_array *pf = load(rel, CP_F32, 3 * n);
        if (pf) {
            size_t d = diff_bytes(p, pf->data, 3 * n, 4);
            CHECKF(d == 0, "%s: p_final differs at %zu of %zu", name, d, 3 * n);
            cp_array_free(pf);
        }
    }
    int nl = -1, ns = -1;
    CHECK_OK(cp_dyn_get_masks3d(p, cellprob, Lz, Ly, Lx, 0.0f, 0.4, lab, &nl, &ns));
    snprintf(rel, sizeof rel, "%s/masks_seeded.npy.gz", dir);
    check_labels(lab, nvox, rel, name);
    CHECKF(nl > 0 && ns >= nl, "%s: %d labels from %d seeds", name, nl, ns);
    /* the rest of the pipeline (cp_dynamics3d runs it whole in pipeline()) */
    CHECK_OK(cp_dyn_fill_holes_and_remove_small3d(lab, Lz, Ly, Lx, 15));
    snprintf(rel, sizeof rel, "%s/masks.npy.gz", dir);
    check_labels(lab, nvox, rel, name);
    (void)v;
    printf("    # %s: %zu followed, %d seeds, %d seeded\n", name, n, ns, nl);
    free(p);
    free(lab);
}

enum { PZ = 48, PY = 128, PX = 128 };

/* Under the sanitizers (slow) the longest Euler runs are left out: platy
 * niter 200 and the second v4 eval run (the other runs cover the same code). */
static int g_light;

static void platy(void)
{
    size_t nvox = (size_t)PZ * PY * PX;
    cp_array *cp = load("dynamics3d/platy/cellprob_in.npy.gz", CP_F32, nvox);
    if (!cp)
        return;
    const char *ver[2] = {"v3", "v4"};
    for (int k = 0; k < 2; k++) {
        char rel[256], dir[256], name[64];
        snprintf(rel, sizeof rel, "dynamics3d/platy/%s/dP_in.npy.gz", ver[k]);
        cp_array *dP = load(rel, CP_F32, 3 * nvox);
        if (!dP)
            continue;
        cp_dyn_variant v = k ? CP_DYN_V4 : CP_DYN_V3;
        const int niters[2] = {84, 200};
        for (int j = 0; j < (g_light ? 1 : 2); j++) {
            snprintf(dir, sizeof dir, "dynamics3d/platy/%s/niter%d", ver[k], niters[j]);
            snprintf(name, sizeof name, "platy %s niter %d", ver[k], niters[j]);
            check_do3d(name, dP->data, cp->data, PZ, PY, PX, v, niters[j], 1, dir, 1);
        }
        if (!k)
            check_do3d("platy v3 nearest niter 84", dP->data, cp->data, PZ, PY, PX, v, 84, 0,
                       "dynamics3d/platy/v3/nointerp_niter84", 1);
        cp_array_free(dP);
    }
    cp_array_free(cp);
}

/* stitch3D from the per-plane labels, then 3D fill holes / min_size 15 */
static void check_stitch(const char *dir, int Lz, int Ly, int Lx)
{
    size_t nvox = (size_t)Lz * Ly * Lx;
    char rel[256];
    snprintf(rel, sizeof rel, "%s/masks_planes.npy.gz", dir);
    cp_array *pl = load(rel, CP_U32, nvox);
    if (!pl)
        return;
    uint32_t *m = pl->data;
    CHECK_OK(cp_stitch3d(m, Lz, Ly, Lx, 0.5));
    snprintf(rel, sizeof rel, "%s/masks_stitched.npy.gz", dir);
    check_labels(m, nvox, rel, "stitch3d");
    CHECK_OK(cp_dyn_fill_holes_and_remove_small3d(m, Lz, Ly, Lx, 15));
    snprintf(rel, sizeof rel, "%s/masks.npy.gz", dir);
    check_labels(m, nvox, rel, "stitch + fill");
    cp_array_free(pl);
}

/* Flows from the platy labels: v3 exact (float32), v4 to 1e-12 relative. */
static void flows(void)
{
    size_t nvox = (size_t)PZ * PY * PX;
    cp_array *gt = load("dynamics3d/platy/gt_renum.npy.gz", CP_U32, nvox);
    if (!gt)
        return;
    double *mu = malloc(3 * nvox * sizeof *mu);
    double t = omp_get_wtime();
    CHECK_OK(cp_masks_to_flows3d(gt->data, PZ, PY, PX, CP_DYN_V3, 0, mu));
    double t3 = omp_get_wtime() - t;
    cp_array *ref = load("dynamics3d/platy/v3/flows.npy.gz", CP_F32, 3 * nvox);
    if (ref) {
        const float *r = ref->data;
        size_t d = 0;
        for (size_t i = 0; i < 3 * nvox; i++)
            d += !(mu[i] == (double)r[i]) || (float)mu[i] != r[i];
        CHECKF(d == 0, "v3 3D flows: %zu of %zu values differ", d, 3 * nvox);
        cp_array_free(ref);
    }
    t = omp_get_wtime();
    CHECK_OK(cp_masks_to_flows3d(gt->data, PZ, PY, PX, CP_DYN_V4, 0, mu));
    double t4 = omp_get_wtime() - t;
    ref = load("dynamics3d/platy/v4/flows.npy.gz", CP_F64, 3 * nvox);
    cp_array *dP = load("dynamics3d/platy/v4/dP_in.npy.gz", CP_F32, 3 * nvox);
    if (ref && dP) {
        const double *r = ref->data;
        const float *f = dP->data;
        double worst = 0;
        size_t zero = 0, fdiff = 0;
        for (size_t i = 0; i < 3 * nvox; i++) {
            double e = fabs(mu[i] - r[i]);
            worst = e > worst ? e : worst;
            zero += (mu[i] == 0) != (r[i] == 0);
            fdiff += (float)(5.0 * mu[i]) != f[i];
        }
        CHECKF(worst <= 1e-12 && zero == 0, "v4 3D flows: max |diff| %g, %zu zero mismatches",
               worst, zero);
        /* float32(5 * mu) may round differently only where mu differs in
         * its last bits: a handful of values at most */
        CHECKF(fdiff <= 3 * nvox / 10000, "v4 dP_in = float32(5 mu): %zu values differ", fdiff);
        printf("    # flows: v3 %.0f ms, v4 %.0f ms; v4 max |diff| %.3g, dP_in diffs %zu\n",
               1e3 * t3, 1e3 * t4, worst, fdiff);
    }
    cp_array_free(ref);
    cp_array_free(dP);
    free(mu);
    cp_array_free(gt);
}

/* eval3d: dynamics from the golden dP / cellprob of CellposeModel.eval. */
static void eval3d(void)
{
    static const struct {
        const char *run, *cp_run;
        int Lz, niter;
        cp_dyn_variant v;
    } R[] = {
        {"v3_do3D_a1_d17", "v3_do3D_a1_d17", 32, 200, CP_DYN_V3},
        {"v3_do3D_a2_d20", "v3_do3D_a2_d20", 16, 235, CP_DYN_V3},
        {"v4_do3D_dnone", "v4_do3D_dnone", 32, 200, CP_DYN_V4},
        {"v4_do3D_dnone_smooth1", "v4_do3D_dnone", 32, 200, CP_DYN_V4},
    };
    for (size_t k = 0; k < sizeof R / sizeof *R - (g_light ? 1 : 0); k++) {
        size_t nvox = (size_t)R[k].Lz * 80 * 80;
        char rel[256], dir[256];
        snprintf(rel, sizeof rel, "eval3d/%s/dP.npy", R[k].run);
        cp_array *dP = load(rel, CP_F32, 3 * nvox);
        snprintf(rel, sizeof rel, "eval3d/%s/cellprob.npy", R[k].cp_run);
        cp_array *cp = load(rel, CP_F32, nvox);
        snprintf(dir, sizeof dir, "eval3d/%s", R[k].run);
        if (dP && cp)
            check_do3d(R[k].run, dP->data, cp->data, R[k].Lz, 80, 80, R[k].v, R[k].niter, 1, dir,
                       0);
        cp_array_free(dP);
        cp_array_free(cp);
    }
    check_stitch("eval3d/v3_stitch_d17", 32, 80, 80);
}

/* The whole pipeline against golden masks (niter from the diameter), and
 * the same bytes for 1 and 2 threads: positions, labels, flows. */
static void pipeline(void)
{
    size_t nvox = (size_t)16 * 80 * 80;
    cp_array *dP = load("eval3d/v3_do3D_a2_d20/dP.npy", CP_F32, 3 * nvox);
    cp_array *cp = load("eval3d/v3_do3D_a2_d20/cellprob.npy", CP_F32, nvox);
    if (!dP || !cp) {
        cp_array_free(dP), cp_array_free(cp);
        return;
    }
    size_t n = nfollowed(cp->data, nvox);
    float *p[2];
    uint32_t *lab[2];
    double *mu[2];
    cp_dyn_params prm;
    cp_dyn_params_default(&prm, CP_DYN_V3);
    prm.diameter = 20;
    prm.diam_mean = 17; /* v3: uint32(200 / (17 / 20)) = 235 */
    prm.flow_threshold = 0.4; /* ignored in 3D */
    cp_dyn_stats st[2];
    for (int t = 0; t < 2; t++) {
        p[t] = malloc(3 * n * sizeof *p[t] + 1);
        lab[t] = malloc(nvox * sizeof *lab[t]);
        mu[t] = malloc(3 * nvox * sizeof *mu[t]);
        prm.threads = t + 1;
        CHECK_OK(cp_dyn_euler3d(dP->data, cp->data, 16, 80, 80, 0.0f, t, 60, t + 1, p[t]));
        CHECK_OK(cp_dynamics3d(dP->data, cp->data, 16, 80, 80, &prm, lab[t], &st[t]));
        CHECK_OK(cp_masks_to_flows3d(lab[t], 16, 80, 80, t ? CP_DYN_V4 : CP_DYN_V3, t + 1, mu[t]));
    }
    CHECKF(st[0].niter == 235 && st[0].followed == n && st[0].masks_seeded == 64 &&
               st[0].cells == 62 && st[0].masks_removed_qc == 0,
           "stats: niter %d followed %zu seeded %d cells %d", st[0].niter, st[0].followed,
           st[0].masks_seeded, st[0].cells);
    check_labels(lab[0], nvox, "eval3d/v3_do3D_a2_d20/masks.npy.gz", "cp_dynamics3d");
    CHECK(memcmp(lab[0], lab[1], nvox * sizeof(uint32_t)) == 0);
    /* positions: nearest with 1 thread vs 2 threads, trilinear likewise */
    float *q = malloc(3 * n * sizeof *q + 1);
    CHECK_OK(cp_dyn_euler3d(dP->data, cp->data, 16, 80, 80, 0.0f, 0, 60, 2, q));
    CHECK(memcmp(q, p[0], 3 * n * sizeof *q) == 0);
    CHECK_OK(cp_dyn_euler3d(dP->data, cp->data, 16, 80, 80, 0.0f, 1, 60, 1, q));
    CHECK(memcmp(q, p[1], 3 * n * sizeof *q) == 0);
    free(q);
    /* flows with the other thread count each */
    double *m2 = malloc(3 * nvox * sizeof *m2);
    CHECK_OK(cp_masks_to_flows3d(lab[0], 16, 80, 80, CP_DYN_V3, 2, m2));
    CHECK(memcmp(m2, mu[0], 3 * nvox * sizeof *m2) == 0);
    CHECK_OK(cp_masks_to_flows3d(lab[0], 16, 80, 80, CP_DYN_V4, 1, m2));
    CHECK(memcmp(m2, mu[1], 3 * nvox * sizeof *m2) == 0);
    free(m2);
    for (int t = 0; t < 2; t++)
        free(p[t]), free(lab[t]), free(mu[t]);
    cp_array_free(dP);
    cp_array_free(cp);
}

/* Small hand-made cases: stitch quirks, fill holes in 3D, bad sizes. */
static void small_cases(void)
{
    /* stitch: plane 0 empty, plane 1 {1, 3} (2 absent), plane 2 overlaps
     * label 3 well and label 1 poorly, plane 3 empty, plane 4 new */
    enum { Z = 5, Y = 4, X = 6 };
    uint32_t m[Z][Y][X];
    memset(m, 0, sizeof m);
    for (int y = 0; y < 2; y++)
        for (int x = 0; x < 2; x++)
            m[1][y][x] = 1, m[1][y + 2][x + 4] = 3;
    m[2][2][4] = m[2][2][5] = m[2][3][4] = m[2][3][5] = 1; /* = old 3: IoU 1 */
    m[2][0][0] = 2;                                        /* old 1: IoU 0.25 */
    m[4][1][1] = 1;
    CHECK_OK(cp_stitch3d(&m[0][0][0], Z, Y, X, 0.5));
    /* plane 1 kept as is (quirk), mmax 3; plane 2: 1 -> 3, 2 -> mmax+2 = 5
     * (rows 1..2: row 1 matched, row 2 is the 2nd... rows without match
     * numbered in row order: only row 2, the first such -> 4) */
    CHECK(m[1][0][0] == 1 && m[1][2][4] == 3);
    CHECK(m[2][2][4] == 3);
    CHECK_NEAR(m[2][0][0], 4, 0);
    /* plane 3 empty; plane 4 after a non-empty comparison: offset by mmax (4) */
    CHECK_NEAR(m[4][1][1], 5, 0);

    /* fill: a hollow 5x5x5 cube is filled in 3D; a tube open at both z ends
     * is not (its cavity touches the box border) */
    enum { L = 7 };
    uint32_t v[L][L][L];
    memset(v, 0, sizeof v);
    for (int z = 1; z < 6; z++)
        for (int y = 1; y < 6; y++)
            for (int x = 1; x < 6; x++)
                v[z][y][x] = z == 1 || z == 5 || y == 1 || y == 5 || x == 1 || x == 5;
    CHECK_OK(cp_dyn_fill_holes_and_remove_small3d(&v[0][0][0], L, L, L, 15));
    CHECK(v[3][3][3] == 1 && v[0][0][0] == 0);
    memset(v, 0, sizeof v);
    for (int z = 0; z < L; z++)
        for (int y = 1; y < 6; y++)
            for (int x = 1; x < 6; x++)
                v[z][y][x] = y == 1 || y == 5 || x == 1 || x == 5;
    CHECK_OK(cp_dyn_fill_holes_and_remove_small3d(&v[0][0][0], L, L, L, 15));
    CHECK(v[3][3][3] == 0 && v[3][1][1] == 1);

    /* sizes */
    float f = 0;
    uint32_t u = 0;
    double d = 0;
    cp_dyn_params prm;
    cp_dyn_params_default(&prm, CP_DYN_V4);
    CHECK(cp_dynamics3d(&f, &f, 0, 4, 4, &prm, &u, NULL) == CP_EINVAL);
    CHECK(cp_dynamics3d(&f, &f, 1, 4, 4, &prm, &u, NULL) == CP_EINVAL);
    CHECK(cp_dyn_euler3d(&f, &f, 4, -1, 4, 0.0f, 1, 10, 0, &f) == CP_EINVAL);
    CHECK(cp_dyn_euler3d(&f, &f, INT_MAX, INT_MAX, INT_MAX, 0.0f, 0, 10, 0, &f) == CP_ELIMIT);
    CHECK(cp_dyn_get_masks3d(&f, &f, 2000, 2000, 2000, 0.0f, 0.4, &u, NULL, NULL) == CP_ELIMIT);
    CHECK(cp_stitch3d(&u, 2, 0, 2, 0.5) == CP_EINVAL);
    CHECK(cp_masks_to_flows3d(&u, 1, 1, 1, (cp_dyn_variant)5, 0, &d) == CP_EINVAL);
    CHECK(cp_dyn_fill_holes_and_remove_small3d(&u, INT_MAX, INT_MAX, 4, 15) == CP_ELIMIT);
}

int main(void)
{
    const char *san = getenv("CP_SANITIZERS");
    g_light = san && *san == '1';
    double t = omp_get_wtime();
    small_cases();
    platy();
    check_stitch("dynamics3d/platy/v3/stitch", PZ, PY, PX);
    check_stitch("dynamics3d/platy/v4/stitch", PZ, PY, PX);
    flows();
    eval3d();
    pipeline();
    printf("    # total %.2f s\n", omp_get_wtime() - t);
    return test_result();
}
