/* Models: recognise the architecture from a state dict, read its
 * configuration from the shapes, check every key, and hand it to the shim. */
#include <stdlib.h>
#include <string.h>

#include "cellpose/net.h"
#include "core/internal.h"
#include "net/shim.h"

struct cp_model {
    cp_model_info info;
    cp_weights *w;
    cp_shim *shim;
    char *path;
};

/* ---- expected keys ------------------------------------------------------ */

typedef struct want {
    char name[128];
    int ndim;
    int64_t shape[4];
    int optional;
} want;

typedef struct wantlist {
    want *v;
    size_t n, cap;
    int oom;
} wantlist;

static void expect(wantlist *l, int optional, int ndim, int64_t a, int64_t b, int64_t c, int64_t d,
                   const char *fmt, ...) __attribute__((format(printf, 8, 9)));

#include <stdarg.h>
static void expect(wantlist *l, int optional, int ndim, int64_t a, int64_t b, int64_t c, int64_t d,
                   const char *fmt, ...)
{
    if (l->oom)
        return;
    if (l->n == l->cap) {
        size_t nc = l->cap ? 2 * l->cap : 256;
        want *v = realloc(l->v, nc * sizeof *v);
        if (!v) {
            l->oom = 1;
            return;
        }
        l->v = v;
        l->cap = nc;
    }
    want *x = &l->v[l->n++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->name, sizeof x->name, fmt, ap);
    va_end(ap);
    x->ndim = ndim;
    x->shape[0] = a;
    x->shape[1] = b;
    x->shape[2] = c;
    x->shape[3] = d;
    x->optional = optional;
}

#define E1(l, a, ...) expect(l, 0, 1, a, 0, 0, 0, __VA_ARGS__)
#define E2(l, a, b, ...) expect(l, 0, 2, a, b, 0, 0, __VA_ARGS__)
#define E4(l, a, b, c, d, ...) expect(l, 0, 4, a, b, c, d, __VA_ARGS__)

static void fmt_shape(char *buf, size_t n, int ndim, const int64_t *s)
{
    size_t k = (size_t)snprintf(buf, n, "(");
    for (int d = 0; d < ndim && k < n; d++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", d ? ", " : "", (long long)s[d]);
    if (k < n)
        snprintf(buf + k, n - k, ")");
}

static int check_keys(const char *path, const cp_weights *w, const wantlist *l, const char *arch)
{
    if (l->oom)
        return cp_error(CP_ENOMEM, "%s: out of memory", path);
    for (size_t k = 0; k < l->n; k++) {
        const want *x = &l->v[k];
        const cp_wtensor *t = cp_weights_get(w, x->name);
        char ws[96], hs[96];
        fmt_shape(ws, sizeof ws, x->ndim, x->shape);
        if (!t) {
            if (x->optional)
                continue;
            return cp_error(CP_EMODEL, "%s: %s state dict lacks key '%s' %s", path, arch, x->name, ws);
        }
        int ok = t->ndim == x->ndim;
        for (int d = 0; ok && d < x->ndim; d++)
            ok = t->shape[d] == x->shape[d];
        int want_int = strstr(x->name, "num_batches_tracked") != NULL;
        if (!ok || (t->dtype == CP_W_I64) != want_int) {
            fmt_shape(hs, sizeof hs, t->ndim, t->shape);
            return cp_error(CP_EMODEL, "%s: key '%s' has shape %s%s, expected %s", path, x->name, hs,
                            t->dtype == CP_W_I64 ? " int64" : "", ws);
        }
    }
    for (size_t k = 0; k < w->n; k++) {
        int known = 0;
        for (size_t j = 0; !known && j < l->n; j++)
            known = !strcmp(w->t[k].name, l->v[j].name);
        if (!known)
            return cp_error(CP_EMODEL, "%s: unexpected key '%s' in a %s state dict", path,
                            w->t[k].name, arch);
    }
    return CP_OK;
}

/* A key the configuration is read from: must exist with the given rank. */
static const cp_wtensor *need(const char *path, const cp_weights *w, const char *name, int ndim,
                              const char *arch, int *rc)
{
    const cp_wtensor *t = cp_weights_get(w, name);
    if (!t) {
        *rc = cp_error(CP_EMODEL, "%s: %s state dict lacks key '%s'", path, arch, name);
        return NULL;
    }
    if (t->ndim != ndim || t->dtype == CP_W_I64) {
        char hs[96];
        fmt_shape(hs, sizeof hs, t->ndim, t->shape);
        *rc = cp_error(CP_EMODEL, "%s: key '%s' has shape %s, expected a %d-d float tensor", path,
                       name, hs, ndim);
        return NULL;
    }
    for (int d = 0; d < ndim; d++)
        if (t->shape[d] <= 0 || t->shape[d] > (1 << 20)) {
            *rc = cp_error(CP_EMODEL, "%s: key '%s' has an implausible size", path, name);
            return NULL;
        }
    return t;
}

static void expect_bn(wantlist *l, int64_t c, const char *prefix)
{
    E1(l, c, "%s.weight", prefix);
    E1(l, c, "%s.bias", prefix);
    E1(l, c, "%s.running_mean", prefix);
    E1(l, c, "%s.running_var", prefix);
    expect(l, 1, 0, 0, 0, 0, 0, "%s.num_batches_tracked", prefix);
}

static void expect_conv(wantlist *l, int64_t cout, int64_t cin, int k, const char *prefix, int bias)
{
    E4(l, cout, cin, k, k, "%s.weight", prefix);
    if (bias)
        E1(l, cout, "%s.bias", prefix);
}

static int config_cpnet(const char *path, const cp_weights *w, cp_model_info *info, wantlist *l)
{
    static const char A[] = "CPnet";
    int rc = CP_OK;
    char key[128];
    int L = 0;
    for (;; L++) {
        snprintf(key, sizeof key, "downsample.down.res_down_%d.conv.conv_0.2.weight", L);
        if (!cp_weights_get(w, key))
            break;
        if (L == 7)
            return cp_error(CP_EUNSUPPORTED, "%s: CPnet with more than 7 levels", path);
        const cp_wtensor *t = need(path, w, key, 4, A, &rc);
        if (!t)
            return rc;
        if (L == 0)
            info->nbase[0] = (int)t->shape[1];
        info->nbase[L + 1] = (int)t->shape[0];
    }
    if (L == 0)
        return cp_error(CP_EMODEL, "%s: CPnet state dict lacks key "
                        "'downsample.down.res_down_0.conv.conv_0.2.weight'", path);
    const cp_wtensor *o = need(path, w, "output.2.weight", 4, A, &rc);
    if (!o)
        return rc;
    int *nb = info->nbase;
    info->nlevels = L + 1;
    info->nchan = nb[0];
    info->nout = (int)o->shape[0];
    info->nstyle = nb[L];
    info->bsize = 224;
    E1(l, 1, "diam_mean");
    E1(l, 1, "diam_labels");
    char p[128];
    for (int n = 0; n < L; n++) {
        int64_t cin = nb[n], cout = nb[n + 1];
        for (int j = 0; j < 4; j++) {
            snprintf(p, sizeof p, "downsample.down.res_down_%d.conv.conv_%d.0", n, j);
            expect_bn(l, j ? cout : cin, p);
            snprintf(p, sizeof p, "downsample.down.res_down_%d.conv.conv_%d.2", n, j);
            expect_conv(l, cout, j ? cout : cin, 3, p, 1);
        }
        snprintf(p, sizeof p, "downsample.down.res_down_%d.proj.0", n);
        expect_bn(l, cin, p);
        snprintf(p, sizeof p, "downsample.down.res_down_%d.proj.1", n);
        expect_conv(l, cout, cin, 1, p, 1);
    }
    for (int n = 0; n < L; n++) {
        int64_t uin = n + 2 <= L ? nb[n + 2] : nb[L], uout = nb[n + 1];
        snprintf(p, sizeof p, "upsample.up.res_up_%d.conv.conv_0.0", n);
        expect_bn(l, uin, p);
        snprintf(p, sizeof p, "upsample.up.res_up_%d.conv.conv_0.2", n);
        expect_conv(l, uout, uin, 3, p, 1);
        for (int j = 1; j < 4; j++) {
            snprintf(p, sizeof p, "upsample.up.res_up_%d.conv.conv_%d.conv.0", n, j);
            expect_bn(l, uout, p);
            snprintf(p, sizeof p, "upsample.up.res_up_%d.conv.conv_%d.conv.2", n, j);
            expect_conv(l, uout, uout, 3, p, 1);
            E2(l, uout, nb[L], "upsample.up.res_up_%d.conv.conv_%d.full.weight", n, j);
            E1(l, uout, "upsample.up.res_up_%d.conv.conv_%d.full.bias", n, j);
        }
        snprintf(p, sizeof p, "upsample.up.res_up_%d.proj.0", n);
        expect_bn(l, uin, p);
        snprintf(p, sizeof p, "upsample.up.res_up_%d.proj.1", n);
        expect_conv(l, uout, uin, 1, p, 1);
    }
    expect_bn(l, nb[1], "output.0");
    expect_conv(l, info->nout, nb[1], 1, "output.2", 1);
    return CP_OK;
}

static int config_cpsam(const char *path, const cp_weights *w, cp_model_info *info, wantlist *l)
{
    static const char A[] = "Cellpose-SAM";
    int rc = CP_OK;
    const cp_wtensor *pe, *pos, *w2, *rel, *neck, *lin1;
    if (!(pe = need(path, w, "encoder.patch_embed.proj.weight", 4, A, &rc)) ||
        !(pos = need(path, w, "encoder.pos_embed", 4, A, &rc)) ||
        !(w2 = need(path, w, "W2", 4, A, &rc)) ||
        !(rel = need(path, w, "encoder.blocks.0.attn.rel_pos_h", 2, A, &rc)) ||
        !(neck = need(path, w, "encoder.neck.0.weight", 4, A, &rc)) ||
        !(lin1 = need(path, w, "encoder.blocks.0.mlp.lin1.weight", 2, A, &rc)))
        return rc;
    int64_t E = pe->shape[0], ps = pe->shape[2], d = rel->shape[1], grid = pos->shape[1];
    int64_t nout = w2->shape[1], C = neck->shape[0], M = lin1->shape[0];
    if (E % d)
        return cp_error(CP_EMODEL, "%s: embedding width %lld is not a multiple of the head width %lld "
                        "(columns of encoder.blocks.0.attn.rel_pos_h)", path, (long long)E, (long long)d);
    int depth = 0;
    char key[128];
    for (;; depth++) {
        snprintf(key, sizeof key, "encoder.blocks.%d.norm1.weight", depth);
        if (!cp_weights_get(w, key))
            break;
        if (depth > 4096)
            break;
    }
    info->nchan = (int)pe->shape[1];
    info->nout = (int)nout;
    info->embed = (int)E;
    info->depth = depth;
    info->heads = (int)(E / d);
    info->patch = (int)ps;
    info->bsize = (int)(grid * ps);
    info->nstyle = 256;
    E4(l, nout * ps * ps, nout, ps, ps, "W2");
    E1(l, 1, "diam_labels");
    E1(l, 1, "diam_mean");
    E4(l, 1, grid, grid, E, "encoder.pos_embed");
    expect_conv(l, E, info->nchan, (int)ps, "encoder.patch_embed.proj", 1);
    for (int i = 0; i < depth; i++) {
        E1(l, E, "encoder.blocks.%d.norm1.weight", i);
        E1(l, E, "encoder.blocks.%d.norm1.bias", i);
        snprintf(key, sizeof key, "encoder.blocks.%d.attn.rel_pos_h", i);
        const cp_wtensor *r = cp_weights_get(w, key);
        int64_t L = r && r->ndim == 2 && r->shape[0] > 0 ? r->shape[0] : 2 * grid - 1;
        E2(l, L, d, "encoder.blocks.%d.attn.rel_pos_h", i);
        E2(l, L, d, "encoder.blocks.%d.attn.rel_pos_w", i);
        E2(l, 3 * E, E, "encoder.blocks.%d.attn.qkv.weight", i);
        E1(l, 3 * E, "encoder.blocks.%d.attn.qkv.bias", i);
        E2(l, E, E, "encoder.blocks.%d.attn.proj.weight", i);
        E1(l, E, "encoder.blocks.%d.attn.proj.bias", i);
        E1(l, E, "encoder.blocks.%d.norm2.weight", i);
        E1(l, E, "encoder.blocks.%d.norm2.bias", i);
        E2(l, M, E, "encoder.blocks.%d.mlp.lin1.weight", i);
        E1(l, M, "encoder.blocks.%d.mlp.lin1.bias", i);
        E2(l, E, M, "encoder.blocks.%d.mlp.lin2.weight", i);
        E1(l, E, "encoder.blocks.%d.mlp.lin2.bias", i);
    }
    expect_conv(l, C, E, 1, "encoder.neck.0", 0);
    E1(l, C, "encoder.neck.1.weight");
    E1(l, C, "encoder.neck.1.bias");
    expect_conv(l, C, C, 3, "encoder.neck.2", 0);
    E1(l, C, "encoder.neck.3.weight");
    E1(l, C, "encoder.neck.3.bias");
    expect_conv(l, nout * ps * ps, C, 1, "out", 1);
    return CP_OK;
}

int cp_precision_parse(const char *s, const char *what, cp_precision *out)
{
    if (s && !strcmp(s, "fp32"))
        *out = CP_PRECISION_FP32;
    else if (s && !strcmp(s, "bf16"))
        *out = CP_PRECISION_BF16;
    else
        return cp_error(CP_EINVAL, "%s: '%s' is not fp32 or bf16", what, s ? s : "");
    return CP_OK;
}

const char *cp_precision_name(cp_precision p) { return p == CP_PRECISION_BF16 ? "bf16" : "fp32"; }

static int env_opts(const cp_model_opts *in, cp_model_opts *o, const char *path)
{
    *o = in ? *in : (cp_model_opts){CP_DEVICE_CPU, 0, CP_PRECISION_FP32};
    const char *p = getenv("CELLPOSE_PRECISION");
    if (!in && p && *p && cp_precision_parse(p, "CELLPOSE_PRECISION", &o->precision))
        return cp_error(CP_EINVAL, "%s: CELLPOSE_PRECISION=%s: expected fp32 or bf16", path, p);
    if (o->precision != CP_PRECISION_FP32 && o->precision != CP_PRECISION_BF16)
        return cp_error(CP_EINVAL, "%s: unknown precision %d", path, (int)o->precision);
    const char *e = getenv("CELLPOSE_DEVICE");
    if (!in && e && *e) {
        if (!strcmp(e, "cuda") || !strncmp(e, "cuda:", 5))
            o->device = CP_DEVICE_CUDA;
        else if (!strcmp(e, "cpu"))
            o->device = CP_DEVICE_CPU;
        else
            return cp_error(CP_EINVAL, "%s: CELLPOSE_DEVICE=%s: expected cpu or cuda", path, e);
    }
    if (o->threads < 0)
        return cp_error(CP_EINVAL, "%s: negative thread count", path);
    return CP_OK;
}

/* The weights, checked, and their info; the network too with build (the
 * only step that needs the libtorch backend). */
static int load(const char *path, const cp_model_opts *opts, int build, cp_model **out)
{
    *out = NULL;
    cp_model_opts o;
    int rc = build ? env_opts(opts, &o, path) : CP_OK;
    if (rc)
        return rc;
    cp_model *m = cp_calloc(1, sizeof *m, "model");
    if (!m)
        return CP_ENOMEM;
    wantlist l = {0};
    int bf16 = build && o.precision == CP_PRECISION_BF16;
    if ((rc = cp_weights_load_bf16(path, bf16 ? CP_WBF16_MIN : 0, &m->w)))
        goto fail;
    if (!(m->path = cp_strdup(path))) {
        rc = CP_ENOMEM;
        goto fail;
    }
    cp_model_info *info = &m->info;
    const char *arch;
    if (cp_weights_get(m->w, "W2")) {
        info->arch = CP_ARCH_CPSAM;
        arch = "Cellpose-SAM";
        rc = config_cpsam(path, m->w, info, &l);
    } else if (cp_weights_get(m->w, "output.2.weight")) {
        info->arch = CP_ARCH_CPNET;
        arch = "CPnet";
        rc = config_cpnet(path, m->w, info, &l);
    } else {
        rc = cp_error(CP_EMODEL, "%s: not a Cellpose model: neither key 'W2' (Cellpose-SAM) nor "
                      "'output.2.weight' (CPnet)", path);
        goto fail;
    }
    if (rc || (rc = check_keys(path, m->w, &l, arch)))
        goto fail;
    info->diam_mean = *(const float *)cp_weights_get(m->w, "diam_mean")->data;
    info->diam_labels = *(const float *)cp_weights_get(m->w, "diam_labels")->data;
    for (size_t k = 0; k < m->w->n; k++)
        info->nparams += m->w->t[k].numel;
    memcpy(info->sha256, m->w->sha256, sizeof info->sha256);
    info->precision_requested = build ? o.precision : CP_PRECISION_FP32;
    if (build && (rc = cp_shim_create(m->w, info, &o, path, &m->shim)))
        goto fail;
    if (bf16 && info->precision != CP_PRECISION_BF16) {
        /* the CPU cannot run bf16: float32 after all, from float32 weights */
        cp_shim_free(m->shim);
        m->shim = NULL;
        cp_weights_free(m->w);
        if ((rc = cp_weights_load(path, &m->w)) || (rc = cp_shim_create(m->w, info, &o, path, &m->shim)))
            goto fail;
    }
    free(l.v);
    *out = m;
    return CP_OK;
fail:
    free(l.v);
    cp_model_free(m);
    return rc;
}

int cp_model_load(const char *path, const cp_model_opts *opts, cp_model **out)
{
    return load(path, opts, 1, out);
}

int cp_model_read_info(const char *path, cp_model_info *info)
{
    cp_model *m;
    int rc = load(path, NULL, 0, &m);
    if (rc == CP_OK)
        *info = m->info;
    cp_model_free(m);
    return rc;
}

void cp_model_free(cp_model *m)
{
    if (!m)
        return;
    cp_shim_free(m->shim);
    cp_weights_free(m->w);
    free(m->path);
    free(m);
}

const cp_model_info *cp_model_get_info(const cp_model *m) { return &m->info; }

int cp_model_forward(cp_model *m, const float *in, int n, int ty, int tx, float *out, float *style)
{
    if (!m || !in || !out || n <= 0 || ty <= 0 || tx <= 0)
        return cp_error(CP_EINVAL, "cp_model_forward: bad arguments");
    if (m->info.arch == CP_ARCH_CPNET) {
        int mult = 1 << (m->info.nlevels - 2);
        if (ty % mult || tx % mult)
            return cp_error(CP_EINVAL, "%s: tile %dx%d is not a multiple of %d", m->path, ty, tx, mult);
    } else if (ty != m->info.bsize || tx != m->info.bsize) {
        return cp_error(CP_EINVAL, "%s: Cellpose-SAM tiles must be %dx%d, not %dx%d", m->path,
                        m->info.bsize, m->info.bsize, ty, tx);
    }
    return cp_shim_forward(m->shim, in, n, ty, tx, out, style);
}
