#include <catch2/catch.hpp>

#include <cstdint>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "peft/core/allocator.hpp"
#include "peft/core/tensor.hpp"

using namespace peft;

namespace {

constexpr std::size_t mib = std::size_t{1} << 20;

// The cache is process-wide: every test starts from an empty cache at the default limit and
// compares counters before and after.
struct fresh_cache {
  fresh_cache() {
    set_tensor_cache_limit(detail::cache_default_limit);
    release_tensor_cache();
  }
  ~fresh_cache() {
    set_tensor_cache_limit(detail::cache_default_limit);
    release_tensor_cache();
  }
};

bool aligned64(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 64 == 0; }

}  // namespace

// An AddressSanitizer build sends every block to the system (detail::cache_bypassed): the tests
// of the cache's behaviour have nothing to check there.
#define PEFT_REQUIRE_CACHE()                                          \
  if constexpr (detail::cache_bypassed) {                            \
    WARN("AddressSanitizer build: tensor storage bypasses the cache"); \
    return;                                                          \
  }

TEST_CASE("a freed large block is handed out again and counted as a hit", "[core][allocator]") {
  PEFT_REQUIRE_CACHE();
  fresh_cache guard;
  caching_allocator<float> a;
  const std::size_t n = mib / sizeof(float);
  const auto s0 = tensor_cache_stats();
  CHECK(s0.bytes_cached == 0);

  float* p = a.allocate(n);
  auto s1 = tensor_cache_stats();
  CHECK(s1.misses == s0.misses + 1);
  CHECK(s1.hits == s0.hits);
  CHECK(s1.bytes_in_use == s0.bytes_in_use + mib);

  a.deallocate(p, n);
  auto s2 = tensor_cache_stats();
  CHECK(s2.bytes_cached == mib);
  CHECK(s2.bytes_in_use == s0.bytes_in_use);

  float* q = a.allocate(n);
  CHECK(q == p);
  auto s3 = tensor_cache_stats();
  CHECK(s3.hits == s0.hits + 1);
  CHECK(s3.misses == s0.misses + 1);
  CHECK(s3.bytes_cached == 0);
  a.deallocate(q, n);
}

TEST_CASE("large sizes round up to 8 classes per power of two", "[core][allocator]") {
  using detail::cache_size_class;
  CHECK(cache_size_class(std::size_t{64} << 10) == (std::size_t{64} << 10));
  CHECK(cache_size_class((std::size_t{64} << 10) + 1) == (std::size_t{72} << 10));
  CHECK(cache_size_class(mib) == mib);
  CHECK(cache_size_class(mib + 1) == mib + mib / 8);
  CHECK(cache_size_class(2 * mib - 1) == 2 * mib);
  CHECK(cache_size_class(3 * mib) == 3 * mib);
  for (std::size_t b = detail::cache_threshold; b < 64 * mib; b = b * 17 / 16 + 3) {
    const std::size_t c = cache_size_class(b);
    INFO(b << " -> " << c);
    CHECK(c >= b);
    CHECK(double(c - b) <= 0.125 * double(b));
    CHECK(cache_size_class(c) == c);  // a class is its own class
  }

  SECTION("sizes of one class share blocks") {
    PEFT_REQUIRE_CACHE();
    fresh_cache guard;
    caching_allocator<char> a;
    const std::size_t n1 = mib + 1000, n2 = mib + 100000;  // both round to 1.125 MiB
    REQUIRE(cache_size_class(n1) == cache_size_class(n2));
    char* p = a.allocate(n1);
    a.deallocate(p, n1);
    const auto s = tensor_cache_stats();
    CHECK(s.bytes_cached == mib + mib / 8);
    char* q = a.allocate(n2);
    CHECK(q == p);
    CHECK(tensor_cache_stats().hits == s.hits + 1);
    a.deallocate(q, n2);
  }
}

TEST_CASE("large blocks are 64-byte aligned; small ones bypass the cache", "[core][allocator]") {
  PEFT_REQUIRE_CACHE();
  fresh_cache guard;
  caching_allocator<double> a;
  std::vector<std::pair<double*, std::size_t>> blocks;
  for (std::size_t n : {8192, 8193, 100000, 300001, 1 << 20}) {
    blocks.emplace_back(a.allocate(n), n);
    CHECK(aligned64(blocks.back().first));
  }
  for (auto [p, n] : blocks) a.deallocate(p, n);

  const auto s = tensor_cache_stats();
  double* small = a.allocate(100);  // 800 bytes
  small[99] = 1.0;
  const auto s2 = tensor_cache_stats();
  CHECK(s2.hits == s.hits);
  CHECK(s2.misses == s.misses);
  CHECK(s2.bytes_in_use == s.bytes_in_use);
  a.deallocate(small, 100);
  CHECK(tensor_cache_stats().bytes_cached == s.bytes_cached);
}

TEST_CASE("blocks freed beyond the limit go back to the system", "[core][allocator]") {
  PEFT_REQUIRE_CACHE();
  fresh_cache guard;
  caching_allocator<char> a;
  set_tensor_cache_limit(mib + mib / 2);
  CHECK(tensor_cache_stats().limit == mib + mib / 2);
  char* p[3] = {a.allocate(mib), a.allocate(mib), a.allocate(mib)};
  for (char* x : p) a.deallocate(x, mib);
  CHECK(tensor_cache_stats().bytes_cached == mib);  // only one 1 MiB block fits

  SECTION("lowering the limit releases the excess at once") {
    set_tensor_cache_limit(mib / 2);
    CHECK(tensor_cache_stats().bytes_cached == 0);
  }
  SECTION("a block that fits is still kept") {
    char* q = a.allocate(mib / 4);
    a.deallocate(q, mib / 4);
    CHECK(tensor_cache_stats().bytes_cached == mib + mib / 4);
  }
}

TEST_CASE("a zero limit disables the cache; release empties it", "[core][allocator]") {
  PEFT_REQUIRE_CACHE();
  fresh_cache guard;
  caching_allocator<float> a;
  const std::size_t n = 2 * mib / sizeof(float);

  SECTION("release_tensor_cache returns every cached block") {
    float* p = a.allocate(n);
    float* q = a.allocate(n / 2);
    a.deallocate(p, n);
    a.deallocate(q, n / 2);
    CHECK(tensor_cache_stats().bytes_cached == 3 * mib);
    release_tensor_cache();
    const auto s = tensor_cache_stats();
    CHECK(s.bytes_cached == 0);
    float* r = a.allocate(n);  // nothing left to reuse
    CHECK(tensor_cache_stats().misses == s.misses + 1);
    a.deallocate(r, n);
    CHECK(tensor_cache_stats().bytes_cached == 2 * mib);  // caching still on
  }
  SECTION("set_tensor_cache_limit(0) releases and stops caching") {
    float* p = a.allocate(n);
    float* q = a.allocate(n);
    a.deallocate(p, n);
    CHECK(tensor_cache_stats().bytes_cached == 2 * mib);
    set_tensor_cache_limit(0);
    CHECK(tensor_cache_stats().bytes_cached == 0);
    a.deallocate(q, n);  // allocated while caching was on, freed while off
    CHECK(tensor_cache_stats().bytes_cached == 0);
    const auto s = tensor_cache_stats();
    float* r = a.allocate(n);
    a.deallocate(r, n);
    r = a.allocate(n);
    a.deallocate(r, n);
    const auto s2 = tensor_cache_stats();
    CHECK(s2.hits == s.hits);
    CHECK(s2.misses == s.misses + 2);
    CHECK(s2.bytes_cached == 0);
    CHECK(s2.bytes_in_use == s.bytes_in_use);
  }
}

TEST_CASE("allocation failure throws std::bad_alloc", "[core][allocator]") {
  PEFT_REQUIRE_CACHE();  // ASan aborts on a 4 EiB request instead of throwing
  fresh_cache guard;
  caching_allocator<float> a;
  const auto s = tensor_cache_stats();
  CHECK_THROWS_AS(a.allocate(std::size_t{1} << 60), std::bad_alloc);  // 4 EiB
  CHECK_THROWS_AS(a.allocate(std::size_t(-1) / 2), std::bad_alloc);  // overflows size_t bytes
  CHECK(tensor_cache_stats().bytes_in_use == s.bytes_in_use);
}

TEST_CASE("caching_allocator meets the allocator requirements", "[core][allocator]") {
  caching_allocator<float> f;
  caching_allocator<double> d(f);
  CHECK(f == caching_allocator<float>());
  CHECK(f == d);
  CHECK_FALSE(f != d);
  using traits = std::allocator_traits<caching_allocator<float>>;
  STATIC_REQUIRE(std::is_same_v<traits::rebind_alloc<int>, caching_allocator<int>>);
  STATIC_REQUIRE(traits::is_always_equal::value);
  std::vector<int, caching_allocator<int>> v;
  for (int i = 0; i < 100000; ++i) v.push_back(i);  // grows through both paths
  CHECK(v[99999] == 99999);
  if (!detail::cache_bypassed) CHECK(aligned64(v.data()));
}

TEST_CASE("threads allocating and freeing concurrently keep the books straight",
          "[core][allocator]") {
  PEFT_REQUIRE_CACHE();
  fresh_cache guard;
  const auto s0 = tensor_cache_stats();
  constexpr int n_threads = 4, iters = 300;
  std::vector<std::thread> pool;
  std::vector<int> bad(n_threads, 0);
  for (int t = 0; t < n_threads; ++t) {
    pool.emplace_back([t, &bad] {
      caching_allocator<std::uint32_t> a;
      std::vector<std::pair<std::uint32_t*, std::size_t>> held;
      for (int i = 0; i < iters; ++i) {
        const std::size_t n = (std::size_t(16384) << (i % 4)) + std::size_t(i % 7) * 4096;
        auto* p = a.allocate(n);
        const std::uint32_t tag = std::uint32_t(t * 100000 + i);
        p[0] = tag;
        p[n - 1] = tag;
        held.emplace_back(p, n);
        if (held.size() > 3) {  // free the oldest: it must still hold its own tag
          auto [q, m] = held.front();
          const std::uint32_t want = std::uint32_t(t * 100000 + i - 3);
          if (q[0] != want || q[m - 1] != want) ++bad[t];
          a.deallocate(q, m);
          held.erase(held.begin());
        }
      }
      for (auto [q, m] : held) a.deallocate(q, m);
    });
  }
  for (auto& th : pool) th.join();
  for (int t = 0; t < n_threads; ++t) CHECK(bad[t] == 0);
  const auto s = tensor_cache_stats();
  CHECK(s.bytes_in_use == s0.bytes_in_use);
  CHECK(s.hits + s.misses == s0.hits + s0.misses + std::size_t(n_threads * iters));
  CHECK(s.hits > s0.hits);
  CHECK(s.bytes_cached <= s.limit);
}

TEST_CASE("tensors use the cache and keep their values", "[core][allocator][tensor]") {
  PEFT_REQUIRE_CACHE();
  fresh_cache guard;
  const auto s0 = tensor_cache_stats();
  const float* first = nullptr;
  {
    tensor<float> t = zeros<float>({256, 512});  // 512 KiB
    first = t.data();
    CHECK(aligned64(first));
    CHECK(tensor_cache_stats().bytes_in_use == s0.bytes_in_use + 512 * 1024);
  }
  CHECK(tensor_cache_stats().bytes_cached == 512 * 1024);

  tensor<float> t(shape_t{256, 512});
  CHECK(t.data() == first);  // the freed block came back
  CHECK(tensor_cache_stats().hits == s0.hits + 1);
  for (std::size_t i = 0; i < t.size(); ++i) t.data()[i] = float(i % 1000) * 0.5f;
  tensor<float> u = t;  // copy: a second block
  CHECK(u.data() != t.data());
  tensor<float> w = u * 2.0f + 1.0f;  // xtensor expression evaluated into cached storage
  for (std::size_t i : {std::size_t(0), std::size_t(777), t.size() - 1}) {
    CHECK(u.data()[i] == float(i % 1000) * 0.5f);
    CHECK(w.data()[i] == float(i % 1000) * 1.0f + 1.0f);
  }
  as_matrix(u).array() += 1.0f;  // Eigen views work on it as before
  CHECK(u(255, 511) == t(255, 511) + 1.0f);

  tensor<double> small = make_tensor<double>({2, 2}, {1, 2, 3, 4});  // below the threshold
  CHECK(small(1, 1) == 4.0);
  t.resize(shape_t{512, 512});  // grows to 1 MiB: the old block goes back to the cache
  CHECK(tensor_cache_stats().bytes_cached >= 512 * 1024);
}

TEST_CASE("a tensor moved to another thread is freed there safely", "[core][allocator][tensor]") {
  PEFT_REQUIRE_CACHE();
  fresh_cache guard;
  const auto s0 = tensor_cache_stats();
  tensor<double> made_here = full<double>({300, 300}, 2.5);  // 720000 bytes
  const double* data = made_here.data();
  double sum = 0;
  const double* seen = nullptr;
  std::thread([t = std::move(made_here), &sum, &seen]() mutable {
    seen = t.data();
    for (double v : t) sum += v;
    tensor<double> gone = std::move(t);
  }).join();  // freed on the other thread
  CHECK(seen == data);  // moved, not copied
  CHECK(sum == 2.5 * 90000);
  const auto s1 = tensor_cache_stats();
  CHECK(s1.bytes_in_use == s0.bytes_in_use);
  CHECK(s1.bytes_cached > 0);

  // The block freed over there is reused here; and the other way round.
  tensor<double> back(shape_t{300, 300});
  CHECK(back.data() == data);
  tensor<double> from_thread;
  std::thread([&from_thread] { from_thread = full<double>({300, 300}, 1.0); }).join();
  CHECK(from_thread(299, 299) == 1.0);
  const std::size_t block = detail::cache_size_class(720000);
  CHECK(tensor_cache_stats().bytes_in_use == s0.bytes_in_use + 2 * block);
}
