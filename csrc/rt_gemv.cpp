// GEMV path: packing, the portable panel kernel and the threaded driver (see rt_gemv.h).
#include "rt_gemv.h"

#include <algorithm>

#include "cpu.h"
#include "rt_parallel.h"

namespace graphopt {
namespace rt {

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

void gemv_run(const MatrixRef& a, const PackedMatrix& b, float* c, int64_t ldc,
              const EpilogueSpec& ep, int threads) {
    const GemvPanelFn panel_fn =
        cpu_features().use_avx2_fma ? gemv_panel_avx2 : gemv_panel_portable;
    const GemmKernels& kern = gemm_kernels();
    const int64_t rows = a.rows, k = b.depth(), n = b.rows();
    const int64_t kc_max = gemm_k_block(k);  // PackedMatrix::pack_b's K blocks
    const int64_t panels = ceil_div(n, kGemvCols);
    // Work per panel: the bytes of B it streams.
    parallel_for(threads, panels, k * kGemvCols * 4 / 8, [&](int64_t q0, int64_t q1) {
        alignas(64) float tile[kGemvMaxRows * kGemvCols];
        alignas(64) float part[kGemvMaxRows * kGemvCols];
        for (int64_t q = q0; q < q1; ++q) {
            const int64_t j0 = q * kGemvCols;
            for (int64_t pc = 0; pc < k; pc += kc_max) {
                const int64_t kc = std::min(kc_max, k - pc);
                const float* ak = a.data + pc * a.col_stride;
                if (pc == 0) {
                    panel_fn(rows, kc, ak, a.row_stride, a.col_stride, b.panel(pc, kc, j0), tile);
                    continue;
                }
                panel_fn(rows, kc, ak, a.row_stride, a.col_stride, b.panel(pc, kc, j0), part);
                for (int64_t i = 0; i < rows * kGemvCols; ++i) tile[i] += part[i];
            }
            const int64_t nr = std::min(kGemvCols, n - j0);
            gemv_store_tile(kern, tile, c, ldc, j0, rows, nr, ep);
        }
    });
}

}  // namespace rt
}  // namespace graphopt
