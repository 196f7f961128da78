// Q8_0 block codec for weights (GGUF layout) and the activation quantiser of the q8_0 decode kernels.
#include "core/quant.h"

#include <algorithm>
#include <cmath>

#include "core/dtype.h"

namespace mtp {

void q8_0_quantize_row(const float* x, int64_t n, uint8_t* out) {
    for (int64_t b = 0; b < n / q8_block; ++b) {
        const float* xb = x + b * q8_block;
        float amax = 0.0f;
        for (int i = 0; i < q8_block; ++i) amax = std::max(amax, std::fabs(xb[i]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        uint8_t* ob = out + b * 34;
        const uint16_t h = f32_to_f16(d);
        ob[0] = uint8_t(h & 0xff);
        ob[1] = uint8_t(h >> 8);
        for (int i = 0; i < q8_block; ++i) {
            float v = std::round(xb[i] * id);
            v = std::clamp(v, -127.0f, 127.0f);
            ob[2 + i] = uint8_t(int8_t(v));
        }
    }
}

void q8_0_dequantize_row(const uint8_t* in, int64_t n, float* y) {
    for (int64_t b = 0; b < n / q8_block; ++b) {
        const uint8_t* ib = in + b * 34;
        const float d = f16_to_f32(uint16_t(ib[0] | (uint16_t(ib[1]) << 8)));
        for (int i = 0; i < q8_block; ++i) y[b * q8_block + i] = d * float(int8_t(ib[2 + i]));
    }
}

void q8_act_quantize(const float* x, int n, int8_t* q, float* d) {
    const int nb = (n + q8_block - 1) / q8_block;
    for (int b = 0; b < nb; ++b) {
        const int i0 = b * q8_block, i1 = std::min(n, i0 + q8_block);
        float amax = 0.0f;
        for (int i = i0; i < i1; ++i) amax = std::max(amax, std::fabs(x[i]));
        const float db = amax / 127.0f;
        const float id = db != 0.0f ? 1.0f / db : 0.0f;
        d[b] = db;
        for (int i = i0; i < i0 + q8_block; ++i) {
            float v = i < i1 ? std::nearbyint(x[i] * id) : 0.0f;
            if (!(v == v)) v = 0.0f;
            q[i] = int8_t(std::clamp(v, -127.0f, 127.0f));
        }
    }
}

} // namespace mtp
