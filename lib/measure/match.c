/* Segmentation quality against ground truth, as cellpose.metrics computes it:
 * overlap matrix, IoU, optimal one-to-one matching at IoU thresholds, AP, and
 * the aggregated Jaccard index. Only overlapping pairs are stored: a pair
 * that does not overlap has IoU 0 and cost 0 in Cellpose's matching, which is
 * what leaving a mask unassigned costs here (a private zero-cost column per
 * true mask), so the optimum is the same as on the dense matrix. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/measure.h"
#include "core/internal.h"
#include "measure/measure_internal.h"

typedef struct overlap {
    label_index ti, pi;
    int64_t *tarea, *parea;     /* pixels per label index */
    size_t np;                  /* overlapping pairs, sorted by (true, pred) index */
    uint32_t *pt, *pp;
    int64_t *pn;
    int64_t union_fg;           /* pixels foreground in truth or pred */
} overlap;

static void overlap_free(overlap *o)
{
    label_index_free(&o->ti);
    label_index_free(&o->pi);
    free(o->tarea);
    free(o->parea);
    free(o->pt);
    free(o->pp);
    free(o->pn);
}

typedef struct pairmap {
    uint64_t *key; /* (t << 32 | p) + 1, 0 = empty */
    int64_t *cnt;
    size_t cap, n;
} pairmap;

static size_t hash64(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return (size_t)k;
}

static int pairmap_add(pairmap *m, uint64_t key, int64_t n)
{
    if (2 * (m->n + 1) > m->cap) {
        size_t nc = m->cap ? 2 * m->cap : 1024;
        uint64_t *k = cp_calloc(nc, sizeof *k, "overlap pairs");
        int64_t *c = cp_malloc_array(nc, sizeof *c, "overlap pairs");
        if (!k || !c) {
            free(k);
            free(c);
            return CP_ENOMEM;
        }
        for (size_t i = 0; i < m->cap; i++)
            if (m->key[i]) {
                size_t h = hash64(m->key[i]) & (nc - 1);
                while (k[h])
                    h = (h + 1) & (nc - 1);
                k[h] = m->key[i];
                c[h] = m->cnt[i];
            }
        free(m->key);
        free(m->cnt);
        m->key = k;
        m->cnt = c;
        m->cap = nc;
    }
    key += 1;
    size_t h = hash64(key) & (m->cap - 1);
    while (m->key[h] && m->key[h] != key)
        h = (h + 1) & (m->cap - 1);
    if (!m->key[h]) {
        m->key[h] = key;
        m->cnt[h] = 0;
        m->n++;
    }
    m->cnt[h] += n;
    return CP_OK;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static int overlap_build(const uint32_t *t, const uint32_t *p, size_t npix, overlap *o)
{
    memset(o, 0, sizeof *o);
    int rc = label_index_build(t, npix, &o->ti);
    if (!rc)
        rc = label_index_build(p, npix, &o->pi);
    if (rc)
        return rc;
    o->tarea = cp_calloc(o->ti.n + 1, sizeof *o->tarea, "overlap");
    o->parea = cp_calloc(o->pi.n + 1, sizeof *o->parea, "overlap");
    if (!o->tarea || !o->parea)
        return CP_ENOMEM;
    pairmap m = {0};
    for (size_t i = 0; i < npix;) {
        uint32_t a = t[i], b = p[i];
        size_t e = i + 1;
        while (e < npix && t[e] == a && p[e] == b)
            e++;
        int64_t run = (int64_t)(e - i);
        size_t ia = a ? label_index_of(&o->ti, a) : SIZE_MAX;
        size_t ib = b ? label_index_of(&o->pi, b) : SIZE_MAX;
        if (a)
            o->tarea[ia] += run;
        if (b)
            o->parea[ib] += run;
        if (a || b)
            o->union_fg += run;
        if (a && b && (rc = pairmap_add(&m, ((uint64_t)ia << 32) | ib, run)))
            break;
        i = e;
    }
    if (!rc && m.n) {
        uint64_t *keys = cp_malloc_array(m.n, 2 * sizeof *keys, "overlap");
        o->pt = cp_malloc_array(m.n, sizeof *o->pt, "overlap");
        o->pp = cp_malloc_array(m.n, sizeof *o->pp, "overlap");
        o->pn = cp_malloc_array(m.n, sizeof *o->pn, "overlap");
        if (!keys || !o->pt || !o->pp || !o->pn) {
            rc = CP_ENOMEM;
        } else {
            size_t k = 0;
            for (size_t i = 0; i < m.cap; i++)
                if (m.key[i]) {
                    keys[2 * k] = m.key[i] - 1;
                    keys[2 * k + 1] = (uint64_t)m.cnt[i];
                    k++;
                }
            qsort(keys, m.n, 2 * sizeof *keys, cmp_u64);
            for (size_t i = 0; i < m.n; i++) {
                o->pt[i] = (uint32_t)(keys[2 * i] >> 32);
                o->pp[i] = (uint32_t)(keys[2 * i] & 0xffffffffu);
                o->pn[i] = (int64_t)keys[2 * i + 1];
            }
            o->np = m.n;
        }
        free(keys);
    }
    free(m.key);
    free(m.cnt);
    return rc;
}

/* Cellpose's IoU for an overlapping pair. */
static double pair_iou(const overlap *o, size_t k)
{
    int64_t n = o->pn[k];
    return (double)n / (double)(o->tarea[o->pt[k]] + o->parea[o->pp[k]] - n);
}

/* Optimal matching at threshold th with Cellpose's cost
 * -[iou >= th] - iou / (2 n_min); row_to_pair[t] = pair index or -1. */
static int match_at(const overlap *o, double th, double n_min, int64_t *row_to_pair)
{
    size_t nt = o->ti.n, npred = o->pi.n, ne = o->np + nt;
    size_t *ptr = cp_malloc_array(nt + 1, sizeof *ptr, "matching");
    uint32_t *cols = cp_malloc_array(ne, sizeof *cols, "matching");
    double *cost = cp_malloc_array(ne, sizeof *cost, "matching");
    int64_t *epair = cp_malloc_array(ne, sizeof *epair, "matching");
    int32_t *r2c = cp_malloc_array(nt, sizeof *r2c, "matching");
    int rc = CP_ENOMEM;
    if (ptr && cols && cost && epair && r2c) {
        size_t e = 0, k = 0;
        for (size_t r = 0; r < nt; r++) {
            ptr[r] = e;
            for (; k < o->np && o->pt[k] == r; k++) {
                double iou = pair_iou(o, k);
                cols[e] = o->pp[k];
                cost[e] = -(double)(iou >= th) - iou / (2 * n_min);
                epair[e] = (int64_t)k;
                e++;
            }
            cols[e] = (uint32_t)(npred + r); /* unmatched */
            cost[e] = 0;
            epair[e] = -1;
            e++;
        }
        ptr[nt] = e;
        rc = cp_assign_sparse(nt, npred + nt, ptr, cols, cost, r2c);
        if (!rc)
            for (size_t r = 0; r < nt; r++) {
                int64_t pr = -1;
                for (size_t q = ptr[r]; q < ptr[r + 1]; q++)
                    if (cols[q] == (uint32_t)r2c[r])
                        pr = epair[q];
                row_to_pair[r] = pr;
            }
    }
    free(ptr);
    free(cols);
    free(cost);
    free(epair);
    free(r2c);
    if (rc == CP_ENOMEM)
        return cp_error(CP_ENOMEM, "out of memory matching masks");
    return rc;
}

static double ratio(double a, double b) { return a / b; /* 0/0 = NaN on purpose */ }

void cp_match_finish(cp_match_result *r)
{
    for (int k = 0; k < r->n_thresholds; k++) {
        double tp = (double)r->tp[k], fp = (double)r->fp[k], fn = (double)r->fn[k];
        r->ap[k] = ratio(tp, tp + fp + fn);
        r->precision[k] = ratio(tp, tp + fp);
        r->recall[k] = ratio(tp, tp + fn);
        r->f1[k] = ratio(2 * tp, 2 * tp + fp + fn);
        r->mean_iou[k] = ratio(r->iou_sum[k], tp);
    }
    r->aji = ratio((double)r->aji_intersection, (double)r->aji_union);
}

int cp_match(const uint32_t *truth, const uint32_t *pred, int height, int width,
             const cp_match_opts *opts, cp_match_result *out)
{
    static const double defth[3] = {0.5, 0.75, 0.9};
    memset(out, 0, sizeof *out);
    const double *th = opts && opts->thresholds ? opts->thresholds : defth;
    int nth = opts && opts->thresholds ? opts->n_thresholds : 3;
    if (nth < 1 || nth > CP_MATCH_MAX_THRESHOLDS)
        return cp_error(CP_EINVAL, "matching: %d thresholds (1 to %d allowed)", nth,
                        CP_MATCH_MAX_THRESHOLDS);
    if (!truth || !pred || height <= 0 || width <= 0)
        return cp_error(CP_EINVAL, "matching: empty image");
    overlap o;
    int rc = overlap_build(truth, pred, (size_t)height * width, &o);
    int64_t *r2p = NULL;
    if (!rc && !(r2p = cp_malloc_array(o.ti.n + 1, sizeof *r2p, "matching")))
        rc = CP_ENOMEM;
    if (rc) {
        overlap_free(&o);
        free(r2p);
        return rc == CP_ENOMEM ? cp_error(CP_ENOMEM, "out of memory matching masks") : rc;
    }
    out->n_thresholds = nth;
    int v3 = opts && opts->v3_counts;
    out->n_true = v3 ? (int64_t)o.ti.max_label : (int64_t)o.ti.n;
    out->n_pred = v3 ? (int64_t)o.pi.max_label : (int64_t)o.pi.n;
    /* n_min follows the shape of Cellpose's IoU matrix (labels up to the max) */
    double n_min = (double)(o.ti.max_label < o.pi.max_label ? o.ti.max_label : o.pi.max_label);
    for (int k = 0; k <= nth && !rc; k++) {
        double t = k < nth ? th[k] : 0.5; /* the extra round is the AJI's matching */
        if (k < nth)
            out->thresholds[k] = t;
        if (o.pi.n == 0 || o.ti.n == 0)
            continue;
        rc = match_at(&o, t, n_min, r2p);
        if (rc)
            break;
        for (size_t r = 0; r < o.ti.n; r++) {
            if (r2p[r] < 0)
                continue;
            double iou = pair_iou(&o, (size_t)r2p[r]);
            if (k < nth) {
                if (iou >= t) {
                    out->tp[k]++;
                    out->iou_sum[k] += iou;
                }
            } else {
                out->aji_intersection += o.pn[r2p[r]];
            }
        }
    }
    out->aji_union = o.union_fg;
    for (int k = 0; k < nth; k++) {
        out->fp[k] = out->n_pred - out->tp[k];
        out->fn[k] = out->n_true - out->tp[k];
    }
    cp_match_finish(out);
    overlap_free(&o);
    free(r2p);
    return rc;
}
