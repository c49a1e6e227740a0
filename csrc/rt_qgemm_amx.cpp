// The int8 GEMM's AMX driver (rt_qgemm.h: qgemm_run sends products of 8 rows or more here on a
// CPU with AMX and the VNNI kernel set). The tile kernel is amx_int8_block (rt_amx.cpp).
// fp-contract off, as in rt_qgemm.cpp: the epilogue it calls must round like the reference.
#pragma GCC optimize("fp-contract=off")

#include <algorithm>
#include <cstring>

#include "epilogue.h"
#include "rt_amx.h"
#include "rt_parallel.h"
#include "rt_qgemm.h"

namespace graphopt {
namespace rt {
namespace {

// A [M, K] u8 copied into zero-padded rows of kp bytes for the AMX tiles (rows past M zero).
void pack_a_rows_amx(const QMatrixRef& a, int64_t kp, int64_t r0, int64_t r1, uint8_t* dst) {
    for (int64_t r = r0; r < r1; ++r) {
        uint8_t* row = dst + r * kp;
        std::memset(row, 0, static_cast<size_t>(kp));
        if (r >= a.rows) continue;
        const uint8_t* src = a.data + r * a.row_stride;
        if (a.col_stride == 1) {
            std::memcpy(row, src, static_cast<size_t>(a.cols));
        } else {
            for (int64_t kk = 0; kk < a.cols; ++kk) row[kk] = src[kk * a.col_stride];
        }
    }
}

// The finish of one computed block (zero-point correction, dequantize, bias, activation...,
// the same steps as the VNNI tiles), run in pieces while the next block's tiles compute
// (AmxStepHook): a piece is `chunk` rows of one 16 x 16 tile.
struct PendingBlock {
    const QGemmArgs* g = nullptr;  // with the zero point removed: corrected here, vectorised
    const QGemmArgs* original = nullptr;
    const QGemmKernels* kern = nullptr;
    const float* col_scale = nullptr;
    int32_t* acc = nullptr;
    int64_t i0 = 0, q0 = 0, chunk = 16, pieces = 0, done = 0;
    int rb = 0, cb = 0;
    bool fused = false;  // f32 contiguous output with the AVX-512 epilogue: finish_fused

    int64_t chunks_per_tile() const { return ceil_div(16, chunk); }

    void run_piece(int64_t piece) const {
        const int64_t tile_index = piece / chunks_per_tile(), r0 = (piece % chunks_per_tile()) * chunk;
        const int r = static_cast<int>(tile_index / cb), c = static_cast<int>(tile_index % cb);
        const int64_t ti = i0 + 16 * r, tj = (q0 + c) * 16, m = g->a.rows;
        const int64_t rows = std::min<int64_t>({chunk, 16 - r0, m - ti - r0});
        if (rows <= 0) return;
        const int64_t nr = std::min(kQNR, g->w->n() - tj);
        int32_t* rows_at = acc + 256 * (2 * r + c) + r0 * kQNR;
        const QGemmArgs& o = *original;
        const bool zero_point = o.a_zp != 0 || o.a_row_zp != nullptr;
        if (fused && finish_fused(o, rows_at, ti + r0, tj, rows, nr, zero_point)) return;
        if (zero_point) {
            amx_int8_zero_point(rows_at, rows, g->w->colsum() + tj, nr,
                                o.a_row_zp != nullptr ? o.a_row_zp + ti + r0 : nullptr, o.a_zp);
        }
        qgemm_finish_tile(*kern, *g, col_scale, rows_at, ti + r0, tj, rows, nr);
    }
    // The contiguous f32 output's finish in one vector pass (qfinish_f32_avx512), where the
    // epilogue it must match bit for bit is the AVX-512 one.
    bool finish_fused(const QGemmArgs& o, const int32_t* rows_at, int64_t i0, int64_t j0,
                      int64_t rows, int64_t nr, bool zero_point) const {
        const float* c_at = o.c + i0 * o.ldc + j0;
        const float* res = o.residual_in_c ? c_at
                           : o.residual != nullptr ? o.residual + i0 * o.ldr + j0 : nullptr;
        const bool per_row = o.a_row_scale != nullptr;
        const QFinishF32 f{rows_at,
                           zero_point ? o.w->colsum() + j0 : nullptr,
                           o.a_row_zp != nullptr ? o.a_row_zp + i0 : nullptr,
                           o.a_zp,
                           per_row ? o.w_scale + j0 : col_scale + j0,
                           per_row ? o.a_row_scale + i0 : nullptr,
                           o.bias != nullptr ? o.bias + j0 : nullptr,
                           res,
                           o.residual_in_c ? o.ldc : o.ldr,
                           o.c + i0 * o.ldc + j0,
                           o.ldc};
        return qfinish_f32_avx512(f, rows, nr, o.act.act);
    }
    void run_to(int64_t target) {
        for (; done < target; ++done) run_piece(done);
    }
    static void step(void* self, int64_t s, int64_t steps) {
        auto* p = static_cast<PendingBlock*>(self);
        p->run_to(p->pieces * (s + 1) / steps);
    }
};

}  // namespace

// The int8 GEMM on AMX tiles: 32 x 32 blocks of exact int32 sums (TDPBUSD: u8 x s8, the
// kQuadU8 arithmetic), each finished by the same zero-point correction and epilogue as the
// VNNI tiles, so the results are identical. A block's finish runs while the next block
// computes (PendingBlock), so its accumulators alternate between two buffers.
void qgemm_run_amx(const QGemmArgs& g, const QGemmKernels& kern, const float* col_scale,
                   int threads) {
    const PackedQWeight& w = *g.w;
    const int64_t m = g.a.rows, n = w.n(), kp = w.steps() * 4, groups = w.steps() / 16;
    const int64_t mp = round_up(m, 16);
    const uint8_t* a = g.a.data;  // already in this layout (the dynamic path quantizes into it)
    if (!(g.a_amx_rows && g.a.row_stride == kp && g.a.col_stride == 1)) {
        auto* packed =
            reinterpret_cast<uint8_t*>(qgemm_scratch().packed.reserve(ceil_div(mp * kp, 4)));
        parallel_for(threads, mp, kp, [&](int64_t r0, int64_t r1) {
            pack_a_rows_amx(g.a, kp, r0, r1, packed);
        });
        a = packed;
    }
    const int64_t row_blocks = ceil_div(mp, 32), col_tiles = ceil_div(n, 16);
    const int64_t blocks = row_blocks * ceil_div(col_tiles, 2);
    const int nt = static_cast<int>(std::min<int64_t>(
        blocks, threads_for(threads, blocks * 32 * 32 * kp / 16)));
    // The zero-point correction runs vectorised on the tiles; finish_tile skips its own.
    QGemmArgs corrected = g;
    corrected.a_zp = 0;
    corrected.a_row_zp = nullptr;
    // The f32 epilogue takes any number of rows; the others work in 6-row tiles.
    const int64_t chunk = g.c_u8 == nullptr && g.c_cs == 1 ? 16 : kQMR;
    const bool fused = chunk == 16 && kern.dequant == qdequant_avx512 &&
                       gemm_kernels().epilogue == epilogue_avx512;
    // A few contiguous block ranges per thread, claimed dynamically (a core slowed by another
    // process takes fewer); each range finishes its last block itself.
    const int64_t tasks = std::min<int64_t>(blocks, nt * kChunksPerThread);
    parallel_tasks(nt, tasks, [&](int64_t t) {
        alignas(64) int32_t acc[2][4 * 256];
        PendingBlock pending{&corrected, &g, &kern, col_scale};
        pending.fused = fused;
        amx_begin();
        for (int64_t b = blocks * t / tasks; b < blocks * (t + 1) / tasks; ++b) {
            const int64_t i0 = (b % row_blocks) * 32, q0 = (b / row_blocks) * 2;
            const int rb = mp - i0 >= 32 ? 2 : 1, cb = col_tiles - q0 >= 2 ? 2 : 1;
            // While the row blocks of this column pair run, the next pair's panels stream in.
            const int64_t ib = b % row_blocks, next_q = q0 + 2;
            const AmxPrefetch pf =
                next_q < col_tiles
                    ? amx_prefetch_share(w.panel(next_q),
                                         std::min<int64_t>(2, col_tiles - next_q) * kp * 16, ib,
                                         row_blocks)
                    : AmxPrefetch{};
            int32_t* out = acc[b % 2];
            amx_int8_block(a + i0 * kp, kp, w.panel(q0), w.panel(cb == 2 ? q0 + 1 : q0), groups,
                           rb, cb, out, pf, AmxStepHook{&PendingBlock::step, &pending});
            pending.run_to(pending.pieces);
            pending.acc = out;
            pending.i0 = i0;
            pending.q0 = q0;
            pending.rb = rb;
            pending.cb = cb;
            pending.chunk = chunk;
            pending.pieces = rb * cb * pending.chunks_per_tile();
            pending.done = 0;
        }
        pending.run_to(pending.pieces);
        amx_end();
    });
}

}  // namespace rt
}  // namespace graphopt
