// The shape of a 2-D convolution as its kernels receive it (rt_conv.cpp, rt_blocked.cpp):
// the 16 integer parameters N, C, H, W, Co, kh, kw, sh, sw, ph, pw, dh, dw, groups, Ho, Wo,
// read and checked once by the kernel factory.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <string>

#include "rt_plan.h"

namespace graphopt {
namespace rt {

struct ConvShape {
    int64_t n, c, h, w, co, kh, kw, sh, sw, ph, pw, dh, dw, groups, ho, wo;

    // Reads and checks the 16 shape parameters: sizes >= 0, kernel / stride / dilation /
    // groups >= 1, groups dividing both channel counts, window arithmetic within int64.
    static ConvShape read(IntReader& r, const std::string& what) {
        ConvShape s;
        s.n = r.dim("N"); s.c = r.dim("C"); s.h = r.dim("H"); s.w = r.dim("W");
        s.co = r.dim("Co");
        s.kh = r.positive("kernel_h"); s.kw = r.positive("kernel_w");
        s.sh = r.positive("stride_h"); s.sw = r.positive("stride_w");
        s.ph = r.signed_param("pad_h"); s.pw = r.signed_param("pad_w");
        s.dh = r.positive("dilation_h"); s.dw = r.positive("dilation_w");
        s.groups = r.positive("groups"); s.ho = r.dim("Ho"); s.wo = r.dim("Wo");
        if (s.c % s.groups != 0 || s.co % s.groups != 0) {
            throw PlanError(what + ": groups = " + std::to_string(s.groups) +
                            " must divide C = " + std::to_string(s.c) + " and Co = " +
                            std::to_string(s.co));
        }
        checked_mul(checked_mul(s.c / s.groups, s.kh, what), s.kw, what);  // K of the GEMM
        for (const auto& [out, stride, k, dil, pad, in] :
             {std::array<int64_t, 6>{s.ho, s.sh, s.kh, s.dh, s.ph, s.h},
              std::array<int64_t, 6>{s.wo, s.sw, s.kw, s.dw, s.pw, s.w}}) {
            // (out - 1) * stride + (k - 1) * dil, +- pad, + in: every position the loops form.
            const int64_t reach =
                checked_add(checked_mul(std::max<int64_t>(out - 1, 0), stride, what),
                            checked_mul(k - 1, dil, what), what);
            checked_add(checked_add(reach, pad < 0 ? -pad : pad, what), in + 2, what);
            checked_add(checked_mul(std::max<int64_t>(in - 1, 0), stride, what),
                        checked_add(reach, pad < 0 ? -pad : pad, what), what);
        }
        return s;
    }

    // Spans of out [N, Co, Ho, Wo], x [N, C, H, W] (f32 elements of `elem_x` bytes for x).
    int64_t out_bytes(const std::string& what, int64_t elem = 4) const {
        return checked_mul(checked_mul(checked_mul(n, co, what), checked_mul(ho, wo, what), what),
                           elem, what);
    }
    int64_t x_bytes(const std::string& what, int64_t elem = 4) const {
        return checked_mul(checked_mul(checked_mul(n, c, what), checked_mul(h, w, what), what),
                           elem, what);
    }
    int64_t cig() const { return c / groups; }
    int64_t cog() const { return co / groups; }
    int64_t k() const { return cig() * kh * kw; }
    int64_t p() const { return ho * wo; }
};

}  // namespace rt
}  // namespace graphopt
