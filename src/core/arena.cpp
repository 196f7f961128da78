// Bump allocator implementation: blocks are kept across reset() so steady-state steps allocate nothing.
#include "core/arena.h"

#include <cstring>
#include <new>

namespace mtp {

float* arena::alloc(size_t n) {
    n = (n + 15) & ~size_t(15);                         // keep every allocation 64-byte aligned
    while (cur < blocks.size()) {
        if (used + n <= blocks[cur].cap) {
            float* p = blocks[cur].data.get() + used;
            used += n;
            return p;
        }
        ++cur;
        used = 0;
    }
    size_t cap = n > min_block ? n : min_block;
    block b;
    b.data.reset(static_cast<float*>(std::aligned_alloc(64, cap * sizeof(float))));
    if (!b.data) throw std::bad_alloc();
    b.cap = cap;
    blocks.push_back(std::move(b));
    ++n_heap_allocs;
    cur = blocks.size() - 1;
    used = n;
    return blocks[cur].data.get();
}

float* arena::alloc_zero(size_t n) {
    float* p = alloc(n);
    std::memset(p, 0, n * sizeof(float));
    return p;
}

} // namespace mtp
