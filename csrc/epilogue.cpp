// Activation name parsing and the portable (scalar, <cmath>) epilogue.
#include "epilogue.h"

#include <algorithm>
#include <cmath>

namespace graphopt {

namespace {

// Scalar reference formulas. They follow torch's definitions; where a textbook form cancels
// catastrophically it is rewritten (gelu through erfc, gelu_tanh through a sigmoid) so the
// result keeps its relative accuracy for large negative inputs.
template <Activation A>
inline float activate(float x) {
    if constexpr (A == Activation::kNone) {
        return x;
    } else if constexpr (A == Activation::kRelu) {
        return x < 0.0f ? 0.0f : x;  // NaN propagates, as in torch
    } else if constexpr (A == Activation::kRelu6) {
        return std::min(std::max(x, 0.0f), 6.0f);
    } else if constexpr (A == Activation::kGelu) {
        // 0.5 x (1 + erf(x/sqrt2)) == 0.5 x erfc(-x/sqrt2)
        return 0.5f * x * std::erfc(-x * 0.70710678118654752f);
    } else if constexpr (A == Activation::kGeluTanh) {
        // 0.5 x (1 + tanh(y)) == x * sigmoid(2y)
        const float y = 0.79788456080286536f * (x + 0.044715f * x * x * x);
        return x / (1.0f + std::exp(-2.0f * y));
    } else if constexpr (A == Activation::kSilu) {
        return x / (1.0f + std::exp(-x));
    } else if constexpr (A == Activation::kSigmoid) {
        return 1.0f / (1.0f + std::exp(-x));
    } else if constexpr (A == Activation::kTanh) {
        return std::tanh(x);
    } else {
        static_assert(A == Activation::kHardswish);
        return x * std::min(std::max(x + 3.0f, 0.0f), 6.0f) / 6.0f;
    }
}

template <Activation A>
void epilogue_rows(float* c, int64_t ldc, int64_t rows, int64_t cols, const float* bias) {
    for (int64_t r = 0; r < rows; ++r) {
        float* row = c + r * ldc;
        if (bias != nullptr) {
            for (int64_t j = 0; j < cols; ++j) row[j] = activate<A>(row[j] + bias[j]);
        } else {
            for (int64_t j = 0; j < cols; ++j) row[j] = activate<A>(row[j]);
        }
    }
}

}  // namespace

bool parse_activation(const std::string& name, Activation* out) {
    for (const ActivationInfo& entry : kActivationInfo) {
        if (entry.epilogue && name == entry.name) {
            *out = entry.act;
            return true;
        }
    }
    return false;
}

const char* activation_names() {
    static const std::string names = [] {
        std::string out;
        for (const ActivationInfo& entry : kActivationInfo) {
            if (!entry.epilogue) continue;
            if (!out.empty()) out += ", ";
            out += entry.name;
        }
        return out;
    }();
    return names.c_str();
}

void epilogue_portable(float* c, int64_t ldc, int64_t rows, int64_t cols, const float* bias,
                       Activation act) {
    switch (act) {
        case Activation::kNone:
            if (bias != nullptr) epilogue_rows<Activation::kNone>(c, ldc, rows, cols, bias);
            return;
        case Activation::kRelu:
            return epilogue_rows<Activation::kRelu>(c, ldc, rows, cols, bias);
        case Activation::kRelu6:
            return epilogue_rows<Activation::kRelu6>(c, ldc, rows, cols, bias);
        case Activation::kGelu:
            return epilogue_rows<Activation::kGelu>(c, ldc, rows, cols, bias);
        case Activation::kGeluTanh:
            return epilogue_rows<Activation::kGeluTanh>(c, ldc, rows, cols, bias);
        case Activation::kSilu:
            return epilogue_rows<Activation::kSilu>(c, ldc, rows, cols, bias);
        case Activation::kSigmoid:
            return epilogue_rows<Activation::kSigmoid>(c, ldc, rows, cols, bias);
        case Activation::kTanh:
            return epilogue_rows<Activation::kTanh>(c, ldc, rows, cols, bias);
        case Activation::kHardswish:
            return epilogue_rows<Activation::kHardswish>(c, ldc, rows, cols, bias);
        default:  // not an epilogue activation (see activation.h)
            return;
    }
}

}  // namespace graphopt
