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
// a panel u8 [steps][6][4], b panel s8 [steps][16][4]; vpdpbusd(acc, unsigned a, signed b).
#define GRAPHOPT_QTILE_TARGET __attribute__((target("avx2,fma,avxvnni")))
#define GRAPHOPT_QTILE_STEP(acc, a, b) _mm256_dpbusd_avx_epi32(acc, a, b)
#include "rt_qgemm_tile.h"
#endif

namespace graphopt {
namespace rt {

#ifdef GRAPHOPT_HAVE_AVXVNNI
const QGemmKernels& avxvnni_qgemm_kernels() {
    static const QGemmKernels k{"avxvnni_quad_u8", QFormat::kQuadU8, qtile, qminmax_avx2,
                                qquantize_avx2, qdequant_avx2};
    return k;
}
#else
const QGemmKernels& avxvnni_qgemm_kernels() { return avx2_qgemm_kernels(); }
#endif

}  // namespace rt
}  // namespace graphopt
