// The bf16 GEMM's packing and dispatch (rt_bf16.h); the AMX kernels are in rt_bf16_amx.cpp.
#include "rt_bf16.h"

#include <algorithm>
#include <vector>

#include "cpu.h"
#include "rt_parallel.h"

namespace graphopt {
namespace rt {
namespace {

// Per-thread scratch for the rounded activation (kept across calls).
AlignedFloats& bf16_scratch() {
    thread_local AlignedFloats scratch;
    return scratch;
}

// AMX work below which a second thread is not worth waking, in multiply-adds: a tile product
// retires ~16x the multiply-adds of an fp32 FMA, so the fp32 threshold is scaled up.
constexpr int64_t kAmxMinWorkPerThread = 16 * kMinWorkPerThread;

void zero_k(float* c, int64_t ldc, int64_t m, int64_t n, const EpilogueSpec& ep) {
    if (!ep.residual_in_c) {
        for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.0f);
    }
    gemm_tile_epilogue(gemm_kernels(), c, ldc, 0, 0, m, n, ep);
}

}  // namespace

PackedBf16Weight PackedBf16Weight::pack(const MatrixRef& b) {
    PackedBf16Weight out;
    out.k_ = b.rows;
    out.n_ = b.cols;
    auto at = [&](int64_t kk, int64_t nn) { return b.data[kk * b.row_stride + nn * b.col_stride]; };
    if (cpu_features().use_amx) {
        out.amx_ = true;
        out.k_steps_ = ceil_div(std::max<int64_t>(b.rows, 1), kBf16TileK);
        const int64_t col_tiles = ceil_div(std::max<int64_t>(b.cols, 1), kBf16TileRows);
        const int64_t elems = col_tiles * out.k_steps_ * kBf16TileElems;
        void* mem = std::aligned_alloc(64, static_cast<size_t>(elems) * 2);
        if (mem == nullptr) throw std::bad_alloc();
        out.tiles_.reset(static_cast<uint16_t*>(mem));
        uint16_t* dst = out.tiles_.get();
        for (int64_t q = 0; q < col_tiles; ++q) {
            for (int64_t s = 0; s < out.k_steps_; ++s) {
                uint16_t* tile = dst + (q * out.k_steps_ + s) * kBf16TileElems;
                for (int64_t p = 0; p < kBf16TileK / 2; ++p) {
                    for (int64_t c = 0; c < kBf16TileRows; ++c) {
                        for (int64_t h = 0; h < 2; ++h) {
                            const int64_t kk = s * kBf16TileK + 2 * p + h, nn = q * 16 + c;
                            tile[p * 32 + c * 2 + h] =
                                kk < b.rows && nn < b.cols ? bf16_bits(at(kk, nn)) : 0;
                        }
                    }
                }
            }
        }
        return out;
    }
    std::vector<float> rounded(static_cast<size_t>(b.rows * b.cols));
    for (int64_t kk = 0; kk < b.rows; ++kk) {
        for (int64_t nn = 0; nn < b.cols; ++nn) {
            rounded[static_cast<size_t>(kk * b.cols + nn)] = bf16_to_float(bf16_bits(at(kk, nn)));
        }
    }
    out.widened_ = std::make_unique<PackedMatrix>(
        PackedMatrix::pack_b(MatrixRef{rounded.data(), b.rows, b.cols, b.cols, 1}));
    return out;
}

void bf16_gemm_run(const MatrixRef& a, const PackedBf16Weight& w, float* c, int64_t ldc,
                   const EpilogueSpec& ep, int threads) {
    const int64_t m = a.rows, n = w.n(), k = w.k();
    if (m <= 0 || n <= 0) return;
    if (k <= 0) return zero_k(c, ldc, m, n, ep);
    if (!w.amx()) {
        float* r = bf16_scratch().reserve(m * k);
        parallel_for(threads, m, k, [&](int64_t r0, int64_t r1) {
            for (int64_t i = r0; i < r1; ++i) {
                for (int64_t j = 0; j < k; ++j) {
                    r[i * k + j] = bf16_to_float(bf16_bits(a.data[i * a.row_stride +
                                                                  j * a.col_stride]));
                }
            }
        });
        gemm_run(StridedA{MatrixRef{r, m, k, k, 1}}, PackedSource{&w.widened()}, m, n, k, c, ldc,
                 ep, threads);
        return;
    }
    const int64_t mp = round_up(m, kBf16TileRows), kp = w.k_steps() * kBf16TileK;
    // bf16 pairs in float-sized scratch slots: mp * kp / 2 floats (kp is even).
    auto* a16 = reinterpret_cast<uint16_t*>(bf16_scratch().reserve(mp * kp / 2 + 32));
    parallel_for(threads, mp, kp, [&](int64_t r0, int64_t r1) {
        bf16_pack_rows_amx(a, kp, r0, r1, a16);
    });
    const Bf16AmxProblem p{a16, m, mp, kp, &w, c, ldc, &ep};
    const int64_t blocks = ceil_div(mp, 32) * ceil_div(n, 32);
    const int nt = static_cast<int>(std::min<int64_t>(
        blocks, threads_for(threads, blocks * 32 * 32 * kp, kAmxMinWorkPerThread)));
    // A few contiguous block ranges per thread, claimed dynamically: on a shared machine one
    // core may run slower than the other, and a static half each leaves the faster one waiting.
    const int64_t tasks = std::min<int64_t>(blocks, nt * kChunksPerThread);
    parallel_tasks(nt, tasks, [&](int64_t t) {
        bf16_amx_blocks(p, blocks * t / tasks, blocks * (t + 1) / tasks);
    });
}

}  // namespace rt
}  // namespace graphopt
