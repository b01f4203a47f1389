#include <catch2/catch.hpp>

#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/dropout.hpp"

using namespace peft;
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

TEST_CASE("dropout mask is one uniform per element in row-major order",
          "[autograd][ops][dropout]") {
  rng g(7), ref(7);
  auto a = parameter<float>(make_tensor<float>({2, 3}, {1, 2, 3, 4, 5, 6}));
  auto y = dropout(a, 0.5, g, true);
  REQUIRE(y.shape() == shape_t{2, 3});
  std::vector<bool> kept(6);
  for (std::size_t i = 0; i < 6; ++i) {
    kept[i] = ref.uniform() >= 0.5;
    const float e = kept[i] ? 2.f * a.value().data()[i] : 0.f;
    CHECK(y.value().data()[i] == e);
  }
  CHECK(g == ref);  // exactly six draws
  // Backward applies the same mask and scale.
  y.backward(ones<float>({2, 3}));
  for (std::size_t i = 0; i < 6; ++i) CHECK(a.grad().data()[i] == (kept[i] ? 2.f : 0.f));
}

TEST_CASE("dropout keeps about 1-p of the elements, scaled", "[autograd][ops][dropout]") {
  rng g(8);
  auto a = constant<double>(ones<double>({100, 100}));
  const double p = 0.3;
  auto y = dropout(a, p, g, true);
  std::size_t kept = 0;
  for (double v : y.value()) {
    if (v != 0.0) {
      ++kept;
      REQUIRE_THAT(v, WithinRel(1.0 / 0.7, 1e-12));
    }
  }
  CHECK_THAT(double(kept) / 1e4, WithinAbs(0.7, 0.02));
}

TEST_CASE("dropout is the identity when not training or p == 0", "[autograd][ops][dropout]") {
  rng g(9);
  const auto before = g.state();
  auto a = parameter<float>(make_tensor<float>({2, 2}, {1, 2, 3, 4}));
  auto y = dropout(a, 0.5, g, false);
  CHECK(y.get() == a.get());
  auto y0 = dropout(a, 0.0, g, true);
  CHECK(y0.get() == a.get());
  CHECK(g.state() == before);  // no draws
}

TEST_CASE("dropout gradcheck with a fixed mask", "[autograd][ops][dropout][gradcheck]") {
  rng g(10);
  auto a = parameter<double>(randn<double>({3, 4}, g));
  auto r = grad_check(
      [](auto& in) {
        rng m(42);  // the same mask on every evaluation
        return dropout(in[0], 0.4, m, true);
      },
      {a});
  INFO(r.report);
  REQUIRE(r.ok);
  REQUIRE(r.checked == 12);
}

TEST_CASE("dropout with p outside [0, 1) throws", "[autograd][ops][dropout]") {
  rng g(11);
  auto a = constant<float>(zeros<float>({2, 3}));
  REQUIRE_THROWS_AS(dropout(a, 1.0, g, true), value_error);
  REQUIRE_THROWS_WITH(dropout(a, 1.0, g, true), Catch::Contains("dropout") &&
                                                    Catch::Contains("p = 1") &&
                                                    Catch::Contains("[2,3]"));
  REQUIRE_THROWS_WITH(dropout(a, -0.1, g, false), Catch::Contains("dropout"));
  REQUIRE_THROWS_AS(dropout(a, std::nan(""), g, true), value_error);
}
