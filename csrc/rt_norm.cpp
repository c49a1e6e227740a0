// Normalisations and softmax (float32, contiguous).
//
// "layer_norm"     operands: out, x, weight?, bias?;  ints: rows, cols;  floats: eps
// "group_norm"     operands: out, x, weight?, bias?;  ints: N, C, inner (spatial size), groups;
//                  floats: eps   (instance norm is groups == C)
// "channel_affine" operands: out, x, scale, shift;  ints: N, C, inner
//                  out[n, c, i] = x[n, c, i] * scale[c] + shift[c]  (inference batch norm)
// "softmax"        operands: out, x;  ints: outer, axis, inner, log
//                  softmax / log_softmax over the middle dim of [outer, axis, inner]
//
// Statistics are accumulated in double (mean, then the centred second moment), as exact as
// torch's for any row length the models use. out may alias x in every kernel.
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "rt_parallel.h"
#include "rt_plan.h"
#include "rt_vec.h"

namespace graphopt {
namespace rt {
namespace {

// An optional f32 operand (weight / bias), or nullptr.
const float* optional(const ExecContext& ctx, const std::vector<Operand>& ops, size_t i) {
    return i < ops.size() && ops[i].present ? ctx.get<const float>(ops[i]) : nullptr;
}

class LayerNormKernel : public Kernel {
   public:
    explicit LayerNormKernel(const KernelArgs& args) {
        IntReader r(args);
        rows_ = r.dim("rows");
        cols_ = r.dim("cols");
        eps_ = static_cast<float>(r.real(0));
        const std::string what = "layer_norm " + args.name;
        const int64_t bytes = checked_mul(checked_mul(rows_, cols_, what), 4, what);
        need(args, 0, bytes, 4);
        need(args, 1, bytes, 4);
        need_opt(args, 2, checked_mul(cols_, 4, what), 4);
        need_opt(args, 3, checked_mul(cols_, 4, what), 4);
    }
    void run(const ExecContext& ctx) const override {
        float* out = ctx.get<float>(operands[0]);
        const float* x = ctx.get<const float>(operands[1]);
        const float* w = optional(ctx, operands, 2);
        const float* b = optional(ctx, operands, 3);
        const VecOps& vec = vec_ops();
        parallel_for(ctx.threads, rows_, cols_ * 3, [&](int64_t r0, int64_t r1) {
            for (int64_t r = r0; r < r1; ++r) {
                vec.layer_norm(x + r * cols_, out + r * cols_, cols_, w, b, eps_);
            }
        });
    }

   private:
    int64_t rows_, cols_;
    float eps_;
};

class GroupNormKernel : public Kernel {
   public:
    explicit GroupNormKernel(const KernelArgs& args) {
        IntReader r(args);
        n_ = r.dim("N");
        c_ = r.dim("C");
        inner_ = r.dim("inner");
        groups_ = r.positive("groups");
        eps_ = r.real(0);
        const std::string what = "group_norm " + args.name;
        if (c_ % groups_ != 0) throw PlanError(what + ": groups must divide the channels");
        const int64_t bytes =
            checked_mul(checked_mul(checked_mul(n_, c_, what), inner_, what), 4, what);
        need(args, 0, bytes, 4);
        need(args, 1, bytes, 4);
        need_opt(args, 2, checked_mul(c_, 4, what), 4);
        need_opt(args, 3, checked_mul(c_, 4, what), 4);
    }
    void run(const ExecContext& ctx) const override {
        float* out = ctx.get<float>(operands[0]);
        const float* x = ctx.get<const float>(operands[1]);
        const float* w = optional(ctx, operands, 2);
        const float* b = optional(ctx, operands, 3);
        const VecOps& vec = vec_ops();
        const int64_t cg = c_ / groups_;
        const int64_t size = cg * inner_;
        parallel_for(ctx.threads, n_ * groups_, size * 3, [&](int64_t t0, int64_t t1) {
            for (int64_t t = t0; t < t1; ++t) {
                const float* xs = x + t * size;
                float* ys = out + t * size;
                const double mean = vec.reduce_sum(xs, size) / static_cast<double>(size);
                double var = 0.0;
                for (int64_t i = 0; i < size; ++i) {
                    const double d = static_cast<double>(xs[i]) - mean;
                    var += d * d;
                }
                var /= static_cast<double>(size);
                const double rstd = 1.0 / std::sqrt(var + eps_);
                const int64_t g = t % groups_;
                for (int64_t ci = 0; ci < cg; ++ci) {
                    const int64_t c = g * cg + ci;
                    const double scale = rstd * (w != nullptr ? w[c] : 1.0f);
                    const double shift = (b != nullptr ? b[c] : 0.0f) - mean * scale;
                    vec.affine(xs + ci * inner_, ys + ci * inner_, inner_,
                               static_cast<float>(scale), static_cast<float>(shift));
                }
            }
        });
    }

   private:
    int64_t n_, c_, inner_, groups_;
    double eps_;
};

class ChannelAffineKernel : public Kernel {
   public:
    explicit ChannelAffineKernel(const KernelArgs& args) {
        IntReader r(args);
        n_ = r.dim("N");
        c_ = r.dim("C");
        inner_ = r.dim("inner");
        const std::string what = "channel_affine " + args.name;
        const int64_t bytes =
            checked_mul(checked_mul(checked_mul(n_, c_, what), inner_, what), 4, what);
        need(args, 0, bytes, 4);
        need(args, 1, bytes, 4);
        need(args, 2, checked_mul(c_, 4, what), 4);
        need(args, 3, checked_mul(c_, 4, what), 4);
    }
    void run(const ExecContext& ctx) const override {
        float* out = ctx.get<float>(operands[0]);
        const float* x = ctx.get<const float>(operands[1]);
        const float* scale = ctx.get<const float>(operands[2]);
        const float* shift = ctx.get<const float>(operands[3]);
        const VecOps& vec = vec_ops();
        parallel_for(ctx.threads, n_ * c_, inner_, [&](int64_t p0, int64_t p1) {
            for (int64_t p = p0; p < p1; ++p) {
                const int64_t c = p % c_;
                vec.affine(x + p * inner_, out + p * inner_, inner_, scale[c], shift[c]);
            }
        });
    }

   private:
    int64_t n_, c_, inner_;
};

class SoftmaxKernel : public Kernel {
   public:
    explicit SoftmaxKernel(const KernelArgs& args) {
        IntReader r(args);
        outer_ = r.dim("outer");
        axis_ = r.dim("axis_size");
        inner_ = r.dim("inner");
        log_ = r.next() != 0;
        const std::string what = "softmax " + args.name;
        const int64_t bytes = checked_mul(
            checked_mul(checked_mul(outer_, axis_, what), inner_, what), 4, what);
        need(args, 0, bytes, 4);
        need(args, 1, bytes, 4);
    }

    void run(const ExecContext& ctx) const override {
        float* out = ctx.get<float>(operands[0]);
        const float* x = ctx.get<const float>(operands[1]);
        const VecOps& vec = vec_ops();
        if (inner_ == 1) {
            parallel_for(ctx.threads, outer_, axis_ * 4, [&](int64_t r0, int64_t r1) {
                for (int64_t r = r0; r < r1; ++r) row(vec, x + r * axis_, out + r * axis_);
            });
            return;
        }
        // Strided axis: gather each column into a contiguous scratch row.
        parallel_for(ctx.threads, outer_ * inner_, axis_ * 8, [&](int64_t t0, int64_t t1) {
            std::vector<float> in(static_cast<size_t>(axis_)), res(static_cast<size_t>(axis_));
            for (int64_t t = t0; t < t1; ++t) {
                const int64_t o = t / inner_, i = t % inner_;
                const float* xs = x + o * axis_ * inner_ + i;
                float* ys = out + o * axis_ * inner_ + i;
                for (int64_t a = 0; a < axis_; ++a) in[a] = xs[a * inner_];
                row(vec, in.data(), res.data());
                for (int64_t a = 0; a < axis_; ++a) ys[a * inner_] = res[a];
            }
        });
    }

   private:
    void row(const VecOps& vec, const float* x, float* y) const {
        const float m = vec.reduce_max(x, axis_);
        if (std::isinf(m) && m < 0) {  // every entry -inf: torch gives NaN rows
            for (int64_t i = 0; i < axis_; ++i) y[i] = std::numeric_limits<float>::quiet_NaN();
            return;
        }
        if (log_) {
            // y as scratch for exp(x - m); then y = x - (m + log(sum)).
            const float sum = vec.exp_scaled_sum(x, y, axis_, 1.0f, m);
            vec.affine(x, y, axis_, 1.0f, -(m + std::log(sum)));
        } else {
            const float sum = vec.exp_scaled_sum(x, y, axis_, 1.0f, m);
            vec.scale(y, axis_, 1.0f / sum);
        }
    }

    int64_t outer_, axis_, inner_;
    bool log_;
};

// x / sqrt(mean(x^2) + eps) * weight over rows of `cols` (the mean accumulated in double).
class RmsNormKernel : public Kernel {
   public:
    explicit RmsNormKernel(const KernelArgs& args) {
        IntReader r(args);
        rows_ = r.dim("rows");
        cols_ = r.dim("cols");
        eps_ = r.real(0);
        const std::string what = "rms_norm " + args.name;
        const int64_t bytes = checked_mul(checked_mul(rows_, cols_, what), 4, what);
        need(args, 0, bytes, 4);
        need(args, 1, bytes, 4);
        need_opt(args, 2, checked_mul(cols_, 4, what), 4);
    }
    void run(const ExecContext& ctx) const override {
        float* out = ctx.get<float>(operands[0]);
        const float* x = ctx.get<const float>(operands[1]);
        const float* w = optional(ctx, operands, 2);
        parallel_for(ctx.threads, rows_, cols_ * 3, [&](int64_t r0, int64_t r1) {
            for (int64_t r = r0; r < r1; ++r) {
                const float* xr = x + r * cols_;
                float* yr = out + r * cols_;
                double sq = 0.0;
                for (int64_t c = 0; c < cols_; ++c) sq += static_cast<double>(xr[c]) * xr[c];
                const float inv = static_cast<float>(
                    1.0 / std::sqrt(sq / static_cast<double>(std::max<int64_t>(cols_, 1)) + eps_));
                for (int64_t c = 0; c < cols_; ++c) {
                    const float y = xr[c] * inv;
                    yr[c] = w != nullptr ? y * w[c] : y;
                }
            }
        });
    }

   private:
    int64_t rows_, cols_;
    double eps_;
};

// ONNX LRN over the channels of [N, C, inner]: x / (bias + alpha / size * window sum of x^2)^beta
// with the window [c - lo, c + size - 1 - lo], lo = (size - 1) / 2 (sums in double).
class LrnKernel : public Kernel {
   public:
    explicit LrnKernel(const KernelArgs& args) {
        IntReader r(args);
        n_ = r.dim("N");
        c_ = r.dim("C");
        inner_ = r.dim("inner");
        size_ = r.positive("size");
        alpha_ = r.real(0);
        beta_ = r.real(1);
        bias_ = r.real(2);
        const std::string what = "lrn " + args.name;
        const int64_t bytes =
            checked_mul(checked_mul(checked_mul(n_, c_, what), inner_, what), 4, what);
        need(args, 0, bytes, 4);
        need(args, 1, bytes, 4);
    }
    void run(const ExecContext& ctx) const override {
        float* out = ctx.get<float>(operands[0]);
        const float* x = ctx.get<const float>(operands[1]);
        const int64_t lo = (size_ - 1) / 2, hi = size_ - 1 - lo;
        const double scale = alpha_ / static_cast<double>(size_);
        parallel_for(ctx.threads, n_ * c_, inner_ * size_, [&](int64_t t0, int64_t t1) {
            for (int64_t t = t0; t < t1; ++t) {
                const int64_t n = t / c_, c = t % c_;
                const int64_t first = std::max<int64_t>(0, c - lo);
                const int64_t last = std::min<int64_t>(c_ - 1, c + hi);
                const float* xn = x + n * c_ * inner_;
                for (int64_t i = 0; i < inner_; ++i) {
                    double sq = 0.0;
                    for (int64_t k = first; k <= last; ++k) {
                        const double v = xn[k * inner_ + i];
                        sq += v * v;
                    }
                    out[t * inner_ + i] = static_cast<float>(
                        xn[c * inner_ + i] / std::pow(bias_ + scale * sq, beta_));
                }
            }
        });
    }

   private:
    int64_t n_, c_, inner_, size_;
    double alpha_, beta_, bias_;
};

GRAPHOPT_RT_KERNEL("rms_norm", RmsNormKernel,
                   "out, x, weight?",
                   "rows:dim, cols:dim",
                   "eps");
GRAPHOPT_RT_KERNEL("lrn", LrnKernel,
                   "out, x",  // out must not alias x (a window reads neighbours)
                   "N:dim, C:dim, inner:dim, size:positive",
                   "alpha, beta, bias");
GRAPHOPT_RT_KERNEL("layer_norm", LayerNormKernel,
                   "out, x, weight?, bias?",
                   "rows:dim, cols:dim",
                   "eps");
GRAPHOPT_RT_KERNEL("group_norm", GroupNormKernel,
                   "out, x, weight?, bias?",
                   "N:dim, C:dim, inner:dim, groups:positive",
                   "eps");
GRAPHOPT_RT_KERNEL("channel_affine", ChannelAffineKernel,
                   "out, x, scale, shift",
                   "N:dim, C:dim, inner:dim",
                   "");
GRAPHOPT_RT_KERNEL("softmax", SoftmaxKernel,
                   "out, x",
                   "outer:dim, axis_size:dim, inner:dim, log:flag",
                   "");

}  // namespace
}  // namespace rt
}  // namespace graphopt
