// AMX tile configuration shared by the AMX kernels (gemm_bf16_amx.cpp, gemv_amx.cpp): every tile 16 rows x 64 bytes.
// Include only from files compiled with -mamx-tile.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace mtp::amx {

// The 64-byte operand of LDTILECFG, palette 1.
struct tile_config {
    uint8_t palette = 1, start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};

// Configures tiles 0..n-1 as 16 rows x 64 bytes on the calling thread (tile state is per thread).
inline void configure_tiles(int n) {
    tile_config cfg;
    for (int t = 0; t < n; ++t) {
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    _tile_loadconfig(&cfg);
}

} // namespace mtp::amx
