// Weight-only linear with int8 activations (linear_weight_only with act_bits = 8, rt_wo.h).
//
// Semantics (the op's reference, graphopt/ops/quant.py): each row of x is split into the
// weight's K blocks; a block is quantized symmetrically to int8 with scale = amax / 127 (0 when
// the block is all zero) and round-half-even; the block's dot product with the weight codes is
// taken in integers, exactly; y = sum over blocks of dot * x_scale * w_scale. That is
// onnxruntime's MatMulNBits accuracy_level 4 ("int8 compute").
//
// Why: decoding is one row of x against every weight, and converting each 4-bit code to f32
// costs more than reading it; an int8 dot-product instruction (AVX-512 VNNI vpdpbusd: 64
// u8 x s8 products a step) takes the codes as they are.
//
// The VNNI path works on chunks of 64 weights: the codes of a chunk as 64 unsigned bytes (4-bit:
// the 32 low nibbles, then the 32 high ones; 8-bit: in order) against x's quantized values
// rearranged once per call into the same order. Each of the 16 i32 lanes sums 4 products of one
// block; per lane, the zero point's share (-zp * sum of the lane's 4 activations) is the
// accumulator's start value, and the lane's scale is x_scale(block) * w_scale(block).
// AVX2 CPUs run rt_wo_int8_avx2.cpp; others the portable loop (same integers, exact; slower).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "cpu.h"
#include "rt_gemv.h"
#include "rt_parallel.h"
#include "rt_qgemm.h"
#include "rt_wo.h"

// GCC 12's AVX-512 headers build some results from _mm512_undefined_*(), which
// -Wmaybe-uninitialized reports at every use (GCC bug 105593): a false positive.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace graphopt {
namespace rt {

namespace {

constexpr int64_t kChunk = 64;

// x rows quantized per weight block: q [rows, k_padded] (zeros past K), scale [rows, n_blocks].
struct QuantizedRows {
    std::vector<int8_t> q;
    std::vector<float> scale;
    int64_t k_padded = 0, n_blocks = 0;
};

QuantizedRows quantize_rows(const WoWeight& w, const MatrixRef& x) {
    QuantizedRows out;
    out.n_blocks = w.n_blocks;
    out.k_padded = w.n_blocks * w.block_size;
    out.q.assign(static_cast<size_t>(x.rows * out.k_padded), 0);
    out.scale.assign(static_cast<size_t>(x.rows * w.n_blocks), 0.0f);
    for (int64_t m = 0; m < x.rows; ++m) {
        const float* xr = x.data + m * x.row_stride;
        for (int64_t b = 0; b < w.n_blocks; ++b) {
            const int64_t k0 = b * w.block_size, k1 = std::min(w.k, k0 + w.block_size);
            float amax = 0.0f;
            for (int64_t k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(xr[k]));
            const float scale = amax / 127.0f;
            out.scale[m * w.n_blocks + b] = scale;
            if (scale == 0.0f) continue;
            int8_t* q = out.q.data() + m * out.k_padded;
            for (int64_t k = k0; k < k1; ++k) {
                // nearbyint: round half to even in the default rounding mode, as torch.round
                const float v = std::nearbyint(xr[k] / scale);
                q[k] = static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, v)));
            }
        }
    }
    return out;
}

inline int32_t code_at(const WoWeight& w, const uint8_t* row, int64_t k) {
    return w.bits == 8 ? row[k] : (row[k >> 1] >> ((k & 1) * 4)) & 0xF;
}

// out[r * 16 + j] for r < rows, j < cols: rows m0.. of x against weight rows n0..
void int8_panel_portable(const WoWeight& w, const QuantizedRows& qx, int64_t m0, int64_t rows,
                         int64_t n0, int64_t cols, float* out) {
    const int32_t zp = w.zero_point();
    for (int64_t j = 0; j < cols; ++j) {
        const uint8_t* row = w.codes + (n0 + j) * w.row_bytes();
        const float* ws = w.scales + (n0 + j) * w.n_blocks;
        for (int64_t r = 0; r < rows; ++r) {
            const int8_t* q = qx.q.data() + (m0 + r) * qx.k_padded;
            const float* xs = qx.scale.data() + (m0 + r) * qx.n_blocks;
            float total = 0.0f;
            for (int64_t b = 0; b < w.n_blocks; ++b) {
                int32_t dot = 0;
                for (int64_t k = b * w.block_size; k < (b + 1) * w.block_size; ++k) {
                    dot += static_cast<int32_t>(q[k]) * (code_at(w, row, k) - zp);
                }
                total += static_cast<float>(dot) * (xs[b] * ws[b]);
            }
            out[r * kGemvCols + j] = total;
        }
    }
}

#if defined(__GNUC__) && __GNUC__ >= 11
#define GRAPHOPT_WO_VNNI 1
#define GRAPHOPT_TARGET_VNNI512 \
    __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")))

// cpu_has_avx512vnni() (AVX-512 allowed, VNNI, VL), the byte-masked loads' BW, and no
// GRAPHOPT_DISABLE_VNNI=1 (which tests the portable loop on a VNNI machine).
bool vnni_usable() {
    static const bool ok = cpu_has_avx512vnni() && __builtin_cpu_supports("avx512bw") != 0 &&
                           !env_flag_set("GRAPHOPT_DISABLE_VNNI");
    return ok;
}

// The per-call operands of the VNNI path, per x row and chunk: 64 activation bytes in the
// codes' order, 16 lane start values (-zp * lane sum) and 16 lane x scales.
struct VnniRows {
    std::vector<int8_t> x;
    std::vector<int32_t> start;
    std::vector<float> x_scale;
    std::vector<int64_t> first_block;  // per chunk (a table: no division in the row loop)
    int64_t chunks = 0;
};

// k offset (within the chunk) of the j-th byte the codes of a chunk present (module doc).
inline int64_t chunk_k(int64_t bits, int64_t j) {
    return bits == 8 ? j : (j < 32 ? 2 * j : 2 * (j - 32) + 1);
}

VnniRows arrange_vnni(const WoWeight& w, const QuantizedRows& qx, int64_t rows) {
    VnniRows v;
    v.chunks = (qx.k_padded + kChunk - 1) / kChunk;
    v.x.assign(static_cast<size_t>(rows * v.chunks * kChunk), 0);
    v.start.assign(static_cast<size_t>(rows * v.chunks * 16), 0);
    v.x_scale.assign(static_cast<size_t>(rows * v.chunks * 16), 0.0f);
    v.first_block.resize(static_cast<size_t>(v.chunks));
    for (int64_t c = 0; c < v.chunks; ++c) v.first_block[c] = c * kChunk / w.block_size;
    for (int64_t m = 0; m < rows; ++m) {
        const int8_t* q = qx.q.data() + m * qx.k_padded;
        for (int64_t c = 0; c < v.chunks; ++c) {
            const int64_t base = (m * v.chunks + c);
            for (int64_t j = 0; j < kChunk; ++j) {
                const int64_t k = c * kChunk + chunk_k(w.bits, j);
                const int8_t value = k < qx.k_padded ? q[k] : 0;
                v.x[base * kChunk + j] = value;
                v.start[base * 16 + j / 4] -= w.zero_point() * value;
            }
            for (int64_t lane = 0; lane < 16; ++lane) {
                const int64_t k = c * kChunk + chunk_k(w.bits, lane * 4);
                const int64_t b = std::min(k / w.block_size, qx.n_blocks - 1);
                v.x_scale[base * 16 + lane] = qx.scale[m * qx.n_blocks + b];
            }
        }
    }
    return v;
}

// The 64 codes of chunk c of `row` as unsigned bytes in the chunk order; `bytes` < 32 (4-bit)
// or < 64 (8-bit) reads a partial last chunk (zeros after it).
template <int Bits, bool Partial = true>
GRAPHOPT_TARGET_VNNI512 inline __m512i chunk_codes(const uint8_t* src, __mmask64 keep) {
    if (Bits == 8) {
        return Partial ? _mm512_maskz_loadu_epi8(keep, src) : _mm512_loadu_si512(src);
    }
    const __m256i b = Partial
        ? _mm256_maskz_loadu_epi8(static_cast<__mmask32>(keep), src)
        : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
    const __m256i mask = _mm256_set1_epi8(0x0F);
    const __m256i lo = _mm256_and_si256(b, mask);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), mask);
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

// The weight scales of a chunk's 16 lanes from its first block's scale (and the next one's,
// for blocks of 32: two blocks a chunk, see arrange_vnni's lane order).
template <int Bits>
GRAPHOPT_TARGET_VNNI512 inline __m512 chunk_w_scales(const float* ws, bool two_blocks,
                                                     bool has_second) {
    if (!two_blocks) return _mm512_set1_ps(ws[0]);
    const __m128 pair = has_second
        ? _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(ws)))
        : _mm_set_ss(ws[0]);
    const __m512i lanes = Bits == 8
        ? _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0)
        : _mm512_set_epi32(1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0);
    return _mm512_permutexvar_ps(lanes, _mm512_castps128_ps512(pair));
}

template <int R, int Bits>
GRAPHOPT_TARGET_VNNI512 inline void chunk_step(const WoWeight& w, const VnniRows& v,
                                               const uint8_t* row, const float* ws, int64_t m0,
                                               int64_t c, __mmask64 keep, __m512* tot) {
    const int64_t b0 = v.first_block[c];
    const bool two = w.block_size < kChunk;
    const __m512i codes = chunk_codes<Bits>(row + c * (kChunk * Bits / 8), keep);
    const __m512 wsc = chunk_w_scales<Bits>(ws + b0, two, b0 + 1 < w.n_blocks);
    for (int r = 0; r < R; ++r) {
        const int64_t base = (m0 + r) * v.chunks + c;
        const __m512i acc = _mm512_dpbusd_epi32(_mm512_loadu_si512(v.start.data() + base * 16),
                                                codes,
                                                _mm512_loadu_si512(v.x.data() + base * kChunk));
        const __m512 scale = _mm512_mul_ps(wsc, _mm512_loadu_ps(v.x_scale.data() + base * 16));
        tot[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), scale, tot[r]);
    }
}

template <int R, int Bits>
GRAPHOPT_TARGET_VNNI512 void vnni_rows(const WoWeight& w, const VnniRows& v, int64_t m0,
                                       int64_t n0, int64_t cols, float* out) {
    constexpr int64_t kBytes = kChunk * Bits / 8;
    const int64_t full = w.row_bytes() / kBytes;  // chunks with all their codes in the row
    const __mmask64 all = ~__mmask64{0};
    const __mmask64 part = (__mmask64{1} << (w.row_bytes() - full * kBytes)) - 1;
    for (int64_t j = 0; j < cols; ++j) {
        const uint8_t* row = w.codes + (n0 + j) * w.row_bytes();
        const float* ws = w.scales + (n0 + j) * w.n_blocks;
        __m512 even[R], odd[R];  // alternate chunks: two independent FMA chains per row
        for (int r = 0; r < R; ++r) even[r] = odd[r] = _mm512_setzero_ps();
        int64_t c = 0;
        for (; c + 2 <= full; c += 2) {
            chunk_step<R, Bits>(w, v, row, ws, m0, c, all, even);
            chunk_step<R, Bits>(w, v, row, ws, m0, c + 1, all, odd);
        }
        if (c < full) chunk_step<R, Bits>(w, v, row, ws, m0, c++, all, even);
        if (c < v.chunks) chunk_step<R, Bits>(w, v, row, ws, m0, c, part, odd);
        for (int r = 0; r < R; ++r) {
            out[r * kGemvCols + j] = _mm512_reduce_add_ps(_mm512_add_ps(even[r], odd[r]));
        }
    }
}

// One x row (decoding) against four weight rows at a time: the row's activation operands are
// loaded once per chunk for all four, and the four totals are independent FMA chains.
template <int Bits>
GRAPHOPT_TARGET_VNNI512 void vnni_one_row_by_4(const WoWeight& w, const VnniRows& v, int64_t m0,
                                               int64_t n0, float* out) {
    constexpr int64_t kBytes = kChunk * Bits / 8;
    const int64_t full = w.row_bytes() / kBytes;
    const __mmask64 part = (__mmask64{1} << (w.row_bytes() - full * kBytes)) - 1;
    const bool two = w.block_size < kChunk;
    const uint8_t* rows[4];
    const float* ws[4];
    __m512 tot[4];
    for (int i = 0; i < 4; ++i) {
        rows[i] = w.codes + (n0 + i) * w.row_bytes();
        ws[i] = w.scales + (n0 + i) * w.n_blocks;
        tot[i] = _mm512_setzero_ps();
    }
    // The next four rows' codes are fetched ahead: four row streams a step are more than the
    // hardware prefetcher follows, and the loop otherwise waits on memory.
    const int64_t ahead = 4 * w.row_bytes();
    auto step = [&](int64_t c, auto partial) GRAPHOPT_TARGET_VNNI512 {
        constexpr bool kPartial = decltype(partial)::value;
        const int64_t base = m0 * v.chunks + c, b0 = v.first_block[c];
        const __m512i start = _mm512_loadu_si512(v.start.data() + base * 16);
        const __m512i x = _mm512_loadu_si512(v.x.data() + base * kChunk);
        const __m512 xs = _mm512_loadu_ps(v.x_scale.data() + base * 16);
        for (int i = 0; i < 4; ++i) {
            const uint8_t* src = rows[i] + c * kBytes;
            _mm_prefetch(reinterpret_cast<const char*>(src + ahead), _MM_HINT_T0);
            const __m512i codes = chunk_codes<Bits, kPartial>(src, part);
            const __m512 scale = _mm512_mul_ps(
                chunk_w_scales<Bits>(ws[i] + b0, two, b0 + 1 < w.n_blocks), xs);
            const __m512i acc = _mm512_dpbusd_epi32(start, codes, x);
            tot[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), scale, tot[i]);
        }
    };
    for (int64_t c = 0; c < full; ++c) step(c, std::false_type{});
    if (full < v.chunks) step(full, std::true_type{});
    for (int i = 0; i < 4; ++i) out[i] = _mm512_reduce_add_ps(tot[i]);
}

template <int Bits>
GRAPHOPT_TARGET_VNNI512 void vnni_panel(const WoWeight& w, const VnniRows& v, int64_t m0,
                                        int64_t rows, int64_t n0, int64_t cols, float* out) {
    if (rows == 1) {
        int64_t j = 0;
        for (; j + 4 <= cols; j += 4) vnni_one_row_by_4<Bits>(w, v, m0, n0 + j, out + j);
        if (j < cols) vnni_rows<1, Bits>(w, v, m0, n0 + j, cols - j, out + j);
        return;
    }
    switch (rows) {
        case 2: return vnni_rows<2, Bits>(w, v, m0, n0, cols, out);
        case 3: return vnni_rows<3, Bits>(w, v, m0, n0, cols, out);
        default: return vnni_rows<4, Bits>(w, v, m0, n0, cols, out);
    }
}

GRAPHOPT_TARGET_VNNI512 void int8_panel_vnni(const WoWeight& w, const VnniRows& v, int64_t m0,
                                             int64_t rows, int64_t n0, int64_t cols,
                                             float* out) {
    if (w.bits == 8) return vnni_panel<8>(w, v, m0, rows, n0, cols, out);
    return vnni_panel<4>(w, v, m0, rows, n0, cols, out);
}
#endif

}  // namespace

const char* wo_int8_isa() {
#ifdef GRAPHOPT_WO_VNNI
    if (vnni_usable()) return "avx512vnni";
#endif
    if (cpu_features().use_avx2_fma) return "avx2";
    return "portable";
}

void wo_int8_run(const WoWeight& w, const MatrixRef& x, float* c, int64_t ldc,
                 const EpilogueSpec& ep, int threads) {
    const int64_t m = x.rows, n = w.n;
    if (m <= 0 || n <= 0) return;
    QuantizedRows qx = quantize_rows(w, x);
#ifdef GRAPHOPT_WO_VNNI
    // 4-bit blocks of 32 or more keep a lane's 4 codes in one block; chunks need 32-multiples
    const bool vnni = vnni_usable() && w.block_size % 32 == 0;
    const VnniRows v = vnni ? arrange_vnni(w, qx, m) : VnniRows{};
#else
    const bool vnni = false;
#endif
    // The AVX2 path reads the quantized rows arranged in the codes' order.
    const bool avx2 = !vnni && cpu_features().use_avx2_fma && wo_int8_avx2_takes(w);
    const WoInt8Avx2Rows avx2_rows =
        avx2 ? wo_int8_avx2_arrange(w, Int8Rows{qx.q.data(), qx.scale.data(), qx.k_padded}, m)
             : WoInt8Avx2Rows{};
    const GemmKernels& kern = gemm_kernels();
    const int64_t panels = ceil_div(n, kGemvCols);
    parallel_for(threads, panels, kGemvCols * w.k * m / 4, [&](int64_t q0, int64_t q1) {
        alignas(64) float tile[kGemvMaxRows * kGemvCols];
        for (int64_t q = q0; q < q1; ++q) {
            const int64_t j0 = q * kGemvCols, nr = std::min(kGemvCols, n - j0);
            // row groups inside the panel loop: the panel's codes stay in cache across them
            for (int64_t m0 = 0; m0 < m; m0 += kGemvMaxRows) {
                const int64_t rows = std::min(kGemvMaxRows, m - m0);
#ifdef GRAPHOPT_WO_VNNI
                if (vnni) {
                    int8_panel_vnni(w, v, m0, rows, j0, nr, tile);
                } else if (avx2) {
                    wo_int8_panel_avx2(w, avx2_rows, m0, rows, j0, nr, tile);
                } else {
                    int8_panel_portable(w, qx, m0, rows, j0, nr, tile);
                }
#else
                if (avx2) {
                    wo_int8_panel_avx2(w, avx2_rows, m0, rows, j0, nr, tile);
                } else {
                    int8_panel_portable(w, qx, m0, rows, j0, nr, tile);
                }
#endif
                float* ct = c + m0 * ldc + j0;
                for (int64_t r = 0; r < rows; ++r) {
                    for (int64_t j = 0; j < nr; ++j) {
                        ct[r * ldc + j] = ep.residual_in_c ? ct[r * ldc + j] + tile[r * kGemvCols + j]
                                                           : tile[r * kGemvCols + j];
                    }
                }
                gemm_tile_epilogue(kern, ct, ldc, m0, j0, rows, nr, ep);
            }
        }
    });
}

}  // namespace rt
}  // namespace graphopt
