// The finish of an int8 AMX tile with f32 output in one pass over its rows (rt_qgemm.h
// qfinish_f32_avx512): zero-point correction, dequantization, bias, residual and the activation
// in registers. The unfused finish (amx_int8_zero_point, then qdequant_avx512 into C, then the
// epilogue reading C again) does the same operations in the same order, so the results are the
// same bits; this saves two loads and two stores per 16 outputs and three calls per piece.
//
// fp-contract off (as rt_qgemm_avx512.cpp): multiply, then add, like the reference.
#pragma GCC optimize("fp-contract=off")

#include <immintrin.h>

#include "activate_avx512.h"
#include "cpu.h"
#include "rt_qgemm.h"

namespace graphopt {
namespace rt {
namespace {

template <Activation A>
GRAPHOPT_TARGET_AVX512 void finish_rows(const QFinishF32& f, int64_t rows, int64_t cols) {
    const __mmask16 lanes =
        cols >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << cols) - 1u);
    const __m512i sums = f.colsum != nullptr ? _mm512_maskz_loadu_epi32(lanes, f.colsum)
                                             : _mm512_setzero_si512();
    const __m512 cs = _mm512_maskz_loadu_ps(lanes, f.col_scale);
    const __m512 b = f.bias != nullptr ? _mm512_maskz_loadu_ps(lanes, f.bias) : _mm512_setzero_ps();
    for (int64_t r = 0; r < rows; ++r) {
        __m512i acc = _mm512_maskz_loadu_epi32(lanes, f.acc + r * kQNR);
        if (f.colsum != nullptr) {  // amx_int8_zero_point
            const __m512i z = _mm512_set1_epi32(f.row_zp != nullptr ? f.row_zp[r] : f.zp);
            acc = _mm512_sub_epi32(acc, _mm512_mullo_epi32(z, sums));
        }
        // qdequant_avx512
        const __m512 s = f.row_scale != nullptr
                             ? _mm512_mul_ps(_mm512_set1_ps(f.row_scale[r]), cs) : cs;
        __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), s);
        if (f.bias != nullptr) y = _mm512_add_ps(y, b);
        if (f.res != nullptr) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(lanes, f.res + r * f.ldr));
        // epilogue_rows_avx512 (masked lanes are 0 there as here, and are not stored)
        if constexpr (A != Activation::kNone) y = activate512<A>(_mm512_maskz_mov_ps(lanes, y));
        _mm512_mask_storeu_ps(f.c + r * f.ldc, lanes, y);
    }
}

}  // namespace

GRAPHOPT_TARGET_AVX512 bool qfinish_f32_avx512(const QFinishF32& f, int64_t rows, int64_t cols,
                                               Activation act) {
    switch (act) {
        case Activation::kNone: finish_rows<Activation::kNone>(f, rows, cols); return true;
        case Activation::kRelu: finish_rows<Activation::kRelu>(f, rows, cols); return true;
        case Activation::kRelu6: finish_rows<Activation::kRelu6>(f, rows, cols); return true;
        case Activation::kGelu: finish_rows<Activation::kGelu>(f, rows, cols); return true;
        case Activation::kGeluTanh: finish_rows<Activation::kGeluTanh>(f, rows, cols); return true;
        case Activation::kSilu: finish_rows<Activation::kSilu>(f, rows, cols); return true;
        case Activation::kSigmoid: finish_rows<Activation::kSigmoid>(f, rows, cols); return true;
        case Activation::kTanh: finish_rows<Activation::kTanh>(f, rows, cols); return true;
        case Activation::kHardswish:
            finish_rows<Activation::kHardswish>(f, rows, cols);
            return true;
        default:  // the scalar activations of apply_activation: the unfused finish
            return false;
    }
}

}  // namespace rt
}  // namespace graphopt
