// Static int8 depthwise convolution (groups == C == Co), direct: the "qconv2d" kernel's path
// for depthwise layers (rt_qconv.h).
//
// Through the int8 GEMM a depthwise layer is C products of [P, kh * kw] by [kh * kw, 1]: per
// channel an im2col, an A-packing pass and 16-column tiles of which one column is used (on
// MobileNetV2 all-int8 ran 12x slower than float). Here each output row accumulates, per tap,
// the input row's codes minus the zero point times the tap's weight into int32 (exact, as the
// GEMM path), over the output columns whose tap falls inside the input (a padded tap
// contributes (x_zp - x_zp) * w = 0 and is skipped); then the row's epilogue: float, scale,
// bias, activation, and f32 out or requantized u8 (one vector call per row).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu.h"
#include "rt_parallel.h"
#include "rt_qconv.h"
#include "rt_qgemm.h"

namespace graphopt {
namespace rt {

namespace {

// The output columns [lo, hi) whose tap at input column offset `off` (= j * dw - pw) reads
// inside [0, w): ow * sw + off in [0, w).
void tap_range(int64_t off, int64_t sw, int64_t w, int64_t wo, int64_t* lo, int64_t* hi) {
    *lo = off >= 0 ? 0 : std::min(wo, (-off + sw - 1) / sw);
    *hi = w - 1 - off >= 0 ? std::min(wo, (w - 1 - off) / sw + 1) : 0;
}

// acc[ow] += (x_row[ow * sw + off] - zp) * wv for ow in [lo, hi); `row_bytes` bounds the reads
// (x_row[0 .. row_bytes)). Arguments by value so that the compiler keeps them in registers.
using TapFn = void (*)(int32_t* acc, const uint8_t* x_row, int64_t row_bytes, int64_t off,
                       int64_t sw, int64_t lo, int64_t hi, int32_t zp, int32_t wv);

void accumulate_tap(int32_t* acc, const uint8_t* x_row, int64_t /*row_bytes*/, int64_t off,
                    int64_t sw, int64_t lo, int64_t hi, int32_t zp, int32_t wv) {
    for (int64_t ow = lo; ow < hi; ++ow) {
        acc[ow] += (static_cast<int32_t>(x_row[ow * sw + off]) - zp) * wv;
    }
}

// acc[0..8) += (bytes[0..8) - zp) * w, the bytes widened to int32.
GRAPHOPT_TARGET_AVX2_FMA inline void add8_avx2(int32_t* acc, __m128i bytes, __m256i vz,
                                               __m256i vw) {
    const __m256i x = _mm256_cvtepu8_epi32(bytes);
    __m256i* dst = reinterpret_cast<__m256i*>(acc);
    const __m256i a = _mm256_loadu_si256(dst);
    _mm256_storeu_si256(dst, _mm256_add_epi32(a, _mm256_mullo_epi32(_mm256_sub_epi32(x, vz), vw)));
}

// AVX2: 8 output columns per step, the codes widened to int32 (stride 2: the even bytes of
// 16 picked by a shuffle, while those 16 stay inside the row).
GRAPHOPT_TARGET_AVX2_FMA void accumulate_tap_avx2(int32_t* acc, const uint8_t* x_row,
                                                  int64_t row_bytes, int64_t off, int64_t sw,
                                                  int64_t lo, int64_t hi, int32_t zp,
                                                  int32_t wv) {
    const __m256i vz = _mm256_set1_epi32(zp), vw = _mm256_set1_epi32(wv);
    const __m128i even = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, -1, -1, -1, -1, -1, -1, -1, -1);
    int64_t ow = lo;
    if (sw == 1) {
        for (; ow + 8 <= hi; ow += 8) {
            add8_avx2(acc + ow, _mm_loadl_epi64(reinterpret_cast<const __m128i*>(x_row + ow + off)),
                      vz, vw);
        }
    } else if (sw == 2) {
        for (; ow + 8 <= hi && 2 * ow + off + 16 <= row_bytes; ow += 8) {
            const __m128i b =
                _mm_loadu_si128(reinterpret_cast<const __m128i*>(x_row + 2 * ow + off));
            add8_avx2(acc + ow, _mm_shuffle_epi8(b, even), vz, vw);
        }
    }
    for (; ow < hi; ++ow) acc[ow] += (static_cast<int32_t>(x_row[ow * sw + off]) - zp) * wv;
}

}  // namespace

void qconv_depthwise_run(const DepthwiseArgs& a, int threads) {
    const QGemmKernels& kern = qgemm_kernels();
    const TapFn tap = cpu_features().use_avx2_fma ? accumulate_tap_avx2 : accumulate_tap;
    const int64_t planes = a.n * a.c, taps = a.kh * a.kw;
    parallel_for(threads, planes, a.ho * a.wo * taps, [&](int64_t p0, int64_t p1) {
        std::vector<int32_t> acc(static_cast<size_t>(a.wo));
        std::vector<float> row(static_cast<size_t>(a.wo));
        for (int64_t p = p0; p < p1; ++p) {
            const int64_t c = p % a.c;
            const uint8_t* plane = a.x + p * a.h * a.w;
            const int8_t* wc = a.weight + c * taps;
            const float scale = a.x_scale * a.w_scale[c];
            const float bias = a.bias != nullptr ? a.bias[c] : 0.0f;
            for (int64_t oh = 0; oh < a.ho; ++oh) {
                std::fill(acc.begin(), acc.end(), 0);
                for (int64_t i = 0; i < a.kh; ++i) {
                    const int64_t ih = oh * a.sh - a.ph + i * a.dh;
                    if (ih < 0 || ih >= a.h) continue;
                    for (int64_t j = 0; j < a.kw; ++j) {
                        const int32_t wv = wc[i * a.kw + j];
                        if (wv == 0) continue;
                        const int64_t off = j * a.dw - a.pw;
                        int64_t lo = 0, hi = 0;
                        tap_range(off, a.sw, a.w, a.wo, &lo, &hi);
                        tap(acc.data(), plane + ih * a.w, a.w, off, a.sw, lo, hi, a.x_zp, wv);
                    }
                }
                for (int64_t ow = 0; ow < a.wo; ++ow) {
                    row[ow] = static_cast<float>(acc[ow]) * scale + bias;
                }
                apply_activation(row.data(), a.wo, 1, a.wo, nullptr, a.act);
                const int64_t at = (p * a.ho + oh) * a.wo;
                if (a.out_u8 != nullptr) {
                    kern.quantize(row.data(), a.wo, a.y_scale, static_cast<float>(a.y_zp),
                                  a.out_u8 + at);
                } else {
                    std::copy(row.begin(), row.end(), a.out_f + at);
                }
            }
        }
    });
}

}  // namespace rt
}  // namespace graphopt
