/* Cellpose's utils.stitch3D (golden/3d README, stitch mode), bit for bit:
 * plane by plane, the IoU matrix of the labels of plane z+1 (rows 1..max,
 * present or not) against the already stitched plane z (columns), IoU below
 * the threshold set to 0, in each column only the maximum kept, each row
 * taking the column of its maximum (first on ties) or, with maximum 0, a new
 * label. The matrix is never formed: only overlapping pairs are visited, in
 * (row, column) order from a radix sort, so any label values work. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/dynamics.h"
#include "core/internal.h"
#include "dynamics/internal.h"

/* LSD radix sort of n keys on their low 16 * passes bits (tmp: n scratch). */
static void radix_sort(uint64_t *a, uint64_t *tmp, size_t n, int passes, size_t *cnt)
{
    for (int p = 0; p < passes; p++) {
        int sh = 16 * p;
        memset(cnt, 0, 65537 * sizeof *cnt);
        for (size_t i = 0; i < n; i++)
            cnt[(a[i] >> sh & 0xffff) + 1]++;
        for (int d = 0; d < 65536; d++)
            cnt[d + 1] += cnt[d];
        for (size_t i = 0; i < n; i++)
            tmp[cnt[a[i] >> sh & 0xffff]++] = a[i];
        memcpy(a, tmp, n * sizeof *a);
    }
}

/* Position of v in the sorted distinct values u[0..n) (present). */
static size_t find_u32(const uint32_t *u, size_t n, uint32_t v)
{
    size_t lo = 0, hi = n;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (u[mid] <= v)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

static uint32_t plane_max(const uint32_t *m, size_t n)
{
    uint32_t mx = 0;
    for (size_t i = 0; i < n; i++)
        mx = m[i] > mx ? m[i] : mx;
    return mx;
}

typedef struct stitch_work {
    uint64_t *key, *tmp;     /* plane-sized */
    uint32_t *bv, *ua, *lab; /* distinct column values, distinct rows, row labels */
    size_t *bc, *cnt;        /* column sizes, radix counts */
    double *colmax;
} stitch_work;

/* Stitch plane A (z+1, values <= ma) to plane B (z): A's labels in place.
 * *mmax is the running maximum label. */
static int stitch_pair(uint32_t *A, const uint32_t *B, size_t np, uint32_t ma, double thr,
                       uint32_t *mmax, stitch_work *w)
{
    /* column sizes: the distinct values of B with their pixel counts */
    size_t nk = 0;
    for (size_t i = 0; i < np; i++)
        if (B[i])
            w->key[nk++] = B[i];
    radix_sort(w->key, w->tmp, nk, 2, w->cnt);
    size_t nbv = 0;
    for (size_t i = 0; i < nk; i++) {
        if (!nbv || w->bv[nbv - 1] != (uint32_t)w->key[i]) {
            w->bv[nbv] = (uint32_t)w->key[i];
            w->bc[nbv++] = 0;
        }
        w->bc[nbv - 1]++;
    }
    /* (row, column) pairs of every pixel of A, sorted */
    nk = 0;
    for (size_t i = 0; i < np; i++)
        if (A[i])
            w->key[nk++] = (uint64_t)A[i] << 32 | B[i];
    radix_sort(w->key, w->tmp, nk, 4, w->cnt);
    for (size_t k = 0; k < nbv; k++)
        w->colmax[k] = 0.0;
    /* pass 1: row sizes, IoUs (thresholded) and column maxima; pass 2: rows */
    for (int pass = 0; pass < 2; pass++) {
        size_t nrow = 0, npos = 0;
        size_t i = 0;
        while (i < nk) {
            uint32_t a = (uint32_t)(w->key[i] >> 32);
            size_t e = i, na = 0;
            while (e < nk && (uint32_t)(w->key[e] >> 32) == a)
                e++;
            na = e - i;
            double best = 0.0;
            uint32_t bestb = 0;
            size_t j = i;
            while (j < e) {
                uint32_t b = (uint32_t)w->key[j];
                size_t f = j;
                while (f < e && w->key[f] == w->key[j])
                    f++;
                if (b) {
                    size_t ov = f - j, bi = find_u32(w->bv, nbv, b);
                    double iou = (double)ov / (double)(w->bc[bi] + na - ov);
                    if (iou < thr)
                        iou = 0.0;
                    if (pass == 0) {
                        if (iou > w->colmax[bi])
                            w->colmax[bi] = iou;
                    } else if (!(iou < w->colmax[bi]) && iou > best) {
                        best = iou; /* strictly greater: the first column on ties */
                        bestb = b;
                    }
                }
                j = f;
            }
            if (pass == 1) {
                w->ua[nrow] = a;
                /* a row without a match gets mmax + (rows 1..a without one) */
                if (best > 0.0) {
                    w->lab[nrow] = bestb;
                    npos++;
                } else {
                    w->lab[nrow] = *mmax + (a - (uint32_t)npos);
                }
                nrow++;
            }
            i = e;
        }
        if (pass == 1) {
            if ((uint64_t)*mmax + (ma - npos) > UINT32_MAX)
                return cp_error(CP_ELIMIT, "stitch3d: more than %u labels", UINT32_MAX);
            for (size_t q = 0; q < np; q++)
                if (A[q])
                    A[q] = w->lab[find_u32(w->ua, nrow, A[q])];
            *mmax += ma - (uint32_t)npos;
        }
    }
    return CP_OK;
}

int cp_stitch3d(uint32_t *masks, int Lz, int Ly, int Lx, double stitch_threshold)
{
    size_t nvox;
    int rc = dyn_dims3(Lz, Ly, Lx, "stitch3d", &nvox);
    if (rc != CP_OK)
        return rc;
    if (!masks)
        return cp_error(CP_EINVAL, "stitch3d: NULL masks");
    size_t np = (size_t)Ly * Lx;
    stitch_work w;
    memset(&w, 0, sizeof w);
    w.key = cp_malloc_array(np, sizeof *w.key, "stitch keys");
    w.tmp = cp_malloc_array(np, sizeof *w.tmp, "stitch keys");
    w.bv = cp_malloc_array(np, sizeof *w.bv, "stitch labels");
    w.ua = cp_malloc_array(np, sizeof *w.ua, "stitch labels");
    w.lab = cp_malloc_array(np, sizeof *w.lab, "stitch labels");
    w.bc = cp_malloc_array(np, sizeof *w.bc, "stitch label sizes");
    w.cnt = cp_malloc_array(65537, sizeof *w.cnt, "stitch counts");
    w.colmax = cp_malloc_array(np, sizeof *w.colmax, "stitch IoUs");
    rc = CP_ENOMEM;
    if (!w.key || !w.tmp || !w.bv || !w.ua || !w.lab || !w.bc || !w.cnt || !w.colmax)
        goto done;
    rc = CP_OK;
    uint32_t mmax = plane_max(masks, np);
    int empty = 1; /* no non-empty comparison yet */
    for (int z = 0; z + 1 < Lz && rc == CP_OK; z++) {
        uint32_t *A = masks + (size_t)(z + 1) * np;
        const uint32_t *B = masks + (size_t)z * np;
        uint32_t ma = plane_max(A, np), mb = plane_max(B, np);
        if (ma && mb) {
            rc = stitch_pair(A, B, np, ma, stitch_threshold, &mmax, &w);
            empty = 0;
        } else if (empty) {
            mmax = ma; /* Cellpose's quirk: the plane stays as it is */
        } else {
            if ((uint64_t)mmax + ma > UINT32_MAX) {
                rc = cp_error(CP_ELIMIT, "stitch3d: more than %u labels", UINT32_MAX);
                break;
            }
            for (size_t i = 0; i < np; i++)
                if (A[i])
                    A[i] += mmax;
            mmax += ma;
        }
    }
done:
    free(w.key), free(w.tmp), free(w.bv), free(w.ua), free(w.lab), free(w.bc), free(w.cnt);
    free(w.colmax);
    return rc;
}
