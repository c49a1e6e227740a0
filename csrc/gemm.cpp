// SGEMM driver: cache blocking, packing and threading around the per-ISA kernels.
//
// Loop nest (BLIS "Goto" ordering), per thread over its own [m0, m1) x [n0, n1) block of C:
//
//   for jc in N step NC:            B block KC x NC   -> packed once, lives in L3
//     for pc in K step KC:
//       pack B[pc:pc+kc, jc:jc+nc]  (kNR-wide k-major panels)
//       for ic in M step MC:        A block MC x KC   -> packed, lives in L2
//         pack A[ic:ic+mc, pc:pc+kc] (kMR-tall k-major panels)
//         for jr in nc step kNR:    one B micro-panel (KC x 16, 16 KiB) stays in L1
//                                   (AVX-512: two panels, 32 KiB, step 2 * kNR)
//           for ir in mc step kMR:  micro-kernel: 6x16 (AVX-512: 6x32) tile of C in registers
//             on the last pc: bias + activation on the tile while it is hot
//
// Threads split C into a tm x tn grid of independent blocks (each packs its own panels), so there
// is no barrier inside the loop nest. The grid shape is picked per call from a cost model that
// weighs the busiest thread's padded compute against the packing it repeats.
//
// Every C element is summed in the same order whatever the grid (K blocking depends on K only,
// edge tiles run the same micro-kernel through a scratch tile), so threads=1 and threads=N give
// bit-identical results.
#include "gemm.h"

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <new>

#include "cpu.h"
#include "gemm_kernels.h"

namespace graphopt {

namespace {

// Blocking: kGemmMC / kGemmKC / kGemmNC (gemm.h, shared with the runtime's rt_gemm.h).

// Below this many multiply-adds per thread, waking another thread costs more than it saves.
constexpr double kMinMacsPerThread = 96.0 * 96.0 * 96.0;
// Rough cost of packing one element, in multiply-add units, for the partition cost model.
constexpr double kPackCostInMacs = 8.0;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// A grow-only, 64-byte aligned scratch buffer.
class AlignedBuffer {
   public:
    AlignedBuffer() = default;
    AlignedBuffer(const AlignedBuffer&) = delete;
    AlignedBuffer& operator=(const AlignedBuffer&) = delete;
    ~AlignedBuffer() { std::free(data_); }

    float* reserve(int64_t count) {
        if (count > capacity_) {
            std::free(data_);
            const size_t bytes = static_cast<size_t>(round_up(count * 4, 64));
            data_ = static_cast<float*>(std::aligned_alloc(64, bytes));
            if (data_ == nullptr) throw std::bad_alloc();
            capacity_ = count;
        }
        return data_;
    }

   private:
    float* data_ = nullptr;
    int64_t capacity_ = 0;
};

// Packing buffers are kept per thread across calls: re-allocating a few MiB per call would cost
// page faults on every GEMM.
struct Workspace {
    AlignedBuffer a_pack;
    AlignedBuffer b_pack;
};

Workspace& thread_workspace() {
    static thread_local Workspace workspace;
    return workspace;
}

const GemmKernels& select_kernels(bool force_portable) { return best_gemm_kernels(force_portable); }

// Splits K into equal blocks of at most kGemmKC (4099 -> 17 blocks of <= 242, not 16 x 256 + 3).
int64_t k_block_size(int64_t k) { return ceil_div(k, ceil_div(k, kGemmKC)); }

// Packs `rows` panel rows from a source with element strides s_row (across the panel) and s_k
// (along k): dst[k * R + r] = src[r * s_row + k * s_k]. Handles every layout the ISA packers do
// not (panel rows contiguous, or arbitrary strides).
template <int64_t R>
void pack_strided(int64_t kc, int64_t rows, const float* src, int64_t s_row, int64_t s_k,
                  float* dst) {
    for (int64_t k = 0; k < kc; ++k) {
        const float* s = src + k * s_k;
        float* d = dst + k * R;
        if (s_row == 1) {
            for (int64_t r = 0; r < rows; ++r) d[r] = s[r];
        } else {
            for (int64_t r = 0; r < rows; ++r) d[r] = s[r * s_row];
        }
        for (int64_t r = rows; r < R; ++r) d[r] = 0.0f;
    }
}

void pack_a_block(const GemmKernels& kern, const MatrixRef& a, int64_t ic, int64_t mc, int64_t pc,
                  int64_t kc, float* dst) {
    for (int64_t p = 0; p < mc; p += kMR) {
        const int64_t rows = std::min(kMR, mc - p);
        const float* src = a.data + (ic + p) * a.row_stride + pc * a.col_stride;
        float* d = dst + p * kc;
        if (a.col_stride == 1) {
            kern.pack_a_k_contiguous(kc, rows, src, a.row_stride, d);
        } else {
            pack_strided<kMR>(kc, rows, src, a.row_stride, a.col_stride, d);
        }
    }
}

void pack_b_block(const GemmKernels& kern, const MatrixRef& b, int64_t pc, int64_t kc, int64_t jc,
                  int64_t nc, float* dst) {
    for (int64_t q = 0; q < nc; q += kNR) {
        const int64_t cols = std::min(kNR, nc - q);
        const float* src = b.data + pc * b.row_stride + (jc + q) * b.col_stride;
        float* d = dst + q * kc;
        if (b.row_stride == 1 && b.col_stride != 1) {
            // B given as [N, K] (torch Linear weight): each panel column is contiguous along k.
            kern.pack_b_k_contiguous(kc, cols, src, b.col_stride, d);
        } else {
            pack_strided<kNR>(kc, cols, src, b.col_stride, b.row_stride, d);
        }
    }
}

struct BlockTask {
    int64_t m0, m1, n0, n1;
};

void gemm_block(const GemmKernels& kern, const MatrixRef& a, const MatrixRef& b, float* c,
                int64_t ldc, const BlockTask& task, const GemmOptions& opt) {
    const int64_t k_total = a.cols;
    const int64_t kc_max = k_block_size(k_total);
    const int64_t mc_max = std::min(kGemmMC, round_up(task.m1 - task.m0, kMR));
    const int64_t nc_max = std::min(kGemmNC, round_up(task.n1 - task.n0, kNR));
    Workspace& ws = thread_workspace();
    float* a_pack = ws.a_pack.reserve(mc_max * kc_max);
    float* b_pack = ws.b_pack.reserve(nc_max * kc_max);
    const bool has_epilogue = opt.bias != nullptr || opt.activation != Activation::kNone;
    alignas(64) float edge_tile[kMR * kNR];

    for (int64_t jc = task.n0; jc < task.n1; jc += kGemmNC) {
        const int64_t nc = std::min(kGemmNC, task.n1 - jc);
        for (int64_t pc = 0; pc < k_total; pc += kc_max) {
            const int64_t kc = std::min(kc_max, k_total - pc);
            const bool accumulate = pc > 0;
            const bool last_k = pc + kc >= k_total;
            pack_b_block(kern, b, pc, kc, jc, nc, b_pack);
            for (int64_t ic = task.m0; ic < task.m1; ic += kGemmMC) {
                const int64_t mc = std::min(kGemmMC, task.m1 - ic);
                pack_a_block(kern, a, ic, mc, pc, kc, a_pack);
                for (int64_t jr = 0; jr < nc; jr += tile_cols(kern)) {
                    const int64_t nr = std::min(tile_cols(kern), nc - jr);
                    const float* bp = b_pack + jr * kc;
                    for (int64_t ir = 0; ir < mc; ir += kMR) {
                        const int64_t mr = std::min(kMR, mc - ir);
                        const float* ap = a_pack + ir * kc;
                        float* ct = c + (ic + ir) * ldc + (jc + jr);
                        compute_tile(kern, kc, ap, bp, ct, ldc, mr, nr, accumulate, edge_tile);
                        if (last_k && has_epilogue) {
                            const float* bias = opt.bias != nullptr ? opt.bias + jc + jr : nullptr;
                            kern.epilogue(ct, ldc, mr, nr, bias, opt.activation);
                        }
                    }
                }
            }
        }
    }
}

}  // namespace

const char* sgemm_kernel_name(bool force_portable) { return select_kernels(force_portable).name; }

GemmGrid gemm_grid(int64_t m, int64_t n, int64_t k, int threads, double pack_cost_a,
                   double pack_cost_b, double min_macs_per_thread) {
    const double macs = static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
    const int64_t useful = std::max<int64_t>(1, static_cast<int64_t>(macs / min_macs_per_thread));
    const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(threads, useful));
    GemmGrid best{round_up(m, kMR), round_up(n, kNR), 1, 1};
    double best_cost = -1.0;
    for (int64_t tm = 1; tm <= nt; ++tm) {
        if (nt % tm != 0) continue;
        const int64_t tn = nt / tm;
        const int64_t m_chunk = round_up(ceil_div(m, tm), kMR);
        const int64_t n_chunk = round_up(ceil_div(n, tn), kNR);
        // Busiest block: padded compute, plus packing its A block once per NC block and its
        // B block once. (Integer-valued doubles: exact, so the order of the sums is immaterial.)
        const double compute = static_cast<double>(m_chunk) * n_chunk * k;
        const double pack = pack_cost_a * m_chunk * k * ceil_div(n_chunk, kGemmNC) +
                            pack_cost_b * n_chunk * k;
        const double cost = compute + pack;
        if (best_cost < 0.0 || cost < best_cost) {
            best_cost = cost;
            best = GemmGrid{m_chunk, n_chunk, ceil_div(m, m_chunk), ceil_div(n, n_chunk)};
        }
    }
    return best;
}

void sgemm(const MatrixRef& a, const MatrixRef& b, float* c, int64_t ldc,
           const GemmOptions& options) {
    const GemmKernels& kern = select_kernels(options.force_portable);
    const int64_t m = a.rows;
    const int64_t n = b.cols;
    const int64_t k = a.cols;
    if (m == 0 || n == 0) return;
    if (k == 0) {
        // Empty sum: C = act(bias), or act(0).
        for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.0f);
        kern.epilogue(c, ldc, m, n, options.bias, options.activation);
        return;
    }

    const int threads = options.threads > 0 ? options.threads : omp_get_max_threads();
    const GemmGrid grid =
        gemm_grid(m, n, k, threads, kPackCostInMacs, kPackCostInMacs, kMinMacsPerThread);
    const int64_t tasks = grid.tm * grid.tn;
    auto task_at = [&](int64_t t) {
        const int64_t bi = t / grid.tn;
        const int64_t bj = t % grid.tn;
        return BlockTask{bi * grid.m_chunk, std::min(m, (bi + 1) * grid.m_chunk),
                         bj * grid.n_chunk, std::min(n, (bj + 1) * grid.n_chunk)};
    };
    if (tasks == 1) {
        gemm_block(kern, a, b, c, ldc, task_at(0), options);
        return;
    }
    // An exception must not escape an OpenMP region (std::terminate); carry it out instead.
    std::exception_ptr failure;
#pragma omp parallel num_threads(static_cast<int>(tasks))
    {
        try {
            // The runtime may grant fewer threads than asked (nested regions, OMP_THREAD_LIMIT).
            for (int64_t t = omp_get_thread_num(); t < tasks; t += omp_get_num_threads()) {
                gemm_block(kern, a, b, c, ldc, task_at(t), options);
            }
        } catch (...) {
#pragma omp critical(graphopt_sgemm_failure)
            failure = std::current_exception();
        }
    }
    if (failure) std::rethrow_exception(failure);
}

}  // namespace graphopt
