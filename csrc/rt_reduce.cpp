// Reductions over the middle dim of a contiguous [outer, R, inner] view.
//
// "reduce"  operands: out, x
//           ints: op (ReduceOp), dtype, outer, R, inner;  floats: correction (var / std)
//   Output dtype: bool for all / any, int64 for argmax / argmin, else the input dtype (the
//   planner casts integer inputs of sum / prod to int64 first, as torch accumulates).
//   Floating sums accumulate in double; amax / amin propagate NaN; argmax / argmin return the
//   first extremum (a NaN counts as the extremum, as in torch).
#include <cmath>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "rt_dtype.h"
#include "rt_parallel.h"
#include "rt_plan.h"
#include "rt_vec.h"

namespace graphopt {
namespace rt {
namespace {

// The "reduce" kernel's op codes and their Python names (codes.py REDUCE_CODES).
#define GRAPHOPT_REDUCE_OPS(X)                                                                \
    X(kSum, "sum") X(kMean, "mean") X(kProd, "prod") X(kAmax, "amax") X(kAmin, "amin")        \
    X(kVar, "var") X(kStd, "std") X(kLogsumexp, "logsumexp") X(kAll, "all") X(kAny, "any")    \
    X(kArgmax, "argmax") X(kArgmin, "argmin")
#define GRAPHOPT_RT_ENUMERATOR(e, name) e,
#define GRAPHOPT_RT_ENUM_NAME(e, name) name,

enum class ReduceOp : int32_t { GRAPHOPT_REDUCE_OPS(GRAPHOPT_RT_ENUMERATOR) };
GRAPHOPT_RT_CODE_TABLE("reduce", {GRAPHOPT_REDUCE_OPS(GRAPHOPT_RT_ENUM_NAME)});

template <typename T>
bool is_nan(T v) {
    if constexpr (std::is_floating_point_v<T>) {
        return std::isnan(v);
    } else {
        return false;
    }
}

template <typename T>
using Acc = std::conditional_t<std::is_floating_point_v<T>, double, int64_t>;

// Integer sums and products wrap around (as torch's do) instead of overflowing into UB.
inline double add(double a, double b) { return a + b; }
inline double mul(double a, double b) { return a * b; }
inline int64_t add(int64_t a, int64_t b) {
    return static_cast<int64_t>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
}
inline int64_t mul(int64_t a, int64_t b) {
    return static_cast<int64_t>(static_cast<uint64_t>(a) * static_cast<uint64_t>(b));
}

class ReduceKernel : public Kernel {
   public:
    explicit ReduceKernel(const KernelArgs& args) {
        IntReader r(args);
        op_ = static_cast<ReduceOp>(r.in(0, static_cast<int64_t>(ReduceOp::kArgmin), "op"));
        dtype_ = dtype_from(r.next());
        outer_ = r.dim("outer");
        r_ = r.dim("R");
        inner_ = r.dim("inner");
        correction_ = args.floats.empty() ? 0.0 : args.floats[0];
        const std::string what = "reduce " + args.name;
        const bool is_float = dtype_ == DType::kF32 || dtype_ == DType::kF64;
        const bool float_only = op_ == ReduceOp::kVar || op_ == ReduceOp::kStd ||
                                op_ == ReduceOp::kLogsumexp;
        if (float_only && !is_float) throw PlanError(what + ": var / std / logsumexp need floats");
        const int64_t count = checked_mul(outer_, inner_, what);
        // Extrema (and an integer mean) of nothing are undefined: torch raises too.
        const bool needs_items = op_ == ReduceOp::kAmax || op_ == ReduceOp::kAmin ||
                                 op_ == ReduceOp::kArgmax || op_ == ReduceOp::kArgmin ||
                                 (op_ == ReduceOp::kMean && !is_float);
        if (needs_items && r_ == 0 && count > 0) {
            throw PlanError(what + ": cannot reduce an empty dimension with this op");
        }
        const int64_t out_elem = op_ == ReduceOp::kAll || op_ == ReduceOp::kAny ? 1
                                 : op_ == ReduceOp::kArgmax || op_ == ReduceOp::kArgmin
                                     ? 8 : dtype_size(dtype_);
        need(args, 0, checked_mul(count, out_elem, what), out_elem);
        need(args, 1, checked_mul(checked_mul(count, r_, what), dtype_size(dtype_), what),
             dtype_size(dtype_));
    }

    void run(const ExecContext& ctx) const override {
        char* out = ctx.ptr(operands[0]);
        const char* x = ctx.ptr(operands[1]);
        dispatch_dtype(dtype_, [&](auto tag) {
            using T = decltype(tag);
            const T* xs = reinterpret_cast<const T*>(x);
            parallel_for(ctx.threads, outer_, r_ * inner_, [&](int64_t o0, int64_t o1) {
                std::vector<Acc<T>> acc(static_cast<size_t>(inner_));
                std::vector<T> best(static_cast<size_t>(inner_));
                std::vector<int64_t> idx(static_cast<size_t>(inner_));
                for (int64_t o = o0; o < o1; ++o) {
                    block<T>(xs + o * r_ * inner_, out, o, acc, best, idx);
                }
            });
        });
    }

   private:
    template <typename T>
    void block(const T* x, char* out, int64_t o, std::vector<Acc<T>>& acc, std::vector<T>& best,
               std::vector<int64_t>& idx) const {
        const int64_t R = r_, I = inner_;
        T* y = reinterpret_cast<T*>(out) + o * I;
        switch (op_) {
            case ReduceOp::kSum:
            case ReduceOp::kMean: {
                if constexpr (std::is_same_v<T, float>) {
                    if (I == 1) {
                        const double s = vec_ops().reduce_sum(x, R);
                        y[0] = static_cast<T>(op_ == ReduceOp::kMean ? s / R : s);
                        return;
                    }
                }
                std::fill(acc.begin(), acc.end(), Acc<T>(0));
                for (int64_t r = 0; r < R; ++r) {
                    for (int64_t i = 0; i < I; ++i) acc[i] = add(acc[i], Acc<T>(x[r * I + i]));
                }
                for (int64_t i = 0; i < I; ++i) {
                    y[i] = static_cast<T>(op_ == ReduceOp::kMean ? acc[i] / Acc<T>(R) : acc[i]);
                }
                return;
            }
            case ReduceOp::kProd: {
                std::fill(acc.begin(), acc.end(), Acc<T>(1));
                for (int64_t r = 0; r < R; ++r) {
                    for (int64_t i = 0; i < I; ++i) acc[i] = mul(acc[i], Acc<T>(x[r * I + i]));
                }
                for (int64_t i = 0; i < I; ++i) y[i] = static_cast<T>(acc[i]);
                return;
            }
            case ReduceOp::kAmax:
            case ReduceOp::kAmin: {
                const bool mx = op_ == ReduceOp::kAmax;
                for (int64_t i = 0; i < I; ++i) best[i] = x[i];
                for (int64_t r = 1; r < R; ++r) {
                    for (int64_t i = 0; i < I; ++i) {
                        const T v = x[r * I + i];
                        if (is_nan(best[i])) continue;
                        if (is_nan(v) || (mx ? v > best[i] : v < best[i])) best[i] = v;
                    }
                }
                for (int64_t i = 0; i < I; ++i) y[i] = best[i];
                return;
            }
            case ReduceOp::kVar:
            case ReduceOp::kStd: {
                if constexpr (std::is_floating_point_v<T>) {
                    std::vector<double> mean(static_cast<size_t>(I), 0.0);
                    std::vector<double> m2(static_cast<size_t>(I), 0.0);
                    for (int64_t r = 0; r < R; ++r) {
                        for (int64_t i = 0; i < I; ++i) mean[i] += x[r * I + i];
                    }
                    for (int64_t i = 0; i < I; ++i) mean[i] /= static_cast<double>(R);
                    for (int64_t r = 0; r < R; ++r) {
                        for (int64_t i = 0; i < I; ++i) {
                            const double d = x[r * I + i] - mean[i];
                            m2[i] += d * d;
                        }
                    }
                    const double denom = std::max(0.0, static_cast<double>(R) - correction_);
                    for (int64_t i = 0; i < I; ++i) {
                        const double v = m2[i] / denom;
                        y[i] = static_cast<T>(op_ == ReduceOp::kStd ? std::sqrt(v) : v);
                    }
                }
                return;
            }
            case ReduceOp::kLogsumexp: {
                if constexpr (std::is_floating_point_v<T>) {
                    for (int64_t i = 0; i < I; ++i) best[i] = -std::numeric_limits<T>::infinity();
                    for (int64_t r = 0; r < R; ++r) {
                        for (int64_t i = 0; i < I; ++i) best[i] = std::max(best[i], x[r * I + i]);
                    }
                    std::fill(acc.begin(), acc.end(), 0.0);
                    for (int64_t r = 0; r < R; ++r) {
                        for (int64_t i = 0; i < I; ++i) {
                            const double m = std::isinf(best[i]) ? 0.0 : best[i];
                            acc[i] += std::exp(static_cast<double>(x[r * I + i]) - m);
                        }
                    }
                    for (int64_t i = 0; i < I; ++i) {
                        const double m = std::isinf(best[i]) ? 0.0 : best[i];
                        y[i] = static_cast<T>(m + std::log(acc[i]));
                    }
                }
                return;
            }
            case ReduceOp::kAll:
            case ReduceOp::kAny: {
                Bool* yb = reinterpret_cast<Bool*>(out) + o * I;
                const bool all = op_ == ReduceOp::kAll;
                for (int64_t i = 0; i < I; ++i) yb[i] = all ? 1 : 0;
                for (int64_t r = 0; r < R; ++r) {
                    for (int64_t i = 0; i < I; ++i) {
                        const bool v = x[r * I + i] != T(0);
                        if (all) {
                            yb[i] = yb[i] && v;
                        } else {
                            yb[i] = yb[i] || v;
                        }
                    }
                }
                return;
            }
            case ReduceOp::kArgmax:
            case ReduceOp::kArgmin: {
                int64_t* yi = reinterpret_cast<int64_t*>(out) + o * I;
                const bool mx = op_ == ReduceOp::kArgmax;
                for (int64_t i = 0; i < I; ++i) {
                    best[i] = x[i];
                    idx[i] = 0;
                }
                for (int64_t r = 1; r < R; ++r) {
                    for (int64_t i = 0; i < I; ++i) {
                        if (is_nan(best[i])) continue;
                        const T v = x[r * I + i];
                        if (is_nan(v) || (mx ? v > best[i] : v < best[i])) {
                            best[i] = v;
                            idx[i] = r;
                        }
                    }
                }
                for (int64_t i = 0; i < I; ++i) yi[i] = idx[i];
                return;
            }
        }
    }

    ReduceOp op_;
    DType dtype_;
    int64_t outer_, r_, inner_;
    double correction_;
};

GRAPHOPT_RT_KERNEL("reduce", ReduceKernel,
                   "out, x",
                   "op:reduce, dtype:dtype, outer:dim, R:dim, inner:dim",
                   "correction?");

}  // namespace
}  // namespace rt
}  // namespace graphopt
