// Static int8 convolution paths of the "qconv2d" kernel (rt_qconv.cpp): the im2col GEMM there,
// and the direct depthwise path (rt_qconv_depthwise.cpp) for groups == C == Co.
#pragma once

#include <cstdint>

#include "rt_gemm.h"

namespace graphopt {
namespace rt {

struct DepthwiseArgs {
    const uint8_t* x = nullptr;  // [N, C, H, W] codes
    int64_t n = 0, c = 0, h = 0, w = 0, ho = 0, wo = 0;
    int64_t kh = 0, kw = 0, sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1;
    const int8_t* weight = nullptr;  // [C, 1, kh, kw]
    const float* w_scale = nullptr;  // [C]
    const float* bias = nullptr;     // [C] or null
    float x_scale = 1.0f;
    int32_t x_zp = 0;
    ActSpec act;
    float* out_f = nullptr;      // [N, C, Ho, Wo] f32, or
    uint8_t* out_u8 = nullptr;   // requantized with y_scale / y_zp
    float y_scale = 1.0f;
    int32_t y_zp = 0;
};

void qconv_depthwise_run(const DepthwiseArgs& args, int threads);

}  // namespace rt
}  // namespace graphopt
