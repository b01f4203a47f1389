#include <catch2/catch.hpp>

#include <cmath>

#include "peft/core/random.hpp"

using namespace peft;
using Catch::Matchers::WithinAbs;

TEST_CASE("same seed gives the same bits; different seeds differ", "[core][random]") {
  rng a(42), b(42), c(43);
  for (int i = 0; i < 100; ++i) {
    const auto x = a.next_u64();
    REQUIRE(x == b.next_u64());
    (void)c;
  }
  rng d(42), e(43);
  int same = 0;
  for (int i = 0; i < 100; ++i) same += d.next_u64() == e.next_u64();
  REQUIRE(same == 0);
}

TEST_CASE("state save and restore reproduces the stream", "[core][random]") {
  rng a(7);
  a.normal();
  auto s = a.state();
  const double x = a.normal();
  rng b(0);
  b.set_state(s);
  REQUIRE(b.normal() == x);
  REQUIRE_THROWS_AS(b.set_state({0, 0, 0, 0}), value_error);
}

TEST_CASE("fork gives independent reproducible streams", "[core][random]") {
  rng a(1);
  REQUIRE(a.fork(3).next_u64() == a.fork(3).next_u64());
  REQUIRE(a.fork(3).next_u64() != a.fork(4).next_u64());
}

TEST_CASE("normal and uniform have the right moments", "[core][random]") {
  rng g(123);
  const int n = 200000;
  double s = 0, s2 = 0, u = 0;
  for (int i = 0; i < n; ++i) {
    const double x = g.normal();
    s += x;
    s2 += x * x;
    u += g.uniform();
  }
  REQUIRE_THAT(s / n, WithinAbs(0.0, 0.01));
  REQUIRE_THAT(s2 / n, WithinAbs(1.0, 0.01));
  REQUIRE_THAT(u / n, WithinAbs(0.5, 0.005));
}

TEST_CASE("uniform_int stays in range and covers it", "[core][random]") {
  rng g(5);
  std::vector<int> hits(7, 0);
  for (int i = 0; i < 7000; ++i) {
    auto k = g.uniform_int(7);
    REQUIRE(k < 7);
    hits[k]++;
  }
  for (int h : hits) REQUIRE(h > 800);
  REQUIRE_THROWS_AS(g.uniform_int(0), value_error);
}

TEST_CASE("kaiming_uniform with a=sqrt(5) is nn.Linear's bound 1/sqrt(fan_in)", "[core][random]") {
  // PyTorch: bound = sqrt(2/(1+a^2)) * sqrt(3/fan_in); a = sqrt(5) -> 1/sqrt(fan_in).
  rng g(9);
  tensor<double> w = zeros<double>({64, 100});
  fill_kaiming_uniform(w, std::sqrt(5.0), g);
  double mx = 0;
  for (double v : w) mx = std::max(mx, std::abs(v));
  REQUIRE(mx <= 0.1);
  REQUIRE(mx > 0.099);
}
