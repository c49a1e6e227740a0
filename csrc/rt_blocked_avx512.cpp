// AVX-512 instantiation of the blocked-layout kernels (rt_blocked_impl.h): one zmm register is
// one pixel of one 16-channel block. Compiled for avx512f through the pragma below and only
// reached through blocked_ops() after run-time CPU detection.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <utility>

#include "rt_blocked.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
// GCC 12's avx512fintrin.h seeds max/min with _mm512_undefined_*() (GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace graphopt {
namespace rt {
namespace {

struct Avx512Block {
    using V = __m512;
    static V load(const float* p) { return _mm512_loadu_ps(p); }
    static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
    static V set1(float x) { return _mm512_set1_ps(x); }
    static V zero() { return _mm512_setzero_ps(); }
    static V add(V a, V b) { return _mm512_add_ps(a, b); }
    static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
    static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
    // maxps / minps: the second operand where either is NaN.
    static V max(V a, V b) { return _mm512_max_ps(a, b); }
    static V min(V a, V b) { return _mm512_min_ps(a, b); }
    // NaN-propagating max: where either is NaN, a + b (a NaN).
    static V maxnan(V a, V b) {
        const __mmask16 unordered = _mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q);
        return _mm512_mask_add_ps(_mm512_max_ps(a, b), unordered, a, b);
    }
};

#include "rt_blocked_impl.h"

}  // namespace

const BlockedOps& blocked_ops_avx512() {
    static const BlockedOps ops = make_blocked_ops<Avx512Block>("avx512");
    return ops;
}

}  // namespace rt
}  // namespace graphopt

#pragma GCC diagnostic pop
#pragma GCC pop_options
