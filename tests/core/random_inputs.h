// Standard-normal test inputs from the project's rng (identical on every machine), for the kernel tests.
#pragma once
#include <cstdint>
#include <vector>

#include "core/rng.h"

namespace mtp::test {

inline std::vector<float> randn(size_t n, uint64_t seed) {
    rng r(seed);
    std::vector<float> v(n);
    for (auto& x : v) x = float(r.normal());
    return v;
}

} // namespace mtp::test
