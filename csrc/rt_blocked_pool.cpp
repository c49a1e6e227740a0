// Pooling on the channel-blocked layout (rt_blocked.h): "max_pool2d_blocked" (NaN-propagating
// max over the taps inside the input, torch semantics; the per-ISA rows of rt_blocked_impl.h)
// and "global_avg_pool_blocked" (a blocked [N, C, H, W] to a plain [N, C, 1, 1] mean).
#include <algorithm>
#include <array>
#include <string>

#include "rt_blocked.h"
#include "rt_parallel.h"
#include "rt_plan.h"

namespace graphopt {
namespace rt {
namespace {

class BlockedMaxPoolKernel : public Kernel {
   public:
    explicit BlockedMaxPoolKernel(const KernelArgs& args) {
        IntReader r(args);
        const std::string what = "max_pool2d_blocked " + args.name;
        n_ = r.dim("N"); c_ = r.dim("C");
        job_.h = r.dim("H"); job_.w = r.dim("W"); job_.ho = r.dim("Ho"); job_.wo = r.dim("Wo");
        job_.kh = r.positive("kernel_h"); job_.kw = r.positive("kernel_w");
        job_.sh = r.positive("stride_h"); job_.sw = r.positive("stride_w");
        job_.ph = r.dim("pad_h"); job_.pw = r.dim("pad_w");
        job_.dh = r.positive("dilation_h"); job_.dw = r.positive("dilation_w");
        for (const auto& [out, stride, k, dil, pad, in] :
             {std::array<int64_t, 6>{job_.ho, job_.sh, job_.kh, job_.dh, job_.ph, job_.h},
              std::array<int64_t, 6>{job_.wo, job_.sw, job_.kw, job_.dw, job_.pw, job_.w}}) {
            const int64_t reach =
                checked_add(checked_mul(std::max<int64_t>(out - 1, 0), stride, what),
                            checked_mul(k - 1, dil, what), what);
            checked_add(checked_add(reach, pad, what), in, what);
        }
        need(args, 0, blocked_bytes(n_, c_, checked_mul(job_.ho, job_.wo, what), what), 4);
        need(args, 1, blocked_bytes(n_, c_, checked_mul(job_.h, job_.w, what), what), 4);
    }

    void run(const ExecContext& ctx) const override {
        BlockedPoolJob job = job_;
        job.x = ctx.get<const float>(operands[1]);
        job.out = ctx.get<float>(operands[0]);
        const BlockedOps& ops = blocked_ops();
        const int64_t blocks = n_ * channel_blocks(c_);
        parallel_for(ctx.threads, blocks * job.ho, job.wo * job.kh * job.kw * 16,
                     [&](int64_t t0, int64_t t1) {
            for (int64_t t = t0; t < t1; ++t) {
                ops.max_pool(job, t / job.ho, t % job.ho, t % job.ho + 1);
            }
        });
    }

   private:
    int64_t n_ = 0, c_ = 0;
    BlockedPoolJob job_;
};

class BlockedGlobalAvgPoolKernel : public Kernel {
   public:
    explicit BlockedGlobalAvgPoolKernel(const KernelArgs& args) {
        IntReader r(args);
        const std::string what = "global_avg_pool_blocked " + args.name;
        n_ = r.dim("N"); c_ = r.dim("C"); hw_ = r.dim("HW");
        need(args, 0, plain_bytes(n_, c_, 1, what), 4);
        need(args, 1, blocked_bytes(n_, c_, hw_, what), 4);
    }

    void run(const ExecContext& ctx) const override {
        float* out = ctx.get<float>(operands[0]);
        const float* x = ctx.get<const float>(operands[1]);
        const int64_t blocks = channel_blocks(c_);
        const float scale = hw_ > 0 ? 1.0f / static_cast<float>(hw_)
                                    : std::numeric_limits<float>::quiet_NaN();
        parallel_for(ctx.threads, n_ * blocks, hw_ * kChannelBlock, [&](int64_t t0, int64_t t1) {
            for (int64_t t = t0; t < t1; ++t) {
                const int64_t n = t / blocks, b = t % blocks;
                float sum[kChannelBlock] = {};
                const float* xb = x + t * hw_ * kChannelBlock;
                for (int64_t p = 0; p < hw_; ++p) {
                    for (int64_t l = 0; l < kChannelBlock; ++l) sum[l] += xb[p * kChannelBlock + l];
                }
                const int64_t count = std::min(kChannelBlock, c_ - b * kChannelBlock);
                for (int64_t l = 0; l < count; ++l) {
                    out[n * c_ + b * kChannelBlock + l] = sum[l] * scale;
                }
            }
        });
    }

   private:
    int64_t n_ = 0, c_ = 0, hw_ = 0;
};

GRAPHOPT_RT_KERNEL("max_pool2d_blocked", BlockedMaxPoolKernel, "out, x",
                   "N:dim, C:dim, H:dim, W:dim, Ho:dim, Wo:dim, kernel_h:positive, "
                   "kernel_w:positive, stride_h:positive, stride_w:positive, pad_h:dim, "
                   "pad_w:dim, dilation_h:positive, dilation_w:positive",
                   "");
GRAPHOPT_RT_KERNEL("global_avg_pool_blocked", BlockedGlobalAvgPoolKernel, "out, x",
                   "N:dim, C:dim, HW:dim", "");

}  // namespace
}  // namespace rt
}  // namespace graphopt
