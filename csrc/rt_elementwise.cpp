// Elementwise kernels: unary math / activations, cast (broadcasting binary ops and where:
// rt_binary.cpp).
//
// "unary"   operands: out, x (contiguous)
//           ints: op (UnaryOp), dtype, count;  floats: p0, p1, p2 (op parameters)
// "cast"    operands: out, x (contiguous); ints: from, to, count
//
// Semantics follow torch.
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "rt_dtype.h"
#include "rt_gemm.h"
#include "rt_int_wrap.h"
#include "rt_parallel.h"
#include "rt_plan.h"
#include "rt_vec.h"

namespace graphopt {
namespace rt {
namespace {

// The "unary" kernel's op codes and their Python names (graphopt/native/codes.py UNARY_CODES
// is read from this list through _C.native_code_tables()).
#define GRAPHOPT_UNARY_OPS(X)                                                                 \
    X(kNeg, "neg") X(kAbs, "abs") X(kRelu, "relu") X(kFloor, "floor") X(kCeil, "ceil")        \
    X(kRound, "round") X(kSign, "sign") X(kBitwiseNot, "bitwise_not") X(kExp, "exp")          \
    X(kLog, "log") X(kLog1p, "log1p") X(kExpm1, "expm1") X(kSqrt, "sqrt") X(kRsqrt, "rsqrt")  \
    X(kReciprocal, "reciprocal") X(kSin, "sin") X(kCos, "cos") X(kTan, "tan")                 \
    X(kAtan, "atan") X(kTanh, "tanh") X(kSigmoid, "sigmoid") X(kErf, "erf") X(kSilu, "silu")  \
    X(kMish, "mish") X(kHardswish, "hardswish") X(kHardsigmoid, "hardsigmoid")                \
    X(kSoftsign, "softsign") X(kGelu, "gelu") X(kGeluTanh, "gelu_tanh") X(kClamp, "clamp")    \
    X(kLeakyRelu, "leaky_relu") X(kElu, "elu") X(kSoftplus, "softplus")                       \
    X(kLogicalNot, "logical_not") X(kIsnan, "isnan") X(kRelu6, "relu6") X(kAcos, "acos")        \
    X(kAsin, "asin") X(kAcosh, "acosh") X(kAsinh, "asinh") X(kAtanh, "atanh") X(kCosh, "cosh") \
    X(kSinh, "sinh") X(kThresholdedRelu, "thresholded_relu") X(kShrink, "shrink")              \
    X(kIsinf, "isinf") X(kIsposinf, "isposinf") X(kIsneginf, "isneginf")

constexpr int64_t kLastUnaryOp = 47;  // kIsneginf (checked below)

#define GRAPHOPT_RT_ENUMERATOR(e, name) e,
#define GRAPHOPT_RT_ENUM_NAME(e, name) name,

enum class UnaryOp : int32_t { GRAPHOPT_UNARY_OPS(GRAPHOPT_RT_ENUMERATOR) };
GRAPHOPT_RT_CODE_TABLE("unary", {GRAPHOPT_UNARY_OPS(GRAPHOPT_RT_ENUM_NAME)});
static_assert(static_cast<int>(UnaryOp::kNeg) == 0);
static_assert(static_cast<int64_t>(UnaryOp::kIsneginf) == kLastUnaryOp);

// Ops whose result is bool (the input dtype is the compute dtype).
bool is_unary_predicate(UnaryOp op) {
    switch (op) {
        case UnaryOp::kLogicalNot: case UnaryOp::kIsnan: case UnaryOp::kIsinf:
        case UnaryOp::kIsposinf: case UnaryOp::kIsneginf:
            return true;
        default:
            return false;
    }
}

template <typename T>
bool unary_predicate(UnaryOp op, T x) {
    switch (op) {
        case UnaryOp::kIsnan: return x != x;
        case UnaryOp::kLogicalNot: return x == T(0);
        default: break;
    }
    if constexpr (std::is_floating_point_v<T>) {
        const T inf = std::numeric_limits<T>::infinity();
        switch (op) {
            case UnaryOp::kIsinf: return x == inf || x == -inf;
            case UnaryOp::kIsposinf: return x == inf;
            case UnaryOp::kIsneginf: return x == -inf;
            default: break;
        }
    }
    return false;  // integers are never infinite
}

// Activations the vectorised GEMM epilogue implements (same formulas as fused ops use).
bool epilogue_activation(UnaryOp op, Act* act) {
    switch (op) {
        case UnaryOp::kRelu: *act = Act::kRelu; return true;
        case UnaryOp::kRelu6: *act = Act::kRelu6; return true;
        case UnaryOp::kGelu: *act = Act::kGelu; return true;
        case UnaryOp::kGeluTanh: *act = Act::kGeluTanh; return true;
        case UnaryOp::kSilu: *act = Act::kSilu; return true;
        case UnaryOp::kSigmoid: *act = Act::kSigmoid; return true;
        case UnaryOp::kTanh: *act = Act::kTanh; return true;
        case UnaryOp::kHardswish: *act = Act::kHardswish; return true;
        default: return false;
    }
}

template <typename T>
T softplus(T x, T beta, T threshold) {
    const T bx = x * beta;
    return bx > threshold ? x : std::log1p(std::exp(bx)) / beta;
}

// A float parameter as an integer of type T, saturated (a clamp bound may be +-inf).
template <typename T>
T saturate_to(double v) {
    if (v != v) return T(0);
    if (v <= static_cast<double>(std::numeric_limits<T>::lowest())) {
        return std::numeric_limits<T>::lowest();
    }
    if (v >= static_cast<double>(std::numeric_limits<T>::max())) {
        return std::numeric_limits<T>::max();
    }
    return static_cast<T>(v);
}

template <typename T>
T unary_float(UnaryOp op, T x, T p0, T p1, T p2) {
    switch (op) {
        case UnaryOp::kNeg: return -x;
        case UnaryOp::kAbs: return std::abs(x);
        case UnaryOp::kRelu: return x < T(0) ? T(0) : x;
        case UnaryOp::kRelu6: return std::min(std::max(x, T(0)), T(6));
        case UnaryOp::kFloor: return std::floor(x);
        case UnaryOp::kCeil: return std::ceil(x);
        case UnaryOp::kRound: return std::nearbyint(x);  // half to even, like torch
        case UnaryOp::kSign: return x > T(0) ? T(1) : (x < T(0) ? T(-1) : (x == T(0) ? T(0) : x));
        case UnaryOp::kExp: return std::exp(x);
        case UnaryOp::kLog: return std::log(x);
        case UnaryOp::kLog1p: return std::log1p(x);
        case UnaryOp::kExpm1: return std::expm1(x);
        case UnaryOp::kSqrt: return std::sqrt(x);
        case UnaryOp::kRsqrt: return T(1) / std::sqrt(x);
        case UnaryOp::kReciprocal: return T(1) / x;
        case UnaryOp::kSin: return std::sin(x);
        case UnaryOp::kCos: return std::cos(x);
        case UnaryOp::kTan: return std::tan(x);
        case UnaryOp::kAtan: return std::atan(x);
        case UnaryOp::kTanh: return std::tanh(x);
        case UnaryOp::kSigmoid: return T(1) / (T(1) + std::exp(-x));
        case UnaryOp::kErf: return std::erf(x);
        case UnaryOp::kSilu: return x / (T(1) + std::exp(-x));
        case UnaryOp::kMish: return x * std::tanh(softplus<T>(x, T(1), T(20)));
        case UnaryOp::kHardswish: return x * std::min(std::max(x + T(3), T(0)), T(6)) / T(6);
        case UnaryOp::kHardsigmoid: return std::min(std::max(x + T(3), T(0)), T(6)) / T(6);
        case UnaryOp::kSoftsign: return x / (T(1) + std::abs(x));
        case UnaryOp::kGelu: return T(0.5) * x * std::erfc(-x * T(0.70710678118654752440));
        case UnaryOp::kGeluTanh: {
            const T inner = T(0.79788456080286535588) * (x + T(0.044715) * x * x * x);
            return T(0.5) * x * (T(1) + std::tanh(inner));
        }
        case UnaryOp::kClamp: return std::min(std::max(x, p0), p1);
        case UnaryOp::kLeakyRelu: return x > T(0) ? x : x * p0;
        case UnaryOp::kElu:  // p0 alpha, p1 scale, p2 input_scale
            return x > T(0) ? p1 * x : p1 * p0 * std::expm1(x * p2);
        case UnaryOp::kSoftplus: return softplus<T>(x, p0, p1);
        case UnaryOp::kAcos: return std::acos(x);
        case UnaryOp::kAsin: return std::asin(x);
        case UnaryOp::kAcosh: return std::acosh(x);
        case UnaryOp::kAsinh: return std::asinh(x);
        case UnaryOp::kAtanh: return std::atanh(x);
        case UnaryOp::kCosh: return std::cosh(x);
        case UnaryOp::kSinh: return std::sinh(x);
        case UnaryOp::kThresholdedRelu: return x > p0 ? x : T(0);  // p0 alpha (NaN -> 0)
        case UnaryOp::kShrink:  // p0 lambd, p1 bias
            return x < -p0 ? x + p1 : (x > p0 ? x - p1 : T(0));
        default: break;
    }
    throw std::logic_error("unary: op not valid for floats");
}

template <typename T>
T unary_int(UnaryOp op, T x, T p0, T p1) {
    switch (op) {
        case UnaryOp::kNeg: return wrap_neg<T>(x);
        case UnaryOp::kAbs: return x < 0 ? wrap_neg<T>(x) : x;
        case UnaryOp::kRelu: return x < 0 ? T(0) : x;
        case UnaryOp::kFloor:
        case UnaryOp::kCeil:
        case UnaryOp::kRound: return x;
        case UnaryOp::kSign: return static_cast<T>((x > 0) - (x < 0));
        case UnaryOp::kBitwiseNot: return static_cast<T>(~x);
        case UnaryOp::kClamp: return std::min(std::max(x, p0), p1);
        default: break;
    }
    throw std::logic_error("unary: op not valid for integers");
}

bool valid_for_int(UnaryOp op) {
    switch (op) {
        case UnaryOp::kNeg: case UnaryOp::kAbs: case UnaryOp::kRelu: case UnaryOp::kFloor:
        case UnaryOp::kCeil: case UnaryOp::kRound: case UnaryOp::kSign:
        case UnaryOp::kBitwiseNot: case UnaryOp::kClamp:
            return true;
        default:
            return false;
    }
}

class UnaryKernel : public Kernel {
   public:
    explicit UnaryKernel(const KernelArgs& args) {
        IntReader r(args);
        op_ = static_cast<UnaryOp>(r.in(0, kLastUnaryOp, "op"));
        dtype_ = dtype_from(r.next());
        count_ = r.dim("count");
        for (size_t i = 0; i < 3; ++i) p_[i] = i < args.floats.size() ? args.floats[i] : 0.0;
        use_epilogue_ = dtype_ == DType::kF32 && epilogue_activation(op_, &act_);
        const bool to_bool = is_unary_predicate(op_);
        const bool is_float = dtype_ == DType::kF32 || dtype_ == DType::kF64;
        if (!to_bool && (is_float ? op_ == UnaryOp::kBitwiseNot : !valid_for_int(op_))) {
            throw PlanError("unary " + args.name + ": op " + std::to_string(static_cast<int>(op_)) +
                            " is not defined for this dtype");
        }
        const std::string what = "unary " + args.name;
        const int64_t out_elem = to_bool ? 1 : dtype_size(dtype_);
        need(args, 0, checked_mul(count_, out_elem, what), out_elem);
        need(args, 1, checked_mul(count_, dtype_size(dtype_), what), dtype_size(dtype_));
    }

    void run(const ExecContext& ctx) const override {
        char* out = ctx.ptr(operands[0]);
        const char* x = ctx.ptr(operands[1]);
        if (is_unary_predicate(op_)) {
            dispatch_dtype(dtype_, [&](auto tag) {
                using T = decltype(tag);
                const T* xs = reinterpret_cast<const T*>(x);
                Bool* ys = reinterpret_cast<Bool*>(out);
                for (int64_t i = 0; i < count_; ++i) {
                    ys[i] = static_cast<Bool>(unary_predicate<T>(op_, xs[i]));
                }
            });
            return;
        }
        const int64_t elem = dtype_size(dtype_);
        parallel_for(ctx.threads, count_, 16, [&](int64_t begin, int64_t end) {
            if (use_epilogue_) {
                float* y = reinterpret_cast<float*>(out) + begin;
                const float* xs = reinterpret_cast<const float*>(x) + begin;
                if (y != xs) std::memcpy(y, xs, static_cast<size_t>((end - begin) * elem));
                gemm_kernels().epilogue(y, end - begin, 1, end - begin, nullptr,
                                        static_cast<Activation>(act_));
                return;
            }
            dispatch_dtype(dtype_, [&](auto tag) {
                using T = decltype(tag);
                const T* xs = reinterpret_cast<const T*>(x);
                T* ys = reinterpret_cast<T*>(out);
                if constexpr (std::is_floating_point_v<T>) {
                    const T p0 = static_cast<T>(p_[0]), p1 = static_cast<T>(p_[1]),
                            p2 = static_cast<T>(p_[2]);
                    for (int64_t i = begin; i < end; ++i) {
                        ys[i] = unary_float<T>(op_, xs[i], p0, p1, p2);
                    }
                } else {
                    const T p0 = saturate_to<T>(p_[0]), p1 = saturate_to<T>(p_[1]);
                    for (int64_t i = begin; i < end; ++i) ys[i] = unary_int<T>(op_, xs[i], p0, p1);
                }
            });
        });
    }

   private:
    UnaryOp op_;
    DType dtype_;
    int64_t count_ = 0;
    double p_[3] = {0, 0, 0};
    bool use_epilogue_ = false;
    Act act_ = Act::kNone;
};

// -------------------------------------------------------------------------------------- cast
class CastKernel : public Kernel {
   public:
    explicit CastKernel(const KernelArgs& args) {
        IntReader r(args);
        from_ = dtype_from(r.next());
        to_ = dtype_from(r.next());
        count_ = r.dim("count");
        const std::string what = "cast " + args.name;
        need(args, 0, checked_mul(count_, dtype_size(to_), what), dtype_size(to_));
        need(args, 1, checked_mul(count_, dtype_size(from_), what), dtype_size(from_));
    }
    void run(const ExecContext& ctx) const override {
        char* out = ctx.ptr(operands[0]);
        const char* x = ctx.ptr(operands[1]);
        dispatch_dtype(from_, [&](auto from_tag) {
            using S = decltype(from_tag);
            const S* xs = reinterpret_cast<const S*>(x);
            dispatch_dtype(to_, [&](auto to_tag) {
                using D = decltype(to_tag);
                D* ys = reinterpret_cast<D*>(out);
                if (to_ == DType::kBool) {
                    for (int64_t i = 0; i < count_; ++i) ys[i] = static_cast<D>(xs[i] != S(0));
                } else {
                    for (int64_t i = 0; i < count_; ++i) ys[i] = static_cast<D>(xs[i]);
                }
            });
        });
    }

   private:
    DType from_, to_;
    int64_t count_ = 0;
};

GRAPHOPT_RT_KERNEL("unary", UnaryKernel,
                   "out, x",
                   "op:unary, dtype:dtype, count:dim",
                   "p0?, p1?, p2?");
GRAPHOPT_RT_KERNEL("cast", CastKernel,
                   "out, x",
                   "from:dtype, to:dtype, count:dim",
                   "");

}  // namespace
}  // namespace rt
}  // namespace graphopt
