// AVX2+FMA instantiation of the runtime's vector loops (8 floats per vector).
//
// The whole translation unit is compiled for avx2+fma through the pragma below (the build flags
// stay baseline); it is only reached through vec_ops() after run-time CPU detection.
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "cpu.h"
#include "rt_vec.h"
#include "vec_exp_avx2.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")

#include "rt_vec_impl.h"

namespace graphopt {
namespace rt {

namespace {

struct Avx2Simd {
    using V = __m256;
    static constexpr int64_t kWidth = 8;
    static V load(const float* p) { return _mm256_loadu_ps(p); }
    // p[0], p[2], ..., p[14]: two loads, then pick the even lanes and restore their order.
    static V load_even(const float* p) {
        const V a = _mm256_loadu_ps(p), b = _mm256_loadu_ps(p + 8);
        const V even = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));  // a0 a2 b0 b2 a4 a6 b4 b6
        return _mm256_castpd_ps(
            _mm256_permute4x64_pd(_mm256_castps_pd(even), _MM_SHUFFLE(3, 1, 2, 0)));
    }
    static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
    static V set1(float x) { return _mm256_set1_ps(x); }
    static V zero() { return _mm256_setzero_ps(); }
    static V add(V a, V b) { return _mm256_add_ps(a, b); }
    static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
    static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
    static V div(V a, V b) { return _mm256_div_ps(a, b); }
    static V max(V a, V b) { return _mm256_max_ps(a, b); }
    static V maxnan(V a, V b) {
        const V unordered = _mm256_cmp_ps(a, b, _CMP_UNORD_Q);
        return _mm256_blendv_ps(_mm256_max_ps(a, b), _mm256_add_ps(a, b), unordered);
    }
    static V minnan(V a, V b) {
        const V unordered = _mm256_cmp_ps(a, b, _CMP_UNORD_Q);
        return _mm256_blendv_ps(_mm256_min_ps(a, b), _mm256_add_ps(a, b), unordered);
    }
    static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }

    // The one AVX2 exp (vec_exp_avx2.h): exactly 0 below -87.34 (exp(-inf) must be 0 for
    // masked scores), +inf above 88.38, NaN propagates.
    static V exp(V x) { return vexp::exp_avx2(x); }
    static float exp1(float x) {
        alignas(32) float t[8] = {x, x, x, x, x, x, x, x};
        _mm256_store_ps(t, exp(_mm256_load_ps(t)));
        return t[0];
    }
    static float hsum(V v) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        return _mm_cvtss_f32(s);
    }
    static float hmax(V v) {
        __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
        return _mm_cvtss_f32(s);
    }
};

}  // namespace

const VecOps& vec_ops_avx2() {
    static const VecOps ops = make_vec_ops<Avx2Simd>("avx2_fma", epilogue_avx2);
    return ops;
}

}  // namespace rt
}  // namespace graphopt

#pragma GCC pop_options
