#pragma once
// A thread-safe cache of adapters by name for serving: register where an adapter comes from (a
// PEFT directory, a llama.cpp LoRA GGUF, or any loader function), get() it by name from any
// thread, and the registry loads it on first use, keeps it under a memory budget with LRU
// eviction, and hot-swaps it when its source is replaced.
//
// Snapshots: get() returns a shared_ptr to an immutable served_adapter. Eviction, unload and
// hot-swap only drop the registry's own reference, so a batch that holds a handle keeps running on
// the adapter it started with and its memory is freed when the last batch lets go. The budget
// counts what the registry holds (bytes()), not such in-flight copies.
//
// Locking: a std::shared_mutex. Hits take it shared (the LRU clock and the counters are atomics,
// so a hit never needs the exclusive lock); changes take it exclusively; loading a file runs
// with NO lock held. Concurrent misses on one name share one load (a shared_future): the first
// thread loads, the others wait for its result (or its exception). A load whose source was
// replaced or removed while it ran is returned to its waiters but not cached.
// Pinned adapters are never evicted (unload() still drops them: it is an explicit request).
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <future>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "peft/core/error.hpp"
#include "peft/nn/module.hpp"
#include "peft/nn/transformer.hpp"
#include "peft/serve/adapter_files.hpp"
#include "peft/serve/served_adapter.hpp"

namespace peft::serve {

struct registry_stats {
  std::uint64_t hits = 0;        // get() found the adapter resident
  std::uint64_t misses = 0;      // get() had to load it (or wait for a load)
  std::uint64_t loads = 0;       // loader runs that succeeded (including load())
  std::uint64_t load_failures = 0;
  std::uint64_t evictions = 0;   // adapters dropped to fit the budget
  std::size_t bytes = 0;         // held by the registry now
  std::size_t budget = 0;
  std::size_t resident = 0;      // adapters held now
  std::size_t registered = 0;    // names known (resident or not)
};

template <class T>
class adapter_registry {
 public:
  using handle = std::shared_ptr<const served_adapter<T>>;
  using loader = std::function<served_adapter<T>()>;
  static constexpr std::size_t unlimited = std::numeric_limits<std::size_t>::max();

  // base: the model adapters will run on (its Linear weights are used for shape checks and
  // DoRA's row norms; the registry keeps handles to them, not copies). GGUF files need an
  // nn::llama base (for the q/k row order).
  explicit adapter_registry(nn::module<T>& base, std::size_t budget_bytes = unlimited)
      : base_(base_linear_weights(base)), budget_(budget_bytes) {
    if (auto* l = dynamic_cast<nn::llama<T>*>(&base)) llama_ = l->config();
    if (base_.empty()) throw value_error("serve::adapter_registry: the base model has no Linear layers");
  }
  adapter_registry(const adapter_registry&) = delete;
  adapter_registry& operator=(const adapter_registry&) = delete;

  // ---- sources ----

  // Registers (or replaces) the loader of `name`. Nothing is loaded; a resident copy from the old
  // source is dropped, so the next get() loads the new one (lazy hot-swap).
  void add_source(const std::string& name, loader fn) {
    if (!fn) throw value_error("serve::adapter_registry: null loader for '" + name + "'");
    std::unique_lock lk(mu_);
    entry& e = slot(name);
    e.src = std::move(fn);
    ++e.generation;
    e.pending = {};
    drop(e);
  }
  // A PEFT adapter directory or a llama.cpp LoRA GGUF file (a regular file).
  void add_source(const std::string& name, const std::string& path) { add_source(name, file_loader(name, path)); }

  // Registers the source and loads it now; a resident adapter of that name is replaced
  // atomically (eager hot-swap). The file is read with no lock held.
  handle load(const std::string& name, const std::string& path) { return load(name, file_loader(name, path)); }
  handle load(const std::string& name, loader fn) {
    if (!fn) throw value_error("serve::adapter_registry: null loader for '" + name + "'");
    handle h = run(fn, name);
    std::unique_lock lk(mu_);
    entry& e = slot(name);
    e.src = std::move(fn);
    ++e.generation;
    e.pending = {};
    put(name, e, h);
    return h;
  }

  // An in-memory adapter. It has no source: once evicted or unloaded, get() throws until it is
  // inserted again (pin it to keep it).
  handle insert(const std::string& name, served_adapter<T> a, bool pin = false) {
    check_fits(name, a);
    a.name = name;
    handle h = std::make_shared<const served_adapter<T>>(std::move(a));
    std::unique_lock lk(mu_);
    entry& e = slot(name);
    e.src = nullptr;
    ++e.generation;
    e.pending = {};
    e.pinned = e.pinned || pin;
    put(name, e, h);
    return h;
  }

  // ---- lookups ----

  // The adapter named `name`, loading it on a miss. value_error for an unknown name, or one that
  // is not resident and has no source; the loader's exception on a failed load.
  handle get(const std::string& name) {
    {
      std::shared_lock lk(mu_);
      auto it = entries_.find(name);
      if (it == entries_.end()) throw unknown(name);
      if (it->second->data) return hit(*it->second);
    }
    std::shared_future<handle> fut;
    std::promise<handle> prom;
    loader src;
    std::uint64_t gen = 0;
    {
      std::unique_lock lk(mu_);
      auto it = entries_.find(name);
      if (it == entries_.end()) throw unknown(name);
      entry& e = *it->second;
      if (e.data) return hit(e);
      misses_.fetch_add(1, std::memory_order_relaxed);
      if (e.pending.valid()) {
        fut = e.pending;
      } else {
        if (!e.src)
          throw value_error("serve::adapter_registry: adapter '" + name +
                            "' is not resident and has no source to load it from (it was inserted in memory)");
        e.pending = prom.get_future().share();
        src = e.src;
        gen = e.generation;
      }
    }
    if (fut.valid()) return fut.get();  // another thread is loading it

    try {
      handle h = run(src, name);
      {
        std::unique_lock lk(mu_);
        auto it = entries_.find(name);
        if (it != entries_.end() && it->second->generation == gen) {
          it->second->pending = {};
          put(name, *it->second, h);
        }
      }
      prom.set_value(h);
      return h;
    } catch (...) {
      {
        std::unique_lock lk(mu_);
        auto it = entries_.find(name);
        if (it != entries_.end() && it->second->generation == gen) it->second->pending = {};
      }
      prom.set_exception(std::current_exception());
      throw;
    }
  }

  // The resident adapter, or null (no load, not counted in the stats, LRU order unchanged).
  handle find(const std::string& name) const {
    std::shared_lock lk(mu_);
    auto it = entries_.find(name);
    return it == entries_.end() ? nullptr : it->second->data;
  }
  bool contains(const std::string& name) const {
    std::shared_lock lk(mu_);
    return entries_.count(name) != 0;
  }
  bool resident(const std::string& name) const { return find(name) != nullptr; }

  // ---- residency ----

  // Drops the resident copy (the source stays registered). Returns whether one was resident.
  bool unload(const std::string& name) {
    std::unique_lock lk(mu_);
    auto it = entries_.find(name);
    if (it == entries_.end() || !it->second->data) return false;
    drop(*it->second);
    return true;
  }
  // Forgets the name entirely. Returns whether it was known.
  bool remove(const std::string& name) {
    std::unique_lock lk(mu_);
    auto it = entries_.find(name);
    if (it == entries_.end()) return false;
    drop(*it->second);
    entries_.erase(it);
    return true;
  }
  // Pinned adapters are never evicted to make room.
  void pin(const std::string& name, bool on = true) {
    std::unique_lock lk(mu_);
    auto it = entries_.find(name);
    if (it == entries_.end()) throw unknown(name);
    it->second->pinned = on;
  }
  void unpin(const std::string& name) { pin(name, false); }

  // Changes the budget, evicting least recently used unpinned adapters until the rest fits
  // (value_error if pinned ones alone exceed it; the budget is then left unchanged).
  void set_budget(std::size_t bytes) {
    std::unique_lock lk(mu_);
    std::size_t pinned = 0;
    for (auto& [n, e] : entries_)
      if (e->data && e->pinned) pinned += e->bytes;
    if (pinned > bytes)
      throw value_error("serve::adapter_registry: budget " + std::to_string(bytes) + " bytes is below the " +
                        std::to_string(pinned) + " bytes of pinned adapters");
    budget_ = bytes;
    evict_for(0, nullptr);
  }

  // Resident names, least recently used first.
  std::vector<std::string> resident_names() const {
    std::shared_lock lk(mu_);
    std::vector<std::pair<std::uint64_t, std::string>> v;
    for (auto& [n, e] : entries_)
      if (e->data) v.emplace_back(e->last_use.load(std::memory_order_relaxed), n);
    std::sort(v.begin(), v.end());
    std::vector<std::string> out;
    for (auto& [t, n] : v) out.push_back(n);
    return out;
  }

  registry_stats stats() const {
    std::shared_lock lk(mu_);
    registry_stats s;
    s.hits = hits_.load();
    s.misses = misses_.load();
    s.loads = loads_.load();
    s.load_failures = failures_.load();
    s.evictions = evictions_;
    s.bytes = bytes_;
    s.budget = budget_;
    s.registered = entries_.size();
    for (auto& [n, e] : entries_) s.resident += e->data ? 1 : 0;
    return s;
  }

  const base_weights<T>& base() const { return base_; }

 private:
  struct entry {
    loader src;
    handle data;
    std::size_t bytes = 0;
    bool pinned = false;
    std::uint64_t generation = 0;
    std::atomic<std::uint64_t> last_use{0};
    std::shared_future<handle> pending;
  };

  static value_error unknown(const std::string& name) {
    return value_error("serve::adapter_registry: no adapter named '" + name + "'");
  }

  // Called with mu_ held (shared or exclusive): the clock and counters are atomics.
  handle hit(entry& e) {
    e.last_use.store(clock_.fetch_add(1, std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    hits_.fetch_add(1, std::memory_order_relaxed);
    return e.data;
  }

  // Exclusive lock held.
  entry& slot(const std::string& name) {
    auto& p = entries_[name];
    if (!p) p = std::make_unique<entry>();
    return *p;
  }
  void drop(entry& e) {
    if (!e.data) return;
    bytes_ -= e.bytes;
    e.data.reset();
    e.bytes = 0;
  }
  // Evicts LRU unpinned adapters (other than `keep`) until `extra` more bytes fit. Throws
  // value_error, evicting nothing, when even evicting all of them would not make room.
  void evict_for(std::size_t extra, const entry* keep) {
    std::size_t freeable = 0;
    for (auto& [n, e] : entries_)
      if (e->data && !e->pinned && e.get() != keep) freeable += e->bytes;
    if (extra > budget_ || bytes_ - freeable > budget_ - extra)
      throw value_error("serve::adapter_registry: " + std::to_string(extra) + " bytes do not fit the budget of " +
                        std::to_string(budget_) + " bytes (" + std::to_string(bytes_ - freeable) +
                        " held by pinned or in-use-by-this-call adapters)");
    while (bytes_ > budget_ - extra) {
      entry* victim = nullptr;
      for (auto& [n, e] : entries_)
        if (e->data && !e->pinned && e.get() != keep &&
            (!victim || e->last_use.load(std::memory_order_relaxed) < victim->last_use.load(std::memory_order_relaxed)))
          victim = e.get();
      drop(*victim);
      ++evictions_;
    }
  }
  // Makes h the resident adapter of e (replacing any), evicting others to fit. Exclusive lock.
  void put(const std::string& name, entry& e, const handle& h) {
    const std::size_t b = h->bytes();
    const std::size_t old = e.data ? e.bytes : 0;
    // The replaced copy is not counted against the new one.
    bytes_ -= old;
    try {
      evict_for(b, &e);
    } catch (...) {
      bytes_ += old;
      throw;
    }
    e.data = h;
    e.bytes = b;
    bytes_ += b;
    e.last_use.store(clock_.fetch_add(1, std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    (void)name;
  }

  void check_fits(const std::string& name, const served_adapter<T>& a) const {
    for (auto& [path, l] : a.layers) {
      auto it = base_.find(path);
      if (it == base_.end())
        throw value_error("serve::adapter_registry: adapter '" + name + "' adapts '" + path +
                          "', which is not a Linear layer of the base model");
      if (it->second.dim(0) != l.out || it->second.dim(1) != l.in)
        throw shape_error("serve::adapter_registry: adapter '" + name + "' layer '" + path + "' is [" +
                          std::to_string(l.out) + "," + std::to_string(l.in) + "], the base weight is " +
                          shape_str(it->second.shape()));
    }
  }

  // Runs a loader with no lock held.
  handle run(const loader& fn, const std::string& name) {
    try {
      served_adapter<T> a = fn();
      check_fits(name, a);
      a.name = name;
      loads_.fetch_add(1, std::memory_order_relaxed);
      return std::make_shared<const served_adapter<T>>(std::move(a));
    } catch (...) {
      failures_.fetch_add(1, std::memory_order_relaxed);
      throw;
    }
  }

  loader file_loader(const std::string& name, const std::string& path) const {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (fs::is_directory(path, ec))
      return [this, path] { return read_peft_adapter<T>(path, base_); };
    if (fs::is_regular_file(path, ec)) {
      if (!llama_)
        throw value_error("serve::adapter_registry: '" + name + "' from GGUF '" + path +
                          "' needs an nn::llama base model (for the q/k row order)");
      return [this, path] { return read_gguf_lora<T>(path, base_, *llama_); };
    }
    throw io_error("serve::adapter_registry: adapter '" + name + "': '" + path +
                   "' is neither a PEFT adapter directory nor a GGUF file");
  }

  const base_weights<T> base_;
  std::optional<nn::llama_config> llama_;
  mutable std::shared_mutex mu_;
  std::unordered_map<std::string, std::unique_ptr<entry>> entries_;
  std::size_t budget_;
  std::size_t bytes_ = 0;
  std::uint64_t evictions_ = 0;
  std::atomic<std::uint64_t> clock_{0}, hits_{0}, misses_{0}, loads_{0}, failures_{0};
};

}  // namespace peft::serve
