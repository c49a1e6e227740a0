// GEMV path: packing, the portable panel kernel and the threaded driver (see rt_gemv.h).
#include "rt_gemv.h"

#include <algorithm>

#include "cpu.h"
#include "rt_parallel.h"

namespace graphopt {
namespace rt {

PackedGemvB PackedGemvB::pack(const MatrixRef& b) {
    PackedGemvB out;
    out.k_ = b.rows;
    out.n_ = b.cols;
    const int64_t panels = ceil_div(std::max<int64_t>(b.cols, 1), kGemvCols);
    float* dst = out.storage_.reserve(panels * kGemvCols * std::max<int64_t>(b.rows, 1));
    for (int64_t q = 0; q < panels; ++q) {
        const int64_t j0 = q * kGemvCols;
        const int64_t cols = std::min(kGemvCols, b.cols - j0);
        float* p = dst + q * kGemvCols * b.rows;
        for (int64_t k = 0; k < b.rows; ++k) {
            const float* src = b.data + k * b.row_stride + j0 * b.col_stride;
            for (int64_t j = 0; j < cols; ++j) p[k * kGemvCols + j] = src[j * b.col_stride];
            for (int64_t j = cols; j < kGemvCols; ++j) p[k * kGemvCols + j] = 0.0f;
        }
    }
    return out;
}

void gemv_panel_portable(int64_t rows, int64_t k, const float* a, int64_t a_rs, int64_t a_cs,
                         const float* panel, float* out) {
    for (int64_t r = 0; r < rows; ++r) {
        float acc[kGemvCols] = {};
        const float* ar = a + r * a_rs;
        for (int64_t kk = 0; kk < k; ++kk) {
            const float av = ar[kk * a_cs];
            const float* p = panel + kk * kGemvCols;
            for (int64_t j = 0; j < kGemvCols; ++j) acc[j] += av * p[j];
        }
        std::copy(acc, acc + kGemvCols, out + r * kGemvCols);
    }
}

void gemv_run(const MatrixRef& a, const PackedGemvB& b, float* c, int64_t ldc,
              const EpilogueSpec& ep, int threads) {
    const GemvPanelFn panel_fn =
        cpu_features().use_avx2_fma ? gemv_panel_avx2 : gemv_panel_portable;
    const GemmKernels& kern = gemm_kernels();
    const int64_t rows = a.rows;
    const int64_t panels = ceil_div(b.n(), kGemvCols);
    // Work per panel: the bytes of B it streams.
    parallel_for(threads, panels, b.k() * kGemvCols * 4 / 8, [&](int64_t q0, int64_t q1) {
        alignas(64) float tile[kGemvMaxRows * kGemvCols];
        for (int64_t q = q0; q < q1; ++q) {
            panel_fn(rows, b.k(), a.data, a.row_stride, a.col_stride, b.panel(q), tile);
            const int64_t j0 = q * kGemvCols;
            const int64_t nr = std::min(kGemvCols, b.n() - j0);
            gemv_store_tile(kern, tile, c, ldc, j0, rows, nr, ep);
        }
    });
}

}  // namespace rt
}  // namespace graphopt
