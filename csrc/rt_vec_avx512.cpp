// AVX-512 instantiation of the runtime's vector loops (16 floats per vector).
//
// Same formulas as the AVX2 table (rt_vec_avx2.cpp): the same exp polynomial per element, so
// elementwise results agree bit for bit; reductions sum in 16 lanes instead of 8, a different
// (equally accurate) order. The GEMM-style epilogue stays the AVX2 one. The translation unit is
// compiled for avx512f through the pragma below and only reached through vec_ops() after
// run-time CPU detection.
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "cpu.h"
#include "epilogue.h"
#include "rt_vec.h"
#include "vec_exp_avx512.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
// GCC 12's avx512fintrin.h seeds max/min/extract with _mm512_undefined_*(), which
// -Wmaybe-uninitialized reports at every use (GCC bug 105593): a false positive.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "rt_vec_impl.h"

namespace graphopt {
namespace rt {

namespace {

struct Avx512Simd {
    using V = __m512;
    static constexpr int64_t kWidth = 16;
    static V load(const float* p) { return _mm512_loadu_ps(p); }
    // p[0], p[2], ..., p[30]: two loads, even lanes picked across both.
    static V load_even(const float* p) {
        const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6,
                                              4, 2, 0);
        return _mm512_permutex2var_ps(_mm512_loadu_ps(p), even, _mm512_loadu_ps(p + 16));
    }
    static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
    static V set1(float x) { return _mm512_set1_ps(x); }
    static V zero() { return _mm512_setzero_ps(); }
    static V add(V a, V b) { return _mm512_add_ps(a, b); }
    static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
    static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
    static V div(V a, V b) { return _mm512_div_ps(a, b); }
    static V max(V a, V b) { return _mm512_max_ps(a, b); }
    // NaN-propagating max / min: where either is NaN, a + b (a NaN).
    static V maxnan(V a, V b) {
        const __mmask16 unordered = _mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q);
        return _mm512_mask_add_ps(_mm512_max_ps(a, b), unordered, a, b);
    }
    static V minnan(V a, V b) {
        const __mmask16 unordered = _mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q);
        return _mm512_mask_add_ps(_mm512_min_ps(a, b), unordered, a, b);
    }
    static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }

    // The AVX2 table's exp, lane for lane (vec_exp_avx512.h: same constants and range rule).
    static V exp(V x) { return vexp::exp_avx512(x); }
    static float exp1(float x) {
        alignas(64) float t[16];
        _mm512_store_ps(t, exp(_mm512_set1_ps(x)));
        return t[0];
    }
    static float hsum(V v) { return _mm512_reduce_add_ps(v); }
    static float hmax(V v) { return _mm512_reduce_max_ps(v); }
};

}  // namespace

const VecOps& vec_ops_avx512() {
    static const VecOps ops = make_vec_ops<Avx512Simd>("avx512", epilogue_avx512);
    return ops;
}

}  // namespace rt
}  // namespace graphopt

#pragma GCC diagnostic pop
#pragma GCC pop_options
