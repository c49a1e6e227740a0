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

// c[0:kMR, 0:2*kNR] (+)= a_panel . (two consecutive B panels: b and b + kNR * kc). Wider
// registers (AVX-512) fill their FMA pipes with a 6 x 32 tile while keeping the packed layout
// of every other ISA: the driver hands it pairs of B panels.
using WideMicroKernelFn = void (*)(int64_t kc, const float* a, const float* b, float* c,
                                   int64_t ldc, bool accumulate);

struct GemmKernels {
    const char* name;
    MicroKernelFn micro_kernel;
    PackKContiguousFn pack_a_k_contiguous;  // R = kMR
    PackKContiguousFn pack_b_k_contiguous;  // R = kNR
    EpilogueFn epilogue;
    WideMicroKernelFn wide_micro_kernel = nullptr;  // null: this ISA has none
};

const GemmKernels& portable_gemm_kernels();
const GemmKernels& avx2_fma_gemm_kernels();
const GemmKernels& avx512_gemm_kernels();  // AVX2 packers/epilogue + the 6x32 wide kernel

// The best table this CPU runs (AVX-512, else AVX2+FMA, else portable); force_portable for
// tests.
const GemmKernels& best_gemm_kernels(bool force_portable = false);

// Columns of C one macro-kernel step covers: two B panels when the ISA has a wide kernel.
inline int64_t tile_cols(const GemmKernels& kern) {
    return kern.wide_micro_kernel != nullptr ? 2 * kNR : kNR;
}

// C[0:mr, 0:nr] (+)= A panel (ap) . B panels from bp (nr <= tile_cols(kern) columns, in
// consecutive kNR panels kc deep), c's row stride ldc. Full tiles go to the micro-kernels in
// place; edge tiles are computed full size into `edge_tile` (kMR * kNR floats) and trimmed: the
// same arithmetic as a full tile, so results do not depend on tiling, nor on the ISA's width.
inline void compute_tile(const GemmKernels& kern, int64_t kc, const float* ap, const float* bp,
                         float* ct, int64_t ldc, int64_t mr, int64_t nr, bool accumulate,
                         float* edge_tile) {
    if (mr == kMR && nr == 2 * kNR && kern.wide_micro_kernel != nullptr) {
        kern.wide_micro_kernel(kc, ap, bp, ct, ldc, accumulate);
        return;
    }
    for (int64_t j0 = 0; j0 < nr; j0 += kNR) {
        const int64_t cols = nr - j0 < kNR ? nr - j0 : kNR;
        const float* b = bp + j0 * kc;
        float* c = ct + j0;
        if (mr == kMR && cols == kNR) {
            kern.micro_kernel(kc, ap, b, c, ldc, accumulate);
            continue;
        }
        kern.micro_kernel(kc, ap, b, edge_tile, kNR, false);
        for (int64_t i = 0; i < mr; ++i) {
            float* crow = c + i * ldc;
            const float* trow = edge_tile + i * kNR;
            if (accumulate) {
                for (int64_t j = 0; j < cols; ++j) crow[j] += trow[j];
            } else {
                for (int64_t j = 0; j < cols; ++j) crow[j] = trow[j];
            }
        }
    }
}

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
