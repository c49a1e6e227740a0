// Elementwise kernels: unary math / activations, broadcasting binary ops, where, cast.
//
// "unary"   operands: out, x (contiguous)
//           ints: op (UnaryOp), dtype, count;  floats: p0, p1, p2 (op parameters)
// "binary"  operands: out (contiguous), a, b
//           ints: op (BinaryOp), dtype (of a and b), rank, shape[rank], a_strides[rank],
//                 b_strides[rank]     (broadcast dims have stride 0; out dtype: bool for
//                 comparisons and logical ops, else dtype)
// "where"   operands: out (contiguous), cond (bool), a, b
//           ints: elem_size, rank, shape[rank], cond_strides, a_strides, b_strides
// "cast"    operands: out, x (contiguous); ints: from, to, count
//
// Operands of binary/where are cast to one dtype by the planner; these kernels never promote.
// Semantics follow torch (remainder takes the divisor's sign, floor division rounds down,
// maximum/minimum propagate NaN, integer division by zero raises).
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "rt_dtype.h"
#include "rt_gemm.h"
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
    X(kLogicalNot, "logical_not") X(kIsnan, "isnan") X(kRelu6, "relu6")

#define GRAPHOPT_RT_ENUMERATOR(e, name) e,
#define GRAPHOPT_RT_ENUM_NAME(e, name) name,

enum class UnaryOp : int32_t { GRAPHOPT_UNARY_OPS(GRAPHOPT_RT_ENUMERATOR) };
GRAPHOPT_RT_CODE_TABLE("unary", {GRAPHOPT_UNARY_OPS(GRAPHOPT_RT_ENUM_NAME)});
static_assert(static_cast<int>(UnaryOp::kNeg) == 0);

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

// Integer arithmetic wraps around like torch's (two's complement), computed in the unsigned type
// so that an overflow of the data is never undefined behaviour (and INT_MIN / -1 never traps).
template <typename T>
T wrap_add(T a, T b) {
    using U = std::make_unsigned_t<T>;
    return static_cast<T>(static_cast<U>(static_cast<U>(a) + static_cast<U>(b)));
}
template <typename T>
T wrap_sub(T a, T b) {
    using U = std::make_unsigned_t<T>;
    return static_cast<T>(static_cast<U>(static_cast<U>(a) - static_cast<U>(b)));
}
template <typename T>
T wrap_mul(T a, T b) {
    using U = std::make_unsigned_t<T>;
    using W = std::conditional_t<(sizeof(U) < sizeof(unsigned)), unsigned, U>;  // no int promotion
    return static_cast<T>(static_cast<U>(static_cast<W>(static_cast<U>(a)) *
                                         static_cast<W>(static_cast<U>(b))));
}
template <typename T>
T wrap_neg(T a) {
    return wrap_sub<T>(T(0), a);
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
        op_ = static_cast<UnaryOp>(r.in(0, static_cast<int64_t>(UnaryOp::kRelu6), "op"));
        dtype_ = dtype_from(r.next());
        count_ = r.dim("count");
        for (size_t i = 0; i < 3; ++i) p_[i] = i < args.floats.size() ? args.floats[i] : 0.0;
        use_epilogue_ = dtype_ == DType::kF32 && epilogue_activation(op_, &act_);
        const bool to_bool = op_ == UnaryOp::kLogicalNot || op_ == UnaryOp::kIsnan;
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
        if (op_ == UnaryOp::kLogicalNot || op_ == UnaryOp::kIsnan) {
            dispatch_dtype(dtype_, [&](auto tag) {
                using T = decltype(tag);
                const T* xs = reinterpret_cast<const T*>(x);
                Bool* ys = reinterpret_cast<Bool*>(out);
                const bool isnan = op_ == UnaryOp::kIsnan;
                for (int64_t i = 0; i < count_; ++i) {
                    ys[i] = static_cast<Bool>(isnan ? xs[i] != xs[i] : xs[i] == T(0));
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

// ------------------------------------------------------------------------------------ binary
// The "binary" kernel's op codes and their Python names (codes.py BINARY_CODES). Predicates
// (results are bool) come last, from kEq.
#define GRAPHOPT_BINARY_OPS(X)                                                                \
    X(kAdd, "add") X(kSub, "sub") X(kMul, "mul") X(kDiv, "div") X(kDivFloor, "div_floor")     \
    X(kDivTrunc, "div_trunc") X(kPow, "pow") X(kMaximum, "maximum") X(kMinimum, "minimum")    \
    X(kRemainder, "remainder") X(kAtan2, "atan2") X(kBitwiseAnd, "bitwise_and")               \
    X(kBitwiseOr, "bitwise_or") X(kBitwiseXor, "bitwise_xor") X(kEq, "eq") X(kNe, "ne")       \
    X(kLt, "lt") X(kLe, "le") X(kGt, "gt") X(kGe, "ge") X(kLogicalAnd, "logical_and")         \
    X(kLogicalOr, "logical_or") X(kLogicalXor, "logical_xor")

enum class BinaryOp : int32_t { GRAPHOPT_BINARY_OPS(GRAPHOPT_RT_ENUMERATOR) };
GRAPHOPT_RT_CODE_TABLE("binary", {GRAPHOPT_BINARY_OPS(GRAPHOPT_RT_ENUM_NAME)});

bool is_predicate(BinaryOp op) { return op >= BinaryOp::kEq; }

template <typename T>
T int_pow(T base, T exp) {
    if (exp < 0) {
        // torch raises for negative integer powers of integers except base 1 / -1.
        if (base == 1) return 1;
        if (base == -1) return (exp % 2 == 0) ? 1 : -1;
        throw std::domain_error("integers to negative integer powers are not allowed");
    }
    T result = 1;
    while (exp > 0) {
        if (exp & 1) result = wrap_mul<T>(result, base);
        base = wrap_mul<T>(base, base);
        exp >>= 1;
    }
    return result;
}

template <typename T>
T arith(BinaryOp op, T a, T b) {
    if constexpr (std::is_floating_point_v<T>) {
        switch (op) {
            case BinaryOp::kAdd: return a + b;
            case BinaryOp::kSub: return a - b;
            case BinaryOp::kMul: return a * b;
            case BinaryOp::kDiv: return a / b;
            case BinaryOp::kDivFloor: return std::floor(a / b);
            case BinaryOp::kDivTrunc: return std::trunc(a / b);
            case BinaryOp::kPow: return std::pow(a, b);
            case BinaryOp::kMaximum: return (a != a || b != b) ? a + b : std::max(a, b);
            case BinaryOp::kMinimum: return (a != a || b != b) ? a + b : std::min(a, b);
            case BinaryOp::kRemainder: {
                T m = std::fmod(a, b);
                if (m != T(0) && ((b < T(0)) != (m < T(0)))) m += b;
                return m;
            }
            case BinaryOp::kAtan2: return std::atan2(a, b);
            default: break;
        }
    } else {
        switch (op) {
            case BinaryOp::kAdd: return wrap_add<T>(a, b);
            case BinaryOp::kSub: return wrap_sub<T>(a, b);
            case BinaryOp::kMul: return wrap_mul<T>(a, b);
            case BinaryOp::kDivFloor:
            case BinaryOp::kDivTrunc:
            case BinaryOp::kRemainder: {
                if (b == 0) throw std::domain_error("integer division by zero");
                if constexpr (std::is_signed_v<T>) {
                    if (b == T(-1)) {  // MIN / -1 overflows (and traps on x86): wrap instead
                        return op == BinaryOp::kRemainder ? T(0) : wrap_neg<T>(a);
                    }
                }
                if (op == BinaryOp::kDivTrunc) return static_cast<T>(a / b);
                T q = static_cast<T>(a / b);
                T r = static_cast<T>(a % b);
                if (r != 0 && ((r < 0) != (b < 0))) {
                    q = static_cast<T>(q - 1);
                    r = static_cast<T>(r + b);
                }
                return op == BinaryOp::kRemainder ? r : q;
            }
            case BinaryOp::kPow: return int_pow<T>(a, b);
            case BinaryOp::kMaximum: return std::max(a, b);
            case BinaryOp::kMinimum: return std::min(a, b);
            case BinaryOp::kBitwiseAnd: return static_cast<T>(a & b);
            case BinaryOp::kBitwiseOr: return static_cast<T>(a | b);
            case BinaryOp::kBitwiseXor: return static_cast<T>(a ^ b);
            default: break;
        }
    }
    throw std::logic_error("binary: op not valid for this dtype");
}

template <typename T>
Bool predicate(BinaryOp op, T a, T b) {
    switch (op) {
        case BinaryOp::kEq: return a == b;
        case BinaryOp::kNe: return a != b;
        case BinaryOp::kLt: return a < b;
        case BinaryOp::kLe: return a <= b;
        case BinaryOp::kGt: return a > b;
        case BinaryOp::kGe: return a >= b;
        case BinaryOp::kLogicalAnd: return (a != T(0)) && (b != T(0));
        case BinaryOp::kLogicalOr: return (a != T(0)) || (b != T(0));
        case BinaryOp::kLogicalXor: return (a != T(0)) != (b != T(0));
        default: break;
    }
    throw std::logic_error("binary: not a predicate");
}

// Iterates an N-d shape (collapsed by the planner) with per-operand strides; calls
// inner(offsets..., n, inner_strides...) once per innermost row.
struct StridedLoop {
    std::vector<int64_t> shape;
    std::vector<std::vector<int64_t>> strides;  // per operand (output excluded: contiguous)
    int64_t outer = 1;

    // Returns the element count (checked); the kernel declares its operands' spans.
    int64_t init(const std::string& what) {
        if (shape.empty()) {
            shape = {1};
            for (auto& s : strides) s = {0};
        }
        outer = checked_numel({shape.begin(), shape.end() - 1}, what);
        return checked_numel(shape, what);
    }

    template <typename F>
    void run(int threads, F&& row) const {
        const int64_t rank = static_cast<int64_t>(shape.size());
        const int64_t n = shape.back();
        const size_t ops = strides.size();
        parallel_for(threads, outer, n, [&](int64_t begin, int64_t end) {
            std::vector<int64_t> idx(static_cast<size_t>(rank), 0);
            int64_t rest = begin;
            for (int64_t d = rank - 2; d >= 0; --d) {
                idx[d] = rest % shape[d];
                rest /= shape[d];
            }
            std::vector<int64_t> off(ops);
            for (int64_t o = begin; o < end; ++o) {
                for (size_t k = 0; k < ops; ++k) {
                    int64_t v = 0;
                    for (int64_t d = 0; d + 1 < rank; ++d) v += idx[d] * strides[k][d];
                    off[k] = v;
                }
                row(o * n, off.data(), n);
                for (int64_t d = rank - 2; d >= 0; --d) {
                    if (++idx[d] < shape[d]) break;
                    idx[d] = 0;
                }
            }
        });
    }
};

class BinaryKernel : public Kernel {
   public:
    explicit BinaryKernel(const KernelArgs& args) {
        IntReader r(args);
        op_ = static_cast<BinaryOp>(r.in(0, static_cast<int64_t>(BinaryOp::kLogicalXor), "op"));
        dtype_ = dtype_from(r.next());
        const int64_t rank = r.rank("rank");
        loop_.shape = r.dims(rank, "shape");
        loop_.strides.push_back(r.strides(rank, "a_strides"));
        loop_.strides.push_back(r.strides(rank, "b_strides"));
        const std::string what = "binary " + args.name;
        const bool is_float = dtype_ == DType::kF32 || dtype_ == DType::kF64;
        const bool bitwise = op_ == BinaryOp::kBitwiseAnd || op_ == BinaryOp::kBitwiseOr ||
                             op_ == BinaryOp::kBitwiseXor;
        if (is_float ? bitwise : (op_ == BinaryOp::kDiv || op_ == BinaryOp::kAtan2)) {
            throw PlanError(what + ": op " + std::to_string(static_cast<int>(op_)) +
                            " is not defined for this dtype");
        }
        const int64_t numel = loop_.init(what);
        const int64_t elem = dtype_size(dtype_);
        const int64_t out_elem = is_predicate(op_) ? 1 : elem;
        need(args, 0, checked_mul(numel, out_elem, what), out_elem);
        need_strided(args, 1, loop_.shape, loop_.strides[0], elem);
        need_strided(args, 2, loop_.shape, loop_.strides[1], elem);
        if (dtype_ == DType::kF32 && op_ <= BinaryOp::kDiv) {
            vec_op_ = static_cast<int>(op_);  // kAdd..kDiv map to FloatBinary in order
        } else if (dtype_ == DType::kF32 && op_ == BinaryOp::kMaximum) {
            vec_op_ = static_cast<int>(FloatBinary::kMax);
        } else if (dtype_ == DType::kF32 && op_ == BinaryOp::kMinimum) {
            vec_op_ = static_cast<int>(FloatBinary::kMin);
        }
    }

    void run(const ExecContext& ctx) const override {
        char* out = ctx.ptr(operands[0]);
        const char* a = ctx.ptr(operands[1]);
        const char* b = ctx.ptr(operands[2]);
        const int64_t sa = loop_.strides[0].back(), sb = loop_.strides[1].back();
        if (vec_op_ >= 0 && (sa == 0 || sa == 1) && (sb == 0 || sb == 1) && !(sa == 0 && sb == 0)) {
            const VecOps& vec = vec_ops();
            const auto op = static_cast<FloatBinary>(vec_op_);
            loop_.run(ctx.threads, [&](int64_t o, const int64_t* off, int64_t n) {
                vec.binary(op, reinterpret_cast<const float*>(a) + off[0], sa,
                           reinterpret_cast<const float*>(b) + off[1], sb,
                           reinterpret_cast<float*>(out) + o, n);
            });
            return;
        }
        dispatch_dtype(dtype_, [&](auto tag) {
            using T = decltype(tag);
            const T* as = reinterpret_cast<const T*>(a);
            const T* bs = reinterpret_cast<const T*>(b);
            if (is_predicate(op_)) {
                Bool* ys = reinterpret_cast<Bool*>(out);
                loop_.run(ctx.threads, [&](int64_t o, const int64_t* off, int64_t n) {
                    for (int64_t i = 0; i < n; ++i) {
                        ys[o + i] = predicate<T>(op_, as[off[0] + i * sa], bs[off[1] + i * sb]);
                    }
                });
            } else {
                T* ys = reinterpret_cast<T*>(out);
                loop_.run(ctx.threads, [&](int64_t o, const int64_t* off, int64_t n) {
                    for (int64_t i = 0; i < n; ++i) {
                        ys[o + i] = arith<T>(op_, as[off[0] + i * sa], bs[off[1] + i * sb]);
                    }
                });
            }
        });
    }

   private:
    BinaryOp op_;
    DType dtype_;
    StridedLoop loop_;
    int vec_op_ = -1;
};

// ------------------------------------------------------------------------------------- where
template <typename T>
void where_row(T* y, const Bool* c, int64_t sc, const T* a, int64_t sa, const T* b, int64_t sb,
               int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = c[i * sc] ? a[i * sa] : b[i * sb];
}

class WhereKernel : public Kernel {
   public:
    explicit WhereKernel(const KernelArgs& args) {
        IntReader r(args);
        elem_ = r.next();
        if (elem_ != 1 && elem_ != 2 && elem_ != 4 && elem_ != 8) {
            throw PlanError("where " + args.name + ": element size must be 1, 2, 4 or 8");
        }
        const int64_t rank = r.rank("rank");
        loop_.shape = r.dims(rank, "shape");
        for (int i = 0; i < 3; ++i) loop_.strides.push_back(r.strides(rank, "strides"));
        const std::string what = "where " + args.name;
        const int64_t numel = loop_.init(what);
        need(args, 0, checked_mul(numel, elem_, what), elem_);
        need_strided(args, 1, loop_.shape, loop_.strides[0], 1);
        need_strided(args, 2, loop_.shape, loop_.strides[1], elem_);
        need_strided(args, 3, loop_.shape, loop_.strides[2], elem_);
    }
    void run(const ExecContext& ctx) const override {
        char* out = ctx.ptr(operands[0]);
        const Bool* c = ctx.get<const Bool>(operands[1]);
        const char* a = ctx.ptr(operands[2]);
        const char* b = ctx.ptr(operands[3]);
        const int64_t sc = loop_.strides[0].back(), sa = loop_.strides[1].back(),
                      sb = loop_.strides[2].back();
        loop_.run(ctx.threads, [&](int64_t o, const int64_t* off, int64_t n) {
            switch (elem_) {
                case 1:
                    return where_row(reinterpret_cast<uint8_t*>(out) + o, c + off[0], sc,
                                     reinterpret_cast<const uint8_t*>(a) + off[1], sa,
                                     reinterpret_cast<const uint8_t*>(b) + off[2], sb, n);
                case 2:
                    return where_row(reinterpret_cast<uint16_t*>(out) + o, c + off[0], sc,
                                     reinterpret_cast<const uint16_t*>(a) + off[1], sa,
                                     reinterpret_cast<const uint16_t*>(b) + off[2], sb, n);
                case 4:
                    return where_row(reinterpret_cast<uint32_t*>(out) + o, c + off[0], sc,
                                     reinterpret_cast<const uint32_t*>(a) + off[1], sa,
                                     reinterpret_cast<const uint32_t*>(b) + off[2], sb, n);
                default:
                    return where_row(reinterpret_cast<uint64_t*>(out) + o, c + off[0], sc,
                                     reinterpret_cast<const uint64_t*>(a) + off[1], sa,
                                     reinterpret_cast<const uint64_t*>(b) + off[2], sb, n);
            }
        });
    }

   private:
    int64_t elem_ = 4;
    StridedLoop loop_;
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
GRAPHOPT_RT_KERNEL("binary", BinaryKernel,
                   "out, a, b",
                   "op:binary, dtype:dtype, rank:rank, shape[rank]:dim, a_strides[rank]:signed, "
                   "b_strides[rank]:signed",
                   "");
GRAPHOPT_RT_KERNEL("where", WhereKernel,
                   "out, cond, a, b",
                   "elem:elem, rank:rank, shape[rank]:dim, cond_strides[rank]:signed, "
                   "a_strides[rank]:signed, b_strides[rank]:signed",
                   "");
GRAPHOPT_RT_KERNEL("cast", CastKernel,
                   "out, x",
                   "from:dtype, to:dtype, count:dim",
                   "");

}  // namespace
}  // namespace rt
}  // namespace graphopt
