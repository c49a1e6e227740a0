// AVX-VNNI tile of the int8 GEMM (rt_qgemm.h, format kQuadU8): vpdpbusd sums four u8 x s8
// products into each i32 lane with no intermediate saturation (unlike vpmaddubsw), so it is
// exact for every int8 weight; the zero point is corrected by the driver with the weight
// column sums. Chosen at run time when the CPU has AVX-VNNI (GRAPHOPT_DISABLE_VNNI=1 skips it);
// the other loops are the AVX2 ones.
#include <immintrin.h>

#include <cstring>

#include "cpu.h"
#include "rt_qgemm.h"

#if defined(__GNUC__) && __GNUC__ >= 11
#define GRAPHOPT_HAVE_AVXVNNI 1
#define GRAPHOPT_TARGET_AVXVNNI __attribute__((target("avx2,fma,avxvnni")))
#endif

namespace graphopt {
namespace rt {

#ifdef GRAPHOPT_HAVE_AVXVNNI
namespace {

// a panel u8 [steps][6][4] (one dword per row and step, broadcast), b panel s8 [steps][16][4].
// Named accumulators (c<row><half>): with arrays GCC keeps them on the stack.
#define GRAPHOPT_QROW_STEP(i)                                                            \
    if constexpr (R > i) {                                                               \
        int32_t word;                                                                    \
        std::memcpy(&word, as + (i) * 4, 4);                                             \
        const __m256i av = _mm256_set1_epi32(word);                                      \
        c##i##0 = _mm256_dpbusd_avx_epi32(c##i##0, av, b0);                              \
        c##i##1 = _mm256_dpbusd_avx_epi32(c##i##1, av, b1);                              \
    }
#define GRAPHOPT_QROW_STORE(i)                                                           \
    if constexpr (R > i) {                                                               \
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (i) * kQNR), c##i##0);      \
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (i) * kQNR + 8), c##i##1);  \
    }

template <int R>
GRAPHOPT_TARGET_AVXVNNI void tile_rows(int64_t steps, const uint8_t* a, const uint8_t* b,
                                       int32_t* out) {
    __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00,
            c21 = c00, c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    for (int64_t s = 0; s < steps; ++s) {
        const __m256i b0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(b + s * 64));
        const __m256i b1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(b + s * 64 + 32));
        const uint8_t* as = a + s * kQPanelStepBytesA;
        GRAPHOPT_QROW_STEP(0)
        GRAPHOPT_QROW_STEP(1)
        GRAPHOPT_QROW_STEP(2)
        GRAPHOPT_QROW_STEP(3)
        GRAPHOPT_QROW_STEP(4)
        GRAPHOPT_QROW_STEP(5)
    }
    GRAPHOPT_QROW_STORE(0)
    GRAPHOPT_QROW_STORE(1)
    GRAPHOPT_QROW_STORE(2)
    GRAPHOPT_QROW_STORE(3)
    GRAPHOPT_QROW_STORE(4)
    GRAPHOPT_QROW_STORE(5)
}
#undef GRAPHOPT_QROW_STEP
#undef GRAPHOPT_QROW_STORE

GRAPHOPT_TARGET_AVXVNNI void tile_vnni(int64_t rows, int64_t steps, const uint8_t* a,
                                       const uint8_t* b, int32_t* out) {
    switch (rows) {
        case 1: return tile_rows<1>(steps, a, b, out);
        case 2: return tile_rows<2>(steps, a, b, out);
        case 3: return tile_rows<3>(steps, a, b, out);
        case 4: return tile_rows<4>(steps, a, b, out);
        case 5: return tile_rows<5>(steps, a, b, out);
        default: return tile_rows<6>(steps, a, b, out);
    }
}

}  // namespace

const QGemmKernels& avxvnni_qgemm_kernels() {
    static const QGemmKernels k{"avxvnni_quad_u8", QFormat::kQuadU8, tile_vnni, qminmax_avx2,
                                qquantize_avx2, qdequant_avx2};
    return k;
}
#else
const QGemmKernels& avxvnni_qgemm_kernels() { return avx2_qgemm_kernels(); }
#endif

}  // namespace rt
}  // namespace graphopt
