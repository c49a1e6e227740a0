// The operand layout of the batched matrix-product kernels ("gemm" in rt_linear.cpp,
// "matmul_wide" in rt_wide.cpp): out [batch..., M, N] contiguous; a [batch..., M, K] and
// b [batch..., K, N] read through their strides (in elements; a batch stride of 0 broadcasts).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "rt_plan.h"

namespace graphopt {
namespace rt {

struct MatmulLayout {
    std::vector<int64_t> batch_shape, a_batch, b_batch;
    int64_t m = 0, n = 0, k = 0, a_rs = 0, a_cs = 0, b_rs = 0, b_cs = 0, batch_count = 0;

    // Reads batch_rank, batch_shape, the a / b batch strides, M, N, K and the four strides.
    void read(IntReader& r, const std::string& what) {
        const int64_t rank = r.rank("batch_rank");
        batch_shape = r.dims(rank, "batch_shape");
        a_batch = r.strides(rank, "a_batch_strides");
        b_batch = r.strides(rank, "b_batch_strides");
        m = r.dim("M");
        n = r.dim("N");
        k = r.dim("K");
        a_rs = r.signed_param("a_row_stride");
        a_cs = r.signed_param("a_col_stride");
        b_rs = r.signed_param("b_row_stride");
        b_cs = r.signed_param("b_col_stride");
        batch_count = checked_numel(batch_shape, what);
    }
};

// A kernel over a MatmulLayout: reads it and declares what it touches of out, a and b.
class MatmulKernelBase : public Kernel {
   protected:
    // Reads the layout from `r` and checks operands 0 (out), 1 (a) and 2 (b), `elem` bytes
    // per element; returns the output's bytes.
    int64_t read_layout(IntReader& r, const KernelArgs& args, int64_t elem,
                        const std::string& what) {
        MatmulLayout& l = layout_;
        l.read(r, what);
        const int64_t mn = checked_mul(l.m, l.n, what);
        const int64_t out_bytes = checked_mul(checked_mul(l.batch_count, mn, what), elem, what);
        need(args, 0, out_bytes, elem);
        std::vector<int64_t> a_shape = l.batch_shape, a_strides = l.a_batch;
        std::vector<int64_t> b_shape = l.batch_shape, b_strides = l.b_batch;
        a_shape.insert(a_shape.end(), {l.m, l.k});
        a_strides.insert(a_strides.end(), {l.a_rs, l.a_cs});
        b_shape.insert(b_shape.end(), {l.k, l.n});
        b_strides.insert(b_strides.end(), {l.b_rs, l.b_cs});
        if (mn == 0) {  // nothing computed: nothing of a or b is read
            a_shape.back() = 0;
            b_shape.back() = 0;
        }
        need_strided(args, 1, a_shape, a_strides, elem);
        need_strided(args, 2, b_shape, b_strides, elem);
        return out_bytes;
    }

    MatmulLayout layout_;
};

}  // namespace rt
}  // namespace graphopt
