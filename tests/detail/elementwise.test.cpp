// detail/elementwise.hpp: passes split over threads give the serial loop's bits.
#include <catch2/catch.hpp>

#include <cstring>

#include "peft/core/random.hpp"
#include "peft/core/threads.hpp"
#include "peft/detail/elementwise.hpp"

using namespace peft;

TEMPLATE_TEST_CASE("scale_in_place equals x *= a bit for bit at any thread count", "[detail]",
                   float, double) {
  // Sizes below, at and above the parallel threshold, and one that does not split evenly.
  const Eigen::Index big = detail::parallel_min_elements;
  for (Eigen::Index n : {Eigen::Index(0), Eigen::Index(7), big - 1, big, 3 * big + 5}) {
    rng g(std::uint64_t(n) + 1);
    vector<TestType> x(n);
    for (Eigen::Index i = 0; i < n; ++i) x[i] = TestType(g.normal());
    vector<TestType> want = x;
    const TestType a = TestType(0.9973);
    want.array() *= a;
    for (int threads : {1, 2, 3}) {
      set_num_threads(threads);
      vector<TestType> y = x;
      detail::scale_in_place(vector_map<TestType>(y.data(), y.size()), a);
      INFO("n = " << n << ", threads = " << threads);
      REQUIRE(std::memcmp(y.data(), want.data(), std::size_t(n) * sizeof(TestType)) == 0);
    }
  }
  set_num_threads(1);
}
