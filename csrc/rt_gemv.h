// Matrix-vector-like products: C[M, N] = epilogue(A[M, K] @ B) for M <= kGemvMaxRows against a
// pre-packed constant B (a linear layer at batch 1, the MLP's whole workload).
//
// Such a product is bound by reading B once: each 16-column panel of the GEMM's own packing of
// B (PackedMatrix, K blocks of kc x 16 panels) is reduced in registers for all M rows at once,
// K block after K block; threads split the panels. The GEMM's 6x16 micro-kernel would compute 6
// rows for the 1 needed and re-read C per K block. Sharing the GEMM's packing matters for
// decoders: the prefill (M > 4) and decode (M = 1) plans of one model hold one packed copy of
// each weight, not two.
#pragma once

#include <cstdint>

#include "gemm.h"
#include "rt_gemm.h"

namespace graphopt {
namespace rt {

constexpr int64_t kGemvMaxRows = 4;
constexpr int64_t kGemvCols = 16;

// out[r * 16 + j] = sum_k A(r, k) * panel[k * 16 + j] for r < rows (rows <= kGemvMaxRows).
using GemvPanelFn = void (*)(int64_t rows, int64_t k, const float* a, int64_t a_rs, int64_t a_cs,
                             const float* panel, float* out);
void gemv_panel_portable(int64_t rows, int64_t k, const float* a, int64_t a_rs, int64_t a_cs,
                         const float* panel, float* out);
void gemv_panel_avx2(int64_t rows, int64_t k, const float* a, int64_t a_rs, int64_t a_cs,
                     const float* panel, float* out);

// Stores a finished [rows, kGemvCols] register tile into C columns [j0, j0 + nr) (added onto
// C when it holds the residual) and runs the epilogue on them.
inline void gemv_store_tile(const GemmKernels& kern, const float* tile, float* c, int64_t ldc,
                            int64_t j0, int64_t rows, int64_t nr, const EpilogueSpec& ep) {
    for (int64_t r = 0; r < rows; ++r) {
        float* crow = c + r * ldc + j0;
        const float* t = tile + r * kGemvCols;
        if (ep.residual_in_c) {
            for (int64_t j = 0; j < nr; ++j) crow[j] += t[j];
        } else {
            for (int64_t j = 0; j < nr; ++j) crow[j] = t[j];
        }
    }
    gemm_tile_epilogue(kern, c + j0, ldc, 0, j0, rows, nr, ep);
}

// C = epilogue(A @ B) for A [M <= kGemvMaxRows, K] and B packed by PackedMatrix::pack_b.
void gemv_run(const MatrixRef& a, const PackedMatrix& b, float* c, int64_t ldc,
              const EpilogueSpec& ep, int threads);

}  // namespace rt
}  // namespace graphopt
