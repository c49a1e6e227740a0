// Winograd F(2x2, 3x3) convolution of the channel-blocked layout (Lavin & Gray, 2016).
//
// A 3x3, stride-1, undilated, ungrouped convolution computes each 2 x 2 output tile from the
// 4 x 4 input patch under it as Y = A^T [(G g G^T) . (B^T d B)] A: per tile and channel pair,
// 16 multiplies instead of 36. Over whole channel blocks the 16 elementwise products become 16
// independent GEMMs, V[xi] (tiles x C) times U[xi] (C x Co), which run through the direct
// kernel's 1x1 path (ops.conv) on the transformed data: the same micro-kernel, 2.25x fewer
// multiply-adds. The transforms hold only adds, subtracts and halves (exact weights for
// G's 0.5), so the result differs from the direct sum by rounding alone (~1e-6 relative at
// BERT/ResNet magnitudes); tests compare both paths with torch.
//
// Workspace (an arena operand): V [16][in_blocks][tiles][16] then M [16][out_blocks][tiles][16].
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "rt_blocked.h"
#include "rt_conv_shape.h"

namespace graphopt {
namespace rt {

class WinogradConv {
   public:
    // 3x3, stride 1, dilation 1, groups 1; padding 0..2 on each side (what the tiles assume).
    static bool eligible(const ConvShape& s);
    // Floats of the workspace operand (checked arithmetic).
    static int64_t workspace_floats(const ConvShape& s, const std::string& what);

    // Transforms and packs the [Co, C, 3, 3] weights once (U = G g G^T, computed in double).
    WinogradConv(const ConvShape& s, const float* weight);

    // One image: src is blocked, out / residual blocked [out_blocks][ho][wo][16], bias padded
    // to whole blocks (or null).
    void run(const ExecContext& ctx, const BlockedOps& ops, const BlockedSource& src,
             const float* bias, const float* residual, float* out, const ActSpec& act,
             float* workspace) const;

   private:
    ConvShape s_;
    int64_t in_blocks_ = 0, out_blocks_ = 0, tiles_h_ = 0, tiles_w_ = 0;
    std::vector<float> packed_;  // [16 xi][out_blocks][in_blocks][16 in][16 out]
};

}  // namespace rt
}  // namespace graphopt
