// Sparse x dense GEMM for pruned linear layers (graphopt._C.sparse_linear):
//
//     Y[M, N] = act(X[M, K] @ W^T + bias),   W [N, K] in CSR (rows = output features)
//
// Unstructured pruning leaves W with 80-95% zeros scattered at random, so every stored weight
// w[n, k] is used against a whole column X[:, k]. The kernel packs a tile of up to 64 rows of X
// transposed (Xt[k][0:64], zero-padded to a multiple of 8), then for each output feature n
// accumulates w * Xt[k] into 8 AVX2 registers (64 outputs) over the row's non-zeros: one
// broadcast, 8 loads and 8 FMAs per non-zero. K is walked in blocks of 1024 so that the Xt slice
// being read stays in L2 (needs sorted column indices). The result tile (transposed) is
// written back into Y and the shared GEMM epilogue adds bias + activation. Threads split the
// output features. Work is proportional to nnz * M, so the kernel beats the dense SGEMM once
// the density is low enough (graphopt/prune/sparse.py holds the cross-over, measured by
// benchmarks/bench_prune.py).
#include <omp.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "cpu.h"
#include "epilogue.h"
#include "sparse_gemm.h"

namespace py = pybind11;

namespace graphopt {
namespace sparse {

// yt[n][0:ld] (+)= sum_j values[j] * xt[indices[j]][0:ld] for n in [n0, n1); ld = padded width
// (the padding columns of xt are zero). The first K block stores, later ones accumulate.
void spmm_tile_portable(const Csr& w, RowRanges rows, const float* xt, int64_t ld, float* yt,
                        int64_t n0, int64_t n1, bool accumulate) {
    float acc[kTile];  // ld <= kTile; no allocation (the plan kernel calls this per run)
    for (int64_t n = n0; n < n1; ++n) {
        float* out = yt + n * ld;
        for (int64_t c = 0; c < ld; ++c) acc[c] = accumulate ? out[c] : 0.0f;
        for (int32_t j = rows.lo[n]; j < rows.hi[n]; ++j) {
            const float v = w.values[j];
            const float* x = xt + static_cast<int64_t>(w.indices[j]) * ld;
            for (int64_t c = 0; c < ld; ++c) acc[c] += v * x[c];
        }
        std::memcpy(out, acc, sizeof(float) * static_cast<size_t>(ld));
    }
}

GRAPHOPT_TARGET_AVX2_FMA
void spmm_tile_avx2(const Csr& w, RowRanges rows, const float* xt, int64_t ld, float* yt,
                    int64_t n0, int64_t n1, bool accumulate) {
    const int64_t vectors = ld / 8;
    for (int64_t n = n0; n < n1; ++n) {
        const int32_t begin = rows.lo[n], end = rows.hi[n];
        float* out = yt + n * ld;
        if (vectors == 8) {
            __m256 a0, a1, a2, a3, a4, a5, a6, a7;
            if (accumulate) {
                a0 = _mm256_loadu_ps(out + 0), a1 = _mm256_loadu_ps(out + 8);
                a2 = _mm256_loadu_ps(out + 16), a3 = _mm256_loadu_ps(out + 24);
                a4 = _mm256_loadu_ps(out + 32), a5 = _mm256_loadu_ps(out + 40);
                a6 = _mm256_loadu_ps(out + 48), a7 = _mm256_loadu_ps(out + 56);
            } else {
                a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = _mm256_setzero_ps();
            }
            for (int32_t j = begin; j < end; ++j) {
                const __m256 v = _mm256_broadcast_ss(w.values + j);
                const float* x = xt + static_cast<int64_t>(w.indices[j]) * ld;
                a0 = _mm256_fmadd_ps(v, _mm256_loadu_ps(x + 0), a0);
                a1 = _mm256_fmadd_ps(v, _mm256_loadu_ps(x + 8), a1);
                a2 = _mm256_fmadd_ps(v, _mm256_loadu_ps(x + 16), a2);
                a3 = _mm256_fmadd_ps(v, _mm256_loadu_ps(x + 24), a3);
                a4 = _mm256_fmadd_ps(v, _mm256_loadu_ps(x + 32), a4);
                a5 = _mm256_fmadd_ps(v, _mm256_loadu_ps(x + 40), a5);
                a6 = _mm256_fmadd_ps(v, _mm256_loadu_ps(x + 48), a6);
                a7 = _mm256_fmadd_ps(v, _mm256_loadu_ps(x + 56), a7);
            }
            _mm256_storeu_ps(out + 0, a0);
            _mm256_storeu_ps(out + 8, a1);
            _mm256_storeu_ps(out + 16, a2);
            _mm256_storeu_ps(out + 24, a3);
            _mm256_storeu_ps(out + 32, a4);
            _mm256_storeu_ps(out + 40, a5);
            _mm256_storeu_ps(out + 48, a6);
            _mm256_storeu_ps(out + 56, a7);
            continue;
        }
        for (int64_t v0 = 0; v0 < vectors; ++v0) {  // a narrow last tile: one vector at a time
            __m256 a = accumulate ? _mm256_loadu_ps(out + v0 * 8) : _mm256_setzero_ps();
            for (int32_t j = begin; j < end; ++j) {
                const float* x = xt + static_cast<int64_t>(w.indices[j]) * ld + v0 * 8;
                a = _mm256_fmadd_ps(_mm256_broadcast_ss(w.values + j), _mm256_loadu_ps(x), a);
            }
            _mm256_storeu_ps(out + v0 * 8, a);
        }
    }
}

}  // namespace sparse

namespace {

using sparse::Csr;
using sparse::kTile;
using sparse::RowRanges;
using sparse::spmm_tile_avx2;
using sparse::spmm_tile_portable;

// y (row-major [M, N], ldy) = act(x [M, K] @ W^T + bias).
//
// One parallel region with a single barrier: the threads first pack all of X transposed, tile by
// tile (Xt[tile][k][0:64]), then each thread owns a contiguous range of output features holding
// an equal share of the non-zeros and runs every tile and K block for them on its own, writing
// its columns of Y and applying the epilogue to them. (A barrier per tile or K block costs a
// scheduler time slice whenever another process holds one of the cores.) With column indices
// sorted within each row, K is walked in blocks of 1024 so that the Xt slice being read (256 KiB)
// stays in L2 while every row's non-zeros of that block are applied.
void sparse_linear(const float* x, int64_t m, int64_t k, int64_t ldx, const Csr& w,
                   bool sorted, const float* bias, Activation act, float* y, int64_t ldy,
                   int threads, bool force_portable) {
    constexpr int64_t kBlockRows = 1024;
    const bool avx2 = cpu_features().use_avx2_fma && !force_portable;
    const int64_t n = w.rows;
    const int64_t kb = sorted ? kBlockRows : std::max<int64_t>(k, 1);
    const int64_t tiles = (m + kTile - 1) / kTile;
    if (threads <= 0) threads = omp_get_max_threads();
    threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, n)));
    std::vector<float> xt(static_cast<size_t>(tiles * k * kTile));
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static) collapse(2)
        for (int64_t t = 0; t < tiles; ++t) {
            for (int64_t kk = 0; kk < k; ++kk) {
                const int64_t m0 = t * kTile, width = std::min(kTile, m - m0);
                const int64_t ld = (width + 7) / 8 * 8;
                float* dst = xt.data() + t * k * kTile + kk * ld;
                for (int64_t r = 0; r < width; ++r) dst[r] = x[(m0 + r) * ldx + kk];
                for (int64_t r = width; r < ld; ++r) dst[r] = 0.0f;
            }
        }  // implicit barrier: Xt is complete
        // This thread's output features: an equal share of the non-zeros.
        const int nt = omp_get_num_threads(), tid = omp_get_thread_num();
        const int64_t nnz = w.indptr[n];
        auto split = [&](int part) -> int64_t {
            if (part == 0) return 0;
            if (part == nt) return n;
            const int64_t target = nnz * part / nt;
            return std::lower_bound(w.indptr, w.indptr + n, static_cast<int32_t>(target)) -
                   w.indptr;
        };
        const int64_t n0 = split(tid), n1 = std::max(n0, split(tid + 1));
        const int64_t rows = n1 - n0;
        std::vector<float> yt(static_cast<size_t>(rows * kTile), 0.0f);  // 0 when K == 0
        std::vector<int32_t> lo(static_cast<size_t>(rows)), hi(static_cast<size_t>(rows));
        const Csr mine{w.indptr + n0, w.indices, w.values, rows};
        for (int64_t t = 0; t < tiles && rows > 0; ++t) {
            const int64_t m0 = t * kTile, width = std::min(kTile, m - m0);
            const int64_t ld = (width + 7) / 8 * 8;
            const float* tile = xt.data() + t * k * kTile;
            for (int64_t k0 = 0; k0 < k; k0 += kb) {
                const int64_t k1 = std::min(k, k0 + kb);
                for (int64_t r = 0; r < rows; ++r) {
                    int32_t j = k0 == 0 ? mine.indptr[r] : hi[r];
                    lo[r] = j;
                    while (j < mine.indptr[r + 1] && w.indices[j] < k1) ++j;
                    hi[r] = j;
                }
                const RowRanges ranges{lo.data(), hi.data()};
                if (avx2) {
                    spmm_tile_avx2(mine, ranges, tile, ld, yt.data(), 0, rows, k0 > 0);
                } else {
                    spmm_tile_portable(mine, ranges, tile, ld, yt.data(), 0, rows, k0 > 0);
                }
            }
            for (int64_t r = 0; r < width; ++r) {
                float* row = y + (m0 + r) * ldy + n0;
                for (int64_t j = 0; j < rows; ++j) row[j] = yt[j * ld + r];
            }
            (avx2 ? epilogue_avx2 : epilogue_portable)(y + m0 * ldy + n0, ldy, width, rows,
                                                       bias ? bias + n0 : nullptr, act);
        }
    }
}

template <typename T>
py::array_t<T, py::array::c_style | py::array::forcecast> contiguous(const py::object& obj,
                                                                     const char* what,
                                                                     const char* dtype) {
    py::array arr = py::module_::import("numpy").attr("asarray")(obj);
    if (!arr.dtype().is(py::dtype::of<T>())) {
        throw py::value_error(std::string("sparse_linear: ") + what + " must be " + dtype +
                              ", got " + std::string(py::str(arr.dtype())));
    }
    return py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(arr);
}

py::array_t<float> sparse_linear_py(const py::object& x_obj, const py::object& indptr_obj,
                                    const py::object& indices_obj, const py::object& values_obj,
                                    int64_t in_features, const py::object& bias_obj,
                                    const std::string& activation, int threads,
                                    bool force_portable) {
    auto x = contiguous<float>(x_obj, "x", "float32");
    auto indptr = contiguous<int32_t>(indptr_obj, "indptr", "int32");
    auto indices = contiguous<int32_t>(indices_obj, "indices", "int32");
    auto values = contiguous<float>(values_obj, "values", "float32");
    if (x.ndim() != 2 || x.shape(1) != in_features) {
        std::ostringstream os;
        os << "sparse_linear: x must be [M, in_features=" << in_features << "], got a "
           << x.ndim() << "-D array" << (x.ndim() == 2 ? " with " + std::to_string(x.shape(1)) +
                                                             " columns" : std::string());
        throw py::value_error(os.str());
    }
    if (indptr.ndim() != 1 || indptr.shape(0) < 1 || indices.ndim() != 1 || values.ndim() != 1 ||
        indices.shape(0) != values.shape(0)) {
        throw py::value_error("sparse_linear: expected CSR arrays indptr [N+1], indices [nnz], "
                              "values [nnz]");
    }
    const int64_t n = indptr.shape(0) - 1;
    const int32_t* ip = indptr.data();
    const int32_t* ix = indices.data();
    if (ip[0] != 0 || ip[n] != indices.shape(0)) {
        throw py::value_error("sparse_linear: indptr must start at 0 and end at nnz");
    }
    for (int64_t r = 0; r < n; ++r) {
        if (ip[r + 1] < ip[r]) throw py::value_error("sparse_linear: indptr is not sorted");
    }
    bool sorted = true;
    for (int64_t r = 0; r < n; ++r) {
        for (int32_t j = ip[r]; j < ip[r + 1]; ++j) {
            if (ix[j] < 0 || ix[j] >= in_features) {
                throw py::value_error("sparse_linear: column index " + std::to_string(ix[j]) +
                                      " out of range [0, " + std::to_string(in_features) + ")");
            }
            if (j > ip[r] && ix[j] <= ix[j - 1]) sorted = false;
        }
    }
    py::array_t<float, py::array::c_style | py::array::forcecast> bias;
    if (!bias_obj.is_none()) {
        bias = contiguous<float>(bias_obj, "bias", "float32");
        if (bias.ndim() != 1 || bias.shape(0) != n) {
            throw py::value_error("sparse_linear: bias must have shape [N=" + std::to_string(n) +
                                  "]");
        }
    }
    if (threads < 0 || threads > 1024) {
        throw py::value_error("sparse_linear: threads must be in [0, 1024], got " +
                              std::to_string(threads));
    }
    Activation act;
    if (!parse_activation(activation, &act)) {
        throw py::value_error("sparse_linear: unknown activation '" + activation +
                              "'; expected one of: " + activation_names());
    }
    const int64_t m = x.shape(0);
    py::array_t<float> out({static_cast<py::ssize_t>(m), static_cast<py::ssize_t>(n)});
    const Csr csr{ip, ix, values.data(), n};
    const float* bias_ptr = bias_obj.is_none() ? nullptr : bias.data();
    {
        py::gil_scoped_release release;
        sparse_linear(x.data(), m, in_features, in_features, csr, sorted, bias_ptr, act,
                      out.mutable_data(), n, threads, force_portable);
    }
    return out;
}

}  // namespace

void register_sparse(py::module_& m) {
    m.def("sparse_linear", &sparse_linear_py, py::arg("x"), py::arg("indptr"),
          py::arg("indices"), py::arg("values"), py::arg("in_features"),
          py::arg("bias") = py::none(), py::arg("activation") = "none", py::arg("threads") = 0,
          py::arg("force_portable") = false,
          R"doc(``act(x @ W.T + bias)`` with W ``[N, in_features]`` given in CSR form.

Args:
    x: float32 ``[M, in_features]`` (copied to C order if needed).
    indptr, indices, values: CSR of W (int32, int32, float32), rows = output features.
    in_features: K (the number of columns of W).
    bias: optional float32 ``[N]``.
    activation: as for ``sgemm`` (none, relu, gelu, ...).
    threads: OpenMP threads (0: default).
    force_portable: use the scalar kernel even on an AVX2+FMA CPU (for testing).

Returns:
    float32 ``[M, N]``.
)doc");
}

}  // namespace graphopt
