// Thread pool of the native runtime (see rt_threadpool.h).
#include "rt_threadpool.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <stdexcept>
#include <string>

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
std::chrono::microseconds default_spin() {
    static const std::chrono::microseconds spin = [] {
        const char* env = std::getenv("GRAPHOPT_NATIVE_SPIN_US");
        const int64_t us = env != nullptr ? std::atoll(env) : 50;
        return std::chrono::microseconds(std::min<int64_t>(std::max<int64_t>(us, 0), kMaxSpinUs));
    }();
    return spin;
}

// The spin the jobs this thread publishes ask for (SpinScope); -1: the default.
thread_local int64_t t_spin_us = -1;

// Set on helpers, and on a caller while its job runs: a nested parallel loop then runs serially
// on that thread (a second job cannot start while this one holds the pool).
thread_local bool t_in_pool_worker = false;

// A range word: 20 bits of generation (the job number modulo 2^20), front and back (22 bits
// each). A stale word can only match a live one after 2^20 jobs with the same front and back,
// and then it names an unclaimed chunk of the live job: taking it is still correct.
constexpr int kIndexBits = 22;
constexpr uint64_t kIndexMask = (uint64_t{1} << kIndexBits) - 1;
constexpr uint64_t kGenMask = (uint64_t{1} << 20) - 1;
constexpr int64_t kMaxJobChunks = static_cast<int64_t>(kIndexMask);

uint64_t pack(uint64_t gen, int64_t front, int64_t back) {
    return (gen << (2 * kIndexBits)) | (static_cast<uint64_t>(front) << kIndexBits) |
           static_cast<uint64_t>(back);
}
uint64_t gen_of(uint64_t w) { return w >> (2 * kIndexBits); }
int64_t front_of(uint64_t w) { return static_cast<int64_t>((w >> kIndexBits) & kIndexMask); }
int64_t back_of(uint64_t w) { return static_cast<int64_t>(w & kIndexMask); }

}  // namespace

SpinScope::SpinScope(int64_t us) : saved_(t_spin_us) {
    t_spin_us = us < 0 ? -1 : std::min(us, kMaxSpinUs);
}

SpinScope::~SpinScope() { t_spin_us = saved_; }

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
        const int slot = static_cast<int>(workers_.size()) + 1;  // slot 0 is the caller's
        workers_.emplace_back([this, slot] { worker_loop(slot); });
    }
}

// One chunk for `slot`: the front of its own range, else the back of another's.
bool ThreadPool::claim(uint64_t gen, int slot, int64_t& chunk) {
    const int n = slots_.load();
    for (int k = 0; k < n; ++k) {
        const int s = (slot + k) % n;
        const bool own = s == slot;
        std::atomic<uint64_t>& word = ranges_[s].word;
        uint64_t w = word.load();
        for (;;) {
            const int64_t front = front_of(w), back = back_of(w);
            if (gen_of(w) != gen || front >= back) break;
            const uint64_t next = own ? pack(gen, front + 1, back) : pack(gen, front, back - 1);
            if (word.compare_exchange_weak(w, next)) {
                chunk = own ? front : back - 1;
                return true;
            }
        }
    }
    return false;
}

void ThreadPool::work(uint64_t gen, int slot) {
    int64_t chunk = 0;
    while (claim(gen, slot, chunk)) {
        try {
            fn_.load()(ctx_.load(), first_.load() + chunk);
        } catch (...) {
            std::lock_guard<std::mutex> lock(error_mutex_);
            if (!error_) error_ = std::current_exception();
        }
        done_.fetch_add(1);
    }
}

void ThreadPool::worker_loop(int slot) {
    t_in_pool_worker = true;
    uint64_t seen = job_.load();
    while (!stop_.load()) {
        const int64_t asked = spin_us_.load();
        const auto spin = asked >= 0 ? std::chrono::microseconds(asked) : default_spin();
        const auto spin_until = std::chrono::steady_clock::now() + spin;
        int spins = 0;
        while (job_.load() == seen && !stop_.load()) {
            GRAPHOPT_PAUSE();
            if (++spins % 64 == 0) {
                if (std::chrono::steady_clock::now() > spin_until) break;
                std::this_thread::yield();
            }
        }
        if (job_.load() == seen) {
            std::unique_lock<std::mutex> lock(sleep_mutex_);
            sleeping_.fetch_add(1);
            wake_.wait(lock, [&] { return stop_.load() || job_.load() != seen; });
            sleeping_.fetch_sub(1);
        }
        if (stop_.load()) return;
        seen = job_.load();
        // A helper past the job's thread count leaves it to the others (the ranges it would
        // claim from carry the job's generation, so a stale `seen` claims nothing either).
        if (slot < slots_.load()) work(seen & kGenMask, slot);
    }
}

void ThreadPool::run_job(int64_t first, int64_t chunks, int slots) {
    // Every chunk of the previous job was claimed and done before it returned: all its ranges
    // are empty, and no helper is inside its function.
    const uint64_t job = job_.load() + 1;
    const uint64_t gen = job & kGenMask;
    first_.store(first);
    spin_us_.store(t_spin_us);
    done_.store(0);
    slots_.store(slots);
    for (int s = 0; s < slots; ++s) {
        ranges_[s].word.store(pack(gen, chunks * s / slots, chunks * (s + 1) / slots));
    }
    job_.store(job);  // publish
    if (sleeping_.load() > 0) {
        std::lock_guard<std::mutex> lock(sleep_mutex_);
        wake_.notify_all();
    }
    work(gen, 0);
    // Only chunks claimed by running helpers remain; wait for them.
    // (The helper holding them may be waiting for this very CPU: yield early.)
    int spins = 0;
    while (done_.load() < chunks) {
        GRAPHOPT_PAUSE();
        if (++spins % 16 == 0) std::this_thread::yield();
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
    const int threads = std::min(max_threads, kMaxSlots);
    ensure_workers(threads - 1);
    error_ = nullptr;
    fn_.store(fn);
    ctx_.store(ctx);
    // A range word holds 22-bit indices: longer loops run as consecutive jobs.
    for (int64_t first = 0; first < chunks; first += kMaxJobChunks) {
        const int64_t n = std::min(kMaxJobChunks, chunks - first);
        run_job(first, n, static_cast<int>(std::min<int64_t>(threads, n)));
    }
    if (error_) {
        std::exception_ptr e = error_;
        error_ = nullptr;
        std::rethrow_exception(e);
    }
}

std::vector<int> pool_probe(int64_t chunks, int threads, int64_t busy_ns, int64_t fail_chunk) {
    if (chunks < 0 || chunks > (int64_t{1} << 24)) {
        throw std::invalid_argument("pool_probe: chunks must be in [0, 2^24]");
    }
    if (threads < 1 || threads > 1024) {
        throw std::invalid_argument("pool_probe: threads must be in [1, 1024]");
    }
    std::vector<int> who(static_cast<size_t>(chunks), -1);
    std::vector<std::thread::id> ids(static_cast<size_t>(chunks));
    const std::thread::id caller = std::this_thread::get_id();
    auto body = [&](int64_t c) {
        const auto until = std::chrono::steady_clock::now() + std::chrono::nanoseconds(busy_ns);
        while (busy_ns > 0 && std::chrono::steady_clock::now() < until) GRAPHOPT_PAUSE();
        if (who[static_cast<size_t>(c)] != -1) throw std::logic_error("chunk ran twice");
        ids[static_cast<size_t>(c)] = std::this_thread::get_id();
        who[static_cast<size_t>(c)] = 1;
        if (c == fail_chunk) throw std::runtime_error("pool_probe: chunk " + std::to_string(c));
    };
    pool_run(chunks, threads, body);
    // Number the helpers in order of first appearance (the caller is 0).
    std::vector<std::thread::id> seen{caller};
    for (size_t c = 0; c < who.size(); ++c) {
        if (who[c] == -1) continue;
        size_t k = 0;
        while (k < seen.size() && seen[k] != ids[c]) ++k;
        if (k == seen.size()) seen.push_back(ids[c]);
        who[c] = static_cast<int>(k);
    }
    return who;
}

}  // namespace rt
}  // namespace graphopt
