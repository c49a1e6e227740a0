// Packed weights shared between kernels and plans.
//
// A native module builds one plan per input shape (and a model compiled twice builds two), and
// every GEMM kernel packs its constant weight in its constructor: without sharing, each plan
// holds its own packed copy of every weight (three sequence lengths of GPT-2 XL would hold
// three 6 GB copies). Here a kernel asks for the packing of (kind, source pointer, layout
// parameters) and gets the one already made if any live kernel still holds it.
//
// Keys use the source address: a constant's array is read-only and the plan keeps it alive for
// as long as the plan (and so the packed entry it holds) lives, so an address cannot be reused
// for other data while its entry is alive; entries are weak, and die with the last kernel.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace graphopt {
namespace rt {

class PackCache {
   public:
    struct Stats {
        int64_t packs = 0;  // packings made
        int64_t hits = 0;   // requests served by a live entry
        int64_t live = 0;   // entries still held by some kernel
    };

    // The packing for `key` (a string naming the kind and the source, then the parameters):
    // the live one, else make() (run outside the lock; two threads may both pack, the first
    // stored wins).
    template <class P, class Make>
    static std::shared_ptr<const P> get(const std::string& kind, const void* source,
                                         const std::vector<int64_t>& params, Make make) {
        const Key key{kind, reinterpret_cast<uintptr_t>(source), params};
        PackCache& cache = instance();
        {
            std::lock_guard<std::mutex> lock(cache.mutex_);
            auto it = cache.entries_.find(key);
            if (it != cache.entries_.end()) {
                if (auto held = it->second.lock()) {
                    ++cache.stats_.hits;
                    return std::static_pointer_cast<const P>(held);
                }
            }
        }
        auto made = std::make_shared<const P>(make());
        std::lock_guard<std::mutex> lock(cache.mutex_);
        auto& slot = cache.entries_[key];
        if (auto held = slot.lock()) return std::static_pointer_cast<const P>(held);
        slot = made;
        ++cache.stats_.packs;
        if (cache.entries_.size() >= cache.sweep_at_) {  // amortised: not a scan per insert
            cache.drop_expired();
            cache.sweep_at_ = 2 * cache.entries_.size() + 64;
        }
        return made;
    }

    static Stats stats();

   private:
    using Key = std::tuple<std::string, uintptr_t, std::vector<int64_t>>;
    static PackCache& instance();
    void drop_expired();  // call with mutex_ held

    std::mutex mutex_;
    std::map<Key, std::weak_ptr<const void>> entries_;
    size_t sweep_at_ = 64;
    Stats stats_;
};

}  // namespace rt
}  // namespace graphopt
