// AVX2+FMA epilogue: vectorised bias add and activations.
//
// Every function here carries GRAPHOPT_TARGET_AVX2_FMA; the file is compiled with baseline flags
// and only reached after run-time dispatch (see cpu.h). Transcendentals use the classic
// range-reduction + polynomial approach:
//   exp(x)  = 2^n * p(r),  r = x - n ln2 (Cody-Waite split), p a degree-6 polynomial: the one
//             shared with the vector loops (vec_exp_avx2.h, one range rule).
//   erfc(z) = eight degree-7 polynomials on [0, 4), 0 beyond (erfc_pieces.h: absolute error
//             <= 8e-8); used for the exact (erf) gelu without the cancellation of 1 + erf(z)
//             at large negative z.
//   tanh(x) = odd polynomial for |x| < 0.625, else sign(x) * (1 - 2 / (exp(2|x|) + 1)).
// Measured against <cmath> these stay within ~2e-6 relative error (see tests).
#include <immintrin.h>

#include "cpu.h"
#include "epilogue.h"
#include "erfc_pieces.h"
#include "vec_exp_avx2.h"

namespace graphopt {

namespace {

// The one AVX2 exp (vec_exp_avx2.h): 0 below -87.34, +inf above 88.38, NaN propagates.
GRAPHOPT_TARGET_AVX2_FMA inline __m256 exp256(__m256 x) { return vexp::exp_avx2(x); }

// 1 / (1 + exp(-x)); a true division (not rcp) keeps ~1 ulp.
GRAPHOPT_TARGET_AVX2_FMA inline __m256 sigmoid256(__m256 x) {
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), x));
    return _mm256_div_ps(one, _mm256_add_ps(one, e));
}

GRAPHOPT_TARGET_AVX2_FMA inline __m256 tanh256(__m256 x) {
    const __m256 sign_mask = _mm256_set1_ps(-0.0f);
    const __m256 ax = _mm256_andnot_ps(sign_mask, x);
    // Small |x|: odd minimax polynomial (Cephes tanhf), avoids cancellation in 1 - 2/(e+1).
    const __m256 z = _mm256_mul_ps(x, x);
    __m256 p = _mm256_set1_ps(-5.70498872745e-3f);
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(2.06390887954e-2f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-5.37397155531e-2f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(1.33314422036e-1f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-3.33332819422e-1f));
    const __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(p, z), x, x);
    // Large |x|: 1 - 2 / (exp(2|x|) + 1), sign restored afterwards.
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 e = exp256(_mm256_add_ps(ax, ax));
    const __m256 large_abs =
        _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e, one)));
    const __m256 large = _mm256_or_ps(large_abs, _mm256_and_ps(x, sign_mask));
    const __m256 use_small = _mm256_cmp_ps(ax, _mm256_set1_ps(0.625f), _CMP_LT_OQ);
    return _mm256_blendv_ps(large, small, use_small);
}

// Coefficient k of each lane's interval (idx & 7).
GRAPHOPT_TARGET_AVX2_FMA inline __m256 erfc_coef256(int k, __m256i idx) {
    return _mm256_permutevar8x32_ps(_mm256_loadu_ps(kErfcPieces[k]), idx);
}

// erfc(z) for z >= 0 (NaN stays NaN): the piecewise polynomials of erfc_pieces.h.
GRAPHOPT_TARGET_AVX2_FMA inline __m256 erfc_nonneg256(__m256 z) {
    const __m256i idx = _mm256_cvttps_epi32(_mm256_add_ps(z, z));
    const __m256 center = _mm256_fmadd_ps(_mm256_set1_ps(2.0f), _mm256_cvtepi32_ps(idx),
                                          _mm256_set1_ps(1.0f));
    const __m256 w = _mm256_fmsub_ps(_mm256_set1_ps(4.0f), z, center);
    __m256 p = erfc_coef256(7, idx);
    for (int k = 6; k >= 0; --k) p = _mm256_fmadd_ps(p, w, erfc_coef256(k, idx));
    // 0 from z = 4 on; NaN (unordered) is kept
    return _mm256_and_ps(p, _mm256_cmp_ps(z, _mm256_set1_ps(kErfcPiecesEnd), _CMP_NGE_UQ));
}

template <Activation A>
GRAPHOPT_TARGET_AVX2_FMA inline __m256 activate256(__m256 x) {
    if constexpr (A == Activation::kNone) {
        return x;
    } else if constexpr (A == Activation::kRelu) {
        // Operand order makes NaN propagate like torch (max/min return the second on NaN).
        return _mm256_max_ps(_mm256_setzero_ps(), x);
    } else if constexpr (A == Activation::kRelu6) {
        return _mm256_min_ps(_mm256_set1_ps(6.0f), _mm256_max_ps(_mm256_setzero_ps(), x));
    } else if constexpr (A == Activation::kGelu) {
        // x < 0: 0.5 x erfc(|x|/sqrt2);  x >= 0: x - 0.5 x erfc(|x|/sqrt2).
        const __m256 ax = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
        const __m256 e = erfc_nonneg256(_mm256_mul_ps(ax, _mm256_set1_ps(0.70710678118654752f)));
        const __m256 half_xe = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x), e);
        const __m256 pos = _mm256_sub_ps(x, half_xe);
        const __m256 is_neg = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
        return _mm256_blendv_ps(pos, half_xe, is_neg);
    } else if constexpr (A == Activation::kGeluTanh) {
        // 0.5 x (1 + tanh(y)) == x * sigmoid(2y), y = sqrt(2/pi) (x + 0.044715 x^3).
        const __m256 x2 = _mm256_mul_ps(x, x);
        const __m256 inner = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(0.044715f), x2), x, x);
        const __m256 two_y = _mm256_mul_ps(inner, _mm256_set1_ps(2.0f * 0.79788456080286536f));
        return _mm256_mul_ps(x, sigmoid256(two_y));
    } else if constexpr (A == Activation::kSilu) {
        const __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), x));
        return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
    } else if constexpr (A == Activation::kSigmoid) {
        return sigmoid256(x);
    } else if constexpr (A == Activation::kTanh) {
        return tanh256(x);
    } else {
        static_assert(A == Activation::kHardswish);
        const __m256 r6 = _mm256_min_ps(
            _mm256_set1_ps(6.0f),
            _mm256_max_ps(_mm256_setzero_ps(), _mm256_add_ps(x, _mm256_set1_ps(3.0f))));
        return _mm256_div_ps(_mm256_mul_ps(x, r6), _mm256_set1_ps(6.0f));
    }
}

template <Activation A>
GRAPHOPT_TARGET_AVX2_FMA void epilogue_rows_avx2(float* c, int64_t ldc, int64_t rows, int64_t cols,
                                                 const float* bias) {
    const bool has_bias = bias != nullptr;
    for (int64_t r = 0; r < rows; ++r) {
        float* row = c + r * ldc;
        int64_t j = 0;
        for (; j + 8 <= cols; j += 8) {
            __m256 v = _mm256_loadu_ps(row + j);
            if (has_bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + j));
            _mm256_storeu_ps(row + j, activate256<A>(v));
        }
        if (j < cols) {
            // Tail through a stack buffer so tail elements get bit-identical results to full
            // vectors: the output must not depend on where a tile boundary fell (threads=1 and
            // threads=2 partition differently and must agree exactly).
            alignas(32) float tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            alignas(32) float btmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            const int64_t n = cols - j;
            for (int64_t t = 0; t < n; ++t) tmp[t] = row[j + t];
            if (has_bias) {
                for (int64_t t = 0; t < n; ++t) btmp[t] = bias[j + t];
            }
            __m256 v = _mm256_load_ps(tmp);
            if (has_bias) v = _mm256_add_ps(v, _mm256_load_ps(btmp));
            _mm256_store_ps(tmp, activate256<A>(v));
            for (int64_t t = 0; t < n; ++t) row[j + t] = tmp[t];
        }
    }
}

}  // namespace

GRAPHOPT_TARGET_AVX2_FMA void epilogue_avx2(float* c, int64_t ldc, int64_t rows, int64_t cols,
                                            const float* bias, Activation act) {
    switch (act) {
        case Activation::kNone:
            if (bias != nullptr) epilogue_rows_avx2<Activation::kNone>(c, ldc, rows, cols, bias);
            return;
        case Activation::kRelu:
            return epilogue_rows_avx2<Activation::kRelu>(c, ldc, rows, cols, bias);
        case Activation::kRelu6:
            return epilogue_rows_avx2<Activation::kRelu6>(c, ldc, rows, cols, bias);
        case Activation::kGelu:
            return epilogue_rows_avx2<Activation::kGelu>(c, ldc, rows, cols, bias);
        case Activation::kGeluTanh:
            return epilogue_rows_avx2<Activation::kGeluTanh>(c, ldc, rows, cols, bias);
        case Activation::kSilu:
            return epilogue_rows_avx2<Activation::kSilu>(c, ldc, rows, cols, bias);
        case Activation::kSigmoid:
            return epilogue_rows_avx2<Activation::kSigmoid>(c, ldc, rows, cols, bias);
        case Activation::kTanh:
            return epilogue_rows_avx2<Activation::kTanh>(c, ldc, rows, cols, bias);
        case Activation::kHardswish:
            return epilogue_rows_avx2<Activation::kHardswish>(c, ldc, rows, cols, bias);
        default:  // not an epilogue activation (see activation.h)
            return;
    }
}

}  // namespace graphopt
