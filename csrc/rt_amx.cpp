// AMX tile configuration and the int8 block kernel (rt_amx.h). Compiled per function for AMX
// (GRAPHOPT_TARGET_AMX); only reached after run-time dispatch (cpu.h).
#include "rt_amx.h"

#include <immintrin.h>

#include <cstring>

#include "cpu.h"

namespace graphopt {
namespace rt {
namespace {

// The 64-byte LDTILECFG operand (palette 1).
struct alignas(64) TileConfig {
    uint8_t palette_id;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

// tmm0..3: accumulators (tile (r, c) of the block in tmm(2r + c)); tmm4/5: A; tmm6/7: B.
template <int RB, int CB>
GRAPHOPT_TARGET_AMX void int8_block(const uint8_t* a, int64_t a_stride, const uint8_t* b0,
                                    const uint8_t* b1, int64_t groups, int32_t* out,
                                    const AmxPrefetch& pf, const AmxStepHook& hook) {
    _tile_zero(0);
    if (CB == 2) _tile_zero(1);
    if (RB == 2) _tile_zero(2);
    if (RB == 2 && CB == 2) _tile_zero(3);
    const uint8_t* a1 = a + 16 * a_stride;
    constexpr int64_t kGroupBytes = 16 * 64;  // one B tile: 16 steps of 16 columns x 4
    for (int64_t g = 0; g < groups; ++g) {
        amx_prefetch_step(pf, g, groups);
        if (hook.fn != nullptr) hook.fn(hook.ctx, g, groups);
        _tile_loadd(4, a + g * 64, a_stride);
        _tile_loadd(6, b0 + g * kGroupBytes, 64);
        if (CB == 2) _tile_loadd(7, b1 + g * kGroupBytes, 64);
        _tile_dpbusd(0, 4, 6);
        if (CB == 2) _tile_dpbusd(1, 4, 7);
        if (RB == 2) {
            _tile_loadd(5, a1 + g * 64, a_stride);
            _tile_dpbusd(2, 5, 6);
            if (CB == 2) _tile_dpbusd(3, 5, 7);
        }
    }
    _tile_stored(0, out, 64);
    if (CB == 2) _tile_stored(1, out + 256, 64);
    if (RB == 2) _tile_stored(2, out + 512, 64);
    if (RB == 2 && CB == 2) _tile_stored(3, out + 768, 64);
}

}  // namespace

GRAPHOPT_TARGET_AMX void amx_begin() {
    TileConfig cfg;
    std::memset(&cfg, 0, sizeof(cfg));
    cfg.palette_id = 1;
    for (int t = 0; t < 8; ++t) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    // Not _tile_loadconfig: GCC 12's version names only the first 8 bytes of the operand as
    // read, so the stores of the row / column fields may be dropped as dead. The whole struct
    // is the operand here.
    __asm__ volatile("ldtilecfg %0" : : "m"(cfg) : "memory");
}

GRAPHOPT_TARGET_AMX void amx_end() { _tile_release(); }

void amx_int8_block(const uint8_t* a, int64_t a_stride, const uint8_t* b0, const uint8_t* b1,
                    int64_t groups, int rb, int cb, int32_t* out, AmxPrefetch prefetch,
                    AmxStepHook hook) {
    if (rb == 2 && cb == 2) {
        int8_block<2, 2>(a, a_stride, b0, b1, groups, out, prefetch, hook);
    } else if (rb == 2) {
        int8_block<2, 1>(a, a_stride, b0, b1, groups, out, prefetch, hook);
    } else if (cb == 2) {
        int8_block<1, 2>(a, a_stride, b0, b1, groups, out, prefetch, hook);
    } else {
        int8_block<1, 1>(a, a_stride, b0, b1, groups, out, prefetch, hook);
    }
}

GRAPHOPT_TARGET_AMX void amx_int8_zero_point(int32_t* tile, int64_t rows, const int32_t* colsum,
                                             int64_t cols, const int32_t* row_zp, int32_t zp) {
    const __mmask16 mask = static_cast<__mmask16>((1u << cols) - 1u);
    const __m512i sums = _mm512_maskz_loadu_epi32(mask, colsum);
    for (int64_t r = 0; r < rows; ++r) {
        const __m512i z = _mm512_set1_epi32(row_zp != nullptr ? row_zp[r] : zp);
        __m512i* row = reinterpret_cast<__m512i*>(tile + 16 * r);
        _mm512_store_si512(row, _mm512_sub_epi32(_mm512_load_si512(row),
                                                 _mm512_mullo_epi32(z, sums)));
    }
}

}  // namespace rt
}  // namespace graphopt
