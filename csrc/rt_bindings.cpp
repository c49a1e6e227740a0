// Python bindings of the native runtime (graphopt._C.NativePlan), registered into the _C
// module by module.cpp. Only integers (pointers, sizes, offsets, parameters) cross the boundary:
// the Python side owns every buffer (arena, constants, per-call inputs and outputs) and keeps
// them alive; the plan stores raw pointers with their byte sizes and checks every step's
// operands against them (rt_plan.h, "Safety"), so a wrong call raises instead of crashing.
//
// Errors: the C++ exceptions of every _C function become graphopt errors
// (graphopt/native/errors.py): PlanError, other std::logic_error and py::value_error (argument
// checks) -> NativeError (a GraphoptError and a ValueError), std::out_of_range ->
// NativeIndexError (also an IndexError).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <exception>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "activation.h"
#include "rt_plan.h"
#include "rt_qgemm.h"
#include "rt_threadpool.h"
#include "rt_vec.h"
#include "rt_wo.h"

namespace py = pybind11;

namespace graphopt {

namespace {

using OperandTuple = std::optional<std::tuple<int, int, int64_t>>;  // (space, index, offset)
using BufferTuple = std::tuple<uintptr_t, int64_t>;                  // (address, bytes)

std::vector<rt::BufferRef> as_buffers(const std::vector<BufferTuple>& values) {
    std::vector<rt::BufferRef> out;
    out.reserve(values.size());
    for (const BufferTuple& v : values) {
        out.push_back(rt::BufferRef{reinterpret_cast<char*>(std::get<0>(v)), std::get<1>(v)});
    }
    return out;
}

// Sets the Python error graphopt.native.errors.<name> (cached once imported), or `fallback`
// when that module cannot be imported (graphopt._C used on its own).
void set_error(const char* name, PyObject* fallback, const char* message) {
    static PyObject* native_error = nullptr;        // leaked on purpose: lives as long as _C
    static PyObject* native_index_error = nullptr;
    PyObject** slot = std::string(name) == "NativeIndexError" ? &native_index_error
                                                              : &native_error;
    if (*slot == nullptr) {
        try {
            py::object cls = py::module_::import("graphopt.native.errors").attr(name);
            *slot = cls.release().ptr();
        } catch (py::error_already_set&) {
            // fall back below (the import error is dropped)
        }
    }
    PyErr_SetString(*slot != nullptr ? *slot : fallback, message);
}

void translate_runtime_errors(std::exception_ptr p) {
    try {
        if (p) std::rethrow_exception(p);
    } catch (const std::out_of_range& e) {
        set_error("NativeIndexError", PyExc_IndexError, e.what());
    } catch (const std::logic_error& e) {  // PlanError, domain_error, invalid_argument...
        set_error("NativeError", PyExc_ValueError, e.what());
    } catch (const py::value_error& e) {  // argument checks of sgemm / sparse_linear
        set_error("NativeError", PyExc_ValueError, e.what());
    }
}


// ------------------------------------------------------------------------- the kernel table
std::string trim(const std::string& s) {
    const size_t b = s.find_first_not_of(" \t\n");
    if (b == std::string::npos) return "";
    const size_t e = s.find_last_not_of(" \t\n");
    return s.substr(b, e - b + 1);
}

std::vector<std::string> split_list(const char* text) {
    std::vector<std::string> out;
    std::string cur;
    for (const char* c = text; *c != '\0'; ++c) {
        if (*c == ',') {
            out.push_back(trim(cur));
            cur.clear();
        } else {
            cur += *c;
        }
    }
    if (!trim(cur).empty() || !out.empty()) out.push_back(trim(cur));
    return out;
}

bool is_identifier(const std::string& s) {
    if (s.empty() || std::isdigit(static_cast<unsigned char>(s[0]))) return false;
    for (char c : s) {
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_') return false;
    }
    return true;
}

// "name" / "name?" entries (operands, floats): [{"name", "optional"}]. Floats: optional ones
// must be trailing.
py::list parse_slots(const std::string& kernel, const char* what, const char* text,
                     bool trailing_optional) {
    py::list out;
    bool seen_optional = false;
    for (std::string item : split_list(text)) {
        const bool optional = !item.empty() && item.back() == '?';
        if (optional) item = trim(item.substr(0, item.size() - 1));
        if (!is_identifier(item) || (trailing_optional && seen_optional && !optional)) {
            throw std::logic_error("kernel '" + kernel + "': malformed " + what +
                                   " signature '" + text + "'");
        }
        seen_optional = seen_optional || optional;
        py::dict slot;
        slot["name"] = item;
        slot["optional"] = optional;
        out.append(slot);
    }
    return out;
}

// "name:type" / "name[count]:type" entries: [{"name", "type", "count"}], count None (one value),
// an int, or the name of an earlier parameter (of type rank) holding the count.
py::list parse_ints(const std::string& kernel, const char* text) {
    static const std::set<std::string> kTypes = {
        "dim", "positive", "signed", "rank", "flag", "elem", "bits", "mode",
        "dtype", "act", "unary", "binary", "reduce"};
    py::list out;
    std::set<std::string> ranks;
    for (const std::string& item : split_list(text)) {
        const auto bad = [&]() {
            return std::logic_error("kernel '" + kernel + "': malformed int parameter '" + item +
                                    "' in '" + text + "'");
        };
        const size_t colon = item.find(':');
        if (colon == std::string::npos) throw bad();
        std::string name = trim(item.substr(0, colon));
        const std::string type = trim(item.substr(colon + 1));
        if (kTypes.count(type) == 0) throw bad();
        py::object count = py::none();
        const size_t open = name.find('[');
        if (open != std::string::npos) {
            if (name.back() != ']') throw bad();
            const std::string n = trim(name.substr(open + 1, name.size() - open - 2));
            name = trim(name.substr(0, open));
            if (!n.empty() && std::all_of(n.begin(), n.end(), [](char c) {
                    return std::isdigit(static_cast<unsigned char>(c)) != 0;
                })) {
                count = py::int_(std::stoll(n));
            } else if (ranks.count(n) != 0) {
                count = py::str(n);
            } else {
                throw bad();
            }
        }
        if (!is_identifier(name)) throw bad();
        if (type == "rank") ranks.insert(name);
        py::dict param;
        param["name"] = name;
        param["type"] = type;
        param["count"] = count;
        out.append(param);
    }
    return out;
}

py::list kernel_table() {
    py::list out;
    for (const std::string& name : rt::kernel_names()) {
        const rt::KernelSignature sig = rt::kernel_signature(name);
        py::dict entry;
        entry["name"] = name;
        entry["operands"] = parse_slots(name, "operand", sig.operands, false);
        entry["ints"] = parse_ints(name, sig.ints);
        entry["floats"] = parse_slots(name, "float", sig.floats, true);
        out.append(entry);
    }
    return out;
}

}  // namespace

void register_runtime(py::module_& m) {
    using rt::Plan;
    py::register_local_exception_translator(translate_runtime_errors);
    py::class_<Plan>(m, "NativePlan",
                     "A compiled execution plan: kernel steps over raw buffers (see "
                     "graphopt/native/). Built by graphopt.native; not meant to be used directly.")
        .def(py::init<int>(), py::arg("threads"), "threads: 1 to 1024.")
        .def(
            "add_constant",
            [](Plan& plan, uintptr_t ptr, int64_t nbytes) {
                return plan.add_constant(reinterpret_cast<char*>(ptr), nbytes);
            },
            py::arg("ptr"), py::arg("nbytes"),
            "Registers a constant (address, byte size; kept alive by the caller); returns its "
            "index.")
        .def(
            "set_arena",
            [](Plan& plan, uintptr_t ptr, int64_t nbytes) {
                plan.set_arena(reinterpret_cast<char*>(ptr), nbytes);
            },
            py::arg("ptr"), py::arg("nbytes"),
            "Sets the activation arena (address, byte size; kept alive by the caller).")
        .def(
            "add_step",
            [](Plan& plan, const std::string& kernel, const std::string& name,
               const std::vector<OperandTuple>& operands, std::vector<int64_t> ints,
               std::vector<double> floats) {
                rt::KernelArgs args;
                args.name = name;
                for (const OperandTuple& o : operands) {
                    rt::Operand op;
                    if (o.has_value()) {
                        op.space = static_cast<rt::Space>(std::get<0>(*o));
                        op.index = std::get<1>(*o);
                        op.offset = std::get<2>(*o);
                    } else {
                        op.present = false;
                    }
                    args.operands.push_back(op);
                }
                args.ints = std::move(ints);
                args.floats = std::move(floats);
                plan.add_step(kernel, std::move(args));
            },
            py::arg("kernel"), py::arg("name"), py::arg("operands"), py::arg("ints"),
            py::arg("floats"),
            "Appends a kernel call. operands: (space, index, byte offset) or None; spaces: "
            "0 arena, 1 constant, 2 input, 3 output. The kernel checks its parameters and the "
            "bytes each operand spans (constants now, the rest when set_arena / run).")
        .def(
            "run",
            [](const Plan& plan, const std::vector<BufferTuple>& inputs,
               const std::vector<BufferTuple>& outputs) {
                const std::vector<rt::BufferRef> in = as_buffers(inputs);
                const std::vector<rt::BufferRef> out = as_buffers(outputs);
                py::gil_scoped_release release;
                plan.run(in, out);
            },
            py::arg("inputs"), py::arg("outputs"),
            "Runs every step (the GIL is released). inputs / outputs: (address, byte size) "
            "per buffer, each at least what the steps touch.")
        .def(
            "run_profiled",
            [](const Plan& plan, const std::vector<BufferTuple>& inputs,
               const std::vector<BufferTuple>& outputs) {
                const std::vector<rt::BufferRef> in = as_buffers(inputs);
                const std::vector<rt::BufferRef> out = as_buffers(outputs);
                py::gil_scoped_release release;
                return plan.run_profiled(in, out);
            },
            py::arg("inputs"), py::arg("outputs"), "Runs every step; returns seconds per step.")
        .def_property_readonly("num_steps", &Plan::num_steps)
        .def_property_readonly("threads", &Plan::threads)
        .def_property("spin_us", &Plan::spin_us, &Plan::set_spin_us,
                      "Microseconds the pool's idle helpers spin after each parallel loop of "
                      "this plan before sleeping; -1 (default): GRAPHOPT_NATIVE_SPIN_US or 50.")
        .def_property_readonly("arena_bytes_needed", &Plan::arena_bytes_needed)
        .def_property_readonly("input_bytes_needed", &Plan::input_bytes_needed)
        .def_property_readonly("output_bytes_needed", &Plan::output_bytes_needed)
        .def("step_kernel", &Plan::step_kernel, py::arg("i"))
        .def("step_name", &Plan::step_name, py::arg("i"));

    m.def("native_kernels", &rt::kernel_names, "Names of the native runtime's kernels.");
    m.def("_native_pool_probe", &rt::pool_probe, py::arg("chunks"), py::arg("threads"),
          py::arg("busy_ns") = 0, py::arg("fail_chunk") = -1,
          py::call_guard<py::gil_scoped_release>(),
          "Test hook of the runtime's thread pool: runs `chunks` chunks on `threads` threads "
          "(each busy for busy_ns) and returns the thread that ran each chunk (0: the caller); "
          "chunk `fail_chunk` raises.");
    m.def("native_kernel_table", &kernel_table,
          "The kernels' calling conventions (csrc/rt_plan.h KernelSignature), one dict per kernel: "
          "name; operands: [{name, optional}] in slot order; ints: [{name, type, count}] in "
          "reading order (count: None for one value, an int, or the name of an earlier rank "
          "parameter); floats: [{name, optional}].");
    m.def(
        "native_code_tables",
        []() {
            py::dict out;
            for (const auto& table : rt::code_tables()) out[py::str(table.first)] = table.second;
            return out;
        },
        "Integer codes of kernel parameters by table (act, dtype, unary, binary, reduce): the "
        "names in code order.");
    m.def(
        "native_activations",
        []() {
            py::list out;
            for (const ActivationInfo& a : kActivationInfo) {
                out.append(py::make_tuple(a.name, static_cast<int>(a.act), a.params, a.epilogue));
            }
            return out;
        },
        "The epilogue activations (csrc/activation.h): (name, code, float params, implemented "
        "by the vectorised SGEMM epilogue) in code order.");
    m.def(
        "native_vec_isa", []() { return std::string(rt::vec_ops().name); },
        "Instruction set of the runtime's vector loops (avx2_fma or portable).");
    m.def(
        "native_wo_isa",
        []() {
            return py::make_tuple(std::string(rt::wo_gemv_isa()),
                                  std::string(rt::wo_int8_isa()));
        },
        "Paths of the weight-only linear: (float-activation GEMV: avx512 / avx2 / portable, "
        "int8-activation kernel: avx512vnni / portable); GRAPHOPT_DISABLE_AVX512=1, "
        "GRAPHOPT_DISABLE_VNNI=1 and GRAPHOPT_DISABLE_AVX2=1 step down.");
    m.def(
        "native_qgemm_isa", []() { return std::string(rt::qgemm_kernels().name); },
        "Kernel set of the runtime's int8 GEMM (avxvnni_quad_u8, avx2_pair_i16 or "
        "portable_pair_i16; GRAPHOPT_DISABLE_VNNI=1 / GRAPHOPT_DISABLE_AVX2=1 step down).");
}

}  // namespace graphopt
