// Pooling and resizing over the two trailing dims of [planes, H, W] (1-D ops use H = 1).
//
// "pool2d"           operands: out, x
//                    ints: mode (0 max, 1 avg), planes, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw,
//                          dh, dw, count_include_pad, divisor_override (0: none)
// "adaptive_pool2d"  operands: out, x;  ints: mode (0 max, 1 avg), planes, H, W, Ho, Wo
//                    window i covers [floor(i * H / Ho), ceil((i + 1) * H / Ho))
// "resize2d"         operands: out, x;  ints: mode (0 nearest, 1 linear, 2 nearest-exact),
//                    planes, H, W, Ho, Wo, align_corners;  floats: scale_h, scale_w
//                    (source-index ratios, computed by the planner as torch does)
//
// Semantics follow torch: max pooling ignores padding and propagates NaN; average pooling with
// ceil_mode clips the last window to the padded input and divides by the window size inside
// the padded input (count_include_pad) or inside the input.
#include <algorithm>
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

// Checks that the window arithmetic of one axis, (out - 1) * stride + (k - 1) * dil + pad + in,
// fits in int64 (the kernels compute positions of that size).
void window_reach(int64_t out, int64_t stride, int64_t k, int64_t dil, int64_t pad, int64_t in,
                  const std::string& what) {
    const int64_t reach = checked_add(checked_mul(std::max<int64_t>(out - 1, 0), stride, what),
                                      checked_mul(k - 1, dil, what), what);
    checked_add(checked_add(reach, pad, what), checked_add(in, pad, what), what);
}

// max that propagates NaN, as torch's max pooling does (and VecOps::max_strided).
inline float max_nan(float a, float b) { return (b > a || b != b) ? b : a; }

class PoolKernel : public Kernel {
   public:
    explicit PoolKernel(const KernelArgs& args) {
        IntReader r(args);
        avg_ = r.in(0, 1, "mode") == 1;
        planes_ = r.dim("planes"); h_ = r.dim("H"); w_ = r.dim("W");
        ho_ = r.dim("Ho"); wo_ = r.dim("Wo");
        kh_ = r.positive("kernel_h"); kw_ = r.positive("kernel_w");
        sh_ = r.positive("stride_h"); sw_ = r.positive("stride_w");
        ph_ = r.dim("pad_h"); pw_ = r.dim("pad_w");
        dh_ = r.positive("dilation_h"); dw_ = r.positive("dilation_w");
        count_include_pad_ = r.next() != 0;
        divisor_ = r.dim("divisor_override");
        const std::string what = "pool2d " + args.name;
        // Window positions: (Ho - 1) * sh + (kh - 1) * dh (and the same across) stay in int64.
        window_reach(ho_, sh_, kh_, dh_, ph_, h_, what);
        window_reach(wo_, sw_, kw_, dw_, pw_, w_, what);
        // Small planes (a CNN's late layers) spend more in per-row calls than in maxing.
        pair_pool_ = kh_ == 2 && kw_ == 2 && sh_ == 2 && sw_ == 2 && ph_ == 0 && pw_ == 0 &&
                     dh_ == 1 && dw_ == 1 && 2 * ho_ <= h_ && 2 * wo_ <= w_;
        need(args, 0, checked_mul(checked_mul(planes_, checked_mul(ho_, wo_, what), what), 4,
                                  what), 4);
        need(args, 1, checked_mul(checked_mul(planes_, checked_mul(h_, w_, what), what), 4,
                                  what), 4);
    }

    void run(const ExecContext& ctx) const override {
        float* out = ctx.get<float>(operands[0]);
        const float* x = ctx.get<const float>(operands[1]);
        parallel_for(ctx.threads, planes_, ho_ * wo_ * kh_ * kw_, [&](int64_t p0, int64_t p1) {
            for (int64_t p = p0; p < p1; ++p) {
                const float* xp = x + p * h_ * w_;
                float* yp = out + p * ho_ * wo_;
                if (avg_) {
                    for (int64_t oy = 0; oy < ho_; ++oy) {
                        for (int64_t ox = 0; ox < wo_; ++ox) {
                            yp[oy * wo_ + ox] = average(xp, oy, ox);
                        }
                    }
                } else {
                    max_plane(xp, yp);
                }
            }
        });
    }

   private:
    // Row at a time: each (ky, kx) tap maxes a strided run of an input row into the output
    // row; taps that fall in the padding are skipped (padding never wins a max).
    void max_plane(const float* xp, float* yp) const {
        if (pair_pool_) {  // 2x2, stride 2, unpadded: each output the max of a 2x2 block
            for (int64_t oy = 0; oy < ho_; ++oy) {
                const float* r0 = xp + 2 * oy * w_;
                const float* r1 = r0 + w_;
                for (int64_t ox = 0; ox < wo_; ++ox) {
                    yp[oy * wo_ + ox] = max_nan(max_nan(r0[2 * ox], r0[2 * ox + 1]),
                                                max_nan(r1[2 * ox], r1[2 * ox + 1]));
                }
            }
            return;
        }
        const VecOps& vec = vec_ops();
        for (int64_t oy = 0; oy < ho_; ++oy) {
            float* yr = yp + oy * wo_;
            std::fill(yr, yr + wo_, -std::numeric_limits<float>::infinity());
            for (int64_t ky = 0; ky < kh_; ++ky) {
                const int64_t iy = oy * sh_ - ph_ + ky * dh_;
                if (iy < 0 || iy >= h_) continue;
                const float* xr = xp + iy * w_;
                for (int64_t kx = 0; kx < kw_; ++kx) {
                    const int64_t off = kx * dw_ - pw_;
                    const int64_t lo = std::min(wo_, off >= 0 ? 0 : (-off + sw_ - 1) / sw_);
                    const int64_t hi =
                        w_ - 1 - off >= 0 ? std::min(wo_, (w_ - 1 - off) / sw_ + 1) : 0;
                    if (hi > lo) vec.max_strided(yr + lo, xr + lo * sw_ + off, sw_, hi - lo);
                }
            }
        }
    }

    float average(const float* xp, int64_t oy, int64_t ox) const {
        int64_t y0 = oy * sh_ - ph_, x0 = ox * sw_ - pw_;
        int64_t y1 = std::min(y0 + kh_, h_ + ph_), x1 = std::min(x0 + kw_, w_ + pw_);
        const int64_t pool_size = (y1 - y0) * (x1 - x0);
        y0 = std::max<int64_t>(y0, 0);
        x0 = std::max<int64_t>(x0, 0);
        y1 = std::min(y1, h_);
        x1 = std::min(x1, w_);
        float sum = 0.0f;
        for (int64_t iy = y0; iy < y1; ++iy) {
            for (int64_t ix = x0; ix < x1; ++ix) sum += xp[iy * w_ + ix];
        }
        int64_t divide = divisor_ != 0 ? divisor_
                         : count_include_pad_ ? pool_size
                                              : (y1 - y0) * (x1 - x0);
        return sum / static_cast<float>(divide);
    }

    bool avg_ = false, count_include_pad_ = true, pair_pool_ = false;
    int64_t planes_, h_, w_, ho_, wo_, kh_, kw_, sh_, sw_, ph_, pw_, dh_, dw_, divisor_;
};

class AdaptivePoolKernel : public Kernel {
   public:
    explicit AdaptivePoolKernel(const KernelArgs& args) {
        IntReader r(args);
        avg_ = r.in(0, 1, "mode") == 1;
        planes_ = r.dim("planes"); h_ = r.dim("H"); w_ = r.dim("W");
        ho_ = r.dim("Ho"); wo_ = r.dim("Wo");
        const std::string what = "adaptive_pool2d " + args.name;
        checked_mul(ho_ + 1, h_, what);  // window bounds (oy + 1) * H
        checked_mul(wo_ + 1, w_, what);
        need(args, 0, checked_mul(checked_mul(planes_, checked_mul(ho_, wo_, what), what), 4,
                                  what), 4);
        need(args, 1, checked_mul(checked_mul(planes_, checked_mul(h_, w_, what), what), 4,
                                  what), 4);
    }

    void run(const ExecContext& ctx) const override {
        float* out = ctx.get<float>(operands[0]);
        const float* x = ctx.get<const float>(operands[1]);
        parallel_for(ctx.threads, planes_, h_ * w_, [&](int64_t p0, int64_t p1) {
            for (int64_t p = p0; p < p1; ++p) {
                const float* xp = x + p * h_ * w_;
                float* yp = out + p * ho_ * wo_;
                for (int64_t oy = 0; oy < ho_; ++oy) {
                    const int64_t y0 = oy * h_ / ho_, y1 = ((oy + 1) * h_ + ho_ - 1) / ho_;
                    for (int64_t ox = 0; ox < wo_; ++ox) {
                        const int64_t x0 = ox * w_ / wo_, x1 = ((ox + 1) * w_ + wo_ - 1) / wo_;
                        float acc = avg_ ? 0.0f : -std::numeric_limits<float>::infinity();
                        for (int64_t iy = y0; iy < y1; ++iy) {
                            const float* row = xp + iy * w_;
                            for (int64_t ix = x0; ix < x1; ++ix) {
                                const float v = row[ix];
                                if (avg_) {
                                    acc += v;
                                } else if (v > acc || std::isnan(v)) {
                                    acc = v;
                                }
                            }
                        }
                        yp[oy * wo_ + ox] =
                            avg_ ? acc / static_cast<float>((y1 - y0) * (x1 - x0)) : acc;
                    }
                }
            }
        });
    }

   private:
    bool avg_ = false;
    int64_t planes_, h_, w_, ho_, wo_;
};

class ResizeKernel : public Kernel {
   public:
    explicit ResizeKernel(const KernelArgs& args) {
        IntReader r(args);
        mode_ = r.in(0, 2, "mode");
        planes_ = r.dim("planes"); h_ = r.dim("H"); w_ = r.dim("W");
        ho_ = r.dim("Ho"); wo_ = r.dim("Wo");
        align_corners_ = r.next() != 0;
        scale_h_ = static_cast<float>(r.finite(0, "scale_h"));
        scale_w_ = static_cast<float>(r.finite(1, "scale_w"));
        const std::string what = "resize2d " + args.name;
        if (planes_ > 0 && ((ho_ > 0 && h_ == 0) || (wo_ > 0 && w_ == 0))) {
            throw PlanError(what + ": cannot resize an empty input to a non-empty output");
        }
        need(args, 0, checked_mul(checked_mul(planes_, checked_mul(ho_, wo_, what), what), 4,
                                  what), 4);
        need(args, 1, checked_mul(checked_mul(planes_, checked_mul(h_, w_, what), what), 4,
                                  what), 4);
        if (mode_ == 1) {
            linear_index(h_, ho_, scale_h_, &y0_, &y1_, &ly_);
            linear_index(w_, wo_, scale_w_, &x0_, &x1_, &lx_);
        } else {
            nearest_index(h_, ho_, scale_h_, &y0_);
            nearest_index(w_, wo_, scale_w_, &x0_);
        }
    }

    void run(const ExecContext& ctx) const override {
        float* out = ctx.get<float>(operands[0]);
        const float* x = ctx.get<const float>(operands[1]);
        parallel_for(ctx.threads, planes_, ho_ * wo_ * 4, [&](int64_t p0, int64_t p1) {
            for (int64_t p = p0; p < p1; ++p) {
                const float* xp = x + p * h_ * w_;
                float* yp = out + p * ho_ * wo_;
                for (int64_t oy = 0; oy < ho_; ++oy) {
                    for (int64_t ox = 0; ox < wo_; ++ox) {
                        if (mode_ == 1) {
                            const float* r0 = xp + y0_[oy] * w_;
                            const float* r1 = xp + y1_[oy] * w_;
                            const float wy1 = ly_[oy], wy0 = 1.0f - wy1;
                            const float wx1 = lx_[ox], wx0 = 1.0f - wx1;
                            yp[oy * wo_ + ox] = wy0 * (wx0 * r0[x0_[ox]] + wx1 * r0[x1_[ox]]) +
                                                wy1 * (wx0 * r1[x0_[ox]] + wx1 * r1[x1_[ox]]);
                        } else {
                            yp[oy * wo_ + ox] = xp[y0_[oy] * w_ + x0_[ox]];
                        }
                    }
                }
            }
        });
    }

   private:
    void linear_index(int64_t in, int64_t outn, float scale, std::vector<int64_t>* i0,
                      std::vector<int64_t>* i1, std::vector<float>* lambda) const {
        for (int64_t o = 0; o < outn; ++o) {
            float src = align_corners_ ? scale * static_cast<float>(o)
                                       : scale * (static_cast<float>(o) + 0.5f) - 0.5f;
            // Clamped before the conversion: a float out of int64's range is UB to convert.
            src = std::min(std::max(src, 0.0f), static_cast<float>(std::max<int64_t>(in - 1, 0)));
            const int64_t a = std::min<int64_t>(static_cast<int64_t>(src), in - 1);
            i0->push_back(a);
            i1->push_back(a + (a < in - 1 ? 1 : 0));
            lambda->push_back(std::min(std::max(src - static_cast<float>(a), 0.0f), 1.0f));
        }
    }

    void nearest_index(int64_t in, int64_t outn, float scale, std::vector<int64_t>* idx) const {
        for (int64_t o = 0; o < outn; ++o) {
            const float offset = mode_ == 2 ? 0.5f : 0.0f;
            float pos = std::floor((static_cast<float>(o) + offset) * scale);
            pos = std::min(std::max(pos, 0.0f), static_cast<float>(std::max<int64_t>(in - 1, 0)));
            idx->push_back(std::min(static_cast<int64_t>(pos), in - 1));
        }
    }

    int64_t mode_, planes_, h_, w_, ho_, wo_;
    bool align_corners_ = false;
    float scale_h_ = 1.0f, scale_w_ = 1.0f;
    std::vector<int64_t> y0_, y1_, x0_, x1_;
    std::vector<float> ly_, lx_;
};

GRAPHOPT_RT_KERNEL("pool2d", PoolKernel,
                   "out, x",
                   "avg:flag, planes:dim, H:dim, W:dim, Ho:dim, Wo:dim, kernel_h:positive, "
                   "kernel_w:positive, stride_h:positive, stride_w:positive, pad_h:dim, "
                   "pad_w:dim, dilation_h:positive, dilation_w:positive, count_include_pad:flag, "
                   "divisor_override:dim",
                   "");
GRAPHOPT_RT_KERNEL("adaptive_pool2d", AdaptivePoolKernel,
                   "out, x",
                   "avg:flag, planes:dim, H:dim, W:dim, Ho:dim, Wo:dim",
                   "");
GRAPHOPT_RT_KERNEL("resize2d", ResizeKernel,
                   "out, x",
                   "mode:mode, planes:dim, H:dim, W:dim, Ho:dim, Wo:dim, align_corners:flag",
                   "scale_h, scale_w");

}  // namespace
}  // namespace rt
}  // namespace graphopt
