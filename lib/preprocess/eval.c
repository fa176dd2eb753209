/* The image -> flows pipeline (spec 4.1-4.8): channels, normalise, resize,
 * pad, tiles in batches through a forward function, taper-mask blending,
 * crop, resize back. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/core.h"
#include "cellpose/preprocess.h"
#include "core/internal.h"

void cp_eval_params_init(cp_eval_params *p)
{
    memset(p, 0, sizeof *p);
    p->normalize = 1;
    p->norm_lower = 1.0;
    p->norm_upper = 99.0;
    p->tile_overlap = 0.1;
    p->batch_size = 8;
    p->anisotropy = 1.0;
}

void cp_flows_free(cp_flows *f)
{
    if (!f)
        return;
    free(f->data);
    free(f->style);
    free(f);
}

void cp_eval_debug_free(cp_eval_debug *d)
{
    if (!d)
        return;
    cp_planes_free(d->net_in);
    cp_planes_free(d->padded);
    cp_planes_free(d->net_out);
    free(d->tiles_in);
    free(d->tiles_out);
    cp_tiling_free(&d->tiling);
    d->net_in = d->padded = d->net_out = NULL;
    d->tiles_in = d->tiles_out = NULL;
    d->ntiles_kept = 0;
}

static int clone_planes(const cp_planes *p, cp_planes **out)
{
    int rc = cp_planes_create(out, p->channels, p->height, p->width);
    if (rc)
        return rc;
    memcpy((*out)->data, p->data, (size_t)p->channels * p->height * p->width * sizeof(float));
    return CP_OK;
}

static int pad_image(const cp_planes *in, cp_arch arch, int bsize, int py[2], int px[2],
                     cp_planes **out)
{
    cp_pad_amounts(in->height, arch, bsize, &py[0], &py[1]);
    cp_pad_amounts(in->width, arch, bsize, &px[0], &px[1]);
    int rc = cp_planes_create(out, in->channels, in->height + py[0] + py[1],
                              in->width + px[0] + px[1]);
    if (rc)
        return rc;
    cp_planes *o = *out;
    for (int c = 0; c < in->channels; c++)
        for (int y = 0; y < in->height; y++)
            memcpy(o->data + ((size_t)c * o->height + y + py[0]) * o->width + px[0],
                   in->data + ((size_t)c * in->height + y) * in->width,
                   (size_t)in->width * sizeof(float));
    return CP_OK;
}

/* Tile (jy, jx) of the padded image (zeros beyond it), flipped for
 * augmentation: even row & odd column -> up-down, odd row & even column ->
 * left-right, both odd -> both. */
static void gather_tile(const cp_planes *P, const cp_tiling *t, int jy, int jx, float *dst)
{
    int ys = t->ystart[jy], xs = t->xstart[jx];
    int flip_rows = t->augment && ((jy % 2 == 0 && jx % 2 == 1) || (jy % 2 == 1 && jx % 2 == 1));
    int flip_cols = t->augment && ((jy % 2 == 1 && jx % 2 == 0) || (jy % 2 == 1 && jx % 2 == 1));
    size_t tn = (size_t)t->ty * t->tx;
    for (int c = 0; c < P->channels; c++) {
        const float *src = P->data + (size_t)c * P->height * P->width;
        float *d = dst + c * tn;
        for (int a = 0; a < t->ty; a++) {
            int y = ys + (flip_rows ? t->ty - 1 - a : a);
            float *row = d + (size_t)a * t->tx;
            if (y >= P->height) {
                memset(row, 0, (size_t)t->tx * sizeof(float));
                continue;
            }
            for (int b = 0; b < t->tx; b++) {
                int x = xs + (flip_cols ? t->tx - 1 - b : b);
                row[b] = x < P->width ? src[(size_t)y * P->width + x] : 0.f;
            }
        }
    }
}

/* Undo the augmentation flips on one output tile and negate the flow
 * component along each flipped axis (dY for rows, dX for columns). */
static void unaugment_tile(const cp_tiling *t, int jy, int jx, int nout, float *o, float *tmp)
{
    int flip_rows = (jy % 2 == 0 && jx % 2 == 1) || (jy % 2 == 1 && jx % 2 == 1);
    int flip_cols = (jy % 2 == 1 && jx % 2 == 0) || (jy % 2 == 1 && jx % 2 == 1);
    if (!flip_rows && !flip_cols)
        return;
    size_t tn = (size_t)t->ty * t->tx;
    for (int c = 0; c < nout; c++) {
        float *p = o + c * tn;
        memcpy(tmp, p, tn * sizeof(float));
        for (int a = 0; a < t->ty; a++)
            for (int b = 0; b < t->tx; b++) {
                int sa = flip_rows ? t->ty - 1 - a : a, sb = flip_cols ? t->tx - 1 - b : b;
                p[(size_t)a * t->tx + b] = tmp[(size_t)sa * t->tx + sb];
            }
        if ((c == 0 && flip_rows) || (c == 1 && flip_cols))
            for (size_t i = 0; i < tn; i++)
                p[i] = -p[i];
    }
}

/* acc += y * M in float64, stored back as float32 (numpy's float32 += float64). */
static void accumulate_tile(float *acc, int H, int W, const cp_tiling *t, int jy, int jx,
                            const float *o, const double *my, const double *mx)
{
    int ys = t->ystart[jy], xs = t->xstart[jx];
    size_t tn = (size_t)t->ty * t->tx, an = (size_t)H * W;
    int rows = 3 * t->ty;
    (void)H;
    for (int r = 0; r < rows; r++) {
        int c = r / t->ty, a = r % t->ty;
        float *dst = acc + c * an + (size_t)(ys + a) * W + xs;
        const float *src = o + c * tn + (size_t)a * t->tx;
        double ma = my[a];
        for (int b = 0; b < t->tx; b++) {
            double m = ma * mx[b];
            dst[b] = (float)((double)dst[b] + (double)src[b] * m);
        }
    }
}

/* Per axis, the tiles covering each position, in tile order. */
typedef struct cover {
    int *first, *count;
} cover;

static int make_cover(const int *starts, int n, int tlen, int len, cover *cv)
{
    cv->first = cp_malloc_array((size_t)len, sizeof(int), "tile cover");
    cv->count = cp_calloc((size_t)len, sizeof(int), "tile cover");
    if (!cv->first || !cv->count)
        return CP_ENOMEM;
    for (int i = 0; i < len; i++)
        cv->first[i] = -1;
    /* starts are non-decreasing, so the covering tiles are contiguous */
    for (int k = 0; k < n; k++)
        for (int i = starts[k]; i < starts[k] + tlen && i < len; i++) {
            if (cv->first[i] < 0)
                cv->first[i] = k;
            cv->count[i]++;
        }
    return CP_OK;
}

static void free_cover(cover *cv)
{
    free(cv->first);
    free(cv->count);
}

/* Divide the sums by the mask sums (accumulated per pixel in tile order, as
 * Cellpose's float64 Navg array would be) and crop the padding, in place:
 * the result is packed at the start of acc (oh x ow per channel). Channel by
 * channel and row by row, every write lands at or before the position it
 * reads and before every later read, so nothing unread is overwritten. */
static void finish_blend(float *acc, int H, int W, const cp_tiling *t, const cover *cy,
                         const cover *cx, const double *my, const double *mx, int y0, int x0,
                         int oh, int ow, double *navg)
{
    size_t an = (size_t)H * W, on = (size_t)oh * ow;
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < oh; y++) {
            int yy = y + y0;
            for (int x = 0; x < ow; x++) {
                int xx = x + x0;
                double s = 0.0;
                for (int ky = cy->first[yy]; ky < cy->first[yy] + cy->count[yy]; ky++) {
                    double ma = my[yy - t->ystart[ky]];
                    for (int kx = cx->first[xx]; kx < cx->first[xx] + cx->count[xx]; kx++)
                        s += ma * mx[xx - t->xstart[kx]];
                }
                navg[x] = s;
            }
            const float *src = acc + c * an + (size_t)yy * W + x0;
            float *dst = acc + c * on + (size_t)y * ow;
            for (int x = 0; x < ow; x++)
                dst[x] = (float)((double)src[x] / navg[x]);
        }
}

/* Cellpose's run_net: stylei /= (stylei**2).sum()**0.5, all float32. */
static void normalize_style(float *s, int n, float *sq)
{
    for (int c = 0; c < n; c++)
        sq[c] = s[c] * s[c];
    float norm = powf(cp_np_sum_f32(sq, (size_t)n), 0.5f);
    for (int c = 0; c < n; c++)
        s[c] /= norm;
}

/* The tiles of np padded planes of the same size through the network, in
 * Cellpose's order: tile k of the run is tile k % ntiles of plane k / ntiles,
 * batch after batch; each output accumulates into its plane's acc[i]. */
static int run_tiles(const cp_net_desc *net, cp_planes *const *P, int np, const cp_tiling *t,
                     int batch, float *const *acc, float *style, cp_eval_debug *dbg)
{
    int ntiles = t->ny * t->nx, total = np * ntiles;
    size_t tn = (size_t)t->ty * t->tx;
    int C = P[0]->channels, nout = net->nout;
    size_t in_sz = (size_t)C * tn, out_sz = (size_t)nout * tn;
    if (batch > total)
        batch = total;
    float *bin = cp_malloc_array((size_t)batch * in_sz, sizeof(float), "tile batch");
    float *bout = cp_malloc_array((size_t)batch * out_sz, sizeof(float), "tile batch");
    float *tmp = cp_malloc_array(tn, sizeof(float), "tile");
    double *my = cp_malloc_array((size_t)t->ty, sizeof(double), "taper");
    double *mx = cp_malloc_array((size_t)t->tx, sizeof(double), "taper");
    int ns = style ? net->nstyle : 0;
    float *bstyle = style ? cp_malloc_array((size_t)batch * ns, sizeof(float), "tile styles") : NULL;
    int rc = CP_OK;
    if (!bin || !bout || !tmp || !my || !mx || (style && !bstyle)) {
        rc = CP_ENOMEM;
        goto done;
    }
    cp_taper_1d(t->ty, t->tx, t->ty, my);
    cp_taper_1d(t->ty, t->tx, t->tx, mx);
    int keep = dbg ? dbg->keep_tiles : 0;
    if (keep > total)
        keep = total;
    if (keep > 0) {
        dbg->tiles_in = cp_malloc_array((size_t)keep * in_sz, sizeof(float), "debug tiles");
        dbg->tiles_out = cp_malloc_array((size_t)keep * out_sz, sizeof(float), "debug tiles");
        if (!dbg->tiles_in || !dbg->tiles_out) {
            rc = CP_ENOMEM;
            goto done;
        }
        dbg->ntiles_kept = keep;
    }
    for (int k0 = 0; k0 < total; k0 += batch) {
        int n = total - k0 < batch ? total - k0 : batch;
        for (int i = 0; i < n; i++) {
            int k = (k0 + i) % ntiles;
            gather_tile(P[(k0 + i) / ntiles], t, k / t->nx, k % t->nx, bin + i * in_sz);
        }
        rc = style ? net->forward_style(net->ctx, bin, n, t->ty, t->tx, bout, bstyle)
                   : net->forward(net->ctx, bin, n, t->ty, t->tx, bout);
        if (rc) {
            if (!*cp_errmsg())
                cp_error(rc, "network forward pass failed");
            goto done;
        }
        for (int i = 0; i < n; i++) {
            int k = (k0 + i) % ntiles, jy = k / t->nx, jx = k % t->nx;
            float *o = bout + i * out_sz;
            if (k0 + i < keep) {
                memcpy(dbg->tiles_in + (k0 + i) * in_sz, bin + i * in_sz, in_sz * sizeof(float));
                memcpy(dbg->tiles_out + (k0 + i) * out_sz, o, out_sz * sizeof(float));
            }
            for (int c = 0; c < ns; c++) /* float32, in tile order, as numpy's sum(axis=0) */
                style[c] += bstyle[(size_t)i * ns + c];
            if (t->augment)
                unaugment_tile(t, jy, jx, nout, o, tmp);
            accumulate_tile(acc[(k0 + i) / ntiles], t->height, t->width, t, jy, jx, o, my, mx);
        }
    }
    if (style)
        normalize_style(style, ns, bstyle);
done:
    free(bin);
    free(bout);
    free(tmp);
    free(my);
    free(mx);
    free(bstyle);
    return rc;
}

/* Stitch the tiles of the np padded planes P[i] into their cropped network
 * outputs out[i] (3 x out_h x out_w each). The P[i] are freed as soon as the
 * tiles are done unless keep is set. */
static int stitch(const cp_net_desc *net, cp_planes **P, int np, const cp_tiling *t, int batch, int py0,
                  int px0, int out_h, int out_w, int keep, float *style, float *const *out,
                  cp_eval_debug *dbg)
{
    size_t an;
    if (cp_mul_overflow((size_t)t->height * t->width, 3, &an))
        return cp_error(CP_ELIMIT, "image too large");
    float **acc = cp_calloc((size_t)np, sizeof *acc, "flow accumulators");
    if (!acc)
        return CP_ENOMEM;
    cover cy = {0}, cx = {0};
    double *my = NULL, *mx = NULL, *navg = NULL;
    int rc = CP_OK;
    for (int i = 0; i < np && rc == CP_OK; i++)
        if (!(acc[i] = cp_calloc(an, sizeof(float), "flow accumulator")))
            rc = CP_ENOMEM;
    if (rc || (rc = run_tiles(net, P, np, t, batch, acc, style, dbg)))
        goto done;
    if (!keep)
        for (int i = 0; i < np; i++) {
            cp_planes_free(P[i]);
            P[i] = NULL;
        }
    if ((rc = make_cover(t->ystart, t->ny, t->ty, t->height, &cy)) ||
        (rc = make_cover(t->xstart, t->nx, t->tx, t->width, &cx)))
        goto done;
    my = cp_malloc_array((size_t)t->ty, sizeof(double), "taper");
    mx = cp_malloc_array((size_t)t->tx, sizeof(double), "taper");
    navg = cp_malloc_array((size_t)out_w, sizeof(double), "mask sums");
    if (!my || !mx || !navg) {
        rc = CP_ENOMEM;
        goto done;
    }
    cp_taper_1d(t->ty, t->tx, t->ty, my);
    cp_taper_1d(t->ty, t->tx, t->tx, mx);
    for (int i = 0; i < np; i++) {
        finish_blend(acc[i], t->height, t->width, t, &cy, &cx, my, mx, py0, px0, out_h, out_w, navg);
        memcpy(out[i], acc[i], (size_t)3 * out_h * out_w * sizeof(float));
    }
done:
    for (int i = 0; i < np; i++)
        free(acc[i]);
    free(acc);
    free_cover(&cy);
    free_cover(&cx);
    free(my);
    free(mx);
    free(navg);
    return rc;
}

/* What every entry point checks of the network and parameters; *bsize
 * receives the tile size. */
static int check_net(const cp_net_desc *net, const cp_eval_params *p, int *bsize)
{
    if (!net || !net->forward)
        return cp_error(CP_EINVAL, "eval: no network");
    if (net->arch != CP_ARCH_CPNET && net->arch != CP_ARCH_CPSAM)
        return cp_error(CP_EINVAL, "eval: unknown network architecture %d", (int)net->arch);
    int want = net->arch == CP_ARCH_CPSAM ? 3 : 2;
    if (net->nchan != want)
        return cp_error(CP_EINVAL, "eval: network takes %d channels, expected %d", net->nchan,
                        want);
    if (net->nout < 3)
        return cp_error(CP_EINVAL, "eval: network has %d outputs, need 3", net->nout);
    if (p->batch_size <= 0)
        return cp_error(CP_EINVAL, "eval: batch size %d must be positive", p->batch_size);
    *bsize = p->bsize > 0 ? p->bsize : (net->bsize > 0 ? net->bsize : (want == 3 ? 256 : 224));
    return CP_OK;
}

int cp_run_net(const cp_net_desc *net, const float *x, int n, int height, int width,
               const cp_eval_params *p, float *out)
{
    cp_eval_params defaults;
    if (!p) {
        cp_eval_params_init(&defaults);
        p = &defaults;
    }
    int bsize, rc = check_net(net, p, &bsize);
    if (rc)
        return rc;
    if (n <= 0 || height <= 0 || width <= 0)
        return cp_error(CP_EINVAL, "run_net: bad stack size %d x %d x %d", n, height, width);
    int C = net->nchan;
    size_t in_n = (size_t)C * height * width, out_n = (size_t)3 * height * width;
    int py[2], px[2];
    cp_pad_amounts(height, net->arch, bsize, &py[0], &py[1]);
    cp_pad_amounts(width, net->arch, bsize, &px[0], &px[1]);
    cp_tiling t = {0};
    if ((rc = cp_tiling_make(&t, height + py[0] + py[1], width + px[0] + px[1], bsize, p->tile_overlap,
                             p->augment)))
        return rc;
    /* Cellpose runs max(1, batch_size / ntiles) planes per group, and a group
     * in batches of batch_size tiles */
    int ntiles = t.ny * t.nx, group = p->batch_size / ntiles > 1 ? p->batch_size / ntiles : 1;
    if (group > n)
        group = n;
    cp_planes **P = cp_calloc((size_t)group, sizeof *P, "padded planes");
    float **o = cp_calloc((size_t)group, sizeof *o, "outputs");
    if (!P || !o)
        rc = CP_ENOMEM;
    for (int z0 = 0; z0 < n && rc == CP_OK; z0 += group) {
        int np = n - z0 < group ? n - z0 : group;
        for (int i = 0; i < np && rc == CP_OK; i++) {
            cp_planes view = {C, height, width, (float *)(x + (size_t)(z0 + i) * in_n)};
            int qy[2], qx[2];
            rc = pad_image(&view, net->arch, bsize, qy, qx, &P[i]);
            o[i] = out + (size_t)(z0 + i) * out_n;
        }
        if (rc == CP_OK)
            rc = stitch(net, P, np, &t, p->batch_size, py[0], px[0], height, width, 0, NULL, o, NULL);
        for (int i = 0; i < np; i++) {
            cp_planes_free(P[i]);
            P[i] = NULL;
        }
    }
    free(P);
    free(o);
    cp_tiling_free(&t);
    return rc;
}

int cp_eval_flows_net(const cp_net_desc *net, const cp_image *img, int plane,
                      const cp_eval_params *p, cp_flows **out, cp_eval_debug *dbg)
{
    *out = NULL;
    cp_eval_params defaults;
    if (!p) {
        cp_eval_params_init(&defaults);
        p = &defaults;
    }
    int bsize, rc0 = check_net(net, p, &bsize);
    if (rc0)
        return rc0;
    if (!(p->diameter == p->diameter) || isinf(p->diameter))
        return cp_error(CP_EINVAL, "eval: diameter is not a finite number");
    if (dbg) {
        int kt = dbg->keep_tiles, ks = dbg->keep_stages;
        memset(dbg, 0, sizeof *dbg);
        dbg->keep_tiles = kt;
        dbg->keep_stages = ks;
    }

    cp_planes *x = NULL, *xr = NULL, *P = NULL, *y = NULL, *yb = NULL;
    cp_tiling t = {0};
    float *style = NULL;
    if (net->forward_style && net->nstyle > 0 &&
        !(style = cp_calloc((size_t)net->nstyle, sizeof *style, "style")))
        return CP_ENOMEM;
    int Ly = img->height, Lx = img->width;
    int rc = cp_select_channels(img, plane, net->arch, p->chan, p->chan2, &x);
    if (rc)
        goto fail;
    if (p->normalize && (rc = cp_normalize(x, net->arch, p->norm_lower, p->norm_upper)))
        goto fail;
    if (dbg && dbg->keep_stages && (rc = clone_planes(x, &dbg->net_in)))
        goto fail;

    double dmean = p->diam_mean > 0 ? p->diam_mean : net->diam_mean;
    double s = cp_rescale(p->diameter, dmean, net->diam_labels, net->arch);
    if (!(s > 0) || isinf(s)) {
        rc = cp_error(CP_EINVAL, "eval: bad rescale factor %g", s);
        goto fail;
    }
    int Lyr = Ly, Lxr = Lx;
    const cp_planes *src = x;
    if (s != 1.0) {
        Lyr = cp_rescaled_len(Ly, s);
        Lxr = cp_rescaled_len(Lx, s);
        if (Lyr < 1 || Lxr < 1) {
            rc = cp_error(CP_EINVAL, "eval: image %d x %d at scale %g is empty", Ly, Lx, s);
            goto fail;
        }
        if ((rc = cp_resize_linear(x, Lyr, Lxr, &xr)))
            goto fail;
        cp_planes_free(x);
        x = NULL;
        src = xr;
    }
    int py[2], px[2];
    if ((rc = pad_image(src, net->arch, bsize, py, px, &P)))
        goto fail;
    cp_planes_free(x);
    cp_planes_free(xr);
    x = xr = NULL;
    if ((rc = cp_tiling_make(&t, P->height, P->width, bsize, p->tile_overlap, p->augment)))
        goto fail;
    if (dbg) {
        dbg->pad_y[0] = py[0];
        dbg->pad_y[1] = py[1];
        dbg->pad_x[0] = px[0];
        dbg->pad_x[1] = px[1];
    }
    int keep = dbg && dbg->keep_stages;
    if ((rc = cp_planes_create(&y, 3, Lyr, Lxr)))
        goto fail;
    if ((rc = stitch(net, &P, 1, &t, p->batch_size, py[0], px[0], Lyr, Lxr, keep, style, &y->data, dbg)))
        goto fail;
    if (dbg && dbg->keep_stages) {
        dbg->padded = P;
        P = NULL;
        if ((rc = clone_planes(y, &dbg->net_out)))
            goto fail;
    }
    cp_planes_free(P);
    P = NULL;
    if (p->keep_net_size) {
        Ly = Lyr;
        Lx = Lxr;
    } else if (Lyr != Ly || Lxr != Lx) {
        if ((rc = cp_resize_linear(y, Ly, Lx, &yb)))
            goto fail;
        cp_planes_free(y);
        y = yb;
        yb = NULL;
    }
    cp_flows *f = cp_calloc(1, sizeof *f, "flows");
    if (!f) {
        rc = CP_ENOMEM;
        goto fail;
    }
    size_t n = (size_t)Ly * Lx;
    f->height = Ly;
    f->width = Lx;
    f->data = y->data;
    y->data = NULL;
    f->dY = f->data;
    f->dX = f->data + n;
    f->cellprob = f->data + 2 * n;
    f->rescale = s;
    f->net_height = Lyr;
    f->net_width = Lxr;
    f->style = style;
    f->nstyle = style ? net->nstyle : 0;
    cp_planes_free(y);
    if (dbg)
        dbg->tiling = t;
    else
        cp_tiling_free(&t);
    *out = f;
    return CP_OK;
fail:
    free(style);
    cp_planes_free(x);
    cp_planes_free(xr);
    cp_planes_free(P);
    cp_planes_free(y);
    cp_planes_free(yb);
    cp_tiling_free(&t);
    if (dbg)
        cp_eval_debug_free(dbg);
    return rc;
}
