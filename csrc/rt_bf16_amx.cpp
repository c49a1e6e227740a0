// AMX kernels of the bf16 GEMM (rt_bf16.h): activation rounding into tiles and the 32 x 32
// block kernel on TDPBF16PS. Compiled per function for AMX (GRAPHOPT_TARGET_AMX); only called
// when cpu_features().use_amx said yes.
//
// Tile registers: tmm0..3 accumulate C (rows r, columns c of the 32 x 32 block in tmm(2r + c)),
// tmm4/5 hold two 16 x 32 activation tiles, tmm6/7 two weight tiles. Every tile is configured
// 16 rows x 64 bytes; edges are handled by zero padding (activation rows past M, K past the
// end) and by writing only the valid part of a block to C.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "cpu.h"
#include "rt_amx.h"
#include "rt_bf16.h"

namespace graphopt {
namespace rt {
namespace {

// Where the four accumulator tiles of a block live while it is computed: C itself where the
// 16 x 16 tile is entirely inside C, else an edge buffer (copied to and from C around it).
struct BlockTiles {
    float* ptr[4];
    int64_t stride_bytes[4];
};

// The epilogue (bias, activation, ...) of the block finished last, run in row slices while
// the next block's tile products execute: the vector units are idle during TDPBF16PS, and an
// erf-GELU over a 32 x 32 block costs about as much as the block's products at K = 768.
struct DeferredEpilogue {
    const Bf16AmxProblem* p = nullptr;
    int64_t i0 = 0, j0 = 0, rows = 0, cols = 0, done = 0;

    // Runs rows [done, target) of the pending block.
    void run_to(int64_t target) {
        if (target <= done) return;
        gemm_tile_epilogue(gemm_kernels(), p->c + (i0 + done) * p->ldc + j0, p->ldc, i0 + done,
                           j0, target - done, cols, *p->ep);
        done = target;
    }
    // The share of step `s` of `steps`.
    void step(int64_t s, int64_t steps) { run_to(rows * (s + 1) / steps); }
    void finish() { run_to(rows); }
};

// One 32 x 32 (RB x CB tiles of 16 x 16) block over all K steps. The accumulators start from
// the tiles' memory when `accumulate` (C holds a residual), else from zero, and end there.
template <int RB, int CB>
GRAPHOPT_TARGET_AMX void block_kernel(const uint16_t* a, int64_t a_stride_bytes,
                                      int64_t a_tile_rows, const uint16_t* b0, const uint16_t* b1,
                                      int64_t steps, const BlockTiles& c, bool accumulate,
                                      const AmxPrefetch& prefetch, DeferredEpilogue& pending) {
    if (accumulate) {
        _tile_loadd(0, c.ptr[0], c.stride_bytes[0]);
        if (CB == 2) _tile_loadd(1, c.ptr[1], c.stride_bytes[1]);
        if (RB == 2) _tile_loadd(2, c.ptr[2], c.stride_bytes[2]);
        if (RB == 2 && CB == 2) _tile_loadd(3, c.ptr[3], c.stride_bytes[3]);
    } else {
        _tile_zero(0);
        if (CB == 2) _tile_zero(1);
        if (RB == 2) _tile_zero(2);
        if (RB == 2 && CB == 2) _tile_zero(3);
    }
    const uint16_t* a1 = a + a_tile_rows;
    for (int64_t s = 0; s < steps; ++s) {
        amx_prefetch_step(prefetch, s, steps);
        pending.step(s, steps);
        _tile_loadd(4, a + s * kBf16TileK, a_stride_bytes);
        _tile_loadd(6, b0 + s * kBf16TileElems, 64);
        if (CB == 2) _tile_loadd(7, b1 + s * kBf16TileElems, 64);
        _tile_dpbf16ps(0, 4, 6);
        if (CB == 2) _tile_dpbf16ps(1, 4, 7);
        if (RB == 2) {
            _tile_loadd(5, a1 + s * kBf16TileK, a_stride_bytes);
            _tile_dpbf16ps(2, 5, 6);
            if (CB == 2) _tile_dpbf16ps(3, 5, 7);
        }
    }
    _tile_stored(0, c.ptr[0], c.stride_bytes[0]);
    if (CB == 2) _tile_stored(1, c.ptr[1], c.stride_bytes[1]);
    if (RB == 2) _tile_stored(2, c.ptr[2], c.stride_bytes[2]);
    if (RB == 2 && CB == 2) _tile_stored(3, c.ptr[3], c.stride_bytes[3]);
}

// Valid rows / columns of tile (r, c) of the block at (i0, j0).
struct TileExtent {
    int64_t rows, cols;
};
TileExtent tile_extent(const Bf16AmxProblem& p, int64_t i0, int64_t j0, int r, int c) {
    return {std::clamp<int64_t>(p.m - i0 - 16 * r, 0, 16),
            std::clamp<int64_t>(p.w->n() - j0 - 16 * c, 0, 16)};
}

// Points each tile at C or, for an edge tile, at its slot of `edge` (holding C's valid part
// when the block accumulates onto C).
BlockTiles place_tiles(const Bf16AmxProblem& p, int64_t i0, int64_t j0, float* edge) {
    BlockTiles t;
    for (int idx = 0; idx < 4; ++idx) {
        const int r = idx / 2, c = idx % 2;
        const TileExtent e = tile_extent(p, i0, j0, r, c);
        float* at_c = p.c + (i0 + 16 * r) * p.ldc + j0 + 16 * c;
        if (e.rows == 16 && e.cols == 16) {
            t.ptr[idx] = at_c;
            t.stride_bytes[idx] = p.ldc * 4;
            continue;
        }
        float* buf = edge + idx * 256;
        t.ptr[idx] = buf;
        t.stride_bytes[idx] = 64;
        if (p.ep->residual_in_c) {
            std::fill(buf, buf + 256, 0.0f);
            for (int64_t i = 0; i < e.rows; ++i) {
                std::copy(at_c + i * p.ldc, at_c + i * p.ldc + e.cols, buf + i * 16);
            }
        }
    }
    return t;
}

// Copies the edge tiles back to C; the epilogue of the block's valid part becomes `pending`
// (the previous pending one must have finished).
void finish_block(const Bf16AmxProblem& p, const BlockTiles& t, int64_t i0, int64_t j0,
                  int rb, int cb, DeferredEpilogue& pending) {
    for (int idx = 0; idx < 4; ++idx) {
        const int r = idx / 2, c = idx % 2;
        if (r >= rb || c >= cb || t.stride_bytes[idx] != 64) continue;
        const TileExtent e = tile_extent(p, i0, j0, r, c);
        float* at_c = p.c + (i0 + 16 * r) * p.ldc + j0 + 16 * c;
        for (int64_t i = 0; i < e.rows; ++i) {
            std::copy(t.ptr[idx] + i * 16, t.ptr[idx] + i * 16 + e.cols, at_c + i * p.ldc);
        }
    }
    const int64_t rows = std::min<int64_t>(rb * 16, p.m - i0);
    const int64_t cols = std::min<int64_t>(cb * 16, p.w->n() - j0);
    pending.finish();
    pending = DeferredEpilogue{&p, i0, j0, std::max<int64_t>(rows, 0), cols, 0};
}

}  // namespace

GRAPHOPT_TARGET_AMX void bf16_pack_rows_amx(const MatrixRef& a, int64_t kp, int64_t r0,
                                            int64_t r1, uint16_t* out) {
    const int64_t k = a.cols;
    for (int64_t r = r0; r < r1; ++r) {
        uint16_t* dst = out + r * kp;
        if (r >= a.rows) {
            std::memset(dst, 0, static_cast<size_t>(kp) * 2);
            continue;
        }
        const float* src = a.data + r * a.row_stride;
        int64_t j = 0;
        if (a.col_stride == 1) {
            for (; j + 16 <= k; j += 16) {
                const __m256bh v = _mm512_cvtneps_pbh(_mm512_loadu_ps(src + j));
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + j), (__m256i)v);
            }
        }
        for (; j < k; ++j) dst[j] = bf16_bits(src[j * a.col_stride]);
        std::memset(dst + k, 0, static_cast<size_t>(kp - k) * 2);
    }
}

GRAPHOPT_TARGET_AMX void bf16_amx_blocks(const Bf16AmxProblem& p, int64_t first, int64_t last) {
    if (first >= last) return;
    amx_begin();
    alignas(64) float edge[4 * 256];
    const int64_t row_blocks = (p.mp + 31) / 32;
    const int64_t col_tiles = (p.w->n() + 15) / 16;
    const int64_t steps = p.w->k_steps();
    const int64_t stride_bytes = p.kp * 2;
    const bool acc = p.ep->residual_in_c;
    DeferredEpilogue pending;
    for (int64_t t = first; t < last; ++t) {
        const int64_t jb = t / row_blocks, ib = t % row_blocks;
        const int64_t i0 = ib * 32, q0 = jb * 2;
        const int rb = p.mp - i0 >= 32 ? 2 : 1;
        const int cb = col_tiles - q0 >= 2 ? 2 : 1;
        const uint16_t* a = p.a16 + i0 * p.kp;
        const uint16_t* b0 = p.w->tile(q0, 0);
        const uint16_t* b1 = cb == 2 ? p.w->tile(q0 + 1, 0) : b0;
        const int64_t a_tile = 16 * p.kp;
        const BlockTiles tiles = place_tiles(p, i0, q0 * 16, edge);
        // While the row blocks of this column pair run, the next pair's tiles stream into L2
        // (a layer's weight is not in cache when the layer starts; rt_amx.h).
        const int64_t next_q = q0 + 2;
        const AmxPrefetch pf =
            next_q < col_tiles
                ? amx_prefetch_share(p.w->tile(next_q, 0),
                                     std::min<int64_t>(2, col_tiles - next_q) * steps *
                                         kBf16TileElems * 2,
                                     ib, row_blocks)
                : AmxPrefetch{};
        if (rb == 2 && cb == 2) {
            block_kernel<2, 2>(a, stride_bytes, a_tile, b0, b1, steps, tiles, acc, pf,
                               pending);
        } else if (rb == 2) {
            block_kernel<2, 1>(a, stride_bytes, a_tile, b0, b1, steps, tiles, acc, pf,
                               pending);
        } else if (cb == 2) {
            block_kernel<1, 2>(a, stride_bytes, a_tile, b0, b1, steps, tiles, acc, pf,
                               pending);
        } else {
            block_kernel<1, 1>(a, stride_bytes, a_tile, b0, b1, steps, tiles, acc, pf,
                               pending);
        }
        finish_block(p, tiles, i0, q0 * 16, rb, cb, pending);
    }
    pending.finish();
    amx_end();
}

}  // namespace rt
}  // namespace graphopt
