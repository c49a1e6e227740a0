// AVX-512 epilogue: the AVX2 one (epilogue_avx2.cpp) on 16 lanes.
//
// Every lane runs exactly the operations of the AVX2 version (the same polynomials, the same
// exp of vec_exp_avx512.h, true divisions, selections where the AVX2 code blends), so both give
// the same bits: a result does not depend on which ISA a machine has or where a tile boundary
// fell. Tails use masked loads / stores of the same full-vector arithmetic. At AMX speeds the
// epilogue is a visible share of a GEMM (BERT's gelu over 128 x 3072 per layer); twice the lanes
// halve it.
#include <immintrin.h>

#include "activate_avx512.h"
#include "cpu.h"
#include "epilogue.h"

namespace graphopt {

namespace {

template <Activation A>
GRAPHOPT_TARGET_AVX512 void epilogue_rows_avx512(float* c, int64_t ldc, int64_t rows,
                                                 int64_t cols, const float* bias) {
    const bool has_bias = bias != nullptr;
    const int64_t tail = cols % 16;
    const __mmask16 tail_mask = static_cast<__mmask16>((1u << tail) - 1u);
    for (int64_t r = 0; r < rows; ++r) {
        float* row = c + r * ldc;
        int64_t j = 0;
        for (; j + 16 <= cols; j += 16) {
            __m512 v = _mm512_loadu_ps(row + j);
            if (has_bias) v = _mm512_add_ps(v, _mm512_loadu_ps(bias + j));
            _mm512_storeu_ps(row + j, activate512<A>(v));
        }
        if (tail != 0) {  // masked lanes load 0 (as the AVX2 stack buffer) and are not stored
            __m512 v = _mm512_maskz_loadu_ps(tail_mask, row + j);
            if (has_bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(tail_mask, bias + j));
            _mm512_mask_storeu_ps(row + j, tail_mask, activate512<A>(v));
        }
    }
}

}  // namespace

GRAPHOPT_TARGET_AVX512 void epilogue_avx512(float* c, int64_t ldc, int64_t rows, int64_t cols,
                                            const float* bias, Activation act) {
    switch (act) {
        case Activation::kNone:
            if (bias != nullptr) epilogue_rows_avx512<Activation::kNone>(c, ldc, rows, cols, bias);
            return;
        case Activation::kRelu:
            return epilogue_rows_avx512<Activation::kRelu>(c, ldc, rows, cols, bias);
        case Activation::kRelu6:
            return epilogue_rows_avx512<Activation::kRelu6>(c, ldc, rows, cols, bias);
        case Activation::kGelu:
            return epilogue_rows_avx512<Activation::kGelu>(c, ldc, rows, cols, bias);
        case Activation::kGeluTanh:
            return epilogue_rows_avx512<Activation::kGeluTanh>(c, ldc, rows, cols, bias);
        case Activation::kSilu:
            return epilogue_rows_avx512<Activation::kSilu>(c, ldc, rows, cols, bias);
        case Activation::kSigmoid:
            return epilogue_rows_avx512<Activation::kSigmoid>(c, ldc, rows, cols, bias);
        case Activation::kTanh:
            return epilogue_rows_avx512<Activation::kTanh>(c, ldc, rows, cols, bias);
        case Activation::kHardswish:
            return epilogue_rows_avx512<Activation::kHardswish>(c, ldc, rows, cols, bias);
        default:  // not an epilogue activation (see activation.h)
            return;
    }
}

}  // namespace graphopt
