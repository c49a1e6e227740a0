// Kernel "sparse_linear": linear / fused_linear whose weight is mostly zeros, in CSR form.
//
//   out = act(x @ W^T + bias + residual)     x [M, K], W [N, K] as CSR (rows = output features)
//
// Operands: out, x, indptr (const i32 [N+1]), indices (const i32 [nnz]), values (const f32 [nnz]),
//           bias? [N], residual? [M, N], xt? (arena scratch f32 [ceil(M / 64) * K * 64], needed
//           when M > kSparseRowPathMaxRows)
// Ints:     M, N, K, nnz, x_row_stride, act, residual_in_c
// Floats:   act_p0, act_p1
// out and residual are contiguous [M, N]; x rows have unit column stride.
//
// Chosen by the native lowering (graphopt/native/lower/sparse.py) when the weight carries a CSR
// record (graphopt.prune.sparse) and the cost model says it beats the packed dense GEMM. The
// factory copies the CSR arrays (columns sorted within each row, so the K blocking below is
// always valid) and validates them, naming the node on error.
//
// Two paths, both splitting the output features over threads by equal shares of non-zeros:
//  * M <= kSparseRowPathMaxRows (a batch-1 token, a GEMV): every output is a sparse dot product
//    of a CSR row with an input row, 16 non-zeros per step (AVX2: gathers of x, two
//    accumulators, so the FMA latency chain is not the bound);
//  * more rows: the tile kernel of sparse_gemm.cpp (shared through sparse_gemm.h). x is packed
//    transposed in 64-row tiles into the xt scratch (threads share that work), then each chunk
//    of output features runs every tile and 1024-wide K block against its rows of W. The
//    transposed result tile is written into out and the GEMM epilogue (bias, residual, every
//    fused activation) is applied to it.
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include <immintrin.h>

#include "cpu.h"
#include "rt_gemm.h"
#include "rt_parallel.h"
#include "rt_plan.h"
#include "sparse_gemm.h"

namespace graphopt {
namespace rt {
namespace {

constexpr int64_t kSparseRowPathMaxRows = 4;
constexpr int64_t kSparseKBlock = 1024;  // K rows of xt (256 KiB per 64-row tile) kept in L2

float sparse_dot_portable(const float* values, const int32_t* idx, int64_t len, const float* x) {
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    int64_t j = 0;
    for (; j + 4 <= len; j += 4) {
        s0 += values[j] * x[idx[j]];
        s1 += values[j + 1] * x[idx[j + 1]];
        s2 += values[j + 2] * x[idx[j + 2]];
        s3 += values[j + 3] * x[idx[j + 3]];
    }
    for (; j < len; ++j) s0 += values[j] * x[idx[j]];
    return (s0 + s1) + (s2 + s3);
}

GRAPHOPT_TARGET_AVX2_FMA
float sparse_dot_avx2(const float* values, const int32_t* idx, int64_t len, const float* x) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= len; j += 16) {
        const __m256i i0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx + j));
        const __m256i i1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx + j + 8));
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(values + j), _mm256_i32gather_ps(x, i0, 4), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(values + j + 8), _mm256_i32gather_ps(x, i1, 4),
                             a1);
    }
    if (j + 8 <= len) {
        const __m256i i0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx + j));
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(values + j), _mm256_i32gather_ps(x, i0, 4), a0);
        j += 8;
    }
    const __m256 a = _mm256_add_ps(a0, a1);
    const __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
    float s = _mm_cvtss_f32(_mm_add_ss(q, _mm_shuffle_ps(q, q, 1)));
    for (; j < len; ++j) s += values[j] * x[idx[j]];
    return s;
}

class SparseLinearKernel : public Kernel {
   public:
    explicit SparseLinearKernel(const KernelArgs& args) : name_(args.name) {
        IntReader r(args);
        m_ = r.next();
        n_ = r.next();
        k_ = r.next();
        const int64_t nnz = r.next();
        x_rs_ = r.signed_param("x_row_stride");
        ep_.act.act = static_cast<Act>(r.in(0, kMaxActivationCode, "act"));
        ep_.residual_in_c = r.next() != 0;
        ep_.act.p0 = static_cast<float>(r.real(0));
        ep_.act.p1 = static_cast<float>(r.real(1));
        if (m_ < 0 || n_ < 0 || k_ < 0 || nnz < 0) fail("negative size");
        if (n_ > INT32_MAX - 1 || nnz > INT32_MAX || k_ > INT32_MAX) {
            fail("N, K and nnz must fit the int32 CSR arrays");
        }
        has_bias_ = args.operands.size() > 5 && args.operands[5].present;
        has_residual_ = args.operands.size() > 6 && args.operands[6].present;
        if (ep_.residual_in_c && !has_residual_) fail("in-place residual without a residual");
        if (m_ > kSparseRowPathMaxRows &&
            (args.operands.size() <= 7 || !args.operands[7].present)) {
            fail("M > " + std::to_string(kSparseRowPathMaxRows) + " needs the xt scratch");
        }
        const std::string what = "sparse_linear " + name_;
        const int64_t mn = checked_mul(m_, n_, what);
        need(args, 0, checked_mul(mn, 4, what), 4);
        need_strided(args, 1, {m_, k_}, {x_rs_, 1}, 4);
        need(args, 2, checked_mul(n_ + 1, 4, what), 4);
        need(args, 3, checked_mul(nnz, 4, what), 4);
        need(args, 4, checked_mul(nnz, 4, what), 4);
        need_opt(args, 5, checked_mul(n_, 4, what), 4);
        need_opt(args, 6, checked_mul(mn, 4, what), 4);
        const int64_t tiles = (m_ + sparse::kTile - 1) / sparse::kTile;
        need_opt(args, 7, checked_mul(checked_mul(checked_mul(tiles, k_, what), sparse::kTile,
                                                  what), 4, what), 4);
        const auto* indptr = reinterpret_cast<const int32_t*>(constant(args, 2));
        const auto* indices = reinterpret_cast<const int32_t*>(constant(args, 3));
        const auto* values = reinterpret_cast<const float*>(constant(args, 4));
        if (indptr[0] != 0 || indptr[n_] != nnz) fail("indptr must run from 0 to nnz");
        for (int64_t row = 0; row < n_; ++row) {  // all of it before any row is read
            if (indptr[row + 1] < indptr[row]) {
                fail("indptr decreases at row " + std::to_string(row));
            }
        }
        indptr_.assign(indptr, indptr + n_ + 1);
        indices_.resize(static_cast<size_t>(nnz));
        values_.resize(static_cast<size_t>(nnz));
        std::vector<int32_t> order;
        for (int64_t row = 0; row < n_; ++row) {
            const int32_t lo = indptr[row], hi = indptr[row + 1];
            if (hi < lo) fail("indptr decreases at row " + std::to_string(row));
            order.resize(static_cast<size_t>(hi - lo));
            std::iota(order.begin(), order.end(), lo);
            std::stable_sort(order.begin(), order.end(),
                             [&](int32_t a, int32_t b) { return indices[a] < indices[b]; });
            for (int32_t j = lo; j < hi; ++j) {
                const int32_t src = order[static_cast<size_t>(j - lo)];
                if (indices[src] < 0 || indices[src] >= k_) {
                    fail("column " + std::to_string(indices[src]) + " out of range [0, " +
                         std::to_string(k_) + ") in row " + std::to_string(row));
                }
                indices_[static_cast<size_t>(j)] = indices[src];
                values_[static_cast<size_t>(j)] = values[src];
            }
        }
    }

    void run(const ExecContext& ctx) const override {
        float* out = ctx.get<float>(operands[0]);
        const float* x = ctx.get<const float>(operands[1]);
        EpilogueSpec ep = ep_;
        ep.col_bias = has_bias_ ? ctx.get<const float>(operands[5]) : nullptr;
        ep.residual = has_residual_ && !ep_.residual_in_c ? ctx.get<const float>(operands[6])
                                                          : nullptr;
        ep.ldr = n_;
        if (m_ == 0 || n_ == 0) return;
        const int64_t nnz = indptr_[static_cast<size_t>(n_)];
        const int nt = threads_for(ctx.threads, 2 * nnz * m_ + m_ * n_);
        const int64_t chunks = std::min<int64_t>(n_, nt <= 1 ? 1 : nt * kChunksPerThread);
        if (m_ <= kSparseRowPathMaxRows) {
            auto body = [&](int64_t c) { rows_chunk(x, out, ep, split(c, chunks),
                                                    split(c + 1, chunks)); };
            parallel_tasks(nt, chunks, body);
            return;
        }
        float* xt = ctx.get<float>(operands[7]);
        const int64_t tiles = (m_ + sparse::kTile - 1) / sparse::kTile;
        parallel_for(ctx.threads, tiles * k_, sparse::kTile, [&](int64_t begin, int64_t end) {
            for (int64_t i = begin; i < end; ++i) pack_column(x, xt, i / k_, i % k_);
        });
        auto body = [&](int64_t c) { tiles_chunk(xt, out, ep, split(c, chunks),
                                                 split(c + 1, chunks)); };
        parallel_tasks(nt, chunks, body);
    }

   private:
    [[noreturn]] void fail(const std::string& what) const {
        throw PlanError("sparse_linear " + name_ + ": " + what);
    }

    // First output feature of chunk `part` of `parts`: equal shares of the non-zeros.
    int64_t split(int64_t part, int64_t parts) const {
        if (part <= 0) return 0;
        if (part >= parts) return n_;
        const int64_t nnz = indptr_[static_cast<size_t>(n_)];
        const int64_t target = nnz * part / parts;
        const int64_t by_nnz =
            std::lower_bound(indptr_.begin(), indptr_.end() - 1, static_cast<int32_t>(target)) -
            indptr_.begin();
        // Rows without non-zeros (all-zero output features) still get an even share.
        return nnz == 0 ? n_ * part / parts : by_nnz;
    }

    // xt[tile][kk][0:ld] = x[tile rows][kk], zero-padded to ld = width rounded up to 8.
    void pack_column(const float* x, float* xt, int64_t tile, int64_t kk) const {
        const int64_t m0 = tile * sparse::kTile, width = std::min(sparse::kTile, m_ - m0);
        const int64_t ld = (width + 7) / 8 * 8;
        float* dst = xt + tile * k_ * sparse::kTile + kk * ld;
        for (int64_t r = 0; r < width; ++r) dst[r] = x[(m0 + r) * x_rs_ + kk];
        for (int64_t r = width; r < ld; ++r) dst[r] = 0.0f;
    }

    void rows_chunk(const float* x, float* out, const EpilogueSpec& ep, int64_t n0,
                    int64_t n1) const {
        if (n1 <= n0) return;
        auto dot = cpu_features().use_avx2_fma ? sparse_dot_avx2 : sparse_dot_portable;
        for (int64_t row = n0; row < n1; ++row) {
            const int32_t lo = indptr_[static_cast<size_t>(row)];
            const int64_t len = indptr_[static_cast<size_t>(row) + 1] - lo;
            for (int64_t i = 0; i < m_; ++i) {
                const float s = dot(values_.data() + lo, indices_.data() + lo, len, x + i * x_rs_);
                float* c = out + i * n_ + row;
                *c = ep.residual_in_c ? *c + s : s;
            }
        }
        gemm_tile_epilogue(gemm_kernels(), out + n0, n_, 0, n0, m_, n1 - n0, ep);
    }

    void tiles_chunk(const float* xt, float* out, const EpilogueSpec& ep, int64_t n0,
                     int64_t n1) const {
        const int64_t rows = n1 - n0;
        if (rows <= 0) return;
        const bool avx2 = cpu_features().use_avx2_fma;
        // Thread-local grow-only scratch (no allocation once warm): yt [rows][64], and the row
        // ranges lo/hi as int32 in the float scratch (same size and alignment).
        GemmScratch& scratch = gemm_scratch();
        float* yt = scratch.extra.reserve(rows * sparse::kTile);
        auto* lo = reinterpret_cast<int32_t*>(scratch.extra2.reserve(2 * rows));
        int32_t* hi = lo + rows;
        const sparse::Csr mine{indptr_.data() + n0, indices_.data(), values_.data(), rows};
        const int64_t tiles = (m_ + sparse::kTile - 1) / sparse::kTile;
        for (int64_t t = 0; t < tiles; ++t) {
            const int64_t m0 = t * sparse::kTile, width = std::min(sparse::kTile, m_ - m0);
            const int64_t ld = (width + 7) / 8 * 8;
            const float* tile = xt + t * k_ * sparse::kTile;
            if (k_ == 0) std::fill(yt, yt + rows * ld, 0.0f);
            for (int64_t k0 = 0; k0 < k_; k0 += kSparseKBlock) {
                const int64_t k1 = std::min(k_, k0 + kSparseKBlock);
                for (int64_t r = 0; r < rows; ++r) {
                    int32_t j = k0 == 0 ? mine.indptr[r] : hi[r];
                    lo[r] = j;
                    while (j < mine.indptr[r + 1] && indices_[static_cast<size_t>(j)] < k1) ++j;
                    hi[r] = j;
                }
                const sparse::RowRanges ranges{lo, hi};
                if (avx2) {
                    sparse::spmm_tile_avx2(mine, ranges, tile, ld, yt, 0, rows, k0 > 0);
                } else {
                    sparse::spmm_tile_portable(mine, ranges, tile, ld, yt, 0, rows, k0 > 0);
                }
            }
            for (int64_t r = 0; r < width; ++r) {
                float* c = out + (m0 + r) * n_ + n0;
                if (ep.residual_in_c) {
                    for (int64_t j = 0; j < rows; ++j) c[j] += yt[j * ld + r];
                } else {
                    for (int64_t j = 0; j < rows; ++j) c[j] = yt[j * ld + r];
                }
            }
            gemm_tile_epilogue(gemm_kernels(), out + m0 * n_ + n0, n_, m0, n0, width, rows, ep);
        }
    }

    std::string name_;
    int64_t m_ = 0, n_ = 0, k_ = 0, x_rs_ = 0;
    bool has_bias_ = false, has_residual_ = false;
    EpilogueSpec ep_;
    std::vector<int32_t> indptr_, indices_;
    std::vector<float> values_;
};

GRAPHOPT_RT_KERNEL("sparse_linear", SparseLinearKernel,
                   "out, x, row_ptr, col_idx, values, bias?, residual?, xt?",
                   "M:dim, N:dim, K:dim, nnz:dim, x_row_stride:signed, act:act, "
                   "residual_in_c:flag",
                   "p0, p1");

}  // namespace
}  // namespace rt
}  // namespace graphopt
