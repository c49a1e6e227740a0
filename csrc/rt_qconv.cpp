// Kernel "qconv2d": static int8 NCHW convolution on the int8 GEMM (rt_qgemm.h).
//
//   acc[n, co, p] = sum_{ci, i, j} (x_q[n, ci, ...] - x_zp) * w_q[co, ci, i, j]   (exact int32)
//   y = act(acc * (x_scale * w_scale[co]) + bias[co]);  out = y (f32) or requantized u8
//
// Per image and group, the input is copied channels last with the zero point as the padding
// value (so padded taps contribute (x_zp - x_zp) * w = 0), the u8 im2col matrix
// cols[P = Ho * Wo, K = kh * kw * C/g] is gathered from it in runs of kw * C/g bytes (K in
// (i, j, ci) order; the weight is packed in the same order at plan build), then cols @ W_g^T runs on the int8 GEMM, whose epilogue writes C[p, co] transposed straight
// into the NCHW output (column stride P). A 1x1, stride-1, unpadded convolution reads x as the
// GEMM operand directly ([P, C] with column stride H * W): no im2col. A depthwise convolution
// (groups == C == Co) runs direct instead (rt_qconv_depthwise.cpp).
//
// Operands: out [N, Co, Ho, Wo] (f32, or u8 with y_scale), x u8 [N, C, H, W] (contiguous),
//           w_q i8 [Co, C/g, kh, kw] (a plan constant, contiguous), w_scale f32 [Co],
//           bias f32 [Co]?, (absent: residual), x_scale f32 [], x_zp u8 []?, y_scale f32 []?,
//           y_zp u8 []?     (the slots of "qlinear")
// Ints:     N, C, H, W, Co, kh, kw, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w,
//           groups, Ho, Wo, act
// Floats:   act_p0, act_p1
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "rt_pack_cache.h"
#include "rt_parallel.h"
#include "rt_plan.h"
#include "rt_qconv.h"
#include "rt_qgemm.h"

namespace graphopt {
namespace rt {
namespace {

struct ConvShape {
    int64_t n, c, h, w, co, kh, kw, sh, sw, ph, pw, dh, dw, groups, ho, wo;
};

// The rows / columns every window of the output reads, counted from the first window's
// corner: (out - 1) * stride + (k - 1) * dil + 1.
int64_t window_span(int64_t out, int64_t stride, int64_t k, int64_t dil) {
    return out > 0 ? (out - 1) * stride + (k - 1) * dil + 1 : 0;
}

// The group's channels of one image, channels last: xpad[r, c, ci] = x[c0 + ci, r - ph, c - pw]
// for r < hp, c < wp (from the first window's corner), the zero point wherever that falls
// outside the input (any padding; negative padding crops). Windows then read without bounds
// checks, padded taps contribute (x_zp - x_zp) * w = 0, and the cg channels of one pixel are
// contiguous, so one window row (kw pixels) is one run of kw * cg bytes when dilation is 1.
void pad_planes_hwc_u8(const ConvShape& s, const uint8_t* x, int64_t c0, int64_t cg,
                       uint8_t zp, int64_t hp, int64_t wp, uint8_t* xpad) {
    std::memset(xpad, zp, static_cast<size_t>(hp * wp * cg));
    const int64_t c_lo = std::max<int64_t>(0, s.pw), c_hi = std::min(wp, s.pw + s.w);
    const int64_t r_lo = std::max<int64_t>(0, s.ph), r_hi = std::min(hp, s.ph + s.h);
    const int64_t h = s.h, w = s.w, ph = s.ph, pw = s.pw;  // (locals: byte stores alias)
    for (int64_t r = r_lo; r < r_hi; ++r) {
        for (int64_t c = c_lo; c < c_hi; ++c) {
            const uint8_t* src = x + c0 * h * w + (r - ph) * w + (c - pw);
            uint8_t* dst = xpad + (r * wp + c) * cg;
            for (int64_t ci = 0; ci < cg; ++ci) dst[ci] = src[ci * h * w];
        }
    }
}

// im2col rows [oh0, oh1) from the channels-last planes: row p = (oh, ow) holds, for each
// window tap (i, j), the cg channels of pixel (oh * sh + i * dh, ow * sw + j * dw): the K order
// (i, j, ci) the weight is packed in. Arguments by value: fields read through a pointer would
// be reloaded after each byte store (char stores may alias anything).
void im2col_rows_u8(const uint8_t* xpad, uint8_t* cols, int64_t oh0, int64_t oh1, int64_t wo,
                    int64_t cg, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t dh,
                    int64_t dw, int64_t wp) {
    const int64_t k = cg * kh * kw;
    const auto run = static_cast<size_t>(dw == 1 ? kw * cg : cg);
    for (int64_t oh = oh0; oh < oh1; ++oh) {
        for (int64_t ow = 0; ow < wo; ++ow) {
            uint8_t* row = cols + (oh * wo + ow) * k;
            for (int64_t i = 0; i < kh; ++i) {
                const uint8_t* src = xpad + ((oh * sh + i * dh) * wp + ow * sw) * cg;
                if (dw == 1) {
                    std::memcpy(row, src, run);
                    row += run;
                    continue;
                }
                for (int64_t j = 0; j < kw; ++j, row += cg) std::memcpy(row, src + j * dw * cg, run);
            }
        }
    }
}

void im2col_u8(const ConvShape& s, const uint8_t* xpad, int64_t cg, int64_t wp, uint8_t* cols,
               int threads) {
    parallel_for(threads, s.ho, s.wo * cg * s.kh * s.kw, [&](int64_t oh0, int64_t oh1) {
        im2col_rows_u8(xpad, cols, oh0, oh1, s.wo, cg, s.kh, s.kw, s.sh, s.sw, s.dh, s.dw, wp);
    });
}

// One group's weight [cog, cg, kh, kw] with K reordered to (i, j, ci), im2col_u8's order.
std::vector<int8_t> weight_hwc(const int8_t* w, int64_t cog, int64_t cg, int64_t kh,
                               int64_t kw) {
    std::vector<int8_t> out(static_cast<size_t>(cog * cg * kh * kw));
    for (int64_t co = 0; co < cog; ++co) {
        for (int64_t ci = 0; ci < cg; ++ci) {
            for (int64_t t = 0; t < kh * kw; ++t) {
                out[static_cast<size_t>((co * kh * kw + t) * cg + ci)] =
                    w[(co * cg + ci) * kh * kw + t];
            }
        }
    }
    return out;
}

class QConvKernel : public Kernel {
   public:
    explicit QConvKernel(const KernelArgs& args) : name_(args.name) {
        IntReader r(args);
        const std::string what = "qconv2d " + name_;
        s_.n = r.dim("N"); s_.c = r.dim("C"); s_.h = r.dim("H"); s_.w = r.dim("W");
        s_.co = r.dim("Co");
        s_.kh = r.positive("kernel_h"); s_.kw = r.positive("kernel_w");
        s_.sh = r.positive("stride_h"); s_.sw = r.positive("stride_w");
        s_.ph = r.signed_param("pad_h"); s_.pw = r.signed_param("pad_w");
        s_.dh = r.positive("dilation_h"); s_.dw = r.positive("dilation_w");
        s_.groups = r.positive("groups"); s_.ho = r.dim("Ho"); s_.wo = r.dim("Wo");
        act_.act = static_cast<Act>(r.in(0, kMaxActivationCode, "act"));
        act_.p0 = static_cast<float>(r.real(0));
        act_.p1 = static_cast<float>(r.real(1));
        auto has = [&](size_t i) { return args.has(i); };
        if (s_.groups <= 0 || s_.c % s_.groups != 0 || s_.co % s_.groups != 0) {
            throw PlanError("qconv2d " + name_ + ": channels do not split into groups");
        }
        if (has(5)) throw PlanError("qconv2d " + name_ + ": no residual operand");
        if (!has(6)) throw PlanError("qconv2d " + name_ + ": x_scale is required");
        if (!args.is_const(2)) {
            throw PlanError("qconv2d " + name_ + ": the int8 weight must be a plan constant");
        }
        has_bias_ = has(4);
        has_xzp_ = has(7);
        requant_ = has(8);
        has_yzp_ = has(9);
        if (has_yzp_ && !requant_) throw PlanError(what + ": y_zp without y_scale");
        const int64_t cg = s_.c / s_.groups, cog = s_.co / s_.groups;
        const int64_t k = checked_mul(checked_mul(cg, s_.kh, what), s_.kw, what);
        for (const auto& [out, stride, kk, dil, pad, in] :
             {std::array<int64_t, 6>{s_.ho, s_.sh, s_.kh, s_.dh, s_.ph, s_.h},
              std::array<int64_t, 6>{s_.wo, s_.sw, s_.kw, s_.dw, s_.pw, s_.w}}) {
            const int64_t reach =
                checked_add(checked_mul(std::max<int64_t>(out - 1, 0), stride, what),
                            checked_mul(kk - 1, dil, what), what);
            checked_add(checked_add(reach, pad < 0 ? -pad : pad, what), in + 2, what);
        }
        const int64_t p = checked_mul(s_.ho, s_.wo, what);
        const int64_t hw = checked_mul(s_.h, s_.w, what);
        need(args, 0, checked_mul(checked_mul(checked_mul(s_.n, s_.co, what), p, what),
                                  requant_ ? 1 : 4, what), requant_ ? 1 : 4);
        need(args, 1, checked_mul(checked_mul(s_.n, s_.c, what), hw, what), 1);
        need(args, 2, checked_mul(s_.co, k, what), 1);
        need(args, 3, checked_mul(s_.co, 4, what), 4);
        need_opt(args, 4, checked_mul(s_.co, 4, what), 4);
        need(args, 6, 4, 4);
        need_opt(args, 7, 1, 1);
        need_opt(args, 8, 4, 4);
        need_opt(args, 9, 1, 1);
        hp_ = window_span(s_.ho, s_.sh, s_.kh, s_.dh);  // (in range: checked above)
        wp_ = window_span(s_.wo, s_.sw, s_.kw, s_.dw);
        // The scratch: im2col rows and one group's padded planes.
        checked_add(checked_add(checked_mul(p, k, what),
                                checked_mul(checked_mul(cg, hp_, what), wp_, what), what),
                    128, what);
        const auto* w = reinterpret_cast<const int8_t*>(constant(args, 2));
        depthwise_ = s_.groups > 1 && cg == 1 && cog == 1;
        try {
            const auto format = qgemm_kernels().format;
            // packings shared by every plan; the depthwise path reads w_q as it is
            for (int64_t g = 0; g < (depthwise_ ? 0 : s_.groups); ++g) {
                const int8_t* wg = w + g * cog * k;
                // A 1x1 kernel's K is ci either way; larger kernels take im2col's (i, j, ci).
                const bool reorder = s_.kh * s_.kw > 1;
                weights_.push_back(PackCache::get<PackedQWeight>(
                    reorder ? "qconv.hwc" : "qlinear", wg,
                    {cog, k, k, 1, static_cast<int64_t>(format), s_.kh, s_.kw}, [&] {
                        if (!reorder) return PackedQWeight::pack(wg, cog, k, k, 1, format);
                        const std::vector<int8_t> hwc = weight_hwc(wg, cog, cg, s_.kh, s_.kw);
                        return PackedQWeight::pack(hwc.data(), cog, k, k, 1, format);
                    }));
            }
        } catch (const PlanError& e) {
            throw PlanError("qconv2d " + name_ + ": " + e.what());
        }
        pointwise_ = s_.kh == 1 && s_.kw == 1 && s_.sh == 1 && s_.sw == 1 && s_.ph == 0 &&
                     s_.pw == 0 && s_.ho == s_.h && s_.wo == s_.w;
    }

    void run(const ExecContext& ctx) const override {
        const auto* x = ctx.get<const uint8_t>(operands[1]);
        const float* w_scale = ctx.get<const float>(operands[3]);
        const float* bias = has_bias_ ? ctx.get<const float>(operands[4]) : nullptr;
        const float x_scale = *ctx.get<const float>(operands[6]);
        const uint8_t x_zp = has_xzp_ ? *ctx.get<const uint8_t>(operands[7]) : 0;
        if (depthwise_) {
            run_depthwise(ctx, x, w_scale, bias, x_scale, x_zp);
            return;
        }
        const int64_t cg = s_.c / s_.groups, cog = s_.co / s_.groups;
        const int64_t k = cg * s_.kh * s_.kw, p = s_.ho * s_.wo, hw = s_.h * s_.w;
        QGemmArgs g;
        g.a_zp = x_zp;
        g.a_scale = x_scale;
        g.act = act_;
        g.ldc = 1;  // C[p, co] at p + co * P: the NCHW plane of each output channel
        g.c_cs = p;
        if (requant_) {
            g.y_scale = *ctx.get<const float>(operands[8]);
            g.y_zp = has_yzp_ ? *ctx.get<const uint8_t>(operands[9]) : 0;
        }
        uint8_t* cols = nullptr;
        uint8_t* xpad = nullptr;
        if (!pointwise_) {
            // One scratch: the im2col rows, then one group's padded channels-last planes.
            const int64_t pad_bytes = cg * hp_ * wp_;
            const int64_t cols_bytes = ceil_div(p * k, 64) * 64;
            cols = reinterpret_cast<uint8_t*>(qgemm_scratch().cols.reserve(
                ceil_div(std::max<int64_t>(cols_bytes + pad_bytes, 64), 4)));
            xpad = cols + cols_bytes;
        }
        for (int64_t n = 0; n < s_.n; ++n) {
            const uint8_t* xn = x + n * s_.c * hw;
            for (int64_t gi = 0; gi < s_.groups; ++gi) {
                if (pointwise_) {
                    g.a = QMatrixRef{xn + gi * cg * hw, p, k, 1, hw};
                } else {
                    pad_planes_hwc_u8(s_, xn, gi * cg, cg, x_zp, hp_, wp_, xpad);
                    im2col_u8(s_, xpad, cg, wp_, cols, ctx.threads);
                    g.a = QMatrixRef{cols, p, k, k, 1};
                }
                g.w = weights_[static_cast<size_t>(gi)].get();
                g.w_scale = w_scale + gi * cog;
                g.bias = bias != nullptr ? bias + gi * cog : nullptr;
                const int64_t out_off = (n * s_.co + gi * cog) * p;
                if (requant_) {
                    g.c_u8 = ctx.get<uint8_t>(operands[0]) + out_off;
                } else {
                    g.c = ctx.get<float>(operands[0]) + out_off;
                }
                qgemm_run(g, ctx.threads);
            }
        }
    }

   private:
    void run_depthwise(const ExecContext& ctx, const uint8_t* x, const float* w_scale,
                       const float* bias, float x_scale, uint8_t x_zp) const {
        DepthwiseArgs a;
        a.x = x;
        a.n = s_.n; a.c = s_.c; a.h = s_.h; a.w = s_.w; a.ho = s_.ho; a.wo = s_.wo;
        a.kh = s_.kh; a.kw = s_.kw; a.sh = s_.sh; a.sw = s_.sw; a.ph = s_.ph; a.pw = s_.pw;
        a.dh = s_.dh; a.dw = s_.dw;
        a.weight = ctx.get<const int8_t>(operands[2]);
        a.w_scale = w_scale;
        a.bias = bias;
        a.x_scale = x_scale;
        a.x_zp = x_zp;
        a.act = act_;
        if (requant_) {
            a.out_u8 = ctx.get<uint8_t>(operands[0]);
            a.y_scale = *ctx.get<const float>(operands[8]);
            a.y_zp = has_yzp_ ? *ctx.get<const uint8_t>(operands[9]) : 0;
        } else {
            a.out_f = ctx.get<float>(operands[0]);
        }
        qconv_depthwise_run(a, ctx.threads);
    }

    std::string name_;
    ConvShape s_{};
    ActSpec act_;
    bool has_bias_ = false, has_xzp_ = false, requant_ = false, has_yzp_ = false;
    bool pointwise_ = false;
    bool depthwise_ = false;  // groups == C == Co: the direct path (rt_qconv_depthwise.cpp)
    int64_t hp_ = 0, wp_ = 0;  // padded plane size (pad_planes_hwc_u8)
    std::vector<std::shared_ptr<const PackedQWeight>> weights_;
};

GRAPHOPT_RT_KERNEL("qconv2d", QConvKernel,
                   "out, x, w_q, w_scale, bias?, unused?, x_scale, x_zp?, y_scale?, y_zp?",
                   "N:dim, C:dim, H:dim, W:dim, Co:dim, kernel_h:positive, kernel_w:positive, "
                   "stride_h:positive, stride_w:positive, pad_h:signed, pad_w:signed, "
                   "dilation_h:positive, dilation_w:positive, groups:positive, Ho:dim, Wo:dim, "
                   "act:act",
                   "p0, p1");

}  // namespace
}  // namespace rt
}  // namespace graphopt
