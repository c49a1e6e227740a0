// Affine (de)quantization steps of static int8 graphs: "quantize_linear" (f32 -> u8 / i8) and
// "dequantize_linear" (u8 / i8 / i32 -> f32), per tensor or per channel.
//
// The same float32 arithmetic as the ops' references (graphopt/ops/quant.py) and ONNX:
//   quantize:   q = saturate(round_half_even(x / scale) + zp)    (true division, not x * 1/s)
//   dequantize: x = (q - zp) * scale
// so results are bit-identical to the interpreter. std::nearbyint rounds half to even under the
// default floating-point environment, which nothing in graphopt changes.
//
// operands: [out, x, scale, zero_point?]
// ints:     [count, dtype code of the integer side, inner, channels]
//           element i uses channel (i / inner) % channels (channels = 1: per tensor)
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "rt_dtype.h"
#include "rt_parallel.h"
#include "rt_plan.h"
#include "rt_qgemm.h"

namespace graphopt {
namespace rt {
namespace {

struct QuantParams {
    DType dtype = DType::kU8;
    int64_t count = 0, inner = 1, channels = 1;

    explicit QuantParams(const KernelArgs& args) {
        IntReader r(args);
        count = r.dim("count");
        dtype = dtype_from(r.next());
        inner = std::max<int64_t>(r.dim("inner"), 1);
        channels = std::max<int64_t>(r.dim("channels"), 1);
    }

    int64_t used_channels() const {
        // Element i reads channel (i / inner) % channels: all of them once count >= channels
        // * inner, else only the first ceil(count / inner).
        return count == 0 ? 0 : std::min(channels, (count - 1) / inner + 1);
    }
};

// The operand spans shared by both kernels: out [count] of `out_elem` bytes, x [count] of
// `x_elem`, scale f32 [channels], zero point [channels] of `zp_elem` (optional); channels beyond
// the data are never read, so they need not exist.
class QuantKernelBase : public Kernel {
   protected:
    void declare(const KernelArgs& args, const QuantParams& p, int64_t out_elem, int64_t x_elem,
                 int64_t zp_elem) {
        const std::string what = "step " + args.name;
        need(args, 0, checked_mul(p.count, out_elem, what), out_elem);
        need(args, 1, checked_mul(p.count, x_elem, what), x_elem);
        need(args, 2, checked_mul(p.used_channels(), 4, what), 4);
        has_zp_ = need_opt(args, 3, checked_mul(p.used_channels(), zp_elem, what), zp_elem);
    }
    const void* zero_points(const ExecContext& ctx) const {
        return has_zp_ ? ctx.ptr(operands[3]) : nullptr;
    }
    bool has_zp_ = false;
};

// Elements [begin, end) split at channel boundaries: f(begin, end, channel).
template <typename F>
void for_channel_runs(const QuantParams& p, int64_t begin, int64_t end, F f) {
    int64_t i = begin;
    while (i < end) {
        const int64_t run_end = std::min(end, (i / p.inner + 1) * p.inner);
        f(i, run_end, (i / p.inner) % p.channels);
        i = run_end;
    }
}

template <typename T>
float zero_point_at(const void* zp, int64_t c) {
    return zp == nullptr ? 0.0f : static_cast<float>(static_cast<const T*>(zp)[c]);
}

class QuantizeKernel : public QuantKernelBase {
   public:
    explicit QuantizeKernel(const KernelArgs& args) : p_(args) {
        if (p_.dtype != DType::kU8 && p_.dtype != DType::kI8) {
            throw PlanError("quantize_linear for " + args.name + ": the result must be u8 or i8");
        }
        declare(args, p_, 1, 4, 1);
    }
    void run(const ExecContext& ctx) const override {
        const float* x = ctx.get<const float>(operands[1]);
        const float* scale = ctx.get<const float>(operands[2]);
        const void* zp = zero_points(ctx);
        if (p_.dtype == DType::kU8) {
            quantize<uint8_t>(ctx, x, scale, zp, 0.0f, 255.0f);
        } else {
            quantize<int8_t>(ctx, x, scale, zp, -128.0f, 127.0f);
        }
    }

   private:
    template <typename T>
    void quantize(const ExecContext& ctx, const float* x, const float* scale, const void* zp,
                  float lo, float hi) const {
        T* out = ctx.get<T>(operands[0]);
        parallel_for(ctx.threads, p_.count, 8, [&](int64_t begin, int64_t end) {
            for_channel_runs(p_, begin, end, [&](int64_t b, int64_t e, int64_t c) {
                const float s = scale[c];
                const float z = zero_point_at<T>(zp, c);
                for (int64_t i = b; i < e; ++i) {
                    const float q = std::nearbyint(x[i] / s) + z;
                    out[i] = static_cast<T>(std::min(std::max(q, lo), hi));
                }
            });
        });
    }

    QuantParams p_;
};

class DequantizeKernel : public QuantKernelBase {
   public:
    explicit DequantizeKernel(const KernelArgs& args) : p_(args) {
        if (p_.dtype != DType::kU8 && p_.dtype != DType::kI8 && p_.dtype != DType::kI32) {
            throw PlanError("dequantize_linear for " + args.name +
                            ": the input must be u8, i8 or i32");
        }
        const int64_t elem = dtype_size(p_.dtype);
        declare(args, p_, 4, elem, elem);
    }
    void run(const ExecContext& ctx) const override {
        dispatch_dtype(p_.dtype, [&](auto tag) {
            using T = decltype(tag);
            if constexpr (std::is_same_v<T, uint8_t> || std::is_same_v<T, int8_t> ||
                          std::is_same_v<T, int32_t>) {
                dequantize<T>(ctx);
            }
        });
    }

   private:
    template <typename T>
    void dequantize(const ExecContext& ctx) const {
        float* out = ctx.get<float>(operands[0]);
        const T* q = ctx.get<const T>(operands[1]);
        const float* scale = ctx.get<const float>(operands[2]);
        const void* zp = zero_points(ctx);
        parallel_for(ctx.threads, p_.count, 8, [&](int64_t begin, int64_t end) {
            for_channel_runs(p_, begin, end, [&](int64_t b, int64_t e, int64_t c) {
                const float s = scale[c];
                const float z = zero_point_at<T>(zp, c);
                for (int64_t i = b; i < e; ++i) out[i] = (static_cast<float>(q[i]) - z) * s;
            });
        });
    }

    QuantParams p_;
};

// ONNX DynamicQuantizeLinear of a contiguous f32 tensor: q (u8), scale (f32 []), zero point
// (u8 []), the rule of rt_qgemm.h dynamic_quantize (which the dynamic int8 GEMM uses too).
class DynamicQuantizeKernel : public Kernel {
   public:
    explicit DynamicQuantizeKernel(const KernelArgs& args) {
        IntReader r(args);
        count_ = r.dim("count");
        const std::string what = "dynamic_quantize_linear " + args.name;
        need(args, 0, count_, 1);
        need(args, 1, 4, 4);
        need(args, 2, 1, 1);
        need(args, 3, checked_mul(count_, 4, what), 4);
    }
    void run(const ExecContext& ctx) const override {
        float scale = 0.0f;
        int32_t zp = 0;
        // One range over the whole tensor, computed and applied in rows so that the threads
        // share the work (the result does not depend on the split).
        int64_t cols = count_;
        for (const int64_t c : {1024, 512, 256, 128, 64}) {
            if (count_ % c == 0 && count_ / c >= 2) {
                cols = c;
                break;
            }
        }
        dynamic_quantize(ctx.get<const float>(operands[3]), count_ / std::max<int64_t>(cols, 1),
                         cols, cols, 1, ctx.get<uint8_t>(operands[0]), &scale, &zp,
                         ctx.threads);
        *ctx.get<float>(operands[1]) = scale;
        *ctx.get<uint8_t>(operands[2]) = static_cast<uint8_t>(zp);
    }

   private:
    int64_t count_ = 0;
};

GRAPHOPT_RT_KERNEL("dynamic_quantize_linear", DynamicQuantizeKernel,
                   "q, scale, zero_point, x",
                   "count:dim",
                   "");
GRAPHOPT_RT_KERNEL("quantize_linear", QuantizeKernel,
                   "out, x, scale, zero_point?",
                   "count:dim, dtype:dtype, inner:dim, channels:dim",
                   "");
GRAPHOPT_RT_KERNEL("dequantize_linear", DequantizeKernel,
                   "out, x, scale, zero_point?",
                   "count:dim, dtype:dtype, inner:dim, channels:dim",
                   "");

}  // namespace
}  // namespace rt
}  // namespace graphopt
