// Prefix scans and top-k along the middle dim of a contiguous [outer, R, inner] view.
//
// "scan"  operands: out, x (same dtype; out may alias x)
//         ints: op (0 sum, 1 product), dtype, outer, R, inner
//         inclusive: out[o, r, i] = x[o, 0, i] (+ or *) ... x[o, r, i]; floating scans
//         accumulate in double (as torch's CPU cumsum / cumprod), integer ones wrap
// "topk"  operands: values (dtype), indices (int64), x
//         ints: dtype, outer, R, inner, k, largest
//         the k largest (or smallest) along R in order; ties keep the lower index first and a
//         NaN counts as larger than any number (torch.sort with stable=True)
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "rt_dtype.h"
#include "rt_int_wrap.h"
#include "rt_parallel.h"
#include "rt_plan.h"

namespace graphopt {
namespace rt {
namespace {

class ScanKernel : public Kernel {
   public:
    explicit ScanKernel(const KernelArgs& args) {
        IntReader r(args);
        product_ = r.in(0, 1, "op") == 1;
        dtype_ = dtype_from(r.next());
        outer_ = r.dim("outer");
        axis_ = r.dim("R");
        inner_ = r.dim("inner");
        if (dtype_ == DType::kBool) throw PlanError("scan " + args.name + ": bool input");
        const std::string what = "scan " + args.name;
        const int64_t elem = dtype_size(dtype_);
        const int64_t bytes = checked_mul(
            checked_mul(checked_mul(outer_, axis_, what), inner_, what), elem, what);
        need(args, 0, bytes, elem);
        need(args, 1, bytes, elem);
    }
    void run(const ExecContext& ctx) const override {
        char* out = ctx.ptr(operands[0]);
        const char* x = ctx.ptr(operands[1]);
        dispatch_dtype(dtype_, [&](auto tag) {
            using T = decltype(tag);
            using A = WideAcc<T>;
            const T* xs = reinterpret_cast<const T*>(x);
            T* ys = reinterpret_cast<T*>(out);
            parallel_for(ctx.threads, outer_ * inner_, axis_, [&](int64_t t0, int64_t t1) {
                for (int64_t t = t0; t < t1; ++t) {
                    const int64_t o = t / std::max<int64_t>(inner_, 1), i = t % inner_;
                    const int64_t base = o * axis_ * inner_ + i;
                    A acc = product_ ? A(1) : A(0);
                    for (int64_t r = 0; r < axis_; ++r) {
                        // Integers go through uint64 so that overflow wraps instead of UB.
                        const A v = static_cast<A>(xs[base + r * inner_]);
                        acc = product_ ? static_cast<A>(acc * v) : static_cast<A>(acc + v);
                        ys[base + r * inner_] = static_cast<T>(acc);
                    }
                }
            });
        });
    }

   private:
    bool product_ = false;
    DType dtype_;
    int64_t outer_, axis_, inner_;
};

template <typename T>
bool is_nan_value(T v) {
    if constexpr (std::is_floating_point_v<T>) {
        return std::isnan(v);
    } else {
        return false;
    }
}

class TopkKernel : public Kernel {
   public:
    explicit TopkKernel(const KernelArgs& args) {
        IntReader r(args);
        dtype_ = dtype_from(r.next());
        outer_ = r.dim("outer");
        axis_ = r.dim("R");
        inner_ = r.dim("inner");
        k_ = r.in(0, axis_, "k");
        largest_ = r.next() != 0;
        if (dtype_ == DType::kBool) throw PlanError("topk " + args.name + ": bool input");
        const std::string what = "topk " + args.name;
        const int64_t elem = dtype_size(dtype_);
        const int64_t rows = checked_mul(outer_, inner_, what);
        need(args, 0, checked_mul(checked_mul(rows, k_, what), elem, what), elem);
        need(args, 1, checked_mul(checked_mul(rows, k_, what), 8, what), 8);
        need(args, 2, checked_mul(checked_mul(rows, axis_, what), elem, what), elem);
    }
    void run(const ExecContext& ctx) const override {
        char* values = ctx.ptr(operands[0]);
        int64_t* indices = ctx.get<int64_t>(operands[1]);
        const char* x = ctx.ptr(operands[2]);
        dispatch_dtype(dtype_, [&](auto tag) {
            using T = decltype(tag);
            const T* xs = reinterpret_cast<const T*>(x);
            T* vs = reinterpret_cast<T*>(values);
            parallel_for(ctx.threads, outer_ * inner_, axis_ * 4, [&](int64_t t0, int64_t t1) {
                std::vector<int64_t> order(static_cast<size_t>(axis_));
                for (int64_t t = t0; t < t1; ++t) {
                    const int64_t o = t / inner_, i = t % inner_;
                    const T* row = xs + o * axis_ * inner_ + i;
                    for (int64_t r = 0; r < axis_; ++r) order[static_cast<size_t>(r)] = r;
                    // a before b: strictly first in the requested order, ties by index.
                    auto before = [&](int64_t a, int64_t b) {
                        const T va = row[a * inner_], vb = row[b * inner_];
                        const bool na = is_nan_value(va), nb = is_nan_value(vb);
                        if (na != nb) return largest_ ? na : nb;
                        if (!na && va != vb) return largest_ ? va > vb : va < vb;
                        return a < b;
                    };
                    std::partial_sort(order.begin(), order.begin() + k_, order.end(), before);
                    const int64_t out_base = o * k_ * inner_ + i;
                    for (int64_t j = 0; j < k_; ++j) {
                        const int64_t src = order[static_cast<size_t>(j)];
                        vs[out_base + j * inner_] = row[src * inner_];
                        indices[out_base + j * inner_] = src;
                    }
                }
            });
        });
    }

   private:
    DType dtype_;
    int64_t outer_, axis_, inner_, k_;
    bool largest_ = true;
};

GRAPHOPT_RT_KERNEL("scan", ScanKernel,
                   "out, x",
                   "op:mode, dtype:dtype, outer:dim, R:dim, inner:dim",
                   "");
GRAPHOPT_RT_KERNEL("topk", TopkKernel,
                   "values, indices, x",
                   "dtype:dtype, outer:dim, R:dim, inner:dim, k:dim, largest:flag",
                   "");

}  // namespace
}  // namespace rt
}  // namespace graphopt
