// Convolution kernels (NCHW, float32). conv1d runs as conv2d with H = 1.
//
// "conv2d"  operands: out, x, weight, bias?, residual?
//           ints: N, C, H, W, Co, kh, kw, sh, sw, ph, pw, dh, dw, groups, Ho, Wo, act,
//                 residual_in_c;  floats: act_p0, act_p1
//   out = act(conv(x, w) + bias + residual)
//
//   * Depthwise (groups == C, Co a multiple of C): direct loops per channel plane; stride-1 rows
//     are vectorised axpys.
//   * Otherwise implicit GEMM per image and group: out_g[Co/g, Ho*Wo] = W_g[Co/g, K] @ cols,
//     K = C/g * kh * kw. W_g is packed once at build time (the A operand) when the weight is a
//     plan constant, else read through its strides on every call (ONNX graphs whose weight is
//     an input); the im2col matrix is never materialised: the B packer gathers each 16-column
//     panel straight from the input. A 1x1, stride-1, unpadded conv reads the input as B
//     directly.
//
// "conv_transpose2d"  operands: out, x, weight ([C, Co/g, kh, kw]; constant or not), bias?
//           ints: N, C, H, W, Co, kh, kw, sh, sw, ph, pw, dh, dw, groups, Ho, Wo
//   Scatter formulation, one task per output channel plane (no write races).
#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "rt_conv_shape.h"
#include "rt_gemm.h"
#include "rt_pack_cache.h"
#include "rt_parallel.h"
#include "rt_plan.h"
#include "rt_vec.h"

namespace graphopt {
namespace rt {
namespace {

// B operand of the implicit GEMM: column p = output pixel (oy, ox), row k = (ci, ky, kx).
struct Im2colB {
    const float* x;  // this image and group: [C/g, H, W]
    const ConvShape* s;
    const int64_t* k_offset;  // per k: ci * H * W + ky * dh * W + kx * dw
    const int64_t* k_dy;      // per k: ky * dh
    const int64_t* k_dx;      // per k: kx * dw
    static constexpr bool kPrepacked = false;

    const float* get(int64_t pc, int64_t kc, int64_t start, int64_t count,
                     AlignedFloats& scratch) const {
        float* dst = scratch.reserve(round_up(count, kNR) * kc);
        for (int64_t q = 0; q < count; q += kNR) {
            pack_panel(pc, kc, start + q, std::min(kNR, count - q), dst + q * kc);
        }
        return dst;
    }

    // Columns of one panel split into runs that share an output row: within a run the input
    // x index advances by sw per column.
    void pack_panel(int64_t pc, int64_t kc, int64_t p0, int64_t cols, float* dst) const {
        struct Run {
            int64_t j0, j1, iy0, ix0;
        };
        Run runs[kNR];
        int64_t nruns = 0;
        for (int64_t j = 0; j < cols;) {
            const int64_t p = p0 + j;
            const int64_t oy = p / s->wo, ox = p % s->wo;
            const int64_t len = std::min(cols - j, s->wo - ox);
            runs[nruns++] = Run{j, j + len, oy * s->sh - s->ph, ox * s->sw - s->pw};
            j += len;
        }
        const int64_t H = s->h, W = s->w, sw = s->sw;
        const VecOps& vec = vec_ops();
        for (int64_t kk = 0; kk < kc; ++kk) {
            const int64_t k = pc + kk;
            float* d = dst + kk * kNR;
            const int64_t dy = k_dy[k], dx = k_dx[k];
            const float* plane = x + k_offset[k] - dy * W - dx;  // x + ci * H * W
            for (int64_t r = 0; r < nruns; ++r) {
                const Run& run = runs[r];
                const int64_t n = run.j1 - run.j0;
                const int64_t iy = run.iy0 + dy;
                if (iy < 0 || iy >= H) {
                    for (int64_t j = 0; j < n; ++j) d[run.j0 + j] = 0.0f;
                    continue;
                }
                const float* row = plane + iy * W;
                const int64_t ix_first = run.ix0 + dx;
                const int64_t ix_last = ix_first + (n - 1) * sw;
                if (ix_first >= 0 && ix_last < W) {
                    if (sw == 1 && n == kNR) {
                        for (int64_t j = 0; j < kNR; ++j) d[j] = row[ix_first + j];  // inlined
                    } else {
                        vec.gather_strided(d + run.j0, row + ix_first, sw, n);
                    }
                } else {
                    for (int64_t j = 0; j < n; ++j) {
                        const int64_t ix = ix_first + j * sw;
                        d[run.j0 + j] = (ix >= 0 && ix < W) ? row[ix] : 0.0f;
                    }
                }
            }
            for (int64_t j = cols; j < kNR; ++j) d[j] = 0.0f;
        }
    }
};

class ConvKernel : public Kernel {
   public:
    explicit ConvKernel(const KernelArgs& args) {
        IntReader r(args);
        const std::string what = "conv2d " + args.name;
        s_ = ConvShape::read(r, what);
        act_.act = static_cast<Act>(r.in(0, kMaxActivationCode, "act"));
        residual_in_c_ = r.next() != 0;
        act_.p0 = static_cast<float>(r.real(0));
        act_.p1 = static_cast<float>(r.real(1));
        need(args, 0, s_.out_bytes(what), 4);
        need(args, 1, s_.x_bytes(what), 4);
        // weight [Co, C / groups, kh, kw]
        need(args, 2, checked_mul(checked_mul(s_.co, s_.k(), what), 4, what), 4);
        has_bias_ = need_opt(args, 3, checked_mul(s_.co, 4, what), 4);
        has_residual_ = need_opt(args, 4, s_.out_bytes(what), 4);
        if (residual_in_c_ && !has_residual_) {
            throw PlanError(what + ": in-place residual without a residual");
        }
        runtime_weight_ = !args.is_const(2);
        const float* w =
            runtime_weight_ ? nullptr : reinterpret_cast<const float*>(constant(args, 2));
        depthwise_ = s_.groups == s_.c && s_.co % s_.c == 0 && s_.groups > 1;
        if (depthwise_) {
            // The zero-padded scratch plane of run_depthwise, in floats.
            const int64_t pad_h = checked_add(
                checked_add(checked_mul(std::max<int64_t>(s_.ho - 1, 0), s_.sh, what),
                            checked_mul(s_.kh - 1, s_.dh, what), what), 1, what);
            const int64_t pad_w = checked_add(
                checked_add(checked_mul(std::max<int64_t>(s_.wo - 1, 0), s_.sw, what),
                            checked_mul(s_.kw - 1, s_.dw, what), what), 2, what);
            if (checked_mul(pad_h, pad_w, what) > (int64_t{1} << 31)) {
                throw PlanError(what + ": the padded plane of this depthwise convolution (" +
                                std::to_string(pad_h) + " x " + std::to_string(pad_w) +
                                ") is too large");
            }
            if (!runtime_weight_) weight_.assign(w, w + s_.co * s_.kh * s_.kw);
            return;
        }
        pointwise_ = s_.kh == 1 && s_.kw == 1 && s_.sh == 1 && s_.sw == 1 && s_.ph == 0 &&
                     s_.pw == 0 && s_.ho == s_.h && s_.wo == s_.w;
        const int64_t k = s_.k(), cog = s_.cog();
        for (int64_t g = 0; g < s_.groups && !runtime_weight_; ++g) {
            const MatrixRef a{w + g * cog * k, cog, k, k, 1};
            packed_.push_back(PackCache::get<PackedMatrix>(  // shared by every plan
                "conv.f32", a.data, {cog, k}, [&] { return PackedMatrix::pack_a(a); }));
        }
        for (int64_t ci = 0; ci < s_.cig(); ++ci) {
            for (int64_t ky = 0; ky < s_.kh; ++ky) {
                for (int64_t kx = 0; kx < s_.kw; ++kx) {
                    k_dy_.push_back(ky * s_.dh);
                    k_dx_.push_back(kx * s_.dw);
                    k_offset_.push_back(ci * s_.h * s_.w + ky * s_.dh * s_.w + kx * s_.dw);
                }
            }
        }
    }

    void run(const ExecContext& ctx) const override {
        float* out = ctx.get<float>(operands[0]);
        const float* x = ctx.get<const float>(operands[1]);
        const float* bias = has_bias_ ? ctx.get<const float>(operands[3]) : nullptr;
        const float* residual = has_residual_ ? ctx.get<const float>(operands[4]) : nullptr;
        const float* w = runtime_weight_ ? ctx.get<const float>(operands[2]) : nullptr;
        if (depthwise_) {
            run_depthwise(ctx, out, x, runtime_weight_ ? w : weight_.data(), bias, residual);
            return;
        }
        const int64_t P = s_.p(), K = s_.k(), cog = s_.cog();
        for (int64_t n = 0; n < s_.n; ++n) {
            for (int64_t g = 0; g < s_.groups; ++g) {
                EpilogueSpec ep;
                ep.row_bias = bias != nullptr ? bias + g * cog : nullptr;
                ep.residual = residual != nullptr ? residual + (n * s_.co + g * cog) * P : nullptr;
                ep.ldr = P;
                ep.residual_in_c = residual_in_c_;
                ep.act = act_;
                float* c = out + (n * s_.co + g * cog) * P;
                const float* xg = x + (n * s_.c + g * s_.cig()) * s_.h * s_.w;
                auto run_with = [&](const auto& a) {
                    if (pointwise_) {
                        gemm_run(a, StridedB{MatrixRef{xg, K, P, P, 1}}, cog, P, K, c, P, ep,
                                 ctx.threads, 0.0, 2.0);
                    } else {
                        const Im2colB b{xg, &s_, k_offset_.data(), k_dy_.data(), k_dx_.data()};
                        gemm_run(a, b, cog, P, K, c, P, ep, ctx.threads, 0.0, 6.0);
                    }
                };
                if (runtime_weight_) {
                    run_with(StridedA{MatrixRef{w + g * cog * K, cog, K, K, 1}});
                } else {
                    run_with(PackedSource{packed_[static_cast<size_t>(g)].get()});
                }
            }
        }
    }

   private:
    // Depthwise: per channel plane, the input is first copied into a zero-padded scratch
    // plane (so no tap needs a bounds check), then each output row accumulates all kh * kw taps
    // in registers (VecOps::taps_row), then bias / residual / activation.
    void run_depthwise(const ExecContext& ctx, float* out, const float* x, const float* weight,
                       const float* bias, const float* residual) const {
        const VecOps& vec = vec_ops();
        const int64_t mult = s_.co / s_.c;
        const int64_t planes = s_.n * s_.co;
        const int64_t HW = s_.h * s_.w, P = s_.p();
        const int64_t taps = s_.kh * s_.kw;
        // Padded plane: every input position a tap reads, plus one float of slack per row for
        // the stride-2 loads of taps_row.
        const int64_t pad_h = (s_.ho - 1) * s_.sh + (s_.kh - 1) * s_.dh + 1;
        const int64_t pad_w = (s_.wo - 1) * s_.sw + (s_.kw - 1) * s_.dw + 2;
        // Stride 1: the plane is one long row. Output (oy, ox) at flat index oy * pad_w + ox reads
        // padded[flat + ky * dh * pad_w + kx * dw] for every tap, so one taps_row call computes
        // the whole plane at the padded pitch (pad_w - wo wasted columns per row), then the rows
        // are compacted into the output. Short rows otherwise spend more on per-call overhead than
        // on arithmetic.
        const bool flat = s_.sw == 1 && s_.sh == 1;
        const int64_t flat_rows = (s_.ho - 1) * pad_w + s_.wo;
        parallel_for(ctx.threads, planes, P * taps, [&](int64_t p0, int64_t p1) {
            float* padded = gemm_scratch().extra.reserve(pad_h * pad_w);
            std::vector<const float*> tap_x(static_cast<size_t>(taps));
            int64_t last_input = -1;
            for (int64_t plane = p0; plane < p1; ++plane) {
                const int64_t n = plane / s_.co, oc = plane % s_.co;
                const int64_t input = n * s_.c + oc / mult;
                if (input != last_input) {  // channel multipliers share one padded input
                    fill_padded(x + input * HW, padded, pad_h, pad_w);
                    last_input = input;
                }
                const float* wp = weight + oc * taps;
                float* yp = out + plane * P;
                const float b = bias != nullptr ? bias[oc] : 0.0f;
                const float* rp = residual != nullptr ? residual + plane * P : nullptr;
                if (flat) {
                    run_flat_plane(vec, padded, pad_w, wp, b, rp, yp, flat_rows, tap_x);
                } else {
                    if (residual_in_c_) {
                        for (int64_t i = 0; i < P; ++i) yp[i] += b;
                    } else if (rp != nullptr) {
                        for (int64_t i = 0; i < P; ++i) yp[i] = rp[i] + b;
                    } else {
                        std::fill(yp, yp + P, b);
                    }
                    for (int64_t oy = 0; oy < s_.ho; ++oy) {
                        for (int64_t ky = 0; ky < s_.kh; ++ky) {
                            const float* row = padded + (oy * s_.sh + ky * s_.dh) * pad_w;
                            for (int64_t kx = 0; kx < s_.kw; ++kx) {
                                tap_x[static_cast<size_t>(ky * s_.kw + kx)] = row + kx * s_.dw;
                            }
                        }
                        vec.taps_row(yp + oy * s_.wo, tap_x.data(), wp, taps, s_.sw, s_.wo);
                    }
                }
                apply_activation(yp, P, 1, P, nullptr, act_);
            }
        });
    }

    void run_flat_plane(const VecOps& vec, const float* padded, int64_t pad_w, const float* wp,
                        float b, const float* rp, float* yp, int64_t flat_n,
                        std::vector<const float*>& tap_x) const {
        float* flat = gemm_scratch().extra2.reserve(flat_n);
        std::fill(flat, flat + flat_n, b);
        for (int64_t ky = 0; ky < s_.kh; ++ky) {
            for (int64_t kx = 0; kx < s_.kw; ++kx) {
                tap_x[static_cast<size_t>(ky * s_.kw + kx)] =
                    padded + ky * s_.dh * pad_w + kx * s_.dw;
            }
        }
        vec.taps_row(flat, tap_x.data(), wp, s_.kh * s_.kw, 1, flat_n);
        for (int64_t oy = 0; oy < s_.ho; ++oy) {
            float* yr = yp + oy * s_.wo;
            const float* fr = flat + oy * pad_w;
            if (residual_in_c_) {
                for (int64_t ox = 0; ox < s_.wo; ++ox) yr[ox] += fr[ox];
            } else if (rp != nullptr) {
                const float* rr = rp + oy * s_.wo;
                for (int64_t ox = 0; ox < s_.wo; ++ox) yr[ox] = rr[ox] + fr[ox];
            } else {
                std::memcpy(yr, fr, sizeof(float) * static_cast<size_t>(s_.wo));
            }
        }
    }

    // padded[r][c] = x[r - ph][c - pw] inside the input, 0 elsewhere.
    void fill_padded(const float* xp, float* padded, int64_t pad_h, int64_t pad_w) const {
        std::fill(padded, padded + pad_h * pad_w, 0.0f);
        const int64_t c0 = std::max<int64_t>(0, -s_.pw);  // first input column that lands inside
        const int64_t c1 = std::min(s_.w, pad_w - s_.pw);
        if (c1 <= c0) return;
        for (int64_t iy = std::max<int64_t>(0, -s_.ph); iy < s_.h && iy + s_.ph < pad_h; ++iy) {
            std::memcpy(padded + (iy + s_.ph) * pad_w + s_.pw + c0, xp + iy * s_.w + c0,
                        sizeof(float) * static_cast<size_t>(c1 - c0));
        }
    }

    ConvShape s_;
    ActSpec act_;
    bool residual_in_c_ = false, has_bias_ = false, has_residual_ = false;
    bool depthwise_ = false, pointwise_ = false;
    std::vector<float> weight_;
    std::vector<std::shared_ptr<const PackedMatrix>> packed_;
    std::vector<int64_t> k_offset_, k_dy_, k_dx_;
    bool runtime_weight_ = false;  // the weight is read (and packed) on every call
};

class ConvTransposeKernel : public Kernel {
   public:
    explicit ConvTransposeKernel(const KernelArgs& args) {
        IntReader r(args);
        const std::string what = "conv_transpose2d " + args.name;
        s_ = ConvShape::read(r, what);
        need(args, 0, s_.out_bytes(what), 4);
        need(args, 1, s_.x_bytes(what), 4);
        // weight [C, Co / groups, kh, kw]
        need(args, 2, checked_mul(checked_mul(checked_mul(s_.c, s_.cog(), what),
                                              checked_mul(s_.kh, s_.kw, what), what), 4, what), 4);
        has_bias_ = need_opt(args, 3, checked_mul(s_.co, 4, what), 4);
        runtime_weight_ = !args.is_const(2);
        if (!runtime_weight_) {
            const float* w = reinterpret_cast<const float*>(constant(args, 2));
            weight_.assign(w, w + s_.c * s_.cog() * s_.kh * s_.kw);
        }
    }

    void run(const ExecContext& ctx) const override {
        float* out = ctx.get<float>(operands[0]);
        const float* x = ctx.get<const float>(operands[1]);
        const float* bias = has_bias_ ? ctx.get<const float>(operands[3]) : nullptr;
        const int64_t cig = s_.cig(), cog = s_.cog(), P = s_.p(), HW = s_.h * s_.w;
        const int64_t kk = s_.kh * s_.kw;
        const float* weight =
            runtime_weight_ ? ctx.get<const float>(operands[2]) : weight_.data();
        parallel_for(ctx.threads, s_.n * s_.co, HW * cig * kk, [&](int64_t p0, int64_t p1) {
            for (int64_t plane = p0; plane < p1; ++plane) {
                const int64_t n = plane / s_.co, oc = plane % s_.co;
                const int64_t g = oc / cog, ocg = oc % cog;
                float* y = out + plane * P;
                std::fill(y, y + P, bias != nullptr ? bias[oc] : 0.0f);
                for (int64_t ci = g * cig; ci < (g + 1) * cig; ++ci) {
                    const float* xp = x + (n * s_.c + ci) * HW;
                    const float* wp = weight + (ci * cog + ocg) * kk;
                    for (int64_t iy = 0; iy < s_.h; ++iy) {
                        for (int64_t ky = 0; ky < s_.kh; ++ky) {
                            const int64_t oy = iy * s_.sh - s_.ph + ky * s_.dh;
                            if (oy < 0 || oy >= s_.ho) continue;
                            for (int64_t kx = 0; kx < s_.kw; ++kx) {
                                const float wv = wp[ky * s_.kw + kx];
                                for (int64_t ix = 0; ix < s_.w; ++ix) {
                                    const int64_t ox = ix * s_.sw - s_.pw + kx * s_.dw;
                                    if (ox >= 0 && ox < s_.wo) {
                                        y[oy * s_.wo + ox] += wv * xp[iy * s_.w + ix];
                                    }
                                }
                            }
                        }
                    }
                }
            }
        });
    }

   private:
    ConvShape s_;
    bool has_bias_ = false;
    bool runtime_weight_ = false;
    std::vector<float> weight_;
};

GRAPHOPT_RT_KERNEL("conv2d", ConvKernel,
                   "out, x, w, bias?, residual?",
                   "N:dim, C:dim, H:dim, W:dim, Co:dim, kernel_h:positive, kernel_w:positive, "
                   "stride_h:positive, stride_w:positive, pad_h:signed, pad_w:signed, "
                   "dilation_h:positive, dilation_w:positive, groups:positive, Ho:dim, Wo:dim, "
                   "act:act, residual_in_c:flag",
                   "p0, p1");
GRAPHOPT_RT_KERNEL("conv_transpose2d", ConvTransposeKernel,
                   "out, x, w, bias?",
                   "N:dim, C:dim, H:dim, W:dim, Co:dim, kernel_h:positive, kernel_w:positive, "
                   "stride_h:positive, stride_w:positive, pad_h:signed, pad_w:signed, "
                   "dilation_h:positive, dilation_w:positive, groups:positive, Ho:dim, Wo:dim",
                   "");

}  // namespace
}  // namespace rt
}  // namespace graphopt
