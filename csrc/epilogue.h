// Fused GEMM epilogue: bias add followed by an element-wise activation.
//
// The GEMM driver calls the epilogue on each finished register tile while it is still in L1, so
// `y = act(x @ w + bias)` costs one pass over C instead of three. Two implementations exist: a
// portable scalar one built on <cmath> and an AVX2+FMA one with vectorised exp/erfc/tanh
// (epilogue_avx2.cpp). Both compute the same functions; they agree to a few float32 ulps.
#pragma once

#include <cstdint>
#include <string>

#include "activation.h"

namespace graphopt {

// graphopt::Activation (the codes, names and parameter counts) is defined in activation.h.

// Parses the Python-facing name of an activation of the vectorised epilogue ("none", "relu",
// "gelu_tanh", ... up to kLastEpilogueActivation). Returns false when the name is unknown.
bool parse_activation(const std::string& name, Activation* out);

// Comma-separated list of the names parse_activation accepts, for error messages.
const char* activation_names();

// Applies `c[r][j] = act(c[r][j] + bias[j])` to a rows x cols block of a row-major matrix with
// leading dimension ldc. `bias` may be null (no bias). The bias pointer is already offset to the
// block's first column. `act` must be an epilogue activation (<= kLastEpilogueActivation); the
// others do nothing here.
using EpilogueFn = void (*)(float* c, int64_t ldc, int64_t rows, int64_t cols, const float* bias,
                            Activation act);

void epilogue_portable(float* c, int64_t ldc, int64_t rows, int64_t cols, const float* bias,
                       Activation act);
void epilogue_avx2(float* c, int64_t ldc, int64_t rows, int64_t cols, const float* bias,
                   Activation act);
// The AVX2 epilogue on 16 lanes, the same operations per lane (epilogue_avx512.cpp).
void epilogue_avx512(float* c, int64_t ldc, int64_t rows, int64_t cols, const float* bias,
                     Activation act);

}  // namespace graphopt
