// The one vectorised exp of the AVX2 (and, in vec_exp_avx512.h, AVX-512) code: the SGEMM
// epilogue (epilogue_avx2.cpp: sigmoid, silu, gelu, gelu_tanh, tanh) and the runtime's vector
// loops (rt_vec_avx2.cpp / rt_vec_avx512.cpp: softmax, attention, layer norm...) all call it.
//
// exp(x) = 2^n * p(r), n = round(x / ln2), r = x - n ln2 (ln2 split in two so r is exact),
// p a degree-6 polynomial (Cephes expf coefficients), within ~2 ulp of std::exp. One range
// rule for every caller:
//   x < kExpLo (-87.33654, ln of the smallest normal float)   -> exactly 0 (exp(-inf) = 0:
//                                                               masked scores, softmax tails)
//   x > kExpHi (88.3762626647949 = 127.5 ln2)                 -> +inf (exp(+inf) = inf, so
//                                                               x / (1 + exp(-x)) is NaN at
//                                                               x = -inf, as in torch)
//   NaN                                                       -> NaN
// In between, x is used as is (clamping keeps 2^n a normal float for the polynomial).
#pragma once

#include <immintrin.h>

#include "cpu.h"

namespace graphopt {
namespace vexp {

constexpr float kExpLo = -87.33654f;
constexpr float kExpHi = 88.3762626647949f;
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;     // exact in float
constexpr float kLn2Lo = -2.12194440e-4f;  // ln2 - kLn2Hi
constexpr float kP0 = 1.9875691500e-4f;
constexpr float kP1 = 1.3981999507e-3f;
constexpr float kP2 = 8.3334519073e-3f;
constexpr float kP3 = 4.1665795894e-2f;
constexpr float kP4 = 1.6666665459e-1f;
constexpr float kP5 = 5.0000001201e-1f;

namespace {

GRAPHOPT_TARGET_AVX2_FMA inline __m256 exp_avx2(__m256 x) {
    const __m256 lo = _mm256_set1_ps(kExpLo);
    const __m256 hi = _mm256_set1_ps(kExpHi);
    const __m256 underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    const __m256 overflow = _mm256_cmp_ps(x, hi, _CMP_GT_OQ);
    // min/max return their second operand when either is NaN: x goes second so NaN propagates.
    __m256 xc = _mm256_min_ps(hi, x);
    xc = _mm256_max_ps(lo, xc);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(kLog2e)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
    __m256 p = _mm256_set1_ps(kP0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP5));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
    p = _mm256_add_ps(p, _mm256_set1_ps(1.0f));
    // n in [-126, 127] after the clamp: 2^n is a normal float.
    const __m256i e =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    const __m256 result = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    return _mm256_blendv_ps(_mm256_andnot_ps(underflow, result),
                            _mm256_set1_ps(__builtin_inff()), overflow);
}

}  // namespace
}  // namespace vexp
}  // namespace graphopt
