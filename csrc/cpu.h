// Run-time CPU feature detection.
//
// graphopt is compiled for the baseline x86-64 ISA (no -march=native) so one binary runs on any
// x86-64 machine. Faster code paths are compiled per function with
// __attribute__((target("avx2,fma"))) and chosen here, once, at run time.
#pragma once

#include <cstdlib>
#include <cstring>

// Marks a function to be compiled for AVX2+FMA regardless of the global -m flags. Only call such a
// function after cpu_features().use_avx2_fma said yes. Intrinsics from <immintrin.h> are usable
// inside it; baseline helpers it calls are compiled for the baseline ISA.
#define GRAPHOPT_TARGET_AVX2_FMA __attribute__((target("avx2,fma")))
// The same for AVX-512 (Foundation; FMA on zmm is part of it). Only after use_avx512.
#define GRAPHOPT_TARGET_AVX512 __attribute__((target("avx512f,avx2,fma")))

namespace graphopt {

struct CpuFeatures {
    bool avx2 = false;
    bool fma = false;

    bool avx512f = false;

    // True when the AVX2+FMA kernels may run: the CPU has both and the user did not disable them
    // with GRAPHOPT_DISABLE_AVX2=1 (handy to run a whole test suite on the portable path).
    bool use_avx2_fma = false;
    // True when the AVX-512 kernels may run: AVX2 ones may, the CPU has AVX-512F, and neither
    // GRAPHOPT_DISABLE_AVX2=1 nor GRAPHOPT_DISABLE_AVX512=1 is set (the latter tests the AVX2
    // path on an AVX-512 machine).
    bool use_avx512 = false;
};

inline bool env_flag_set(const char* name) {
    const char* value = std::getenv(name);
    return value != nullptr && std::strcmp(value, "") != 0 && std::strcmp(value, "0") != 0;
}

inline CpuFeatures detect_cpu_features() {
    CpuFeatures f;
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    // libgcc's cpu model also checks (via XGETBV) that the OS saves YMM state, so these are only
    // true when AVX2 code can actually run.
    f.avx2 = __builtin_cpu_supports("avx2");
    f.fma = __builtin_cpu_supports("fma");
    // Also checked against XCR0: true only when the OS saves the ZMM / opmask state.
    f.avx512f = __builtin_cpu_supports("avx512f");
#endif
    f.use_avx2_fma = f.avx2 && f.fma && !env_flag_set("GRAPHOPT_DISABLE_AVX2");
    f.use_avx512 = f.use_avx2_fma && f.avx512f && !env_flag_set("GRAPHOPT_DISABLE_AVX512");
    return f;
}

// Detected once per process; thread-safe by C++11 static initialisation.
inline const CpuFeatures& cpu_features() {
    static const CpuFeatures features = detect_cpu_features();
    return features;
}

}  // namespace graphopt
