// AVX2+FMA GEMM kernels: the 6x16 register-tiled micro-kernel and 8x8-transpose panel packers.
// Every function carries GRAPHOPT_TARGET_AVX2_FMA and is reached only through run-time dispatch.
#include <immintrin.h>

#include "cpu.h"
#include "gemm_kernels.h"

namespace graphopt {

namespace {

// Per k step: 2 aligned B loads, 6 A broadcasts, 12 FMAs into 12 ymm accumulators. 12 independent
// accumulators cover FMA latency x throughput (4 cycles x 2 pipes) on current x86 cores.
GRAPHOPT_TARGET_AVX2_FMA void micro_kernel_avx2(int64_t kc, const float* a, const float* b,
                                                float* c, int64_t ldc, bool accumulate) {
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
    __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
    __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();

    // Warm the C tile while the K loop runs; it is read (accumulate) or written at the end.
    for (int64_t i = 0; i < kMR; ++i) {
        _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + kNR - 1), _MM_HINT_T0);
    }

#pragma GCC unroll 4
    for (int64_t k = 0; k < kc; ++k) {
        const __m256 b0 = _mm256_load_ps(b);
        const __m256 b1 = _mm256_load_ps(b + 8);
        __m256 av = _mm256_broadcast_ss(a + 0);
        c00 = _mm256_fmadd_ps(av, b0, c00);
        c01 = _mm256_fmadd_ps(av, b1, c01);
        av = _mm256_broadcast_ss(a + 1);
        c10 = _mm256_fmadd_ps(av, b0, c10);
        c11 = _mm256_fmadd_ps(av, b1, c11);
        av = _mm256_broadcast_ss(a + 2);
        c20 = _mm256_fmadd_ps(av, b0, c20);
        c21 = _mm256_fmadd_ps(av, b1, c21);
        av = _mm256_broadcast_ss(a + 3);
        c30 = _mm256_fmadd_ps(av, b0, c30);
        c31 = _mm256_fmadd_ps(av, b1, c31);
        av = _mm256_broadcast_ss(a + 4);
        c40 = _mm256_fmadd_ps(av, b0, c40);
        c41 = _mm256_fmadd_ps(av, b1, c41);
        av = _mm256_broadcast_ss(a + 5);
        c50 = _mm256_fmadd_ps(av, b0, c50);
        c51 = _mm256_fmadd_ps(av, b1, c51);
        a += kMR;
        b += kNR;
    }

    float* c0 = c;
    float* c1 = c + ldc;
    float* c2 = c + 2 * ldc;
    float* c3 = c + 3 * ldc;
    float* c4 = c + 4 * ldc;
    float* c5 = c + 5 * ldc;
    if (accumulate) {
        c00 = _mm256_add_ps(_mm256_loadu_ps(c0), c00);
        c01 = _mm256_add_ps(_mm256_loadu_ps(c0 + 8), c01);
        c10 = _mm256_add_ps(_mm256_loadu_ps(c1), c10);
        c11 = _mm256_add_ps(_mm256_loadu_ps(c1 + 8), c11);
        c20 = _mm256_add_ps(_mm256_loadu_ps(c2), c20);
        c21 = _mm256_add_ps(_mm256_loadu_ps(c2 + 8), c21);
        c30 = _mm256_add_ps(_mm256_loadu_ps(c3), c30);
        c31 = _mm256_add_ps(_mm256_loadu_ps(c3 + 8), c31);
        c40 = _mm256_add_ps(_mm256_loadu_ps(c4), c40);
        c41 = _mm256_add_ps(_mm256_loadu_ps(c4 + 8), c41);
        c50 = _mm256_add_ps(_mm256_loadu_ps(c5), c50);
        c51 = _mm256_add_ps(_mm256_loadu_ps(c5 + 8), c51);
    }
    _mm256_storeu_ps(c0, c00);
    _mm256_storeu_ps(c0 + 8, c01);
    _mm256_storeu_ps(c1, c10);
    _mm256_storeu_ps(c1 + 8, c11);
    _mm256_storeu_ps(c2, c20);
    _mm256_storeu_ps(c2 + 8, c21);
    _mm256_storeu_ps(c3, c30);
    _mm256_storeu_ps(c3 + 8, c31);
    _mm256_storeu_ps(c4, c40);
    _mm256_storeu_ps(c4 + 8, c41);
    _mm256_storeu_ps(c5, c50);
    _mm256_storeu_ps(c5 + 8, c51);
}

// In-register 8x8 transpose: on return r[k] holds column k of the input rows.
GRAPHOPT_TARGET_AVX2_FMA inline void transpose8x8(__m256 r[8]) {
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]);
    const __m256 t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]);
    const __m256 t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]);
    const __m256 t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]);
    const __m256 t7 = _mm256_unpackhi_ps(r[6], r[7]);
    const __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// 16-row panel (B given as [N, K]): two 8x8 transposes per 8 k steps, full-vector stores.
GRAPHOPT_TARGET_AVX2_FMA void pack_b_avx2(int64_t kc, int64_t rows, const float* src, int64_t ld,
                                          float* dst) {
    if (rows != kNR) {
        pack_k_contiguous_scalar<kNR>(kc, rows, src, ld, dst);
        return;
    }
    int64_t k = 0;
    for (; k + 8 <= kc; k += 8) {
        for (int64_t half = 0; half < 2; ++half) {
            __m256 r[8];
            const float* s = src + half * 8 * ld + k;
            for (int64_t i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(s + i * ld);
            transpose8x8(r);
            float* d = dst + k * kNR + half * 8;
            for (int64_t i = 0; i < 8; ++i) _mm256_store_ps(d + i * kNR, r[i]);
        }
    }
    for (; k < kc; ++k) {
        for (int64_t j = 0; j < kNR; ++j) dst[k * kNR + j] = src[j * ld + k];
    }
}

// 6-row panel (row-major A): one 8x8 transpose (two zero rows) per 8 k steps. Each transposed
// column is stored as 8 floats at dst[k * 6]; its 2 extra floats land on column k+1's slot and
// are overwritten by the next store, which is why the vector loop stops while a k is still left.
GRAPHOPT_TARGET_AVX2_FMA void pack_a_avx2(int64_t kc, int64_t rows, const float* src, int64_t ld,
                                          float* dst) {
    if (rows != kMR) {
        pack_k_contiguous_scalar<kMR>(kc, rows, src, ld, dst);
        return;
    }
    int64_t k = 0;
    for (; k + 8 < kc; k += 8) {
        __m256 r[8];
        for (int64_t i = 0; i < kMR; ++i) r[i] = _mm256_loadu_ps(src + i * ld + k);
        r[6] = _mm256_setzero_ps();
        r[7] = _mm256_setzero_ps();
        transpose8x8(r);
        float* d = dst + k * kMR;
        for (int64_t i = 0; i < 8; ++i) _mm256_storeu_ps(d + i * kMR, r[i]);
    }
    for (; k < kc; ++k) {
        for (int64_t i = 0; i < kMR; ++i) dst[k * kMR + i] = src[i * ld + k];
    }
}

}  // namespace

const GemmKernels& avx2_fma_gemm_kernels() {
    static const GemmKernels kernels{"avx2_fma_6x16", micro_kernel_avx2, pack_a_avx2, pack_b_avx2,
                                     epilogue_avx2};
    return kernels;
}

}  // namespace graphopt
