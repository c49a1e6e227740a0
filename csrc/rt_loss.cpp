// Loss and linear-algebra kernels that ONNX graphs carry (float32 / float64, contiguous).
//
// "nll_loss"  operands: out, x, target, weight?
//             ints: N, C, inner, target_dtype, reduction (0 none, 1 sum, 2 mean),
//                   ignore_index, dtype
//             x is [N, C, inner] log-probabilities, target [N, inner] class indices;
//             loss[n, i] = -weight[t] * x[n, t, i] with t = target[n, i] (0 where t is
//             ignore_index); sum, or mean = sum / the summed weights (NaN when all are
//             ignored), as torch's nll_loss. A target outside [0, C) raises IndexError.
// "det"       operands: out, x;  ints: batch, n, dtype
//             determinants of the [batch, n, n] matrices: LU with partial pivoting in double
#include <cmath>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "rt_dtype.h"
#include "rt_parallel.h"
#include "rt_plan.h"

namespace graphopt {
namespace rt {
namespace {

DType float_dtype(const KernelArgs& args, int64_t code, const char* what) {
    const DType t = dtype_from(code);
    if (t != DType::kF32 && t != DType::kF64) {
        throw PlanError(std::string(what) + " " + args.name + ": float32 or float64 only");
    }
    return t;
}

class NllLossKernel : public Kernel {
   public:
    explicit NllLossKernel(const KernelArgs& args) : name_(args.name) {
        IntReader r(args);
        n_ = r.dim("N");
        c_ = r.dim("C");
        inner_ = r.dim("inner");
        target_dtype_ = dtype_from(r.next());
        if (target_dtype_ != DType::kI32 && target_dtype_ != DType::kI64) {
            throw PlanError("nll_loss " + args.name + ": targets must be int32 or int64");
        }
        reduction_ = static_cast<int>(r.in(0, 2, "reduction"));
        ignore_ = r.signed_param("ignore_index");
        dtype_ = float_dtype(args, r.next(), "nll_loss");
        const std::string what = "nll_loss " + args.name;
        const int64_t elem = dtype_size(dtype_);
        const int64_t rows = checked_mul(n_, inner_, what);
        need(args, 0, reduction_ == 0 ? checked_mul(rows, elem, what) : elem, elem);
        need(args, 1, checked_mul(checked_mul(rows, c_, what), elem, what), elem);
        const int64_t tsz = dtype_size(target_dtype_);
        need(args, 2, checked_mul(rows, tsz, what), tsz);
        need_opt(args, 3, checked_mul(c_, elem, what), elem);
    }
    void run(const ExecContext& ctx) const override {
        const char* target = ctx.ptr(operands[2]);
        const bool has_weight = operands.size() > 3 && operands[3].present;
        dispatch_dtype(dtype_, [&](auto tag) {
            using T = decltype(tag);
            if constexpr (std::is_floating_point_v<T>) {
                T* out = ctx.get<T>(operands[0]);
                const T* x = ctx.get<const T>(operands[1]);
                const T* w = has_weight ? ctx.get<const T>(operands[3]) : nullptr;
                double total = 0.0, weights = 0.0;
                for (int64_t n = 0; n < n_; ++n) {
                    for (int64_t i = 0; i < inner_; ++i) {
                        const int64_t row = n * inner_ + i;
                        const int64_t t = target_dtype_ == DType::kI32
                                              ? reinterpret_cast<const int32_t*>(target)[row]
                                              : reinterpret_cast<const int64_t*>(target)[row];
                        double loss = 0.0, weight = 0.0;
                        if (t != ignore_) {
                            if (t < 0 || t >= c_) {
                                throw std::out_of_range(
                                    "target " + std::to_string(t) + " is out of bounds for " +
                                    std::to_string(c_) + " classes (node " + name_ + ")");
                            }
                            weight = w != nullptr ? static_cast<double>(w[t]) : 1.0;
                            loss = -weight * static_cast<double>(x[(n * c_ + t) * inner_ + i]);
                        }
                        if (reduction_ == 0) out[row] = static_cast<T>(loss);
                        total += loss;
                        weights += weight;
                    }
                }
                if (reduction_ == 1) out[0] = static_cast<T>(total);
                if (reduction_ == 2) {
                    out[0] = weights == 0.0 ? std::numeric_limits<T>::quiet_NaN()
                                            : static_cast<T>(total / weights);
                }
            }
        });
    }

   private:
    std::string name_;
    int64_t n_, c_, inner_, ignore_;
    int reduction_ = 2;
    DType target_dtype_, dtype_;
};

class DetKernel : public Kernel {
   public:
    explicit DetKernel(const KernelArgs& args) {
        IntReader r(args);
        batch_ = r.dim("batch");
        n_ = r.in(0, 4096, "n");
        dtype_ = float_dtype(args, r.next(), "det");
        const std::string what = "det " + args.name;
        const int64_t elem = dtype_size(dtype_);
        need(args, 0, checked_mul(batch_, elem, what), elem);
        need(args, 1, checked_mul(checked_mul(checked_mul(batch_, n_, what), n_, what), elem, what),
             elem);
    }
    void run(const ExecContext& ctx) const override {
        dispatch_dtype(dtype_, [&](auto tag) {
            using T = decltype(tag);
            if constexpr (std::is_floating_point_v<T>) {
                T* out = ctx.get<T>(operands[0]);
                const T* x = ctx.get<const T>(operands[1]);
                parallel_for(ctx.threads, batch_, n_ * n_ * n_, [&](int64_t b0, int64_t b1) {
                    std::vector<double> a(static_cast<size_t>(n_ * n_));
                    for (int64_t b = b0; b < b1; ++b) {
                        for (int64_t i = 0; i < n_ * n_; ++i) a[i] = x[b * n_ * n_ + i];
                        out[b] = static_cast<T>(lu_det(a.data(), n_));
                    }
                });
            }
        });
    }

   private:
    static double lu_det(double* a, int64_t n) {
        double det = 1.0;
        for (int64_t col = 0; col < n; ++col) {
            int64_t pivot = col;
            for (int64_t row = col + 1; row < n; ++row) {
                if (std::abs(a[row * n + col]) > std::abs(a[pivot * n + col])) pivot = row;
            }
            if (a[pivot * n + col] == 0.0) return 0.0;
            if (pivot != col) {
                for (int64_t j = 0; j < n; ++j) std::swap(a[col * n + j], a[pivot * n + j]);
                det = -det;
            }
            const double p = a[col * n + col];
            det *= p;
            for (int64_t row = col + 1; row < n; ++row) {
                const double f = a[row * n + col] / p;
                for (int64_t j = col + 1; j < n; ++j) a[row * n + j] -= f * a[col * n + j];
            }
        }
        return det;
    }

    int64_t batch_, n_;
    DType dtype_;
};

GRAPHOPT_RT_KERNEL("nll_loss", NllLossKernel,
                   "out, x, target, weight?",
                   "N:dim, C:dim, inner:dim, target_dtype:dtype, reduction:mode, "
                   "ignore_index:signed, dtype:dtype",
                   "");
GRAPHOPT_RT_KERNEL("det", DetKernel,
                   "out, x",
                   "batch:dim, n:dim, dtype:dtype",
                   "");

}  // namespace
}  // namespace rt
}  // namespace graphopt
