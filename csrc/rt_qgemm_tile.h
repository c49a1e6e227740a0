// The int8 GEMM's register tile, one source for every x86 kernel set (rt_qgemm_avx2.cpp,
// rt_qgemm_vnni.cpp). The including file defines, before including it:
//   GRAPHOPT_QTILE_TARGET          the function target attribute of its ISA;
//   GRAPHOPT_QTILE_STEP(acc, a, b) acc += the 32-bit group products of broadcast a and panel b;
// and gets qtile(rows, steps, a, b, out) in an anonymous namespace.
//
// Tile: up to 6 rows x 16 columns = 12 ymm accumulators (two per row), 2 weight vectors and one
// broadcast: 15 of the 16 ymm registers. Each step reads one 32-bit group per row (an i16 pair
// or a u8 quad, broadcast) and 64 bytes of the weight panel.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "rt_qgemm.h"

namespace graphopt {
namespace rt {
namespace {

// Named accumulators c<row><half>: with arrays GCC keeps them on the stack.
#define GRAPHOPT_QROW_STEP(i)                                                            \
    if constexpr (R > i) {                                                               \
        int32_t word;                                                                    \
        std::memcpy(&word, as + (i) * 4, 4);                                             \
        const __m256i av = _mm256_set1_epi32(word);                                      \
        c##i##0 = GRAPHOPT_QTILE_STEP(c##i##0, av, b0);                                  \
        c##i##1 = GRAPHOPT_QTILE_STEP(c##i##1, av, b1);                                  \
    }
#define GRAPHOPT_QROW_STORE(i)                                                           \
    if constexpr (R > i) {                                                               \
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (i) * kQNR), c##i##0);      \
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (i) * kQNR + 8), c##i##1);  \
    }

template <int R>
GRAPHOPT_QTILE_TARGET void qtile_rows(int64_t steps, const uint8_t* a, const uint8_t* b,
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

GRAPHOPT_QTILE_TARGET void qtile(int64_t rows, int64_t steps, const uint8_t* a, const uint8_t* b,
                                 int32_t* out) {
    switch (rows) {
        case 1: return qtile_rows<1>(steps, a, b, out);
        case 2: return qtile_rows<2>(steps, a, b, out);
        case 3: return qtile_rows<3>(steps, a, b, out);
        case 4: return qtile_rows<4>(steps, a, b, out);
        case 5: return qtile_rows<5>(steps, a, b, out);
        default: return qtile_rows<6>(steps, a, b, out);
    }
}

}  // namespace
}  // namespace rt
}  // namespace graphopt
