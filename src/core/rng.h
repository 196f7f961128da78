// Deterministic random numbers (xoshiro256** + Box-Muller), identical on every machine and thread count.
#pragma once
#include <cmath>
#include <cstdint>

namespace mtp {

struct rng {
    uint64_t s[4];

    explicit rng(uint64_t seed = 0) { seed_with(seed); }
    void seed_with(uint64_t seed) {
        for (auto& v : s) {                       // splitmix64 expansion of the seed
            seed += 0x9E3779B97F4A7C15ull;
            uint64_t z = seed;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
            v = z ^ (z >> 31);
        }
    }
    static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
    uint64_t next_u64() {
        uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
        s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl(s[3], 45);
        return r;
    }
    double uniform() { return double(next_u64() >> 11) * 0x1.0p-53; }          // [0, 1)
    uint64_t below(uint64_t n) { return n ? next_u64() % n : 0; }
    double normal() {
        double u1 = uniform(), u2 = uniform();
        if (u1 < 1e-300) u1 = 1e-300;
        return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
    }
};

} // namespace mtp
