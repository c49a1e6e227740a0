// The AVX-512 activations of the epilogue (epilogue_avx512.cpp), inline for the loops that apply
// them in registers: the GEMM epilogue itself and the int8 AMX tile finish (rt_qfinish_avx512.cpp),
// which must give the same bits. Every lane runs the operations of the AVX2 version
// (epilogue_avx2.cpp): the same polynomials, the same exp of vec_exp_avx512.h, true divisions.
#pragma once

#include <immintrin.h>

#include "activation.h"
#include "cpu.h"
#include "erfc_pieces.h"

// GCC 12's _mm512_max_ps / _mm512_min_ps pass _mm512_undefined_ps() through, which
// -Wmaybe-uninitialized reports at every use (GCC bug 105593): a false positive.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "vec_exp_avx512.h"

namespace graphopt {
namespace {

GRAPHOPT_TARGET_AVX512 inline __m512 exp512(__m512 x) { return vexp::exp_avx512(x); }

GRAPHOPT_TARGET_AVX512 inline __m512 neg512(__m512 x) {
    return _mm512_sub_ps(_mm512_setzero_ps(), x);
}

GRAPHOPT_TARGET_AVX512 inline __m512 abs512(__m512 x) {
    return _mm512_castsi512_ps(
        _mm512_andnot_si512(_mm512_castps_si512(_mm512_set1_ps(-0.0f)), _mm512_castps_si512(x)));
}

GRAPHOPT_TARGET_AVX512 inline __m512 sigmoid512(__m512 x) {
    const __m512 one = _mm512_set1_ps(1.0f);
    return _mm512_div_ps(one, _mm512_add_ps(one, exp512(neg512(x))));
}

GRAPHOPT_TARGET_AVX512 inline __m512 tanh512(__m512 x) {
    const __m512 ax = abs512(x);
    const __m512 z = _mm512_mul_ps(x, x);
    __m512 p = _mm512_set1_ps(-5.70498872745e-3f);
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(2.06390887954e-2f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-5.37397155531e-2f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.33314422036e-1f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-3.33332819422e-1f));
    const __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(p, z), x, x);
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512 e = exp512(_mm512_add_ps(ax, ax));
    const __m512 large_abs =
        _mm512_sub_ps(one, _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(e, one)));
    const __m512i sign = _mm512_and_si512(_mm512_castps_si512(x),
                                          _mm512_castps_si512(_mm512_set1_ps(-0.0f)));
    const __m512 large = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(large_abs), sign));
    const __mmask16 use_small = _mm512_cmp_ps_mask(ax, _mm512_set1_ps(0.625f), _CMP_LT_OQ);
    return _mm512_mask_mov_ps(large, use_small, small);
}

// Coefficient k of each lane's interval: the eight entries twice, so idx & 15 reads what the
// ymm permute's idx & 7 reads.
GRAPHOPT_TARGET_AVX512 inline __m512 erfc_coef512(int k, __m512i idx) {
    const __m512 table = _mm512_castpd_ps(
        _mm512_broadcast_f64x4(_mm256_castps_pd(_mm256_loadu_ps(kErfcPieces[k]))));
    return _mm512_permutexvar_ps(idx, table);
}

// erfc(z) for z >= 0: erfc_nonneg256 on 16 lanes (the table repeated in the upper half).
GRAPHOPT_TARGET_AVX512 inline __m512 erfc_nonneg512(__m512 z) {
    const __m512i idx = _mm512_cvttps_epi32(_mm512_add_ps(z, z));
    const __m512 center = _mm512_fmadd_ps(_mm512_set1_ps(2.0f), _mm512_cvtepi32_ps(idx),
                                          _mm512_set1_ps(1.0f));
    const __m512 w = _mm512_fmsub_ps(_mm512_set1_ps(4.0f), z, center);
    __m512 p = erfc_coef512(7, idx);
    for (int k = 6; k >= 0; --k) p = _mm512_fmadd_ps(p, w, erfc_coef512(k, idx));
    return _mm512_maskz_mov_ps(
        _mm512_cmp_ps_mask(z, _mm512_set1_ps(kErfcPiecesEnd), _CMP_NGE_UQ), p);
}

template <Activation A>
GRAPHOPT_TARGET_AVX512 inline __m512 activate512(__m512 x) {
    if constexpr (A == Activation::kNone) {
        return x;
    } else if constexpr (A == Activation::kRelu) {
        return _mm512_max_ps(_mm512_setzero_ps(), x);  // NaN propagates (second operand)
    } else if constexpr (A == Activation::kRelu6) {
        return _mm512_min_ps(_mm512_set1_ps(6.0f), _mm512_max_ps(_mm512_setzero_ps(), x));
    } else if constexpr (A == Activation::kGelu) {
        const __m512 e = erfc_nonneg512(_mm512_mul_ps(abs512(x),
                                                      _mm512_set1_ps(0.70710678118654752f)));
        const __m512 half_xe = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), e);
        const __m512 pos = _mm512_sub_ps(x, half_xe);
        const __mmask16 is_neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
        return _mm512_mask_mov_ps(pos, is_neg, half_xe);
    } else if constexpr (A == Activation::kGeluTanh) {
        const __m512 x2 = _mm512_mul_ps(x, x);
        const __m512 inner = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(0.044715f), x2), x, x);
        const __m512 two_y = _mm512_mul_ps(inner, _mm512_set1_ps(2.0f * 0.79788456080286536f));
        return _mm512_mul_ps(x, sigmoid512(two_y));
    } else if constexpr (A == Activation::kSilu) {
        const __m512 e = exp512(neg512(x));
        return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
    } else if constexpr (A == Activation::kSigmoid) {
        return sigmoid512(x);
    } else if constexpr (A == Activation::kTanh) {
        return tanh512(x);
    } else {
        static_assert(A == Activation::kHardswish);
        const __m512 r6 = _mm512_min_ps(
            _mm512_set1_ps(6.0f),
            _mm512_max_ps(_mm512_setzero_ps(), _mm512_add_ps(x, _mm512_set1_ps(3.0f))));
        return _mm512_div_ps(_mm512_mul_ps(x, r6), _mm512_set1_ps(6.0f));
    }
}

}  // namespace
}  // namespace graphopt
