/* Linear assignment by successive shortest augmenting paths (the
 * Jonker-Volgenant / Crouse scheme scipy uses), with Dijkstra over a sparse
 * graph so thousands of cells with a few overlaps each stay cheap. Exact: the
 * potentials keep reduced costs non-negative, each augmentation is a true
 * shortest path, and the result is an optimal assignment. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/measure.h"
#include "core/internal.h"

typedef struct hnode {
    double d;
    uint32_t busy; /* prefer free columns among equal distances, as scipy does */
    uint32_t j;
} hnode;

static int hless(const hnode *a, const hnode *b)
{
    if (a->d != b->d)
        return a->d < b->d;
    if (a->busy != b->busy)
        return a->busy < b->busy;
    return a->j < b->j;
}

static void hpush(hnode *h, size_t *n, hnode x)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!hless(&x, &h[p]))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = x;
}

static hnode hpop(hnode *h, size_t *n)
{
    hnode top = h[0], x = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && hless(&h[c + 1], &h[c]))
            c++;
        if (!hless(&h[c], &x))
            break;
        h[i] = h[c];
        i = c;
    }
    if (*n)
        h[i] = x;
    return top;
}

int cp_assign_sparse(size_t nrows, size_t ncols, const size_t *row_ptr, const uint32_t *cols,
                     const double *cost, int32_t *row_to_col)
{
    if (nrows == 0)
        return CP_OK;
    if (nrows > ncols || ncols > INT32_MAX)
        return cp_error(CP_EINVAL, "assignment: %zu rows cannot each get one of %zu columns", nrows,
                        ncols);
    size_t ne = row_ptr[nrows];
    for (size_t e = 0; e < ne; e++)
        if (!isfinite(cost[e]) || cols[e] >= ncols)
            return cp_error(CP_EINVAL, "assignment: edge %zu has a bad column or cost", e);
    double *c = cp_malloc_array(ne ? ne : 1, sizeof *c, "assignment costs");
    double *u = cp_calloc(nrows, sizeof *u, "assignment");
    double *v = cp_calloc(ncols, sizeof *v, "assignment");
    double *dist = cp_malloc_array(ncols, sizeof *dist, "assignment");
    int32_t *row4col = cp_malloc_array(ncols, sizeof *row4col, "assignment");
    int32_t *pred = cp_malloc_array(ncols, sizeof *pred, "assignment");
    uint8_t *scanned = cp_calloc(ncols, 1, "assignment");
    uint32_t *touched = cp_malloc_array(ncols, sizeof *touched, "assignment");
    uint32_t *sr = cp_malloc_array(nrows, sizeof *sr, "assignment");
    hnode *heap = cp_malloc_array(ne + 1, sizeof *heap, "assignment");
    int rc = CP_OK;
    if (!c || !u || !v || !dist || !row4col || !pred || !scanned || !touched || !sr || !heap) {
        rc = CP_ENOMEM;
        goto done;
    }
    /* Shift every row by its minimum: each row is assigned exactly once, so the
     * optimum is unchanged, and all costs become non-negative. */
    for (size_t r = 0; r < nrows; r++) {
        if (row_ptr[r] == row_ptr[r + 1]) {
            rc = cp_error(CP_EINVAL, "assignment: row %zu has no admissible column", r);
            goto done;
        }
        double mn = INFINITY;
        for (size_t e = row_ptr[r]; e < row_ptr[r + 1]; e++)
            if (cost[e] < mn)
                mn = cost[e];
        for (size_t e = row_ptr[r]; e < row_ptr[r + 1]; e++)
            c[e] = cost[e] - mn;
    }
    for (size_t j = 0; j < ncols; j++) {
        dist[j] = INFINITY;
        row4col[j] = -1;
    }
    for (size_t r = 0; r < nrows; r++)
        row_to_col[r] = -1;

    for (size_t s = 0; s < nrows; s++) {
        size_t nh = 0, nt = 0, nsr = 0;
        sr[nsr++] = (uint32_t)s;
        for (size_t e = row_ptr[s]; e < row_ptr[s + 1]; e++) {
            uint32_t j = cols[e];
            double d = c[e] - u[s] - v[j];
            if (d < dist[j]) {
                if (dist[j] == INFINITY)
                    touched[nt++] = j;
                dist[j] = d;
                pred[j] = (int32_t)s;
                hpush(heap, &nh, (hnode){d, row4col[j] >= 0, j});
            }
        }
        int64_t sink = -1;
        double minval = 0;
        while (nh) {
            hnode x = hpop(heap, &nh);
            uint32_t j = x.j;
            if (scanned[j] || x.d > dist[j])
                continue;
            scanned[j] = 1;
            if (row4col[j] < 0) {
                sink = j;
                minval = x.d;
                break;
            }
            uint32_t i = (uint32_t)row4col[j];
            sr[nsr++] = i;
            for (size_t e = row_ptr[i]; e < row_ptr[i + 1]; e++) {
                uint32_t k = cols[e];
                if (scanned[k])
                    continue;
                double d = x.d + c[e] - u[i] - v[k];
                if (d < dist[k]) {
                    if (dist[k] == INFINITY)
                        touched[nt++] = k;
                    dist[k] = d;
                    pred[k] = (int32_t)i;
                    hpush(heap, &nh, (hnode){d, row4col[k] >= 0, k});
                }
            }
        }
        if (sink < 0) {
            rc = cp_error(CP_EINVAL, "assignment: no complete assignment exists (row %zu)", s);
            goto done;
        }
        /* dual update, as in Crouse's algorithm */
        u[s] += minval;
        for (size_t q = 1; q < nsr; q++) {
            uint32_t i = sr[q];
            u[i] += minval - dist[row_to_col[i]];
        }
        for (size_t q = 0; q < nt; q++) {
            uint32_t j = touched[q];
            if (scanned[j])
                v[j] -= minval - dist[j];
        }
        /* augment along the predecessor chain */
        int32_t j = (int32_t)sink;
        for (;;) {
            int32_t i = pred[j];
            row4col[j] = i;
            int32_t prev = row_to_col[i];
            row_to_col[i] = j;
            j = prev;
            if ((size_t)i == s)
                break;
        }
        for (size_t q = 0; q < nt; q++) {
            dist[touched[q]] = INFINITY;
            scanned[touched[q]] = 0;
        }
    }
done:
    free(c);
    free(u);
    free(v);
    free(dist);
    free(row4col);
    free(pred);
    free(scanned);
    free(touched);
    free(sr);
    free(heap);
    if (rc == CP_ENOMEM)
        return cp_error(CP_ENOMEM, "out of memory in assignment");
    return rc;
}

int cp_linear_sum_assignment(const double *cost, size_t nrows, size_t ncols, size_t *rows,
                             size_t *cols, size_t *npairs)
{
    *npairs = 0;
    if (nrows == 0 || ncols == 0)
        return CP_OK;
    int tr = nrows > ncols;
    size_t R = tr ? ncols : nrows, C = tr ? nrows : ncols, ne;
    if (cp_mul_overflow(R, C, &ne) || ne > UINT32_MAX)
        return cp_error(CP_ELIMIT, "assignment: %zu x %zu matrix is too large", nrows, ncols);
    size_t *ptr = cp_malloc_array(R + 1, sizeof *ptr, "assignment");
    uint32_t *cl = cp_malloc_array(ne, sizeof *cl, "assignment");
    double *cs = cp_malloc_array(ne, sizeof *cs, "assignment");
    int32_t *r2c = cp_malloc_array(R, sizeof *r2c, "assignment");
    int rc = CP_ENOMEM;
    if (ptr && cl && cs && r2c) {
        for (size_t r = 0; r < R; r++) {
            ptr[r] = r * C;
            for (size_t j = 0; j < C; j++) {
                cl[r * C + j] = (uint32_t)j;
                cs[r * C + j] = tr ? cost[j * ncols + r] : cost[r * ncols + j];
            }
        }
        ptr[R] = ne;
        rc = cp_assign_sparse(R, C, ptr, cl, cs, r2c);
        if (!rc) {
            if (!tr) {
                for (size_t r = 0; r < R; r++) {
                    rows[r] = r;
                    cols[r] = (size_t)r2c[r];
                }
            } else {
                /* report in increasing original row order */
                size_t k = 0;
                int32_t *inv = cp_malloc_array(C, sizeof *inv, "assignment");
                if (!inv) {
                    rc = CP_ENOMEM;
                } else {
                    for (size_t j = 0; j < C; j++)
                        inv[j] = -1;
                    for (size_t r = 0; r < R; r++)
                        inv[r2c[r]] = (int32_t)r;
                    for (size_t j = 0; j < C; j++)
                        if (inv[j] >= 0) {
                            rows[k] = j;
                            cols[k] = (size_t)inv[j];
                            k++;
                        }
                    free(inv);
                }
            }
            if (!rc)
                *npairs = R;
        }
    }
    free(ptr);
    free(cl);
    free(cs);
    free(r2c);
    if (rc == CP_ENOMEM)
        return cp_error(CP_ENOMEM, "out of memory in assignment");
    return rc;
}
