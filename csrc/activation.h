// The activations of fused ops and GEMM epilogues: the one list, shared by every kernel and
// exported to Python (graphopt._C.native_code_tables()["activation"], read by
// graphopt/native/codes.py). Add an activation here and nowhere else.
//
// X(enumerator, python name, number of float parameters, vectorised SGEMM epilogue)
// The entries with `epilogue` true come first: they run through the per-ISA epilogue of the
// SGEMM (epilogue.cpp, epilogue_avx2.cpp) and are the ones `_C.sgemm` accepts; the others have a
// scalar implementation in the runtime's GEMM driver (rt_gemm.cpp apply_activation).
#pragma once

#include <cstddef>
#include <cstdint>

#define GRAPHOPT_ACTIVATIONS(X)                      \
    X(kNone, "none", 0, true)                        \
    X(kRelu, "relu", 0, true)                        \
    X(kRelu6, "relu6", 0, true)                      \
    X(kGelu, "gelu", 0, true)           /* erf form */ \
    X(kGeluTanh, "gelu_tanh", 0, true)               \
    X(kSilu, "silu", 0, true)                        \
    X(kSigmoid, "sigmoid", 0, true)                  \
    X(kTanh, "tanh", 0, true)                        \
    X(kHardswish, "hardswish", 0, true)              \
    X(kHardsigmoid, "hardsigmoid", 0, false)         \
    X(kClamp, "clamp", 2, false)        /* (min, max) */ \
    X(kLeakyRelu, "leaky_relu", 1, false) /* (slope,) */

namespace graphopt {

enum class Activation : int32_t {
#define GRAPHOPT_ACTIVATION_ENUM(e, name, params, epilogue) e,
    GRAPHOPT_ACTIVATIONS(GRAPHOPT_ACTIVATION_ENUM)
#undef GRAPHOPT_ACTIVATION_ENUM
};

struct ActivationInfo {
    const char* name;
    Activation act;
    int params;     // float parameters (p0, p1) the activation reads
    bool epilogue;  // implemented by the vectorised SGEMM epilogue
};

inline constexpr ActivationInfo kActivationInfo[] = {
#define GRAPHOPT_ACTIVATION_INFO(e, name, params, epilogue) \
    {name, Activation::e, params, epilogue},
    GRAPHOPT_ACTIVATIONS(GRAPHOPT_ACTIVATION_INFO)
#undef GRAPHOPT_ACTIVATION_INFO
};

inline constexpr size_t kNumActivations = sizeof(kActivationInfo) / sizeof(kActivationInfo[0]);
// Largest valid activation code (kernel factories check act codes against it).
inline constexpr int64_t kMaxActivationCode = static_cast<int64_t>(kNumActivations) - 1;
// The last activation of the vectorised SGEMM epilogue (all before it are too).
inline constexpr Activation kLastEpilogueActivation = Activation::kHardswish;

namespace detail {
constexpr bool activation_table_ok() {
    for (size_t i = 0; i < kNumActivations; ++i) {
        if (static_cast<size_t>(kActivationInfo[i].act) != i) return false;
        const bool before = kActivationInfo[i].act <= kLastEpilogueActivation;
        if (kActivationInfo[i].epilogue != before) return false;
    }
    return true;
}
}  // namespace detail
static_assert(detail::activation_table_ok(),
              "epilogue activations must come first, up to kLastEpilogueActivation");

}  // namespace graphopt
