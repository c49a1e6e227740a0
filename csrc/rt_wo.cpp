// Weight-only int8 / int4 linear (see rt_wo.h): decoding, the portable GEMV, the GEMM operand
// source and kernel "linear_wo".
//
// Kernel "linear_wo":
//   Operands: out f32 [M, N], x f32 [M, K] (row stride, contiguous columns), codes u8
//             [N, n_blocks, blob], scales f32 [N, n_blocks], bias f32 [N]?, residual f32 [M, N]?
//   Ints:     M, N, K, x_row_stride, bits (4 / 8), block_size, act, residual_in_c,
//             act_bits (0: float activations; 8: int8 per block, rt_wo_int8.cpp)
//   Floats:   act_p0, act_p1
#include "rt_wo.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "cpu.h"
#include "rt_gemv.h"
#include "rt_parallel.h"
#include "rt_plan.h"

namespace graphopt {
namespace rt {

void wo_decode_row(const WoWeight& w, int64_t n, int64_t k0, int64_t count, float* dst) {
    const uint8_t* row = w.codes + n * w.row_bytes();
    const float* scales = w.scales + n * w.n_blocks;
    const int32_t zp = w.zero_point();
    for (int64_t j = 0; j < count; ++j) {
        const int64_t k = k0 + j;
        const int32_t code = w.bits == 8 ? row[k] : (row[k >> 1] >> ((k & 1) * 4)) & 0xF;
        dst[j] = static_cast<float>(code - zp) * scales[k / w.block_size];
    }
}

void wo_gemv_portable(const WoWeight& w, int64_t rows, const float* x, int64_t x_rs, int64_t n0,
                      int64_t cols, float* out) {
    float wrow[256];
    for (int64_t j = 0; j < cols; ++j) {
        float acc[kGemvMaxRows] = {};
        for (int64_t k0 = 0; k0 < w.k; k0 += 256) {
            const int64_t kc = std::min<int64_t>(256, w.k - k0);
            wo_decode_row(w, n0 + j, k0, kc, wrow);
            for (int64_t r = 0; r < rows; ++r) {
                const float* xr = x + r * x_rs + k0;
                float s = 0.0f;
                for (int64_t kk = 0; kk < kc; ++kk) s += xr[kk] * wrow[kk];
                acc[r] += s;
            }
        }
        for (int64_t r = 0; r < rows; ++r) out[r * kGemvCols + j] = acc[r];
    }
}

const float* WoDequantB::get(int64_t pc, int64_t kc, int64_t start, int64_t count,
                             AlignedFloats& scratch) const {
    float* dst = scratch.reserve(round_up(count, kNR) * kc);
    // Decode 16 weight rows (contiguous along K) and transpose them into a k-major panel.
    float* rows = gemm_scratch().extra.reserve(kNR * kc);
    const GemmKernels& kern = gemm_kernels();
    const auto decode = cpu_features().use_avx2_fma ? wo_decode_row_avx2 : wo_decode_row;
    for (int64_t q = 0; q < count; q += kNR) {
        const int64_t cols = std::min(kNR, count - q);
        for (int64_t j = 0; j < cols; ++j) decode(w, start + q + j, pc, kc, rows + j * kc);
        kern.pack_b_k_contiguous(kc, cols, rows, kc, dst + q * kc);
    }
    return dst;
}

const char* wo_gemv_isa() {
    const CpuFeatures& cpu = cpu_features();
    return cpu.use_avx512 ? "avx512" : cpu.use_avx2_fma ? "avx2" : "portable";
}

void wo_linear_run(const WoWeight& w, const MatrixRef& x, float* c, int64_t ldc,
                   const EpilogueSpec& ep, int threads) {
    const int64_t m = x.rows, n = w.n;
    if (m <= 0 || n <= 0) return;
    if (m > kGemvMaxRows || x.col_stride != 1) {
        // Decoding a weight element costs a few multiply-adds' worth of work.
        gemm_run(StridedA{x}, WoDequantB{w}, m, n, w.k, c, ldc, ep, threads, 8.0, 6.0);
        return;
    }
    const CpuFeatures& cpu = cpu_features();
    const WoGemvFn gemv = cpu.use_avx512     ? wo_gemv_avx512
                          : cpu.use_avx2_fma ? wo_gemv_avx2
                                             : wo_gemv_portable;
    const GemmKernels& kern = gemm_kernels();
    const int64_t panels = ceil_div(n, kGemvCols);
    parallel_for(threads, panels, kGemvCols * w.k / 2, [&](int64_t q0, int64_t q1) {
        alignas(64) float tile[kGemvMaxRows * kGemvCols];
        for (int64_t q = q0; q < q1; ++q) {
            const int64_t j0 = q * kGemvCols;
            const int64_t nr = std::min(kGemvCols, n - j0);
            gemv(w, m, x.data, x.row_stride, j0, nr, tile);
            gemv_store_tile(kern, tile, c, ldc, j0, m, nr, ep);
        }
    });
}

namespace {

class LinearWoKernel : public Kernel {
   public:
    explicit LinearWoKernel(const KernelArgs& args) {
        IntReader r(args);
        m_ = r.dim("M");
        n_ = r.dim("N");
        k_ = r.dim("K");
        x_rs_ = r.signed_param("x_row_stride");
        bits_ = r.next();
        block_ = r.in(1, IntReader::kMaxDim, "block_size");
        ep_.act.act = static_cast<Act>(r.in(0, kMaxActivationCode, "act"));
        ep_.residual_in_c = r.next() != 0;
        act_bits_ = r.next();
        ep_.act.p0 = static_cast<float>(r.real(0));
        ep_.act.p1 = static_cast<float>(r.real(1));
        if (bits_ != 4 && bits_ != 8) {
            throw PlanError("linear_wo " + args.name + ": bits must be 4 or 8, got " +
                            std::to_string(bits_));
        }
        if (act_bits_ != 0 && act_bits_ != 8) {
            throw PlanError("linear_wo " + args.name + ": act_bits must be 0 or 8, got " +
                            std::to_string(act_bits_));
        }
        if (block_ <= 0 || (bits_ == 4 && block_ % 2 != 0)) {
            throw PlanError("linear_wo " + args.name + ": bad block_size " +
                            std::to_string(block_));
        }
        const std::string what = "linear_wo " + args.name;
        // out [M, N]; x [M, K] (unit column stride); codes [N, n_blocks * block * bits / 8];
        // scales [N, n_blocks]; bias [N]; residual [M, N].
        const int64_t mn = checked_mul(m_, n_, what);
        const int64_t n_blocks = (std::max<int64_t>(k_, 1) + block_ - 1) / block_;
        const int64_t row_bytes = checked_mul(checked_mul(n_blocks, block_, what), bits_, what) / 8;
        need(args, 0, checked_mul(mn, 4, what), 4);
        need_strided(args, 1, {m_, k_}, {x_rs_, 1}, 4);
        need(args, 2, checked_mul(n_, row_bytes, what), 1);
        need(args, 3, checked_mul(checked_mul(n_, n_blocks, what), 4, what), 4);
        has_bias_ = need_opt(args, 4, checked_mul(n_, 4, what), 4);
        has_residual_ = need_opt(args, 5, checked_mul(mn, 4, what), 4);
        if (ep_.residual_in_c && !has_residual_) {
            throw PlanError("linear_wo " + args.name + ": in-place residual needs a residual");
        }
    }

    void run(const ExecContext& ctx) const override {
        WoWeight w{ctx.get<const uint8_t>(operands[2]), ctx.get<const float>(operands[3]),
                   n_, k_, bits_, block_, ceil_div(std::max<int64_t>(k_, 1), block_)};
        EpilogueSpec ep = ep_;
        ep.col_bias = has_bias_ ? ctx.get<const float>(operands[4]) : nullptr;
        ep.residual = has_residual_ ? ctx.get<const float>(operands[5]) : nullptr;
        ep.ldr = n_;
        const MatrixRef x{ctx.get<const float>(operands[1]), m_, k_, x_rs_, 1};
        if (act_bits_ == 8) {
            wo_int8_run(w, x, ctx.get<float>(operands[0]), n_, ep, ctx.threads);
        } else {
            wo_linear_run(w, x, ctx.get<float>(operands[0]), n_, ep, ctx.threads);
        }
    }

   private:
    int64_t m_ = 0, n_ = 0, k_ = 0, x_rs_ = 0, bits_ = 4, block_ = 32, act_bits_ = 0;
    bool has_bias_ = false, has_residual_ = false;
    EpilogueSpec ep_;
};

GRAPHOPT_RT_KERNEL("linear_wo", LinearWoKernel,
                   "out, x, codes, scales, bias?, residual?",
                   "M:dim, N:dim, K:dim, x_row_stride:signed, bits:mode, block_size:positive, "
                   "act:act, residual_in_c:flag, act_bits:mode",
                   "p0, p1");

}  // namespace
}  // namespace rt
}  // namespace graphopt
