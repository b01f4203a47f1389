#pragma once
// A caching allocator for tensor storage. glibc's malloc serves blocks of a few MB with mmap and
// unmaps them on free, so a training step that frees and re-creates the same activations and
// gradients every iteration page-faults all of them back in (~30% of a small llama LoRA step).
// Large blocks are therefore kept on per-size-class free lists and handed out again; small ones
// go straight to the system allocator, which already recycles them well.
#include <bit>
#include <cstddef>
#include <memory>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

namespace peft {

// What the tensor cache holds. Only blocks of at least detail::cache_threshold bytes go through
// it; sizes are those of the rounded blocks.
struct tensor_cache_info {
  std::size_t bytes_cached = 0;  // freed blocks kept for reuse
  std::size_t bytes_in_use = 0;  // large blocks currently held by tensors
  std::size_t hits = 0;          // large allocations served from the cache
  std::size_t misses = 0;        // large allocations that went to the system
  std::size_t limit = 0;         // most bytes the cache keeps (set_tensor_cache_limit)
};

namespace detail {

// Under AddressSanitizer (the fuzz targets) every block goes to the system at its exact size, so
// ASan still sees each tensor's bounds and quarantines freed storage.
#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool cache_bypassed = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr bool cache_bypassed = true;
#else
inline constexpr bool cache_bypassed = false;
#endif
#else
inline constexpr bool cache_bypassed = false;
#endif

inline constexpr std::size_t cache_threshold = std::size_t{64} << 10;      // 64 KiB
inline constexpr std::size_t cache_alignment = 64;                         // AVX-512, cache line
inline constexpr std::size_t cache_default_limit = std::size_t{1} << 30;  // 1 GiB

// Rounds a large request up to one of 8 classes per power of two (waste <= 12.5%), so blocks of
// nearly equal size are interchangeable.
inline std::size_t cache_size_class(std::size_t bytes) noexcept {
  const int p = std::bit_width(bytes) - 1;
  const std::size_t step = std::size_t{1} << (p - 3);
  return (bytes + step - 1) & ~(step - 1);
}

class block_cache {
 public:
  // Leaked on purpose: tensors destroyed during static destruction (globals of other TUs) must
  // still find it alive.
  static block_cache& instance() {
    static block_cache* c = new block_cache;
    return *c;
  }

  void* allocate(std::size_t bytes) {
    const std::size_t size = cache_size_class(bytes);
    {
      std::lock_guard lock(mutex_);
      auto it = free_.find(size);
      if (it != free_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        cached_ -= size;
        in_use_ += size;
        ++hits_;
        return p;
      }
      ++misses_;
    }
    void* p = system_allocate(size);
    std::lock_guard lock(mutex_);
    in_use_ += size;
    return p;
  }

  void deallocate(void* p, std::size_t bytes) noexcept {
    const std::size_t size = cache_size_class(bytes);
    {
      std::lock_guard lock(mutex_);
      in_use_ -= size;
      if (cached_ + size <= limit_) {
        // push_back may throw on a fresh list; then the block goes back to the system instead.
        try {
          free_[size].push_back(p);
          cached_ += size;
          return;
        } catch (...) {
        }
      }
    }
    system_free(p);
  }

  // Frees cached blocks until at most `keep` bytes stay cached.
  void trim(std::size_t keep) noexcept {
    std::vector<void*> victims;
    {
      std::lock_guard lock(mutex_);
      for (auto it = free_.begin(); it != free_.end() && cached_ > keep;) {
        auto& list = it->second;
        while (!list.empty() && cached_ > keep) {
          // Collected first, freed outside the lock; if the vector cannot grow, free now.
          try {
            victims.push_back(list.back());
          } catch (...) {
            system_free(list.back());
          }
          list.pop_back();
          cached_ -= it->first;
        }
        it = list.empty() ? free_.erase(it) : std::next(it);
      }
    }
    for (void* v : victims) system_free(v);
  }

  void set_limit(std::size_t bytes) noexcept {
    {
      std::lock_guard lock(mutex_);
      limit_ = bytes;
    }
    trim(bytes);
  }

  tensor_cache_info info() const {
    std::lock_guard lock(mutex_);
    return {cached_, in_use_, hits_, misses_, limit_};
  }

 private:
  block_cache() = default;

  void* system_allocate(std::size_t size) {
    try {
      return ::operator new(size, std::align_val_t{cache_alignment});
    } catch (const std::bad_alloc&) {
      // Memory parked in the cache is still memory: give it back and try once more.
      trim(0);
      return ::operator new(size, std::align_val_t{cache_alignment});
    }
  }
  static void system_free(void* p) noexcept {
    ::operator delete(p, std::align_val_t{cache_alignment});
  }

  mutable std::mutex mutex_;
  std::unordered_map<std::size_t, std::vector<void*>> free_;  // size class -> freed blocks
  std::size_t cached_ = 0, in_use_ = 0, hits_ = 0, misses_ = 0;
  std::size_t limit_ = cache_default_limit;
};

}  // namespace detail

// Stateless (all instances equal) allocator for tensor<T>'s storage: blocks of at least 64 KiB
// are 64-byte aligned and recycled through the process-wide cache; smaller ones use the system
// allocator. Throws std::bad_alloc on failure, never returns null.
template <class T>
struct caching_allocator {
  using value_type = T;

  caching_allocator() noexcept = default;
  template <class U>
  caching_allocator(const caching_allocator<U>&) noexcept {}

  [[nodiscard]] T* allocate(std::size_t n) {
    if (n > std::size_t(-1) / sizeof(T)) throw std::bad_array_new_length();
    const std::size_t bytes = n * sizeof(T);
    if (!detail::cache_bypassed && bytes >= detail::cache_threshold)
      return static_cast<T*>(detail::block_cache::instance().allocate(bytes));
    return std::allocator<T>().allocate(n);
  }
  void deallocate(T* p, std::size_t n) noexcept {
    if (!p) return;
    const std::size_t bytes = n * sizeof(T);
    if (!detail::cache_bypassed && bytes >= detail::cache_threshold)
      detail::block_cache::instance().deallocate(p, bytes);
    else
      std::allocator<T>().deallocate(p, n);
  }
};

// Every instance can free what any other allocated (C++20 derives !=).
template <class T, class U>
bool operator==(const caching_allocator<T>&, const caching_allocator<U>&) noexcept {
  return true;
}

// Bytes cached and in use, hits and misses of the tensor cache.
inline tensor_cache_info tensor_cache_stats() { return detail::block_cache::instance().info(); }

// Most bytes of freed blocks the cache keeps (default 1 GiB); blocks freed beyond it go back to
// the system. Lowering it releases the excess at once; 0 disables caching.
inline void set_tensor_cache_limit(std::size_t bytes) {
  detail::block_cache::instance().set_limit(bytes);
}

// Returns every cached block to the system (blocks still held by tensors are unaffected).
inline void release_tensor_cache() { detail::block_cache::instance().trim(0); }

}  // namespace peft
