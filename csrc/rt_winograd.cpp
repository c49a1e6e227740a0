// Winograd F(2x2, 3x3) driver (rt_winograd.h): weight transform at build time; per image the
// input transform, 16 GEMMs through the blocked 1x1 kernel, the output transform with the
// fused bias / residual / activation.
#include "rt_winograd.h"

#include <algorithm>

#include "rt_parallel.h"

namespace graphopt {
namespace rt {

namespace {
constexpr int64_t kPositions = 16;     // 4 x 4 transformed positions per tile
constexpr int64_t kTileChunk = 96;     // tiles per GEMM task (as the direct kernel's pixels)

int64_t tiles_along(int64_t out) { return (out + 1) / 2; }
}  // namespace

bool WinogradConv::eligible(const ConvShape& s) {
    return s.groups == 1 && s.kh == 3 && s.kw == 3 && s.sh == 1 && s.sw == 1 && s.dh == 1 &&
           s.dw == 1 && s.ph >= 0 && s.ph <= 2 && s.pw >= 0 && s.pw <= 2 && s.ho > 0 && s.wo > 0;
}

int64_t WinogradConv::workspace_floats(const ConvShape& s, const std::string& what) {
    const int64_t tiles = checked_mul(tiles_along(s.ho), tiles_along(s.wo), what);
    const int64_t blocks = checked_add(channel_blocks(s.c), channel_blocks(s.co), what);
    return checked_mul(checked_mul(kPositions * kChannelBlock, tiles, what), blocks, what);
}

WinogradConv::WinogradConv(const ConvShape& s, const float* weight)
    : s_(s),
      in_blocks_(channel_blocks(s.c)),
      out_blocks_(channel_blocks(s.co)),
      tiles_h_(tiles_along(s.ho)),
      tiles_w_(tiles_along(s.wo)) {
    const int64_t per_xi = out_blocks_ * in_blocks_ * kChannelBlock * kChannelBlock;
    packed_.assign(static_cast<size_t>(kPositions * per_xi), 0.0f);
    for (int64_t oc = 0; oc < s.co; ++oc) {
        for (int64_t ic = 0; ic < s.c; ++ic) {
            const float* g = weight + (oc * s.c + ic) * 9;
            double gg[4][3];  // G g, G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]
            for (int k = 0; k < 3; ++k) {
                const double g0 = g[k], g1 = g[3 + k], g2 = g[6 + k];
                gg[0][k] = g0;
                gg[1][k] = 0.5 * (g0 + g1 + g2);
                gg[2][k] = 0.5 * (g0 - g1 + g2);
                gg[3][k] = g2;
            }
            const int64_t at = ((oc / kChannelBlock) * in_blocks_ + ic / kChannelBlock) *
                                   kChannelBlock * kChannelBlock +
                               (ic % kChannelBlock) * kChannelBlock + oc % kChannelBlock;
            for (int r = 0; r < 4; ++r) {  // (G g) G^T
                const double a0 = gg[r][0], a1 = gg[r][1], a2 = gg[r][2];
                const double u[4] = {a0, 0.5 * (a0 + a1 + a2), 0.5 * (a0 - a1 + a2), a2};
                for (int c = 0; c < 4; ++c) {
                    packed_[static_cast<size_t>((4 * r + c) * per_xi + at)] =
                        static_cast<float>(u[c]);
                }
            }
        }
    }
}

void WinogradConv::run(const ExecContext& ctx, const BlockedOps& ops, const BlockedSource& src,
                       const float* bias, const float* residual, float* out, const ActSpec& act,
                       float* workspace) const {
    const int64_t tiles = tiles_h_ * tiles_w_;
    WinogradJob wj;
    wj.h = s_.h; wj.w = s_.w; wj.ph = s_.ph; wj.pw = s_.pw; wj.ho = s_.ho; wj.wo = s_.wo;
    wj.tiles_h = tiles_h_; wj.tiles_w = tiles_w_;
    wj.in_blocks = in_blocks_; wj.out_blocks = out_blocks_;
    wj.src = src;
    wj.v = workspace;
    float* m = workspace + kPositions * in_blocks_ * tiles * kChannelBlock;
    wj.m = m;
    wj.bias = bias; wj.residual = residual; wj.out = out; wj.act = act;
    parallel_for(ctx.threads, in_blocks_ * tiles_h_, tiles_w_ * kChannelBlock * 48,
                 [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
            // Tile-row-major: a thread keeps the same image rows in every kernel (its cache).
            const int64_t ty = t / in_blocks_;
            ops.winograd_input(wj, t % in_blocks_, ty, ty + 1);
        }
    });
    // M[xi] = V[xi] U[xi]: a 1x1 convolution over `tiles` pixels per position.
    BlockedConvJob gj;
    gj.c = s_.c; gj.in_blocks = in_blocks_; gj.out_blocks = out_blocks_;
    gj.ho = 1; gj.wo = tiles; gj.h = 1; gj.w = tiles;
    const int64_t per_xi = out_blocks_ * in_blocks_ * kChannelBlock * kChannelBlock;
    const int64_t pairs = (out_blocks_ + 1) / 2;
    const int64_t chunks = (tiles + kTileChunk - 1) / kTileChunk;
    const int64_t work = 2 * 2 * kChannelBlock * s_.c * std::min(tiles, kTileChunk);
    parallel_for(ctx.threads, kPositions * chunks * pairs, work, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
            const int64_t xi = t / (chunks * pairs), rest = t % (chunks * pairs);
            const int64_t chunk = rest / pairs, ob = (rest % pairs) * 2;
            BlockedConvJob j = gj;
            j.src = {workspace + xi * in_blocks_ * tiles * kChannelBlock, tiles * kChannelBlock,
                     1, tiles * kChannelBlock, kChannelBlock};
            j.weight = packed_.data() + xi * per_xi;
            j.out = m + xi * out_blocks_ * tiles * kChannelBlock;
            const int64_t ox0 = chunk * kTileChunk;
            ops.conv(j, ob, std::min<int64_t>(2, out_blocks_ - ob), 0, 1, ox0,
                     std::min(tiles, ox0 + kTileChunk));
        }
    });
    parallel_for(ctx.threads, out_blocks_ * tiles_h_, tiles_w_ * kChannelBlock * 40,
                 [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
            const int64_t ty = t / out_blocks_;
            ops.winograd_output(wj, t % out_blocks_, ty, ty + 1);
        }
    });
}

}  // namespace rt
}  // namespace graphopt
