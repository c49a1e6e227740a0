// Attention's two products on AMX bf16 tiles (rt_amx.h): scale * Q K^T and acc += P V.
//
// Per (query block, key block) of the streaming-softmax attention kernel (rt_attention.cpp):
// the A operand (Q rows, or the probabilities P) is rounded to bf16 into zero-padded rows; the
// B operand (K, or V) is rounded and packed into the VNNI pair tiles TDPBF16PS reads. K is
// used transposed: a tile row p holds, for 16 keys, the pair (e = 2p, 2p + 1) of each key, i.e.
// the transpose of 32-bit pairs, done through a 16 x 16 staging block. V pairs two consecutive
// keys of the same column: the two rows' bf16 widened to 32-bit lanes and merged. Products are
// exact in f32 and summed in f32; the softmax between the products stays f32.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "cpu.h"
#include "rt_amx.h"
#include "rt_bf16.h"
#include "vec_exp_avx512.h"

// GCC 12's avx512fintrin.h seeds some intrinsics with _mm512_undefined_*(), which
// -Wmaybe-uninitialized reports at every use (GCC bug 105593): a false positive.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"  // the same, in _mm512_reduce_*_ps

namespace graphopt {
namespace rt {
namespace {

inline int64_t up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// rows x k floats (row stride rs, contiguous) -> bf16 [up(rows, 16)][kp], zero padded.
GRAPHOPT_TARGET_AMX void pack_rows(const float* x, int64_t rs, int64_t rows, int64_t k,
                                   int64_t kp, uint16_t* dst) {
    for (int64_t r = 0; r < up(rows, 16); ++r) {
        uint16_t* d = dst + r * kp;
        if (r >= rows) {
            std::memset(d, 0, static_cast<size_t>(kp) * 2);
            continue;
        }
        const float* s = x + r * rs;
        int64_t j = 0;
        for (; j + 16 <= k; j += 16) {
            const __m256bh v = _mm512_cvtneps_pbh(_mm512_loadu_ps(s + j));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + j), (__m256i)v);
        }
        for (; j < k; ++j) d[j] = bf16_bits(s[j]);
        std::memset(d + k, 0, static_cast<size_t>(kp - k) * 2);
    }
}

GRAPHOPT_TARGET_AMX inline __mmask16 first16(int64_t n) {
    return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1u);
}

// 16 floats from src (n valid, the rest 0) as 16 bf16.
GRAPHOPT_TARGET_AMX inline __m256i bf16_16(const float* src, int64_t n) {
    const __mmask16 mask = n >= 16 ? static_cast<__mmask16>(0xffff)
                                   : static_cast<__mmask16>((1u << n) - 1u);
    return (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, src));
}

// K block [cols keys, e] (key rows k_rs apart) as B tiles of K^T: tile (key tile q, e step s)
// row p = the bf16 pairs (e = 32 s + 2p, + 1) of keys 16 q .. 16 q + 15.
GRAPHOPT_TARGET_AMX void pack_k(const float* k, int64_t k_rs, int64_t cols, int64_t e,
                                uint16_t* dst) {
    const int64_t steps = up(e, 32) / 32;
    alignas(64) uint32_t stage[16 * 16];  // [key c][pair p]
    for (int64_t q = 0; q * 16 < cols; ++q) {
        for (int64_t s = 0; s < steps; ++s) {
            for (int64_t c = 0; c < 16; ++c) {
                const int64_t key = q * 16 + c, e0 = s * 32;
                __m512i pairs = _mm512_setzero_si512();
                if (key < cols) {
                    const float* row = k + key * k_rs + e0;
                    const int64_t n = std::min<int64_t>(32, e - e0);
                    const __m256i lo = bf16_16(row, std::min<int64_t>(16, n));
                    const __m256i hi = n > 16 ? bf16_16(row + 16, n - 16) : _mm256_setzero_si256();
                    pairs = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                }
                _mm512_store_si512(reinterpret_cast<__m512i*>(stage + c * 16), pairs);
            }
            auto* tile = reinterpret_cast<uint32_t*>(dst + (q * steps + s) * kBf16TileElems);
            for (int64_t p = 0; p < 16; ++p) {
                for (int64_t c = 0; c < 16; ++c) tile[p * 16 + c] = stage[c * 16 + p];
            }
        }
    }
}

// V block [cols keys, ev] (rows v_rs apart) as B tiles: tile (column tile q, key step s) row p
// = (V[32 s + 2p, c], V[32 s + 2p + 1, c]) for the 16 columns c of tile q.
GRAPHOPT_TARGET_AMX void pack_v(const float* v, int64_t v_rs, int64_t cols, int64_t ev,
                                uint16_t* dst) {
    const int64_t steps = up(cols, 32) / 32;
    for (int64_t q = 0; q * 16 < ev; ++q) {
        const int64_t n = std::min<int64_t>(16, ev - q * 16);
        for (int64_t s = 0; s < steps; ++s) {
            auto* tile = reinterpret_cast<__m512i*>(dst + (q * steps + s) * kBf16TileElems);
            for (int64_t p = 0; p < 16; ++p) {
                const int64_t j0 = s * 32 + 2 * p;
                const __m256i r0 = j0 < cols ? bf16_16(v + j0 * v_rs + q * 16, n)
                                             : _mm256_setzero_si256();
                const __m256i r1 = j0 + 1 < cols ? bf16_16(v + (j0 + 1) * v_rs + q * 16, n)
                                                 : _mm256_setzero_si256();
                const __m512i pair = _mm512_or_si512(
                    _mm512_cvtepu16_epi32(r0), _mm512_slli_epi32(_mm512_cvtepu16_epi32(r1), 16));
                _mm512_store_si512(tile + p, pair);
            }
        }
    }
}

// C[rows, cols] (row stride ldc floats) = (accumulate ? C : 0) + A B over `steps` K steps: A
// packed rows of kp bf16 (16-row tiles), B the packed tiles of 16-column tile q at q * steps.
GRAPHOPT_TARGET_AMX void tile_products(const uint16_t* a, int64_t kp, int64_t rows,
                                       const uint16_t* b, int64_t steps, int64_t cols, float* c,
                                       int64_t ldc, bool accumulate) {
    amx_begin();
    for (int64_t it = 0; it * 16 < rows; ++it) {
        for (int64_t jt = 0; jt * 16 < cols; ++jt) {
            float* ct = c + it * 16 * ldc + jt * 16;
            if (accumulate) {
                _tile_loadd(0, ct, ldc * 4);
            } else {
                _tile_zero(0);
            }
            const uint16_t* at = a + it * 16 * kp;
            const uint16_t* bt = b + jt * steps * kBf16TileElems;
            for (int64_t s = 0; s < steps; ++s) {
                _tile_loadd(4, at + s * kBf16TileK, kp * 2);
                _tile_loadd(6, bt + s * kBf16TileElems, 64);
                _tile_dpbf16ps(0, 4, 6);
            }
            _tile_stored(0, ct, ldc * 4);
        }
    }
    amx_end();
}

}  // namespace

int64_t attn_amx_scratch_elems(int64_t rows, int64_t cols, int64_t e, int64_t ev) {
    const int64_t a = up(rows, 16) * std::max(up(e, 32), up(cols, 32));
    const int64_t b = std::max(up(e, 32) * up(cols, 16), up(cols, 32) * up(ev, 16));
    return a + b + 32;  // the caller starts the B tiles 64-byte aligned after A
}

GRAPHOPT_TARGET_AMX void attn_amx_scores(const float* q, int64_t q_rs, int64_t rows, int64_t e,
                                         const float* k, int64_t k_rs, int64_t cols, float scale,
                                         float* scores, int64_t ld_s,
                                         const AttnAmxScratch& scratch) {
    const int64_t ep = up(e, 32), steps = ep / 32;
    pack_rows(q, q_rs, rows, e, ep, scratch.a);
    pack_k(k, k_rs, cols, e, scratch.b);
    tile_products(scratch.a, ep, rows, scratch.b, steps, cols, scores, ld_s, false);
    const __m512 sc = _mm512_set1_ps(scale);
    for (int64_t i = 0; i < rows; ++i) {
        float* row = scores + i * ld_s;
        for (int64_t j = 0; j < up(cols, 16); j += 16) {
            _mm512_store_ps(row + j, _mm512_mul_ps(_mm512_load_ps(row + j), sc));
        }
    }
}

GRAPHOPT_TARGET_AMX float attn_amx_softmax_row(float* srow, int64_t cols, const uint8_t* keep,
                                               float m_old, float* m_new, uint16_t* p_row) {
    const float neg_inf = -std::numeric_limits<float>::infinity();
    const __m512 vneg = _mm512_set1_ps(neg_inf);
    // Pass 1: masked scores back into srow and their maximum; tail lanes read as -inf.
    __m512 vmax = vneg;
    for (int64_t j = 0; j < cols; j += 16) {
        const __mmask16 lanes = first16(cols - j);
        __m512 v = _mm512_mask_loadu_ps(vneg, lanes, srow + j);
        if (keep != nullptr) {
            const __m128i bytes = _mm_maskz_loadu_epi8(lanes, keep + j);
            v = _mm512_mask_mov_ps(vneg, _mm_cmpneq_epi8_mask(bytes, _mm_setzero_si128()), v);
            _mm512_mask_storeu_ps(srow + j, lanes, v);
        }
        vmax = _mm512_max_ps(vmax, v);
    }
    const float m = std::max(m_old, _mm512_reduce_max_ps(vmax));
    *m_new = m;
    const int64_t kp = up(cols, 32);
    if (m == neg_inf) {  // nothing visible yet in this row: P is 0
        std::memset(p_row, 0, static_cast<size_t>(kp) * 2);
        return 0.0f;
    }
    // Pass 2: e = exp(s - m) summed in f32 lanes and stored as the bf16 P row (zero padded).
    const __m512 vm = _mm512_set1_ps(m);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < kp; j += 16) {
        const __mmask16 lanes = j < cols ? first16(cols - j) : static_cast<__mmask16>(0);
        const __m512 e = _mm512_maskz_mov_ps(
            lanes, vexp::exp_avx512(_mm512_sub_ps(_mm512_mask_loadu_ps(vneg, lanes, srow + j),
                                                  vm)));
        sum = _mm512_add_ps(sum, e);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(p_row + j),
                            (__m256i)_mm512_cvtneps_pbh(e));
    }
    return _mm512_reduce_add_ps(sum);
}

GRAPHOPT_TARGET_AMX void attn_amx_zero_rows(uint16_t* a, int64_t rows, int64_t cols) {
    const int64_t kp = up(cols, 32);
    std::memset(a + rows * kp, 0, static_cast<size_t>((up(rows, 16) - rows) * kp) * 2);
}

GRAPHOPT_TARGET_AMX void attn_amx_pv(const float* p, int64_t ld_p, int64_t rows, int64_t cols,
                                     const float* v, int64_t v_rs, int64_t ev, float* acc,
                                     int64_t ld_acc, const AttnAmxScratch& scratch) {
    const int64_t kp = up(cols, 32), steps = kp / 32;
    // P == nullptr: the probabilities are already in scratch.a (attn_amx_softmax_row).
    if (p != nullptr) pack_rows(p, ld_p, rows, cols, kp, scratch.a);
    pack_v(v, v_rs, cols, ev, scratch.b);
    tile_products(scratch.a, kp, rows, scratch.b, steps, ev, acc, ld_acc, true);
}

}  // namespace rt
}  // namespace graphopt
