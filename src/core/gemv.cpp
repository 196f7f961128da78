// Packed multi-row GEMV kernels (see gemv.h): weight packing, AVX2/FMA register-blocked tiles, helper threads.
#include "core/gemv.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#include <omp.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MTP_GEMV_AVX2 1
#endif

namespace mtp {

void packed_weight::free_deleter::operator()(float* p) const { std::free(p); }

namespace {

constexpr int lanes = 8;

// Tiles of >= 2 rows prefetch the next tile (they have load-port slack; 1-row tiles are load-bound and the hardware
// prefetcher serves their 8 streams about as well).
constexpr int prefetch_min_rows = 2;

void alloc_packed(packed_weight& p, int out, int in) {
    p.out = out;
    p.in = in;
    p.panels = (out + lanes - 1) / lanes;
    size_t bytes = size_t(p.panels) * in * lanes * sizeof(float);
    bytes = (bytes + 63) / 64 * 64;
    if (bytes == 0) bytes = 64;
    void* mem = std::aligned_alloc(64, bytes);
    if (!mem) throw std::bad_alloc();
    p.data.reset(static_cast<float*>(mem));
    std::memset(mem, 0, bytes);
}

// row(o) gives the o-th output's weights (length in).
template <class Row>
void pack_with(packed_weight& p, int out, int in, Row row) {
    alloc_packed(p, out, in);
    for (int o = 0; o < out; ++o) {
        const float* r = row(o);
        float* dst = p.data.get() + size_t(o / lanes) * in * lanes + (o % lanes);
        for (int i = 0; i < in; ++i) dst[size_t(i) * lanes] = r[i];
    }
}

#ifdef MTP_GEMV_AVX2
// RB rows x PB panels. x rows at x + r*ldx, panel q at w + q*in*8, outputs [o0, o0 + 8*PB) of which `valid` exist.
template <int RB, int PB>
void tile(float* y, size_t ldy, const float* x, size_t ldx, const float* w, int in, size_t pstride, size_t istride,
          int o0, int valid, const float* next) {
    // The accumulators are written out once after the loop (through `res`), so the compiler keeps them in registers
    // for the whole loop (with the stores inside the loop nest it spilled them on every iteration). Live registers:
    // RB*PB accumulators plus either RB broadcasts or PB weight vectors, whichever is fewer (<= 16 ymm).
    __m256 acc[RB][PB];
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r)
#pragma GCC unroll 8
        for (int q = 0; q < PB; ++q) acc[r][q] = _mm256_setzero_ps();
    for (int i = 0; i < in; ++i) {
        // Software prefetch of the next tile into L2, in step with this one (one line per panel every two i when
        // istride = 8), so that its weights stream in from L3 / DRAM while this tile computes.
        if (next && (i & 1) == 0)
#pragma GCC unroll 8
            for (int q = 0; q < PB; ++q) _mm_prefetch(reinterpret_cast<const char*>(next + q * pstride + size_t(i) * istride), _MM_HINT_T1);
        if constexpr (RB <= PB) {
            __m256 xb[RB];
#pragma GCC unroll 8
            for (int r = 0; r < RB; ++r) xb[r] = _mm256_broadcast_ss(x + size_t(r) * ldx + i);
#pragma GCC unroll 8
            for (int q = 0; q < PB; ++q) {
                const __m256 wv = _mm256_loadu_ps(w + q * pstride + size_t(i) * istride);
#pragma GCC unroll 8
                for (int r = 0; r < RB; ++r) acc[r][q] = _mm256_fmadd_ps(wv, xb[r], acc[r][q]);
            }
        } else {
            __m256 wv[PB];
#pragma GCC unroll 8
            for (int q = 0; q < PB; ++q) wv[q] = _mm256_loadu_ps(w + q * pstride + size_t(i) * istride);
#pragma GCC unroll 8
            for (int r = 0; r < RB; ++r) {
                const __m256 xb = _mm256_broadcast_ss(x + size_t(r) * ldx + i);
#pragma GCC unroll 8
                for (int q = 0; q < PB; ++q) acc[r][q] = _mm256_fmadd_ps(wv[q], xb, acc[r][q]);
            }
        }
    }
    alignas(32) float res[RB][PB][lanes];
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r)
#pragma GCC unroll 8
        for (int q = 0; q < PB; ++q) _mm256_store_ps(res[r][q], acc[r][q]);
    for (int r = 0; r < RB; ++r) {
        float* yr = y + size_t(r) * ldy + o0;
        for (int q = 0; q < PB; ++q) {
            const int n = valid - q * lanes;
            if (n >= lanes) std::memcpy(yr + q * lanes, res[r][q], sizeof(float) * lanes);
            else if (n > 0) std::memcpy(yr + q * lanes, res[r][q], sizeof(float) * size_t(n));
        }
    }
}

using tile_fn = void (*)(float*, size_t, const float*, size_t, const float*, int, size_t, size_t, int, int,
                         const float*);

// Tile for rb rows x pb panels (pb <= the widest tile used with rb rows).
tile_fn pick(int rb, int pb) {
    switch (rb) {
        case 1:
            switch (pb) {
                case 1: return tile<1, 1>; case 2: return tile<1, 2>; case 3: return tile<1, 3>;
                case 4: return tile<1, 4>; case 5: return tile<1, 5>; case 6: return tile<1, 6>;
                case 7: return tile<1, 7>; default: return tile<1, 8>;
            }
        case 2:
            switch (pb) {
                case 1: return tile<2, 1>; case 2: return tile<2, 2>; case 3: return tile<2, 3>;
                case 4: return tile<2, 4>; case 5: return tile<2, 5>; default: return tile<2, 6>;
            }
        case 3:
            switch (pb) {
                case 1: return tile<3, 1>; case 2: return tile<3, 2>; case 3: return tile<3, 3>;
                default: return tile<3, 4>;
            }
        default:
            switch (pb) {
                case 1: return tile<4, 1>; case 2: return tile<4, 2>; default: return tile<4, 3>;
            }
    }
}
#endif

// ---------------------------------------------------------------------------------------------------------------
// Helper threads for the large GEMVs. Not an OpenMP team: the calling thread claims tasks from an atomic counter
// together with the helpers and only waits for tasks a helper has actually started, so a helper that the OS has
// descheduled (a machine shared with other jobs) costs nothing instead of stalling a fork/join barrier for a time
// slice. Helpers spin briefly after each job (decode issues GEMVs microseconds apart), then sleep.
class helper_pool {
public:
    static helper_pool& get() {
        static helper_pool* p = new helper_pool();                 // never destroyed: helpers are detached
        return *p;
    }

    // fn(ctx, task) for task in [0, n) on the calling thread and up to `helpers` helper threads.
    void run(int n, int helpers, void (*fn)(void*, int), void* ctx) {
        std::lock_guard<std::mutex> one(run_mu_);                   // one job at a time
        while (int(threads_.size()) < helpers) {
            const int id = int(threads_.size());
            threads_.emplace_back([this, id] { work(id); });
            threads_.back().detach();
        }
        const uint64_t gen = (state_.load() >> 32) + 1;
        n_.store(n);
        fn_.store(fn);
        ctx_.store(ctx);
        done_.store(0);
        want_.store(helpers);
        state_.store(gen << 32);                                      // publish: task 0 of job `gen`
        if (sleeping_.load() > 0) {
            { std::lock_guard<std::mutex> lk(mu_); }
            cv_.notify_all();
        }
        claim(gen);
        while (done_.load() < n) cpu_relax();
        state_.store((gen << 32) | closed);                           // no stale claim can succeed any more
    }

private:
    static constexpr uint64_t closed = 0xffffffffu;

    static void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }

    // Claims and runs tasks of job `gen` until none is left.
    void claim(uint64_t gen) {
        for (;;) {
            uint64_t s = state_.load();
            if ((s >> 32) != gen) return;
            const uint64_t idx = s & closed;
            if (idx >= uint64_t(n_.load())) return;
            if (!state_.compare_exchange_weak(s, s + 1)) continue;
            // A successful claim means job `gen` is still open, so fn_/ctx_ are its own.
            fn_.load()(ctx_.load(), int(idx));
            done_.fetch_add(1);
        }
    }

    void work(int id) {
        uint64_t seen = state_.load() >> 32;
        for (;;) {
            // Wait for a new job: spin ~200 µs, then sleep.
            const auto t0 = std::chrono::steady_clock::now();
            int spins = 0;
            while ((state_.load() >> 32) == seen) {
                cpu_relax();
                if (++spins % 256 == 0 && std::chrono::steady_clock::now() - t0 > std::chrono::microseconds(200)) {
                    std::unique_lock<std::mutex> lk(mu_);
                    sleeping_.fetch_add(1);
                    cv_.wait(lk, [&] { return (state_.load() >> 32) != seen; });
                    sleeping_.fetch_sub(1);
                }
            }
            seen = state_.load() >> 32;
            if (id < want_.load()) claim(seen);
        }
    }

    std::mutex run_mu_, mu_;
    std::condition_variable cv_;
    std::vector<std::thread> threads_;
    std::atomic<uint64_t> state_{closed};                             // job generation << 32 | next task
    std::atomic<int> n_{0}, done_{0}, want_{0}, sleeping_{0};
    std::atomic<void (*)(void*, int)> fn_{nullptr};
    std::atomic<void*> ctx_{nullptr};
};

} // namespace

void pack_weight(packed_weight& p, const float* w, int out, int in) {
    pack_with(p, out, in, [&](int o) { return w + size_t(o) * in; });
}

void pack_weight_rows(packed_weight& p, const float* w, const int* rows, int n, int in) {
    pack_with(p, n, in, [&](int o) { return w + size_t(rows[o]) * in; });
}

void pack_weight_transposed(packed_weight& p, const float* m, int rows, int cols) {
    alloc_packed(p, cols, rows);
    for (int o = 0; o < cols; ++o) {
        float* dst = p.data.get() + size_t(o / lanes) * rows * lanes + (o % lanes);
        for (int i = 0; i < rows; ++i) dst[size_t(i) * lanes] = m[size_t(i) * cols + o];
    }
}

void pack_weight_stacked(packed_weight& p, const std::vector<const float*>& ws, const std::vector<int>& outs, int in) {
    int total = 0;
    for (int o : outs) total += o;
    pack_with(p, total, in, [&](int o) {
        size_t k = 0;
        while (o >= outs[k]) o -= outs[k++];
        return ws[k] + size_t(o) * in;
    });
}

void gemv_reference(float* y, size_t ldy, const float* x, size_t ldx, int T, const float* w, int out, int in) {
    for (int t = 0; t < T; ++t)
        for (int o = 0; o < out; ++o) {
            float acc = 0.0f;
            for (int i = 0; i < in; ++i) acc = std::fma(w[size_t(o) * in + i], x[size_t(t) * ldx + i], acc);
            y[size_t(t) * ldy + o] = acc;
        }
}

void gemv_packed(float* y, size_t ldy, const float* x, size_t ldx, int T, const packed_weight& p) {
    gemv_panels(y, ldy, x, ldx, T, p.data.get(), p.out, p.in, size_t(p.in) * lanes, lanes);
}

void gemv_panels(float* y, size_t ldy, const float* x, size_t ldx, int T, const float* W, int out, int in,
                 size_t pstride, size_t istride) {
    if (T <= 0 || out <= 0) return;
    const int panels = (out + lanes - 1) / lanes;
#ifdef MTP_GEMV_AVX2
    // Tile shapes (rows x panels of 8 outputs), 8-12 accumulators each: T = 1: 1 x 8; 2: 2 x 6; 3: 3 x 4;
    // 4: 4 x 3; more rows: blocks of 3 (and 2) rows x 4 panels, never a lone row (a 1 x 4 tile has too few
    // independent FMA chains to hide the latency).
    if (T > 128) {                                  // many rows: chunks of 128 (the kernel is for few rows)
        for (int t0 = 0; t0 < T; t0 += 128)
            gemv_panels(y + size_t(t0) * ldy, ldy, x + size_t(t0) * ldx, ldx, T - t0 < 128 ? T - t0 : 128, W, out, in,
                        pstride, istride);
        return;
    }
    const int PB = T == 1 ? 8 : T == 2 ? 6 : T == 4 ? 3 : 4;
    int blocks[64], nb = 0;
    if (T <= 4) {
        blocks[nb++] = T;
    } else {
        int left = T;
        while (left > 4) { blocks[nb++] = 3; left -= 3; }
        if (left == 4) { blocks[nb++] = 2; blocks[nb++] = 2; }
        else blocks[nb++] = left;
    }
    const int n_tiles = (panels + PB - 1) / PB;
    // Tiles [t0, t1): prefetching the next tile only inside the range (another thread may take the one after).
    auto tiles = [&](int t0, int t1) {
        for (int tI = t0; tI < t1; ++tI) {
            const int q0 = tI * PB, pb = q0 + PB <= panels ? PB : panels - q0;
            const int o0 = q0 * lanes, valid = out - o0;
            const float* wt = W + size_t(q0) * pstride;
            const float* next = T >= prefetch_min_rows && tI + 1 < t1 ? wt + size_t(PB) * pstride : nullptr;
            int t = 0;
            for (int b = 0; b < nb; ++b) {
                pick(blocks[b], pb)(y + size_t(t) * ldy, ldy, x + size_t(t) * ldx, ldx, wt, in, pstride, istride, o0,
                                    valid, b == 0 ? next : nullptr);
                t += blocks[b];
            }
        }
    };
    const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
    if (threads <= 1 || size_t(out) * in * size_t(T) < (size_t(1) << 17) || n_tiles < 8) {
        tiles(0, n_tiles);
        return;
    }
    struct job {
        decltype(tiles)* f;
        int chunk, n_tiles;
    } jb{&tiles, std::max(1, n_tiles / (6 * threads)), n_tiles};
    const int n_tasks = (n_tiles + jb.chunk - 1) / jb.chunk;
    helper_pool::get().run(n_tasks, threads - 1, [](void* c, int task) {
        const job& j = *static_cast<const job*>(c);
        (*j.f)(task * j.chunk, std::min(j.n_tiles, (task + 1) * j.chunk));
    }, &jb);
#else
    // Portable path: the same fma chains.
    for (int t = 0; t < T; ++t)
        for (int o = 0; o < out; ++o) {
            const float* wc = W + size_t(o / lanes) * pstride + (o % lanes);
            float acc = 0.0f;
            for (int i = 0; i < in; ++i) acc = std::fma(wc[size_t(i) * istride], x[size_t(t) * ldx + i], acc);
            y[size_t(t) * ldy + o] = acc;
        }
#endif
}

} // namespace mtp
