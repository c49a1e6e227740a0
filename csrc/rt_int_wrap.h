// Wrapping integer arithmetic shared by the elementwise kernels (rt_elementwise.cpp unary,
// rt_binary.cpp binary).
#pragma once

#include <cstdint>
#include <type_traits>

namespace graphopt {
namespace rt {

// Integer arithmetic wraps around like torch's (two's complement), computed in the unsigned type
// so that an overflow of the data is never undefined behaviour (and INT_MIN / -1 never traps).
template <typename T>
T wrap_add(T a, T b) {
    using U = std::make_unsigned_t<T>;
    return static_cast<T>(static_cast<U>(static_cast<U>(a) + static_cast<U>(b)));
}
template <typename T>
T wrap_sub(T a, T b) {
    using U = std::make_unsigned_t<T>;
    return static_cast<T>(static_cast<U>(static_cast<U>(a) - static_cast<U>(b)));
}
template <typename T>
T wrap_mul(T a, T b) {
    using U = std::make_unsigned_t<T>;
    using W = std::conditional_t<(sizeof(U) < sizeof(unsigned)), unsigned, U>;  // no int promotion
    return static_cast<T>(static_cast<U>(static_cast<W>(static_cast<U>(a)) *
                                         static_cast<W>(static_cast<U>(b))));
}
template <typename T>
T wrap_neg(T a) {
    return wrap_sub<T>(T(0), a);
}

// The accumulator of sums and products over T: double for floating types (as torch's CPU
// reductions), uint64_t for integers (wraps modulo 2^64; cast back, modulo T's width).
template <typename T>
using WideAcc = std::conditional_t<std::is_floating_point_v<T>, double, uint64_t>;

}  // namespace rt
}  // namespace graphopt
