// Run-time CPU feature detection.
//
// graphopt is compiled for the baseline x86-64 ISA (no -march=native) so one binary runs on any
// x86-64 machine. Faster code paths are compiled per function with
// __attribute__((target("avx2,fma"))) and chosen here, once, at run time.
#pragma once

#include <cstdlib>
#include <cstring>

#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

// Marks a function to be compiled for AVX2+FMA regardless of the global -m flags. Only call such a
// function after cpu_features().use_avx2_fma said yes. Intrinsics from <immintrin.h> are usable
// inside it; baseline helpers it calls are compiled for the baseline ISA.
#define GRAPHOPT_TARGET_AVX2_FMA __attribute__((target("avx2,fma")))
// The same for AVX-512 (Foundation; FMA on zmm is part of it). Only after use_avx512.
#define GRAPHOPT_TARGET_AVX512 __attribute__((target("avx512f,avx2,fma")))
// AMX tiles (bf16 and int8 dot products) with the AVX-512 subsets their packers use. Only after
// cpu_features().use_amx said yes.
#define GRAPHOPT_TARGET_AMX                                                                  \
    __attribute__((target("amx-tile,amx-bf16,amx-int8,avx512f,avx512bw,avx512vl,avx512dq," \
                          "avx512bf16,avx2,fma")))

namespace graphopt {

struct CpuFeatures {
    bool avx2 = false;
    bool fma = false;

    bool avx512f = false;
    bool avx512bf16 = false;
    // AMX: the CPU has the tile unit with bf16 and int8 dot products, the OS saves tile state
    // (XCR0 bits 17, 18), and Linux granted this process the tile data permission
    // (arch_prctl(ARCH_REQ_XCOMP_PERM)); without the grant the first tile instruction faults.
    bool amx = false;

    // True when the AVX2+FMA kernels may run: the CPU has both and the user did not disable them
    // with GRAPHOPT_DISABLE_AVX2=1 (handy to run a whole test suite on the portable path).
    bool use_avx2_fma = false;
    // True when the AVX-512 kernels may run: AVX2 ones may, the CPU has AVX-512F, and neither
    // GRAPHOPT_DISABLE_AVX2=1 nor GRAPHOPT_DISABLE_AVX512=1 is set (the latter tests the AVX2
    // path on an AVX-512 machine).
    bool use_avx512 = false;
    // True when the AMX kernels may run: AVX-512 ones may, the CPU and OS allow AMX, and
    // GRAPHOPT_DISABLE_AMX=1 is not set (tests the AVX-512 paths on an AMX machine).
    bool use_amx = false;
};

#if defined(__GNUC__) && defined(__x86_64__)
// CPUID leaf 7 / subleaf 0, EDX: AMX-BF16 (bit 22), AMX-TILE (24), AMX-INT8 (25); EAX of
// subleaf 1: AVX512-BF16 (bit 5). XCR0 bits 17 / 18: the OS saves TILECFG / TILEDATA.
inline bool cpu_reports_amx() {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    __asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(0), "c"(0));
    if (eax < 7) return false;
    __asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(7), "c"(0));
    const unsigned amx_bits = (1u << 22) | (1u << 24) | (1u << 25);
    if ((edx & amx_bits) != amx_bits) return false;
    if ((ecx & (1u << 27)) == 0) return false;  // OSXSAVE: XGETBV is usable
    unsigned xcr0_lo = 0, xcr0_hi = 0;
    __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    const unsigned tile_state = (1u << 17) | (1u << 18);
    return (xcr0_lo & tile_state) == tile_state;
}

inline bool cpu_reports_avx512bf16() {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    __asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(0), "c"(0));
    if (eax < 7) return false;
    __asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(7), "c"(1));
    return (eax & (1u << 5)) != 0;
}

// Asks Linux for the AMX tile data state (XFEATURE 18). Returns false when refused or when the
// kernel predates the API (before 5.16 AMX cannot be used at all).
inline bool request_amx_permission() {
#if defined(__linux__)
    constexpr long kArchReqXcompPerm = 0x1023;
    constexpr long kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
    return false;
#endif
}
#endif

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
#if defined(__GNUC__) && defined(__x86_64__)
    f.avx512bf16 = f.avx512f && cpu_reports_avx512bf16();
    f.amx = f.avx512bf16 && cpu_reports_amx() && request_amx_permission();
#endif
    f.use_avx2_fma = f.avx2 && f.fma && !env_flag_set("GRAPHOPT_DISABLE_AVX2");
    f.use_avx512 = f.use_avx2_fma && f.avx512f && !env_flag_set("GRAPHOPT_DISABLE_AVX512");
    f.use_amx = f.use_avx512 && f.amx && !env_flag_set("GRAPHOPT_DISABLE_AMX");
    return f;
}

// Detected once per process; thread-safe by C++11 static initialisation.
inline const CpuFeatures& cpu_features() {
    static const CpuFeatures features = detect_cpu_features();
    return features;
}

}  // namespace graphopt
