// The runtime's GEMM driver: C = epilogue(alpha * A @ B), built on the SGEMM's per-ISA
// micro-kernel and packers (gemm_kernels.h), with what a compiled plan adds to sgemm():
//
//  * Pre-packed operands. Weights are constants, so a plan packs them once, at build time, into
//    the micro-kernel's panel layout (PackedMatrix); a run only packs the activation operand.
//    Linear layers pre-pack B (= W^T), convolutions pre-pack A (= W, NCHW output is W @ cols).
//  * Operand sources. The per-call operand comes from a "source" that packs panels on demand:
//    a strided matrix (StridedA / StridedB) or, for convolutions, the im2col matrix of the input
//    computed while packing (no im2col buffer is materialised; see rt_conv.cpp).
//  * A richer epilogue (EpilogueSpec): alpha, per-column bias (linear), per-row bias (conv),
//    residual add (also in place: C already holds the residual and the K loop accumulates onto
//    it), and every activation of graphopt's fused ops (clamp, leaky_relu, hardsigmoid included).
//
// Blocking (KC / MC / NC) and the K split follow gemm.cpp, so results do not depend on threads.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <vector>

#include "gemm.h"
#include "gemm_kernels.h"
#include "rt_parallel.h"

namespace graphopt {
namespace rt {

// Blocking: kGemmMC / kGemmKC / kGemmNC, one definition in gemm.h (shared with sgemm).

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }
// Equal K blocks of at most kGemmKC (same split as gemm.cpp).
inline int64_t gemm_k_block(int64_t k) { return k <= 0 ? 1 : ceil_div(k, ceil_div(k, kGemmKC)); }

// Activations of fused ops: graphopt::Activation (activation.h, the one list). Those up to
// kLastEpilogueActivation run through the (vectorised) SGEMM epilogue; the others have a scalar
// implementation here.
using Act = ::graphopt::Activation;

struct ActSpec {
    Act act = Act::kNone;
    float p0 = 0.0f, p1 = 0.0f;  // clamp: (min, max); leaky_relu: (slope,)
};

// Applies the activation in place to a rows x cols block (row stride ld). `col_bias` (may be
// null) is added first, per column.
void apply_activation(float* c, int64_t ld, int64_t rows, int64_t cols, const float* col_bias,
                      const ActSpec& act);

struct EpilogueSpec {
    float alpha = 1.0f;
    const float* col_bias = nullptr;  // [N]
    const float* row_bias = nullptr;  // [M]
    const float* residual = nullptr;  // [M, N] with row stride ldr
    int64_t ldr = 0;
    bool residual_in_c = false;  // C holds the residual on entry (in-place residual add)
    ActSpec act;
};

// 64-byte aligned float storage (grow-only when used as scratch).
class AlignedFloats {
   public:
    AlignedFloats() = default;
    AlignedFloats(const AlignedFloats&) = delete;
    AlignedFloats& operator=(const AlignedFloats&) = delete;
    AlignedFloats(AlignedFloats&& o) noexcept : data_(o.data_), size_(o.size_) {
        o.data_ = nullptr;
        o.size_ = 0;
    }
    ~AlignedFloats() { std::free(data_); }
    float* reserve(int64_t count);
    float* data() const { return data_; }

   private:
    float* data_ = nullptr;
    int64_t size_ = 0;
};

// Thread-local scratch for per-call packing (kept across calls: no page faults per run).
struct GemmScratch {
    AlignedFloats a;
    AlignedFloats b;
    AlignedFloats extra;  // kernel-specific scratch (depthwise padded planes...)
    AlignedFloats extra2;
};
GemmScratch& gemm_scratch();

const GemmKernels& gemm_kernels();  // best_gemm_kernels(): AVX-512, AVX2+FMA or portable

// A matrix pre-packed into micro-kernel panels: for each K block (offset pc, depth kc), panels of
// R rows (A: R = kMR, panel rows are matrix rows) or R columns (B: R = kNR) stored k-major.
// Panel holding row/column r of block pc starts at data + pc * padded + r * kc.
class PackedMatrix {
   public:
    // Packs A[M, K] (R = kMR) or B[K, N] (R = kNR) from a strided view.
    static PackedMatrix pack_a(const MatrixRef& a);
    static PackedMatrix pack_b(const MatrixRef& b);
    const float* panel(int64_t pc, int64_t kc, int64_t r) const {
        return storage_.data() + pc * padded_ + r * kc;
    }
    int64_t rows() const { return rows_; }  // M for A, N for B (the panel dimension)
    int64_t depth() const { return depth_; }

   private:
    AlignedFloats storage_;
    int64_t rows_ = 0, depth_ = 0, padded_ = 0;
};

// Packs `count` (<= R) rows/cols of a strided view into one k-major panel of R, zero-padded:
// dst[k * R + r] = src[r * s_r + k * s_k].
template <int64_t R>
void pack_panel_strided(int64_t kc, int64_t count, const float* src, int64_t s_r, int64_t s_k,
                        float* dst);

// Operand sources: get(pc, kc, start, count, scratch) returns a pointer to the panels covering
// rows (A) / columns (B) [start, start + count) of K block pc, packing into scratch if needed.
struct PackedSource {
    const PackedMatrix* packed;
    const float* get(int64_t pc, int64_t kc, int64_t start, int64_t, AlignedFloats&) const {
        return packed->panel(pc, kc, start);
    }
    static constexpr bool kPrepacked = true;
};

struct StridedA {
    MatrixRef m;
    const float* get(int64_t pc, int64_t kc, int64_t start, int64_t count,
                     AlignedFloats& scratch) const;
    static constexpr bool kPrepacked = false;
};

struct StridedB {
    MatrixRef m;
    const float* get(int64_t pc, int64_t kc, int64_t start, int64_t count,
                     AlignedFloats& scratch) const;
    static constexpr bool kPrepacked = false;
};

// One thread's share of C: rows [m0, m1), columns [n0, n1).
struct GemmBlock {
    int64_t m0, m1, n0, n1;
};

// Splits an M x N x K GEMM into up to `threads` blocks (multiples of kMR / kNR), weighing the
// busiest block's compute against the packing it repeats. pack_cost_a / pack_cost_b: cost of
// packing one element of A / B in multiply-add units (0 for pre-packed operands).
std::vector<GemmBlock> gemm_partition(int64_t m, int64_t n, int64_t k, int threads,
                                      double pack_cost_a, double pack_cost_b);

// Applies the epilogue to one finished tile at (i0, j0) of C.
void gemm_tile_epilogue(const GemmKernels& kern, float* ct, int64_t ldc, int64_t i0, int64_t j0,
                        int64_t mr, int64_t nr, const EpilogueSpec& ep);

// Computes block `blk` of C = epilogue(alpha * A @ B). Single-threaded; see gemm_run.
template <typename ASrc, typename BSrc>
void gemm_block(const GemmKernels& kern, const ASrc& a, const BSrc& b, int64_t k_total, float* c,
                int64_t ldc, const GemmBlock& blk, const EpilogueSpec& ep) {
    const int64_t kc_max = gemm_k_block(k_total);
    GemmScratch& scratch = gemm_scratch();
    alignas(64) float edge_tile[kMR * kNR];
    for (int64_t jc = blk.n0; jc < blk.n1; jc += kGemmNC) {
        const int64_t nc = std::min(kGemmNC, blk.n1 - jc);
        for (int64_t pc = 0; pc < k_total; pc += kc_max) {
            const int64_t kc = std::min(kc_max, k_total - pc);
            const bool accumulate = pc > 0 || ep.residual_in_c;
            const bool last_k = pc + kc >= k_total;
            const float* bp_block = b.get(pc, kc, jc, nc, scratch.b);
            for (int64_t ic = blk.m0; ic < blk.m1; ic += kGemmMC) {
                const int64_t mc = std::min(kGemmMC, blk.m1 - ic);
                const float* ap_block = a.get(pc, kc, ic, mc, scratch.a);
                for (int64_t jr = 0; jr < nc; jr += tile_cols(kern)) {
                    const int64_t nr = std::min(tile_cols(kern), nc - jr);
                    const float* bp = bp_block + jr * kc;
                    for (int64_t ir = 0; ir < mc; ir += kMR) {
                        const int64_t mr = std::min(kMR, mc - ir);
                        const float* ap = ap_block + ir * kc;
                        float* ct = c + (ic + ir) * ldc + (jc + jr);
                        compute_tile(kern, kc, ap, bp, ct, ldc, mr, nr, accumulate, edge_tile);
                        if (last_k) gemm_tile_epilogue(kern, ct, ldc, ic + ir, jc + jr, mr, nr, ep);
                    }
                }
            }
        }
    }
}

// C[M, N] = epilogue(alpha * A @ B) over up to `threads` threads. pack_cost_*: cost of packing
// one element of a per-call operand in multiply-adds (the partition avoids repeating it).
template <typename ASrc, typename BSrc>
void gemm_run(const ASrc& a, const BSrc& b, int64_t m, int64_t n, int64_t k, float* c,
              int64_t ldc, const EpilogueSpec& ep, int threads, double pack_cost_a = 8.0,
              double pack_cost_b = 8.0) {
    const GemmKernels& kern = gemm_kernels();
    if (m <= 0 || n <= 0) return;
    if (k <= 0) {
        if (!ep.residual_in_c) {
            for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.0f);
        }
        gemm_tile_epilogue(kern, c, ldc, 0, 0, m, n, ep);
        return;
    }
    const std::vector<GemmBlock> blocks =
        gemm_partition(m, n, k, threads, ASrc::kPrepacked ? 0.0 : pack_cost_a,
                       BSrc::kPrepacked ? 0.0 : pack_cost_b);
    parallel_tasks(threads, static_cast<int64_t>(blocks.size()), [&](int64_t t) {
        gemm_block(kern, a, b, k, c, ldc, blocks[static_cast<size_t>(t)], ep);
    });
}

}  // namespace rt
}  // namespace graphopt
