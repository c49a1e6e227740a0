// AVX-512 forms of the int8 GEMM's float loops (rt_qgemm.h): min / max, the DynamicQuantizeLinear
// quantizer and the dequantize epilogue, for the AVX512-VNNI kernel set (and so for the AMX tiles,
// which finish their blocks with that set's loops). Every lane does what the AVX2 loops do
// (rt_qgemm_avx2.cpp), so codes and floats are the same on both; one zmm is one 16-column
// weight panel, where the AVX2 dequantize needs two ymm.
//
// fp-contract off: the quantizer and the epilogue must round like the reference (divide, round;
// multiply, then add), never as a fused multiply-add.
#pragma GCC optimize("fp-contract=off")

#include <immintrin.h>

#include <algorithm>

#include "cpu.h"
#include "rt_qgemm.h"

// GCC 12's avx512fintrin.h seeds some intrinsics with _mm512_undefined_*(), which
// -Wmaybe-uninitialized reports at every use (GCC bug 105593): a false positive.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace graphopt {
namespace rt {

namespace {

GRAPHOPT_TARGET_AVX512 inline __mmask16 first_lanes(int64_t n) {
    return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1u);
}

}  // namespace

// Min and max are exact, so lane order does not change them (for inputs without NaN; a NaN
// lane's outcome depends on where it lies, as in the AVX2 loop).
GRAPHOPT_TARGET_AVX512 void qminmax_avx512(const float* x, int64_t rows, int64_t cols,
                                           int64_t rs, float* lo, float* hi) {
    for (int64_t r = 0; r < rows; ++r) {
        const float* row = x + r * rs;
        if (cols <= 0) {
            lo[r] = hi[r] = 0.0f;
            continue;
        }
        if (cols < 16) {
            qminmax_avx2(row, 1, cols, cols, lo + r, hi + r);
            continue;
        }
        __m512 vl0 = _mm512_loadu_ps(row), vh0 = vl0, vl1 = vl0, vh1 = vl0;
        int64_t j = 16;
        for (; j + 32 <= cols; j += 32) {  // two chains: min / max latency, not throughput
            const __m512 a = _mm512_loadu_ps(row + j), b = _mm512_loadu_ps(row + j + 16);
            vl0 = _mm512_min_ps(vl0, a);
            vh0 = _mm512_max_ps(vh0, a);
            vl1 = _mm512_min_ps(vl1, b);
            vh1 = _mm512_max_ps(vh1, b);
        }
        for (; j + 16 <= cols; j += 16) {
            const __m512 a = _mm512_loadu_ps(row + j);
            vl0 = _mm512_min_ps(vl0, a);
            vh0 = _mm512_max_ps(vh0, a);
        }
        if (j < cols) {  // the last 16 columns again: repeats change neither min nor max
            const __m512 a = _mm512_loadu_ps(row + cols - 16);
            vl0 = _mm512_min_ps(vl0, a);
            vh0 = _mm512_max_ps(vh0, a);
        }
        lo[r] = _mm512_reduce_min_ps(_mm512_min_ps(vl0, vl1));
        hi[r] = _mm512_reduce_max_ps(_mm512_max_ps(vh0, vh1));
    }
}

// qquantize_avx2 on 16 lanes: the same division-free path (quantize_fast_ok) with the true
// division for any vector that needs it, then + zp, clamp, and the bytes.
GRAPHOPT_TARGET_AVX512 void qquantize_avx512(const float* x, int64_t n, float scale, float zp,
                                             uint8_t* q) {
    const __m512 vs = _mm512_set1_ps(scale), vz = _mm512_set1_ps(zp);
    const __m512 zero = _mm512_setzero_ps(), top = _mm512_set1_ps(255.0f);
    const float inv = 1.0f / scale;
    const bool fast = quantize_fast_ok(scale, inv);
    const __m512 vinv = _mm512_set1_ps(inv);
    const __m512 margin = _mm512_set1_ps(kQuantFastMargin), bound = _mm512_set1_ps(kQuantFastBound);
    constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 lanes = first_lanes(n - i);
        const __m512 xv = _mm512_maskz_loadu_ps(lanes, x + i);
        __m512 v;
        if (fast) {
            const __m512 y = _mm512_mul_ps(xv, vinv);
            v = _mm512_roundscale_ps(y, kRound);
            const __mmask16 near = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(y, v)), margin,
                                                      _CMP_LT_OQ);
            const __mmask16 small = _mm512_cmp_ps_mask(_mm512_abs_ps(y), bound, _CMP_LT_OQ);
            if (static_cast<__mmask16>(near & small) != 0xffff) {
                v = _mm512_roundscale_ps(_mm512_div_ps(xv, vs), kRound);
            }
        } else {
            v = _mm512_roundscale_ps(_mm512_div_ps(xv, vs), kRound);  // as the reference
        }
        v = _mm512_add_ps(v, vz);
        v = _mm512_min_ps(_mm512_max_ps(v, zero), top);  // max(NaN, 0) = 0
        _mm512_mask_cvtepi32_storeu_epi8(q + i, lanes, _mm512_cvttps_epi32(v));
    }
}

GRAPHOPT_TARGET_AVX512 void qdequant_avx512(const int32_t* acc, int64_t rows, int64_t cols,
                                            const float* col_scale, const float* row_scale,
                                            const float* bias, const float* res, int64_t ldr,
                                            float* c, int64_t ldc) {
    if (cols <= 0) return;
    const __mmask16 lanes = first_lanes(cols);
    const __m512 cs = _mm512_maskz_loadu_ps(lanes, col_scale);
    const __m512 b = bias != nullptr ? _mm512_maskz_loadu_ps(lanes, bias) : _mm512_setzero_ps();
    for (int64_t r = 0; r < rows; ++r) {
        // the reference's one f32 product x_scale[m] * w_scale[n] with per-token scales
        const __m512 s = row_scale != nullptr ? _mm512_mul_ps(_mm512_set1_ps(row_scale[r]), cs)
                                              : cs;
        __m512 y = _mm512_mul_ps(
            _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(lanes, acc + r * kQNR)), s);
        if (bias != nullptr) y = _mm512_add_ps(y, b);
        if (res != nullptr) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(lanes, res + r * ldr));
        _mm512_mask_storeu_ps(c + r * ldc, lanes, y);
    }
}

}  // namespace rt
}  // namespace graphopt
