// Fused GEMM epilogue: bias add followed by an element-wise activation.
//
// The GEMM driver calls the epilogue on each finished register tile while it is still in L1, so
// `y = act(x @ w + bias)` costs one pass over C instead of three. Two implementations exist: a
// portable scalar one built on <cmath> and an AVX2+FMA one with vectorised exp/erfc/tanh
// (epilogue_avx2.cpp). Both compute the same functions; they agree to a few float32 ulps.
#pragma once

#include <cstdint>
#include <string>

namespace graphopt {

enum class Activation : int {
    kNone = 0,
    kRelu,
    kRelu6,
    kGelu,      // exact form: 0.5 * x * (1 + erf(x / sqrt(2)))  (torch approximate="none")
    kGeluTanh,  // 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))  (approximate="tanh")
    kSilu,      // x * sigmoid(x)
    kSigmoid,
    kTanh,
    kHardswish,  // x * relu6(x + 3) / 6
};

// Parses the Python-facing activation name ("none", "relu", "gelu_tanh", ...).
// Returns false when the name is unknown.
bool parse_activation(const std::string& name, Activation* out);

// Comma-separated list of valid activation names, for error messages.
const char* activation_names();

// Applies `c[r][j] = act(c[r][j] + bias[j])` to a rows x cols block of a row-major matrix with
// leading dimension ldc. `bias` may be null (no bias). The bias pointer is already offset to the
// block's first column.
using EpilogueFn = void (*)(float* c, int64_t ldc, int64_t rows, int64_t cols, const float* bias,
                            Activation act);

void epilogue_portable(float* c, int64_t ldc, int64_t rows, int64_t cols, const float* bias,
                       Activation act);
void epilogue_avx2(float* c, int64_t ldc, int64_t rows, int64_t cols, const float* bias,
                   Activation act);

}  // namespace graphopt
