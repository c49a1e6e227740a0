// Codebook lookup of shared weights (Deep Compression weight sharing).
//
// "codebook_decode"  operands: out (f32), indices (uint8 or uint16), centroids (f32 [table])
//                    ints: count, index_dtype, table
//                    out[i] = 0 where indices[i] == 0 (a pruned weight), else
//                    centroids[indices[i] - 1]
// The weight is usually a constant, decoded once when the plan is built (folding); this step
// runs the lookup when the indices or the codebook are computed at run time. An index past the
// codebook raises IndexError (std::out_of_range) naming the node.
#include <cstdint>
#include <stdexcept>
#include <string>

#include "rt_dtype.h"
#include "rt_parallel.h"
#include "rt_plan.h"

namespace graphopt {
namespace rt {
namespace {

template <typename Index>
void decode(const Index* index, const float* centroids, int64_t table, float* out,
            int64_t begin, int64_t end, const std::string& node) {
    for (int64_t i = begin; i < end; ++i) {
        const int64_t v = index[i];
        if (v > table) {
            throw std::out_of_range("codebook index " + std::to_string(v) +
                                    " is past the codebook of " + std::to_string(table) +
                                    " entries (node " + node + ")");
        }
        out[i] = v == 0 ? 0.0f : centroids[v - 1];
    }
}

class CodebookDecodeKernel : public Kernel {
   public:
    explicit CodebookDecodeKernel(const KernelArgs& args) : name_(args.name) {
        IntReader r(args);
        count_ = r.dim("count");
        index_dtype_ = dtype_from(r.next());
        if (index_dtype_ != DType::kU8 && index_dtype_ != DType::kU16) {
            throw PlanError("codebook_decode step " + args.name +
                            ": indices must be uint8 or uint16");
        }
        table_ = r.dim("table");
        const std::string what = "codebook_decode " + args.name;
        need(args, 0, checked_mul(count_, 4, what), 4);
        const int64_t index_size = dtype_size(index_dtype_);
        need(args, 1, checked_mul(count_, index_size, what), index_size);
        need(args, 2, checked_mul(table_, 4, what), 4);
    }
    void run(const ExecContext& ctx) const override {
        auto* out = reinterpret_cast<float*>(ctx.ptr(operands[0]));
        const char* index = ctx.ptr(operands[1]);
        const auto* centroids = reinterpret_cast<const float*>(ctx.ptr(operands[2]));
        parallel_for(ctx.threads, count_, 1, [&](int64_t begin, int64_t end) {
            if (index_dtype_ == DType::kU8) {
                decode(reinterpret_cast<const uint8_t*>(index), centroids, table_, out, begin,
                       end, name_);
            } else {
                decode(reinterpret_cast<const uint16_t*>(index), centroids, table_, out, begin,
                       end, name_);
            }
        });
    }

   private:
    std::string name_;
    int64_t count_, table_;
    DType index_dtype_;
};

GRAPHOPT_RT_KERNEL("codebook_decode", CodebookDecodeKernel, "out, indices, centroids",
                   "count:dim, index_dtype:dtype, table:dim", "");

}  // namespace
}  // namespace rt
}  // namespace graphopt
