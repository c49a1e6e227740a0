// Conversions between float32 and the 16-bit floats (IEEE half, bfloat16), for the plans that
// compute float16 / bfloat16 nodes in float32 (graphopt/native/widen.py).
//
// "cast_half"  operands: out, x (contiguous)
//              ints: direction (0 f16 -> f32, 1 f32 -> f16, 2 bf16 -> f32, 3 f32 -> bf16), count
//              Narrowing rounds to nearest, ties to even (numpy / torch); overflow gives inf,
//              NaN stays NaN (quiet), subnormals are exact.
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "rt_parallel.h"
#include "rt_plan.h"

namespace graphopt {
namespace rt {
namespace {

uint32_t bits_of(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

float float_of(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

float half_to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1Fu;
    const uint32_t man = h & 0x3FFu;
    if (exp == 0x1F) return float_of(sign | 0x7F800000u | (man << 13));  // inf / NaN
    if (exp != 0) return float_of(sign | ((exp + 112) << 23) | (man << 13));
    if (man == 0) return float_of(sign);  // +-0
    // A subnormal half: man * 2^-24, exact in float.
    const float v = static_cast<float>(man) * 5.9604644775390625e-08f;
    return sign ? -v : v;
}

uint16_t float_to_half(float f) {
    const uint32_t u = bits_of(f);
    const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
    const uint32_t abs = u & 0x7FFFFFFFu;
    if (abs >= 0x7F800000u) {  // inf or NaN (NaN keeps a payload bit: quiet)
        return static_cast<uint16_t>(sign | 0x7C00u | (abs > 0x7F800000u ? 0x200u : 0u));
    }
    if (abs >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // rounds to inf
    if (abs < 0x38800000u) {  // below the smallest normal half: a subnormal (or zero)
        // value / 2^-24 rounded to nearest even; the float multiply is exact.
        const float scaled = float_of(abs) * 16777216.0f;
        uint32_t q = static_cast<uint32_t>(scaled);
        const float rest = scaled - static_cast<float>(q);
        if (rest > 0.5f || (rest == 0.5f && (q & 1u))) ++q;
        return static_cast<uint16_t>(sign | q);  // q may carry into the smallest normal: right
    }
    // Normal: rebias the exponent, round the 13 dropped mantissa bits to nearest even.
    const uint32_t rebased = abs - 0x38000000u;
    const uint32_t lsb = (rebased >> 13) & 1u;
    return static_cast<uint16_t>(sign | ((rebased + 0xFFFu + lsb) >> 13));
}

float bf16_to_float(uint16_t b) { return float_of(static_cast<uint32_t>(b) << 16); }

uint16_t float_to_bf16(float f) {
    const uint32_t u = bits_of(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
    const uint32_t lsb = (u >> 16) & 1u;
    return static_cast<uint16_t>((u + 0x7FFFu + lsb) >> 16);
}

class CastHalfKernel : public Kernel {
   public:
    explicit CastHalfKernel(const KernelArgs& args) {
        IntReader r(args);
        direction_ = static_cast<int>(r.in(0, 3, "direction"));
        count_ = r.dim("count");
        const std::string what = "cast_half " + args.name;
        const bool widening = direction_ == 0 || direction_ == 2;
        need(args, 0, checked_mul(count_, widening ? 4 : 2, what), widening ? 4 : 2);
        need(args, 1, checked_mul(count_, widening ? 2 : 4, what), widening ? 2 : 4);
    }
    void run(const ExecContext& ctx) const override {
        char* out = ctx.ptr(operands[0]);
        const char* x = ctx.ptr(operands[1]);
        parallel_for(ctx.threads, count_, 4, [&](int64_t i0, int64_t i1) {
            if (direction_ == 0 || direction_ == 2) {
                const uint16_t* src = reinterpret_cast<const uint16_t*>(x);
                float* dst = reinterpret_cast<float*>(out);
                for (int64_t i = i0; i < i1; ++i) {
                    dst[i] = direction_ == 0 ? half_to_float(src[i]) : bf16_to_float(src[i]);
                }
            } else {
                const float* src = reinterpret_cast<const float*>(x);
                uint16_t* dst = reinterpret_cast<uint16_t*>(out);
                for (int64_t i = i0; i < i1; ++i) {
                    dst[i] = direction_ == 1 ? float_to_half(src[i]) : float_to_bf16(src[i]);
                }
            }
        });
    }

   private:
    int direction_ = 0;
    int64_t count_ = 0;
};

GRAPHOPT_RT_KERNEL("cast_half", CastHalfKernel,
                   "out, x",
                   "direction:mode, count:dim",
                   "");

}  // namespace
}  // namespace rt
}  // namespace graphopt
