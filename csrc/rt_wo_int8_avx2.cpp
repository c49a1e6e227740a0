// AVX2 path of the weight-only linear with int8 activations (wo_int8_run, rt_wo_int8.cpp), for
// blocks that are multiples of 32: the same integers as the portable loop, exactly.
//
// Why not the f32 GEMV: a decode step reads every weight once, and widening each code to f32
// costs more than the product. AVX2 has no u8 x s8 -> i32 dot instruction, but vpmaddubsw
// (u8 x s8 pairs summed to i16) followed by vpmaddwd against ones (i16 pairs summed to i32)
// gives one: 32 products a step. vpmaddubsw saturates at 2^15, so the weights enter as their
// magnitudes |code - zp| <= 128 with the signs moved onto x (vpsignb): each pair sum is then at
// most 2 * 128 * 127 = 32512, never saturated. That also folds the zero point in for free.
//
// Operand order: 32 codes are 16 bytes (4-bit) or 32 bytes (8-bit). 4-bit codes are split into
// their 16 low nibbles then their 16 high ones, so x is rearranged once per call into the same
// order (wo_int8_avx2_arrange); 8-bit codes keep K order. A 32-code step lies inside one block,
// whose integer sum is scaled once by x_scale * w_scale.
#include <immintrin.h>

#include <algorithm>

#include "cpu.h"
#include "rt_gemv.h"
#include "rt_wo.h"

namespace graphopt {
namespace rt {

void wo_int8_avx2_arrange(int64_t bits, int8_t* row, int64_t k_padded) {
    if (bits == 8) return;
    int8_t chunk[32];
    for (int64_t k0 = 0; k0 + 32 <= k_padded; k0 += 32) {
        for (int i = 0; i < 16; ++i) {
            chunk[i] = row[k0 + 2 * i];
            chunk[16 + i] = row[k0 + 2 * i + 1];
        }
        std::copy(chunk, chunk + 32, row + k0);
    }
}

namespace {

// The 32 signed weights (code - zp) of step s of `row`, in the arranged order.
template <int Bits>
GRAPHOPT_TARGET_AVX2_FMA inline __m256i signed_codes(const uint8_t* row, int64_t s) {
    if (Bits == 8) {
        const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + s * 32));
        return _mm256_xor_si256(b, _mm256_set1_epi8(static_cast<char>(0x80)));  // u8 - 128
    }
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + s * 16));
    const __m256i both = _mm256_set_m128i(_mm_srli_epi16(b, 4), b);
    return _mm256_sub_epi8(_mm256_and_si256(both, _mm256_set1_epi8(0x0F)), _mm256_set1_epi8(8));
}

// 8 i32 lanes, each the sum of 4 products of the 32 weights with the 32 activations.
GRAPHOPT_TARGET_AVX2_FMA inline __m256i dot32(__m256i weights, __m256i x, __m256i ones) {
    const __m256i pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(weights),
                                               _mm256_sign_epi8(x, weights));
    return _mm256_madd_epi16(pairs, ones);
}

// R rows of x against C weight rows (R * C <= 4): out[r * 16 + c].
template <int Bits, int R, int C>
GRAPHOPT_TARGET_AVX2_FMA void tile(const WoWeight& w, const Int8Rows& x, int64_t m0, int64_t n0,
                                   float* out) {
    const __m256i ones = _mm256_set1_epi16(1);
    const int64_t steps = w.block_size / 32;
    const uint8_t* rows[C];
    const float* ws[C];
    for (int c = 0; c < C; ++c) {
        rows[c] = w.codes + (n0 + c) * w.row_bytes();
        ws[c] = w.scales + (n0 + c) * w.n_blocks;
    }
    __m256 tot[R][C];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) tot[r][c] = _mm256_setzero_ps();
    for (int64_t b = 0; b < w.n_blocks; ++b) {
        __m256i acc[R][C];
        for (int r = 0; r < R; ++r)
            for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_si256();
        for (int64_t s = b * steps; s < (b + 1) * steps; ++s) {
            __m256i weights[C];
            for (int c = 0; c < C; ++c) weights[c] = signed_codes<Bits>(rows[c], s);
            for (int r = 0; r < R; ++r) {
                const __m256i xv = _mm256_loadu_si256(
                    reinterpret_cast<const __m256i*>(x.q + (m0 + r) * x.k_padded + s * 32));
                for (int c = 0; c < C; ++c) {
                    acc[r][c] = _mm256_add_epi32(acc[r][c], dot32(weights[c], xv, ones));
                }
            }
        }
        for (int r = 0; r < R; ++r) {
            const float xs = x.scale[(m0 + r) * w.n_blocks + b];
            for (int c = 0; c < C; ++c) {
                tot[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r][c]),
                                            _mm256_set1_ps(xs * ws[c][b]), tot[r][c]);
            }
        }
    }
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) out[r * kGemvCols + c] = wo_hsum8(tot[r][c]);
}

template <int Bits, int R>
GRAPHOPT_TARGET_AVX2_FMA void panel(const WoWeight& w, const Int8Rows& x, int64_t m0,
                                    int64_t n0, int64_t cols, float* out) {
    int64_t j = 0;
    if (R == 1) {  // decoding: four weight rows share each load of x
        for (; j + 4 <= cols; j += 4) tile<Bits, 1, 4>(w, x, m0, n0 + j, out + j);
    }
    for (; j < cols; ++j) tile<Bits, R, 1>(w, x, m0, n0 + j, out + j);
}

template <int Bits>
GRAPHOPT_TARGET_AVX2_FMA void panel_rows(const WoWeight& w, const Int8Rows& x, int64_t m0,
                                         int64_t rows, int64_t n0, int64_t cols, float* out) {
    switch (rows) {
        case 1: return panel<Bits, 1>(w, x, m0, n0, cols, out);
        case 2: return panel<Bits, 2>(w, x, m0, n0, cols, out);
        case 3: return panel<Bits, 3>(w, x, m0, n0, cols, out);
        default: return panel<Bits, 4>(w, x, m0, n0, cols, out);
    }
}

}  // namespace

GRAPHOPT_TARGET_AVX2_FMA void wo_int8_panel_avx2(const WoWeight& w, const Int8Rows& x,
                                                 int64_t m0, int64_t rows, int64_t n0,
                                                 int64_t cols, float* out) {
    if (w.bits == 8) return panel_rows<8>(w, x, m0, rows, n0, cols, out);
    return panel_rows<4>(w, x, m0, rows, n0, cols, out);
}

}  // namespace rt
}  // namespace graphopt
