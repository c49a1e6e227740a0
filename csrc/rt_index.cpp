// Indexing kernels (any element type, moved as raw bytes).
//
// "take"    operands: out, x, index
//           ints: outer, axis_size, inner, count, index_dtype, elem_size, allow_negative
//           out[o, j, i] = x[o, index[j], i]  (embedding, index_select, one advanced index)
// "gather"  operands: out, x, index
//           ints: rank, index_shape[rank], x_strides[rank], axis, axis_size, index_dtype,
//                 elem_size, allow_negative
//           out[p] = x[p with p[axis] replaced by index[p]]  (torch.gather; with
//           allow_negative, a negative index counts from the end: ONNX GatherElements)
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

// Index tensors are int32 or int64 (load_index reads nothing else).
DType index_dtype(const KernelArgs& args, int64_t code) {
    const DType t = dtype_from(code);
    if (t != DType::kI32 && t != DType::kI64) {
        throw PlanError("indexing step " + args.name + ": indices must be int32 or int64");
    }
    return t;
}

[[noreturn]] void out_of_range(const std::string& node, int64_t v, int64_t size) {
    throw std::out_of_range("index " + std::to_string(v) + " is out of bounds for size " +
                            std::to_string(size) + " (node " + node + ")");
}

class TakeKernel : public Kernel {
   public:
    explicit TakeKernel(const KernelArgs& args) : name_(args.name) {
        IntReader r(args);
        outer_ = r.dim("outer");
        axis_ = r.dim("axis_size");
        inner_ = r.dim("inner");
        count_ = r.dim("count");
        index_dtype_ = index_dtype(args, r.next());
        elem_ = r.in(1, 16, "elem_size");
        allow_negative_ = r.next() != 0;
        const std::string what = "take " + args.name;
        const int64_t row = checked_mul(inner_, elem_, what);
        need(args, 0, checked_mul(checked_mul(outer_, count_, what), row, what), 1);
        need(args, 1, checked_mul(checked_mul(outer_, axis_, what), row, what), 1);
        const int64_t index_size = dtype_size(index_dtype_);
        need(args, 2, checked_mul(count_, index_size, what), index_size);
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
        const int64_t rank = r.rank("rank");
        shape_ = r.dims(rank, "index_shape");
        x_strides_ = r.strides(rank, "x_strides");
        axis_ = r.in(0, std::max<int64_t>(rank - 1, 0), "axis");
        axis_size_ = r.dim("axis_size");
        index_dtype_ = index_dtype(args, r.next());
        elem_ = r.in(1, 16, "elem_size");
        allow_negative_ = r.next() != 0;
        const std::string what = "gather " + args.name;
        count_ = checked_numel(shape_, what);
        if (rank == 0) {
            shape_ = {1};  // a 0-d gather reads one index along a size-1 axis
            x_strides_ = {0};
        }
        need(args, 0, checked_mul(count_, elem_, what), 1);
        const int64_t index_size = dtype_size(index_dtype_);
        need(args, 2, checked_mul(count_, index_size, what), index_size);
        std::vector<int64_t> x_shape = shape_;
        x_shape[static_cast<size_t>(axis_)] = count_ == 0 ? 0 : axis_size_;
        need_strided(args, 1, x_shape, x_strides_, elem_);
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
            int64_t v = load_index(index, p, index_dtype_);
            if (v < 0 && allow_negative_) v += axis_size_;
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
    bool allow_negative_ = false;
};

GRAPHOPT_RT_KERNEL("take", TakeKernel,
                   "out, x, index",
                   "outer:dim, axis_size:dim, inner:dim, count:dim, index_dtype:dtype, elem:elem, "
                   "allow_negative:flag",
                   "");
GRAPHOPT_RT_KERNEL("gather", GatherKernel,
                   "out, x, index",
                   "rank:rank, index_shape[rank]:dim, x_strides[rank]:signed, axis:dim, "
                   "axis_size:dim, index_dtype:dtype, elem:elem, allow_negative:flag",
                   "");

}  // namespace
}  // namespace rt
}  // namespace graphopt
