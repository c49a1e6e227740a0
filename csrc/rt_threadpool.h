// The runtime's thread pool: chunks of a loop are claimed dynamically, and the calling thread
// works too and never waits for a helper that has not started.
//
// Why not an OpenMP parallel region: its join barrier makes the caller wait for every team
// thread to arrive, including one the OS has not scheduled yet. On a loaded machine (these are
// shared) that costs a scheduler time slice per kernel, milliseconds for a 20 us kernel. Here a
// late helper finds no chunk left and the caller has already moved on; the caller only waits for
// chunks that a running helper has claimed.
//
// Protocol. A job is published by storing (generation << 32 | next chunk) into `state_`; anyone
// claims chunk i with a CAS from i to i + 1 under the same generation, runs it and counts it
// done. The caller returns when done == chunks, so no helper can still be inside the job's
// function; a helper that loaded an older generation fails its CAS and touches nothing. Idle
// helpers spin briefly (kernels of one plan follow each other within microseconds), then sleep
// on a condition variable.
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

class ThreadPool {
   public:
    using ChunkFn = void (*)(void* ctx, int64_t chunk);

    static ThreadPool& instance();

    // Runs fn(ctx, c) for every c in [0, chunks) on the caller plus up to max_threads - 1
    // helpers. Exceptions thrown by fn are rethrown here (the first one).
    void run(int64_t chunks, int max_threads, ChunkFn fn, void* ctx);

    ~ThreadPool();

   private:
    ThreadPool() = default;
    void ensure_workers(int count);
    void worker_loop();
    void claim_loop(uint64_t gen);
    bool try_join(uint64_t gen);

    std::mutex run_mutex_;  // one job at a time
    std::mutex sleep_mutex_;
    std::condition_variable wake_;
    std::vector<std::thread> workers_;
    std::atomic<uint64_t> state_{0};    // generation << 32 | next chunk
    std::atomic<uint64_t> helpers_{0};  // generation << 32 | helpers joined
    std::atomic<int64_t> done_{0};
    std::atomic<int64_t> chunks_{0};
    std::atomic<int> max_helpers_{0};
    std::atomic<ChunkFn> fn_{nullptr};
    std::atomic<void*> ctx_{nullptr};
    std::atomic<int> sleeping_{0};
    std::atomic<bool> stop_{false};
    std::mutex error_mutex_;
    std::exception_ptr error_;
};

// Runs f(c) for c in [0, chunks) with the pool (f: any callable taking int64_t).
template <typename F>
void pool_run(int64_t chunks, int max_threads, F& f) {
    ThreadPool::instance().run(
        chunks, max_threads, [](void* ctx, int64_t c) { (*static_cast<F*>(ctx))(c); }, &f);
}

}  // namespace rt
}  // namespace graphopt
