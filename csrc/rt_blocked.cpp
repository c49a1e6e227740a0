// Kernels of the channel-blocked layout (rt_blocked.h), float32.
//
// (reorders "to_blocked" / "from_blocked": rt_blocked_reorder.cpp)
// "conv2d_blocked"  operands: out (blocked [N, Co]), x (blocked, or plain NCHW when x_blocked
//                 is 0), weight (plan constant [Co, C / groups, kh, kw]), bias?, residual?
//                 (blocked, like out; may be out itself), scratch? (zero-bordered input copy:
//                 ceil(C/16) * 16 * Hp * Wp floats, C * Hp * Wp for a dense convolution of a
//                 plain input, needed when the taps reach outside the input, or for a
//                 depthwise convolution of a plain input; or the subsampled input of a strided
//                 1x1 convolution of a blocked input, ceil(C/16) * 16 * Ho * Wo), workspace?
//                 (given: Winograd F(2x2, 3x3), rt_winograd.h; WinogradConv::workspace_floats)
//                 ints: the 16 conv2d shape parameters (groups 1, or C == Co == groups:
//                 depthwise), act, x_blocked;  floats: act_p0, act_p1
//                 out = act(conv(x, w) + bias + residual)
// "max_pool2d_blocked"  operands: out (blocked), x (blocked)
//                 ints: N, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw
// "global_avg_pool_blocked"  operands: out [N, C], x (blocked [N, C, HW]); ints: N, C, HW
//
// Dense convolutions split the output of an image into tasks of (output block pair, row,
// 96-pixel chunk); when the packed weights outweigh the input, a thread's consecutive tasks
// share a block pair (its weights stay in cache) else a pixel chunk (its input does).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cpu.h"
#include "rt_blocked.h"
#include "rt_conv_shape.h"
#include "rt_parallel.h"
#include "rt_plan.h"
#include "rt_winograd.h"

namespace graphopt {
namespace rt {
namespace {

struct PortableBlock {
    struct V {
        float v[16];
    };
    static V load(const float* p) {
        V r;
        std::memcpy(r.v, p, sizeof r.v);
        return r;
    }
    static void store(float* p, const V& a) { std::memcpy(p, a.v, sizeof a.v); }
    static V set1(float x) {
        V r;
        for (float& f : r.v) f = x;
        return r;
    }
    static V zero() { return set1(0.0f); }
    static V add(const V& a, const V& b) {
        V r;
        for (int i = 0; i < 16; ++i) r.v[i] = a.v[i] + b.v[i];
        return r;
    }
    static V sub(const V& a, const V& b) {
        V r;
        for (int i = 0; i < 16; ++i) r.v[i] = a.v[i] - b.v[i];
        return r;
    }
    static V fma(const V& a, const V& b, const V& c) {
        V r;
        for (int i = 0; i < 16; ++i) r.v[i] = a.v[i] * b.v[i] + c.v[i];
        return r;
    }
    // As maxps / minps: the second operand where either is NaN.
    static V max(const V& a, const V& b) {
        V r;
        for (int i = 0; i < 16; ++i) r.v[i] = a.v[i] > b.v[i] ? a.v[i] : b.v[i];
        return r;
    }
    static V min(const V& a, const V& b) {
        V r;
        for (int i = 0; i < 16; ++i) r.v[i] = a.v[i] < b.v[i] ? a.v[i] : b.v[i];
        return r;
    }
    static V maxnan(const V& a, const V& b) {
        V r;
        for (int i = 0; i < 16; ++i) {
            const float x = a.v[i], y = b.v[i];
            r.v[i] = (std::isnan(x) || std::isnan(y)) ? x + y : std::max(x, y);
        }
        return r;
    }
};

#include "rt_blocked_impl.h"

constexpr int64_t kPixelChunk = 8 * kMaxTile;  // pixels per dense-conv task

class BlockedConvKernel : public Kernel {
   public:
    explicit BlockedConvKernel(const KernelArgs& args) {
        IntReader r(args);
        const std::string what = "conv2d_blocked " + args.name;
        s_ = ConvShape::read(r, what);
        act_.act = static_cast<Act>(r.in(0, kMaxActivationCode, "act"));
        x_blocked_ = r.next() != 0;
        act_.p0 = static_cast<float>(r.real(0));
        act_.p1 = static_cast<float>(r.real(1));
        depthwise_ = s_.groups > 1 && s_.groups == s_.c && s_.co == s_.c;
        src_blocks_ = channel_blocks(s_.c);
        in_blocks_ = src_blocks_;
        out_blocks_ = channel_blocks(s_.co);
        if (s_.groups > 1 && !depthwise_) {
            // Grouped: every output block reads whole groups from in_blocks_ consecutive input
            // blocks (its 16 x 16 weight tiles are block-diagonal): either groups of equal
            // width dividing 16, or group widths that are multiples of 16.
            const int64_t cig = s_.cig(), cog = s_.cog();
            if (cig == cog && kChannelBlock % cog == 0) {
                in_blocks_ = 1;
            } else if (cig % kChannelBlock == 0 && cog % kChannelBlock == 0) {
                in_blocks_ = cig / kChannelBlock;
            } else {
                throw PlanError(what + ": groups of " + std::to_string(cig) + " -> " +
                                std::to_string(cog) + " channels do not tile 16-channel blocks");
            }
            group_in_ = cig;
            group_out_ = cog;
        }
        const int64_t hw_out = checked_mul(s_.ho, s_.wo, what);
        const int64_t hw_in = checked_mul(s_.h, s_.w, what);
        need(args, 0, blocked_bytes(s_.n, s_.co, hw_out, what), 4);
        need(args, 1, x_blocked_ ? blocked_bytes(s_.n, s_.c, hw_in, what)
                                 : plain_bytes(s_.n, s_.c, hw_in, what), 4);
        const int64_t taps = s_.kh * s_.kw;
        need(args, 2, checked_mul(checked_mul(s_.co, s_.k(), what), 4, what), 4);
        has_bias_ = need_opt(args, 3, checked_mul(s_.co, 4, what), 4);
        has_residual_ = need_opt(args, 4, blocked_bytes(s_.n, s_.co, hw_out, what), 4);
        // The zero-bordered copy the taps read when they reach outside the input.
        pad_h_ = checked_add(checked_add(checked_mul(std::max<int64_t>(s_.ho - 1, 0), s_.sh, what),
                                         checked_mul(s_.kh - 1, s_.dh, what), what), 1, what);
        pad_w_ = checked_add(checked_add(checked_mul(std::max<int64_t>(s_.wo - 1, 0), s_.sw, what),
                                         checked_mul(s_.kw - 1, s_.dw, what), what), 1, what);
        const bool inside = s_.ph == 0 && s_.pw == 0 && pad_h_ <= s_.h && pad_w_ <= s_.w;
        plan_scratch(args, inside, what);
        const auto* weight = reinterpret_cast<const float*>(constant(args, 2));
        if (args.has(6)) {
            winograd_ = std::make_unique<WinogradConv>(s_, weight);
        } else {
            pack(weight, taps);
        }
    }

    void run(const ExecContext& ctx) const override {
        float* out = ctx.get<float>(operands[0]);
        const float* x = ctx.get<const float>(operands[1]);
        const float* bias_in = has_bias_ ? ctx.get<const float>(operands[3]) : nullptr;
        const float* residual = has_residual_ ? ctx.get<const float>(operands[4]) : nullptr;
        float* scratch = use_scratch_ || subsample_ ? ctx.get<float>(operands[5]) : nullptr;
        float* workspace = winograd_ ? ctx.get<float>(operands[6]) : nullptr;
        const BlockedOps& ops = blocked_ops();
        // Bias padded to whole blocks (the operand is a plan value: copied per run, Co floats).
        std::vector<float> bias;
        if (bias_in != nullptr) {
            bias.assign(static_cast<size_t>(out_blocks_ * kChannelBlock), 0.0f);
            std::copy(bias_in, bias_in + s_.co, bias.begin());
        }
        const int64_t hw_in = s_.h * s_.w, hw_out = s_.ho * s_.wo;
        const int64_t out_image = out_blocks_ * kChannelBlock * hw_out;
        for (int64_t n = 0; n < s_.n; ++n) {
            BlockedSource src;
            if (x_blocked_) {
                src = {x + n * src_blocks_ * kChannelBlock * hw_in, hw_in * kChannelBlock, 1,
                       s_.w * kChannelBlock, kChannelBlock};
            } else {
                src = {x + n * s_.c * hw_in, kChannelBlock * hw_in, hw_in, s_.w, 1};
            }
            if (plain_scratch_) {
                fill_plain_scratch(ctx, src.base, scratch);
                src = {scratch, kChannelBlock * pad_h_ * pad_w_, pad_h_ * pad_w_, pad_w_, 1};
            } else if (use_scratch_) {
                fill_scratch(ctx, src, scratch);
                src = {scratch, pad_h_ * pad_w_ * kChannelBlock, 1, pad_w_ * kChannelBlock,
                       kChannelBlock};
            } else if (subsample_) {
                fill_subsampled(ctx, src, scratch);
                src = {scratch, hw_out * kChannelBlock, 1, s_.wo * kChannelBlock, kChannelBlock};
            }
            if (winograd_) {
                winograd_->run(ctx, ops, src, bias.empty() ? nullptr : bias.data(),
                               residual != nullptr ? residual + n * out_image : nullptr,
                               out + n * out_image, act_, workspace);
                continue;
            }
            BlockedConvJob job;
            job.c = s_.c;
            job.in_blocks = in_blocks_;
            job.out_blocks = out_blocks_;
            job.group_in = group_in_;
            job.group_out = group_out_;
            job.kh = s_.kh; job.kw = s_.kw;
            job.sh = subsample_ ? 1 : s_.sh;
            job.sw = subsample_ ? 1 : s_.sw;
            job.dh = s_.dh; job.dw = s_.dw;
            job.ho = flat_ ? 1 : s_.ho;
            job.wo = flat_ ? hw_out : s_.wo;
            job.src = src;
            if (depthwise_ && !use_scratch_) {  // taps outside the input are skipped
                job.ph = s_.ph;
                job.pw = s_.pw;
                job.h = s_.h;
                job.w = s_.w;
            } else {  // every tap lies inside the source
                job.h = use_scratch_ ? pad_h_ : s_.h;
                job.w = use_scratch_ ? pad_w_ : s_.w;
            }
            if (flat_) {  // one row of Ho * Wo pixels (= H * W, or the subsampled copy)
                job.h = 1;
                job.w = hw_out;
            }
            job.weight = packed_.data();
            job.bias = bias.empty() ? nullptr : bias.data();
            job.residual = residual != nullptr ? residual + n * out_image : nullptr;
            job.out = out + n * out_image;
            job.act = act_;
            if (depthwise_) {
                // Threads split the image by rows, and each walks its rows block by block: a
                // thread keeps the same rows in every kernel of a plan (they are still in its
                // own core's cache), and consecutive rows of one block share two input rows.
                // Small images (fewer rows than 8 per thread) also split the blocks of a row.
                const int64_t want = 8 * std::max(1, ctx.threads);
                const int64_t parts =
                    job.ho >= want ? 1 : std::min(out_blocks_, (want + job.ho - 1) / job.ho);
                const int64_t row_work = job.wo * s_.kh * s_.kw * 32 * out_blocks_ / parts;
                parallel_for(ctx.threads, job.ho * parts, row_work, [&](int64_t t0, int64_t t1) {
                    if (parts == 1) {
                        for (int64_t b = 0; b < out_blocks_; ++b) ops.depthwise(job, b, t0, t1);
                        return;
                    }
                    for (int64_t t = t0; t < t1; ++t) {
                        const int64_t oy = t / parts, part = t % parts;
                        for (int64_t b = out_blocks_ * part / parts;
                             b < out_blocks_ * (part + 1) / parts; ++b) {
                            ops.depthwise(job, b, oy, oy + 1);
                        }
                    }
                });
            } else {
                run_dense(ctx, ops, job);
            }
        }
    }

   private:
    void run_dense(const ExecContext& ctx, const BlockedOps& ops,
                   const BlockedConvJob& job) const {
        // Two output blocks share each input broadcast; grouped blocks read different inputs.
        const int64_t width = group_out_ > 0 ? 1 : 2;
        const int64_t pairs = (out_blocks_ + width - 1) / width;
        // Chunks of a row as even as possible (196 pixels run as 98 + 98, not 96 + 96 + 4:
        // a 4-pixel tile streams the weights for a sixth of the multiply-adds).
        const int64_t chunks = (job.wo + kPixelChunk - 1) / kPixelChunk;
        const int64_t per_pair = job.ho * chunks;
        const int64_t weight_bytes = static_cast<int64_t>(packed_.size()) * 4;
        const int64_t input_bytes = in_blocks_ * kChannelBlock * s_.h * s_.w * 4;
        const bool pair_major = weight_bytes > input_bytes;
        const int64_t work = 2 * 2 * kChannelBlock * s_.c * s_.kh * s_.kw *
                             std::min<int64_t>(job.wo, kPixelChunk);
        parallel_for(ctx.threads, pairs * per_pair, work, [&](int64_t t0, int64_t t1) {
            for (int64_t t = t0; t < t1; ++t) {
                const int64_t pair = pair_major ? t / per_pair : t % pairs;
                const int64_t rest = pair_major ? t % per_pair : t / pairs;
                const int64_t oy = rest / chunks, chunk = rest % chunks;
                const int64_t ob = pair * width;
                const int64_t nb = std::min<int64_t>(width, out_blocks_ - ob);
                ops.conv(job, ob, nb, oy, oy + 1, job.wo * chunk / chunks,
                         job.wo * (chunk + 1) / chunks);
            }
        });
    }

    // Which copy of the input the convolution reads, and the operand that holds it: a Winograd
    // workspace (slot 6), a zero-bordered copy when taps reach outside the input, or the
    // subsampled input of a strided 1x1 convolution (slot 5, "scratch").
    void plan_scratch(const KernelArgs& args, bool inside, const std::string& what) {
        // Winograd (rt_winograd.h) when the plan gave its workspace; its input transform
        // reads the blocked input itself (zeros outside), like the depthwise kernels.
        if (args.has(6)) {
            if (!x_blocked_ || !WinogradConv::eligible(s_)) {
                throw PlanError(what + ": a Winograd workspace was given, but Winograd runs only "
                                "3x3, stride-1, undilated, ungrouped convolutions of a blocked "
                                "input with padding 0..2");
            }
            need(args, 6, checked_mul(WinogradConv::workspace_floats(s_, what), 4, what), 4);
        }
        // Depthwise kernels skip the taps outside a blocked input themselves.
        use_scratch_ = args.has(6) ? false : depthwise_ ? !x_blocked_ : !inside;
        // A dense convolution of a plain input keeps the copy plain ([C][Hp][Wp]): an image's
        // stem has 1-4 channels, and a 16-lane blocked copy would be 4-16x larger, mostly zeros.
        plain_scratch_ = use_scratch_ && !x_blocked_ && !depthwise_;
        // A strided 1x1 convolution of a blocked input reads a compact copy of the pixels it
        // uses and runs as one long row (rows of 7-28 pixels make narrow tiles).
        subsample_ = !use_scratch_ && !args.has(6) && x_blocked_ && !depthwise_ &&
                     group_out_ == 0 && s_.kh == 1 && s_.kw == 1 && (s_.sh > 1 || s_.sw > 1) &&
                     s_.ph == 0 && s_.pw == 0;
        const int64_t scratch_channels = plain_scratch_ ? s_.c : src_blocks_ * kChannelBlock;
        const int64_t scratch_pixels = subsample_ ? checked_mul(s_.ho, s_.wo, what)
                                                  : checked_mul(pad_h_, pad_w_, what);
        const int64_t scratch_bytes =
            checked_mul(checked_mul(scratch_channels, scratch_pixels, what), 4, what);
        const bool has_scratch = need_opt(args, 5, scratch_bytes, 4);
        if ((use_scratch_ || subsample_) && !has_scratch) {
            throw PlanError(what + ": this convolution reads " +
                            (subsample_ ? "a subsampled copy of its input"
                                        : "outside its input") +
                            " and needs a " + std::to_string(scratch_bytes) +
                            "-byte scratch operand");
        }
        // A 1x1, stride-1 convolution over the whole input is one long row of pixels.
        flat_ = subsample_ || (!use_scratch_ && s_.kh == 1 && s_.kw == 1 && s_.sh == 1 &&
                               s_.sw == 1 && s_.ho == s_.h && s_.wo == s_.w);
    }

    // scratch[b][y][x][16] = source(b * 16 + lane, y - ph, x - pw) inside the input, else 0.
    void fill_scratch(const ExecContext& ctx, const BlockedSource& src, float* scratch) const {
        const int64_t rows = src_blocks_ * pad_h_;
        parallel_for(ctx.threads, rows, pad_w_ * kChannelBlock, [&](int64_t r0, int64_t r1) {
            for (int64_t row = r0; row < r1; ++row) {
                const int64_t b = row / pad_h_, y = row % pad_h_;
                float* dst = scratch + row * pad_w_ * kChannelBlock;
                const int64_t iy = y - s_.ph;
                if (iy < 0 || iy >= s_.h) {
                    std::fill(dst, dst + pad_w_ * kChannelBlock, 0.0f);
                    continue;
                }
                const int64_t count = std::min(kChannelBlock, s_.c - b * kChannelBlock);
                const float* line = src.base + b * src.block_stride + iy * src.row_stride;
                for (int64_t xx = 0; xx < pad_w_; ++xx) {
                    float* d = dst + xx * kChannelBlock;
                    const int64_t ix = xx - s_.pw;
                    if (ix < 0 || ix >= s_.w) {
                        std::fill(d, d + kChannelBlock, 0.0f);
                    } else if (src.channel_stride == 1) {
                        std::memcpy(d, line + ix * kChannelBlock, sizeof(float) * kChannelBlock);
                    } else {
                        for (int64_t ci = 0; ci < count; ++ci) {
                            d[ci] = line[ci * src.channel_stride + ix * src.pixel_stride];
                        }
                        std::fill(d + count, d + kChannelBlock, 0.0f);
                    }
                }
            }
        });
    }

    // scratch[b][oy][ox][16] = source[b][oy * sh][ox * sw][16] (a strided 1x1 convolution).
    void fill_subsampled(const ExecContext& ctx, const BlockedSource& src, float* scratch) const {
        parallel_for(ctx.threads, src_blocks_ * s_.ho, s_.wo * kChannelBlock,
                     [&](int64_t r0, int64_t r1) {
            for (int64_t row = r0; row < r1; ++row) {
                const int64_t b = row / s_.ho, oy = row % s_.ho;
                const float* line = src.base + b * src.block_stride + oy * s_.sh * src.row_stride;
                float* dst = scratch + row * s_.wo * kChannelBlock;
                for (int64_t ox = 0; ox < s_.wo; ++ox) {
                    std::memcpy(dst + ox * kChannelBlock, line + ox * s_.sw * kChannelBlock,
                                sizeof(float) * kChannelBlock);
                }
            }
        });
    }

    // scratch[c][y][x] = x(c, y - ph, x - pw) inside the input, else 0 (plain NCHW image).
    void fill_plain_scratch(const ExecContext& ctx, const float* x, float* scratch) const {
        parallel_for(ctx.threads, s_.c * pad_h_, pad_w_, [&](int64_t r0, int64_t r1) {
            for (int64_t row = r0; row < r1; ++row) {
                const int64_t c = row / pad_h_, iy = row % pad_h_ - s_.ph;
                float* dst = scratch + row * pad_w_;
                if (iy < 0 || iy >= s_.h) {
                    std::fill(dst, dst + pad_w_, 0.0f);
                    continue;
                }
                // Columns [x0, x1) of the copy come from the input row; the rest are zeros.
                const int64_t x0 = std::min(std::max<int64_t>(s_.pw, 0), pad_w_);
                const int64_t x1 = std::max(x0, std::min(pad_w_, s_.pw + s_.w));
                const float* line = x + (c * s_.h + iy) * s_.w;
                std::fill(dst, dst + x0, 0.0f);
                std::copy(line + (x0 - s_.pw), line + (x1 - s_.pw), dst + x0);
                std::fill(dst + x1, dst + pad_w_, 0.0f);
            }
        });
    }

    // Dense: [out_blocks][in_blocks][kh][kw][16 in][16 out]; depthwise: [blocks][kh][kw][16];
    // zeros past C / Co.
    void pack(const float* w, int64_t taps) {
        if (depthwise_) {
            packed_.assign(static_cast<size_t>(out_blocks_ * taps * kChannelBlock), 0.0f);
            for (int64_t oc = 0; oc < s_.co; ++oc) {
                const int64_t b = oc / kChannelBlock, lane = oc % kChannelBlock;
                for (int64_t t = 0; t < taps; ++t) {
                    packed_[static_cast<size_t>((b * taps + t) * kChannelBlock + lane)] =
                        w[oc * taps + t];
                }
            }
            return;
        }
        packed_.assign(static_cast<size_t>(out_blocks_ * in_blocks_ * taps * kChannelBlock *
                                           kChannelBlock), 0.0f);
        if (group_out_ > 0) {  // grouped: [ob][its in_blocks_][taps][16 in][16 out]
            for (int64_t oc = 0; oc < s_.co; ++oc) {
                const int64_t ob = oc / kChannelBlock, ol = oc % kChannelBlock;
                const int64_t g = oc / group_out_;
                const int64_t ib0 = first_input_block(ob, group_in_, group_out_);
                for (int64_t icl = 0; icl < group_in_; ++icl) {
                    const int64_t ic = g * group_in_ + icl;
                    const int64_t ib = ic / kChannelBlock - ib0, il = ic % kChannelBlock;
                    for (int64_t t = 0; t < taps; ++t) {
                        const int64_t at =
                            (((ob * in_blocks_ + ib) * taps + t) * kChannelBlock + il) *
                                kChannelBlock + ol;
                        packed_[static_cast<size_t>(at)] = w[(oc * group_in_ + icl) * taps + t];
                    }
                }
            }
            return;
        }
        for (int64_t oc = 0; oc < s_.co; ++oc) {
            const int64_t ob = oc / kChannelBlock, ol = oc % kChannelBlock;
            for (int64_t ic = 0; ic < s_.c; ++ic) {
                const int64_t ib = ic / kChannelBlock, il = ic % kChannelBlock;
                for (int64_t t = 0; t < taps; ++t) {
                    const int64_t at =
                        (((ob * in_blocks_ + ib) * taps + t) * kChannelBlock + il) *
                            kChannelBlock + ol;
                    packed_[static_cast<size_t>(at)] = w[(oc * s_.c + ic) * taps + t];
                }
            }
        }
    }

    ConvShape s_;
    ActSpec act_;
    bool x_blocked_ = false, depthwise_ = false, has_bias_ = false, has_residual_ = false;
    bool use_scratch_ = false, plain_scratch_ = false, subsample_ = false, flat_ = false;
    // in_blocks_: input blocks one output block reads (all of them unless grouped);
    // src_blocks_: the input's blocks. group_in_ / group_out_: channels per group (grouped).
    int64_t in_blocks_ = 0, src_blocks_ = 0, out_blocks_ = 0, pad_h_ = 0, pad_w_ = 0;
    int64_t group_in_ = 0, group_out_ = 0;
    std::vector<float> packed_;
    std::unique_ptr<WinogradConv> winograd_;  // set: Winograd instead of packed_
};

}  // namespace

const BlockedOps& blocked_ops_portable() {
    static const BlockedOps ops = make_blocked_ops<PortableBlock>("portable");
    return ops;
}

const BlockedOps& blocked_ops() {
    static const BlockedOps& ops =
        cpu_features().use_avx512 ? blocked_ops_avx512() : blocked_ops_portable();
    return ops;
}

namespace {

GRAPHOPT_RT_KERNEL("conv2d_blocked", BlockedConvKernel,
                   "out, x, w, bias?, residual?, scratch?, workspace?",
                   "N:dim, C:dim, H:dim, W:dim, Co:dim, kernel_h:positive, kernel_w:positive, "
                   "stride_h:positive, stride_w:positive, pad_h:signed, pad_w:signed, "
                   "dilation_h:positive, dilation_w:positive, groups:positive, Ho:dim, Wo:dim, "
                   "act:act, x_blocked:flag",
                   "p0, p1");
}  // namespace
}  // namespace rt
}  // namespace graphopt
