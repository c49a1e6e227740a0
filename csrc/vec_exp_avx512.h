// The AVX-512 form of the one vectorised exp (vec_exp_avx2.h): the same constants, range rule
// and operations per lane, so the AVX2 and AVX-512 vector loops give the same bits.
#pragma once

#include <immintrin.h>

#include "cpu.h"
#include "vec_exp_avx2.h"

namespace graphopt {
namespace vexp {
namespace {

GRAPHOPT_TARGET_AVX512 inline __m512 exp_avx512(__m512 x) {
    const __m512 lo = _mm512_set1_ps(kExpLo);
    const __m512 hi = _mm512_set1_ps(kExpHi);
    const __mmask16 underflow = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    const __mmask16 overflow = _mm512_cmp_ps_mask(x, hi, _CMP_GT_OQ);
    __m512 xc = _mm512_min_ps(hi, x);
    xc = _mm512_max_ps(lo, xc);
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(kLog2e)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), xc);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
    __m512 p = _mm512_set1_ps(kP0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP5));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
    p = _mm512_add_ps(p, _mm512_set1_ps(1.0f));
    const __m512i e =
        _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    const __m512 result = _mm512_mul_ps(p, _mm512_castsi512_ps(e));
    return _mm512_mask_mov_ps(_mm512_maskz_mov_ps(static_cast<__mmask16>(~underflow), result),
                              overflow, _mm512_set1_ps(__builtin_inff()));
}

}  // namespace
}  // namespace vexp
}  // namespace graphopt
