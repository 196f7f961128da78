// Tests the bump arena: 64-byte alignment, mark/rewind/reset reuse, no heap allocation after the first training step.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/arena.h"
#include "model/config.h"
#include "model/model.h"
#include "model/weights.h"

namespace {

using namespace mtp;

bool aligned64(const void* p) { return reinterpret_cast<uintptr_t>(p) % 64 == 0; }

TEST(ArenaAlloc, EveryAllocationIs64ByteAlignedAndDisjoint) {
    arena a;
    a.min_block = 256;                                      // small blocks: several of them get used
    std::vector<std::pair<float*, size_t>> got;
    for (size_t n : {1, 3, 15, 16, 17, 31, 100, 255, 256, 257, 1000, 7, 64}) {
        float* p = a.alloc(n);
        ASSERT_NE(p, nullptr);
        EXPECT_TRUE(aligned64(p)) << "n=" << n;
        for (size_t i = 0; i < n; ++i) p[i] = float(n);     // writable over its whole length
        got.push_back({p, n});
        int* q = a.alloc_int(n);
        EXPECT_TRUE(aligned64(q)) << "int n=" << n;
        got.push_back({reinterpret_cast<float*>(q), n});
    }
    for (size_t i = 0; i < got.size(); ++i)
        for (size_t j = i + 1; j < got.size(); ++j) {
            const float *p = got[i].first, *q = got[j].first;
            EXPECT_TRUE(p + got[i].second <= q || q + got[j].second <= p) << "allocations " << i << ", " << j << " overlap";
        }
    EXPECT_GT(a.blocks.size(), 1u);                         // 2 × Σn = 4044 floats (+ alignment) ≫ min_block 256
    EXPECT_EQ(a.n_heap_allocs, a.blocks.size());
}

TEST(ArenaAlloc, AllocZeroClearsReusedMemory) {
    arena a;
    auto m = a.mark();
    float* p = a.alloc(100);
    for (int i = 0; i < 100; ++i) p[i] = 1e30f;
    a.rewind(m);
    float* z = a.alloc_zero(100);
    EXPECT_EQ(z, p);
    for (int i = 0; i < 100; ++i) EXPECT_EQ(z[i], 0.0f);
}

TEST(ArenaAlloc, MarkRewindAndResetReuseTheSameMemory) {
    arena a;
    a.min_block = 1024;
    float* base = a.alloc(10);
    auto m = a.mark();
    float* p1 = a.alloc(500);
    float* p2 = a.alloc(900);                               // does not fit: a second block
    float* p3 = a.alloc(5000);                              // larger than min_block: its own block
    const size_t heap = a.n_heap_allocs;
    EXPECT_EQ(heap, 3u);                                    // block 1: base + p1; block 2: p2; block 3: p3
    a.rewind(m);
    EXPECT_EQ(a.alloc(500), p1);
    EXPECT_EQ(a.alloc(900), p2);
    EXPECT_EQ(a.alloc(5000), p3);
    EXPECT_EQ(a.n_heap_allocs, heap);
    a.rewind(m);                                            // a different, smaller sequence reuses without growing
    for (int i = 0; i < 20; ++i) a.alloc(100);
    EXPECT_EQ(a.n_heap_allocs, heap);
    a.reset();
    EXPECT_EQ(a.alloc(10), base);
    EXPECT_EQ(a.alloc(500), p1);
    EXPECT_EQ(a.alloc(900), p2);
    EXPECT_EQ(a.alloc(5000), p3);
    EXPECT_EQ(a.n_heap_allocs, heap);
}

// A training step: MoE layers, D = 2 MTP modules, the balance loss; forward + backward on one arena.
TEST(ArenaTraining, NoHeapAllocationAfterTheFirstStep) {
    nlohmann::json j{{"vocab_size", 37},       {"hidden_size", 32},         {"num_hidden_layers", 2},
                     {"num_attention_heads", 2}, {"intermediate_size", 48},   {"moe_intermediate_size", 8},
                     {"n_routed_experts", 8},   {"num_experts_per_tok", 2},  {"n_shared_experts", 1},
                     {"n_group", 4},            {"topk_group", 2},           {"first_k_dense_replace", 1},
                     {"q_lora_rank", 16},       {"kv_lora_rank", 12},        {"qk_nope_head_dim", 8},
                     {"qk_rope_head_dim", 4},   {"v_head_dim", 8},           {"num_nextn_predict_layers", 2},
                     {"initializer_range", 0.1}};
    const model_config c = config_from_json(j, "arena_test config");
    const model_layout L = layout_build(c);
    std::vector<float> W;
    weights_init(c, L, W, 5);
    std::vector<int> tokens(24);
    for (size_t t = 0; t < tokens.size(); ++t) tokens[t] = int((t * 7 + 3) % 37);

    for (size_t min_block : {size_t(1) << 22, size_t(2048)}) {   // default blocks, and many small ones
        arena a;
        a.min_block = min_block;
        model_state s;
        std::vector<float> G(W.size());
        size_t heap_after_first = 0;
        double loss_first = 0;
        std::vector<float> g_first;
        for (int step = 0; step < 3; ++step) {
            a.reset();
            std::fill(G.begin(), G.end(), 0.0f);
            std::vector<double> load;
            model_forward(c, L, W.data(), s, tokens.data(), int(tokens.size()), 1e-3f, a, &load);
            loss_stats ls = model_backward(c, L, W.data(), G.data(), s, 0.3f, 1e-3f, 1.0f, a);
            if (step == 0) {
                heap_after_first = a.n_heap_allocs;
                loss_first = ls.total;
                g_first = G;
                EXPECT_GT(heap_after_first, 0u);
                if (min_block < 1e6) {
                    EXPECT_GT(a.blocks.size(), 1u) << "small blocks should need several";
                }
            } else {
                EXPECT_EQ(a.n_heap_allocs, heap_after_first) << "step " << step << ", min_block " << min_block;
                EXPECT_EQ(ls.total, loss_first) << "same step, same loss";
                EXPECT_EQ(0, std::memcmp(G.data(), g_first.data(), G.size() * sizeof(float))) << "same gradient";
            }
        }
    }
}

} // namespace
