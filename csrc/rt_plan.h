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
// Safety. Plans are built from parameters that come from Python and, through saved artifacts,
// from files: nothing here trusts them. Every buffer handed over carries its byte size
// (add_constant, set_arena, run); every kernel factory checks its integer parameters (sizes
// >= 0, strides and groups > 0, codes in range; products with checked arithmetic) and
// declares, per operand, the byte span it will touch (Kernel::need*). add_step checks the spans
// of constants at once and records what the arena, the inputs and the outputs must hold;
// set_arena and run check those. A plan that passed these checks cannot read or write outside
// the buffers it was given (given that each (pointer, size) pair is true). Plans lock
// themselves: concurrent runs of one plan (they share its arena) are serialised.
//
// Device: every kernel here runs on the CPU on host pointers. The plan records its device kind so
// that a CUDA plan (device pointers, a stream in ExecContext, kernels registered for kCuda) can
// sit behind the same Python interface; none is implemented.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace graphopt {
namespace rt {

enum class DeviceKind : int32_t { kCpu = 0, kCuda = 1 };

// Raised by factories for parameters they cannot handle (becomes graphopt's NativeError, a
// ValueError, in Python: see rt_bindings.cpp).
class PlanError : public std::invalid_argument {
   public:
    using std::invalid_argument::invalid_argument;
};

// Most threads a plan may use (the Python side enforces a tighter, configurable budget).
constexpr int kMaxPlanThreads = 1024;
// Most inputs / outputs a plan may index (a bound for bookkeeping vectors).
constexpr int32_t kMaxPlanBuffers = 1 << 16;

// Checked int64 arithmetic for sizes computed from kernel parameters: an overflow is a
// PlanError naming `what`, never undefined behaviour.
int64_t checked_mul(int64_t a, int64_t b, const std::string& what);
int64_t checked_add(int64_t a, int64_t b, const std::string& what);
// Product of dims (each >= 0), checked.
int64_t checked_numel(const std::vector<int64_t>& dims, const std::string& what);

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
    const std::vector<int64_t>* const_sizes = nullptr;  // bytes of each constant

    const Operand& operand(size_t i) const;
    bool has(size_t i) const { return i < operands.size() && operands[i].present; }
    bool is_const(size_t i) const {
        return has(i) && operands[i].space == Space::kConst;
    }
    [[noreturn]] void fail(const std::string& kernel, const std::string& what) const;
};

// Bytes [lo, hi) relative to an operand's pointer that a kernel may touch, and the alignment
// (the element size) its address must have.
struct Span {
    int64_t lo = 0;
    int64_t hi = 0;
    int64_t align = 1;
    bool declared = false;
};

class Kernel {
   public:
    virtual ~Kernel() = default;
    virtual void run(const ExecContext& ctx) const = 0;
    std::vector<Operand> operands;
    std::vector<Span> spans;  // per operand, declared by the factory (need*), checked by Plan

   protected:
    // Operand i must be present and spans [0, bytes), at an address aligned to `align` (the
    // size of the elements the kernel reads through it).
    void need(const KernelArgs& args, size_t i, int64_t bytes, int64_t align);
    // Same if operand i is present (an optional operand); returns whether it is.
    bool need_opt(const KernelArgs& args, size_t i, int64_t bytes, int64_t align);
    // Operand i is a strided tensor: elements at sum_d idx[d] * strides[d] (elements of `elem`
    // bytes, idx[d] < shape[d], address aligned to elem); strides may be negative or zero.
    void need_strided(const KernelArgs& args, size_t i, const std::vector<int64_t>& shape,
                      const std::vector<int64_t>& strides, int64_t elem);
    // Build-time pointer to constant operand i; its span must already be declared (so the
    // bytes read here are known to lie inside the constant).
    const char* constant(const KernelArgs& args, size_t i) const;

   private:
    void declare(const KernelArgs& args, size_t i, int64_t lo, int64_t hi, int64_t align);
};

using KernelFactory = std::unique_ptr<Kernel> (*)(const KernelArgs&);

// A kernel's calling convention, the one source of truth for both sides of the boundary:
// exported by _C.native_kernel_table() and checked by graphopt/native (every step a lowering
// emits is validated against it when the plan is built; the factory's own checks stay the
// safety net for saved artifacts). Each field is a comma-separated list:
//   operands  "out, x, w, bias?"  in slot order; `?` marks an optional operand (may be None)
//   ints      "M:dim, N:dim, rank:rank, shape[rank]:dim, strides[3]:signed"  in reading order;
//             `name[n]` is a list of n values, n a literal or an earlier parameter's value;
//             types: dim (>= 0), positive (>= 1), signed, rank (a list length), flag (0 / 1),
//             elem (element bytes), bits (a raw 64-bit pattern), mode (a small code), and
//             the code tables of native_code_tables(): dtype, act, unary, binary, reduce
//   floats    "alpha, p0, p1?"  in order; `?` marks an optional trailing parameter
struct KernelSignature {
    const char* operands = "";
    const char* ints = "";
    const char* floats = "";
};

// Registry of kernels by name; populated by static registrars (GRAPHOPT_RT_KERNEL).
void register_kernel(const char* name, KernelFactory factory, KernelSignature signature);
KernelFactory find_kernel(const std::string& name);
std::vector<std::string> kernel_names();
// Signature of a registered kernel (throws PlanError for an unknown name).
KernelSignature kernel_signature(const std::string& name);

struct KernelRegistrar {
    KernelRegistrar(const char* name, KernelFactory factory, KernelSignature signature) {
        register_kernel(name, factory, signature);
    }
};

// Named integer codes of kernel parameters (op enums, dtypes, activations) by table name, each
// a list of names indexed by code; exported by _C.native_code_tables().
void register_code_table(const char* table, std::vector<std::string> names);
std::vector<std::pair<std::string, std::vector<std::string>>> code_tables();

struct CodeTableRegistrar {
    CodeTableRegistrar(const char* table, std::vector<std::string> names) {
        register_code_table(table, std::move(names));
    }
};

// The factory of a kernel class constructible from its KernelArgs.
template <typename K>
std::unique_ptr<Kernel> make_kernel(const KernelArgs& args) {
    return std::make_unique<K>(args);
}

#define GRAPHOPT_RT_CONCAT2(a, b) a##b
#define GRAPHOPT_RT_CONCAT(a, b) GRAPHOPT_RT_CONCAT2(a, b)
// GRAPHOPT_RT_KERNEL("name", KernelClass, "operands", "ints", "floats") registers KernelClass
// (constructed from KernelArgs) with its signature (see KernelSignature).
#define GRAPHOPT_RT_KERNEL(name, kernel_class, operands, ints, floats)                        \
    static ::graphopt::rt::KernelRegistrar GRAPHOPT_RT_CONCAT(graphopt_rt_registrar_,      \
                                                              __LINE__)(                   \
        name, &::graphopt::rt::make_kernel<kernel_class>,                                  \
        ::graphopt::rt::KernelSignature{operands, ints, floats})
// GRAPHOPT_RT_CODE_TABLE("table", {"name0", "name1", ...}) registers a code table.
#define GRAPHOPT_RT_CODE_TABLE(table, ...)                                                    \
    static ::graphopt::rt::CodeTableRegistrar GRAPHOPT_RT_CONCAT(graphopt_rt_codes_,       \
                                                                 __LINE__)(table, __VA_ARGS__)

// A buffer handed to a plan: its address and how many bytes it holds.
struct BufferRef {
    char* data = nullptr;
    int64_t nbytes = 0;
};

class Plan {
   public:
    explicit Plan(int threads, DeviceKind device = DeviceKind::kCpu);

    int add_constant(char* data, int64_t nbytes);  // returns its index
    void set_arena(char* arena, int64_t nbytes);
    void add_step(const std::string& kernel, KernelArgs args);

    // Runs every step. inputs/outputs are this call's buffers, indexed like the plan's
    // kInput / kOutput operands; each must hold what the steps touch (else PlanError).
    void run(const std::vector<BufferRef>& inputs, const std::vector<BufferRef>& outputs) const;
    // Same, returning each step's wall time in seconds (for profiling).
    std::vector<double> run_profiled(const std::vector<BufferRef>& inputs,
                                     const std::vector<BufferRef>& outputs) const;

    size_t num_steps() const;
    std::string step_kernel(int64_t i) const;
    std::string step_name(int64_t i) const;
    int threads() const { return threads_; }
    // How long the pool's idle helpers spin after each of this plan's parallel loops before they
    // sleep, in microseconds (-1: the runtime default, see rt_threadpool.h SpinScope).
    void set_spin_us(int64_t us);
    int64_t spin_us() const { return spin_us_; }
    DeviceKind device() const { return device_; }
    // Bytes the steps need from the arena / input i / output i (0 when unused).
    int64_t arena_bytes_needed() const;
    std::vector<int64_t> input_bytes_needed() const;
    std::vector<int64_t> output_bytes_needed() const;

   private:
    ExecContext checked_context(const std::vector<BufferRef>& inputs,
                                const std::vector<BufferRef>& outputs,
                                std::vector<char*>* in_ptrs, std::vector<char*>* out_ptrs) const;
    void check_index(int64_t i) const;
    void check_operands(const std::string& kernel, const KernelArgs& args) const;
    void record_spans(const std::string& kernel, const std::string& name, const Kernel& step);

    int threads_;
    int64_t spin_us_ = -1;
    DeviceKind device_;
    mutable std::mutex mutex_;  // add_step / set_arena vs run: runs share the arena
    char* arena_ = nullptr;
    int64_t arena_size_ = 0;
    int64_t arena_need_ = 0;
    int64_t arena_align_ = 1;
    std::vector<int64_t> input_need_, output_need_;
    std::vector<int64_t> input_align_, output_align_;  // alignment each address must have
    std::vector<char*> consts_;
    std::vector<int64_t> const_sizes_;
    std::vector<std::unique_ptr<Kernel>> steps_;
    std::vector<std::string> kernels_;
    std::vector<std::string> names_;
};

// Reads a kernel's integer parameters in order, with a clear error when they run out.
// The typed readers check ranges and name the parameter on error.
class IntReader {
   public:
    IntReader(const KernelArgs& args) : args_(args) {}
    int64_t next() {
        if (pos_ >= args_.ints.size()) {
            throw PlanError("kernel for " + args_.name + ": too few integer parameters");
        }
        return args_.ints[pos_++];
    }
    // A value in [lo, hi].
    int64_t in(int64_t lo, int64_t hi, const char* what) {
        const int64_t v = next();
        if (v < lo || v > hi) {
            throw PlanError("kernel for " + args_.name + ": " + what + " = " +
                            std::to_string(v) + " is outside [" + std::to_string(lo) + ", " +
                            std::to_string(hi) + "]");
        }
        return v;
    }
    int64_t dim(const char* what) { return in(0, kMaxDim, what); }        // a size, >= 0
    int64_t positive(const char* what) { return in(1, kMaxDim, what); }   // stride, group...
    int64_t signed_param(const char* what) { return in(-kMaxDim, kMaxDim, what); }
    // A rank: how many values follow per list (at most what is left).
    int64_t rank(const char* what) {
        const int64_t left = static_cast<int64_t>(args_.ints.size() - pos_);
        return in(0, std::min<int64_t>(left, 64), what);
    }
    std::vector<int64_t> take(int64_t n) {
        if (n < 0 || n > static_cast<int64_t>(args_.ints.size() - pos_)) {
            throw PlanError("kernel for " + args_.name + ": too few integer parameters");
        }
        std::vector<int64_t> out;
        out.reserve(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) out.push_back(next());
        return out;
    }
    std::vector<int64_t> dims(int64_t n, const char* what) {
        std::vector<int64_t> out = take(n);
        for (int64_t d : out) {
            if (d < 0 || d > kMaxDim) {
                throw PlanError("kernel for " + args_.name + ": " + what + " has dim " +
                                std::to_string(d));
            }
        }
        return out;
    }
    std::vector<int64_t> strides(int64_t n, const char* what) {
        std::vector<int64_t> out = take(n);
        for (int64_t d : out) {
            if (d < -kMaxDim || d > kMaxDim) {
                throw PlanError("kernel for " + args_.name + ": " + what + " has stride " +
                                std::to_string(d));
            }
        }
        return out;
    }
    double real(size_t i) const {
        if (i >= args_.floats.size()) {
            throw PlanError("kernel for " + args_.name + ": too few float parameters");
        }
        return args_.floats[i];
    }
    // A float parameter that must be finite.
    double finite(size_t i, const char* what) const {
        const double v = real(i);
        if (!(v == v) || v - v != 0.0) {
            throw PlanError("kernel for " + args_.name + ": " + what + " must be finite");
        }
        return v;
    }

    // No real buffer has 2^48 elements; the bound keeps sums of a few parameters far from
    // overflow. Products that a kernel computes are checked in its factory (spans, checked_*).
    static constexpr int64_t kMaxDim = int64_t{1} << 48;

   private:
    const KernelArgs& args_;
    size_t pos_ = 0;
};

}  // namespace rt
}  // namespace graphopt
