// Python bindings of the native runtime (graphopt._C.NativePlan), registered into the _C
// module by module.cpp. Only integers (pointers, offsets, parameters) cross the boundary: the
// Python side owns every buffer (arena, constants, per-call inputs and outputs) and keeps them
// alive; the plan stores raw pointers.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "rt_plan.h"
#include "rt_qgemm.h"
#include "rt_vec.h"

namespace py = pybind11;

namespace graphopt {

namespace {

using OperandTuple = std::optional<std::tuple<int, int, int64_t>>;  // (space, index, offset)

std::vector<char*> as_pointers(const std::vector<uintptr_t>& values) {
    std::vector<char*> out;
    out.reserve(values.size());
    for (uintptr_t v : values) out.push_back(reinterpret_cast<char*>(v));
    return out;
}

}  // namespace

void register_runtime(py::module_& m) {
    using rt::Plan;
    py::class_<Plan>(m, "NativePlan",
                     "A compiled execution plan: kernel steps over raw buffers (see "
                     "graphopt/native/). Built by graphopt.native; not meant to be used directly.")
        .def(py::init<int>(), py::arg("threads"))
        .def(
            "add_constant",
            [](Plan& plan, uintptr_t ptr) {
                return plan.add_constant(reinterpret_cast<char*>(ptr));
            },
            py::arg("ptr"), "Registers a constant's data pointer; returns its index.")
        .def(
            "set_arena",
            [](Plan& plan, uintptr_t ptr) { plan.set_arena(reinterpret_cast<char*>(ptr)); },
            py::arg("ptr"))
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
            "0 arena, 1 constant, 2 input, 3 output.")
        .def(
            "run",
            [](const Plan& plan, const std::vector<uintptr_t>& inputs,
               const std::vector<uintptr_t>& outputs) {
                const std::vector<char*> in = as_pointers(inputs);
                const std::vector<char*> out = as_pointers(outputs);
                py::gil_scoped_release release;
                plan.run(in.data(), out.data());
            },
            py::arg("inputs"), py::arg("outputs"), "Runs every step (the GIL is released).")
        .def(
            "run_profiled",
            [](const Plan& plan, const std::vector<uintptr_t>& inputs,
               const std::vector<uintptr_t>& outputs) {
                const std::vector<char*> in = as_pointers(inputs);
                const std::vector<char*> out = as_pointers(outputs);
                py::gil_scoped_release release;
                return plan.run_profiled(in.data(), out.data());
            },
            py::arg("inputs"), py::arg("outputs"), "Runs every step; returns seconds per step.")
        .def_property_readonly("num_steps", &Plan::num_steps)
        .def_property_readonly("threads", &Plan::threads)
        .def("step_kernel", &Plan::step_kernel)
        .def("step_name", &Plan::step_name);

    m.def("native_kernels", &rt::kernel_names, "Names of the native runtime's kernels.");
    m.def(
        "native_vec_isa", []() { return std::string(rt::vec_ops().name); },
        "Instruction set of the runtime's vector loops (avx2_fma or portable).");
    m.def(
        "native_qgemm_isa", []() { return std::string(rt::qgemm_kernels().name); },
        "Kernel set of the runtime's int8 GEMM (avxvnni_quad_u8, avx2_pair_i16 or "
        "portable_pair_i16; GRAPHOPT_DISABLE_VNNI=1 / GRAPHOPT_DISABLE_AVX2=1 step down).");
}

}  // namespace graphopt
