// Per-ISA building blocks of the SGEMM driver (gemm.cpp): the register-tiled micro-kernel, the
// transposing panel packers and the epilogue. One table per ISA; the driver picks a table once
// per call and never touches ISA-specific code itself.
//
// Packed layouts (BLIS-style), shared by every ISA so the driver's packing is ISA-neutral:
//   A panel: kMR rows x kc, stored k-major:  panel[k * kMR + r] = A(r, k)
//   B panel: kc x kNR cols, stored k-major:  panel[k * kNR + j] = B(k, j)
// Rows/columns past the matrix edge are zero in the panel, so the micro-kernel always computes a
// full kMR x kNR tile and the driver trims it.
#pragma once

#include <cstdint>

#include "epilogue.h"

namespace graphopt {

// Register tile: 6 rows x 16 columns = 12 AVX2 accumulators (6 x 2 ymm), leaving 4 of the 16
// ymm registers for the two B vectors and the A broadcast.
constexpr int64_t kMR = 6;
constexpr int64_t kNR = 16;

// c[0:kMR, 0:kNR] (+)= a_panel . b_panel over kc steps; ldc is c's row stride in elements.
// accumulate=false overwrites c (first K block), true adds to it (later K blocks).
using MicroKernelFn = void (*)(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                               bool accumulate);

// Packs `rows` (<= R) source rows that are contiguous along k into one k-major panel of R rows:
// dst[k * R + r] = src[r * ld + k] for k < kc, r < rows; rows in [rows, R) are zero-filled.
// This is a transpose, the expensive packing case (row-major A, and B given as [N, K]).
using PackKContiguousFn = void (*)(int64_t kc, int64_t rows, const float* src, int64_t ld,
                                   float* dst);

struct GemmKernels {
    const char* name;
    MicroKernelFn micro_kernel;
    PackKContiguousFn pack_a_k_contiguous;  // R = kMR
    PackKContiguousFn pack_b_k_contiguous;  // R = kNR
    EpilogueFn epilogue;
};

const GemmKernels& portable_gemm_kernels();
const GemmKernels& avx2_fma_gemm_kernels();

// Generic scalar transposing pack (any R), shared by the portable table and the AVX2 packers'
// edge panels.
template <int64_t R>
inline void pack_k_contiguous_scalar(int64_t kc, int64_t rows, const float* src, int64_t ld,
                                     float* dst) {
    for (int64_t r = 0; r < rows; ++r) {
        const float* s = src + r * ld;
        for (int64_t k = 0; k < kc; ++k) dst[k * R + r] = s[k];
    }
    for (int64_t r = rows; r < R; ++r) {
        for (int64_t k = 0; k < kc; ++k) dst[k * R + r] = 0.0f;
    }
}

}  // namespace graphopt
