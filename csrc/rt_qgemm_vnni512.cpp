// AVX512-VNNI tile of the int8 GEMM (rt_qgemm.h, format kQuadU8): the same ymm tile as
// rt_qgemm_vnni.cpp, with the EVEX form of vpdpbusd (AVX512_VNNI + AVX512VL) instead of the VEX
// one (AVX-VNNI). CPUs with AVX-512 VNNI but no AVX-VNNI (AMD Zen 4, Intel Ice Lake / Cascade
// Lake) would otherwise fall back to the AVX2 vpmaddubsw pair kernels. Chosen at run time
// (GRAPHOPT_DISABLE_VNNI=1 or GRAPHOPT_DISABLE_AVX512=1 skip it); its float loops are the AVX-512
// forms of rt_qgemm_avx512.cpp.
#include <immintrin.h>

#include <cstring>

#include "cpu.h"
#include "rt_qgemm.h"

#if defined(__GNUC__) && __GNUC__ >= 11
#define GRAPHOPT_HAVE_AVX512VNNI 1
// a panel u8 [steps][6][4], b panel s8 [steps][16][4]; vpdpbusd(acc, unsigned a, signed b).
#define GRAPHOPT_QTILE_TARGET __attribute__((target("avx2,fma,avx512f,avx512vl,avx512vnni")))
#define GRAPHOPT_QTILE_STEP(acc, a, b) _mm256_dpbusd_epi32(acc, a, b)
#include "rt_qgemm_tile.h"
#endif

namespace graphopt {
namespace rt {

bool cpu_has_avx512vnni() {
#ifdef GRAPHOPT_HAVE_AVX512VNNI
    static const bool has = [] {
        __builtin_cpu_init();
        return cpu_features().use_avx512 && __builtin_cpu_supports("avx512vnni") != 0 &&
               __builtin_cpu_supports("avx512vl") != 0;
    }();
    return has;
#else
    return false;
#endif
}

#ifdef GRAPHOPT_HAVE_AVX512VNNI
const QGemmKernels& avx512vnni_qgemm_kernels() {
    static const QGemmKernels k{"avx512vnni_quad_u8", QFormat::kQuadU8, qtile, qminmax_avx512,
                                qquantize_avx512, qdequant_avx512};
    return k;
}
#else
const QGemmKernels& avx512vnni_qgemm_kernels() { return avx2_qgemm_kernels(); }
#endif

}  // namespace rt
}  // namespace graphopt
