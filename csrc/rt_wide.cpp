// Float64 and integer kernels beside the float32 fast paths ("gemm", "softmax").
//
// "matmul_wide"  operands: out ([batch..., M, N] contiguous), a, b (read through strides)
//                ints: dtype, batch_rank, batch_shape[batch_rank], a_batch_strides[batch_rank],
//                      b_batch_strides[batch_rank], M, N, K, a_row_stride, a_col_stride,
//                      b_row_stride, b_col_stride (strides in elements, 0 where broadcast)
//                out[..., i, j] = sum_k a[..., i, k] * b[..., k, j]
//
// "softmax_f64"  operands: out, x (float64, [outer, R, inner] contiguous; out may alias x)
//                ints: outer, R, inner, log
//                softmax (or log_softmax) along R; a row of -inf only gives NaN (as torch)
//
// float64 sums in double in the order k = 0..K-1 (numpy's and torch's reference order for a
// small K); integer products wrap modulo 2^bits as in numpy / torch (computed in uint64: no
// signed-overflow UB). Rows are the parallel unit; each row streams B's rows once (i-k-j), so
// a B with unit column stride is read contiguously and the j loop vectorizes.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "rt_dtype.h"
#include "rt_int_wrap.h"
#include "rt_matmul_layout.h"
#include "rt_parallel.h"
#include "rt_plan.h"

namespace graphopt {
namespace rt {
namespace {

class MatmulWideKernel : public MatmulKernelBase {
   public:
    explicit MatmulWideKernel(const KernelArgs& args) {
        IntReader r(args);
        const std::string what = "matmul_wide " + args.name;
        dtype_ = dtype_from(r.next());
        if (dtype_ == DType::kBool || dtype_ == DType::kF32) {
            throw PlanError(what + ": dtype " + kDTypeNames[static_cast<int>(dtype_)] +
                            " is not a wide matmul type (float32 runs the gemm kernel)");
        }
        read_layout(r, args, dtype_size(dtype_), what);
    }

    void run(const ExecContext& ctx) const override {
        dispatch_dtype(dtype_, [&](auto tag) {
            using T = decltype(tag);
            // (Bool is uint8_t: the constructor refused bool, so this is uint8.)
            if constexpr (!std::is_same_v<T, float>) compute<T>(ctx);
        });
    }

   private:
    template <typename T>
    void compute(const ExecContext& ctx) const {
        using A = WideAcc<T>;
        T* out = reinterpret_cast<T*>(ctx.ptr(operands[0]));
        const T* a = reinterpret_cast<const T*>(ctx.ptr(operands[1]));
        const T* b = reinterpret_cast<const T*>(ctx.ptr(operands[2]));
        const MatmulLayout& l = layout_;
        const int64_t rows = l.batch_count * l.m;
        parallel_for(ctx.threads, rows, std::max<int64_t>(1, l.n * l.k), [&](int64_t r0,
                                                                              int64_t r1) {
            std::vector<A> acc(static_cast<size_t>(l.n));
            for (int64_t row = r0; row < r1; ++row) {
                const int64_t bi = row / std::max<int64_t>(l.m, 1), i = row % l.m;
                int64_t a_off = 0, b_off = 0, rest = bi;
                for (int64_t d = static_cast<int64_t>(l.batch_shape.size()) - 1; d >= 0; --d) {
                    const int64_t idx = rest % l.batch_shape[d];
                    rest /= l.batch_shape[d];
                    a_off += idx * l.a_batch[d];
                    b_off += idx * l.b_batch[d];
                }
                std::fill(acc.begin(), acc.end(), A(0));
                const T* arow = a + a_off + i * l.a_rs;
                for (int64_t kk = 0; kk < l.k; ++kk) {
                    const A av = static_cast<A>(arow[kk * l.a_cs]);
                    const T* brow = b + b_off + kk * l.b_rs;
                    for (int64_t j = 0; j < l.n; ++j) {
                        acc[j] = static_cast<A>(acc[j] + av * static_cast<A>(brow[j * l.b_cs]));
                    }
                }
                T* orow = out + row * l.n;
                for (int64_t j = 0; j < l.n; ++j) orow[j] = static_cast<T>(acc[j]);
            }
        });
    }

    DType dtype_;
};

GRAPHOPT_RT_KERNEL("matmul_wide", MatmulWideKernel,
                   "out, a, b",
                   "dtype:dtype, batch_rank:rank, batch_shape[batch_rank]:dim, "
                   "a_batch_strides[batch_rank]:signed, b_batch_strides[batch_rank]:signed, "
                   "M:dim, N:dim, K:dim, a_row_stride:signed, a_col_stride:signed, "
                   "b_row_stride:signed, b_col_stride:signed",
                   "");

class SoftmaxF64Kernel : public Kernel {
   public:
    explicit SoftmaxF64Kernel(const KernelArgs& args) {
        IntReader r(args);
        outer_ = r.dim("outer");
        axis_ = r.dim("R");
        inner_ = r.dim("inner");
        log_ = r.next() != 0;
        const std::string what = "softmax_f64 " + args.name;
        const int64_t bytes = checked_mul(
            checked_mul(checked_mul(outer_, axis_, what), inner_, what), 8, what);
        need(args, 0, bytes, 8);
        need(args, 1, bytes, 8);
    }

    void run(const ExecContext& ctx) const override {
        double* out = ctx.get<double>(operands[0]);
        const double* x = ctx.get<const double>(operands[1]);
        parallel_for(ctx.threads, outer_ * inner_, axis_ * 16, [&](int64_t t0, int64_t t1) {
            std::vector<double> row(static_cast<size_t>(axis_));
            for (int64_t t = t0; t < t1; ++t) {
                const int64_t o = t / std::max<int64_t>(inner_, 1), i = t % inner_;
                const double* xs = x + o * axis_ * inner_ + i;
                double* ys = out + o * axis_ * inner_ + i;
                for (int64_t a = 0; a < axis_; ++a) row[a] = xs[a * inner_];
                one_row(row);
                for (int64_t a = 0; a < axis_; ++a) ys[a * inner_] = row[a];
            }
        });
    }

   private:
    void one_row(std::vector<double>& v) const {
        double m = -std::numeric_limits<double>::infinity();
        for (double e : v) m = (std::isnan(e) || e > m) ? e : m;  // NaN wins: a NaN row
        if (std::isinf(m) && m < 0) {
            std::fill(v.begin(), v.end(), std::numeric_limits<double>::quiet_NaN());
            return;
        }
        double sum = 0.0;
        for (double e : v) sum += std::exp(e - m);
        if (log_) {
            const double shift = m + std::log(sum);
            for (double& e : v) e -= shift;
        } else {
            for (double& e : v) e = std::exp(e - m) / sum;
        }
    }

    int64_t outer_ = 0, axis_ = 0, inner_ = 0;
    bool log_ = false;
};

GRAPHOPT_RT_KERNEL("softmax_f64", SoftmaxF64Kernel,
                   "out, x",
                   "outer:dim, R:dim, inner:dim, log:flag",
                   "");

}  // namespace
}  // namespace rt
}  // namespace graphopt
