// AVX2+FMA GEMV panel kernel: each 16-column panel of B is streamed once, for all rows of A.
#include <immintrin.h>

#include "cpu.h"
#include "rt_gemv.h"

namespace graphopt {
namespace rt {

namespace {

// Two independent accumulator sets (even / odd k) hide the FMA latency when rows is small.
template <int R>
GRAPHOPT_TARGET_AVX2_FMA void gemv_rows(int64_t k, const float* a, int64_t a_rs, int64_t a_cs,
                                        const float* panel, float* out) {
    __m256 acc[R][4];
    for (int r = 0; r < R; ++r) {
        for (int h = 0; h < 4; ++h) acc[r][h] = _mm256_setzero_ps();
    }
    int64_t kk = 0;
    for (; kk + 2 <= k; kk += 2) {
        const float* p = panel + kk * kGemvCols;
        _mm_prefetch(reinterpret_cast<const char*>(p + 64 * kGemvCols), _MM_HINT_T0);
        const __m256 b0 = _mm256_load_ps(p);
        const __m256 b1 = _mm256_load_ps(p + 8);
        const __m256 b2 = _mm256_load_ps(p + 16);
        const __m256 b3 = _mm256_load_ps(p + 24);
        for (int r = 0; r < R; ++r) {
            const float* ar = a + r * a_rs + kk * a_cs;
            const __m256 x0 = _mm256_broadcast_ss(ar);
            const __m256 x1 = _mm256_broadcast_ss(ar + a_cs);
            acc[r][0] = _mm256_fmadd_ps(x0, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(x0, b1, acc[r][1]);
            acc[r][2] = _mm256_fmadd_ps(x1, b2, acc[r][2]);
            acc[r][3] = _mm256_fmadd_ps(x1, b3, acc[r][3]);
        }
    }
    for (; kk < k; ++kk) {
        const float* p = panel + kk * kGemvCols;
        const __m256 b0 = _mm256_load_ps(p);
        const __m256 b1 = _mm256_load_ps(p + 8);
        for (int r = 0; r < R; ++r) {
            const __m256 x0 = _mm256_broadcast_ss(a + r * a_rs + kk * a_cs);
            acc[r][0] = _mm256_fmadd_ps(x0, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(x0, b1, acc[r][1]);
        }
    }
    for (int r = 0; r < R; ++r) {
        _mm256_storeu_ps(out + r * kGemvCols, _mm256_add_ps(acc[r][0], acc[r][2]));
        _mm256_storeu_ps(out + r * kGemvCols + 8, _mm256_add_ps(acc[r][1], acc[r][3]));
    }
}

}  // namespace

GRAPHOPT_TARGET_AVX2_FMA void gemv_panel_avx2(int64_t rows, int64_t k, const float* a,
                                              int64_t a_rs, int64_t a_cs, const float* panel,
                                              float* out) {
    switch (rows) {
        case 1:
            return gemv_rows<1>(k, a, a_rs, a_cs, panel, out);
        case 2:
            return gemv_rows<2>(k, a, a_rs, a_cs, panel, out);
        case 3:
            return gemv_rows<3>(k, a, a_rs, a_cs, panel, out);
        default:
            return gemv_rows<4>(k, a, a_rs, a_cs, panel, out);
    }
}

}  // namespace rt
}  // namespace graphopt
