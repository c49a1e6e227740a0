// AVX2 path of the weight-only linear with int8 activations (wo_int8_run, rt_wo_int8.cpp): the
// same integers as the portable loop, exactly; only the float sums of block products differ in
// order.
//
// Why not the f32 GEMV: a decode step reads every weight once, and widening each code to f32
// costs more than the product. AVX2 has no u8 x s8 -> i32 dot instruction, but vpmaddubsw
// (u8 x s8 pairs summed to i16) followed by vpmaddwd against ones (i16 pairs summed to i32)
// gives one.
//
// 4-bit codes enter vpmaddubsw as they are stored, unsigned 0..15, against x's signed int8
// values: a pair sums to at most 2 * 15 * 127 = 3810, so four 64-code units (30480) add up in
// i16 before one vpmaddwd. The zero point comes off once per block: dot = sum(code * x) -
// 8 * sum(x), the second term computed with x's quantization (WoInt8Avx2Rows::zero_point_share).
// A unit is 32 code bytes: their low nibbles are the codes at even k, their high nibbles those
// at odd k, so x is arranged once per call as each unit's 32 even-k then 32 odd-k values.
//
// 8-bit codes are u8 with zero point 128, too large for that (2 * 255 * 127 saturates i16), so
// they enter as magnitudes |code - 128| <= 128 with the signs moved onto x (vpsignb): a pair
// sums to at most 2 * 128 * 127 = 32512; x keeps K order.
//
// Scaling: eight blocks' integer dots are gathered into one vector (vphaddd), so one convert and
// one FMA against eight x_scale * w_scale products finish eight blocks; for blocks of 32 a unit
// holds two blocks, one per 128-bit half.
#include <immintrin.h>

#include <algorithm>

#include "cpu.h"
#include "rt_gemv.h"
#include "rt_wo.h"

namespace graphopt {
namespace rt {

namespace {

constexpr int64_t kUnit = 64;   // 4-bit codes a unit: 32 bytes
constexpr int64_t kGroup = 8;   // blocks a vector of block dots
constexpr int64_t kAheadRows = 8;  // weight rows fetched ahead (codes and scales)
constexpr int kI16Units = 4;    // 4-bit units summed in i16 before widening (4 * 7620 < 2^15)

}  // namespace

bool wo_int8_avx2_takes(const WoWeight& w) {
    return w.bits == 8 ? w.block_size % 32 == 0
                       : w.block_size == 32 || w.block_size % kUnit == 0;
}

WoInt8Avx2Rows wo_int8_avx2_arrange(const WoWeight& w, const Int8Rows& x, int64_t rows) {
    WoInt8Avx2Rows out;
    out.k_arranged = w.bits == 4 ? round_up(x.k_padded, kUnit) : x.k_padded;
    out.blocks_padded = round_up(w.n_blocks, kGroup);
    out.x.assign(static_cast<size_t>(rows * out.k_arranged), 0);
    out.zero_point_share.assign(static_cast<size_t>(rows * out.blocks_padded), 0);
    out.scale.assign(static_cast<size_t>(rows * out.blocks_padded), 0.0f);
    for (int64_t m = 0; m < rows; ++m) {
        const int8_t* q = x.q + m * x.k_padded;
        int8_t* dst = out.x.data() + m * out.k_arranged;
        if (w.bits == 8) {
            std::copy(q, q + x.k_padded, dst);
        } else {
            for (int64_t u = 0; u * kUnit < x.k_padded; ++u) {
                for (int64_t i = 0; i < 32; ++i) {
                    const int64_t even = u * kUnit + 2 * i;  // k_padded is a multiple of 32
                    dst[u * kUnit + i] = even < x.k_padded ? q[even] : 0;
                    dst[u * kUnit + 32 + i] = even + 1 < x.k_padded ? q[even + 1] : 0;
                }
            }
            for (int64_t b = 0; b < w.n_blocks; ++b) {
                int32_t sum = 0;
                for (int64_t k = b * w.block_size; k < (b + 1) * w.block_size; ++k) sum += q[k];
                out.zero_point_share[m * out.blocks_padded + b] = w.zero_point() * sum;
            }
        }
        std::copy(x.scale + m * w.n_blocks, x.scale + (m + 1) * w.n_blocks,
                  out.scale.data() + m * out.blocks_padded);
    }
    return out;
}

namespace {

struct Nibbles {
    __m256i lo, hi;  // the codes at even k, at odd k (16 of each per 128-bit half)
};

// The 64 codes of one unit; `half`: only its first 32 (the row ends there).
GRAPHOPT_TARGET_AVX2_FMA inline Nibbles unit_codes(const uint8_t* src, bool half) {
    const __m256i bytes = half
        ? _mm256_inserti128_si256(_mm256_setzero_si256(),
                                  _mm_loadu_si128(reinterpret_cast<const __m128i*>(src)), 0)
        : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    return {_mm256_and_si256(bytes, low4), _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low4)};
}

// i16 lanes, each the sum of 4 code x activation products (|sum| <= 7620); lanes 0-7 from the
// unit's first 32 codes, 8-15 from its last 32.
GRAPHOPT_TARGET_AVX2_FMA inline __m256i unit_dot16(const Nibbles& codes, const int8_t* x) {
    const __m256i even = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
    const __m256i odd = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 32));
    return _mm256_add_epi16(_mm256_maddubs_epi16(codes.lo, even),
                            _mm256_maddubs_epi16(codes.hi, odd));
}

// 8 i32 lanes, each the sum of 4 products of 32 signed 8-bit weights with 32 activations.
GRAPHOPT_TARGET_AVX2_FMA inline __m256i dot32_8bit(const uint8_t* src, const int8_t* x) {
    const __m256i codes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
    const __m256i weights = _mm256_xor_si256(codes, _mm256_set1_epi8(static_cast<char>(0x80)));
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
    const __m256i pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(weights),
                                               _mm256_sign_epi8(xv, weights));
    return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}

// 8 i32 lanes summing to one block's integer dot (4-bit: before its zero point comes off).
template <int Bits>
GRAPHOPT_TARGET_AVX2_FMA inline __m256i block_dot(const uint8_t* src, const int8_t* x,
                                                  int64_t block_size) {
    __m256i acc = _mm256_setzero_si256();
    if (Bits == 8) {
        for (int64_t s = 0; s < block_size / 32; ++s) {
            acc = _mm256_add_epi32(acc, dot32_8bit(src + s * 32, x + s * 32));
        }
        return acc;
    }
    const int64_t units = block_size / kUnit;
    for (int64_t u0 = 0; u0 < units; u0 += kI16Units) {
        __m256i sum16 = _mm256_setzero_si256();
        for (int64_t u = u0; u < std::min(units, u0 + kI16Units); ++u) {
            sum16 = _mm256_add_epi16(sum16, unit_dot16(unit_codes(src + u * 32, false),
                                                       x + u * kUnit));
        }
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(sum16, _mm256_set1_epi16(1)));
    }
    return acc;
}

// Lane i: the integer dot of block i of 8 consecutive blocks (zeros past `count`).
template <int Bits>
GRAPHOPT_TARGET_AVX2_FMA inline __m256i group_dots(const uint8_t* src, const int8_t* x,
                                                   int64_t block_size, int64_t count) {
    const int64_t block_bytes = block_size * Bits / 8;
    __m256i t[kGroup];
    for (int64_t i = 0; i < kGroup; ++i) {
        t[i] = i < count ? block_dot<Bits>(src + i * block_bytes, x + i * block_size, block_size)
                         : _mm256_setzero_si256();
    }
    // vphaddd works per 128-bit half: a = [b0 b1 b2 b3 | b0 b1 b2 b3] (each half a partial sum)
    const __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(t[0], t[1]),
                                        _mm256_hadd_epi32(t[2], t[3]));
    const __m256i c = _mm256_hadd_epi32(_mm256_hadd_epi32(t[4], t[5]),
                                        _mm256_hadd_epi32(t[6], t[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, c, 0x20),
                            _mm256_permute2x128_si256(a, c, 0x31));
}

// The same for 4-bit blocks of 32, two a unit: `units` (<= 4) units from `codes`.
GRAPHOPT_TARGET_AVX2_FMA inline __m256i paired_group_dots(const Nibbles* codes, int64_t units,
                                                          const int8_t* x) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i s[4];
    for (int64_t u = 0; u < 4; ++u) {
        s[u] = u < units ? _mm256_madd_epi16(unit_dot16(codes[u], x + u * kUnit), ones)
                         : _mm256_setzero_si256();
    }
    // s[u] = [block 2u (4 lanes) | block 2u+1 (4 lanes)]: two rounds of vphaddd leave
    // [b0 b2 b4 b6 | b1 b3 b5 b7]
    const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]),
                                        _mm256_hadd_epi32(s[2], s[3]));
    return _mm256_permutevar8x32_epi32(h, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// R rows of x against C weight rows (R * C <= 4): out[r * 16 + c]. Paired: 4-bit blocks of 32.
template <int Bits, bool Paired, int R, int C>
GRAPHOPT_TARGET_AVX2_FMA void tile(const WoWeight& w, const WoInt8Avx2Rows& x, int64_t m0,
                                   int64_t n0, float* out) {
    const int64_t block_bytes = w.block_size * Bits / 8, groups = x.blocks_padded / kGroup;
    const int64_t units = ceil_div(w.n_blocks * w.block_size, kUnit);  // Paired only
    const uint8_t* rows[C];
    const float* ws[C];
    for (int c = 0; c < C; ++c) {
        rows[c] = w.codes + (n0 + c) * w.row_bytes();
        ws[c] = w.scales + (n0 + c) * w.n_blocks;
    }
    // Rows kAheadRows ahead are fetched early (codes and scales): 2 * C streams are more than
    // the hardware prefetcher follows, and a decode step waits on memory otherwise.
    const int64_t ahead = kAheadRows * w.row_bytes(), scales_ahead = kAheadRows * w.n_blocks;
    __m256 tot[R][C];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) tot[r][c] = _mm256_setzero_ps();
    for (int64_t g = 0; g < groups; ++g) {
        const int64_t b0 = g * kGroup, count = std::min(kGroup, w.n_blocks - b0);
        const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)),
                                                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        for (int c = 0; c < C; ++c) {
            const uint8_t* src = rows[c] + b0 * block_bytes;
            for (int64_t line = 0; line < count * block_bytes; line += 64) {
                _mm_prefetch(reinterpret_cast<const char*>(src + ahead + line), _MM_HINT_T0);
            }
            _mm_prefetch(reinterpret_cast<const char*>(ws[c] + b0 + scales_ahead), _MM_HINT_T0);
            const __m256 w_scale = count == kGroup ? _mm256_loadu_ps(ws[c] + b0)
                                                   : _mm256_maskload_ps(ws[c] + b0, keep);
            Nibbles codes[4];
            int64_t group_units = 0;
            if (Paired) {
                const int64_t u0 = b0 / 2;
                group_units = std::min<int64_t>(4, units - u0);
                for (int64_t u = 0; u < group_units; ++u) {
                    const bool half = (u0 + u) * kUnit + 32 == w.n_blocks * w.block_size;
                    codes[u] = unit_codes(src + u * 32, half);
                }
            }
            for (int r = 0; r < R; ++r) {
                const int64_t row = m0 + r;
                const int8_t* xg = x.x.data() + row * x.k_arranged + b0 * w.block_size;
                __m256i dots = Paired ? paired_group_dots(codes, group_units, xg)
                                      : group_dots<Bits>(src, xg, w.block_size, count);
                if (Bits == 4) {  // 8-bit codes entered signed: no zero point to take off
                    dots = _mm256_sub_epi32(
                        dots, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(
                                  x.zero_point_share.data() + row * x.blocks_padded + b0)));
                }
                const __m256 scale = _mm256_mul_ps(
                    w_scale, _mm256_loadu_ps(x.scale.data() + row * x.blocks_padded + b0));
                tot[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots), scale, tot[r][c]);
            }
        }
    }
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) out[r * kGemvCols + c] = wo_hsum8(tot[r][c]);
}

template <int Bits, bool Paired, int R>
GRAPHOPT_TARGET_AVX2_FMA void panel(const WoWeight& w, const WoInt8Avx2Rows& x, int64_t m0,
                                    int64_t n0, int64_t cols, float* out) {
    int64_t j = 0;
    if (R == 1) {  // decoding: four weight rows a pass
        for (; j + 4 <= cols; j += 4) tile<Bits, Paired, 1, 4>(w, x, m0, n0 + j, out + j);
    }
    for (; j < cols; ++j) tile<Bits, Paired, R, 1>(w, x, m0, n0 + j, out + j);
}

template <int Bits, bool Paired>
GRAPHOPT_TARGET_AVX2_FMA void panel_rows(const WoWeight& w, const WoInt8Avx2Rows& x, int64_t m0,
                                         int64_t rows, int64_t n0, int64_t cols, float* out) {
    switch (rows) {
        case 1: return panel<Bits, Paired, 1>(w, x, m0, n0, cols, out);
        case 2: return panel<Bits, Paired, 2>(w, x, m0, n0, cols, out);
        case 3: return panel<Bits, Paired, 3>(w, x, m0, n0, cols, out);
        default: return panel<Bits, Paired, 4>(w, x, m0, n0, cols, out);
    }
}

}  // namespace

GRAPHOPT_TARGET_AVX2_FMA void wo_int8_panel_avx2(const WoWeight& w, const WoInt8Avx2Rows& x,
                                                 int64_t m0, int64_t rows, int64_t n0,
                                                 int64_t cols, float* out) {
    if (w.bits == 8) return panel_rows<8, false>(w, x, m0, rows, n0, cols, out);
    if (w.block_size == 32) return panel_rows<4, true>(w, x, m0, rows, n0, cols, out);
    return panel_rows<4, false>(w, x, m0, rows, n0, cols, out);
}

}  // namespace rt
}  // namespace graphopt
