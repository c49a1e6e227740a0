// Broadcasting elementwise kernels: binary arithmetic / comparisons and where (split from
// rt_elementwise.cpp, which holds unary and cast).
//
// "binary"  operands: out (contiguous), a, b
//           ints: op (BinaryOp), dtype (of a and b), rank, shape[rank], a_strides[rank],
//                 b_strides[rank]     (broadcast dims have stride 0; out dtype: bool for
//                 comparisons and logical ops, else dtype)
// "where"   operands: out (contiguous), cond (bool), a, b
//           ints: elem_size, rank, shape[rank], cond_strides, a_strides, b_strides
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
#include "rt_int_wrap.h"
#include "rt_parallel.h"
#include "rt_plan.h"
#include "rt_vec.h"

namespace graphopt {
namespace rt {
namespace {

#define GRAPHOPT_RT_ENUMERATOR(e, name) e,
#define GRAPHOPT_RT_ENUM_NAME(e, name) name,

// ------------------------------------------------------------------------------------ binary
// The "binary" kernel's op codes and their Python names (codes.py BINARY_CODES). Codes only
// grow at the end; the predicates (results are bool) are the block kEq..kLogicalXor.
#define GRAPHOPT_BINARY_OPS(X)                                                                \
    X(kAdd, "add") X(kSub, "sub") X(kMul, "mul") X(kDiv, "div") X(kDivFloor, "div_floor")     \
    X(kDivTrunc, "div_trunc") X(kPow, "pow") X(kMaximum, "maximum") X(kMinimum, "minimum")    \
    X(kRemainder, "remainder") X(kAtan2, "atan2") X(kBitwiseAnd, "bitwise_and")               \
    X(kBitwiseOr, "bitwise_or") X(kBitwiseXor, "bitwise_xor") X(kEq, "eq") X(kNe, "ne")       \
    X(kLt, "lt") X(kLe, "le") X(kGt, "gt") X(kGe, "ge") X(kLogicalAnd, "logical_and")         \
    X(kLogicalOr, "logical_or") X(kLogicalXor, "logical_xor") X(kFmod, "fmod")                \
    X(kPrelu, "prelu") X(kShiftLeft, "shift_left") X(kShiftRight, "shift_right")

enum class BinaryOp : int32_t { GRAPHOPT_BINARY_OPS(GRAPHOPT_RT_ENUMERATOR) };
GRAPHOPT_RT_CODE_TABLE("binary", {GRAPHOPT_BINARY_OPS(GRAPHOPT_RT_ENUM_NAME)});

bool is_predicate(BinaryOp op) { return op >= BinaryOp::kEq && op <= BinaryOp::kLogicalXor; }

template <typename T>
T int_pow(T base, T exp) {
    if constexpr (std::is_signed_v<T>) {
        if (exp < 0) {
            // torch raises for negative integer powers of integers except base 1 / -1.
            if (base == 1) return 1;
            if (base == -1) return (exp % 2 == 0) ? 1 : -1;
            throw std::domain_error("integers to negative integer powers are not allowed");
        }
    }
    T result = 1;
    while (exp > 0) {
        if (exp & 1) result = wrap_mul<T>(result, base);
        base = wrap_mul<T>(base, base);
        exp >>= 1;
    }
    return result;
}

// torch's shifts: a shift by the bit width or more (or by a negative amount) gives 0, or the
// sign fill for a right shift of a negative value.
template <typename T>
T shift(BinaryOp op, T a, T b) {
    constexpr T kBits = static_cast<T>(8 * sizeof(T));
    using U = std::make_unsigned_t<T>;
    const bool out_of_range = [&] {
        if constexpr (std::is_signed_v<T>) return b < 0 || b >= kBits;
        return b >= kBits;
    }();
    if (op == BinaryOp::kShiftLeft) {
        return out_of_range ? T(0) : static_cast<T>(static_cast<U>(a) << b);
    }
    if (out_of_range) {
        if constexpr (std::is_signed_v<T>) return a < 0 ? T(-1) : T(0);
        return T(0);
    }
    return static_cast<T>(a >> b);  // arithmetic for signed types (C++20 and gcc)
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
            case BinaryOp::kFmod: return std::fmod(a, b);
            case BinaryOp::kPrelu: return a < T(0) ? a * b : a;
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
            case BinaryOp::kFmod: {  // C's %: the sign of the dividend
                if (b == 0) throw std::domain_error("integer division by zero");
                if constexpr (std::is_signed_v<T>) {
                    if (b == T(-1)) return T(0);
                }
                return static_cast<T>(a % b);
            }
            case BinaryOp::kPrelu: return a < T(0) ? wrap_mul<T>(a, b) : a;
            case BinaryOp::kShiftLeft:
            case BinaryOp::kShiftRight: return shift<T>(op, a, b);
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
        op_ = static_cast<BinaryOp>(r.in(0, static_cast<int64_t>(BinaryOp::kShiftRight), "op"));
        dtype_ = dtype_from(r.next());
        const int64_t rank = r.rank("rank");
        loop_.shape = r.dims(rank, "shape");
        loop_.strides.push_back(r.strides(rank, "a_strides"));
        loop_.strides.push_back(r.strides(rank, "b_strides"));
        const std::string what = "binary " + args.name;
        const bool is_float = dtype_ == DType::kF32 || dtype_ == DType::kF64;
        const bool bitwise = op_ == BinaryOp::kBitwiseAnd || op_ == BinaryOp::kBitwiseOr ||
                             op_ == BinaryOp::kBitwiseXor || op_ == BinaryOp::kShiftLeft ||
                             op_ == BinaryOp::kShiftRight;
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

}  // namespace
}  // namespace rt
}  // namespace graphopt
