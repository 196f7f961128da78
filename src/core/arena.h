// Bump allocator for activations and scratch: reset once per step, so a training step does no heap churn.
#pragma once
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <vector>

namespace mtp {

struct arena {
    struct free_deleter { void operator()(float* p) const { std::free(p); } };
    struct block { std::unique_ptr<float[], free_deleter> data; size_t cap = 0; };
    struct mark_t { size_t block = 0, used = 0; };

    std::vector<block> blocks;
    size_t cur = 0;          // block being filled
    size_t used = 0;         // floats used in blocks[cur]
    size_t n_heap_allocs = 0;
    size_t min_block = size_t(1) << 22;   // floats (16 MiB)

    // Returns n floats, 64-byte aligned, uninitialised; valid until reset() or rewind() past it.
    float* alloc(size_t n);
    float* alloc_zero(size_t n);
    int* alloc_int(size_t n) { return reinterpret_cast<int*>(alloc(n)); }
    mark_t mark() const { return {cur, used}; }
    void rewind(mark_t m) { cur = m.block; used = m.used; }
    void reset() { cur = 0; used = 0; }
};

} // namespace mtp
