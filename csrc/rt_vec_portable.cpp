// Portable (baseline ISA) instantiation of the runtime's vector loops: one float per "vector";
// the compiler is free to auto-vectorise with SSE2.
#include <cmath>

#include "cpu.h"
#include "rt_vec.h"
#include "rt_vec_impl.h"

namespace graphopt {
namespace rt {

namespace {

struct ScalarSimd {
    using V = float;
    static constexpr int64_t kWidth = 1;
    static V load(const float* p) { return *p; }
    static V load_even(const float* p) { return *p; }
    static void store(float* p, V v) { *p = v; }
    static V set1(float x) { return x; }
    static V zero() { return 0.0f; }
    static V add(V a, V b) { return a + b; }
    static V sub(V a, V b) { return a - b; }
    static V mul(V a, V b) { return a * b; }
    static V div(V a, V b) { return a / b; }
    static V max(V a, V b) { return a > b ? a : b; }
    // NaN-propagating max / min (torch.maximum / minimum semantics).
    static V maxnan(V a, V b) { return (a != a || b != b) ? a + b : (a > b ? a : b); }
    static V minnan(V a, V b) { return (a != a || b != b) ? a + b : (a < b ? a : b); }
    static V fma(V a, V b, V c) { return a * b + c; }
    static V exp(V a) { return std::exp(a); }
    static float exp1(float a) { return std::exp(a); }
    static float hsum(V a) { return a; }
    static float hmax(V a) { return a; }
};

}  // namespace

const VecOps& vec_ops_portable() {
    static const VecOps ops = make_vec_ops<ScalarSimd>("portable", epilogue_portable);
    return ops;
}

const VecOps& vec_ops() {
    static const VecOps& ops = cpu_features().use_avx512     ? vec_ops_avx512()
                               : cpu_features().use_avx2_fma ? vec_ops_avx2()
                                                             : vec_ops_portable();
    return ops;
}

}  // namespace rt
}  // namespace graphopt
