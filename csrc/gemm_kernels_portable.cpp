// Portable GEMM kernels: plain C++ compiled for the baseline ISA. The compiler auto-vectorises
// the inner loops with SSE2; this path exists for CPUs without AVX2/FMA and is exercised in CI
// through sgemm(..., force_portable=True).
#include "gemm_kernels.h"

namespace graphopt {

namespace {

void micro_kernel_portable(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                           bool accumulate) {
    float acc[kMR][kNR] = {};
    for (int64_t k = 0; k < kc; ++k) {
        const float* ak = a + k * kMR;
        const float* bk = b + k * kNR;
        for (int64_t i = 0; i < kMR; ++i) {
            const float ai = ak[i];
            for (int64_t j = 0; j < kNR; ++j) acc[i][j] += ai * bk[j];
        }
    }
    for (int64_t i = 0; i < kMR; ++i) {
        float* ci = c + i * ldc;
        if (accumulate) {
            for (int64_t j = 0; j < kNR; ++j) ci[j] += acc[i][j];
        } else {
            for (int64_t j = 0; j < kNR; ++j) ci[j] = acc[i][j];
        }
    }
}

void pack_a_portable(int64_t kc, int64_t rows, const float* src, int64_t ld, float* dst) {
    pack_k_contiguous_scalar<kMR>(kc, rows, src, ld, dst);
}

void pack_b_portable(int64_t kc, int64_t rows, const float* src, int64_t ld, float* dst) {
    pack_k_contiguous_scalar<kNR>(kc, rows, src, ld, dst);
}

}  // namespace

const GemmKernels& portable_gemm_kernels() {
    static const GemmKernels kernels{"portable_6x16", micro_kernel_portable, pack_a_portable,
                                     pack_b_portable, epilogue_portable};
    return kernels;
}

}  // namespace graphopt
