// The shared packed-weight cache (rt_pack_cache.h).
#include "rt_pack_cache.h"

namespace graphopt {
namespace rt {

PackCache& PackCache::instance() {
    static PackCache* cache = new PackCache();  // never destroyed: kernels may outlive statics
    return *cache;
}

void PackCache::drop_expired() {
    for (auto it = entries_.begin(); it != entries_.end();) {
        it = it->second.expired() ? entries_.erase(it) : std::next(it);
    }
}

PackCache::Stats PackCache::stats() {
    PackCache& cache = instance();
    std::lock_guard<std::mutex> lock(cache.mutex_);
    cache.drop_expired();
    Stats out = cache.stats_;
    out.live = static_cast<int64_t>(cache.entries_.size());
    return out;
}

}  // namespace rt
}  // namespace graphopt
