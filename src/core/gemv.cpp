// Packed multi-row GEMV (see gemv.h): weight packing per type and lane width, the activation quantisation of q8_0,
// large calls shared with the helper threads of core/task_pool, and the dispatch to the tiles of the chosen ISA.
#include "core/gemv.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/gemv_impl.h"
#include "core/quant.h"
#include "core/task_pool.h"

namespace mtp {

void packed_weight::free_deleter::operator()(void* p) const { std::free(p); }

const char* wtype_name(wtype t) {
    switch (t) {
        case wtype::f32: return "f32";
        case wtype::bf16: return "bf16";
        case wtype::q8_0: return "q8_0";
    }
    return "?";
}

bool wtype_from_name(const std::string& s, wtype& out) {
    if (s == "f32") out = wtype::f32;
    else if (s == "bf16") out = wtype::bf16;
    else if (s == "q8_0") out = wtype::q8_0;
    else return false;
    return true;
}

double wtype_bytes_per_weight(wtype t) {
    return t == wtype::f32 ? 4.0 : t == wtype::bf16 ? 2.0 : 34.0 / 32.0;
}

namespace {

int lanes_of(isa k) { return k == isa::avx2 ? 8 : 16; }   // avx2x2, avx512, avx512bf16, amx: 16
bool amx_bf16(wtype t, isa k) { return t == wtype::bf16 && k == isa::amx; }   // AMX tile layout (gemv_amx.cpp)
bool pairs_bf16(wtype t, isa k) { return t == wtype::bf16 && k == isa::avx512bf16; }   // gemv_avx512bf16.cpp

void alloc_packed(packed_weight& p, int out, int in, wtype t, isa k) {
    if (!isa_supported(k)) fail("gemv", std::string("kernels ") + isa_name(k) + " are not supported by this CPU");
    p.type = t;
    p.kernel = k;
    p.out = out;
    p.in = in;
    p.lanes = amx_bf16(t, k) ? gemv_detail::amx_lanes : lanes_of(k);
    p.panels = (out + p.lanes - 1) / p.lanes;
    p.blocks = (in + q8_block - 1) / q8_block;
    switch (t) {
        case wtype::f32: p.panel_bytes = size_t(in) * p.lanes * sizeof(float); break;
        case wtype::bf16:
            p.panel_bytes = amx_bf16(t, k)     ? gemv_detail::amx_panel_bytes(in)
                            : pairs_bf16(t, k) ? gemv_detail::pairs_panel_bytes(in)
                                               : size_t(in) * p.lanes * sizeof(uint16_t);
            break;
        case wtype::q8_0: p.panel_bytes = size_t(p.blocks) * 34 * p.lanes; break;
    }
    size_t bytes = p.bytes();
    bytes = (bytes + 63) / 64 * 64;
    if (bytes == 0) bytes = 64;
    void* mem = std::aligned_alloc(64, bytes);
    if (!mem) throw std::bad_alloc();
    p.data.reset(static_cast<unsigned char*>(mem));
    std::memset(mem, 0, bytes);
}

// row(o) gives the o-th output's fp32 weights (length in).
template <class Row>
void pack_with(packed_weight& p, int out, int in, wtype t, isa k, Row row) {
    alloc_packed(p, out, in, t, k);
    const int L = p.lanes;
    unsigned char* base = p.data.get();
    std::vector<float> padded(size_t(p.blocks) * q8_block, 0.0f);
    std::vector<uint8_t> blocks(size_t(p.blocks) * 34);
    for (int o = 0; o < out; ++o) {
        const float* r = row(o);
        unsigned char* panel = base + size_t(o / L) * p.panel_bytes;
        const int lane = o % L;
        if (t == wtype::f32) {
            float* dst = reinterpret_cast<float*>(panel) + lane;
            for (int i = 0; i < in; ++i) dst[size_t(i) * L] = r[i];
        } else if (amx_bf16(t, k)) {
            uint16_t* dst = reinterpret_cast<uint16_t*>(panel);
            for (int i = 0; i < in; ++i) dst[gemv_detail::amx_index(lane, i)] = f32_to_bf16(r[i]);
        } else if (pairs_bf16(t, k)) {
            uint16_t* dst = reinterpret_cast<uint16_t*>(panel);
            for (int i = 0; i < in; ++i) dst[gemv_detail::pairs_index(lane, i)] = f32_to_bf16(r[i]);
        } else if (t == wtype::bf16) {
            uint16_t* dst = reinterpret_cast<uint16_t*>(panel) + lane;
            for (int i = 0; i < in; ++i) dst[size_t(i) * L] = f32_to_bf16(r[i]);
        } else {
            std::copy(r, r + in, padded.begin());
            q8_0_quantize_row(padded.data(), int64_t(padded.size()), blocks.data());
            for (int b = 0; b < p.blocks; ++b) {
                const uint8_t* src = blocks.data() + size_t(b) * 34;
                unsigned char* blk = panel + size_t(b) * 34 * L;
                std::memcpy(blk + 2 * lane, src, 2);                                  // fp16 scale
                for (int i = 0; i < q8_block; ++i)                                    // group i/4, lane, byte i%4
                    blk[2 * L + (i / 4) * 4 * L + lane * 4 + (i % 4)] = src[2 + i];
            }
        }
    }
}

} // namespace

void pack_weight(packed_weight& p, const float* w, int out, int in, wtype t, isa k) {
    pack_with(p, out, in, t, k, [&](int o) { return w + size_t(o) * in; });
}

void pack_weight_rows(packed_weight& p, const float* w, const int* rows, int n, int in, wtype t, isa k) {
    pack_with(p, n, in, t, k, [&](int o) { return w + size_t(rows[o]) * in; });
}

void pack_weight_transposed(packed_weight& p, const float* m, int rows, int cols, wtype t, isa k) {
    std::vector<float> col(rows);
    pack_with(p, cols, rows, t, k, [&](int o) {
        for (int i = 0; i < rows; ++i) col[i] = m[size_t(i) * cols + o];
        return col.data();
    });
}

void pack_weight_stacked(packed_weight& p, const std::vector<const float*>& ws, const std::vector<int>& outs, int in,
                         wtype t, isa k) {
    int total = 0;
    for (int o : outs) total += o;
    pack_with(p, total, in, t, k, [&](int o) {
        size_t j = 0;
        while (o >= outs[j]) o -= outs[j++];
        return ws[j] + size_t(o) * in;
    });
}

std::vector<float> unpack_weight(const packed_weight& p) {
    std::vector<float> w(size_t(p.out) * p.in);
    const int L = p.lanes;
    for (int o = 0; o < p.out; ++o) {
        const unsigned char* panel = p.data.get() + size_t(o / L) * p.panel_bytes;
        const int lane = o % L;
        for (int i = 0; i < p.in; ++i) {
            float v;
            if (p.type == wtype::f32) v = reinterpret_cast<const float*>(panel)[size_t(i) * L + lane];
            else if (amx_bf16(p.type, p.kernel))
                v = bf16_to_f32(reinterpret_cast<const uint16_t*>(panel)[gemv_detail::amx_index(lane, i)]);
            else if (pairs_bf16(p.type, p.kernel))
                v = bf16_to_f32(reinterpret_cast<const uint16_t*>(panel)[gemv_detail::pairs_index(lane, i)]);
            else if (p.type == wtype::bf16) v = bf16_to_f32(reinterpret_cast<const uint16_t*>(panel)[size_t(i) * L + lane]);
            else {
                const unsigned char* blk = panel + size_t(i / q8_block) * 34 * L;
                const int j = i % q8_block;
                const float d = f16_to_f32(uint16_t(blk[2 * lane] | (uint16_t(blk[2 * lane + 1]) << 8)));
                v = d * float(int8_t(blk[2 * L + (j / 4) * 4 * L + lane * 4 + (j % 4)]));
            }
            w[size_t(o) * p.in + i] = v;
        }
    }
    return w;
}

void gemv_reference(float* y, size_t ldy, const float* x, size_t ldx, int T, const float* w, int out, int in) {
    for (int t = 0; t < T; ++t)
        for (int o = 0; o < out; ++o) {
            float acc = 0.0f;
            for (int i = 0; i < in; ++i) acc = std::fma(w[size_t(o) * in + i], x[size_t(t) * ldx + i], acc);
            y[size_t(t) * ldy + o] = acc;
        }
}

void gemv_reference_bf16_both(float* y, size_t ldy, const float* x, size_t ldx, int T, const float* w, int out,
                              int in) {
    for (int t = 0; t < T; ++t)
        for (int o = 0; o < out; ++o) {
            float acc = 0.0f;
            for (int i = 0; i < in; ++i)
                acc += bf16_to_f32(f32_to_bf16(w[size_t(o) * in + i])) * bf16_to_f32(f32_to_bf16(x[size_t(t) * ldx + i]));
            y[size_t(t) * ldy + o] = acc;
        }
}

void gemv_reference_typed(wtype t, float* y, size_t ldy, const float* x, size_t ldx, int T, const float* w, int out,
                          int in) {
    if (t == wtype::f32) return gemv_reference(y, ldy, x, ldx, T, w, out, in);
    if (t == wtype::bf16) {
        std::vector<float> wr(size_t(out) * in);
        for (size_t i = 0; i < wr.size(); ++i) wr[i] = bf16_to_f32(f32_to_bf16(w[i]));
        return gemv_reference(y, ldy, x, ldx, T, wr.data(), out, in);
    }
    // q8_0: the block chain over the row's GGUF-layout blocks.
    const int nb = (in + q8_block - 1) / q8_block;
    std::vector<float> padded(size_t(nb) * q8_block);
    std::vector<uint8_t> wq(size_t(out) * nb * 34);
    for (int o = 0; o < out; ++o) {
        std::fill(padded.begin(), padded.end(), 0.0f);
        std::copy(w + size_t(o) * in, w + size_t(o + 1) * in, padded.begin());
        q8_0_quantize_row(padded.data(), int64_t(padded.size()), wq.data() + size_t(o) * nb * 34);
    }
    std::vector<int8_t> xq(size_t(nb) * q8_block);
    std::vector<float> xd(nb);
    for (int tt = 0; tt < T; ++tt) {
        q8_act_quantize(x + size_t(tt) * ldx, in, xq.data(), xd.data());
        for (int o = 0; o < out; ++o) {
            float acc = 0.0f;
            for (int b = 0; b < nb; ++b) {
                const uint8_t* blk = wq.data() + (size_t(o) * nb + b) * 34;
                const float dw = f16_to_f32(uint16_t(blk[0] | (uint16_t(blk[1]) << 8)));
                int32_t isum = 0;
                for (int i = 0; i < q8_block; ++i) isum += int32_t(int8_t(blk[2 + i])) * xq[size_t(b) * q8_block + i];
                acc = std::fma(float(isum), dw * xd[b], acc);
            }
            y[size_t(tt) * ldy + o] = acc;
        }
    }
}

namespace {

gemv_detail::plan plan_for(isa k, const gemv_detail::args& a) {
    switch (k) {
        case isa::avx2: return gemv_detail::plan_avx2(a);
        case isa::avx2x2: return gemv_detail::plan_avx2x2(a);
        case isa::avx512:
#ifdef MTP_HAVE_AVX512_KERNELS
            return gemv_detail::plan_avx512(a);
#else
            break;
#endif
        case isa::avx512bf16:
#if defined(MTP_HAVE_AVX512BF16_KERNELS) && defined(MTP_HAVE_AVX512_KERNELS)
            return a.type == wtype::bf16 ? gemv_detail::plan_avx512bf16(a) : gemv_detail::plan_avx512(a);
#else
            break;
#endif
        case isa::amx:
#if defined(MTP_HAVE_AMX_KERNELS) && defined(MTP_HAVE_AVX512_KERNELS)
            return a.type == wtype::bf16 ? gemv_detail::plan_amx(a) : gemv_detail::plan_avx512(a);
#else
            break;
#endif
    }
    fail("gemv", std::string("no kernels for ") + isa_name(k));
}

// Runs a prepared call of at most max_rows_per_call rows: tiles on the calling thread, or shared with helper
// threads when the call is large.
void run_rows(const gemv_detail::args& a0, isa k) {
    constexpr int min_tiles = 8;                             // fewer: not worth a hand-off (or too uneven)
    const gemv_detail::plan pl = plan_for(k, a0);
    const int panels = (a0.out + a0.lanes - 1) / a0.lanes;
    const int threads = task_helpers() + 1;                  // 1 inside a task or an OpenMP team
    const bool big = size_t(a0.out) * a0.in * size_t(a0.T) >= (size_t(1) << 17);
    gemv_detail::args a = a0;
    a.pb = pl.pb;
    // A large call whose outputs make fewer than min_tiles of the kernel's tiles (e.g. d = 384 outputs at 8 x 16
    // per tile: 3 tiles) would run on one thread; narrower tiles share it out instead.
    if (threads > 1 && big && pl.narrows && (panels + a.pb - 1) / a.pb < min_tiles)
        a.pb = std::max(1, std::min(pl.pb, panels / min_tiles));
    const int n_tiles = (panels + a.pb - 1) / a.pb;
    if (threads <= 1 || !big || n_tiles < min_tiles) {
        pl.run(a, 0, n_tiles);
        return;
    }
    struct job {
        const gemv_detail::args* a;
        void (*run)(const gemv_detail::args&, int, int);
        int chunk, n_tiles;
    } jb{&a, pl.run, std::max(1, n_tiles / (6 * threads)), n_tiles};
    const int n_tasks = (n_tiles + jb.chunk - 1) / jb.chunk;
    run_tasks(n_tasks, [](void* c, int task) {
        const job& j = *static_cast<const job*>(c);
        j.run(*j.a, task * j.chunk, std::min(j.n_tiles, (task + 1) * j.chunk));
    }, &jb, threads - 1);
}

constexpr int max_rows_per_call = 128;     // more rows are done in chunks (the kernels are for few rows);
                                           // a multiple of 16 (the AMX row tiles)

void run_args(const gemv_detail::args& a, isa k) {
    for (int t0 = 0; t0 < a.T; t0 += max_rows_per_call) {
        gemv_detail::args c = a;
        c.T = std::min(max_rows_per_call, a.T - t0);
        c.y += size_t(t0) * a.ldy;
        if (a.x) c.x += size_t(t0) * a.ldx;
        if (a.xq) c.xq += size_t(t0) * a.blocks * q8_block;
        if (a.xd) c.xd += size_t(t0) * a.blocks;
        if (a.xt && k == isa::avx512bf16) c.xt += size_t(t0) * ((a.in + 1) / 2) * 2;
        else if (a.xt) c.xt += size_t(t0 / 16) * ((a.in + 31) / 32) * 512;     // amx; t0 is a multiple of 16
        run_rows(c, k);
    }
}

} // namespace

void gemv_packed(float* y, size_t ldy, const float* x, size_t ldx, int T, const packed_weight& p) {
    if (T <= 0 || p.out <= 0) return;
    gemv_detail::args a{};
    a.y = y;
    a.ldy = ldy;
    a.x = x;
    a.ldx = ldx;
    a.T = T;
    a.type = p.type;
    a.w = p.data.get();
    a.out = p.out;
    a.in = p.in;
    a.lanes = p.lanes;
    a.blocks = p.blocks;
    if (p.type == wtype::q8_0) {
        // Per-thread scratch: the rows' codes and scales (the same function as the reference quantises with).
        thread_local std::vector<int8_t> xq;
        thread_local std::vector<float> xd;
        xq.resize(size_t(T) * p.blocks * q8_block);
        xd.resize(size_t(T) * p.blocks);
        for (int t = 0; t < T; ++t)
            q8_act_quantize(x + size_t(t) * ldx, p.in, xq.data() + size_t(t) * p.blocks * q8_block,
                            xd.data() + size_t(t) * p.blocks);
        a.xq = xq.data();
        a.xd = xd.data();
        a.pstride = p.panel_bytes;
    } else if (amx_bf16(p.type, p.kernel)) {
        // The rows rounded to bf16 once per call, as AMX A tiles (zero rows and inputs pad them), shared by the tasks.
        thread_local std::vector<uint16_t> xt;
        const size_t need = size_t((T + 15) / 16) * ((p.in + 31) / 32) * 512;
        if (xt.size() < need) xt.resize(need);
#ifdef MTP_HAVE_AMX_KERNELS
        gemv_detail::amx_pack_rows(xt.data(), x, ldx, T, p.in);
#endif
        a.xt = xt.data();
        a.pstride = p.panel_bytes;                               // bytes per panel of 32 outputs
    } else if (pairs_bf16(p.type, p.kernel)) {
        thread_local std::vector<uint16_t> xp;                   // the rows as bf16 pairs, once per call
        const size_t need = size_t(T) * ((p.in + 1) / 2) * 2;
        if (xp.size() < need) xp.resize(need);
#ifdef MTP_HAVE_AVX512BF16_KERNELS
        gemv_detail::avx512bf16_pack_rows(xp.data(), x, ldx, T, p.in);
#endif
        a.xt = xp.data();
    } else {
        a.pstride = size_t(p.in) * p.lanes;
        a.istride = size_t(p.lanes);
    }
    run_args(a, p.kernel);
}

void gemv_panels(float* y, size_t ldy, const float* x, size_t ldx, int T, const float* W, int out, int in,
                 size_t pstride, size_t istride, int lanes) {
    if (lanes != 8 && lanes != 16) fail("gemv_panels", "lanes must be 8 or 16, got " + std::to_string(lanes));
    if (T <= 0 || out <= 0) return;
    gemv_detail::args a{};
    a.y = y;
    a.ldy = ldy;
    a.x = x;
    a.ldx = ldx;
    a.T = T;
    a.type = wtype::f32;
    a.w = W;
    a.out = out;
    a.in = in;
    a.lanes = lanes;
    a.pstride = pstride;
    a.istride = istride;
    run_args(a, lanes == 8 ? isa::avx2 : isa_active() == isa::avx2 ? isa::avx2x2 : isa_active());
}

} // namespace mtp
