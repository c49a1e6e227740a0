// Vectorised float loops shared by the runtime kernels (softmax, layer norm, attention, binary
// arithmetic...), dispatched once per process: an AVX-512 table (rt_vec_avx512.cpp), an AVX2+FMA
// one (rt_vec_avx2.cpp) or a portable one (rt_vec_portable.cpp). All are compiled from the same
// templated source (rt_vec_impl.h)
// over a SIMD traits type, so they compute the same formulas; the AVX2 exp is a polynomial
// within ~2 ulp of std::exp.
#pragma once

#include <cstdint>

#include "epilogue.h"

namespace graphopt {
namespace rt {

enum class FloatBinary : int32_t { kAdd = 0, kSub, kMul, kDiv, kMax, kMin };

struct VecOps {
    const char* name;
    float (*reduce_max)(const float* x, int64_t n);
    double (*reduce_sum)(const float* x, int64_t n);
    // y[i] = exp(x[i] * scale - shift); returns the sum of y. y may alias x.
    float (*exp_scaled_sum)(const float* x, float* y, int64_t n, float scale, float shift);
    void (*scale)(float* x, int64_t n, float s);
    // y[i] = x[i] * s + t  (y may alias x)
    void (*affine)(const float* x, float* y, int64_t n, float s, float t);
    void (*axpy)(float* y, const float* x, float a, int64_t n);  // y += a * x
    // y[i] += a * x[i * stride]  (stride >= 1; 1 and 2 are vectorised)
    void (*axpy_strided)(float* y, const float* x, int64_t stride, float a, int64_t n);
    // out[j] = scale * dot(x, m + j * ld) over n elements, for j < rows (one query's scores).
    void (*dot_rows)(const float* x, const float* m, int64_t ld, int64_t rows, int64_t n,
                     float scale, float* out);
    // y[i] += sum_j p[j] * m[j * ld + i] for i < n, j < rows (one query's weighted values).
    void (*rows_axpy)(float* y, const float* p, const float* m, int64_t ld, int64_t rows,
                      int64_t n);
    // y[i] += sum_t w[t] * x[t][i * stride] over `taps` input rows (depthwise convolution);
    // every x[t][i * stride] for i < n must be readable, and x[t][(n - 1) * stride + 1] too
    // when stride is 2 (rows with one float of slack).
    void (*taps_row)(float* y, const float* const* x, const float* w, int64_t taps,
                     int64_t stride, int64_t n);
    // y[i] = x[i * stride] (im2col runs); stride 1 and 2 are vectorised.
    void (*gather_strided)(float* y, const float* x, int64_t stride, int64_t n);
    // y[i] = max(y[i], x[i * stride]), NaN-propagating (max pooling rows)
    void (*max_strided)(float* y, const float* x, int64_t stride, int64_t n);
    // (x - mean) * rstd * w + b over one row; w / b may be null. y may alias x.
    void (*layer_norm)(const float* x, float* y, int64_t n, const float* w, const float* b,
                       float eps);
    // y[i] = a[i * sa] op b[i * sb], sa / sb in {0, 1}.
    void (*binary)(FloatBinary op, const float* a, int64_t sa, const float* b, int64_t sb,
                   float* y, int64_t n);
    // Same activation set and formulas as the GEMM epilogue, in place on a contiguous row.
    EpilogueFn epilogue;
};

// The best table for this CPU: AVX-512, AVX2+FMA or portable (GRAPHOPT_DISABLE_AVX512=1 /
// GRAPHOPT_DISABLE_AVX2=1 step down).
const VecOps& vec_ops();
const VecOps& vec_ops_portable();
const VecOps& vec_ops_avx2();
const VecOps& vec_ops_avx512();

}  // namespace rt
}  // namespace graphopt
