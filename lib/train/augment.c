/* Random flips, rotations, scalings and crops of training samples (Cellpose's
 * random_rotate_and_resize), with our own deterministic generator. */
#include <math.h>
#include <string.h>

#include "cellpose/train.h"

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void cp_xoshiro_seed(cp_xoshiro *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t cp_xoshiro_next(cp_xoshiro *r)
{
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

double cp_xoshiro_uniform(cp_xoshiro *r) { return (double)(cp_xoshiro_next(r) >> 11) * 0x1.0p-53; }

void cp_augment_draw(cp_xoshiro *r, int h, int w, int bsize, double scale_range, double rescale, cp_augment *a)
{
    a->flip = cp_xoshiro_uniform(r) > 0.5;
    a->theta = cp_xoshiro_uniform(r) * 2.0 * M_PI;
    double u = cp_xoshiro_uniform(r);
    if (scale_range >= 0) {
        a->scale = (1.0 - scale_range / 2.0) + scale_range * u;
    } else {
        /* symmetric in log scale: shrink or enlarge by 1..m with equal odds
         * (no libm, whose last bit may differ between CPUs) */
        double s = 1.0 + (-scale_range - 1.0) * fabs(2.0 * u - 1.0);
        a->scale = u < 0.5 ? 1.0 / s : s;
    }
    if (rescale > 0)
        a->scale /= rescale;
    double ex = w * a->scale - bsize, ey = h * a->scale - bsize;
    a->dx = (cp_xoshiro_uniform(r) - 0.5) * (ex > 0 ? ex : 0);
    a->dy = (cp_xoshiro_uniform(r) - 0.5) * (ey > 0 ? ey : 0);
}

/* Bilinear sample of plane p (h x w) at (x, y); neighbours outside are 0. */
static float bilinear(const float *p, int h, int w, double x, double y)
{
    double fx = floor(x), fy = floor(y);
    int x0 = (int)fx, y0 = (int)fy;
    double ax = x - fx, ay = y - fy;
    double v = 0;
    for (int j = 0; j < 2; j++) {
        int yy = y0 + j;
        if (yy < 0 || yy >= h)
            continue;
        double wy = j ? ay : 1 - ay;
        for (int i = 0; i < 2; i++) {
            int xx = x0 + i;
            if (xx < 0 || xx >= w)
                continue;
            v += wy * (i ? ax : 1 - ax) * p[(size_t)yy * w + xx];
        }
    }
    return (float)v;
}

void cp_augment_apply(const cp_augment *a, const float *x, int nchan, const float *lbl, int h, int w,
                      int bsize, float *xo, float *lo)
{
    /* Output pixel p comes from input cc + R^T (p - cc1) / scale, with the
     * crop centre cc1 placing the scaled image's centre in the tile. */
    double ccx = w / 2.0, ccy = h / 2.0;
    double c1x = ccx - (w - bsize) / 2.0 + a->dx, c1y = ccy - (h - bsize) / 2.0 + a->dy;
    double c = cos(a->theta), s = sin(a->theta);
    size_t n = (size_t)h * w, m = (size_t)bsize * bsize;
    for (int yo = 0; yo < bsize; yo++)
        for (int xo_ = 0; xo_ < bsize; xo_++) {
            double px = (xo_ - c1x) / a->scale, py = (yo - c1y) / a->scale;
            double sx = ccx + c * px + s * py, sy = ccy - s * px + c * py;
            if (a->flip)  /* the image was mirrored first: read the mirrored column */
                sx = (w - 1) - sx;
            size_t o = (size_t)yo * bsize + xo_;
            for (int k = 0; k < nchan; k++)
                xo[k * m + o] = bilinear(x + k * n, h, w, sx, sy);
            if (!lbl)
                continue;
            long nx = lround(sx), ny = lround(sy);
            lo[o] = nx >= 0 && nx < w && ny >= 0 && ny < h ? lbl[(size_t)ny * w + nx] : 0.0f;
            double vy = bilinear(lbl + n, h, w, sx, sy), vx = bilinear(lbl + 2 * n, h, w, sx, sy);
            if (a->flip)
                vx = -vx;
            lo[m + o] = (float)(s * vx + c * vy);
            lo[2 * m + o] = (float)(c * vx - s * vy);
        }
}
