// AVX-512 GEMV of the weight-only linear (rt_wo.h): the decode path of generation (M = 1 to 4).
//
// Per weight row, 32 codes at a time are widened to 2 x 16 f32 in zmm registers and multiplied
// with x; a block's partial sums are scaled once. The products and their order differ from the
// AVX2 path (16-wide partial sums, two block totals), so results agree with it and the
// reference to rounding, not bit for bit. Each block's sum starts from zero (blocks overlap in
// the out-of-order window) and is one FMA on the row's total; even and odd blocks go to two
// totals so that this chain does not bound a row either.
#include <immintrin.h>

#include <algorithm>

#include "cpu.h"
#include "rt_gemv.h"
#include "rt_wo.h"

// GCC 12's AVX-512 headers build some results from _mm512_undefined_*(), which
// -W(maybe-)uninitialized reports at every use (GCC bug 105593): a false positive.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace graphopt {
namespace rt {

namespace {

// (code - zero point) of the 32 codes of `row` from k (k even for 4 bits), as 2 x 16 f32.
GRAPHOPT_TARGET_AVX512 inline void decode32(const uint8_t* row, int64_t k, int64_t bits,
                                            __m512* w0, __m512* w1) {
    __m128i lo, hi;  // codes k..k+15 and k+16..k+31 as s8, centred on the zero point
    if (bits == 8) {
        const __m128i flip = _mm_set1_epi8(static_cast<char>(0x80));  // u8 - 128 as s8
        lo = _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k)), flip);
        hi = _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k + 16)),
                           flip);
    } else {
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + (k >> 1)));
        const __m128i mask = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
        const __m128i even = _mm_and_si128(b, mask);  // low nibble first
        const __m128i odd = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
        lo = _mm_sub_epi8(_mm_unpacklo_epi8(even, odd), eight);
        hi = _mm_sub_epi8(_mm_unpackhi_epi8(even, odd), eight);
    }
    *w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo));
    *w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi));
}

// Sum over one block [kb0, kb1) of row `row` against R rows of x, into blk[r] (16 lanes), with
// a scalar tail for what 32-code steps do not cover (odd block sizes, the K remainder).
template <int R>
GRAPHOPT_TARGET_AVX512 inline void block_dot(const WoWeight& w, const uint8_t* row,
                                             const float* x, int64_t x_rs, int64_t kb0,
                                             int64_t kb1, __m512* blk, float* tail) {
    int64_t k = kb0;
    for (; k + 32 <= kb1; k += 32) {
        __m512 w0, w1;
        decode32(row, k, w.bits, &w0, &w1);
        for (int r = 0; r < R; ++r) {
            const float* xr = x + r * x_rs + k;
            blk[r] = _mm512_fmadd_ps(_mm512_loadu_ps(xr), w0, blk[r]);
            blk[r] = _mm512_fmadd_ps(_mm512_loadu_ps(xr + 16), w1, blk[r]);
        }
    }
    const int32_t zp = w.zero_point();
    for (; k < kb1; ++k) {
        const int32_t code = w.bits == 8 ? row[k] : (row[k >> 1] >> ((k & 1) * 4)) & 0xF;
        const float cw = static_cast<float>(code - zp);
        for (int r = 0; r < R; ++r) tail[r] += x[r * x_rs + k] * cw;
    }
}

// out[r * 16 + j] for weight row n = n0 + j: sum over blocks of scale * block dot product.
template <int R>
GRAPHOPT_TARGET_AVX512 void gemv_row(const WoWeight& w, const float* x, int64_t x_rs, int64_t n,
                                     float* out) {
    const uint8_t* row = w.codes + n * w.row_bytes();
    const float* scales = w.scales + n * w.n_blocks;
    __m512 tot[2][R];
    float scalar[R] = {};
    for (int r = 0; r < R; ++r) tot[0][r] = tot[1][r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < w.n_blocks; ++b) {
        const int64_t kb0 = b * w.block_size, kb1 = std::min(w.k, kb0 + w.block_size);
        __m512 blk[R];
        float tail[R] = {};
        for (int r = 0; r < R; ++r) blk[r] = _mm512_setzero_ps();
        block_dot<R>(w, row, x, x_rs, kb0, kb1, blk, tail);
        const __m512 vs = _mm512_set1_ps(scales[b]);
        for (int r = 0; r < R; ++r) {
            tot[b & 1][r] = _mm512_fmadd_ps(vs, blk[r], tot[b & 1][r]);
            scalar[r] += tail[r] * scales[b];
        }
    }
    for (int r = 0; r < R; ++r) {
        out[r * kGemvCols] =
            _mm512_reduce_add_ps(_mm512_add_ps(tot[0][r], tot[1][r])) + scalar[r];
    }
}

// The common shape, kept free of scalar work: blocks of 32 codes and K a whole number of
// blocks. Two blocks per step into two totals (independent FMA chains per row).
template <int R>
GRAPHOPT_TARGET_AVX512 void gemv_row_32(const WoWeight& w, const float* x, int64_t x_rs,
                                        int64_t n, float* out) {
    const uint8_t* row = w.codes + n * w.row_bytes();
    const float* scales = w.scales + n * w.n_blocks;
    __m512 even[R], odd[R];
    for (int r = 0; r < R; ++r) even[r] = odd[r] = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= w.n_blocks; b += 2) {
        __m512 a0, a1, c0, c1;
        decode32(row, b * 32, w.bits, &a0, &a1);
        decode32(row, b * 32 + 32, w.bits, &c0, &c1);
        const __m512 s0 = _mm512_set1_ps(scales[b]), s1 = _mm512_set1_ps(scales[b + 1]);
        for (int r = 0; r < R; ++r) {
            const float* xr = x + r * x_rs + b * 32;
            const __m512 p0 = _mm512_fmadd_ps(_mm512_loadu_ps(xr + 16), a1,
                                              _mm512_mul_ps(_mm512_loadu_ps(xr), a0));
            const __m512 p1 = _mm512_fmadd_ps(_mm512_loadu_ps(xr + 48), c1,
                                              _mm512_mul_ps(_mm512_loadu_ps(xr + 32), c0));
            even[r] = _mm512_fmadd_ps(s0, p0, even[r]);
            odd[r] = _mm512_fmadd_ps(s1, p1, odd[r]);
        }
    }
    if (b < w.n_blocks) {
        __m512 a0, a1;
        decode32(row, b * 32, w.bits, &a0, &a1);
        const __m512 s0 = _mm512_set1_ps(scales[b]);
        for (int r = 0; r < R; ++r) {
            const float* xr = x + r * x_rs + b * 32;
            const __m512 p0 = _mm512_fmadd_ps(_mm512_loadu_ps(xr + 16), a1,
                                              _mm512_mul_ps(_mm512_loadu_ps(xr), a0));
            even[r] = _mm512_fmadd_ps(s0, p0, even[r]);
        }
    }
    for (int r = 0; r < R; ++r) {
        out[r * kGemvCols] = _mm512_reduce_add_ps(_mm512_add_ps(even[r], odd[r]));
    }
}

template <int R>
GRAPHOPT_TARGET_AVX512 void gemv_rows(const WoWeight& w, const float* x, int64_t x_rs,
                                      int64_t n0, int64_t cols, float* out) {
    const bool whole_32_blocks = w.block_size == 32 && w.k % 32 == 0;
    for (int64_t j = 0; j < cols; ++j) {
        if (whole_32_blocks) {
            gemv_row_32<R>(w, x, x_rs, n0 + j, out + j);
        } else {
            gemv_row<R>(w, x, x_rs, n0 + j, out + j);
        }
    }
}

}  // namespace

GRAPHOPT_TARGET_AVX512 void wo_gemv_avx512(const WoWeight& w, int64_t rows, const float* x,
                                           int64_t x_rs, int64_t n0, int64_t cols,
                                           float* out) {
    switch (rows) {
        case 1: return gemv_rows<1>(w, x, x_rs, n0, cols, out);
        case 2: return gemv_rows<2>(w, x, x_rs, n0, cols, out);
        case 3: return gemv_rows<3>(w, x, x_rs, n0, cols, out);
        default: return gemv_rows<4>(w, x, x_rs, n0, cols, out);
    }
}

}  // namespace rt
}  // namespace graphopt
