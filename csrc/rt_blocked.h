// Channel-blocked ("nChw16c") float32 layout: the compute of its convolution and pooling
// kernels, one instantiation per ISA (rt_blocked_impl.h).
//
// A blocked tensor of logical shape [N, C, H, W] is stored as [N, ceil(C / 16), H, W, 16]: the
// 16 channels of a block sit next to each other, so one AVX-512 register holds one pixel of one
// block and a convolution vectorises over output channels at every kernel size, depthwise ones
// included. Channels past C in the last block are don't-care: no kernel reads them as data
// (convolutions loop over the C real input channels; reorders and pools keep only C).
#pragma once

#include <cstdint>

#include <string>

#include "rt_gemm.h"
#include "rt_plan.h"

namespace graphopt {
namespace rt {

constexpr int64_t kChannelBlock = 16;

inline int64_t channel_blocks(int64_t c) { return (c + kChannelBlock - 1) / kChannelBlock; }

// One image's input, in the coordinates the taps use: element (c, y, x) lives at
// base + (c / 16) * block_stride + (c % 16) * channel_stride + y * row_stride + x * pixel_stride.
// Blocked data: (H*W*16, 1, W*16, 16); plain NCHW: (16*H*W, H*W, W, 1).
struct BlockedSource {
    const float* base = nullptr;
    int64_t block_stride = 0, channel_stride = 0, row_stride = 0, pixel_stride = 0;
};

// One image of a blocked convolution. Tap (ky, kx) of output (oy, ox) reads source position
// (oy * sh - ph + ky * dh, ox * sw - pw + kx * dw). Dense convolutions get ph = pw = 0 and a
// source every tap lies inside (padding materialised into a zero-bordered copy); depthwise ones
// of a blocked input read it directly and skip the taps outside [0, h) x [0, w).
// The first input block output block `ob` of a grouped convolution reads (groups of group_in
// input / group_out output channels; see BlockedConvKernel).
inline int64_t first_input_block(int64_t ob, int64_t group_in, int64_t group_out) {
    return (ob * kChannelBlock / group_out) * group_in / kChannelBlock;
}

// Bytes of a blocked [n][blocks(c)][hw][16] / plain [n][c][hw] float32 tensor (checked).
inline int64_t blocked_bytes(int64_t n, int64_t c, int64_t hw, const std::string& what) {
    return checked_mul(checked_mul(checked_mul(n, channel_blocks(c) * kChannelBlock, what), hw,
                                   what), 4, what);
}

inline int64_t plain_bytes(int64_t n, int64_t c, int64_t hw, const std::string& what) {
    return checked_mul(checked_mul(checked_mul(n, c, what), hw, what), 4, what);
}

struct BlockedConvJob {
    int64_t c = 0, in_blocks = 0, out_blocks = 0;
    int64_t group_in = 0, group_out = 0;  // grouped: channels per group (0: dense)
    int64_t kh = 1, kw = 1, sh = 1, sw = 1, dh = 1, dw = 1, ho = 0, wo = 0;
    int64_t ph = 0, pw = 0, h = 0, w = 0;
    BlockedSource src;
    // Dense: [out_blocks][in_blocks][kh][kw][16 in][16 out] (grouped: in_blocks blocks from
    // first_input_block(ob)); depthwise: [blocks][kh][kw][16].
    const float* weight = nullptr;
    const float* bias = nullptr;      // [out_blocks * 16], zero past Co
    const float* residual = nullptr;  // blocked [out_blocks][ho][wo][16] or null (may be `out`)
    float* out = nullptr;             // blocked [out_blocks][ho][wo][16]
    ActSpec act;
};

// One image of a blocked max pool: taps outside the input are skipped (torch semantics).
struct BlockedPoolJob {
    int64_t h = 0, w = 0, ho = 0, wo = 0, kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0;
    int64_t dh = 1, dw = 1;
    const float* x = nullptr;  // [blocks][h][w][16]
    float* out = nullptr;      // [blocks][ho][wo][16]
};

// One image of a Winograd F(2x2, 3x3) convolution (rt_winograd.cpp): a tile is 2 x 2 output
// pixels and reads the 4 x 4 input patch at (2 ty - ph, 2 tx - pw). 16 transformed positions
// ("xi") per tile; V and M are [16 xi][blocks][tiles][16 lanes].
struct WinogradJob {
    int64_t h = 0, w = 0, ph = 0, pw = 0, ho = 0, wo = 0, tiles_h = 0, tiles_w = 0;
    int64_t in_blocks = 0, out_blocks = 0;
    BlockedSource src;            // blocked input (channel_stride 1, pixel_stride 16)
    float* v = nullptr;           // transformed input
    const float* m = nullptr;     // transformed output (V times the transformed weights)
    const float* bias = nullptr;  // [out_blocks * 16]
    const float* residual = nullptr;
    float* out = nullptr;         // blocked [out_blocks][ho][wo][16]
    ActSpec act;
};

struct BlockedOps {
    const char* name;
    // Output rows [oy0, oy1), columns [ox0, ox1) of output blocks [ob, ob + nb), nb in {1, 2}.
    void (*conv)(const BlockedConvJob& job, int64_t ob, int64_t nb, int64_t oy0, int64_t oy1,
                 int64_t ox0, int64_t ox1);
    // Depthwise (one input channel per output channel): rows [oy0, oy1) of block `b`; the
    // source is blocked (channel_stride 1, pixel_stride 16).
    void (*depthwise)(const BlockedConvJob& job, int64_t b, int64_t oy0, int64_t oy1);
    // Rows [oy0, oy1) of block `b`.
    void (*max_pool)(const BlockedPoolJob& job, int64_t b, int64_t oy0, int64_t oy1);
    // Winograd transforms of tile rows [ty0, ty1): input block b -> V; M -> output block ob.
    void (*winograd_input)(const WinogradJob& job, int64_t b, int64_t ty0, int64_t ty1);
    void (*winograd_output)(const WinogradJob& job, int64_t ob, int64_t ty0, int64_t ty1);
};

// AVX-512 where the CPU has it (and GRAPHOPT_DISABLE_AVX512 / _AVX2 are unset), else portable.
const BlockedOps& blocked_ops();
const BlockedOps& blocked_ops_portable();
const BlockedOps& blocked_ops_avx512();

}  // namespace rt
}  // namespace graphopt
