// AVX2 loops of the weight-only linear (rt_wo.h): 16 codes at a time are widened to i32,
// centred on the zero point and converted to f32 in registers.
#include <immintrin.h>

#include <algorithm>

#include "cpu.h"
#include "rt_gemv.h"
#include "rt_wo.h"

namespace graphopt {
namespace rt {

namespace {

// (code - zero point) of the 16 codes of row `row` starting at k (even for 4 bits), as i32.
GRAPHOPT_TARGET_AVX2_FMA inline void decode16(const uint8_t* row, int64_t k, int64_t bits,
                                              __m256i* c0, __m256i* c1) {
    __m128i codes;
    if (bits == 8) {
        // u8 code - 128 is the code with its top bit flipped, read as s8
        codes = _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k)),
                              _mm_set1_epi8(static_cast<char>(0x80)));
    } else {
        const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + (k >> 1)));
        const __m128i mask = _mm_set1_epi8(0x0F);
        const __m128i lo = _mm_and_si128(b, mask);
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
        codes = _mm_sub_epi8(_mm_unpacklo_epi8(lo, hi), _mm_set1_epi8(8));  // low nibble first
    }
    *c0 = _mm256_cvtepi8_epi32(codes);
    *c1 = _mm256_cvtepi8_epi32(_mm_srli_si128(codes, 8));
}

template <int R>
GRAPHOPT_TARGET_AVX2_FMA void gemv_rows(const WoWeight& w, const float* x, int64_t x_rs,
                                        int64_t n0, int64_t cols, float* out) {
    const int32_t zp = w.zero_point();
    for (int64_t j = 0; j < cols; ++j) {
        const int64_t n = n0 + j;
        const uint8_t* row = w.codes + n * w.row_bytes();
        const float* scales = w.scales + n * w.n_blocks;
        __m256 tot[R];
        float tail[R];
        for (int r = 0; r < R; ++r) {
            tot[r] = _mm256_setzero_ps();
            tail[r] = 0.0f;
        }
        for (int64_t b = 0; b < w.n_blocks; ++b) {
            const int64_t kb0 = b * w.block_size, kb1 = std::min(w.k, kb0 + w.block_size);
            __m256 blk[R];
            for (int r = 0; r < R; ++r) blk[r] = _mm256_setzero_ps();
            int64_t k = kb0;
            for (; k + 16 <= kb1; k += 16) {
                __m256i c0, c1;
                decode16(row, k, w.bits, &c0, &c1);
                const __m256 w0 = _mm256_cvtepi32_ps(c0), w1 = _mm256_cvtepi32_ps(c1);
                for (int r = 0; r < R; ++r) {
                    const float* xr = x + r * x_rs + k;
                    blk[r] = _mm256_fmadd_ps(_mm256_loadu_ps(xr), w0, blk[r]);
                    blk[r] = _mm256_fmadd_ps(_mm256_loadu_ps(xr + 8), w1, blk[r]);
                }
            }
            const float s = scales[b];
            const __m256 vs = _mm256_set1_ps(s);
            for (int r = 0; r < R; ++r) tot[r] = _mm256_fmadd_ps(vs, blk[r], tot[r]);
            for (; k < kb1; ++k) {
                const int32_t code = w.bits == 8 ? row[k] : (row[k >> 1] >> ((k & 1) * 4)) & 0xF;
                const float wv = static_cast<float>(code - zp) * s;
                for (int r = 0; r < R; ++r) tail[r] += x[r * x_rs + k] * wv;
            }
        }
        for (int r = 0; r < R; ++r) out[r * kGemvCols + j] = wo_hsum8(tot[r]) + tail[r];
    }
}

}  // namespace

GRAPHOPT_TARGET_AVX2_FMA void wo_gemv_avx2(const WoWeight& w, int64_t rows, const float* x,
                                           int64_t x_rs, int64_t n0, int64_t cols, float* out) {
    switch (rows) {
        case 1: return gemv_rows<1>(w, x, x_rs, n0, cols, out);
        case 2: return gemv_rows<2>(w, x, x_rs, n0, cols, out);
        case 3: return gemv_rows<3>(w, x, x_rs, n0, cols, out);
        default: return gemv_rows<4>(w, x, x_rs, n0, cols, out);
    }
}

// dst[j] = W[n, k0 + j]: the same f32 products as the scalar decoder (one multiply each).
GRAPHOPT_TARGET_AVX2_FMA void wo_decode_row_avx2(const WoWeight& w, int64_t n, int64_t k0,
                                                 int64_t count, float* dst) {
    const uint8_t* row = w.codes + n * w.row_bytes();
    const float* scales = w.scales + n * w.n_blocks;
    const int64_t k1 = k0 + count;
    int64_t k = k0;
    while (k < k1) {
        const int64_t b = k / w.block_size;
        const int64_t kb1 = std::min(k1, (b + 1) * w.block_size);
        const __m256 vs = _mm256_set1_ps(scales[b]);
        if (w.bits == 8 || (k & 1) == 0) {
            for (; k + 16 <= kb1; k += 16) {
                __m256i c0, c1;
                decode16(row, k, w.bits, &c0, &c1);
                _mm256_storeu_ps(dst + (k - k0), _mm256_mul_ps(_mm256_cvtepi32_ps(c0), vs));
                _mm256_storeu_ps(dst + (k - k0) + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(c1), vs));
            }
        }
        if (k < kb1) {
            wo_decode_row(w, n, k, kb1 - k, dst + (k - k0));
            k = kb1;
        }
    }
}

}  // namespace rt
}  // namespace graphopt
