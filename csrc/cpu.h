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

namespace graphopt {

struct CpuFeatures {
    bool avx2 = false;
    bool fma = false;

    // True when the AVX2+FMA kernels may run: the CPU has both and the user did not disable them
    // with GRAPHOPT_DISABLE_AVX2=1 (handy to run a whole test suite on the portable path).
    bool use_avx2_fma = false;
};

inline CpuFeatures detect_cpu_features() {
    CpuFeatures f;
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    // libgcc's cpu model also checks (via XGETBV) that the OS saves YMM state, so these are only
    // true when AVX2 code can actually run.
    f.avx2 = __builtin_cpu_supports("avx2");
    f.fma = __builtin_cpu_supports("fma");
#endif
    const char* disable = std::getenv("GRAPHOPT_DISABLE_AVX2");
    const bool disabled = disable != nullptr && std::strcmp(disable, "") != 0 &&
                          std::strcmp(disable, "0") != 0;
    f.use_avx2_fma = f.avx2 && f.fma && !disabled;
    return f;
}

// Detected once per process; thread-safe by C++11 static initialisation.
inline const CpuFeatures& cpu_features() {
    static const CpuFeatures features = detect_cpu_features();
    return features;
}

}  // namespace graphopt
