// Kernel "gemm": linear / matmul / fused_linear / fused_matmul, batched with broadcasting.
//
//   out[b] = act(alpha * A[b] @ B[b] + bias + residual[b])      for every batch index b
//
// Operands: out, a, b, bias?, residual?  (out and residual contiguous [batch..., M, N]; bias [N]).
// Ints:     batch_rank, batch_shape[batch_rank], a_batch_strides[batch_rank],
//           b_batch_strides[batch_rank], M, N, K, a_row_stride, a_col_stride, b_row_stride,
//           b_col_stride, act, residual_in_c, bf16
// Floats:   alpha, act_p0, act_p1
// Strides are in elements. A constant B that does not vary over the batch (a weight) is packed
// once at build time; matrices with M <= 4 rows against a pre-packed B take the GEMV path.
// bf16 = 1 computes in bf16 with fp32 accumulation (rt_bf16.h: AMX tiles where present); it
// needs such a constant B.
#include <algorithm>
#include <memory>
#include <vector>

#include "rt_bf16.h"
#include "rt_gemm.h"
#include "rt_gemv.h"
#include "rt_matmul_layout.h"
#include "rt_pack_cache.h"
#include "rt_parallel.h"
#include "rt_plan.h"

namespace graphopt {
namespace rt {
namespace {

class GemmKernel : public MatmulKernelBase {
   public:
    explicit GemmKernel(const KernelArgs& args) {
        IntReader r(args);
        const std::string what = "gemm " + args.name;
        // out / residual [batch..., M, N] contiguous; a and b through their strides; bias [N].
        const int64_t out_bytes = read_layout(r, args, 4, what);
        batch_shape_ = layout_.batch_shape;
        a_batch_ = layout_.a_batch;
        b_batch_ = layout_.b_batch;
        m_ = layout_.m;
        n_ = layout_.n;
        k_ = layout_.k;
        a_rs_ = layout_.a_rs;
        a_cs_ = layout_.a_cs;
        b_rs_ = layout_.b_rs;
        b_cs_ = layout_.b_cs;
        ep_.act.act = static_cast<Act>(r.in(0, kMaxActivationCode, "act"));
        ep_.residual_in_c = r.next() != 0;
        const bool bf16 = r.next() != 0;
        ep_.alpha = static_cast<float>(r.real(0));
        ep_.act.p0 = static_cast<float>(r.real(1));
        ep_.act.p1 = static_cast<float>(r.real(2));
        has_bias_ = need_opt(args, 3, checked_mul(n_, 4, what), 4);
        has_residual_ = need_opt(args, 4, out_bytes, 4);
        if (ep_.residual_in_c && (!has_residual_ || ep_.alpha != 1.0f)) {
            throw PlanError("gemm " + args.name +
                            ": in-place residual needs a residual and alpha 1");
        }
        batch_count_ = checked_numel(batch_shape_, what);
        const bool b_shared = std::all_of(b_batch_.begin(), b_batch_.end(),
                                          [](int64_t s) { return s == 0; });
        const bool b_packable = args.is_const(2) && b_shared;
        if (bf16 && !b_packable) {
            throw PlanError(what + ": bf16 compute needs a constant B shared by the batch");
        }
        if (b_packable && m_ > 0 && n_ > 0 && k_ > 0) {
            const float* b = reinterpret_cast<const float*>(constant(args, 2));
            const MatrixRef ref{b, k_, n_, b_rs_, b_cs_};
            // One packing per weight and layout, shared by every plan (rt_pack_cache.h).
            const std::vector<int64_t> layout{k_, n_, b_rs_, b_cs_};
            if (bf16) {
                bf16_ = PackCache::get<PackedBf16Weight>(
                    "gemm.bf16", b, layout, [&] { return PackedBf16Weight::pack(ref); });
            } else {  // the GEMV (M <= kGemvMaxRows) reads the GEMM's packing (rt_gemv.h)
                packed_ = PackCache::get<PackedMatrix>("gemm.f32", b, layout,
                                                       [&] { return PackedMatrix::pack_b(ref); });
            }
        }
    }

    void run(const ExecContext& ctx) const override {
        float* out = ctx.get<float>(operands[0]);
        const float* a = ctx.get<const float>(operands[1]);
        const float* b = ctx.get<const float>(operands[2]);
        EpilogueSpec ep = ep_;
        ep.col_bias = has_bias_ ? ctx.get<const float>(operands[3]) : nullptr;
        const float* residual = has_residual_ ? ctx.get<const float>(operands[4]) : nullptr;
        ep.ldr = n_;
        const int64_t mn = m_ * n_;
        // Many small independent products: one thread each; otherwise threads inside each.
        const bool across_batches = batch_count_ > 1 && m_ * n_ * k_ < 256 * 256 * 64;
        const int inner_threads = across_batches ? 1 : ctx.threads;
        auto one = [&](int64_t bi) {
            int64_t a_off = 0, b_off = 0;
            int64_t rest = bi;
            for (int64_t d = static_cast<int64_t>(batch_shape_.size()) - 1; d >= 0; --d) {
                const int64_t idx = rest % batch_shape_[d];
                rest /= batch_shape_[d];
                a_off += idx * a_batch_[d];
                b_off += idx * b_batch_[d];
            }
            EpilogueSpec e = ep;
            e.residual = residual != nullptr ? residual + bi * mn : nullptr;
            float* c = out + bi * mn;
            const MatrixRef am{a + a_off, m_, k_, a_rs_, a_cs_};
            if (bf16_) {
                bf16_gemm_run(am, *bf16_, c, n_, e, inner_threads);
            } else if (packed_ && m_ <= kGemvMaxRows) {
                gemv_run(am, *packed_, c, n_, e, inner_threads);
            } else if (packed_) {
                gemm_run(StridedA{am}, PackedSource{packed_.get()}, m_, n_, k_, c, n_, e,
                         inner_threads);
            } else {
                const MatrixRef bm{b + b_off, k_, n_, b_rs_, b_cs_};
                gemm_run(StridedA{am}, StridedB{bm}, m_, n_, k_, c, n_, e, inner_threads);
            }
        };
        if (across_batches) {
            parallel_tasks(ctx.threads, batch_count_, one);
        } else {
            for (int64_t bi = 0; bi < batch_count_; ++bi) one(bi);
        }
    }

   private:
    std::vector<int64_t> batch_shape_, a_batch_, b_batch_;
    int64_t batch_count_ = 1;
    int64_t m_ = 0, n_ = 0, k_ = 0, a_rs_ = 0, a_cs_ = 0, b_rs_ = 0, b_cs_ = 0;
    bool has_bias_ = false, has_residual_ = false;
    EpilogueSpec ep_;
    std::shared_ptr<const PackedMatrix> packed_;
    std::shared_ptr<const PackedBf16Weight> bf16_;
};

GRAPHOPT_RT_KERNEL("gemm", GemmKernel,
                   "out, a, b, bias?, residual?",
                   "batch_rank:rank, batch_shape[batch_rank]:dim, "
                   "a_batch_strides[batch_rank]:signed, b_batch_strides[batch_rank]:signed, "
                   "M:dim, N:dim, K:dim, a_row_stride:signed, a_col_stride:signed, "
                   "b_row_stride:signed, b_col_stride:signed, act:act, residual_in_c:flag, bf16:flag",
                   "alpha, p0, p1");

}  // namespace
}  // namespace rt
}  // namespace graphopt
