/* get_masks (spec 5.3): histogram of final positions, seeds at 5x5 maxima
 * with count > 10, torch-ordered seed growth in 11x11 windows, big-mask
 * removal and first-appearance renumbering. */
#include <stdlib.h>
#include <string.h>

#include "cellpose/dynamics.h"
#include "core/internal.h"
#include "dynamics/internal.h"

#define RPAD 20

uint32_t dyn_max_label(const uint32_t *labels, size_t npix)
{
    uint32_t m = 0;
    for (size_t i = 0; i < npix; i++)
        if (labels[i] > m)
            m = labels[i];
    return m;
}

dyn_bbox *dyn_bboxes(const uint32_t *labels, int Ly, int Lx, uint32_t nlab)
{
    dyn_bbox *b = cp_calloc((size_t)nlab + 1, sizeof *b, "label boxes");
    if (!b)
        return NULL;
    for (int y = 0; y < Ly; y++) {
        const uint32_t *row = labels + (size_t)y * Lx;
        for (int x = 0; x < Lx; x++) {
            uint32_t l = row[x];
            if (!l || l > nlab)
                continue;
            dyn_bbox *q = b + l;
            if (q->npix == 0) {
                q->r0 = y;
                q->r1 = y + 1;
                q->c0 = x;
                q->c1 = x + 1;
            } else {
                if (y + 1 > q->r1)
                    q->r1 = y + 1;
                if (x < q->c0)
                    q->c0 = x;
                if (x + 1 > q->c1)
                    q->c1 = x + 1;
            }
            q->npix++;
        }
    }
    return b;
}

int cp_dyn_renumber(uint32_t *labels, size_t npix, uint32_t *nlabels)
{
    uint32_t maxl = dyn_max_label(labels, npix);
    uint32_t *map = cp_calloc((size_t)maxl + 1, sizeof *map, "renumber map");
    if (!map)
        return CP_ENOMEM;
    uint32_t next = 0;
    for (size_t i = 0; i < npix; i++) {
        uint32_t l = labels[i];
        if (!l)
            continue;
        if (!map[l])
            map[l] = ++next;
        labels[i] = map[l];
    }
    free(map);
    if (nlabels)
        *nlabels = next;
    return CP_OK;
}

/* Grow one seed inside its 11x11 window: 5 rounds of 3x3 dilation (window
 * edges clipped), each followed by keeping only bins with h > 2; write label
 * into M over the grown region. */
static void grow_seed(const int32_t *h, int W, uint32_t center, uint32_t label, uint32_t *M)
{
    int cy = (int)(center / (uint32_t)W), cx = (int)(center % (uint32_t)W);
    unsigned char ok[11][11], cur[11][11], nxt[11][11];
    for (int dy = 0; dy < 11; dy++)
        for (int dx = 0; dx < 11; dx++)
            ok[dy][dx] = h[(size_t)(cy + dy - 5) * W + (cx + dx - 5)] > 2;
    memset(cur, 0, sizeof cur);
    cur[5][5] = 1;
    for (int it = 0; it < 5; it++) {
        for (int y = 0; y < 11; y++) {
            for (int x = 0; x < 11; x++) {
                unsigned char v = 0;
                for (int yy = y - 1; yy <= y + 1 && !v; yy++) {
                    if (yy < 0 || yy > 10)
                        continue;
                    for (int xx = x - 1; xx <= x + 1; xx++)
                        if (xx >= 0 && xx <= 10 && cur[yy][xx]) {
                            v = 1;
                            break;
                        }
                }
                nxt[y][x] = v && ok[y][x];
            }
        }
        memcpy(cur, nxt, sizeof cur);
    }
    for (int dy = 0; dy < 11; dy++)
        for (int dx = 0; dx < 11; dx++)
            if (cur[dy][dx])
                M[(size_t)(cy + dy - 5) * W + (cx + dx - 5)] = label;
}

int cp_dyn_get_masks(const float *p, const float *cellprob, int Ly, int Lx, float threshold,
                     double max_size_fraction, uint32_t *labels, int *nlabels, int *nseeds)
{
    if (Ly <= 0 || Lx <= 0)
        return cp_error(CP_EINVAL, "get_masks: bad image size %dx%d", Lx, Ly);
    size_t npix = (size_t)Ly * Lx;
    memset(labels, 0, npix * sizeof *labels);
    if (nlabels)
        *nlabels = 0;
    if (nseeds)
        *nseeds = 0;
    size_t n = cp_dyn_count_followed(cellprob, npix, threshold);
    if (n == 0)
        return CP_OK;
    int H = Ly + 2 * RPAD, W = Lx + 2 * RPAD;
    size_t nb = (size_t)H * W;
    int32_t *h = cp_calloc(nb, sizeof *h, "position histogram");
    uint32_t *bin = cp_malloc_array(n, sizeof *bin, "position bins");
    uint32_t *M = NULL;
    dyn_seed *seeds = NULL;
    int rc = CP_ENOMEM;
    if (!h || !bin)
        goto done;
    const float *py = p, *px = p + n;
    for (size_t j = 0; j < n; j++) {
        int yb = (int)py[j] + RPAD, xb = (int)px[j] + RPAD;
        yb = yb < 0 ? 0 : (yb > H - RPAD - 1 ? H - RPAD - 1 : yb);
        xb = xb < 0 ? 0 : (xb > W - RPAD - 1 ? W - RPAD - 1 : xb);
        bin[j] = (uint32_t)yb * (uint32_t)W + (uint32_t)xb;
        h[bin[j]]++;
    }
    /* Seeds in raster order: bins equal to their 5x5 maximum with count > 10.
     * Such bins lie at least RPAD - 1 bins from the edge, so windows fit. */
    size_t ns = 0, cap = 0;
    for (int y = 0; y < H; y++) {
        for (int x = 0; x < W; x++) {
            int32_t v = h[(size_t)y * W + x];
            if (v <= 10)
                continue;
            int ismax = 1;
            for (int yy = y - 2; yy <= y + 2 && ismax; yy++) {
                if (yy < 0 || yy >= H)
                    continue;
                for (int xx = x - 2; xx <= x + 2; xx++)
                    if (xx >= 0 && xx < W && h[(size_t)yy * W + xx] > v) {
                        ismax = 0;
                        break;
                    }
            }
            if (!ismax)
                continue;
            if (ns == cap) {
                cap = cap ? 2 * cap : 256;
                dyn_seed *s2 = realloc(seeds, cap * sizeof *seeds);
                if (!s2) {
                    cp_error(CP_ENOMEM, "out of memory: seeds");
                    goto done;
                }
                seeds = s2;
            }
            seeds[ns].count = v;
            seeds[ns].index = (uint32_t)((size_t)y * W + x);
            ns++;
        }
    }
    if (nseeds)
        *nseeds = (int)ns;
    if (ns == 0) {
        rc = CP_OK;
        goto done;
    }
    dyn_stdsort_seeds(seeds, ns);
    M = cp_calloc(nb, sizeof *M, "seed label grid");
    if (!M)
        goto done;
    for (size_t k = 0; k < ns; k++)
        grow_seed(h, W, seeds[k].index, (uint32_t)(k + 1), M);

    {
        size_t k = 0;
        for (size_t i = 0; i < npix; i++)
            if (cellprob[i] > threshold)
                labels[i] = M[bin[k++]];
    }
    /* Remove masks (and harmlessly label 0) larger than the fraction. */
    size_t *cnt = cp_calloc(ns + 1, sizeof *cnt, "mask sizes");
    if (!cnt)
        goto done;
    for (size_t i = 0; i < npix; i++)
        cnt[labels[i]]++;
    double big = (double)npix * max_size_fraction;
    int anybig = 0;
    for (size_t l = 1; l <= ns; l++)
        if ((double)cnt[l] > big) {
            cnt[l] = (size_t)-1;
            anybig = 1;
        }
    if (anybig)
        for (size_t i = 0; i < npix; i++)
            if (cnt[labels[i]] == (size_t)-1)
                labels[i] = 0;
    free(cnt);
    uint32_t K = 0;
    rc = cp_dyn_renumber(labels, npix, &K);
    if (rc == CP_OK && nlabels)
        *nlabels = (int)K;
done:
    free(h);
    free(bin);
    free(M);
    free(seeds);
    return rc;
}
