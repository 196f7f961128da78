// RoPE/YaRN frequency computation, in double precision, then cos/sin tables.
#include "model/rope.h"

#include <algorithm>
#include <cmath>

namespace mtp {

std::vector<double> rope_frequencies(const model_config& c) {
    const int rope = c.qk_rope_head_dim, half = rope / 2;
    std::vector<double> f(half);
    for (int i = 0; i < half; ++i) f[i] = std::pow(c.rope_theta, -2.0 * i / rope);
    if (c.rope_scaling.yarn) {
        const auto& y = c.rope_scaling;
        const double two_pi = 6.283185307179586;
        auto cd = [&](double b) {
            return rope * std::log(y.original_max_position_embeddings / (b * two_pi)) / (2.0 * std::log(c.rope_theta));
        };
        double low = std::max(std::floor(cd(y.beta_fast)), 0.0);
        double high = std::min(std::ceil(cd(y.beta_slow)), double(rope - 1));
        if (low == high) high += 0.001;
        for (int i = 0; i < half; ++i) {
            double r = std::clamp((i - low) / (high - low), 0.0, 1.0);
            f[i] = f[i] / y.factor * r + f[i] * (1.0 - r);
        }
    }
    return f;
}

double rope_attention_factor(const model_config& c) {
    const auto& y = c.rope_scaling;
    if (!y.yarn) return 1.0;
    if (y.attention_factor > 0) return y.attention_factor;
    const auto get_mscale = [&](double ms) { return y.factor <= 1.0 ? 1.0 : 0.1 * ms * std::log(y.factor) + 1.0; };
    if (y.mscale != 0 && y.mscale_all_dim != 0) return get_mscale(y.mscale) / get_mscale(y.mscale_all_dim);
    return get_mscale(1.0);
}

void rope_table(const std::vector<double>& freqs, const int* pos, int n, float* cos, float* sin, double attn) {
    const int half = int(freqs.size());
    for (int t = 0; t < n; ++t)
        for (int i = 0; i < half; ++i) {
            double th = double(pos[t]) * freqs[i];
            cos[size_t(t) * half + i] = float(std::cos(th) * attn);
            sin[size_t(t) * half + i] = float(std::sin(th) * attn);
        }
}

} // namespace mtp
