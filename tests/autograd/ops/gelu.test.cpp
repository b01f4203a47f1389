#include <catch2/catch.hpp>

#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/gelu.hpp"

using namespace peft;
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

TEST_CASE("gelu (exact, erf) forward and gradient by hand", "[autograd][ops][gelu]") {
  // y = 0.5·a·(1 + erf(a/√2)) = a·Φ(a): Φ(1) = 0.841344746, Φ(2) = 0.977249868,
  //   Φ(-3) = 0.001349898 → gelu(1) = 0.841344746, gelu(-1) = -0.158655254,
  //   gelu(2) = 1.954499736, gelu(-3) = -0.004049694
  // dy/da = 0.5·(1 + erf(a/√2)) + a·e^(-a²/2)/√(2π): 1.083315471 at 1, -0.083315471 at -1,
  //   1.085231801 at 2, -0.011945647 at -3
  auto a = parameter<float>(make_tensor<float>({5}, {1, -1, 2, -3, 0}));
  auto y = gelu(a);
  REQUIRE_THAT(y.value()(0), WithinRel(0.841344746f, 1e-6f));
  REQUIRE_THAT(y.value()(1), WithinRel(-0.158655254f, 1e-5f));
  REQUIRE_THAT(y.value()(2), WithinRel(1.954499736f, 1e-6f));
  REQUIRE_THAT(y.value()(3), WithinRel(-0.004049694f, 1e-4f));
  REQUIRE(y.value()(4) == 0.f);
  y.backward(ones<float>({5}));
  REQUIRE_THAT(a.grad()(0), WithinRel(1.083315471f, 1e-5f));
  REQUIRE_THAT(a.grad()(1), WithinRel(-0.083315471f, 1e-5f));
  REQUIRE_THAT(a.grad()(2), WithinRel(1.085231801f, 1e-5f));
  REQUIRE_THAT(a.grad()(3), WithinRel(-0.011945647f, 1e-4f));
  REQUIRE_THAT(a.grad()(4), WithinAbs(0.5f, 1e-7f));
}

TEST_CASE("gelu (tanh approximation) forward by hand", "[autograd][ops][gelu]") {
  // y = 0.5·a·(1 + tanh(√(2/π)·(a + 0.044715·a³))):
  //   0.841191991 at 1, -0.158808009 at -1, 1.954597694 at 2, -0.003637392 at -3
  auto a = constant<float>(make_tensor<float>({4}, {1, -1, 2, -3}));
  auto y = gelu(a, gelu_approx::tanh);
  REQUIRE_THAT(y.value()(0), WithinRel(0.841191991f, 1e-6f));
  REQUIRE_THAT(y.value()(1), WithinRel(-0.158808009f, 1e-5f));
  REQUIRE_THAT(y.value()(2), WithinRel(1.954597694f, 1e-6f));
  REQUIRE_THAT(y.value()(3), WithinRel(-0.003637392f, 1e-4f));
  // the two forms differ (by ~1.5e-4 at 1): the flag is honoured
  REQUIRE(gelu(a).value()(0) != y.value()(0));
}

TEST_CASE("gelu of an undefined variable names the op", "[autograd][ops][gelu]") {
  REQUIRE_THROWS_AS(gelu(variable<double>()), value_error);
  REQUIRE_THROWS_WITH(gelu(variable<double>(), gelu_approx::tanh), Catch::Contains("gelu"));
}

TEST_CASE("gelu gradcheck", "[autograd][ops][gelu][gradcheck]") {
  rng g(17);
  auto a = parameter<double>(randn<double>({3, 5}, g, 0.0, 2.0));
  SECTION("exact") {
    auto r = grad_check([](auto& in) { return gelu(in[0]); }, {a});
    INFO(r.report);
    REQUIRE(r.ok);
    REQUIRE(r.checked == 15);
  }
  SECTION("tanh") {
    auto r = grad_check([](auto& in) { return gelu(in[0], gelu_approx::tanh); }, {a});
    INFO(r.report);
    REQUIRE(r.ok);
    REQUIRE(r.checked == 15);
  }
}
