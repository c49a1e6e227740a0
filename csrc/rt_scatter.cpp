// Index-tuple gathers and scatters (ONNX GatherND, ScatterElements, ScatterND). All operands
// are contiguous; index tensors are int32 or int64; negative indices count from the end and
// out-of-range ones raise IndexError (std::out_of_range) naming the node.
//
// "gather_nd"        operands: out, x, indices
//                    ints: batch, k, dims[k], inner, count, index_dtype, elem
//                    x is [batch, dims..., inner], indices [batch, count, k];
//                    out[b, j, :] = x[b, indices[b, j, 0], ..., indices[b, j, k-1], :]
// "scatter_elements" operands: out, x, index, updates (out may alias x)
//                    ints: rank, x_shape[rank], index_shape[rank], axis, index_dtype,
//                          reduction (0 none, 1 add, 2 mul, 3 max, 4 min), dtype
//                    out = x, then out[p with p[axis] = index[p]] (op)= updates[p]
// "scatter_nd"       operands: out, x, indices, updates (out may alias x)
//                    ints: k, dims[k], inner, count, index_dtype, reduction, dtype
//                    out = x, then out[indices[j], :] (op)= updates[j, :] for j in order
#include <algorithm>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "rt_dtype.h"
#include "rt_int_wrap.h"
#include "rt_parallel.h"
#include "rt_plan.h"

namespace graphopt {
namespace rt {
namespace {

int64_t read_index(const char* base, int64_t i, DType t) {
    if (t == DType::kI32) return reinterpret_cast<const int32_t*>(base)[i];
    return reinterpret_cast<const int64_t*>(base)[i];
}

DType checked_index_dtype(const KernelArgs& args, int64_t code) {
    const DType t = dtype_from(code);
    if (t != DType::kI32 && t != DType::kI64) {
        throw PlanError("indexing step " + args.name + ": indices must be int32 or int64");
    }
    return t;
}

// v wrapped (negative counts from the end) and checked against size.
int64_t wrapped(const std::string& node, int64_t v, int64_t size) {
    const int64_t w = v < 0 ? v + size : v;
    if (w < 0 || w >= size) {
        throw std::out_of_range("index " + std::to_string(v) + " is out of bounds for size " +
                                std::to_string(size) + " (node " + node + ")");
    }
    return w;
}

template <typename T>
T combine(int reduction, T a, T b) {
    switch (reduction) {
        case 1:
            if constexpr (std::is_floating_point_v<T>) return a + b; else return wrap_add<T>(a, b);
        case 2:
            if constexpr (std::is_floating_point_v<T>) return a * b; else return wrap_mul<T>(a, b);
        case 3: return std::max(a, b);
        case 4: return std::min(a, b);
        default: return b;
    }
}

void copy_input(char* out, const char* x, int64_t bytes) {
    if (out != x && bytes > 0) std::memcpy(out, x, static_cast<size_t>(bytes));
}

class GatherNdKernel : public Kernel {
   public:
    explicit GatherNdKernel(const KernelArgs& args) : name_(args.name) {
        IntReader r(args);
        batch_ = r.dim("batch");
        const int64_t k = r.rank("k");
        dims_ = r.dims(k, "dims");
        inner_ = r.dim("inner");
        count_ = r.dim("count");
        index_dtype_ = checked_index_dtype(args, r.next());
        elem_ = r.in(1, 16, "elem_size");
        const std::string what = "gather_nd " + args.name;
        const int64_t row = checked_mul(inner_, elem_, what);
        const int64_t rows = checked_mul(batch_, count_, what);
        slab_ = checked_numel(dims_, what);
        need(args, 0, checked_mul(rows, row, what), 1);
        need(args, 1, checked_mul(checked_mul(batch_, slab_, what), row, what), 1);
        const int64_t isz = dtype_size(index_dtype_);
        need(args, 2, checked_mul(checked_mul(rows, k, what), isz, what), isz);
    }
    void run(const ExecContext& ctx) const override {
        char* out = ctx.ptr(operands[0]);
        const char* x = ctx.ptr(operands[1]);
        const char* idx = ctx.ptr(operands[2]);
        const int64_t k = static_cast<int64_t>(dims_.size()), row = inner_ * elem_;
        for (int64_t t = 0; t < batch_ * count_; ++t) {
            int64_t linear = 0;
            for (int64_t j = 0; j < k; ++j) {
                linear = linear * dims_[j] +
                         wrapped(name_, read_index(idx, t * k + j, index_dtype_), dims_[j]);
            }
            const int64_t b = t / std::max<int64_t>(count_, 1);
            std::memcpy(out + t * row, x + (b * slab_ + linear) * row, static_cast<size_t>(row));
        }
    }

   private:
    std::string name_;
    int64_t batch_, inner_, count_, elem_, slab_ = 1;
    std::vector<int64_t> dims_;
    DType index_dtype_;
};

class ScatterElementsKernel : public Kernel {
   public:
    explicit ScatterElementsKernel(const KernelArgs& args) : name_(args.name) {
        IntReader r(args);
        const int64_t rank = r.rank("rank");
        if (rank == 0) throw PlanError("scatter_elements " + args.name + ": rank 0");
        x_shape_ = r.dims(rank, "x_shape");
        index_shape_ = r.dims(rank, "index_shape");
        axis_ = r.in(0, std::max<int64_t>(rank - 1, 0), "axis");
        index_dtype_ = checked_index_dtype(args, r.next());
        reduction_ = static_cast<int>(r.in(0, 4, "reduction"));
        dtype_ = dtype_from(r.next());
        const std::string what = "scatter_elements " + args.name;
        for (int64_t d = 0; d < rank; ++d) {
            if (d != axis_ && index_shape_[d] > x_shape_[d]) {
                throw PlanError(what + ": index dim " + std::to_string(d) + " exceeds x's");
            }
        }
        const int64_t elem = dtype_size(dtype_);
        x_bytes_ = checked_mul(checked_numel(x_shape_, what), elem, what);
        count_ = checked_numel(index_shape_, what);
        need(args, 0, x_bytes_, elem);
        need(args, 1, x_bytes_, elem);
        const int64_t isz = dtype_size(index_dtype_);
        need(args, 2, checked_mul(count_, isz, what), isz);
        need(args, 3, checked_mul(count_, elem, what), elem);
    }
    void run(const ExecContext& ctx) const override {
        char* out = ctx.ptr(operands[0]);
        copy_input(out, ctx.ptr(operands[1]), x_bytes_);
        const char* idx = ctx.ptr(operands[2]);
        const char* upd = ctx.ptr(operands[3]);
        const int64_t rank = static_cast<int64_t>(x_shape_.size());
        std::vector<int64_t> x_strides(static_cast<size_t>(rank), 1);
        for (int64_t d = rank - 2; d >= 0; --d) x_strides[d] = x_strides[d + 1] * x_shape_[d + 1];
        dispatch_dtype(dtype_, [&](auto tag) {
            using T = decltype(tag);
            T* ys = reinterpret_cast<T*>(out);
            const T* us = reinterpret_cast<const T*>(upd);
            for (int64_t p = 0; p < count_; ++p) {
                int64_t rest = p, off = 0;
                for (int64_t d = rank - 1; d >= 0; --d) {
                    const int64_t i = rest % index_shape_[d];
                    rest /= index_shape_[d];
                    if (d != axis_) off += i * x_strides[d];
                }
                const int64_t v = wrapped(name_, read_index(idx, p, index_dtype_),
                                          x_shape_[axis_]);
                off += v * x_strides[axis_];
                ys[off] = combine<T>(reduction_, ys[off], us[p]);
            }
        });
    }

   private:
    std::string name_;
    std::vector<int64_t> x_shape_, index_shape_;
    int64_t axis_, count_ = 0, x_bytes_ = 0;
    int reduction_ = 0;
    DType index_dtype_, dtype_;
};

class ScatterNdKernel : public Kernel {
   public:
    explicit ScatterNdKernel(const KernelArgs& args) : name_(args.name) {
        IntReader r(args);
        const int64_t k = r.rank("k");
        dims_ = r.dims(k, "dims");
        inner_ = r.dim("inner");
        count_ = r.dim("count");
        index_dtype_ = checked_index_dtype(args, r.next());
        reduction_ = static_cast<int>(r.in(0, 4, "reduction"));
        dtype_ = dtype_from(r.next());
        const std::string what = "scatter_nd " + args.name;
        const int64_t elem = dtype_size(dtype_);
        x_bytes_ = checked_mul(checked_mul(checked_numel(dims_, what), inner_, what), elem, what);
        need(args, 0, x_bytes_, elem);
        need(args, 1, x_bytes_, elem);
        const int64_t isz = dtype_size(index_dtype_);
        need(args, 2, checked_mul(checked_mul(count_, k, what), isz, what), isz);
        need(args, 3, checked_mul(checked_mul(count_, inner_, what), elem, what), elem);
    }
    void run(const ExecContext& ctx) const override {
        char* out = ctx.ptr(operands[0]);
        copy_input(out, ctx.ptr(operands[1]), x_bytes_);
        const char* idx = ctx.ptr(operands[2]);
        const char* upd = ctx.ptr(operands[3]);
        const int64_t k = static_cast<int64_t>(dims_.size());
        dispatch_dtype(dtype_, [&](auto tag) {
            using T = decltype(tag);
            T* ys = reinterpret_cast<T*>(out);
            const T* us = reinterpret_cast<const T*>(upd);
            for (int64_t j = 0; j < count_; ++j) {
                int64_t linear = 0;
                for (int64_t d = 0; d < k; ++d) {
                    linear = linear * dims_[d] +
                             wrapped(name_, read_index(idx, j * k + d, index_dtype_), dims_[d]);
                }
                T* dst = ys + linear * inner_;
                const T* src = us + j * inner_;
                for (int64_t i = 0; i < inner_; ++i) dst[i] = combine<T>(reduction_, dst[i], src[i]);
            }
        });
    }

   private:
    std::string name_;
    std::vector<int64_t> dims_;
    int64_t inner_, count_, x_bytes_ = 0;
    int reduction_ = 0;
    DType index_dtype_, dtype_;
};

GRAPHOPT_RT_KERNEL("gather_nd", GatherNdKernel,
                   "out, x, indices",
                   "batch:dim, k:rank, dims[k]:dim, inner:dim, count:dim, index_dtype:dtype, "
                   "elem:elem",
                   "");
GRAPHOPT_RT_KERNEL("scatter_elements", ScatterElementsKernel,
                   "out, x, index, updates",
                   "rank:rank, x_shape[rank]:dim, index_shape[rank]:dim, axis:dim, "
                   "index_dtype:dtype, reduction:mode, dtype:dtype",
                   "");
GRAPHOPT_RT_KERNEL("scatter_nd", ScatterNdKernel,
                   "out, x, indices, updates",
                   "k:rank, dims[k]:dim, inner:dim, count:dim, index_dtype:dtype, "
                   "reduction:mode, dtype:dtype",
                   "");

}  // namespace
}  // namespace rt
}  // namespace graphopt
