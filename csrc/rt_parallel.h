// Parallel loops of the runtime kernels, on the runtime's thread pool (rt_threadpool.h).
//
// parallel_for splits [0, n) into contiguous chunks but only uses as many threads as there is
// work for: handing work to another thread costs microseconds, more than many small ops take
// in total. Chunks are claimed dynamically (a few per thread), so a helper the OS schedules
// late just gets fewer of them. Exceptions thrown by the body are rethrown to the caller.
#pragma once

#include <algorithm>
#include <cstdint>

#include "rt_threadpool.h"

namespace graphopt {
namespace rt {

// Work (roughly: bytes touched, or multiply-adds) below which a thread is not worth waking.
constexpr int64_t kMinWorkPerThread = 32 * 1024;
// Chunks per thread: enough for balance when a helper starts late, few enough to stay cheap.
constexpr int64_t kChunksPerThread = 4;

inline int threads_for(int threads, int64_t total_work,
                       int64_t min_work_per_thread = kMinWorkPerThread) {
    if (threads <= 1 || total_work <= min_work_per_thread) return 1;
    const int64_t useful = total_work / std::max<int64_t>(1, min_work_per_thread);
    return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, useful)));
}

// Calls fn(begin, end) on disjoint chunks covering [0, n). `work_per_item` estimates the cost of
// one item so that tiny loops stay on the calling thread.
template <typename Fn>
void parallel_for(int threads, int64_t n, int64_t work_per_item, Fn&& fn) {
    if (n <= 0) return;
    const int nt = static_cast<int>(
        std::min<int64_t>(n, threads_for(threads, n * std::max<int64_t>(1, work_per_item))));
    if (nt <= 1) {
        fn(int64_t{0}, n);
        return;
    }
    const int64_t chunks = std::min<int64_t>(n, nt * kChunksPerThread);
    auto body = [&](int64_t c) { fn(n * c / chunks, n * (c + 1) / chunks); };
    pool_run(chunks, nt, body);
}

// Runs fn(task) for task in [0, tasks), one task per chunk (uneven task costs).
template <typename Fn>
void parallel_tasks(int threads, int64_t tasks, Fn&& fn) {
    if (tasks <= 0) return;
    const int nt = static_cast<int>(std::min<int64_t>(std::max(1, threads), tasks));
    if (nt <= 1) {
        for (int64_t t = 0; t < tasks; ++t) fn(t);
        return;
    }
    auto body = [&](int64_t t) { fn(t); };
    pool_run(tasks, nt, body);
}

}  // namespace rt
}  // namespace graphopt
