// The native runtime's execution plan: a list of kernel calls over raw buffers.
//
// Python (graphopt/native/) turns a graph into a plan once: it decides every buffer's place
// (a byte offset in one static arena, a constant, an input or an output), then adds one step per
// kernel call with its operands and its integer / float parameters. A run only resolves operand
// pointers against this call's input/output pointers and calls each step in order: no
// allocation, no shape logic, no Python.
//
// A kernel is a class registered by name (GRAPHOPT_RT_KERNEL). Its factory parses the
// parameters once, at plan build time, and may prepare per-plan data there (pre-packed GEMM
// weights); `run` then does only the arithmetic.
//
// Device: every kernel here runs on the CPU on host pointers. The plan records its device kind so
// that a CUDA plan (device pointers, a stream in ExecContext, kernels registered for kCuda) can
// sit behind the same Python interface; none is implemented.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace graphopt {
namespace rt {

enum class DeviceKind : int32_t { kCpu = 0, kCuda = 1 };

// Where an operand lives. Offsets are in bytes.
enum class Space : int32_t {
    kArena = 0,   // the plan's static activation arena
    kConst = 1,   // index-th plan constant (weights, folded tensors)
    kInput = 2,   // index-th graph input of this call
    kOutput = 3,  // index-th output buffer of this call
};

struct Operand {
    Space space = Space::kArena;
    int32_t index = 0;
    int64_t offset = 0;
    bool present = true;  // false for an absent optional operand (no bias, no mask...)
};

// Per-call pointers: what a step needs to turn Operands into addresses.
struct ExecContext {
    char* arena = nullptr;
    char* const* consts = nullptr;
    char* const* inputs = nullptr;
    char* const* outputs = nullptr;
    int threads = 1;

    char* ptr(const Operand& o) const {
        if (!o.present) return nullptr;
        switch (o.space) {
            case Space::kArena:
                return arena + o.offset;
            case Space::kConst:
                return consts[o.index] + o.offset;
            case Space::kInput:
                return inputs[o.index] + o.offset;
            case Space::kOutput:
                return outputs[o.index] + o.offset;
        }
        return nullptr;
    }
    template <typename T>
    T* get(const Operand& o) const {
        return reinterpret_cast<T*>(ptr(o));
    }
};

// What the factory of a kernel receives. `consts` are the plan's constant pointers, already
// valid at build time, so kernels may pre-process constant operands (weights).
struct KernelArgs {
    std::string name;  // the node this step comes from, for error messages
    std::vector<Operand> operands;
    std::vector<int64_t> ints;
    std::vector<double> floats;
    const std::vector<char*>* consts = nullptr;

    const Operand& operand(size_t i) const;
    // Pointer to a constant operand at build time (throws if the operand is not a constant).
    const char* const_ptr(size_t i) const;
    bool is_const(size_t i) const {
        return i < operands.size() && operands[i].present && operands[i].space == Space::kConst;
    }
};

class Kernel {
   public:
    virtual ~Kernel() = default;
    virtual void run(const ExecContext& ctx) const = 0;
    std::vector<Operand> operands;
};

using KernelFactory = std::unique_ptr<Kernel> (*)(const KernelArgs&);

// Registry of kernels by name; populated by static registrars (GRAPHOPT_RT_KERNEL).
void register_kernel(const char* name, KernelFactory factory);
KernelFactory find_kernel(const std::string& name);
std::vector<std::string> kernel_names();

struct KernelRegistrar {
    KernelRegistrar(const char* name, KernelFactory factory) { register_kernel(name, factory); }
};

// The factory of a kernel class constructible from its KernelArgs.
template <typename K>
std::unique_ptr<Kernel> make_kernel(const KernelArgs& args) {
    return std::make_unique<K>(args);
}

#define GRAPHOPT_RT_CONCAT2(a, b) a##b
#define GRAPHOPT_RT_CONCAT(a, b) GRAPHOPT_RT_CONCAT2(a, b)
// GRAPHOPT_RT_KERNEL("name", KernelClass) registers KernelClass (constructed from KernelArgs).
#define GRAPHOPT_RT_KERNEL(name, kernel_class)                                             \
    static ::graphopt::rt::KernelRegistrar GRAPHOPT_RT_CONCAT(graphopt_rt_registrar_,   \
                                                              __LINE__)(                \
        name, &::graphopt::rt::make_kernel<kernel_class>)

// Raised by factories for parameters they cannot handle (becomes ValueError in Python).
class PlanError : public std::invalid_argument {
   public:
    using std::invalid_argument::invalid_argument;
};

class Plan {
   public:
    explicit Plan(int threads, DeviceKind device = DeviceKind::kCpu);

    int add_constant(char* data);  // returns its index
    void set_arena(char* arena) { arena_ = arena; }
    void add_step(const std::string& kernel, KernelArgs args);

    // Runs every step. inputs/outputs are this call's buffer pointers, indexed like the
    // plan's kInput / kOutput operands.
    void run(char* const* inputs, char* const* outputs) const;
    // Same, returning each step's wall time in seconds (for profiling).
    std::vector<double> run_profiled(char* const* inputs, char* const* outputs) const;

    size_t num_steps() const { return steps_.size(); }
    const std::string& step_kernel(size_t i) const { return kernels_[i]; }
    const std::string& step_name(size_t i) const { return names_[i]; }
    int threads() const { return threads_; }
    DeviceKind device() const { return device_; }

   private:
    ExecContext context(char* const* inputs, char* const* outputs) const;

    int threads_;
    DeviceKind device_;
    char* arena_ = nullptr;
    std::vector<char*> consts_;
    std::vector<std::unique_ptr<Kernel>> steps_;
    std::vector<std::string> kernels_;
    std::vector<std::string> names_;
};

// Reads a kernel's integer parameters in order, with a clear error when they run out.
class IntReader {
   public:
    IntReader(const KernelArgs& args) : args_(args) {}
    int64_t next() {
        if (pos_ >= args_.ints.size()) {
            throw PlanError("kernel for " + args_.name + ": too few integer parameters");
        }
        return args_.ints[pos_++];
    }
    std::vector<int64_t> take(int64_t n) {
        std::vector<int64_t> out;
        out.reserve(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) out.push_back(next());
        return out;
    }
    double real(size_t i) const {
        if (i >= args_.floats.size()) {
            throw PlanError("kernel for " + args_.name + ": too few float parameters");
        }
        return args_.floats[i];
    }

   private:
    const KernelArgs& args_;
    size_t pos_ = 0;
};

}  // namespace rt
}  // namespace graphopt
