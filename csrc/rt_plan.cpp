// Plan construction and execution; the kernel registry.
#include "rt_plan.h"

#include <algorithm>
#include <chrono>
#include <map>

namespace graphopt {
namespace rt {

namespace {

std::map<std::string, KernelFactory>& registry() {
    static std::map<std::string, KernelFactory> kernels;
    return kernels;
}

}  // namespace

void register_kernel(const char* name, KernelFactory factory) { registry()[name] = factory; }

KernelFactory find_kernel(const std::string& name) {
    auto it = registry().find(name);
    return it == registry().end() ? nullptr : it->second;
}

std::vector<std::string> kernel_names() {
    std::vector<std::string> names;
    for (const auto& entry : registry()) names.push_back(entry.first);
    return names;
}

const Operand& KernelArgs::operand(size_t i) const {
    if (i >= operands.size()) {
        throw PlanError("kernel for " + name + ": operand " + std::to_string(i) + " missing");
    }
    return operands[i];
}

const char* KernelArgs::const_ptr(size_t i) const {
    const Operand& o = operand(i);
    if (!o.present || o.space != Space::kConst || consts == nullptr ||
        o.index < 0 || static_cast<size_t>(o.index) >= consts->size()) {
        throw PlanError("kernel for " + name + ": operand " + std::to_string(i) +
                        " must be a plan constant");
    }
    return (*consts)[static_cast<size_t>(o.index)] + o.offset;
}

Plan::Plan(int threads, DeviceKind device) : threads_(std::max(1, threads)), device_(device) {
    if (device != DeviceKind::kCpu) throw PlanError("only CPU plans are implemented");
}

int Plan::add_constant(char* data) {
    consts_.push_back(data);
    return static_cast<int>(consts_.size()) - 1;
}

void Plan::add_step(const std::string& kernel, KernelArgs args) {
    KernelFactory factory = find_kernel(kernel);
    if (factory == nullptr) throw PlanError("unknown native kernel '" + kernel + "'");
    for (const Operand& o : args.operands) {
        if (o.present && o.space == Space::kConst &&
            (o.index < 0 || static_cast<size_t>(o.index) >= consts_.size())) {
            throw PlanError("step " + args.name + ": constant index out of range");
        }
    }
    args.consts = &consts_;
    std::unique_ptr<Kernel> step = factory(args);
    step->operands = args.operands;
    steps_.push_back(std::move(step));
    kernels_.push_back(kernel);
    names_.push_back(args.name);
}

ExecContext Plan::context(char* const* inputs, char* const* outputs) const {
    ExecContext ctx;
    ctx.arena = arena_;
    ctx.consts = consts_.data();
    ctx.inputs = inputs;
    ctx.outputs = outputs;
    ctx.threads = threads_;
    return ctx;
}

void Plan::run(char* const* inputs, char* const* outputs) const {
    const ExecContext ctx = context(inputs, outputs);
    for (const auto& step : steps_) step->run(ctx);
}

std::vector<double> Plan::run_profiled(char* const* inputs, char* const* outputs) const {
    const ExecContext ctx = context(inputs, outputs);
    std::vector<double> seconds;
    seconds.reserve(steps_.size());
    for (const auto& step : steps_) {
        const auto start = std::chrono::steady_clock::now();
        step->run(ctx);
        const auto stop = std::chrono::steady_clock::now();
        seconds.push_back(std::chrono::duration<double>(stop - start).count());
    }
    return seconds;
}

}  // namespace rt
}  // namespace graphopt
