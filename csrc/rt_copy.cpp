// Data movement kernels: strided copy (materialises views: permute, expand, slice, concat
// pieces, split pieces...) and fill.
//
// "copy"  operands: dst, src
//         ints: elem_size, rank, shape[rank], dst_strides[rank], src_strides[rank]
//         Strides are in elements and may be 0 (broadcast) or negative (flip). The planner
//         collapses mergeable dims first, so the inner loop is as long as possible.
// "fill"  operands: dst; ints: elem_size, count, bit pattern (the value's bytes, little endian)
#include <cstring>
#include <memory>
#include <vector>

#include "rt_parallel.h"
#include "rt_plan.h"

namespace graphopt {
namespace rt {
namespace {

template <typename T>
void copy_inner(char* dst, int64_t ds, const char* src, int64_t ss, int64_t n) {
    T* d = reinterpret_cast<T*>(dst);
    const T* s = reinterpret_cast<const T*>(src);
    if (ss == 0) {
        const T v = *s;
        for (int64_t i = 0; i < n; ++i) d[i * ds] = v;
    } else {
        for (int64_t i = 0; i < n; ++i) d[i * ds] = s[i * ss];
    }
}

class CopyKernel : public Kernel {
   public:
    explicit CopyKernel(const KernelArgs& args) {
        IntReader r(args);
        elem_ = r.next();
        const int64_t rank = r.rank("rank");
        shape_ = r.dims(rank, "shape");
        dst_strides_ = r.strides(rank, "dst_strides");
        src_strides_ = r.strides(rank, "src_strides");
        if (rank == 0) {
            shape_ = {1};
            dst_strides_ = {1};
            src_strides_ = {1};
        }
        if (elem_ != 1 && elem_ != 2 && elem_ != 4 && elem_ != 8) {
            throw PlanError("copy " + args.name + ": element size must be 1, 2, 4 or 8");
        }
        need_strided(args, 0, shape_, dst_strides_, elem_);
        need_strided(args, 1, shape_, src_strides_, elem_);
        outer_ = checked_numel({shape_.begin(), shape_.end() - 1}, "copy " + args.name);
    }

    void run(const ExecContext& ctx) const override {
        char* dst = ctx.ptr(operands[0]);
        const char* src = ctx.ptr(operands[1]);
        const int64_t rank = static_cast<int64_t>(shape_.size());
        const int64_t n = shape_.back();
        const int64_t ds = dst_strides_.back(), ss = src_strides_.back();
        parallel_for(ctx.threads, outer_, n * elem_, [&](int64_t begin, int64_t end) {
            std::vector<int64_t> idx(static_cast<size_t>(rank), 0);
            // Unravel `begin` over the outer dims.
            int64_t rest = begin;
            for (int64_t d = rank - 2; d >= 0; --d) {
                idx[d] = rest % shape_[d];
                rest /= shape_[d];
            }
            for (int64_t o = begin; o < end; ++o) {
                int64_t doff = 0, soff = 0;
                for (int64_t d = 0; d + 1 < rank; ++d) {
                    doff += idx[d] * dst_strides_[d];
                    soff += idx[d] * src_strides_[d];
                }
                char* dp = dst + doff * elem_;
                const char* sp = src + soff * elem_;
                if (ds == 1 && ss == 1) {
                    std::memcpy(dp, sp, static_cast<size_t>(n * elem_));
                } else {
                    switch (elem_) {
                        case 1: copy_inner<uint8_t>(dp, ds, sp, ss, n); break;
                        case 2: copy_inner<uint16_t>(dp, ds, sp, ss, n); break;
                        case 4: copy_inner<uint32_t>(dp, ds, sp, ss, n); break;
                        default: copy_inner<uint64_t>(dp, ds, sp, ss, n); break;
                    }
                }
                for (int64_t d = rank - 2; d >= 0; --d) {
                    if (++idx[d] < shape_[d]) break;
                    idx[d] = 0;
                }
            }
        });
    }

   private:
    int64_t elem_ = 4, outer_ = 1;
    std::vector<int64_t> shape_, dst_strides_, src_strides_;
};

class FillKernel : public Kernel {
   public:
    explicit FillKernel(const KernelArgs& args) {
        IntReader r(args);
        elem_ = r.next();
        count_ = r.dim("count");
        pattern_ = static_cast<uint64_t>(r.next());
        if (elem_ != 1 && elem_ != 2 && elem_ != 4 && elem_ != 8) {
            throw PlanError("fill " + args.name + ": element size must be 1, 2, 4 or 8");
        }
        need(args, 0, checked_mul(count_, elem_, "fill " + args.name), elem_);
    }
    void run(const ExecContext& ctx) const override {
        char* dst = ctx.ptr(operands[0]);
        if (pattern_ == 0) {
            std::memset(dst, 0, static_cast<size_t>(count_ * elem_));
            return;
        }
        for (int64_t i = 0; i < count_; ++i) std::memcpy(dst + i * elem_, &pattern_, elem_);
    }

   private:
    int64_t elem_ = 4, count_ = 0;
    uint64_t pattern_ = 0;
};

GRAPHOPT_RT_KERNEL("copy", CopyKernel,
                   "dst, src",
                   "elem:elem, rank:rank, shape[rank]:dim, dst_strides[rank]:signed, "
                   "src_strides[rank]:signed",
                   "");
GRAPHOPT_RT_KERNEL("fill", FillKernel,
                   "out",
                   "elem:elem, count:dim, pattern:bits",
                   "");

}  // namespace
}  // namespace rt
}  // namespace graphopt
