// One row of attention's streaming softmax on AVX-512 for the f32 products (rt_attention.cpp):
// the row's scores masked (a bool mask's bytes read in registers), their maximum, then
// exp(s - m) in place with the row sum, all with masked tails instead of scalar loops. The
// AMX path has its bf16 twin (attn_amx_softmax_row, rt_attention_amx.cpp).
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "cpu.h"
#include "rt_amx.h"

// GCC 12's avx512fintrin.h seeds some intrinsics with _mm512_undefined_*(), which
// -Wmaybe-uninitialized (and, in _mm512_reduce_*_ps, -Wuninitialized) reports: false positives.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include "vec_exp_avx512.h"

namespace graphopt {
namespace rt {

GRAPHOPT_TARGET_AVX512 float attn_softmax_row_avx512(float* srow, int64_t cols,
                                                     const uint8_t* keep, float m_old,
                                                     float* m_new) {
    const __m512 vneg = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    __m512 vmax = vneg;
    for (int64_t j = 0; j < cols; j += 16) {
        const __mmask16 lanes = cols - j >= 16 ? static_cast<__mmask16>(0xffff)
                                               : static_cast<__mmask16>((1u << (cols - j)) - 1u);
        __m512 v = _mm512_mask_loadu_ps(vneg, lanes, srow + j);
        if (keep != nullptr) {  // bytes -> 32-bit lanes -> "nonzero" mask (AVX512F only)
            alignas(16) uint8_t tail[16] = {};
            const uint8_t* at = keep + j;
            if (cols - j < 16) {  // never read past the row's mask bytes
                std::memcpy(tail, at, static_cast<size_t>(cols - j));
                at = tail;
            }
            const __m512i bytes =
                _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(at)));
            const __mmask16 shown = _mm512_test_epi32_mask(bytes, bytes);
            v = _mm512_mask_mov_ps(vneg, shown, v);
            _mm512_mask_storeu_ps(srow + j, lanes, v);
        }
        vmax = _mm512_max_ps(vmax, v);
    }
    const float m = std::max(m_old, _mm512_reduce_max_ps(vmax));
    *m_new = m;
    if (m == -std::numeric_limits<float>::infinity()) {  // nothing visible yet: P is 0
        std::memset(srow, 0, static_cast<size_t>(cols) * sizeof(float));
        return 0.0f;
    }
    const __m512 vm = _mm512_set1_ps(m);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < cols; j += 16) {
        const __mmask16 lanes = cols - j >= 16 ? static_cast<__mmask16>(0xffff)
                                               : static_cast<__mmask16>((1u << (cols - j)) - 1u);
        const __m512 e = _mm512_maskz_mov_ps(
            lanes, vexp::exp_avx512(_mm512_sub_ps(_mm512_mask_loadu_ps(vneg, lanes, srow + j),
                                                  vm)));
        sum = _mm512_add_ps(sum, e);
        _mm512_mask_storeu_ps(srow + j, lanes, e);
    }
    return _mm512_reduce_add_ps(sum);
}

}  // namespace rt
}  // namespace graphopt
