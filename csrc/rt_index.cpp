// Indexing kernels (any element type, moved as raw bytes).
//
// "take"    operands: out, x, index
//           ints: outer, axis_size, inner, count, index_dtype, elem_size, allow_negative
//           out[o, j, i] = x[o, index[j], i]  (embedding, index_select, one advanced index)
// "gather"  operands: out, x, index
//           ints: rank, index_shape[rank], x_strides[rank], axis, axis_size, index_dtype,
//                 elem_size
//           out[p] = x[p with p[axis] replaced by index[p]]  (torch.gather)
// Out-of-range indices raise IndexError (std::out_of_range) naming the node.
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "rt_dtype.h"
#include "rt_parallel.h"
#include "rt_plan.h"

namespace graphopt {
namespace rt {
namespace {

int64_t load_index(const char* base, int64_t i, DType t) {
    if (t == DType::kI32) return reinterpret_cast<const int32_t*>(base)[i];
    return reinterpret_cast<const int64_t*>(base)[i];
}

[[noreturn]] void out_of_range(const std::string& node, int64_t v, int64_t size) {
    throw std::out_of_range("index " + std::to_string(v) + " is out of bounds for size " +
                            std::to_string(size) + " (node " + node + ")");
}

class TakeKernel : public Kernel {
   public:
    explicit TakeKernel(const KernelArgs& args) : name_(args.name) {
        IntReader r(args);
        outer_ = r.next();
        axis_ = r.next();
        inner_ = r.next();
        count_ = r.next();
        index_dtype_ = dtype_from(r.next());
        elem_ = r.next();
        allow_negative_ = r.next() != 0;
    }
    void run(const ExecContext& ctx) const override {
        char* out = ctx.ptr(operands[0]);
        const char* x = ctx.ptr(operands[1]);
        const char* index = ctx.ptr(operands[2]);
        const int64_t row = inner_ * elem_;
        parallel_for(ctx.threads, outer_ * count_, row, [&](int64_t t0, int64_t t1) {
            for (int64_t t = t0; t < t1; ++t) {
                const int64_t o = t / count_, j = t % count_;
                int64_t v = load_index(index, j, index_dtype_);
                if (v < 0 && allow_negative_) v += axis_;
                if (v < 0 || v >= axis_) out_of_range(name_, v, axis_);
                std::memcpy(out + t * row, x + (o * axis_ + v) * row, static_cast<size_t>(row));
            }
        });
    }

   private:
    std::string name_;
    int64_t outer_, axis_, inner_, count_, elem_;
    DType index_dtype_;
    bool allow_negative_;
};

class GatherKernel : public Kernel {
   public:
    explicit GatherKernel(const KernelArgs& args) : name_(args.name) {
        IntReader r(args);
        const int64_t rank = r.next();
        shape_ = r.take(rank);
        x_strides_ = r.take(rank);
        axis_ = r.next();
        axis_size_ = r.next();
        index_dtype_ = dtype_from(r.next());
        elem_ = r.next();
        count_ = 1;
        for (int64_t d : shape_) count_ *= d;
    }
    void run(const ExecContext& ctx) const override {
        char* out = ctx.ptr(operands[0]);
        const char* x = ctx.ptr(operands[1]);
        const char* index = ctx.ptr(operands[2]);
        const int64_t rank = static_cast<int64_t>(shape_.size());
        for (int64_t p = 0; p < count_; ++p) {
            int64_t rest = p, off = 0;
            for (int64_t d = rank - 1; d >= 0; --d) {
                const int64_t i = rest % shape_[d];
                rest /= shape_[d];
                if (d != axis_) off += i * x_strides_[d];
            }
            const int64_t v = load_index(index, p, index_dtype_);
            if (v < 0 || v >= axis_size_) out_of_range(name_, v, axis_size_);
            off += v * x_strides_[axis_];
            std::memcpy(out + p * elem_, x + off * elem_, static_cast<size_t>(elem_));
        }
    }

   private:
    std::string name_;
    std::vector<int64_t> shape_, x_strides_;
    int64_t axis_, axis_size_, elem_, count_;
    DType index_dtype_;
};

GRAPHOPT_RT_KERNEL("take", TakeKernel);
GRAPHOPT_RT_KERNEL("gather", GatherKernel);

}  // namespace
}  // namespace rt
}  // namespace graphopt
