// Kernel "qlinear": int8 linear layers on the int8 GEMM (rt_qgemm.h), dynamic or static.
//
//   dynamic (qlinear_dynamic): x f32 is quantized per tensor to u8 inside the kernel with ONNX
//       DynamicQuantizeLinear semantics (a_scale, a_zp from this call's min / max), or with
//       per_row the same rule per row (per-token a_scale[m], a_zp[m]);
//   static (qlinear): x is already u8 with a given scale and zero point.
//   acc = (x_q - a_zp) @ w_q^T (exact int32);  y = act(acc * (a_scale * w_scale) + bias + res)
//   out = y (f32), or with y_scale: saturate_u8(round_half_even(y / y_scale) + y_zp).
//
// Operands: out [M, N] (f32, or u8 with y_scale), x [M, K] (f32 dynamic / u8 static; any
//           strides), w_q i8 [N, K] (a plan constant), w_scale f32 [N], bias f32 [N]?,
//           residual f32 [M, N]? (contiguous), x_scale f32 []? and x_zp u8 []? (static),
//           y_scale f32 []? and y_zp u8 []? (requantized output)
// Ints:     M, N, K, x_row_stride, x_col_stride, w_row_stride, w_col_stride, static (0 / 1),
//           act, residual_in_c, per_row (0 / 1; dynamic only)
// Floats:   act_p0, act_p1
// Scalars (x_scale, x_zp, y_scale, y_zp, w_scale, bias) are read at run time, so they may be
// computed by earlier steps; only the weight must be constant (it is packed at build time).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "rt_pack_cache.h"
#include "rt_plan.h"
#include "rt_qgemm.h"

namespace graphopt {
namespace rt {
namespace {

enum QOperand : size_t {
    kOut = 0, kX, kW, kWScale, kBias, kResidual, kXScale, kXZp, kYScale, kYZp,
};

class QLinearKernel : public Kernel {
   public:
    explicit QLinearKernel(const KernelArgs& args) : name_(args.name) {
        IntReader r(args);
        const std::string what = "qlinear " + name_;
        m_ = r.dim("M");
        n_ = r.dim("N");
        k_ = r.dim("K");
        x_rs_ = r.signed_param("x_row_stride");
        x_cs_ = r.signed_param("x_col_stride");
        const int64_t w_rs = r.signed_param("w_row_stride"), w_cs = r.signed_param("w_col_stride");
        static_ = r.next() != 0;
        act_.act = static_cast<Act>(r.in(0, kMaxActivationCode, "act"));
        residual_in_c_ = r.next() != 0;
        per_row_ = r.next() != 0;
        act_.p0 = static_cast<float>(r.real(0));
        act_.p1 = static_cast<float>(r.real(1));
        auto has = [&](size_t i) { return args.has(i); };
        has_bias_ = has(kBias);
        has_residual_ = has(kResidual);
        requant_ = has(kYScale);
        if (static_ && per_row_) {
            throw PlanError("qlinear " + name_ + ": per-row quantization is for dynamic mode");
        }
        if (static_ && !has(kXScale)) {
            throw PlanError("qlinear " + name_ + ": static mode needs x_scale");
        }
        if (!static_ && (has(kXScale) || has(kXZp))) {
            throw PlanError("qlinear " + name_ + ": dynamic mode takes no x_scale / x_zp");
        }
        if (requant_ && (has_residual_ || residual_in_c_)) {
            throw PlanError("qlinear " + name_ + ": a requantized (u8) output takes no residual");
        }
        if (residual_in_c_ && !has_residual_) {
            throw PlanError("qlinear " + name_ + ": in-place residual needs a residual");
        }
        if (has(kYZp) && !requant_) throw PlanError(what + ": y_zp without y_scale");
        if (!args.is_const(kW)) {
            throw PlanError("qlinear " + name_ + ": the int8 weight must be a plan constant");
        }
        const int64_t mn = checked_mul(m_, n_, what);
        need(args, kOut, checked_mul(mn, requant_ ? 1 : 4, what), requant_ ? 1 : 4);
        need_strided(args, kX, {m_, k_}, {x_rs_, x_cs_}, static_ ? 1 : 4);
        need_strided(args, kW, {n_, k_}, {w_rs, w_cs}, 1);
        need(args, kWScale, checked_mul(n_, 4, what), 4);
        need_opt(args, kBias, checked_mul(n_, 4, what), 4);
        need_opt(args, kResidual, checked_mul(mn, 4, what), 4);
        need_opt(args, kXScale, 4, 4);
        need_opt(args, kXZp, 1, 1);
        need_opt(args, kYScale, 4, 4);
        need_opt(args, kYZp, 1, 1);
        // The dynamic path quantizes x into an [M, K] u8 scratch.
        checked_mul(m_, k_, what);
        const auto* w = reinterpret_cast<const int8_t*>(constant(args, kW));
        try {
            const auto format = qgemm_kernels().format;
            weight_ = PackCache::get<PackedQWeight>(  // shared by every plan (rt_pack_cache.h)
                "qlinear", w, {n_, k_, w_rs, w_cs, static_cast<int64_t>(format)},
                [&] { return PackedQWeight::pack(w, n_, k_, w_rs, w_cs, format); });
        } catch (const PlanError& e) {
            throw PlanError("qlinear " + name_ + ": " + e.what());
        }
    }

    void run(const ExecContext& ctx) const override {
        QGemmArgs g;
        g.w = weight_.get();
        g.w_scale = ctx.get<const float>(operands[kWScale]);
        g.bias = has_bias_ ? ctx.get<const float>(operands[kBias]) : nullptr;
        g.residual = has_residual_ ? ctx.get<const float>(operands[kResidual]) : nullptr;
        g.ldr = n_;
        g.residual_in_c = residual_in_c_;
        g.act = act_;
        g.ldc = n_;
        if (requant_) {
            g.c_u8 = ctx.get<uint8_t>(operands[kOut]);
            g.y_scale = *ctx.get<const float>(operands[kYScale]);
            g.y_zp = operands.size() > kYZp && operands[kYZp].present
                         ? *ctx.get<const uint8_t>(operands[kYZp]) : 0;  // (span checked)
        } else {
            g.c = ctx.get<float>(operands[kOut]);
        }
        if (static_) {
            g.a = QMatrixRef{ctx.get<const uint8_t>(operands[kX]), m_, k_, x_rs_, x_cs_};
            g.a_scale = *ctx.get<const float>(operands[kXScale]);
            g.a_zp = operands.size() > kXZp && operands[kXZp].present
                         ? *ctx.get<const uint8_t>(operands[kXZp]) : 0;
        } else {
            QGemmScratch& s = qgemm_scratch();
            // On AMX, quantized straight into the tile driver's row layout (rows of kp bytes,
            // zero padding), which it then reads in place.
            const bool amx = qgemm_uses_amx(*weight_, m_);
            const int64_t stride = amx ? weight_->steps() * 4 : k_;
            const int64_t rows = amx ? round_up(m_, 16) : m_;
            auto* q = reinterpret_cast<uint8_t*>(s.qa.reserve(ceil_div(rows * stride + 64, 4)));
            if (amx) zero_amx_padding(q, m_, rows, k_, stride);
            const float* x = ctx.get<const float>(operands[kX]);
            if (per_row_) {
                s.row_scale.resize(static_cast<size_t>(std::max<int64_t>(m_, 1)));
                s.row_zp.resize(static_cast<size_t>(std::max<int64_t>(m_, 1)));
                dynamic_quantize_rows(x, m_, k_, x_rs_, x_cs_, q, s.row_scale.data(),
                                      s.row_zp.data(), ctx.threads, stride);
                g.a_row_scale = s.row_scale.data();
                g.a_row_zp = s.row_zp.data();
            } else {
                dynamic_quantize(x, m_, k_, x_rs_, x_cs_, q, &g.a_scale, &g.a_zp, ctx.threads,
                                 stride);
            }
            g.a = QMatrixRef{q, m_, k_, stride, 1};
            g.a_amx_rows = amx;
        }
        qgemm_run(g, ctx.threads);
    }

   private:
    // Zero bytes of the AMX row layout that quantization does not write: columns [k, stride)
    // of the m rows, and the rows [m, rows) (the tiles read whole 16-row, 64-byte groups).
    static void zero_amx_padding(uint8_t* q, int64_t m, int64_t rows, int64_t k,
                                 int64_t stride) {
        if (stride > k) {
            for (int64_t r = 0; r < m; ++r) std::memset(q + r * stride + k, 0, stride - k);
        }
        std::memset(q + m * stride, 0, static_cast<size_t>((rows - m) * stride));
    }

    std::string name_;
    int64_t m_ = 0, n_ = 0, k_ = 0, x_rs_ = 0, x_cs_ = 0;
    bool static_ = false, requant_ = false, has_bias_ = false, has_residual_ = false;
    bool residual_in_c_ = false, per_row_ = false;
    ActSpec act_;
    std::shared_ptr<const PackedQWeight> weight_;
};

GRAPHOPT_RT_KERNEL("qlinear", QLinearKernel,
                   "out, x, w_q, w_scale, bias?, residual?, x_scale?, x_zp?, y_scale?, y_zp?",
                   "M:dim, N:dim, K:dim, x_row_stride:signed, x_col_stride:signed, "
                   "w_row_stride:signed, w_col_stride:signed, static:flag, act:act, "
                   "residual_in_c:flag, per_row:flag",
                   "p0, p1");

}  // namespace
}  // namespace rt
}  // namespace graphopt
