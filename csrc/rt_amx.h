// AMX tile state and the int8 tile block shared by the runtime's AMX kernels (rt_amx.cpp).
//
// A thread calls amx_begin() before its first tile instruction (loads the one tile
// configuration every AMX kernel here uses: eight tiles of 16 rows x 64 bytes) and amx_end()
// after its last (releases the tile state, so context switches stop saving it). Both only after
// cpu_features().use_amx said yes.
#pragma once

#include <cstdint>

namespace graphopt {
namespace rt {

void amx_begin();
void amx_end();

// int8 block: C (rb x cb tiles of 16 x 16 int32, rb, cb in {1, 2}) = A_u8 @ B_s8 over `groups`
// K groups of 64. A: row-major u8 rows (a_stride bytes apart; rows 16..31 of the block at
// a + 16 * a_stride); B: per column tile, a run of [groups][16 steps][16 columns][4] s8 (a
// kQuadU8 weight panel, rt_qgemm.h). out: tile (r, c) at out + 256 * (2r + c), rows of 16.
//
// Prefetch: weights stream from memory once per product (a layer's weight is not in cache when
// the layer starts), so while a block computes, the kernel prefetches into L2 the weight bytes
// a later block will read: pf_lines cache lines from `prefetch` on, spread over the K loop
// (prefetch may be null).
struct AmxPrefetch {
    const char* from = nullptr;
    int64_t lines = 0;
};
//
// Step hook: vector work run between the tile instructions, once per K group (the finish of the
// previous block: TMUL and the vector units run side by side, so an epilogue hidden this way
// costs little; rt_qgemm_amx.cpp). fn(ctx, group, groups); fn may be null.
struct AmxStepHook {
    void (*fn)(void* ctx, int64_t step, int64_t steps) = nullptr;
    void* ctx = nullptr;
};
void amx_int8_block(const uint8_t* a, int64_t a_stride, const uint8_t* b0, const uint8_t* b1,
                    int64_t groups, int rb, int cb, int32_t* out, AmxPrefetch prefetch = {},
                    AmxStepHook hook = {});

// The prefetch share of block `index` of `count` blocks covering [from, from + bytes).
inline AmxPrefetch amx_prefetch_share(const void* from, int64_t bytes, int64_t index,
                                      int64_t count) {
    const int64_t lines = (bytes + 63) / 64;
    const int64_t first = lines * index / count, last = lines * (index + 1) / count;
    return {static_cast<const char*>(from) + first * 64, last - first};
}

// Issues the prefetches of step `step` of `steps` (called once per K step by the kernels).
inline void amx_prefetch_step(const AmxPrefetch& p, int64_t step, int64_t steps) {
    const int64_t first = p.lines * step / steps, last = p.lines * (step + 1) / steps;
    for (int64_t l = first; l < last; ++l) __builtin_prefetch(p.from + l * 64, 0, 2);
}

// Zero-point correction of a finished 16 x 16 int32 tile (rows of 16): for r < rows, j < cols,
// tile[r][j] -= zp_r * colsum[j], zp_r = row_zp[r] (per-row quantization) or zp.
void amx_int8_zero_point(int32_t* tile, int64_t rows, const int32_t* colsum, int64_t cols,
                         const int32_t* row_zp, int32_t zp);

// Attention products in bf16 on AMX tiles (rt_attention_amx.cpp), fp32 sums. Rows are padded
// to 16 with zeros in the scratch copies; `scores` / `acc` have room for round_up(rows, 16)
// rows (ld_s, ld_acc multiples of 16).
//   scores[i, j] = scale * sum_e bf16(q[i, e]) bf16(k[j, e])          i < rows, j < cols
//   acc[i, c]   += sum_j bf16(p[i, j]) bf16(v[j, c])                 c < ev
// q / k / v rows at q_rs / k_rs / v_rs floats apart, contiguous along e / c; p = scores.
struct AttnAmxScratch {
    uint16_t* a = nullptr;  // rows_p x kp bf16 (the A operand)
    uint16_t* b = nullptr;  // packed B tiles
};
int64_t attn_amx_scratch_elems(int64_t rows, int64_t cols, int64_t e, int64_t ev);
void attn_amx_scores(const float* q, int64_t q_rs, int64_t rows, int64_t e, const float* k,
                     int64_t k_rs, int64_t cols, float scale, float* scores, int64_t ld_s,
                     const AttnAmxScratch& scratch);
//   (p == nullptr: P already rounded and packed in scratch.a by attn_amx_softmax_row)
void attn_amx_pv(const float* p, int64_t ld_p, int64_t rows, int64_t cols, const float* v,
                 int64_t v_rs, int64_t ev, float* acc, int64_t ld_acc,
                 const AttnAmxScratch& scratch);
// One row of the streaming softmax on the AMX path: the row's scores (scaled; `keep`, when
// given, the row's bool mask bytes: false -> -inf, written back) and their maximum m =
// max(m_old, row max) into *m_new; then exp(s - m) summed in f32 and stored rounded to bf16
// as the P row of the PV product (zero padded to round_up(cols, 32)). Returns the sum; a row
// with nothing visible (m = -inf) gets a zero P row and sum 0. The tail lanes run the same
// vector exp as the rest.
float attn_amx_softmax_row(float* srow, int64_t cols, const uint8_t* keep, float m_old,
                           float* m_new, uint16_t* p_row);
// Its f32 twin for the f32 products on AVX-512 CPUs (rt_attention_avx512.cpp): the same masking
// and maximum, then exp(s - m) written back into srow (0 where masked or past a row with nothing
// visible); returns the sum.
float attn_softmax_row_avx512(float* srow, int64_t cols, const uint8_t* keep, float m_old,
                              float* m_new);
// Zeroes the padding rows [rows, round_up(rows, 16)) of a packed P (row length round_up(cols,
// 32)).
void attn_amx_zero_rows(uint16_t* a, int64_t rows, int64_t cols);

}  // namespace rt
}  // namespace graphopt
