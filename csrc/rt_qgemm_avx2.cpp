// AVX2 kernels of the int8 GEMM (rt_qgemm.h): the kPairI16 tile (vpmaddwd on i16 pairs, exact
// for every int8 weight and u8 activation), min / max, the DynamicQuantizeLinear quantizer and
// the dequantize epilogue.
//
// fp-contract off: the quantizer and the epilogue must round like the reference (divide, round;
// multiply, then add), never as a fused multiply-add.
#pragma GCC optimize("fp-contract=off")

#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "cpu.h"
#include "rt_qgemm.h"

// a panel i16 [steps][6][2], b panel i16 [steps][16][2] (two vectors of 8 columns x 2 k).
// vpmaddwd: i16 x i16 pair sums into i32, exact.
#define GRAPHOPT_QTILE_TARGET GRAPHOPT_TARGET_AVX2_FMA
#define GRAPHOPT_QTILE_STEP(acc, a, b) _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
#include "rt_qgemm_tile.h"

namespace graphopt {
namespace rt {

GRAPHOPT_TARGET_AVX2_FMA void qminmax_avx2(const float* x, int64_t rows, int64_t cols,
                                           int64_t rs, float* lo, float* hi) {
    for (int64_t r = 0; r < rows; ++r) {
        const float* row = x + r * rs;
        if (cols <= 0) {
            lo[r] = hi[r] = 0.0f;
            continue;
        }
        float l = row[0], h = row[0];
        int64_t j = 0;
        if (cols >= 8) {
            __m256 vl = _mm256_loadu_ps(row), vh = vl;
            for (j = 8; j + 8 <= cols; j += 8) {
                const __m256 v = _mm256_loadu_ps(row + j);
                vl = _mm256_min_ps(vl, v);
                vh = _mm256_max_ps(vh, v);
            }
            alignas(32) float tl[8], th[8];
            _mm256_store_ps(tl, vl);
            _mm256_store_ps(th, vh);
            for (int i = 0; i < 8; ++i) {
                l = std::min(l, tl[i]);
                h = std::max(h, th[i]);
            }
        }
        for (; j < cols; ++j) {
            l = std::min(l, row[j]);
            h = std::max(h, row[j]);
        }
        lo[r] = l;
        hi[r] = h;
    }
}

GRAPHOPT_TARGET_AVX2_FMA void qquantize_avx2(const float* x, int64_t n, float scale, float zp,
                                             uint8_t* q) {
    const __m256 vs = _mm256_set1_ps(scale), vz = _mm256_set1_ps(zp);
    const __m256 zero = _mm256_setzero_ps(), top = _mm256_set1_ps(255.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    // round(x / scale) without a division per element where that is provably the same integer
    // (quantize_fast_ok in rt_qgemm.h): y = x * (1 / scale), and a vector with any lane near a
    // half-integer, beyond the bound or NaN takes the true division, as the reference.
    const float inv = 1.0f / scale;
    const bool fast = quantize_fast_ok(scale, inv);
    const __m256 vinv = _mm256_set1_ps(inv), sign = _mm256_set1_ps(-0.0f);
    const __m256 margin = _mm256_set1_ps(kQuantFastMargin), bound = _mm256_set1_ps(kQuantFastBound);
    auto one = [&](const float* p) {
        const __m256 xv = _mm256_loadu_ps(p);
        __m256 v;
        if (fast) {
            const __m256 y = _mm256_mul_ps(xv, vinv);
            v = _mm256_round_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            const __m256 off = _mm256_andnot_ps(sign, _mm256_sub_ps(y, v));
            const __m256 ok = _mm256_and_ps(_mm256_cmp_ps(off, margin, _CMP_LT_OQ),
                                            _mm256_cmp_ps(_mm256_andnot_ps(sign, y), bound,
                                                          _CMP_LT_OQ));
            if (_mm256_movemask_ps(ok) != 0xff) {
                v = _mm256_round_ps(_mm256_div_ps(xv, vs),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            }
        } else {
            v = _mm256_round_ps(_mm256_div_ps(xv, vs),  // a true division, as the reference
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        }
        v = _mm256_add_ps(v, vz);
        v = _mm256_min_ps(_mm256_max_ps(v, zero), top);  // max(NaN, 0) = 0
        return _mm256_cvttps_epi32(v);
    };
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m256i p01 = _mm256_packus_epi32(one(x + i), one(x + i + 8));
        const __m256i p23 = _mm256_packus_epi32(one(x + i + 16), one(x + i + 24));
        const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(p01, p23), order);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), bytes);
    }
    for (; i + 8 <= n; i += 8) {  // (values already in [0, 255])
        alignas(32) int32_t lanes[8];
        _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), one(x + i));
        for (int j = 0; j < 8; ++j) q[i + j] = static_cast<uint8_t>(lanes[j]);
    }
    for (; i < n; ++i) q[i] = quantize_one(x[i], scale, zp);
}

GRAPHOPT_TARGET_AVX2_FMA void qdequant_avx2(const int32_t* acc, int64_t rows, int64_t cols,
                                            const float* col_scale, const float* row_scale,
                                            const float* bias, const float* res, int64_t ldr,
                                            float* c, int64_t ldc) {
    if (cols != kQNR) {
        qdequant_portable(acc, rows, cols, col_scale, row_scale, bias, res, ldr, c, ldc);
        return;
    }
    const __m256 cs0 = _mm256_loadu_ps(col_scale), cs1 = _mm256_loadu_ps(col_scale + 8);
    const __m256 b0 = bias != nullptr ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
    const __m256 b1 = bias != nullptr ? _mm256_loadu_ps(bias + 8) : _mm256_setzero_ps();
    for (int64_t r = 0; r < rows; ++r) {
        const int32_t* a = acc + r * kQNR;
        __m256 s0 = cs0, s1 = cs1;
        if (row_scale != nullptr) {  // the reference's one f32 product x_scale[m] * w_scale[n]
            const __m256 rs = _mm256_set1_ps(row_scale[r]);
            s0 = _mm256_mul_ps(rs, cs0);
            s1 = _mm256_mul_ps(rs, cs1);
        }
        __m256 y0 = _mm256_mul_ps(
            _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a))), s0);
        __m256 y1 = _mm256_mul_ps(
            _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + 8))), s1);
        if (bias != nullptr) {
            y0 = _mm256_add_ps(y0, b0);
            y1 = _mm256_add_ps(y1, b1);
        }
        if (res != nullptr) {
            y0 = _mm256_add_ps(y0, _mm256_loadu_ps(res + r * ldr));
            y1 = _mm256_add_ps(y1, _mm256_loadu_ps(res + r * ldr + 8));
        }
        _mm256_storeu_ps(c + r * ldc, y0);
        _mm256_storeu_ps(c + r * ldc + 8, y1);
    }
}

const QGemmKernels& avx2_qgemm_kernels() {
    static const QGemmKernels k{"avx2_pair_i16", QFormat::kPairI16, qtile, qminmax_avx2,
                                qquantize_avx2, qdequant_avx2};
    return k;
}

}  // namespace rt
}  // namespace graphopt
