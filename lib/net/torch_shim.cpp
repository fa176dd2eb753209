// The forward passes of CPnet (Cellpose 3) and the Cellpose-SAM transformer
// (Cellpose 4) in libtorch's functional ops, behind a C interface. This is
// the only C++ file of the project; no exception leaves it.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/TensorIndexing.h>
#include <ATen/ops/mkldnn_convolution.h>
#include <algorithm>
#include <c10/core/InferenceMode.h>
#include <torch/cuda.h>

#include <c10/core/CPUAllocator.h>
#include <dlfcn.h>
#include <omp.h>
#include <sched.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "cellpose/core.h"
#include "net/shim.h"

// What the backend uses of libcellpose, set by cp_torch_backend_init.
static const cp_torch_host *host;

namespace {

// One line of an exception message (c10 errors carry a backtrace).
std::string oneline(const std::exception &e)
{
    const c10::Error *ce = dynamic_cast<const c10::Error *>(&e);
    std::string s = ce ? ce->what_without_backtrace() : e.what();
    size_t nl = s.find('\n');
    if (nl != std::string::npos)
        s.resize(nl);
    return s;
}

// glibc serves every block above 32 MB with a fresh mmap, so each large
// activation of a batch costs page faults and zeroing (a quarter of the run
// time measured on the cyto3 net). Blocks of 1 MB or more are therefore kept
// for reuse, keyed by exact size (a forward pass repeats the same sizes); the
// cache never holds more than kMaxCached bytes.
class ReuseAllocator final : public c10::Allocator {
  public:
    c10::DataPtr allocate(size_t n) const override
    {
        void *p = nullptr;
        if (n >= kMinCached) {
            std::lock_guard<std::mutex> g(mu_);
            auto it = free_.find(n);
            if (it != free_.end()) {
                p = it->second;
                free_.erase(it);
                cached_ -= n;
            }
        }
        if (!p && posix_memalign(&p, 64, n ? n : 64) != 0)
            throw std::bad_alloc();
        if (n >= kMinCached) {
            std::lock_guard<std::mutex> g(mu_);
            size_[p] = n;
        }
        return {p, p, &release, at::Device(at::kCPU)};
    }
    c10::DeleterFnPtr raw_deleter() const override { return &release; }
    // Never destroyed: tensors in static storage may be freed after main.
    static ReuseAllocator &get()
    {
        static ReuseAllocator *a = new ReuseAllocator;
        return *a;
    }

  private:
    static constexpr size_t kMinCached = 1 << 20;
    static constexpr size_t kMaxCached = (size_t)2 << 30;
    static void release(void *p)
    {
        ReuseAllocator &a = get();
        {
            std::lock_guard<std::mutex> g(a.mu_);
            auto it = a.size_.find(p);
            if (it != a.size_.end()) {
                size_t n = it->second;
                a.size_.erase(it);
                if (a.cached_ + n <= kMaxCached) {
                    a.free_.emplace(n, p);
                    a.cached_ += n;
                    return;
                }
            }
        }
        std::free(p);
    }
    mutable std::mutex mu_;
    mutable std::unordered_multimap<size_t, void *> free_;
    mutable std::unordered_map<void *, size_t> size_;
    mutable size_t cached_ = 0;
};

void install_allocator()
{
    static std::once_flag once;
    std::call_once(once, [] {
        c10::SetCPUAllocator(&ReuseAllocator::get(), 10);
    });
}

struct BN {
    at::Tensor w, b, mean, var;
    bool train = false;  // batch statistics (and running-stat updates) when training
};
struct BConv {  // BN -> [ReLU] -> conv
    BN bn;
    at::Tensor w, b;
    bool relu;
    int64_t pad;
};
struct Style {  // batchconvstyle: conv over (x [+ y] + Linear(style))
    BConv conv;
    at::Tensor fw, fb;
};
struct ResDown {
    BConv c[4], proj;
};
struct ResUp {
    BConv c0, proj;
    Style c[3];
};

struct Block {
    at::Tensor n1w, n1b, qkvw, qkvb, projw, projb, n2w, n2b, l1w, l1b, l2w, l2b;
    at::Tensor rh, rw;  // (grid, grid, d): tables resampled and gathered at load
};

}  // namespace

struct cp_shim {
    cp_model_info info;
    std::string path;
    at::Device dev{at::kCPU};
    at::ScalarType dtype = at::kFloat;  // of weights and activations
    int threads = 1;
    // CPnet
    std::vector<ResDown> down;
    std::vector<ResUp> up;
    BConv head;
    // cpsam
    at::Tensor pe_w, pe_b, pos, neck0, n1w, n1b, neck2, n3w, n3b, out_w, out_b, W2;
    std::vector<Block> blocks;
};

namespace {

struct Loader {
    const cp_weights *w;
    at::Device dev;
    at::ScalarType dtype;
    // In the network's precision (bf16 weights loaded as such are used in place).
    at::Tensor operator()(const std::string &name) const { return stored(name).to(dtype); }
    // In float32, for what stays float32 whatever the precision.
    at::Tensor f32(const std::string &name) const { return stored(name).to(at::kFloat); }
    at::Tensor stored(const std::string &name) const
    {
        const cp_wtensor *t = host->weights_get(w, name.c_str());
        if (!t)
            throw std::runtime_error("missing key " + name);
        std::vector<int64_t> shape(t->shape, t->shape + t->ndim);
        at::ScalarType st = t->dtype == CP_W_BF16 ? at::kBFloat16 : at::kFloat;
        at::Tensor x = at::from_blob(t->data, shape, at::TensorOptions().dtype(st));
        return dev.is_cpu() ? x : x.to(dev);
    }
};

template <class LoaderT>
BN load_bn(const LoaderT &L, const std::string &p)
{
    return BN{L(p + ".weight"), L(p + ".bias"), L(p + ".running_mean"), L(p + ".running_var")};
}

template <class LoaderT>
BConv load_bconv(const LoaderT &L, const std::string &p, bool relu)
{
    BConv c;
    c.bn = load_bn(L, p + ".0");
    std::string conv = p + (relu ? ".2" : ".1");
    c.w = L(conv + ".weight");
    c.b = L(conv + ".bias");
    c.relu = relu;
    c.pad = c.w.size(2) / 2;
    // oneDNN runs channels-last convolutions without reordering (1.4x faster
    // on the cyto3 net here); the activations follow the input's layout.
    c.w = c.w.contiguous(at::MemoryFormat::ChannelsLast);
    return c;
}

at::Tensor conv(const at::Tensor &x, const at::Tensor &w, const c10::optional<at::Tensor> &b,
                int64_t stride, int64_t pad)
{
    if (x.is_cpu() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16))
        return at::mkldnn_convolution(x, w, b, {pad, pad}, {stride, stride}, {1, 1}, 1);
    return at::conv2d(x, w, b, stride, pad);
}

at::Tensor run(const BConv &c, const at::Tensor &x)
{
    at::Tensor y = at::batch_norm(x, c.bn.w, c.bn.b, c.bn.mean, c.bn.var, c.bn.train, 0.05, 1e-5, false);
    if (c.relu)
        y = at::relu_(y);
    return conv(y, c.w, c.b, 1, c.pad);
}

at::Tensor run_style(const Style &s, const at::Tensor &style, const at::Tensor &x,
                     const at::Tensor *y)
{
    at::Tensor feat = at::linear(style, s.fw, s.fb);
    at::Tensor t = y ? x + *y : x;
    t = t + feat.unsqueeze(-1).unsqueeze(-1);
    return run(s.conv, t);
}

template <class LoaderT>
void build_cpnet(cp_shim *s, const LoaderT &L)
{
    int nl = s->info.nlevels - 1;
    for (int n = 0; n < nl; n++) {
        std::string p = "downsample.down.res_down_" + std::to_string(n);
        ResDown r;
        for (int j = 0; j < 4; j++)
            r.c[j] = load_bconv(L, p + ".conv.conv_" + std::to_string(j), true);
        r.proj = load_bconv(L, p + ".proj", false);
        s->down.push_back(r);
    }
    for (int n = 0; n < nl; n++) {
        std::string p = "upsample.up.res_up_" + std::to_string(n);
        ResUp r;
        r.c0 = load_bconv(L, p + ".conv.conv_0", true);
        for (int j = 1; j < 4; j++) {
            std::string q = p + ".conv.conv_" + std::to_string(j);
            r.c[j - 1].conv = load_bconv(L, q + ".conv", true);
            r.c[j - 1].fw = L(q + ".full.weight");
            r.c[j - 1].fb = L(q + ".full.bias");
        }
        r.proj = load_bconv(L, p + ".proj", false);
        s->up.push_back(r);
    }
    s->head = load_bconv(L, "output", true);
}

// oneDNN (libtorch 1.13's) builds bfloat16 convolutions only on AVX-512
// CPUs: natively with AVX512-BF16 or AMX, emulated on plain AVX-512; on
// AVX2 it cannot create the primitive. Tried once at load, so such a CPU
// runs float32 (the issue asks for a clean fallback) rather than failing on
// every tile.
void probe_bf16_conv()
{
    at::Tensor x = at::zeros({1, 1, 4, 4}, at::kBFloat16), w = at::zeros({1, 1, 1, 1}, at::kBFloat16);
    conv(x, w, {}, 1, 0);
}

// Cellpose 3 CPnet.forward: returns (output, style).
std::pair<at::Tensor, at::Tensor> forward_cpnet(const cp_shim *s, const at::Tensor &x)
{
    size_t nl = s->down.size();
    std::vector<at::Tensor> d(nl);
    at::Tensor h = x;
    for (size_t n = 0; n < nl; n++) {
        if (n > 0)
            h = at::max_pool2d(d[n - 1], {2, 2}, {2, 2});
        const ResDown &r = s->down[n];
        at::Tensor t = run(r.proj, h) + run(r.c[1], run(r.c[0], h));
        d[n] = t + run(r.c[3], run(r.c[2], t));
    }
    at::Tensor style = at::avg_pool2d(d[nl - 1], {d[nl - 1].size(2), d[nl - 1].size(3)});
    style = style.flatten(1);
    style = style / at::pow(at::sum(style * style, {1}, true), 0.5);
    at::Tensor u;
    for (size_t k = nl; k-- > 0;) {
        const ResUp &r = s->up[k];
        at::Tensor xin = k == nl - 1 ? d[nl - 1] : at::upsample_nearest2d(u, {u.size(2) * 2, u.size(3) * 2});
        at::Tensor t = run(r.proj, xin) + run_style(r.c[0], style, run(r.c0, xin), &d[k]);
        u = t + run_style(r.c[2], style, run_style(r.c[1], style, t, nullptr), nullptr);
    }
    return {run(s->head, u), style};
}

// PyTorch F.interpolate(mode="linear", align_corners=False) along the rows,
// then the decomposed relative-position lookup SAM's get_rel_pos does.
at::Tensor rel_table(const at::Tensor &t, int64_t grid)
{
    int64_t len = 2 * grid - 1;
    at::Tensor r = t;
    if (t.size(0) != len)
        r = at::upsample_linear1d(t.t().unsqueeze(0).contiguous(), {len}, false).squeeze(0).t();
    at::Tensor q = at::arange(grid, at::kLong).unsqueeze(1), k = at::arange(grid, at::kLong).unsqueeze(0);
    at::Tensor idx = (q - k + (grid - 1)).reshape({-1});
    return r.index_select(0, idx.to(r.device())).reshape({grid, grid, t.size(1)}).contiguous();
}

void build_cpsam(cp_shim *s, const Loader &L)
{
    s->pe_w = L("encoder.patch_embed.proj.weight");
    s->pe_b = L("encoder.patch_embed.proj.bias");
    s->pos = L.f32("encoder.pos_embed");
    int64_t grid = s->pos.size(1);
    for (int i = 0; i < s->info.depth; i++) {
        std::string p = "encoder.blocks." + std::to_string(i);
        Block b;
        b.n1w = L.f32(p + ".norm1.weight");
        b.n1b = L.f32(p + ".norm1.bias");
        b.qkvw = L(p + ".attn.qkv.weight");
        b.qkvb = L(p + ".attn.qkv.bias");
        b.projw = L(p + ".attn.proj.weight");
        b.projb = L(p + ".attn.proj.bias");
        b.n2w = L.f32(p + ".norm2.weight");
        b.n2b = L.f32(p + ".norm2.bias");
        b.l1w = L(p + ".mlp.lin1.weight");
        b.l1b = L(p + ".mlp.lin1.bias");
        b.l2w = L(p + ".mlp.lin2.weight");
        b.l2b = L(p + ".mlp.lin2.bias");
        // float32 in every precision: the position terms join float32 scores
        b.rh = rel_table(L.f32(p + ".attn.rel_pos_h"), grid);
        b.rw = rel_table(L.f32(p + ".attn.rel_pos_w"), grid);
        s->blocks.push_back(b);
    }
    s->neck0 = L("encoder.neck.0.weight");
    s->n1w = L.f32("encoder.neck.1.weight");
    s->n1b = L.f32("encoder.neck.1.bias");
    s->neck2 = L("encoder.neck.2.weight");
    s->n3w = L.f32("encoder.neck.3.weight");
    s->n3b = L.f32("encoder.neck.3.bias");
    s->out_w = L("out.weight");
    s->out_b = L("out.bias");
    // libtorch 1.13's bf16 conv_transpose2d checks the weight's channels
    // against the wrong dimension and fails: this last step runs in float32.
    s->W2 = L.f32("W2");
}

// SAM's LayerNorm2d: per pixel over channels, biased variance; in float32
// (w, b), returned in x's type.
at::Tensor layernorm2d(const at::Tensor &xin, const at::Tensor &w, const at::Tensor &b)
{
    at::Tensor x = xin.to(w.scalar_type());
    at::Tensor u = x.mean({1}, true);
    at::Tensor c = x - u;
    at::Tensor v = (c * c).mean({1}, true);
    at::Tensor y = c / at::sqrt(v + 1e-6);
    return (w.unsqueeze(-1).unsqueeze(-1) * y + b.unsqueeze(-1).unsqueeze(-1)).to(xin.scalar_type());
}

// CP_NET_PROFILE=1: CPU time of the calling thread per stage of the
// Cellpose-SAM forward, printed to stderr after each tile (a developer's
// tool for finding where a tile's time goes; thread CPU time, so other
// processes on the machine do not inflate it).
struct StageProf {
    bool on = false;
    std::vector<std::pair<const char *, double>> t;
    double last = 0;
    static double now()
    {
        timespec ts;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
        return ts.tv_sec + 1e-9 * ts.tv_nsec;
    }
    void start()
    {
        const char *e = std::getenv("CP_NET_PROFILE");
        on = e && *e == '1';
        t.clear();
        last = on ? now() : 0;
    }
    void mark(const char *name)
    {
        if (!on)
            return;
        double n = now();
        for (auto &p : t)
            if (!std::strcmp(p.first, name)) {
                p.second += n - last;
                last = n;
                return;
            }
        t.emplace_back(name, n - last);
        last = n;
    }
    void report() const
    {
        if (!on)
            return;
        double tot = 0;
        for (const auto &p : t)
            tot += p.second;
        for (const auto &p : t)
            std::fprintf(stderr, "cp_net_profile %-14s %8.3f s %5.1f%%\n", p.first, p.second, 100 * p.second / tot);
        std::fprintf(stderr, "cp_net_profile %-14s %8.3f s\n", "total", tot);
    }
};
thread_local StageProf prof;

// Scores s (m x N) + SAM's position terms rh (m x H), rw (m x W), softmax
// into p: lib/net/attention.c on the CPU, ATen elsewhere.
void attn_rows(const at::Tensor &s, const at::Tensor &rh, const at::Tensor &rw, float scale, const at::Tensor &p)
{
    int64_t m = s.size(0), H = rh.size(1), W = rw.size(1);
    if (s.is_cpu()) {
        host->attn_softmax(s.data_ptr<float>(), m, H, W, rh.data_ptr<float>(), rw.data_ptr<float>(), scale,
                           p.data_ptr(), p.scalar_type() != at::kFloat);
        return;
    }
    at::Tensor a = (s * scale).view({m, H, W}) + rh.unsqueeze(-1) + rw.unsqueeze(-2);
    p.copy_(at::softmax(a.view({m, H * W}), -1));
}

// SAM's attention with decomposed relative positions (Cellpose-SAM's
// blocks all use it), one head and 512 query rows at a time: the block's
// scores (rows x N) stay in cache from the q.k product through the
// position terms and the softmax (one pass, lib/net/attention.c) to the
// product with v, where the (heads, N, N) scores of a whole tile (64 MB
// for ViT-L) went through memory four times. q, k and v are read in place
// from the qkv output and each head's result lands in its columns of the
// merged output: no permutes. The scores and the softmax are float32 in
// bf16 runs too (q and k widened once per tile: a bf16 GEMM with K = 64 was
// the slowest step, and bf16 scores lose the softmax's resolution); the
// probabilities are rounded to bf16 for the product with v.
at::Tensor attention(const Block &b, const at::Tensor &x, int heads)
{
    int64_t B = x.size(0), H = x.size(1), W = x.size(2), E = x.size(3), d = E / heads, N = H * W;
    at::Tensor qkv = at::linear(x, b.qkvw, b.qkvb).view({B, N, 3 * E});
    prof.mark("qkv");
    at::Tensor o = at::empty({B, N, E}, x.options());
    float scale = (float)(1.0 / std::sqrt((double)d));
    int64_t rows = W * std::max<int64_t>(1, 512 / W);
    bool wide = x.scalar_type() != at::kFloat;
    at::Tensor S = at::empty({std::min(rows, N), N}, x.options().dtype(at::kFloat));
    at::Tensor P = wide ? at::empty({std::min(rows, N), N}, x.options()) : S;
    for (int64_t i = 0; i < B; i++) {
        at::Tensor t = qkv[i], oi = o[i];  // (N, 3E): token, (q|k|v, head, d)
        at::Tensor qk = wide ? t.narrow(1, 0, 2 * E).to(at::kFloat) : t;
        // from the unscaled q, as SAM does
        at::Tensor q4 = qk.narrow(1, 0, E).view({H, W, heads, d});
        at::Tensor rel_h = at::einsum("hwnc,hkc->nhwk", {q4, b.rh}).contiguous();
        at::Tensor rel_w = at::einsum("hwnc,wkc->nhwk", {q4, b.rw}).contiguous();
        prof.mark("relpos");
        for (int64_t n = 0; n < heads; n++) {
            at::Tensor q = qk.narrow(1, n * d, d), k = qk.narrow(1, E + n * d, d), v = t.narrow(1, 2 * E + n * d, d);
            at::Tensor rh = rel_h[n].view({N, H}), rw = rel_w[n].view({N, W});
            for (int64_t r0 = 0; r0 < N; r0 += rows) {
                int64_t m = std::min(rows, N - r0);
                at::Tensor s = S.narrow(0, 0, m), p = P.narrow(0, 0, m);
                at::mm_out(s, q.narrow(0, r0, m), k.t());
                prof.mark("q@k");
                attn_rows(s, rh.narrow(0, r0, m), rw.narrow(0, r0, m), scale, p);
                prof.mark("softmax");
                at::Tensor on = oi.narrow(0, r0, m).narrow(1, n * d, d);
                at::mm_out(on, p, v);
                prof.mark("p@v");
            }
        }
    }
    at::Tensor y = at::linear(o.view({B, H, W, E}), b.projw, b.projb);
    prof.mark("proj");
    return y;
}

at::Tensor forward_cpsam(const cp_shim *s, const at::Tensor &x)
{
    int64_t E = s->info.embed;
    prof.start();
    // tokens contiguous (B, H, W, E): a permuted view would hand its strides
    // to every residual sum and make each LayerNorm and Linear copy its input
    // The residual stream and the LayerNorms stay float32 in bf16 runs
    // (libtorch 1.13's bf16 LayerNorm is 10x slower than its float32 one);
    // the matrix products, softmax and GELU run in the network's type.
    at::ScalarType dt = s->dtype;
    at::Tensor t = conv(x, s->pe_w, s->pe_b, s->info.patch, 0).permute({0, 2, 3, 1}).to(at::kFloat).contiguous();
    t += s->pos;
    prof.mark("patch_embed");
    for (const Block &b : s->blocks) {
        at::Tensor h = at::layer_norm(t, {E}, b.n1w, b.n1b, 1e-6).to(dt);
        prof.mark("layernorm");
        h = attention(b, h, s->info.heads);
        t = t + h;
        prof.mark("residual");
        h = at::layer_norm(t, {E}, b.n2w, b.n2b, 1e-6).to(dt);
        prof.mark("layernorm");
        h = at::linear(h, b.l1w, b.l1b);
        prof.mark("mlp1");
        h = at::gelu(h);
        prof.mark("gelu");
        h = at::linear(h, b.l2w, b.l2b);
        prof.mark("mlp2");
        t = t + h;
        prof.mark("residual");
    }
    at::Tensor n = conv(t.permute({0, 3, 1, 2}).to(dt), s->neck0, {}, 1, 0);
    n = layernorm2d(n, s->n1w, s->n1b);
    n = conv(n, s->neck2, {}, 1, 1);
    n = layernorm2d(n, s->n3w, s->n3b);
    at::Tensor x1 = conv(n, s->out_w, s->out_b, 1, 0).to(s->W2.scalar_type());
    prof.mark("neck");
    at::Tensor y = at::conv_transpose2d(x1, s->W2, {}, s->info.patch);
    prof.mark("upsample");
    prof.report();
    return y;
}

// The BLAS behind libtorch's Linear layers keeps its own thread pool (Debian
// installs OpenBLAS's pthread build), sized to every core and spinning in
// sched_yield between calls. Its size follows the model's thread count, so
// that `cpseg -j 2 --threads 1` runs two single-threaded images rather than
// two images fighting spinning BLAS workers (measured: 1.6 s of sys time on
// one 256x256 image). Looked up at run time: netlib BLAS has no pool.
void set_blas_threads(int n)
{
    using fn = void (*)(int);
    static const fn f = reinterpret_cast<fn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
    if (f)
        f(n);
}

// libtorch and libcellpose's own loops share one OpenMP runtime: the
// caller's OpenMP setting is restored when the network is done.
struct OmpRestore {
    int prev = omp_get_max_threads();
    ~OmpRestore()
    {
        if (omp_get_max_threads() != prev)
            omp_set_num_threads(prev);
    }
};

// Intra-op threads (building, training, the GPU path, the bench helper).
struct ThreadScope : OmpRestore {
    explicit ThreadScope(int n)
    {
        if (at::get_num_threads() != n)
            at::set_num_threads(n);
        set_blas_threads(n);
    }
};

// Cores this process may run on (taskset / cgroup cpusets), not all online ones.
int nproc()
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set);
    unsigned n = std::thread::hardware_concurrency();
    return n ? (int)n : 1;
}

}  // namespace

static int shim_create(const cp_weights *w, cp_model_info *info,
                       const cp_model_opts *opts, const char *path, cp_shim **out)
{
    *out = nullptr;
    cp_shim *s = nullptr;
    try {
        s = new cp_shim();
        s->path = path;
        if (opts->device == CP_DEVICE_CUDA) {
            if (!torch::cuda::is_available()) {
                delete s;
                return host->error(CP_EUNSUPPORTED, "%s: CUDA requested but this libtorch has no usable "
                                   "CUDA device", path);
            }
            s->dev = at::Device(at::kCUDA);
        }
        install_allocator();
        s->threads = opts->threads > 0 ? opts->threads : nproc();
        if (opts->precision == CP_PRECISION_BF16)
            s->dtype = at::kBFloat16;
        ThreadScope ts(s->threads);
        c10::InferenceMode guard;
        info->precision = opts->precision;
        info->precision_note[0] = 0;
        if (s->dtype == at::kBFloat16 && s->dev.is_cpu()) {
            try {
                probe_bf16_conv();
            } catch (const std::exception &e) {
                s->dtype = at::kFloat;
                info->precision = CP_PRECISION_FP32;
                std::snprintf(info->precision_note, sizeof info->precision_note,
                              "bf16 unavailable: this CPU cannot run bfloat16 convolutions "
                              "(oneDNN needs AVX-512: %s)", oneline(e).c_str());
            }
        }
        s->info = *info;
        Loader L{w, s->dev, s->dtype};
        if (info->arch == CP_ARCH_CPNET)
            build_cpnet(s, L);
        else
            build_cpsam(s, L);
        *out = s;
        return CP_OK;
    } catch (const std::exception &e) {
        delete s;
        return host->error(CP_EMODEL, "%s: building the network: %s", path, oneline(e).c_str());
    } catch (...) {
        delete s;
        return host->error(CP_EMODEL, "%s: building the network failed", path);
    }
}

namespace {

// One tile (or, on a GPU, a batch) through the network, written straight
// into the caller's buffers (and back to NCHW).
void forward_tiles(const cp_shim *s, const float *in, int64_t m, int64_t ty, int64_t tx, float *out,
                   float *style)
{
    int64_t nchan = s->info.nchan;
    at::Tensor x = at::from_blob(const_cast<float *>(in), {m, nchan, ty, tx}, at::kFloat);
    if (!s->dev.is_cpu())
        x = x.to(s->dev);
    x = x.to(s->dtype);
    at::Tensor y, st;
    if (s->info.arch == CP_ARCH_CPNET) {
        auto r = forward_cpnet(s, x.contiguous(at::MemoryFormat::ChannelsLast));
        y = r.first;
        st = r.second;
    } else {
        y = forward_cpsam(s, x);
    }
    at::from_blob(out, y.sizes(), at::kFloat).copy_(y);
    if (style) {
        if (st.defined())
            at::from_blob(style, st.sizes(), at::kFloat).copy_(st);
        else
            std::memset(style, 0, (size_t)m * (size_t)s->info.nstyle * sizeof(float));
    }
}

// Run on every thread of the tile team before its first tile: libtorch's
// lazy per-thread set-up first (it would otherwise reset the thread count
// later), then one thread for everything this thread calls (ATen, oneDNN,
// OpenBLAS see a sequential caller, exactly as in a one-thread run).
void one_thread_here()
{
    at::internal::lazy_init_num_threads();
    omp_set_num_threads(1);
}

}  // namespace

// On the CPU each tile is computed by one thread from start to end, and
// `threads` tiles run at once. A tile's numbers therefore never depend on the
// thread count: libtorch and its libraries pick kernels, and with them the
// order of floating-point sums, by thread count (ATen runs 1x1 convolutions
// through OpenBLAS on one thread and oneDNN on several; OpenBLAS's Haswell
// and Zen kernels sum differently for each split of a GEMM across threads).
// It also keeps flows independent of the batch size, and one tile at a time
// per thread holds an eighth of a batch's activations.
static int shim_forward(cp_shim *s, const float *in, int n, int ty, int tx, float *out,
                        float *style)
{
    size_t in_sz = (size_t)s->info.nchan * ty * tx, out_sz = (size_t)s->info.nout * ty * tx;
    int nstyle = s->info.nstyle;
    try {
        if (!s->dev.is_cpu()) {
            ThreadScope ts(s->threads);
            c10::InferenceMode guard;
            forward_tiles(s, in, n, ty, tx, out, style);
            return CP_OK;
        }
        OmpRestore keep;
        set_blas_threads(1);
        int team = std::min(s->threads, n);
        std::vector<std::string> err((size_t)n);
#pragma omp parallel num_threads(team)
        {
            one_thread_here();
            c10::InferenceMode guard;
#pragma omp for schedule(dynamic, 1)
            for (int i = 0; i < n; i++) {
                try {
                    forward_tiles(s, in + i * in_sz, 1, ty, tx, out + i * out_sz,
                                  style ? style + (size_t)i * nstyle : nullptr);
                } catch (const std::exception &e) {
                    err[(size_t)i] = oneline(e);
                } catch (...) {
                    err[(size_t)i] = "failed";
                }
            }
        }
        for (const std::string &e : err)
            if (!e.empty())
                return host->error(CP_EMODEL, "%s: forward pass: %s", s->path.c_str(), e.c_str());
        return CP_OK;
    } catch (const std::exception &e) {
        return host->error(CP_EMODEL, "%s: forward pass: %s", s->path.c_str(), oneline(e).c_str());
    } catch (...) {
        return host->error(CP_EMODEL, "%s: forward pass failed", s->path.c_str());
    }
}

static void shim_free(cp_shim *s)
{
    try {
        delete s;
    } catch (...) {
    }
}

static double shim_time_conv(int n, int cin, int cout, int h, int w, int k, int reps,
                             int channels_last, int threads)
{
    try {
        install_allocator();
        ThreadScope ts(threads > 0 ? threads : nproc());
        c10::InferenceMode guard;
        at::Tensor x = at::randn({n, cin, h, w});
        at::Tensor wt = at::randn({cout, cin, k, k});
        if (channels_last) {
            x = x.contiguous(at::MemoryFormat::ChannelsLast);
            wt = wt.contiguous(at::MemoryFormat::ChannelsLast);
        }
        at::Tensor b = at::randn({cout});
        at::conv2d(x, wt, b, 1, k / 2);  // warm-up
        auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < reps; i++)
            at::conv2d(x, wt, b, 1, k / 2);
        auto t1 = std::chrono::steady_clock::now();
        return std::chrono::duration<double>(t1 - t0).count() / reps;
    } catch (...) {
        return -1;
    }
}

// Each round, every thread runs kInner Linear layers back to back (0.5 s of
// sustained work, as a tile's products are, rather than one 0.07 s burst
// that a quiet moment or a turbo step can flatter); the round's time and the
// threads' mean CPU time per Linear count, the best round wins.
static double shim_time_matmul(int m, int k, int n, int reps, int bf16, int threads, double *cpu)
{
    const int kInner = 8;
    *cpu = 1e30;
    try {
        install_allocator();
        OmpRestore keep;
        set_blas_threads(1);
        int team = threads > 0 ? threads : nproc();
        at::ScalarType dt = bf16 ? at::kBFloat16 : at::kFloat;
        double best = 1e30, round_cpu = 0;
        bool failed = false;
#pragma omp parallel num_threads(team)
        {
            one_thread_here();
            c10::InferenceMode guard;
            at::Tensor x, w, b;
            bool ok = true;
            try {
                x = at::randn({m, k}).to(dt), w = at::randn({n, k}).to(dt), b = at::randn({n}).to(dt);
                at::linear(x, w, b);  // warm-up
            } catch (...) {
                ok = false;
            }
            for (int r = 0; r < reps; r++) {
#pragma omp barrier
#pragma omp single
                round_cpu = 0;
                auto t0 = std::chrono::steady_clock::now();
                double c0 = StageProf::now();
                try {
                    for (int i = 0; ok && i < kInner; i++)
                        at::linear(x, w, b);
                } catch (...) {
                    ok = false;
                }
                double c = StageProf::now() - c0;
#pragma omp atomic
                round_cpu += c;
#pragma omp barrier
                double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
#pragma omp critical
                {
                    best = std::min(best, t / kInner);
                    *cpu = std::min(*cpu, round_cpu / team / kInner);
                }
            }
            if (!ok) {
#pragma omp critical
                failed = true;
            }
        }
        return failed ? -1 : best;
    } catch (...) {
        return -1;
    }
}

// ===========================================================================
// Training (cptrain): a CPnet whose tensors live here, trained with autograd.
// Everything below is separate from inference; the forward pass above is
// reused with BN switched to batch statistics.
// ===========================================================================

namespace {

enum Kind { K_CONV_W, K_CONV_B, K_LIN_W, K_LIN_B, K_BN_W, K_BN_B, K_BN_MEAN, K_BN_VAR, K_BN_NBT };

struct Key {
    std::string name;
    std::vector<int64_t> shape;
    Kind kind;
    int64_t fan_in;
};

void key_bn(std::vector<Key> &k, const std::string &p, int64_t c)
{
    k.push_back({p + ".weight", {c}, K_BN_W, 0});
    k.push_back({p + ".bias", {c}, K_BN_B, 0});
    k.push_back({p + ".running_mean", {c}, K_BN_MEAN, 0});
    k.push_back({p + ".running_var", {c}, K_BN_VAR, 0});
    k.push_back({p + ".num_batches_tracked", {}, K_BN_NBT, 0});
}

void key_conv(std::vector<Key> &k, const std::string &p, int64_t cout, int64_t cin, int64_t ks)
{
    k.push_back({p + ".weight", {cout, cin, ks, ks}, K_CONV_W, cin * ks * ks});
    k.push_back({p + ".bias", {cout}, K_CONV_B, cin * ks * ks});
}

// CPnet's state_dict keys in PyTorch's order (diam_mean/diam_labels kept apart).
std::vector<Key> cpnet_keys(const int *nb, int nlevels, int nout)
{
    std::vector<Key> k;
    int L = nlevels - 1;
    for (int n = 0; n < L; n++) {
        std::string p = "downsample.down.res_down_" + std::to_string(n);
        for (int j = 0; j < 4; j++) {
            std::string q = p + ".conv.conv_" + std::to_string(j);
            key_bn(k, q + ".0", j ? nb[n + 1] : nb[n]);
            key_conv(k, q + ".2", nb[n + 1], j ? nb[n + 1] : nb[n], 3);
        }
        key_bn(k, p + ".proj.0", nb[n]);
        key_conv(k, p + ".proj.1", nb[n + 1], nb[n], 1);
    }
    for (int n = 0; n < L; n++) {
        std::string p = "upsample.up.res_up_" + std::to_string(n);
        int64_t uin = n + 2 <= L ? nb[n + 2] : nb[L], uout = nb[n + 1];
        key_bn(k, p + ".conv.conv_0.0", uin);
        key_conv(k, p + ".conv.conv_0.2", uout, uin, 3);
        for (int j = 1; j < 4; j++) {
            std::string q = p + ".conv.conv_" + std::to_string(j);
            key_bn(k, q + ".conv.0", uout);
            key_conv(k, q + ".conv.2", uout, uout, 3);
            k.push_back({q + ".full.weight", {uout, nb[L]}, K_LIN_W, nb[L]});
            k.push_back({q + ".full.bias", {uout}, K_LIN_B, nb[L]});
        }
        key_bn(k, p + ".proj.0", uin);
        key_conv(k, p + ".proj.1", uout, uin, 1);
    }
    key_bn(k, "output.0", nb[1]);
    key_conv(k, "output.2", nout, nb[1], 1);
    return k;
}

struct MapLoader {
    const std::map<std::string, at::Tensor> *m;
    at::Tensor operator()(const std::string &name) const
    {
        auto it = m->find(name);
        if (it == m->end())
            throw std::runtime_error("missing key " + name);
        return it->second;
    }
};

}  // namespace

struct cp_trainer {
    cp_shim net;                       // the graph, aliasing the tensors below
    std::vector<Key> keys;
    std::map<std::string, at::Tensor> t;  // every state_dict tensor
    std::vector<at::Tensor> params;    // trainable, in key order
    std::vector<std::string> pnames;
    std::vector<at::Tensor> m1, m2;    // AdamW moments or SGD momentum (m1)
    int64_t step = 0;
    int sgd = 0;
    double wd = 0;
};

namespace {

void set_train(cp_trainer *T, bool on)
{
    for (ResDown &r : T->net.down) {
        for (BConv &c : r.c)
            c.bn.train = on;
        r.proj.bn.train = on;
    }
    for (ResUp &r : T->net.up) {
        r.c0.bn.train = on;
        for (Style &c : r.c)
            c.conv.bn.train = on;
        r.proj.bn.train = on;
    }
    T->net.head.bn.train = on;
}

// MSE(y[:, :2], 5 flows) / 2 + BCEWithLogits(y[:, 2], cellprob > 0.5), as
// Cellpose 3's _loss_fn_seg; lbl is n x 3 x H x W (cellprob, flowY, flowX).
at::Tensor seg_loss(const at::Tensor &y, const at::Tensor &lbl)
{
    using namespace at::indexing;
    at::Tensor flows = 5.0 * lbl.index({Slice(), Slice(1, 3)});
    at::Tensor loss = at::mse_loss(y.index({Slice(), Slice(0, 2)}), flows) / 2.0;
    at::Tensor prob = (lbl.index({Slice(), 0}) > 0.5).to(y.scalar_type());
    return loss + at::binary_cross_entropy_with_logits(y.index({Slice(), 2}), prob);
}

int fail(const char *what, const std::exception &e)
{
    return host->error(CP_EMODEL, "training: %s: %s", what, oneline(e).c_str());
}

}  // namespace

static int trainer_create(const cp_weights *init, const int *nbase, int nlevels, int nout,
                          uint64_t seed, int threads, int sgd, double weight_decay,
                          cp_trainer **out)
{
    *out = nullptr;
    cp_trainer *T = nullptr;
    try {
        if (nlevels < 2 || nlevels > 8 || nout < 3)
            return host->error(CP_EINVAL, "training: bad network shape (%d levels, %d outputs)", nlevels, nout);
        T = new cp_trainer();
        T->sgd = sgd;
        T->wd = weight_decay;
        T->net.threads = threads > 0 ? threads : nproc();
        at::set_num_threads(T->net.threads);
        T->net.path = "training";
        cp_model_info &info = T->net.info;
        info.arch = CP_ARCH_CPNET;
        info.nchan = nbase[0];
        info.nout = nout;
        info.nlevels = nlevels;
        for (int i = 0; i < nlevels; i++)
            info.nbase[i] = nbase[i];
        T->keys = cpnet_keys(nbase, nlevels, nout);
        at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
        at::NoGradGuard ng;
        for (const Key &k : T->keys) {
            at::Tensor x;
            if (init) {
                const cp_wtensor *w = host->weights_get(init, k.name.c_str());
                if (!w && k.kind == K_BN_NBT) {
                    x = at::zeros({}, at::kLong);
                } else {
                    if (!w)
                        throw std::runtime_error("pretrained weights lack key " + k.name);
                    bool shape_ok = w->ndim == (int)k.shape.size();
                    for (int d = 0; shape_ok && d < w->ndim; d++)
                        shape_ok = w->shape[d] == k.shape[d];
                    if (!shape_ok)
                        throw std::runtime_error("pretrained key " + k.name + " has another shape");
                    bool is_int = k.kind == K_BN_NBT;
                    if ((w->dtype == CP_W_I64) != is_int)
                        throw std::runtime_error("pretrained key " + k.name + " has another type");
                    x = at::from_blob(w->data, k.shape, is_int ? at::kLong : at::kFloat).clone();
                }
            } else {
                double b = k.fan_in > 0 ? 1.0 / std::sqrt((double)k.fan_in) : 0.0;
                switch (k.kind) {
                case K_CONV_W: case K_CONV_B: case K_LIN_W: case K_LIN_B:
                    x = at::empty(k.shape, at::kFloat).uniform_(-b, b, gen);
                    break;
                case K_BN_W: case K_BN_VAR: x = at::ones(k.shape, at::kFloat); break;
                case K_BN_B: case K_BN_MEAN: x = at::zeros(k.shape, at::kFloat); break;
                case K_BN_NBT: x = at::zeros({}, at::kLong); break;
                }
            }
            bool trainable = k.kind != K_BN_MEAN && k.kind != K_BN_VAR && k.kind != K_BN_NBT;
            if (trainable) {
                x.set_requires_grad(true);
                T->params.push_back(x);
                T->pnames.push_back(k.name);
                T->m1.push_back(at::zeros_like(x).set_requires_grad(false));
                T->m2.push_back(sgd ? at::Tensor() : at::zeros_like(x).set_requires_grad(false));
            }
            T->t[k.name] = x;
        }
        build_cpnet(&T->net, MapLoader{&T->t});
        *out = T;
        return CP_OK;
    } catch (const std::exception &e) {
        delete T;
        return fail("building the network", e);
    }
}

static void trainer_free(cp_trainer *T)
{
    try {
        delete T;
    } catch (...) {
    }
}

static int trainer_step(cp_trainer *T, const float *x, const float *lbl, int n, int h, int w,
                        double lr, double *loss_out)
{
    try {
        if (at::get_num_threads() != T->net.threads)
            at::set_num_threads(T->net.threads);
        int64_t nchan = T->net.info.nchan;
        at::Tensor X = at::from_blob(const_cast<float *>(x), {n, nchan, h, w}, at::kFloat);
        at::Tensor Y = at::from_blob(const_cast<float *>(lbl), {n, 3, h, w}, at::kFloat);
        set_train(T, true);
        for (at::Tensor &p : T->params)
            if (p.grad().defined())
                p.mutable_grad().zero_();
        at::Tensor out = forward_cpnet(&T->net, X).first;
        at::Tensor loss = seg_loss(out, Y);
        loss.backward();
        set_train(T, false);
        at::NoGradGuard ng;
        for (const Key &k : T->keys)
            if (k.kind == K_BN_NBT)
                T->t[k.name].add_(1);
        T->step++;
        const double b1 = 0.9, b2 = 0.999, eps = 1e-8, mom = 0.9;
        for (size_t i = 0; i < T->params.size(); i++) {
            at::Tensor &p = T->params[i];
            at::Tensor g = p.grad();
            if (!g.defined())
                continue;
            if (T->sgd) {  // torch.optim.SGD(momentum=0.9, weight_decay)
                if (T->wd != 0)
                    g = g.add(p, T->wd);
                if (T->step == 1)
                    T->m1[i].copy_(g);
                else
                    T->m1[i].mul_(mom).add_(g);
                p.add_(T->m1[i], -lr);
            } else {  // torch.optim.AdamW
                p.mul_(1.0 - lr * T->wd);
                T->m1[i].lerp_(g, 1.0 - b1);
                T->m2[i].mul_(b2).addcmul_(g, g, 1.0 - b2);
                double bc1 = 1.0 - std::pow(b1, (double)T->step);
                double bc2 = 1.0 - std::pow(b2, (double)T->step);
                at::Tensor denom = (T->m2[i].sqrt() / std::sqrt(bc2)).add_(eps);
                p.addcdiv_(T->m1[i], denom, -lr / bc1);
            }
        }
        *loss_out = loss.item<double>();
        return CP_OK;
    } catch (const std::exception &e) {
        set_train(T, false);
        return fail("train step", e);
    }
}

static int trainer_eval(cp_trainer *T, const float *x, const float *lbl, int n, int h, int w,
                        double *loss_out)
{
    try {
        if (at::get_num_threads() != T->net.threads)
            at::set_num_threads(T->net.threads);
        at::NoGradGuard ng;
        int64_t nchan = T->net.info.nchan;
        at::Tensor X = at::from_blob(const_cast<float *>(x), {n, nchan, h, w}, at::kFloat);
        at::Tensor Y = at::from_blob(const_cast<float *>(lbl), {n, 3, h, w}, at::kFloat);
        set_train(T, false);
        *loss_out = seg_loss(forward_cpnet(&T->net, X).first, Y).item<double>();
        return CP_OK;
    } catch (const std::exception &e) {
        return fail("evaluation", e);
    }
}

namespace {

int add_tensor(cp_weights *w, const std::string &name, const at::Tensor &x)
{
    at::Tensor c = x.detach().contiguous();
    std::vector<int64_t> shape(c.sizes().begin(), c.sizes().end());
    bool is_int = c.scalar_type() == at::kLong;
    return host->weights_add(w, name.c_str(), (int)shape.size(), shape.data(), is_int ? CP_W_I64 : CP_W_F32,
                             c.data_ptr());
}

}  // namespace

static int trainer_export(const cp_trainer *T, float diam_mean, float diam_labels, int with_optim,
                          cp_weights *w)
{
    try {
        int64_t one = 1;
        int rc;
        if ((rc = host->weights_add(w, "diam_mean", 1, &one, CP_W_F32, &diam_mean)) ||
            (rc = host->weights_add(w, "diam_labels", 1, &one, CP_W_F32, &diam_labels)))
            return rc;
        for (const Key &k : T->keys)
            if ((rc = add_tensor(w, k.name, T->t.at(k.name))))
                return rc;
        if (!with_optim)
            return CP_OK;
        int64_t step = T->step;
        if ((rc = host->weights_add(w, "optim.step", 0, nullptr, CP_W_I64, &step)))
            return rc;
        for (size_t i = 0; i < T->params.size(); i++) {
            if ((rc = add_tensor(w, "optim.m1." + T->pnames[i], T->m1[i])))
                return rc;
            if (!T->sgd && (rc = add_tensor(w, "optim.m2." + T->pnames[i], T->m2[i])))
                return rc;
        }
        return CP_OK;
    } catch (const std::exception &e) {
        return fail("exporting the weights", e);
    }
}

static int trainer_import_optim(cp_trainer *T, const cp_weights *w, const char *path)
{
    try {
        const cp_wtensor *s = host->weights_get(w, "optim.step");
        if (!s || s->dtype != CP_W_I64 || s->numel != 1)
            return host->error(CP_EFORMAT, "%s: checkpoint lacks optimizer key 'optim.step'", path);
        at::NoGradGuard ng;
        for (size_t i = 0; i < T->params.size(); i++) {
            for (int j = 0; j < (T->sgd ? 1 : 2); j++) {
                std::string name = (j ? "optim.m2." : "optim.m1.") + T->pnames[i];
                const cp_wtensor *t = host->weights_get(w, name.c_str());
                if (!t || t->dtype != CP_W_F32 || (int64_t)t->numel != T->params[i].numel())
                    return host->error(CP_EFORMAT, "%s: checkpoint lacks or mismatches optimizer key '%s' "
                                       "(was it written with the other optimizer?)", path, name.c_str());
                (j ? T->m2[i] : T->m1[i]).copy_(at::from_blob(t->data, T->params[i].sizes(), at::kFloat));
            }
        }
        T->step = *(const int64_t *)s->data;
        return CP_OK;
    } catch (const std::exception &e) {
        return fail("reading the optimizer state", e);
    }
}

// In cp_torch_backend's field order.
static const cp_torch_backend backend = {
    CP_TORCH_ABI,       CP_VERSION_STRING, shim_create,    shim_forward,         shim_free,
    shim_time_conv,     trainer_create,    trainer_step,   trainer_eval,         trainer_export,
    trainer_import_optim, trainer_free,       shim_time_matmul,
};

// The only exported symbol. The host is kept only when it is the libcellpose
// this backend was built with; the loader checks the table's abi and version.
extern "C" __attribute__((visibility("default"))) const cp_torch_backend *
cp_torch_backend_init(const cp_torch_host *h)
{
    if (h && h->abi == CP_TORCH_ABI && h->version && !std::strcmp(h->version, CP_VERSION_STRING))
        host = h;
    return &backend;
}
