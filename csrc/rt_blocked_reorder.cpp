// Reorders between plain NCHW and the channel-blocked layout (rt_blocked.h), float32.
//
// "to_blocked"    operands: out [N, ceil(C/16), HW, 16], x [N, C, HW];  ints: N, C, HW
//                 (channels past C are written as zeros)
// "from_blocked"  operands: out [N, C, HW], x [N, ceil(C/16), HW, 16];  ints: N, C, HW
#include <algorithm>
#include <string>

#include "rt_blocked.h"
#include "rt_parallel.h"
#include "rt_plan.h"

namespace graphopt {
namespace rt {
namespace {

class ReorderKernel : public Kernel {
   public:
    ReorderKernel(const KernelArgs& args, bool to_blocked) : to_blocked_(to_blocked) {
        IntReader r(args);
        n_ = r.dim("N");
        c_ = r.dim("C");
        hw_ = r.dim("HW");
        const std::string what = (to_blocked ? "to_blocked " : "from_blocked ") + args.name;
        const int64_t blocked = blocked_bytes(n_, c_, hw_, what);
        const int64_t plain = plain_bytes(n_, c_, hw_, what);
        need(args, 0, to_blocked ? blocked : plain, 4);
        need(args, 1, to_blocked ? plain : blocked, 4);
    }

    void run(const ExecContext& ctx) const override {
        float* out = ctx.get<float>(operands[0]);
        const float* x = ctx.get<const float>(operands[1]);
        const int64_t blocks = channel_blocks(c_), hw = hw_;
        parallel_for(ctx.threads, n_ * blocks, hw * kChannelBlock, [&](int64_t t0, int64_t t1) {
            for (int64_t t = t0; t < t1; ++t) {
                const int64_t n = t / blocks, b = t % blocks;
                const int64_t count = std::min(kChannelBlock, c_ - b * kChannelBlock);
                const int64_t plain0 = (n * c_ + b * kChannelBlock) * hw;
                const int64_t blocked0 = t * hw * kChannelBlock;
                if (to_blocked_) {
                    float* dst = out + blocked0;
                    for (int64_t ci = 0; ci < count; ++ci) {
                        const float* src = x + plain0 + ci * hw;
                        for (int64_t p = 0; p < hw; ++p) dst[p * kChannelBlock + ci] = src[p];
                    }
                    for (int64_t ci = count; ci < kChannelBlock; ++ci) {
                        for (int64_t p = 0; p < hw; ++p) dst[p * kChannelBlock + ci] = 0.0f;
                    }
                } else {
                    const float* src = x + blocked0;
                    for (int64_t ci = 0; ci < count; ++ci) {
                        float* dst = out + plain0 + ci * hw;
                        for (int64_t p = 0; p < hw; ++p) dst[p] = src[p * kChannelBlock + ci];
                    }
                }
            }
        });
    }

   private:
    bool to_blocked_;
    int64_t n_ = 0, c_ = 0, hw_ = 0;
};

class ToBlockedKernel : public ReorderKernel {
   public:
    explicit ToBlockedKernel(const KernelArgs& args) : ReorderKernel(args, true) {}
};

class FromBlockedKernel : public ReorderKernel {
   public:
    explicit FromBlockedKernel(const KernelArgs& args) : ReorderKernel(args, false) {}
};

GRAPHOPT_RT_KERNEL("to_blocked", ToBlockedKernel, "out, x", "N:dim, C:dim, HW:dim", "");
GRAPHOPT_RT_KERNEL("from_blocked", FromBlockedKernel, "out, x", "N:dim, C:dim, HW:dim", "");

}  // namespace
}  // namespace rt
}  // namespace graphopt
