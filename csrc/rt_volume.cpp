// Volumetric (3-D) pooling and convolutions, float32, direct loops: coverage for the video and
// medical-imaging layers the 2-D kernels (rt_pool.cpp, rt_conv.cpp) do not take. Semantics
// follow torch's max_pool3d / avg_pool3d / conv3d / conv_transpose3d.
//
// "pool3d"            operands: out [planes, Do, Ho, Wo], x [planes, D, H, W]
//                     ints: avg, planes, D, H, W, Do, Ho, Wo, kernel[3], stride[3], pad[3],
//                           dilation[3], count_include_pad, divisor_override (0: none)
//                     max ignores padding and propagates NaN; avg clips the last window to the
//                     padded input and divides by the window inside the padded input
//                     (count_include_pad) or inside the input (dilation must be 1)
// "conv3d"            operands: out [N, Co, Do, Ho, Wo], x [N, C, D, H, W],
//                     w [Co, C / groups, kd, kh, kw], bias? [Co]
// "conv_transpose3d"  operands: out [N, Co, Do, Ho, Wo], x [N, C, D, H, W],
//                     w [C, Co / groups, kd, kh, kw], bias? [Co]
//                     both: ints N, C, D, H, W, Co, kernel[3], stride[3], pad[3], dilation[3],
//                     groups, Do, Ho, Wo (sums in float32, taps in weight order)
#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <string>

#include "rt_parallel.h"
#include "rt_plan.h"

namespace graphopt {
namespace rt {
namespace {

using Dims3 = std::array<int64_t, 3>;

Dims3 read3(IntReader& r, const char* what, bool positive) {
    Dims3 d{};
    for (auto& v : d) v = positive ? r.positive(what) : r.dim(what);
    return d;
}

int64_t volume(const Dims3& d, const std::string& what) {
    return checked_mul(checked_mul(d[0], d[1], what), d[2], what);
}

// (out - 1) * stride + (k - 1) * dil + pad + in stays in int64 on every axis.
void check_reach(const Dims3& out, const Dims3& stride, const Dims3& k, const Dims3& dil,
                 const Dims3& pad, const Dims3& in, const std::string& what) {
    for (int a = 0; a < 3; ++a) {
        const int64_t reach = checked_add(
            checked_mul(std::max<int64_t>(out[a] - 1, 0), stride[a], what),
            checked_mul(k[a] - 1, dil[a], what), what);
        checked_add(checked_add(reach, pad[a], what), checked_add(in[a], pad[a], what), what);
    }
}

class Pool3dKernel : public Kernel {
   public:
    explicit Pool3dKernel(const KernelArgs& args) {
        IntReader r(args);
        const std::string what = "pool3d " + args.name;
        avg_ = r.in(0, 1, "avg") == 1;
        planes_ = r.dim("planes");
        in_ = read3(r, "input dim", false);
        out_ = read3(r, "output dim", false);
        k_ = read3(r, "kernel", true);
        stride_ = read3(r, "stride", true);
        pad_ = read3(r, "pad", false);
        dil_ = read3(r, "dilation", true);
        count_include_pad_ = r.next() != 0;
        divisor_ = r.dim("divisor_override");
        if (avg_ && (dil_[0] != 1 || dil_[1] != 1 || dil_[2] != 1)) {
            throw PlanError(what + ": average pooling has no dilation");
        }
        check_reach(out_, stride_, k_, dil_, pad_, in_, what);
        need(args, 0, checked_mul(checked_mul(planes_, volume(out_, what), what), 4, what), 4);
        need(args, 1, checked_mul(checked_mul(planes_, volume(in_, what), what), 4, what), 4);
    }

    void run(const ExecContext& ctx) const override {
        float* out = ctx.get<float>(operands[0]);
        const float* x = ctx.get<const float>(operands[1]);
        const int64_t per_plane_out = out_[0] * out_[1] * out_[2];
        const int64_t per_plane_in = in_[0] * in_[1] * in_[2];
        parallel_for(ctx.threads, planes_ * out_[0], out_[1] * out_[2] * k_[0] * k_[1] * k_[2],
                     [&](int64_t t0, int64_t t1) {
            for (int64_t t = t0; t < t1; ++t) {
                const int64_t p = t / out_[0], od = t % out_[0];
                const float* xp = x + p * per_plane_in;
                float* yp = out + p * per_plane_out + od * out_[1] * out_[2];
                for (int64_t oh = 0; oh < out_[1]; ++oh) {
                    for (int64_t ow = 0; ow < out_[2]; ++ow) {
                        const Dims3 o{od, oh, ow};
                        yp[oh * out_[2] + ow] = avg_ ? average(xp, o) : maximum(xp, o);
                    }
                }
            }
        });
    }

   private:
    float maximum(const float* xp, const Dims3& o) const {
        float best = -std::numeric_limits<float>::infinity();
        for (int64_t a = 0; a < k_[0]; ++a) {
            const int64_t id = o[0] * stride_[0] - pad_[0] + a * dil_[0];
            if (id < 0 || id >= in_[0]) continue;
            for (int64_t b = 0; b < k_[1]; ++b) {
                const int64_t ih = o[1] * stride_[1] - pad_[1] + b * dil_[1];
                if (ih < 0 || ih >= in_[1]) continue;
                for (int64_t c = 0; c < k_[2]; ++c) {
                    const int64_t iw = o[2] * stride_[2] - pad_[2] + c * dil_[2];
                    if (iw < 0 || iw >= in_[2]) continue;
                    const float v = xp[(id * in_[1] + ih) * in_[2] + iw];
                    if (std::isnan(v)) return v;
                    best = std::max(best, v);
                }
            }
        }
        return best;
    }

    float average(const float* xp, const Dims3& o) const {
        Dims3 lo{}, hi{};
        int64_t pool_size = 1, inside = 1;
        for (int a = 0; a < 3; ++a) {
            lo[a] = o[a] * stride_[a] - pad_[a];
            hi[a] = std::min(lo[a] + k_[a], in_[a] + pad_[a]);
            pool_size *= hi[a] - lo[a];
            lo[a] = std::max<int64_t>(lo[a], 0);
            hi[a] = std::min(hi[a], in_[a]);
            inside *= std::max<int64_t>(hi[a] - lo[a], 0);
        }
        float sum = 0.0f;
        for (int64_t id = lo[0]; id < hi[0]; ++id) {
            for (int64_t ih = lo[1]; ih < hi[1]; ++ih) {
                for (int64_t iw = lo[2]; iw < hi[2]; ++iw) {
                    sum += xp[(id * in_[1] + ih) * in_[2] + iw];
                }
            }
        }
        const int64_t divide = divisor_ != 0 ? divisor_ : count_include_pad_ ? pool_size : inside;
        return sum / static_cast<float>(divide);
    }

    bool avg_ = false, count_include_pad_ = true;
    int64_t planes_ = 0, divisor_ = 0;
    Dims3 in_{}, out_{}, k_{}, stride_{}, pad_{}, dil_{};
};

// The shared shape of conv3d / conv_transpose3d.
struct Conv3dShape {
    int64_t n = 0, c = 0, co = 0, groups = 1;
    Dims3 in{}, out{}, k{}, stride{}, pad{}, dil{};

    Conv3dShape(const KernelArgs& args, const std::string& what, bool transpose) {
        IntReader r(args);
        n = r.dim("N");
        c = r.dim("C");
        in = read3(r, "input dim", false);
        co = r.dim("Co");
        k = read3(r, "kernel", true);
        stride = read3(r, "stride", true);
        pad = read3(r, "pad", false);
        dil = read3(r, "dilation", true);
        groups = r.positive("groups");
        out = read3(r, "output dim", false);
        if (c % groups != 0 || co % groups != 0) {
            throw PlanError(what + ": groups must divide both channel counts");
        }
        check_reach(transpose ? in : out, stride, k, dil, pad, transpose ? out : in, what);
    }
};

class Conv3dKernel : public Kernel {
   public:
    Conv3dKernel(const KernelArgs& args, bool transpose)
        : transpose_(transpose),
          s_(args, name_of(args, transpose), transpose) {
        const std::string what = name_of(args, transpose);
        const int64_t kvol = volume(s_.k, what);
        need(args, 0, checked_mul(checked_mul(checked_mul(s_.n, s_.co, what),
                                              volume(s_.out, what), what), 4, what), 4);
        need(args, 1, checked_mul(checked_mul(checked_mul(s_.n, s_.c, what),
                                              volume(s_.in, what), what), 4, what), 4);
        const int64_t w_rows = transpose ? s_.c : s_.co;
        const int64_t w_cols = (transpose ? s_.co : s_.c) / s_.groups;
        need(args, 2, checked_mul(checked_mul(checked_mul(w_rows, w_cols, what), kvol, what), 4,
                                  what), 4);
        has_bias_ = need_opt(args, 3, checked_mul(s_.co, 4, what), 4);
    }

    void run(const ExecContext& ctx) const override {
        float* out = ctx.get<float>(operands[0]);
        const float* x = ctx.get<const float>(operands[1]);
        const float* w = ctx.get<const float>(operands[2]);
        const float* bias = has_bias_ ? ctx.get<const float>(operands[3]) : nullptr;
        const int64_t out_vol = s_.out[0] * s_.out[1] * s_.out[2];
        const int64_t work = out_vol * (s_.c / s_.groups) * s_.k[0] * s_.k[1] * s_.k[2];
        parallel_for(ctx.threads, s_.n * s_.co, work, [&](int64_t t0, int64_t t1) {
            for (int64_t t = t0; t < t1; ++t) {
                const int64_t b = t / s_.co, co = t % s_.co;
                float* y = out + t * out_vol;
                const float start = bias != nullptr ? bias[co] : 0.0f;
                for (int64_t o = 0; o < out_vol; ++o) {
                    const Dims3 p{o / (s_.out[1] * s_.out[2]), (o / s_.out[2]) % s_.out[1],
                                  o % s_.out[2]};
                    y[o] = start + (transpose_ ? gather_transposed(x, w, b, co, p)
                                               : gather(x, w, b, co, p));
                }
            }
        });
    }

   private:
    static std::string name_of(const KernelArgs& args, bool transpose) {
        return (transpose ? "conv_transpose3d " : "conv3d ") + args.name;
    }

    int64_t x_at(int64_t b, int64_t ci, const Dims3& i) const {
        return (((b * s_.c + ci) * s_.in[0] + i[0]) * s_.in[1] + i[1]) * s_.in[2] + i[2];
    }

    // y[b, co, p] = sum over the group's input channels and taps of x * w.
    float gather(const float* x, const float* w, int64_t b, int64_t co, const Dims3& p) const {
        const int64_t cg = s_.c / s_.groups, g = co / (s_.co / s_.groups);
        float acc = 0.0f;
        for (int64_t cl = 0; cl < cg; ++cl) {
            const float* wk = w + (co * cg + cl) * s_.k[0] * s_.k[1] * s_.k[2];
            for (int64_t a = 0; a < s_.k[0]; ++a) {
                const int64_t id = p[0] * s_.stride[0] - s_.pad[0] + a * s_.dil[0];
                if (id < 0 || id >= s_.in[0]) continue;
                for (int64_t bb = 0; bb < s_.k[1]; ++bb) {
                    const int64_t ih = p[1] * s_.stride[1] - s_.pad[1] + bb * s_.dil[1];
                    if (ih < 0 || ih >= s_.in[1]) continue;
                    for (int64_t c = 0; c < s_.k[2]; ++c) {
                        const int64_t iw = p[2] * s_.stride[2] - s_.pad[2] + c * s_.dil[2];
                        if (iw < 0 || iw >= s_.in[2]) continue;
                        acc += x[x_at(b, g * cg + cl, {id, ih, iw})] *
                               wk[(a * s_.k[1] + bb) * s_.k[2] + c];
                    }
                }
            }
        }
        return acc;
    }

    // Input position i along an axis reaches output p through tap k when
    // i * stride - pad + k * dil == p.
    bool source(int a, int64_t p, int64_t k, int64_t& i) const {
        const int64_t t = p + s_.pad[a] - k * s_.dil[a];
        if (t < 0 || t % s_.stride[a] != 0) return false;
        i = t / s_.stride[a];
        return i < s_.in[a];
    }

    float gather_transposed(const float* x, const float* w, int64_t b, int64_t co,
                            const Dims3& p) const {
        const int64_t cg_in = s_.c / s_.groups, cg_out = s_.co / s_.groups;
        const int64_t g = co / cg_out, col = co % cg_out;
        float acc = 0.0f;
        for (int64_t cl = 0; cl < cg_in; ++cl) {
            const int64_t ci = g * cg_in + cl;
            const float* wk = w + (ci * cg_out + col) * s_.k[0] * s_.k[1] * s_.k[2];
            Dims3 i{};
            for (int64_t a = 0; a < s_.k[0]; ++a) {
                if (!source(0, p[0], a, i[0])) continue;
                for (int64_t bb = 0; bb < s_.k[1]; ++bb) {
                    if (!source(1, p[1], bb, i[1])) continue;
                    for (int64_t c = 0; c < s_.k[2]; ++c) {
                        if (!source(2, p[2], c, i[2])) continue;
                        acc += x[x_at(b, ci, i)] * wk[(a * s_.k[1] + bb) * s_.k[2] + c];
                    }
                }
            }
        }
        return acc;
    }

    bool transpose_ = false, has_bias_ = false;
    Conv3dShape s_;
};

class Conv3dForward : public Conv3dKernel {
   public:
    explicit Conv3dForward(const KernelArgs& args) : Conv3dKernel(args, false) {}
};

class Conv3dTransposed : public Conv3dKernel {
   public:
    explicit Conv3dTransposed(const KernelArgs& args) : Conv3dKernel(args, true) {}
};

constexpr const char* kConv3dInts =
    "N:dim, C:dim, D:dim, H:dim, W:dim, Co:dim, kernel_d:positive, kernel_h:positive, "
    "kernel_w:positive, stride_d:positive, stride_h:positive, stride_w:positive, pad_d:dim, "
    "pad_h:dim, pad_w:dim, dilation_d:positive, dilation_h:positive, dilation_w:positive, "
    "groups:positive, Do:dim, Ho:dim, Wo:dim";

GRAPHOPT_RT_KERNEL("pool3d", Pool3dKernel,
                   "out, x",
                   "avg:flag, planes:dim, D:dim, H:dim, W:dim, Do:dim, Ho:dim, Wo:dim, "
                   "kernel_d:positive, kernel_h:positive, kernel_w:positive, stride_d:positive, "
                   "stride_h:positive, stride_w:positive, pad_d:dim, pad_h:dim, pad_w:dim, "
                   "dilation_d:positive, dilation_h:positive, dilation_w:positive, "
                   "count_include_pad:flag, divisor_override:dim",
                   "");
GRAPHOPT_RT_KERNEL("conv3d", Conv3dForward, "out, x, w, bias?", kConv3dInts, "");
GRAPHOPT_RT_KERNEL("conv_transpose3d", Conv3dTransposed, "out, x, w, bias?", kConv3dInts, "");

}  // namespace
}  // namespace rt
}  // namespace graphopt
