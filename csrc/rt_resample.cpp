// One axis of a separable resampling (ONNX Resize in every mode): each output position along
// the axis is a weighted sum of a few input positions. The planner computes the taps from the
// ONNX formulas once (graphopt/ops/onnx_resize.py resize_matrix); this kernel only applies them.
//
// "resample_axis"  operands: out, x, index (int64 [out_len, taps]), weight (f64 [out_len, taps])
//                  ints: dtype (float32 / float64), outer, in_len, inner, out_len, taps
//                  x is [outer, in_len, inner], out [outer, out_len, inner];
//                  out[o, j, i] = sum_t weight[j, t] * x[o, index[j, t], i] (in double)
#include <algorithm>
#include <memory>
#include <type_traits>
#include <stdexcept>
#include <string>
#include <vector>

#include "rt_dtype.h"
#include "rt_parallel.h"
#include "rt_plan.h"

namespace graphopt {
namespace rt {
namespace {

class ResampleAxisKernel : public Kernel {
   public:
    explicit ResampleAxisKernel(const KernelArgs& args) {
        IntReader r(args);
        dtype_ = dtype_from(r.next());
        if (dtype_ != DType::kF32 && dtype_ != DType::kF64) {
            throw PlanError("resample_axis " + args.name + ": float32 or float64 only");
        }
        outer_ = r.dim("outer");
        in_len_ = r.dim("in_len");
        inner_ = r.dim("inner");
        out_len_ = r.dim("out_len");
        taps_ = r.in(1, 1 << 20, "taps");
        const std::string what = "resample_axis " + args.name;
        const int64_t elem = dtype_size(dtype_);
        const int64_t rows = checked_mul(outer_, inner_, what);
        need(args, 0, checked_mul(checked_mul(rows, out_len_, what), elem, what), elem);
        need(args, 1, checked_mul(checked_mul(rows, in_len_, what), elem, what), elem);
        const int64_t table = checked_mul(out_len_, taps_, what);
        need(args, 2, checked_mul(table, 8, what), 8);
        need(args, 3, checked_mul(table, 8, what), 8);
    }
    void run(const ExecContext& ctx) const override {
        const int64_t* index = ctx.get<const int64_t>(operands[2]);
        const double* weight = ctx.get<const double>(operands[3]);
        for (int64_t t = 0; t < out_len_ * taps_; ++t) {  // the table is data: check it
            if (index[t] < 0 || index[t] >= in_len_) {
                throw std::out_of_range("resample_axis: tap index out of range");
            }
        }
        dispatch_dtype(dtype_, [&](auto tag) {
            using T = decltype(tag);
            if constexpr (std::is_floating_point_v<T>) {
                T* out = ctx.get<T>(operands[0]);
                const T* x = ctx.get<const T>(operands[1]);
                parallel_for(ctx.threads, outer_ * out_len_, inner_ * taps_,
                             [&](int64_t t0, int64_t t1) {
                    std::vector<double> acc(static_cast<size_t>(inner_));
                    for (int64_t t = t0; t < t1; ++t) {
                        const int64_t o = t / out_len_, j = t % out_len_;
                        std::fill(acc.begin(), acc.end(), 0.0);
                        for (int64_t k = 0; k < taps_; ++k) {
                            const double w = weight[j * taps_ + k];
                            if (w == 0.0) continue;
                            const T* src = x + (o * in_len_ + index[j * taps_ + k]) * inner_;
                            for (int64_t i = 0; i < inner_; ++i) acc[i] += w * src[i];
                        }
                        T* dst = out + (o * out_len_ + j) * inner_;
                        for (int64_t i = 0; i < inner_; ++i) dst[i] = static_cast<T>(acc[i]);
                    }
                });
            }
        });
    }

   private:
    DType dtype_;
    int64_t outer_, in_len_, inner_, out_len_, taps_;
};

GRAPHOPT_RT_KERNEL("resample_axis", ResampleAxisKernel,
                   "out, x, index, weight",
                   "dtype:dtype, outer:dim, in_len:dim, inner:dim, out_len:dim, taps:positive",
                   "");

}  // namespace
}  // namespace rt
}  // namespace graphopt
