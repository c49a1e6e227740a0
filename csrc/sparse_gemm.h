// The CSR x dense tile routines shared by graphopt._C.sparse_linear (sparse_gemm.cpp) and the
// native runtime's "sparse_linear" plan kernel (rt_sparse.cpp).
//
// A tile is up to kTile rows of X stored transposed, xt[k][0:ld] (ld = tile width rounded up to
// 8, padding columns zero). For output features n in [n0, n1) the routines compute
//     yt[n][0:ld] (+)= sum_{j in [lo[n], hi[n])} values[j] * xt[indices[j]][0:ld]
// storing on the first K block and accumulating on later ones (`accumulate`).
#pragma once

#include <cstdint>

namespace graphopt {
namespace sparse {

constexpr int64_t kTile = 64;  // X rows per tile: 8 AVX2 accumulators

struct Csr {
    const int32_t* indptr;
    const int32_t* indices;
    const float* values;
    int64_t rows;  // N
};

// Row n's non-zeros in the current K block are [lo[n], hi[n]).
struct RowRanges {
    const int32_t* lo;
    const int32_t* hi;
};

void spmm_tile_portable(const Csr& w, RowRanges rows, const float* xt, int64_t ld, float* yt,
                        int64_t n0, int64_t n1, bool accumulate);
// Only after cpu_features().use_avx2_fma said yes.
void spmm_tile_avx2(const Csr& w, RowRanges rows, const float* xt, int64_t ld, float* yt,
                    int64_t n0, int64_t n1, bool accumulate);

}  // namespace sparse
}  // namespace graphopt
