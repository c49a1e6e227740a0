// Single-precision GEMM with a fused bias + activation epilogue:
//
//     C[M, N] = act(A[M, K] @ B[K, N] + bias[N])
//
// A and B are strided views (any element strides, including transposed, negative or zero), so
// torch-Linear weights ([N, K], "trans_b") are just B with swapped strides and need no copy.
// The implementation is a BLIS-style packed, cache-blocked GEMM; see gemm.cpp.
#pragma once

#include <cstdint>

#include "epilogue.h"

namespace graphopt {

// A read-only 2-D float32 view; strides are in elements, not bytes.
struct MatrixRef {
    const float* data;
    int64_t rows;
    int64_t cols;
    int64_t row_stride;
    int64_t col_stride;
};

struct GemmOptions {
    const float* bias = nullptr;  // contiguous [N], or null
    Activation activation = Activation::kNone;
    int threads = 0;              // 0: OpenMP default (omp_get_max_threads)
    bool force_portable = false;  // use the baseline-ISA kernels even when AVX2+FMA is available
};

// Cache blocking, shared by sgemm (gemm.cpp) and the runtime's gemm_run (rt_gemm.h) so both
// block -- and round -- alike:
constexpr int64_t kGemmMC = 144;   // A block rows (multiple of kMR): 144 x 256 x 4 B = 144 KiB, L2
constexpr int64_t kGemmKC = 256;   // block depth: a B micro-panel is 256 x 16 x 4 B = 16 KiB, L1
constexpr int64_t kGemmNC = 4080;  // B block columns (multiple of kNR): 4 MiB at kc=256, L3

// Computes C = act(A B + bias) into the row-major c (leading dimension ldc >= N). Requires
// a.cols == b.rows; shapes are validated by the caller (module.cpp).
void sgemm(const MatrixRef& a, const MatrixRef& b, float* c, int64_t ldc,
           const GemmOptions& options);

// Name of the kernel set sgemm would use ("avx2_fma_6x16" or "portable_6x16").
const char* sgemm_kernel_name(bool force_portable);

// How an M x N x K GEMM is split over threads: a tm x tn grid of C blocks of m_chunk x n_chunk
// (multiples of the micro-tile, kMR x kNR; the last row / column of blocks may be smaller).
struct GemmGrid {
    int64_t m_chunk, n_chunk;
    int64_t tm, tn;  // blocks along M / N: ceil(m / m_chunk), ceil(n / n_chunk)
};

// The one GEMM partitioner (sgemm here, the runtime's gemm_run in rt_gemm.h). Uses at most
// `threads` blocks and at most one per `min_macs_per_thread` multiply-adds (waking a thread
// for less costs more than it saves); among the tm x tn = threads' factorisations it takes the
// one whose busiest block is cheapest: padded compute plus the packing it repeats, its A block
// once per kGemmNC-column block (pack_cost_a per element, in multiply-add units) and its B block
// once (pack_cost_b; 0 for a pre-packed operand).
GemmGrid gemm_grid(int64_t m, int64_t n, int64_t k, int threads, double pack_cost_a,
                   double pack_cost_b, double min_macs_per_thread);

}  // namespace graphopt
