// Element types of the runtime and a dispatcher from a run-time code to a C++ type. The codes
// and their names (graphopt.ir DType names) are exported as _C.native_code_tables()["dtype"]
// (kDTypeNames, registered in rt_plan.cpp); graphopt/native/codes.py DTYPE_CODES reads them.
#pragma once

#include <cstdint>
#include <string>

#include "rt_plan.h"

namespace graphopt {
namespace rt {

enum class DType : int32_t {
    kF32 = 0, kF64 = 1, kI32 = 2, kI64 = 3, kBool = 4, kU8 = 5, kI8 = 6, kI16 = 7,
    kU16 = 8, kU32 = 9, kU64 = 10,
};
constexpr int64_t kDTypeCount = 11;
// Names by code (graphopt.ir.dtypes.DType member names).
inline constexpr const char* kDTypeNames[] = {"float32", "float64", "int32",  "int64",
                                              "bool",    "uint8",   "int8",   "int16",
                                              "uint16",  "uint32",  "uint64"};
static_assert(sizeof(kDTypeNames) / sizeof(kDTypeNames[0]) == kDTypeCount);

inline int64_t dtype_size(DType t) {
    switch (t) {
        case DType::kF64:
        case DType::kI64:
        case DType::kU64:
            return 8;
        case DType::kF32:
        case DType::kI32:
        case DType::kU32:
            return 4;
        case DType::kI16:
        case DType::kU16:
            return 2;
        default:
            return 1;
    }
}

// bool is stored as one byte holding 0 or 1 (numpy / torch layout).
using Bool = uint8_t;

// Calls f(T{}) with T the C++ type of `t`.
template <typename F>
decltype(auto) dispatch_dtype(DType t, F&& f) {
    switch (t) {
        case DType::kF32: return f(float{});
        case DType::kF64: return f(double{});
        case DType::kI32: return f(int32_t{});
        case DType::kI64: return f(int64_t{});
        case DType::kBool: return f(Bool{});
        case DType::kU8: return f(uint8_t{});
        case DType::kI8: return f(int8_t{});
        case DType::kI16: return f(int16_t{});
        case DType::kU16: return f(uint16_t{});
        case DType::kU32: return f(uint32_t{});
        case DType::kU64: return f(uint64_t{});
    }
    throw PlanError("unknown dtype code " + std::to_string(static_cast<int>(t)));
}

inline DType dtype_from(int64_t code) {
    if (code < 0 || code >= kDTypeCount) {
        throw PlanError("unknown dtype code " + std::to_string(code));
    }
    return static_cast<DType>(code);
}

}  // namespace rt
}  // namespace graphopt
