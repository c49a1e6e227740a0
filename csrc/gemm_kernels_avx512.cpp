// AVX-512 GEMM kernel: a 6x32 register tile over two consecutive 16-column B panels.
//
// The packed layouts stay those of every ISA (kMR = 6 rows, kNR = 16 columns per panel, see
// gemm_kernels.h); only the register tile is wider. Per k step: 2 B loads (one zmm per panel),
// 6 A broadcasts, 12 FMAs into 12 zmm accumulators, enough independent FMAs to cover latency x
// throughput (4 cycles x 2 pipes). Each C element is still one FMA chain over k in the same
// order as the AVX2 6x16 kernel, so both give bit-identical results.
//
// Packers are the AVX2 ones (memory-bound; wider registers buy little there); the epilogue is
// the AVX2 one on 16 lanes (epilogue_avx512.cpp: its transcendentals are compute-bound).
// Every function carries GRAPHOPT_TARGET_AVX512 and is reached only through run-time dispatch.
#include <immintrin.h>

#include "cpu.h"
#include "gemm_kernels.h"

namespace graphopt {

namespace {

GRAPHOPT_TARGET_AVX512 void micro_kernel_6x32_avx512(int64_t kc, const float* a, const float* b,
                                                      float* c, int64_t ldc, bool accumulate) {
    const float* b_hi = b + kNR * kc;  // the second panel: columns 16..31 of the tile
    __m512 c00 = _mm512_setzero_ps(), c01 = _mm512_setzero_ps();
    __m512 c10 = _mm512_setzero_ps(), c11 = _mm512_setzero_ps();
    __m512 c20 = _mm512_setzero_ps(), c21 = _mm512_setzero_ps();
    __m512 c30 = _mm512_setzero_ps(), c31 = _mm512_setzero_ps();
    __m512 c40 = _mm512_setzero_ps(), c41 = _mm512_setzero_ps();
    __m512 c50 = _mm512_setzero_ps(), c51 = _mm512_setzero_ps();

    for (int64_t i = 0; i < kMR; ++i) {
        _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + 2 * kNR - 1), _MM_HINT_T0);
    }

#pragma GCC unroll 4
    for (int64_t k = 0; k < kc; ++k) {
        const __m512 b0 = _mm512_load_ps(b);
        const __m512 b1 = _mm512_load_ps(b_hi);
        __m512 av = _mm512_set1_ps(a[0]);
        c00 = _mm512_fmadd_ps(av, b0, c00);
        c01 = _mm512_fmadd_ps(av, b1, c01);
        av = _mm512_set1_ps(a[1]);
        c10 = _mm512_fmadd_ps(av, b0, c10);
        c11 = _mm512_fmadd_ps(av, b1, c11);
        av = _mm512_set1_ps(a[2]);
        c20 = _mm512_fmadd_ps(av, b0, c20);
        c21 = _mm512_fmadd_ps(av, b1, c21);
        av = _mm512_set1_ps(a[3]);
        c30 = _mm512_fmadd_ps(av, b0, c30);
        c31 = _mm512_fmadd_ps(av, b1, c31);
        av = _mm512_set1_ps(a[4]);
        c40 = _mm512_fmadd_ps(av, b0, c40);
        c41 = _mm512_fmadd_ps(av, b1, c41);
        av = _mm512_set1_ps(a[5]);
        c50 = _mm512_fmadd_ps(av, b0, c50);
        c51 = _mm512_fmadd_ps(av, b1, c51);
        a += kMR;
        b += kNR;
        b_hi += kNR;
    }

    __m512 acc[kMR][2] = {{c00, c01}, {c10, c11}, {c20, c21},
                          {c30, c31}, {c40, c41}, {c50, c51}};
    for (int64_t i = 0; i < kMR; ++i) {
        float* row = c + i * ldc;
        if (accumulate) {
            acc[i][0] = _mm512_add_ps(_mm512_loadu_ps(row), acc[i][0]);
            acc[i][1] = _mm512_add_ps(_mm512_loadu_ps(row + kNR), acc[i][1]);
        }
        _mm512_storeu_ps(row, acc[i][0]);
        _mm512_storeu_ps(row + kNR, acc[i][1]);
    }
}

}  // namespace

const GemmKernels& avx512_gemm_kernels() {
    static const GemmKernels kernels = [] {
        GemmKernels table = avx2_fma_gemm_kernels();
        table.name = "avx512_6x32";
        table.wide_micro_kernel = micro_kernel_6x32_avx512;
        table.epilogue = epilogue_avx512;
        return table;
    }();
    return kernels;
}

const GemmKernels& best_gemm_kernels(bool force_portable) {
    if (force_portable) return portable_gemm_kernels();
    if (cpu_features().use_avx512) return avx512_gemm_kernels();
    if (cpu_features().use_avx2_fma) return avx2_fma_gemm_kernels();
    return portable_gemm_kernels();
}

}  // namespace graphopt
