// Weight-only quantized linear layers: float activations, block-wise int8 / int4 weights that
// stay quantized in memory and are dequantized inside the kernel (graphopt's
// linear_weight_only, packed as onnxruntime's MatMulNBits):
//
//   codes: u8 [N, n_blocks, blob], row n holds the codes of W[n, :] in K order (4-bit: two per
//          byte, the low nibble first), padded to n_blocks * block_size;
//   W[n, k] = (code(n, k) - 2**(bits - 1)) * scales[n, k / block_size]     (f32 product)
//   y = act(x @ W^T + bias + residual)
//
// Two paths:
//  * GEMV (M <= kGemvMaxRows rows): each weight row is streamed once for all rows of x,
//    decoded 16 codes at a time in registers; a block's partial dot product is scaled once.
//  * GEMM: a B operand source for the SGEMM driver (rt_gemm.h) that decodes the K x 16 panels
//    it is asked for into the packing scratch (exactly the reference's f32 weights), so the
//    whole micro-kernel / epilogue machinery is reused and no f32 copy of W is kept.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <vector>

#include "cpu.h"
#include "rt_gemm.h"

namespace graphopt {
namespace rt {

// Sum of the 8 lanes (the AVX2 loops' final reduction).
GRAPHOPT_TARGET_AVX2_FMA inline float wo_hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

struct WoWeight {
    const uint8_t* codes;
    const float* scales;  // [N, n_blocks]
    int64_t n, k, bits, block_size, n_blocks;
    int64_t row_bytes() const { return n_blocks * block_size * bits / 8; }
    int32_t zero_point() const { return 1 << (bits - 1); }
};

// dst[j] = W[n, k0 + j] for j < count (the reference's f32 weights).
void wo_decode_row(const WoWeight& w, int64_t n, int64_t k0, int64_t count, float* dst);
void wo_decode_row_avx2(const WoWeight& w, int64_t n, int64_t k0, int64_t count, float* dst);

// out[r * 16 + j] = sum_k x[r, k] * W[n0 + j, k] for r < rows, j < cols (<= 16).
using WoGemvFn = void (*)(const WoWeight& w, int64_t rows, const float* x, int64_t x_rs,
                          int64_t n0, int64_t cols, float* out);
void wo_gemv_portable(const WoWeight& w, int64_t rows, const float* x, int64_t x_rs, int64_t n0,
                      int64_t cols, float* out);
void wo_gemv_avx2(const WoWeight& w, int64_t rows, const float* x, int64_t x_rs, int64_t n0,
                  int64_t cols, float* out);
void wo_gemv_avx512(const WoWeight& w, int64_t rows, const float* x, int64_t x_rs, int64_t n0,
                    int64_t cols, float* out);

// B = W^T [K, N] for gemm_run, decoded panel by panel.
struct WoDequantB {
    WoWeight w;
    const float* get(int64_t pc, int64_t kc, int64_t start, int64_t count,
                     AlignedFloats& scratch) const;
    static constexpr bool kPrepacked = false;
};

// The same with x quantized per block to int8 and integer block dot products (act_bits = 8;
// rt_wo_int8.cpp): AVX-512 VNNI when the CPU has it, else AVX2, else a portable loop.
void wo_int8_run(const WoWeight& w, const MatrixRef& x, float* c, int64_t ldc,
                 const EpilogueSpec& ep, int threads);
// "avx512vnni", "avx2" or "portable": the path wo_int8_run takes for blocks of 32 or more.
const char* wo_int8_isa();

// Rows of x quantized per weight block (k_padded int8 values a row, zeros past K) and their
// scales [rows, n_blocks].
struct Int8Rows {
    const int8_t* q;
    const float* scale;
    int64_t k_padded;
};
// The AVX2 path of wo_int8_run (rt_wo_int8_avx2.cpp): whether it takes w (8-bit: blocks of 32
// or more; 4-bit: blocks of 32 or multiples of 64); x's quantized rows arranged once per call
// into the codes' order; then out[r * 16 + j] for rows m0.. of x against weight rows n0..
// (rows <= 4, cols <= 16).
struct WoInt8Avx2Rows {
    std::vector<int8_t> x;                 // [rows, k_arranged]
    std::vector<int32_t> zero_point_share;  // [rows, blocks_padded]: 4-bit zp * block sum of x
    std::vector<float> scale;              // [rows, blocks_padded], zeros past n_blocks
    int64_t k_arranged = 0, blocks_padded = 0;
};
bool wo_int8_avx2_takes(const WoWeight& w);
WoInt8Avx2Rows wo_int8_avx2_arrange(const WoWeight& w, const Int8Rows& x, int64_t rows);
void wo_int8_panel_avx2(const WoWeight& w, const WoInt8Avx2Rows& x, int64_t m0, int64_t rows,
                        int64_t n0, int64_t cols, float* out);
// "avx512", "avx2" or "portable": the path of the float-activation GEMV (M <= 4).
const char* wo_gemv_isa();

// y = epilogue(x @ W^T) for x [M, K] (row stride x_rs, contiguous columns) into c [M, N].
void wo_linear_run(const WoWeight& w, const MatrixRef& x, float* c, int64_t ldc,
                   const EpilogueSpec& ep, int threads);

}  // namespace rt
}  // namespace graphopt
