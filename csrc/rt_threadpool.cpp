// Thread pool of the native runtime (see rt_threadpool.h).
#include "rt_threadpool.h"

#include <chrono>
#include <cstdlib>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define GRAPHOPT_PAUSE() _mm_pause()
#else
#define GRAPHOPT_PAUSE() ((void)0)
#endif

namespace graphopt {
namespace rt {

namespace {

// How long an idle helper spins before sleeping (GRAPHOPT_NATIVE_SPIN_US overrides): a bit
// longer than the gap between two kernels of a plan. Spinning threads yield often: these
// machines are shared, and with per-session CPU fair shares (autogroup) a helper that spins
// at full speed takes time from its own caller when another session keeps a core busy.
std::chrono::microseconds spin_time() {
    static const std::chrono::microseconds spin = [] {
        const char* env = std::getenv("GRAPHOPT_NATIVE_SPIN_US");
        return std::chrono::microseconds(env != nullptr ? std::atoll(env) : 50);
    }();
    return spin;
}

// Set on helpers, and on a caller while its job runs: a nested parallel loop then runs serially
// on that thread (a second job cannot start while this one holds the pool).
thread_local bool t_in_pool_worker = false;

uint64_t gen_of(uint64_t state) { return state >> 32; }

}  // namespace

ThreadPool& ThreadPool::instance() {
    // Leaked on purpose: joining threads from a static destructor at interpreter exit can
    // deadlock with the runtime's own teardown.
    static ThreadPool* pool = new ThreadPool();
    return *pool;
}

ThreadPool::~ThreadPool() {
    stop_.store(true);
    {
        std::lock_guard<std::mutex> lock(sleep_mutex_);
        wake_.notify_all();
    }
    for (std::thread& t : workers_) t.join();
}

void ThreadPool::ensure_workers(int count) {
    while (static_cast<int>(workers_.size()) < count) {
        workers_.emplace_back([this] { worker_loop(); });
    }
}

bool ThreadPool::try_join(uint64_t gen) {
    uint64_t h = helpers_.load();
    for (;;) {
        if (gen_of(h) != gen || static_cast<int>(h & 0xffffffffu) >= max_helpers_.load()) {
            return false;
        }
        if (helpers_.compare_exchange_weak(h, h + 1)) return true;
    }
}

void ThreadPool::claim_loop(uint64_t gen) {
    for (;;) {
        uint64_t s = state_.load();
        if (gen_of(s) != gen) return;
        const int64_t chunk = static_cast<int64_t>(s & 0xffffffffu);
        if (chunk >= chunks_.load()) return;
        if (!state_.compare_exchange_weak(s, s + 1)) continue;
        try {
            fn_.load()(ctx_.load(), chunk);
        } catch (...) {
            std::lock_guard<std::mutex> lock(error_mutex_);
            if (!error_) error_ = std::current_exception();
        }
        done_.fetch_add(1);
    }
}

void ThreadPool::worker_loop() {
    t_in_pool_worker = true;
    uint64_t seen = gen_of(state_.load());
    while (!stop_.load()) {
        const auto spin_until = std::chrono::steady_clock::now() + spin_time();
        int spins = 0;
        while (gen_of(state_.load()) == seen && !stop_.load()) {
            GRAPHOPT_PAUSE();
            if (++spins % 64 == 0) {
                if (std::chrono::steady_clock::now() > spin_until) break;
                std::this_thread::yield();
            }
        }
        if (gen_of(state_.load()) == seen) {
            std::unique_lock<std::mutex> lock(sleep_mutex_);
            sleeping_.fetch_add(1);
            wake_.wait(lock, [&] { return stop_.load() || gen_of(state_.load()) != seen; });
            sleeping_.fetch_sub(1);
        }
        if (stop_.load()) return;
        seen = gen_of(state_.load());
        if (try_join(seen)) claim_loop(seen);
    }
}

void ThreadPool::run(int64_t chunks, int max_threads, ChunkFn fn, void* ctx) {
    if (chunks <= 0) return;
    if (max_threads <= 1 || chunks == 1 || t_in_pool_worker) {
        for (int64_t c = 0; c < chunks; ++c) fn(ctx, c);
        return;
    }
    std::lock_guard<std::mutex> run_lock(run_mutex_);
    t_in_pool_worker = true;
    struct Reset {
        ~Reset() { t_in_pool_worker = false; }
    } reset;
    ensure_workers(max_threads - 1);
    // Close the previous generation before touching its fields. A helper of it may have read
    // state_ (its last chunk index) and been descheduled before comparing that index with
    // chunks_: had chunks_ grown first, its compare-and-swap on the unchanged state_ would
    // succeed and run a chunk of this run (or the old fn on the old, dead ctx) and count it in
    // the new done_, so this call could return while that chunk still used its stack (seen as
    // a crash in a copy kernel under heavy CPU oversubscription). A closed generation has no
    // claimable chunk; the run opens the next one.
    const uint64_t closed = gen_of(state_.load()) + 1;
    state_.store((closed << 32) | 0xffffffffu);
    error_ = nullptr;
    fn_.store(fn);
    ctx_.store(ctx);
    chunks_.store(chunks);
    max_helpers_.store(max_threads - 1);
    done_.store(0);
    const uint64_t gen = closed + 1;
    helpers_.store(gen << 32);
    state_.store(gen << 32);  // publish: chunk 0 of the new generation
    if (sleeping_.load() > 0) {
        std::lock_guard<std::mutex> lock(sleep_mutex_);
        wake_.notify_all();
    }
    claim_loop(gen);
    // Only chunks claimed by running helpers remain; wait for them.
    // (The helper holding them may be waiting for this very CPU: yield early.)
    int spins = 0;
    while (done_.load() < chunks) {
        GRAPHOPT_PAUSE();
        if (++spins % 16 == 0) std::this_thread::yield();
    }
    if (error_) {
        std::exception_ptr e = error_;
        error_ = nullptr;
        std::rethrow_exception(e);
    }
}

}  // namespace rt
}  // namespace graphopt
