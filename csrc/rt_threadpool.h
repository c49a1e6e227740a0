// The runtime's thread pool: every thread owns a contiguous home range of a loop's chunks and
// takes them front to back; a thread that runs out steals from the back of another's range. The
// calling thread works too and never waits for a helper that has not started.
//
// Why not an OpenMP parallel region: its join barrier makes the caller wait for every team
// thread to arrive, including one the OS has not scheduled yet. On a loaded machine (these are
// shared) that costs a scheduler time slice per kernel, milliseconds for a 20 us kernel. Here a
// late helper's range is stolen by the threads that run; the caller only waits for chunks that
// a running helper has claimed.
//
// Why home ranges rather than one shared counter: kernels order their chunks spatially (rows
// of an image, rows of a matrix), so with home ranges thread t handles the same rows in every
// kernel of a plan, and the rows a convolution writes are still in that core's own cache when
// the next one reads them. A shared counter hands chunk 0 to one thread and chunk 1 to the
// other in one kernel and the reverse in the next, so about half of every activation crossed
// between cores' caches (MobileNetV2 steps ran 30% slower at the median than at their best).
//
// Protocol. Each slot's range is one atomic word (generation, front, back). A run fills the
// words of a new generation, then publishes the job's number; a thread claims a chunk with a
// compare-and-swap that moves front (its own range) or back (another's) under that generation.
// The caller returns when every chunk is done, so no helper is still inside the job's function;
// a helper holding an older word fails its compare-and-swap and touches nothing. Idle helpers
// spin briefly (kernels of one plan follow each other within microseconds), then sleep on a
// condition variable.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace graphopt {
namespace rt {

// Longest spin a plan may ask for (1 s).
constexpr int64_t kMaxSpinUs = 1000000;

// While alive, jobs this thread publishes let idle helpers spin `us` microseconds before they
// sleep (-1: GRAPHOPT_NATIVE_SPIN_US, else 50). A plan's runs hold one (NativePlan.spin_us).
class SpinScope {
   public:
    explicit SpinScope(int64_t us);
    ~SpinScope();
    SpinScope(const SpinScope&) = delete;
    SpinScope& operator=(const SpinScope&) = delete;

   private:
    int64_t saved_;
};

class ThreadPool {
   public:
    using ChunkFn = void (*)(void* ctx, int64_t chunk);

    static ThreadPool& instance();

    // Runs fn(ctx, c) for every c in [0, chunks) on the caller plus up to max_threads - 1
    // helpers; thread t's home range is [chunks * t / n, chunks * (t + 1) / n) of n threads.
    // Exceptions thrown by fn are rethrown here (the first one).
    void run(int64_t chunks, int max_threads, ChunkFn fn, void* ctx);

    ~ThreadPool();

   private:
    static constexpr int kMaxSlots = 64;
    struct alignas(64) Range {
        std::atomic<uint64_t> word{0};  // generation << 44 | front << 22 | back
    };

    ThreadPool() = default;
    void ensure_workers(int count);
    void worker_loop(int slot);
    void run_job(int64_t first, int64_t chunks, int slots);
    void work(uint64_t gen, int slot);
    bool claim(uint64_t gen, int slot, int64_t& chunk);

    std::mutex run_mutex_;  // one job at a time
    std::mutex sleep_mutex_;
    std::condition_variable wake_;
    std::vector<std::thread> workers_;
    Range ranges_[kMaxSlots];
    std::atomic<uint64_t> job_{0};      // number of the last published job
    std::atomic<int> slots_{0};         // threads of the current job (ranges in use)
    std::atomic<int64_t> first_{0};     // chunk index of the job's chunk 0 (batched runs)
    std::atomic<int64_t> spin_us_{-1};  // the last job's spin after it (-1: the default)
    std::atomic<int64_t> done_{0};
    std::atomic<ChunkFn> fn_{nullptr};
    std::atomic<void*> ctx_{nullptr};
    std::atomic<int> sleeping_{0};
    std::atomic<bool> stop_{false};
    std::mutex error_mutex_;
    std::exception_ptr error_;
};

// Test hook: runs `chunks` chunks on `threads` threads, each busy for `busy_ns`; returns which
// thread ran each chunk (0: the caller, -1: none), and throws std::runtime_error from chunk
// `fail_chunk` (when in range).
std::vector<int> pool_probe(int64_t chunks, int threads, int64_t busy_ns, int64_t fail_chunk);

// Runs f(c) for c in [0, chunks) with the pool (f: any callable taking int64_t).
template <typename F>
void pool_run(int64_t chunks, int max_threads, F& f) {
    ThreadPool::instance().run(
        chunks, max_threads, [](void* ctx, int64_t c) { (*static_cast<F*>(ctx))(c); }, &f);
}

}  // namespace rt
}  // namespace graphopt
