// bf16 compute for linear layers: C = epilogue(alpha * bf16(A) @ bf16(W)^T), fp32 accumulation.
//
// The weight W [N, K] (a plan constant) is rounded to bf16 once, at plan build, and packed for
// the path this CPU runs:
//
//  * AMX (cpu_features().use_amx): 16 x 32 bf16 tiles in the VNNI pair layout TDPBF16PS reads
//    (for column block q and K step s, one 1 KiB tile: row p holds the K pairs (2p, 2p + 1) of
//    16 columns). The activation A is rounded to bf16 per call into a zero-padded [Mp, Kp]
//    buffer; each thread computes 32 x 32 blocks of C in four accumulator tiles and applies the
//    epilogue (bias, residual, activation) to each finished block.
//  * Elsewhere the same numbers on the fp32 GEMM: W rounded to bf16 and widened back is packed
//    as an fp32 PackedMatrix, A is rounded per call the same way. bf16 x bf16 products are exact
//    in fp32, so both paths compute the same sums up to the order of the fp32 additions.
//
// Rounding is to nearest even (NaN stays NaN), as torch's .to(torch.bfloat16) and vcvtneps2bf16.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "rt_gemm.h"

namespace graphopt {
namespace rt {

// fp32 -> bf16 bits, round to nearest even; NaN -> a quiet NaN of the same sign.
inline uint16_t bf16_bits(float x) {
    uint32_t bits;
    std::memcpy(&bits, &x, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return static_cast<uint16_t>(bits >> 16);
}

inline float bf16_to_float(uint16_t b) {
    const uint32_t bits = static_cast<uint32_t>(b) << 16;
    float x;
    std::memcpy(&x, &bits, 4);
    return x;
}

constexpr int64_t kBf16TileRows = 16;  // rows of A / columns of W per tile
constexpr int64_t kBf16TileK = 32;     // K per tile (16 pairs)
constexpr int64_t kBf16TileElems = kBf16TileRows * kBf16TileK;

class PackedBf16Weight {
   public:
    // Packs B(k, n) = b.data[k * b.row_stride + n * b.col_stride] (B = W^T, [K, N]).
    static PackedBf16Weight pack(const MatrixRef& b);
    int64_t n() const { return n_; }
    int64_t k() const { return k_; }
    bool amx() const { return amx_; }
    // AMX layout: the tiles of column block q, K step s.
    const uint16_t* tile(int64_t q, int64_t s) const {
        return tiles_.get() + (q * k_steps_ + s) * kBf16TileElems;
    }
    int64_t k_steps() const { return k_steps_; }
    const PackedMatrix& widened() const { return *widened_; }  // the fp32 path's operand

   private:
    struct FreeDeleter {
        void operator()(uint16_t* p) const { std::free(p); }
    };
    std::unique_ptr<uint16_t, FreeDeleter> tiles_;
    std::unique_ptr<PackedMatrix> widened_;
    int64_t n_ = 0, k_ = 0, k_steps_ = 0;
    bool amx_ = false;
};

// C[M, N] (row stride ldc) = epilogue(alpha * bf16(A) @ bf16(W)^T) over up to `threads` threads.
void bf16_gemm_run(const MatrixRef& a, const PackedBf16Weight& w, float* c, int64_t ldc,
                   const EpilogueSpec& ep, int threads);

// The AMX part (rt_bf16_amx.cpp): computes the 32 x 32 blocks [first, last) of C, column-block
// major, from the packed activation a16 ([mp, kp] bf16, kp = k_steps * 32).
struct Bf16AmxProblem {
    const uint16_t* a16;
    int64_t m, mp, kp;
    const PackedBf16Weight* w;
    float* c;
    int64_t ldc;
    const EpilogueSpec* ep;
};
void bf16_amx_blocks(const Bf16AmxProblem& p, int64_t first, int64_t last);
// Rounds rows [r0, r1) of A into the packed [mp, kp] bf16 buffer (zero padding past K).
void bf16_pack_rows_amx(const MatrixRef& a, int64_t kp, int64_t r0, int64_t r1, uint16_t* out);

}  // namespace rt
}  // namespace graphopt
