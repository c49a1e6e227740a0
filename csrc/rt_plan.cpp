// Plan construction and execution; the kernel registry; operand span checks.
#include "rt_plan.h"

#include "activation.h"
#include "rt_dtype.h"
#include "rt_threadpool.h"

#include <algorithm>
#include <chrono>
#include <iterator>
#include <map>

namespace graphopt {
namespace rt {

namespace {

struct RegisteredKernel {
    KernelFactory factory = nullptr;
    KernelSignature signature;
};

std::map<std::string, RegisteredKernel>& registry() {
    static std::map<std::string, RegisteredKernel> kernels;
    return kernels;
}

std::map<std::string, std::vector<std::string>>& code_registry() {
    static std::map<std::string, std::vector<std::string>> tables;
    return tables;
}

std::vector<std::string> dtype_names() {
    return std::vector<std::string>(std::begin(kDTypeNames), std::end(kDTypeNames));
}

std::vector<std::string> activation_code_names() {
    std::vector<std::string> names;
    for (const ActivationInfo& a : kActivationInfo) names.push_back(a.name);
    return names;
}

GRAPHOPT_RT_CODE_TABLE("dtype", dtype_names());
GRAPHOPT_RT_CODE_TABLE("act", activation_code_names());

const char* space_name(Space s) {
    switch (s) {
        case Space::kArena: return "arena";
        case Space::kConst: return "constant";
        case Space::kInput: return "input";
        case Space::kOutput: return "output";
    }
    return "?";
}

}  // namespace

void register_kernel(const char* name, KernelFactory factory, KernelSignature signature) {
    registry()[name] = RegisteredKernel{factory, signature};
}

KernelFactory find_kernel(const std::string& name) {
    auto it = registry().find(name);
    return it == registry().end() ? nullptr : it->second.factory;
}

KernelSignature kernel_signature(const std::string& name) {
    auto it = registry().find(name);
    if (it == registry().end()) throw PlanError("unknown native kernel '" + name + "'");
    return it->second.signature;
}

void register_code_table(const char* table, std::vector<std::string> names) {
    code_registry()[table] = std::move(names);
}

std::vector<std::pair<std::string, std::vector<std::string>>> code_tables() {
    return {code_registry().begin(), code_registry().end()};
}

std::vector<std::string> kernel_names() {
    std::vector<std::string> names;
    for (const auto& entry : registry()) names.push_back(entry.first);
    return names;
}

// ------------------------------------------------------------------------- checked arithmetic
int64_t checked_mul(int64_t a, int64_t b, const std::string& what) {
    int64_t r = 0;
    if (__builtin_mul_overflow(a, b, &r)) throw PlanError(what + ": size overflows int64");
    return r;
}

int64_t checked_add(int64_t a, int64_t b, const std::string& what) {
    int64_t r = 0;
    if (__builtin_add_overflow(a, b, &r)) throw PlanError(what + ": size overflows int64");
    return r;
}

int64_t checked_numel(const std::vector<int64_t>& dims, const std::string& what) {
    int64_t n = 1;
    for (int64_t d : dims) {
        if (d < 0) throw PlanError(what + ": negative dim " + std::to_string(d));
        n = checked_mul(n, d, what);
    }
    return n;
}

// ------------------------------------------------------------------------------- KernelArgs
const Operand& KernelArgs::operand(size_t i) const {
    if (i >= operands.size()) {
        throw PlanError("kernel for " + name + ": operand " + std::to_string(i) + " missing");
    }
    return operands[i];
}

void KernelArgs::fail(const std::string& kernel, const std::string& what) const {
    throw PlanError(kernel + " " + name + ": " + what);
}

// ----------------------------------------------------------------------------------- Kernel
void Kernel::declare(const KernelArgs& args, size_t i, int64_t lo, int64_t hi, int64_t align) {
    if (spans.size() <= i) spans.resize(i + 1);
    if (align < 1 || (align & (align - 1)) != 0 || align > 64) align = 1;
    spans[i] = Span{lo, hi, align, true};
    const Operand& o = args.operands[i];
    const std::string what = "step " + args.name + ", operand " + std::to_string(i);
    if (o.offset % align != 0) {
        throw PlanError(what + ": byte offset " + std::to_string(o.offset) +
                        " is not a multiple of its element size " + std::to_string(align));
    }
    if (o.space != Space::kConst || hi <= lo) return;
    // Constants are known now: check before the factory reads them (constant()).
    const int64_t size = (*args.const_sizes)[static_cast<size_t>(o.index)];
    const char* base = (*args.consts)[static_cast<size_t>(o.index)];
    if (reinterpret_cast<uintptr_t>(base) % static_cast<uintptr_t>(align) != 0) {
        throw PlanError(what + ": constant " + std::to_string(o.index) +
                        " is not aligned to its element size " + std::to_string(align));
    }
    const int64_t first = checked_add(o.offset, lo, what);
    const int64_t end = checked_add(o.offset, hi, what);
    if (first < 0 || end > size) {
        throw PlanError(what + ": reads bytes [" + std::to_string(first) + ", " +
                        std::to_string(end) + ") of constant " + std::to_string(o.index) +
                        " which holds " + std::to_string(size) + " bytes");
    }
}

void Kernel::need(const KernelArgs& args, size_t i, int64_t bytes, int64_t align) {
    if (!args.has(i)) {
        throw PlanError("step " + args.name + ": operand " + std::to_string(i) +
                        " is required by this kernel");
    }
    if (bytes < 0) throw PlanError("step " + args.name + ": negative operand size");
    declare(args, i, 0, bytes, align);
}

bool Kernel::need_opt(const KernelArgs& args, size_t i, int64_t bytes, int64_t align) {
    if (!args.has(i)) return false;
    need(args, i, bytes, align);
    return true;
}

void Kernel::need_strided(const KernelArgs& args, size_t i, const std::vector<int64_t>& shape,
                          const std::vector<int64_t>& strides, int64_t elem) {
    if (!args.has(i)) {
        throw PlanError("step " + args.name + ": operand " + std::to_string(i) +
                        " is required by this kernel");
    }
    const std::string what = "step " + args.name + ", operand " + std::to_string(i);
    if (shape.size() != strides.size() || elem <= 0) throw PlanError(what + ": bad layout");
    int64_t lo = 0, hi = 0;  // element offsets reached, inclusive
    for (size_t d = 0; d < shape.size(); ++d) {
        if (shape[d] < 0) throw PlanError(what + ": negative dim");
        if (shape[d] == 0) {
            declare(args, i, 0, 0, elem);  // an empty tensor touches nothing
            return;
        }
        const int64_t reach = checked_mul(shape[d] - 1, strides[d], what);
        if (reach < 0) {
            lo = checked_add(lo, reach, what);
        } else {
            hi = checked_add(hi, reach, what);
        }
    }
    declare(args, i, checked_mul(lo, elem, what),
            checked_add(checked_mul(hi, elem, what), elem, what), elem);
}

const char* Kernel::constant(const KernelArgs& args, size_t i) const {
    if (!args.is_const(i)) {
        throw PlanError("kernel for " + args.name + ": operand " + std::to_string(i) +
                        " must be a plan constant");
    }
    if (i >= spans.size() || !spans[i].declared) {
        throw PlanError("kernel for " + args.name + ": constant operand " + std::to_string(i) +
                        " read before its span was declared");
    }
    const Operand& o = args.operands[i];
    return (*args.consts)[static_cast<size_t>(o.index)] + o.offset;
}

// ------------------------------------------------------------------------------------- Plan
Plan::Plan(int threads, DeviceKind device) : threads_(threads), device_(device) {
    if (threads < 1 || threads > kMaxPlanThreads) {
        throw PlanError("NativePlan: threads must be in [1, " + std::to_string(kMaxPlanThreads) +
                        "], got " + std::to_string(threads));
    }
    if (device != DeviceKind::kCpu) throw PlanError("only CPU plans are implemented");
}

void Plan::set_spin_us(int64_t us) {
    if (us < -1 || us > kMaxSpinUs) {
        throw PlanError("NativePlan.spin_us must be in [-1, " + std::to_string(kMaxSpinUs) +
                        "] microseconds (-1: the runtime default), got " + std::to_string(us));
    }
    spin_us_ = us;
}

int Plan::add_constant(char* data, int64_t nbytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (nbytes < 0) throw PlanError("add_constant: negative size " + std::to_string(nbytes));
    if (data == nullptr && nbytes > 0) throw PlanError("add_constant: null pointer");
    if (consts_.size() >= static_cast<size_t>(kMaxPlanBuffers)) {
        throw PlanError("add_constant: too many constants");
    }
    consts_.push_back(data);
    const_sizes_.push_back(nbytes);
    return static_cast<int>(consts_.size()) - 1;
}

void Plan::set_arena(char* arena, int64_t nbytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (nbytes < 0) throw PlanError("set_arena: negative size " + std::to_string(nbytes));
    if (arena == nullptr && nbytes > 0) throw PlanError("set_arena: null pointer");
    arena_ = arena;
    arena_size_ = nbytes;
}

void Plan::check_operands(const std::string& kernel, const KernelArgs& args) const {
    for (size_t i = 0; i < args.operands.size(); ++i) {
        const Operand& o = args.operands[i];
        if (!o.present) continue;
        const std::string what = kernel + " step " + args.name + ", operand " + std::to_string(i);
        const int32_t space = static_cast<int32_t>(o.space);
        if (space < 0 || space > 3) {
            throw PlanError(what + ": space " + std::to_string(space) +
                            " is not 0 (arena), 1 (constant), 2 (input) or 3 (output)");
        }
        if (o.index < 0 || o.index >= kMaxPlanBuffers) {
            throw PlanError(what + ": index " + std::to_string(o.index) + " out of range");
        }
        if (o.offset < 0) throw PlanError(what + ": negative byte offset");
        if (o.space == Space::kConst && static_cast<size_t>(o.index) >= consts_.size()) {
            throw PlanError(what + ": constant index " + std::to_string(o.index) +
                            " out of range (the plan has " + std::to_string(consts_.size()) +
                            " constants)");
        }
    }
}

void Plan::record_spans(const std::string& kernel, const std::string& name, const Kernel& step) {
    for (size_t i = 0; i < step.operands.size(); ++i) {
        const Operand& o = step.operands[i];
        if (!o.present) continue;
        const std::string what = kernel + " step " + name + ", operand " + std::to_string(i);
        if (i >= step.spans.size() || !step.spans[i].declared) {
            throw PlanError(what + ": this kernel takes no such operand");
        }
        const Span& s = step.spans[i];
        if (o.space == Space::kInput || o.space == Space::kOutput) {
            auto& align = o.space == Space::kInput ? input_align_ : output_align_;
            if (align.size() <= static_cast<size_t>(o.index)) align.resize(o.index + 1, 1);
            align[static_cast<size_t>(o.index)] =
                std::max(align[static_cast<size_t>(o.index)], s.align);
        }
        if (o.space == Space::kArena) arena_align_ = std::max(arena_align_, s.align);
        if (s.hi <= s.lo) continue;
        const int64_t first = checked_add(o.offset, s.lo, what);
        const int64_t end = checked_add(o.offset, s.hi, what);
        if (first < 0) throw PlanError(what + ": reaches before its buffer");
        switch (o.space) {
            case Space::kConst:
                if (end > const_sizes_[static_cast<size_t>(o.index)]) {
                    throw PlanError(what + ": needs " + std::to_string(end) + " bytes of " +
                                    space_name(o.space) + " " + std::to_string(o.index) +
                                    " which holds " +
                                    std::to_string(const_sizes_[static_cast<size_t>(o.index)]));
                }
                break;
            case Space::kArena:
                arena_need_ = std::max(arena_need_, end);
                break;
            case Space::kInput:
            case Space::kOutput: {
                auto& need = o.space == Space::kInput ? input_need_ : output_need_;
                if (need.size() <= static_cast<size_t>(o.index)) need.resize(o.index + 1, 0);
                need[static_cast<size_t>(o.index)] =
                    std::max(need[static_cast<size_t>(o.index)], end);
                break;
            }
        }
    }
}

void Plan::add_step(const std::string& kernel, KernelArgs args) {
    std::lock_guard<std::mutex> lock(mutex_);
    KernelFactory factory = find_kernel(kernel);
    if (factory == nullptr) throw PlanError("unknown native kernel '" + kernel + "'");
    check_operands(kernel, args);
    args.consts = &consts_;
    args.const_sizes = &const_sizes_;
    std::unique_ptr<Kernel> step = factory(args);
    step->operands = args.operands;
    // Record into copies: a failing step must leave the plan as it was.
    const int64_t arena_before = arena_need_, arena_align_before = arena_align_;
    const auto in_before = input_need_, out_before = output_need_;
    const auto in_align_before = input_align_, out_align_before = output_align_;
    try {
        record_spans(kernel, args.name, *step);
    } catch (...) {
        arena_need_ = arena_before;
        arena_align_ = arena_align_before;
        input_need_ = in_before;
        output_need_ = out_before;
        input_align_ = in_align_before;
        output_align_ = out_align_before;
        throw;
    }
    steps_.push_back(std::move(step));
    kernels_.push_back(kernel);
    names_.push_back(args.name);
}

size_t Plan::num_steps() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return steps_.size();
}

void Plan::check_index(int64_t i) const {
    if (i < 0 || static_cast<size_t>(i) >= steps_.size()) {
        throw std::out_of_range("step index " + std::to_string(i) + " out of range (the plan has " +
                                std::to_string(steps_.size()) + " steps)");
    }
}

std::string Plan::step_kernel(int64_t i) const {
    std::lock_guard<std::mutex> lock(mutex_);
    check_index(i);
    return kernels_[static_cast<size_t>(i)];
}

std::string Plan::step_name(int64_t i) const {
    std::lock_guard<std::mutex> lock(mutex_);
    check_index(i);
    return names_[static_cast<size_t>(i)];
}

int64_t Plan::arena_bytes_needed() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return arena_need_;
}

std::vector<int64_t> Plan::input_bytes_needed() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return input_need_;
}

std::vector<int64_t> Plan::output_bytes_needed() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return output_need_;
}

// Called with mutex_ held.
ExecContext Plan::checked_context(const std::vector<BufferRef>& inputs,
                                  const std::vector<BufferRef>& outputs,
                                  std::vector<char*>* in_ptrs,
                                  std::vector<char*>* out_ptrs) const {
    if (arena_need_ > 0 && (arena_ == nullptr || arena_size_ < arena_need_)) {
        throw PlanError("run: the steps need an arena of " + std::to_string(arena_need_) +
                        " bytes, the plan has " + std::to_string(arena_size_) +
                        " (call set_arena first)");
    }
    if (reinterpret_cast<uintptr_t>(arena_) % static_cast<uintptr_t>(arena_align_) != 0) {
        throw PlanError("run: the arena is not aligned to " + std::to_string(arena_align_) +
                        " bytes");
    }
    auto check = [](const char* kind, const std::vector<BufferRef>& given,
                    const std::vector<int64_t>& need, const std::vector<int64_t>& align,
                    std::vector<char*>* ptrs) {
        if (given.size() < need.size()) {
            throw PlanError(std::string("run: the plan reads ") + std::to_string(need.size()) +
                            " " + kind + " buffer(s), got " + std::to_string(given.size()));
        }
        ptrs->clear();
        for (size_t i = 0; i < given.size(); ++i) {
            const int64_t want = i < need.size() ? need[i] : 0;
            if (want > 0 && (given[i].data == nullptr || given[i].nbytes < want)) {
                throw PlanError(std::string("run: ") + kind + " " + std::to_string(i) +
                                " must hold " + std::to_string(want) + " bytes, got " +
                                std::to_string(given[i].nbytes) +
                                (given[i].data == nullptr ? " at a null address" : ""));
            }
            const int64_t a = i < align.size() ? align[i] : 1;
            if (reinterpret_cast<uintptr_t>(given[i].data) % static_cast<uintptr_t>(a) != 0) {
                throw PlanError(std::string("run: ") + kind + " " + std::to_string(i) +
                                " is not aligned to its element size " + std::to_string(a));
            }
            ptrs->push_back(given[i].data);
        }
    };
    check("input", inputs, input_need_, input_align_, in_ptrs);
    check("output", outputs, output_need_, output_align_, out_ptrs);
    ExecContext ctx;
    ctx.arena = arena_;
    ctx.consts = consts_.data();
    ctx.inputs = in_ptrs->data();
    ctx.outputs = out_ptrs->data();
    ctx.threads = threads_;
    return ctx;
}

void Plan::run(const std::vector<BufferRef>& inputs, const std::vector<BufferRef>& outputs) const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<char*> in, out;
    const ExecContext ctx = checked_context(inputs, outputs, &in, &out);
    const SpinScope spin(spin_us_);
    for (const auto& step : steps_) step->run(ctx);
}

std::vector<double> Plan::run_profiled(const std::vector<BufferRef>& inputs,
                                       const std::vector<BufferRef>& outputs) const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<char*> in, out;
    const ExecContext ctx = checked_context(inputs, outputs, &in, &out);
    const SpinScope spin(spin_us_);
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
