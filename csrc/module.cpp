// Python bindings of the graphopt native core (graphopt._C).
//
// Only pybind11 and numpy buffers cross the boundary (no torch C++ ABI), so the extension does
// not need rebuilding when torch changes. Anything numpy can view without copying (numpy arrays,
// CPU torch tensors) is accepted; argument errors raise ValueError with the offending dims.
#include <omp.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <sstream>
#include <string>

#include "cpu.h"
#include "rt_blocked.h"
#include "rt_pack_cache.h"
#include "rt_qgemm.h"
#include "epilogue.h"
#include "gemm.h"

namespace py = pybind11;

namespace graphopt {
void register_runtime(py::module_& m);  // native runtime (rt_bindings.cpp)
void register_sparse(py::module_& m);   // CSR sparse_linear (sparse_gemm.cpp)
void register_huffman(py::module_& m);  // .gcm Huffman streams (huffman_decode.cpp)

namespace {

// Most OpenMP threads a call may ask for (as graphopt._C.NativePlan).
constexpr int kMaxThreads = 1024;

std::string shape_str(const py::array& arr) {
    std::ostringstream os;
    os << "(";
    for (py::ssize_t i = 0; i < arr.ndim(); ++i) {
        os << (i ? ", " : "") << arr.shape(i);
    }
    os << (arr.ndim() == 1 ? ",)" : ")");
    return os.str();
}

void check_float32(const py::array& arr, const char* name) {
    if (!arr.dtype().is(py::dtype::of<float>())) {
        throw py::value_error(std::string("sgemm: ") + name + " must be float32, got " +
                              std::string(py::str(arr.dtype())));
    }
}

// Returns arr itself when its strides are whole elements, else a C-contiguous copy. numpy allows
// byte strides that are not multiples of 4 (e.g. fields of a packed record array); everything
// else - transposes, slices with steps, negative strides - is read in place by the packers.
py::array element_strided(const py::array& arr) {
    for (py::ssize_t i = 0; i < arr.ndim(); ++i) {
        if (arr.strides(i) % static_cast<py::ssize_t>(sizeof(float)) != 0) {
            return py::module_::import("numpy").attr("ascontiguousarray")(arr);
        }
    }
    return arr;
}

MatrixRef matrix_ref(const py::array& arr, bool transposed) {
    const auto* data = static_cast<const float*>(arr.data());
    const int64_t s0 = arr.strides(0) / static_cast<int64_t>(sizeof(float));
    const int64_t s1 = arr.strides(1) / static_cast<int64_t>(sizeof(float));
    if (transposed) return MatrixRef{data, arr.shape(1), arr.shape(0), s1, s0};
    return MatrixRef{data, arr.shape(0), arr.shape(1), s0, s1};
}

// numpy.asarray: a no-copy view of numpy arrays and CPU torch tensors (via __array__); other
// sequences become new arrays (and then fail the float32 check unless they are float32).
py::array as_array(const py::object& obj) {
    return py::module_::import("numpy").attr("asarray")(obj);
}

py::array_t<float> sgemm_py(const py::object& a_obj, const py::object& b_obj,
                            const py::object& bias, bool trans_b, const std::string& activation,
                            int threads, bool force_portable) {
    py::array a = as_array(a_obj);
    py::array b = as_array(b_obj);
    if (a.ndim() != 2) {
        throw py::value_error("sgemm: a must be a 2-D array [M, K], got shape " + shape_str(a));
    }
    if (b.ndim() != 2) {
        throw py::value_error(std::string("sgemm: b must be a 2-D array ") +
                              (trans_b ? "[N, K] (trans_b=True)" : "[K, N]") + ", got shape " +
                              shape_str(b));
    }
    check_float32(a, "a");
    check_float32(b, "b");
    const int64_t m = a.shape(0);
    const int64_t k = a.shape(1);
    const int64_t kb = trans_b ? b.shape(1) : b.shape(0);
    const int64_t n = trans_b ? b.shape(0) : b.shape(1);
    if (kb != k) {
        std::ostringstream os;
        os << "sgemm: inner dimensions do not match: a is [M=" << m << ", K=" << k << "] but b ";
        if (trans_b) {
            os << "(trans_b=True) is [N=" << n << ", K=" << kb << "]";
        } else {
            os << "is [K=" << kb << ", N=" << n << "]";
        }
        throw py::value_error(os.str());
    }

    py::array bias_arr;
    const bool has_bias = !bias.is_none();
    if (has_bias) {
        bias_arr = as_array(bias);
        if (bias_arr.ndim() != 1 || bias_arr.shape(0) != n) {
            std::ostringstream os;
            os << "sgemm: bias must have shape [N=" << n << "], got shape " << shape_str(bias_arr);
            throw py::value_error(os.str());
        }
        if (!bias_arr.dtype().is(py::dtype::of<float>())) {
            throw py::value_error("sgemm: bias must be float32, got " +
                                  std::string(py::str(bias_arr.dtype())));
        }
        // The epilogue reads bias contiguously; it is only N floats, so copy when strided.
        bias_arr = py::module_::import("numpy").attr("ascontiguousarray")(bias_arr);
    }

    Activation act;
    if (!parse_activation(activation, &act)) {
        throw py::value_error("sgemm: unknown activation '" + activation +
                              "'; expected one of: " + activation_names());
    }
    if (threads < 0 || threads > kMaxThreads) {
        throw py::value_error("sgemm: threads must be >= 0 (0 = OpenMP default) and <= " +
                              std::to_string(kMaxThreads) + ", got " + std::to_string(threads));
    }

    a = element_strided(a);
    b = element_strided(b);
    const MatrixRef a_ref = matrix_ref(a, false);
    const MatrixRef b_ref = matrix_ref(b, trans_b);
    GemmOptions options;
    options.bias = has_bias ? static_cast<const float*>(bias_arr.data()) : nullptr;
    options.activation = act;
    options.threads = threads;
    options.force_portable = force_portable;

    py::array_t<float> out({static_cast<py::ssize_t>(m), static_cast<py::ssize_t>(n)});
    float* c = out.mutable_data();
    {
        py::gil_scoped_release release;
        sgemm(a_ref, b_ref, c, n, options);
    }
    return out;
}

}  // namespace
}  // namespace graphopt

PYBIND11_MODULE(_C, m) {
    using namespace graphopt;
    m.doc() = "graphopt native core: packed AVX2/FMA SGEMM with fused epilogues (pybind11).";

    m.def("sgemm", &sgemm_py, py::arg("a"), py::arg("b"), py::arg("bias") = py::none(),
          py::arg("trans_b") = false, py::arg("activation") = "none", py::arg("threads") = 0,
          py::arg("force_portable") = false,
          R"doc(Single-precision GEMM with fused bias and activation.

Computes ``act(a @ b + bias)``, or ``act(a @ b.T + bias)`` when ``trans_b`` is true (``b`` is
then ``[N, K]`` like a ``torch.nn.Linear`` weight).

Args:
    a: float32 array ``[M, K]``.
    b: float32 array ``[K, N]``, or ``[N, K]`` with ``trans_b=True``.
    bias: optional float32 array ``[N]``.
    trans_b: whether ``b`` is stored ``[N, K]``.
    activation: one of none, relu, relu6, gelu (erf form), gelu_tanh, silu, sigmoid, tanh,
        hardswish.
    threads: OpenMP threads; 0 uses the default (see ``get_num_threads``). Results do not
        depend on the thread count.
    force_portable: use the baseline-ISA kernels even on an AVX2+FMA CPU (for testing).

Non-contiguous inputs (transposed views, step slices, negative strides) are read in place
through their strides during packing; no copy is made. Any array numpy can view (including
CPU torch tensors) is accepted.

Returns:
    A new C-contiguous float32 array ``[M, N]``.

Raises:
    ValueError: wrong rank, dtype other than float32, mismatched K, bias shape other than
        ``[N]``, unknown activation, or negative thread count.
)doc");

    m.def(
        "cpu_features",
        []() {
            const CpuFeatures& f = cpu_features();
            py::dict d;
            d["avx2"] = f.avx2;
            d["fma"] = f.fma;
            d["avx512f"] = f.avx512f;
            d["avx512bf16"] = f.avx512bf16;
            d["amx"] = f.amx;
            d["use_amx"] = f.use_amx;
            d["bf16_gemm_kernel"] = std::string(f.use_amx ? "amx" : "fp32");
            // The int8 GEMM runs AMX tiles from 8 rows on when its kernel set is VNNI (u8 x s8).
            d["int8_gemm_tiles"] = std::string(
                f.use_amx && rt::qgemm_kernels().format == rt::QFormat::kQuadU8 ? "amx" : "none");
            d["sgemm_kernel"] = std::string(sgemm_kernel_name(false));
            d["blocked_conv_kernel"] = std::string(rt::blocked_ops().name);
            return d;
        },
        "CPU features detected at run time and the SGEMM kernel they select "
        "(GRAPHOPT_DISABLE_AVX2=1 forces the portable kernel, GRAPHOPT_DISABLE_AVX512=1 the AVX2 "
        "one, GRAPHOPT_DISABLE_AMX=1 keeps AMX tiles unused).");

    m.def(
        "pack_cache_stats",
        []() {
            const rt::PackCache::Stats s = rt::PackCache::stats();
            py::dict d;
            d["packs"] = s.packs;
            d["hits"] = s.hits;
            d["live"] = s.live;
            return d;
        },
        "Packed-weight sharing of the native runtime (csrc/rt_pack_cache.h): packings made, "
        "requests served by an existing packing, packings still held by some plan.");

    m.def(
        "set_num_threads",
        [](int n) {
            if (n < 1 || n > kMaxThreads) {
                throw py::value_error("set_num_threads: n must be >= 1 and <= " +
                                      std::to_string(kMaxThreads) + ", got " + std::to_string(n));
            }
            omp_set_num_threads(n);
        },
        py::arg("n"),
        "Sets the default OpenMP thread count used when sgemm(threads=0). Note that torch, when "
        "it shares the same libgomp, sees the same setting.");

    m.def(
        "get_num_threads", []() { return omp_get_max_threads(); },
        "Default OpenMP thread count used when sgemm(threads=0).");

    register_runtime(m);
    register_sparse(m);
    register_huffman(m);
}
