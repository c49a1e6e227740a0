// GEMM driver support: packing, partitioning and the extended epilogue (see rt_gemm.h).
#include "rt_gemm.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu.h"

namespace graphopt {
namespace rt {

float* AlignedFloats::reserve(int64_t count) {
    if (count > size_) {
        std::free(data_);
        const size_t bytes = static_cast<size_t>(round_up(std::max<int64_t>(count, 16) * 4, 64));
        data_ = static_cast<float*>(std::aligned_alloc(64, bytes));
        if (data_ == nullptr) throw std::bad_alloc();
        size_ = count;
    }
    return data_;
}

GemmScratch& gemm_scratch() {
    static thread_local GemmScratch scratch;
    return scratch;
}

const GemmKernels& gemm_kernels() {
    static const GemmKernels& kernels = best_gemm_kernels();
    return kernels;
}

namespace {

template <typename F>
void for_each_in_block(float* c, int64_t ld, int64_t rows, int64_t cols, const float* col_bias,
                       F f) {
    for (int64_t r = 0; r < rows; ++r) {
        float* row = c + r * ld;
        if (col_bias != nullptr) {
            for (int64_t j = 0; j < cols; ++j) row[j] = f(row[j] + col_bias[j]);
        } else {
            for (int64_t j = 0; j < cols; ++j) row[j] = f(row[j]);
        }
    }
}

}  // namespace

void apply_activation(float* c, int64_t ld, int64_t rows, int64_t cols, const float* col_bias,
                      const ActSpec& spec) {
    if (spec.act <= kLastEpilogueActivation) {
        if (spec.act == Act::kNone && col_bias == nullptr) return;
        gemm_kernels().epilogue(c, ld, rows, cols, col_bias, spec.act);
        return;
    }
    switch (spec.act) {
        case Act::kHardsigmoid:
            for_each_in_block(c, ld, rows, cols, col_bias, [](float x) {
                return std::min(std::max(x + 3.0f, 0.0f), 6.0f) / 6.0f;
            });
            return;
        case Act::kClamp: {
            const float lo = spec.p0, hi = spec.p1;
            // std::max / std::min return their first argument for NaN: NaN propagates.
            for_each_in_block(c, ld, rows, cols, col_bias,
                              [lo, hi](float x) { return std::min(std::max(x, lo), hi); });
            return;
        }
        case Act::kLeakyRelu: {
            const float slope = spec.p0;
            for_each_in_block(c, ld, rows, cols, col_bias,
                              [slope](float x) { return x > 0.0f ? x : x * slope; });
            return;
        }
        default:
            return;
    }
}

template <int64_t R>
void pack_panel_strided(int64_t kc, int64_t count, const float* src, int64_t s_r, int64_t s_k,
                        float* dst) {
    for (int64_t k = 0; k < kc; ++k) {
        const float* s = src + k * s_k;
        float* d = dst + k * R;
        if (s_r == 1) {
            if (count == R) {
                std::memcpy(d, s, sizeof(float) * R);
            } else {
                for (int64_t r = 0; r < count; ++r) d[r] = s[r];
            }
        } else {
            for (int64_t r = 0; r < count; ++r) d[r] = s[r * s_r];
        }
        for (int64_t r = count; r < R; ++r) d[r] = 0.0f;
    }
}
template void pack_panel_strided<kMR>(int64_t, int64_t, const float*, int64_t, int64_t, float*);
template void pack_panel_strided<kNR>(int64_t, int64_t, const float*, int64_t, int64_t, float*);

namespace {

// Packs rows [start, start + count) x K block [pc, pc + kc) of A into consecutive kMR panels.
void pack_a_range(const GemmKernels& kern, const MatrixRef& a, int64_t pc, int64_t kc,
                  int64_t start, int64_t count, float* dst) {
    for (int64_t p = 0; p < count; p += kMR) {
        const int64_t rows = std::min(kMR, count - p);
        const float* src = a.data + (start + p) * a.row_stride + pc * a.col_stride;
        if (a.col_stride == 1) {
            kern.pack_a_k_contiguous(kc, rows, src, a.row_stride, dst + p * kc);
        } else {
            pack_panel_strided<kMR>(kc, rows, src, a.row_stride, a.col_stride, dst + p * kc);
        }
    }
}

// Packs columns [start, start + count) x K block [pc, pc + kc) of B into consecutive kNR panels.
void pack_b_range(const GemmKernels& kern, const MatrixRef& b, int64_t pc, int64_t kc,
                  int64_t start, int64_t count, float* dst) {
    for (int64_t q = 0; q < count; q += kNR) {
        const int64_t cols = std::min(kNR, count - q);
        const float* src = b.data + pc * b.row_stride + (start + q) * b.col_stride;
        if (b.row_stride == 1 && b.col_stride != 1) {
            kern.pack_b_k_contiguous(kc, cols, src, b.col_stride, dst + q * kc);
        } else {
            pack_panel_strided<kNR>(kc, cols, src, b.col_stride, b.row_stride, dst + q * kc);
        }
    }
}

}  // namespace

PackedMatrix PackedMatrix::pack_a(const MatrixRef& a) {
    PackedMatrix out;
    out.rows_ = a.rows;
    out.depth_ = a.cols;
    out.padded_ = round_up(std::max<int64_t>(a.rows, 1), kMR);
    float* dst = out.storage_.reserve(out.padded_ * std::max<int64_t>(a.cols, 1));
    const int64_t kc_max = gemm_k_block(a.cols);
    const GemmKernels& kern = gemm_kernels();
    for (int64_t pc = 0; pc < a.cols; pc += kc_max) {
        const int64_t kc = std::min(kc_max, a.cols - pc);
        pack_a_range(kern, a, pc, kc, 0, a.rows, dst + pc * out.padded_);
        // Pad rows past M with zero panels so any panel the driver reads is initialised.
        for (int64_t r = round_up(a.rows, kMR); r < out.padded_; r += kMR) {
            std::fill(dst + pc * out.padded_ + r * kc, dst + pc * out.padded_ + (r + kMR) * kc,
                      0.0f);
        }
    }
    return out;
}

PackedMatrix PackedMatrix::pack_b(const MatrixRef& b) {
    PackedMatrix out;
    out.rows_ = b.cols;
    out.depth_ = b.rows;
    out.padded_ = round_up(std::max<int64_t>(b.cols, 1), kNR);
    float* dst = out.storage_.reserve(out.padded_ * std::max<int64_t>(b.rows, 1));
    const int64_t kc_max = gemm_k_block(b.rows);
    const GemmKernels& kern = gemm_kernels();
    for (int64_t pc = 0; pc < b.rows; pc += kc_max) {
        const int64_t kc = std::min(kc_max, b.rows - pc);
        pack_b_range(kern, b, pc, kc, 0, b.cols, dst + pc * out.padded_);
    }
    return out;
}

const float* StridedA::get(int64_t pc, int64_t kc, int64_t start, int64_t count,
                           AlignedFloats& scratch) const {
    float* dst = scratch.reserve(round_up(count, kMR) * kc);
    pack_a_range(gemm_kernels(), m, pc, kc, start, count, dst);
    return dst;
}

const float* StridedB::get(int64_t pc, int64_t kc, int64_t start, int64_t count,
                           AlignedFloats& scratch) const {
    float* dst = scratch.reserve(round_up(count, kNR) * kc);
    pack_b_range(gemm_kernels(), m, pc, kc, start, count, dst);
    return dst;
}

std::vector<GemmBlock> gemm_partition(int64_t m, int64_t n, int64_t k, int threads,
                                      double pack_cost_a, double pack_cost_b) {
    // The SGEMM's partitioner (gemm.h gemm_grid); the runtime wakes threads from 64^3
    // multiply-adds each (its pool is cheaper to wake than an OpenMP team).
    constexpr double kMinMacsPerThread = 64.0 * 64.0 * 64.0;
    const GemmGrid grid = gemm_grid(m, n, k, threads, pack_cost_a, pack_cost_b, kMinMacsPerThread);
    std::vector<GemmBlock> blocks;
    blocks.reserve(static_cast<size_t>(grid.tm * grid.tn));
    for (int64_t i = 0; i < m; i += grid.m_chunk) {
        for (int64_t j = 0; j < n; j += grid.n_chunk) {
            blocks.push_back(
                GemmBlock{i, std::min(m, i + grid.m_chunk), j, std::min(n, j + grid.n_chunk)});
        }
    }
    return blocks;
}

void gemm_tile_epilogue(const GemmKernels& kern, float* ct, int64_t ldc, int64_t i0, int64_t j0,
                        int64_t mr, int64_t nr, const EpilogueSpec& ep) {
    if (ep.alpha != 1.0f) {
        for (int64_t i = 0; i < mr; ++i) {
            float* row = ct + i * ldc;
            for (int64_t j = 0; j < nr; ++j) row[j] *= ep.alpha;
        }
    }
    if (ep.residual != nullptr && !ep.residual_in_c) {
        for (int64_t i = 0; i < mr; ++i) {
            float* row = ct + i * ldc;
            const float* r = ep.residual + (i0 + i) * ep.ldr + j0;
            for (int64_t j = 0; j < nr; ++j) row[j] += r[j];
        }
    }
    if (ep.row_bias != nullptr) {
        for (int64_t i = 0; i < mr; ++i) {
            float* row = ct + i * ldc;
            const float bias = ep.row_bias[i0 + i];
            for (int64_t j = 0; j < nr; ++j) row[j] += bias;
        }
    }
    const float* col_bias = ep.col_bias != nullptr ? ep.col_bias + j0 : nullptr;
    if (ep.act.act <= kLastEpilogueActivation) {
        if (ep.act.act != Act::kNone || col_bias != nullptr) {
            kern.epilogue(ct, ldc, mr, nr, col_bias, ep.act.act);
        }
    } else {
        apply_activation(ct, ldc, mr, nr, col_bias, ep.act);
    }
}

}  // namespace rt
}  // namespace graphopt
