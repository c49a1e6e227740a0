// The runtime's int8 GEMM: C = epilogue((A_u8 - a_zp) @ W_s8^T), exact int32 accumulation.
//
//   A  [M, K] u8 activations with a per-tensor zero point a_zp, or per-row a_row_zp[m] and
//      scales a_row_scale[m] (per-token dynamic quantization); any strides;
//   W  [N, K] s8 weights (a linear layer's layout), packed once at plan build (PackedQWeight);
//   acc[m, n] = sum_k (A[m, k] - a_zp) * W[n, k]                        (exact, int32)
//   f32 out:  y = act(float(acc) * (a_scale * w_scale[n]) + bias[n] + residual[m, n])
//             (a_row_scale[m] in place of a_scale with per-row quantization)
//   u8 out:   q = saturate_u8(round_half_even(y / y_scale) + y_zp)      (requantize epilogue)
//
// Both the order of the float operations and the rounding follow graphopt's reference ops
// (qlinear_dynamic; the static qlinear / qconv): a_scale * w_scale[n] is one f32 product,
// then the integer accumulator (converted to f32) is multiplied by it, bias and residual are
// added one at a time (no fused multiply-add: the files computing these are built with
// fp-contract off).
//
// Saturation. AVX2's vpmaddubsw (u8 x s8 pairs into a *saturating* i16) overflows for
// 255 * 127 * 2, so it is not used. Two exact schemes, chosen once per process:
//  * kPairI16 (AVX2, portable): A is packed as i16 (A - a_zp) in [-255, 255], W as i16, and
//    vpmaddwd sums i16 pairs into i32 (|255 * 128 * 2| fits easily). No zero-point correction.
//    On AVX2 machines vpmaddwd has the throughput of vpmaddubsw (both are multiplier uops,
//    16 multiply-adds each per 32-byte vector once vpmaddubsw's pair sums are widened), so
//    exactness costs nothing in the kernel; only the packed weight is 2 bytes per element.
//  * kQuadU8 (AVX-VNNI): vpdpbusd sums four u8 x s8 products into i32 without intermediate
//    saturation (32 multiply-adds per instruction). A stays u8; the zero point is corrected with
//    the weight column sums precomputed at pack time: acc = sum A * W - a_zp * colsum[n].
// The int32 accumulator is exact for K <= kQGemmMaxK (255 * 128 * K < 2^31).
//
// Blocking: the whole K is accumulated in registers for one kQMR x kQNR tile (no K blocks, no
// partial sums in C); A is quantized and packed once per call for all rows, then threads take
// tiles (column-panel major, so a weight panel is reused across the rows while it is in cache).
// M <= kQMR (GEMV) is the same path with a 1..6-row tile.
#pragma once

#include <cstdint>
#include <vector>

#include "rt_gemm.h"

namespace graphopt {
namespace rt {

constexpr int64_t kQMR = 6;   // tile rows
constexpr int64_t kQNR = 16;  // tile columns (one weight panel)
constexpr int64_t kQGemmMaxK = 65536;

enum class QFormat : int32_t { kPairI16 = 0, kQuadU8 = 1 };

// K steps of one packed element group: 2 (i16 pairs) or 4 (u8 / s8 quads).
inline int64_t qformat_group(QFormat f) { return f == QFormat::kPairI16 ? 2 : 4; }

// Packed layouts (each step is one group of K):
//   weight panel (16 columns):  kPairI16: i16 [steps][16][2]    kQuadU8: s8 [steps][16][4]
//   activation panel (6 rows):  kPairI16: i16 [steps][6][2]     kQuadU8: u8 [steps][6][4]
// i.e. 64 bytes per step for a weight panel, 24 for an activation panel, in both formats.
// K past the end is zero in both operands.
constexpr int64_t kQPanelStepBytesB = 64;
constexpr int64_t kQPanelStepBytesA = 24;

// out[r * 16 + j] = sum over `steps` of activation row r . weight column j, for r < rows.
using QTileFn = void (*)(int64_t rows, int64_t steps, const uint8_t* a, const uint8_t* b,
                         int32_t* out);
// Row-wise min / max of rows x cols floats (row stride rs, contiguous columns), into lo / hi.
using QMinMaxFn = void (*)(const float* x, int64_t rows, int64_t cols, int64_t rs, float* lo,
                           float* hi);
// q[i] = clamp(round_half_even(x[i] / scale) + zp, 0, 255) for contiguous x.
using QQuantizeFn = void (*)(const float* x, int64_t n, float scale, float zp, uint8_t* q);
// c[r * ldc + j] = float(acc[r * 16 + j]) * s (+ bias[j]) (+ res[r * ldr + j]), for r < rows,
// j < cols (<= 16), with s = col_scale[j], or, when row_scale is given (per-token activations),
// the f32 product row_scale[r] * col_scale[j]. bias / res / row_scale may be null; res may alias
// c (in-place residual).
using QDequantFn = void (*)(const int32_t* acc, int64_t rows, int64_t cols,
                            const float* col_scale, const float* row_scale, const float* bias,
                            const float* res, int64_t ldr, float* c, int64_t ldc);

struct QGemmKernels {
    const char* name;
    QFormat format;
    QTileFn tile;
    QMinMaxFn minmax;
    QQuantizeFn quantize;
    QDequantFn dequant;
};

// Pieces shared between the tables: the scalar quantizer (x / scale, round half to even, + zp,
// clamp to [0, 255]; NaN -> 0), the portable dequantize, and the AVX2 loops (reused by AVX-VNNI).
uint8_t quantize_one(float x, float scale, float zp);

// The vector quantizers' division-free path. y = x * fl(1 / scale) differs from the correctly
// rounded quotient fl(x / scale) by at most 3 * 2^-24 * |y| (two more roundings, each <= 2^-24
// relative) when scale and 1 / scale are normal floats: below 2^-13 for |y| < 512. Where y is
// farther than kQuantFastMargin = 0.5 - 2^-12 from the integer it rounds to, both round to the
// same integer, ties included (no tie lies that close). Other lanes (near-ties, |y| >= 512
// where the result clamps anyway, NaN) take the true division, so codes are always those of
// quantize_one.
constexpr float kQuantFastMargin = 0.5f - 1.0f / 4096.0f;
constexpr float kQuantFastBound = 512.0f;
inline bool quantize_fast_ok(float scale, float inv) {
    const float lo = 1.1754944e-38f, hi = 3.4028235e38f;  // FLT_MIN, FLT_MAX
    const float as = scale < 0.0f ? -scale : scale, ai = inv < 0.0f ? -inv : inv;
    return as >= lo && as <= hi && ai >= lo && ai <= hi;
}
void qdequant_portable(const int32_t* acc, int64_t rows, int64_t cols, const float* col_scale,
                       const float* row_scale, const float* bias, const float* res, int64_t ldr,
                       float* c, int64_t ldc);
void qminmax_avx2(const float* x, int64_t rows, int64_t cols, int64_t rs, float* lo, float* hi);
void qquantize_avx2(const float* x, int64_t n, float scale, float zp, uint8_t* q);
void qdequant_avx2(const int32_t* acc, int64_t rows, int64_t cols, const float* col_scale,
                   const float* row_scale, const float* bias, const float* res, int64_t ldr,
                   float* c, int64_t ldc);
// Their AVX-512 forms (rt_qgemm_avx512.cpp), for the AVX512-VNNI set: the same results.
void qminmax_avx512(const float* x, int64_t rows, int64_t cols, int64_t rs, float* lo,
                    float* hi);
void qquantize_avx512(const float* x, int64_t n, float scale, float zp, uint8_t* q);
void qdequant_avx512(const int32_t* acc, int64_t rows, int64_t cols, const float* col_scale,
                     const float* row_scale, const float* bias, const float* res, int64_t ldr,
                     float* c, int64_t ldc);

const QGemmKernels& portable_qgemm_kernels();
const QGemmKernels& avx2_qgemm_kernels();
const QGemmKernels& avxvnni_qgemm_kernels();
const QGemmKernels& avx512vnni_qgemm_kernels();
// AVX512-VNNI when available and AVX-512 is allowed, else AVX-VNNI (GRAPHOPT_DISABLE_VNNI=1 skips
// both), else AVX2, else portable.
const QGemmKernels& qgemm_kernels();
bool cpu_has_avxvnni();
// AVX512_VNNI + AVX512VL, and the AVX-512 kernels are allowed (cpu_features().use_avx512).
bool cpu_has_avx512vnni();

// A weight W[N, K] (s8, any strides) packed into 16-column panels over the whole K.
class PackedQWeight {
   public:
    static PackedQWeight pack(const int8_t* w, int64_t n, int64_t k, int64_t rs, int64_t cs,
                              QFormat format);
    const uint8_t* panel(int64_t q) const {
        return reinterpret_cast<const uint8_t*>(storage_.data()) + q * steps_ * kQPanelStepBytesB;
    }
    const int32_t* colsum() const { return colsum_.data(); }  // [N] (kQuadU8 only)
    int64_t n() const { return n_; }
    int64_t k() const { return k_; }
    int64_t steps() const { return steps_; }
    QFormat format() const { return format_; }

   private:
    AlignedFloats storage_;
    std::vector<int32_t> colsum_;
    int64_t n_ = 0, k_ = 0, steps_ = 0;
    QFormat format_ = QFormat::kPairI16;
};

// A u8 activation matrix (element strides).
struct QMatrixRef {
    const uint8_t* data;
    int64_t rows, cols, row_stride, col_stride;
};

struct QGemmArgs {
    QMatrixRef a;
    int32_t a_zp = 0;
    float a_scale = 1.0f;
    // Per-row quantization of A ([M] each; both set or both null): replace a_zp / a_scale.
    const float* a_row_scale = nullptr;
    const int32_t* a_row_zp = nullptr;
    const PackedQWeight* w = nullptr;
    const float* w_scale = nullptr;  // [N]
    const float* bias = nullptr;     // [N] or null
    const float* residual = nullptr;  // [M, N], row stride ldr (f32 output only)
    int64_t ldr = 0;
    bool residual_in_c = false;  // C holds the residual on entry
    ActSpec act;
    // Output: f32 (c) or requantized u8 (c_u8), element (m, n) at m * ldc + n * c_cs.
    float* c = nullptr;
    uint8_t* c_u8 = nullptr;
    int64_t ldc = 0, c_cs = 1;
    float y_scale = 1.0f;
    int32_t y_zp = 0;
    // A is already in the AMX driver's layout: round_up(M, 16) rows of w->steps() * 4 bytes
    // (a.row_stride), zero past K and past M (qgemm_uses_amx said yes; the dynamic path
    // quantizes straight into it, so the driver does not copy A once more).
    bool a_amx_rows = false;
};

// Whether qgemm_run takes the AMX tiles for M rows against w (else the VNNI tiles).
bool qgemm_uses_amx(const PackedQWeight& w, int64_t m);

// The whole product over up to `threads` threads (the runtime's pool).
void qgemm_run(const QGemmArgs& args, int threads);

// Pieces of qgemm_run shared with its AMX driver (rt_qgemm_amx.cpp). qgemm_finish_tile turns
// one int32 tile (rows of kQNR; at most kQMR rows unless the output is contiguous f32) into the
// output: zero-point correction (kQuadU8), dequantize, bias, residual, activation, requantize.
// col_scale: a_scale * w_scale[n] (per-tensor activations; unused with per-row scales).
void qgemm_finish_tile(const QGemmKernels& kern, const QGemmArgs& g, const float* col_scale,
                       int32_t* acc, int64_t i0, int64_t j0, int64_t rows, int64_t nr);
void qgemm_run_amx(const QGemmArgs& g, const QGemmKernels& kern, const float* col_scale,
                   int threads);

// One pass of the f32 finish of an int32 tile (rows of kQNR, `cols` <= 16 valid columns) on
// AVX-512 (rt_qfinish_avx512.cpp): acc - zp * colsum (colsum null: no correction), times
// col_scale[j] (or row_scale[r] * col_scale[j]), + bias[j], + res[r * ldr + j], the activation,
// into c[r * ldc + j]. The same operations in the same order as amx_int8_zero_point,
// qdequant_avx512 and epilogue_avx512 one after the other, so the same bits. Returns false (and
// does nothing) for an activation outside the vector epilogue's set.
struct QFinishF32 {
    const int32_t* acc;
    const int32_t* colsum;  // [cols] or null
    const int32_t* row_zp;  // [rows] or null: zp for every row
    int32_t zp;
    const float* col_scale;  // [cols]
    const float* row_scale;  // [rows] or null
    const float* bias;       // [cols] or null
    const float* res;        // rows of ldr, or null (may alias c)
    int64_t ldr;
    float* c;
    int64_t ldc;
};
bool qfinish_f32_avx512(const QFinishF32& f, int64_t rows, int64_t cols, Activation act);

// ONNX DynamicQuantizeLinear of rows x cols floats x (row stride rs, column stride cs) into the
// contiguous u8 matrix q [rows, cols]; returns (scale, zero point) through the pointers:
//   lo = min(0, min x), hi = max(0, max x), scale = (hi - lo) / 255,
//   zp = clamp(round(-lo / scale), 0, 255), q = clamp(round(x / scale) + zp, 0, 255)
// (scale 0 -> divides by 1, as the reference does; round = half to even). Row r of q starts at
// q + r * q_stride (q_stride >= cols; -1: cols).
void dynamic_quantize(const float* x, int64_t rows, int64_t cols, int64_t rs, int64_t cs,
                      uint8_t* q, float* scale, int32_t* zp, int threads,
                      int64_t q_stride = -1);
// The same rule applied to every row on its own (per-token): scales[r], zps[r] for row r. One
// pass: each row's range and its quantization run while the row is in L1.
void dynamic_quantize_rows(const float* x, int64_t rows, int64_t cols, int64_t rs, int64_t cs,
                           uint8_t* q, float* scales, int32_t* zps, int threads,
                           int64_t q_stride = -1);

// y_f -> u8: saturate(round_half_even(y / y_scale) + y_zp) for n contiguous floats.
void requantize_u8(const float* y, int64_t n, float y_scale, int32_t y_zp, uint8_t* out);

// Thread-local scratch of the int8 GEMM (reused across calls).
struct QGemmScratch {
    AlignedFloats qa;     // quantized activations (dynamic mode)
    AlignedFloats packed;  // packed activation panels
    AlignedFloats cols;   // im2col rows (qconv)
    std::vector<float> lo, hi, col_scale;
    std::vector<float> row_scale;  // per-token activation scales / zero points (qlinear)
    std::vector<int32_t> row_zp;
};
QGemmScratch& qgemm_scratch();

}  // namespace rt
}  // namespace graphopt
