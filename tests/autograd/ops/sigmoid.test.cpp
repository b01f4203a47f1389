#include <catch2/catch.hpp>

#include <cmath>

#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/sigmoid.hpp"

using namespace peft;
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

TEST_CASE("sigmoid forward and gradient by hand", "[autograd][ops][sigmoid]") {
  // y = 1/(1+e^-a): σ(0) = 0.5, σ(1) = 0.731058579, σ(-1) = 0.268941421
  // dy/da = σ(a)·(1-σ(a)): 0.25 at 0, 0.196611933 at ±1
  auto a = parameter<float>(make_tensor<float>({3}, {0, 1, -1}));
  auto y = sigmoid(a);
  REQUIRE(y.value()(0) == 0.5f);
  REQUIRE_THAT(y.value()(1), WithinRel(0.731058579f, 1e-6f));
  REQUIRE_THAT(y.value()(2), WithinRel(0.268941421f, 1e-6f));
  y.backward(ones<float>({3}));
  REQUIRE_THAT(a.grad()(0), WithinRel(0.25f, 1e-6f));
  REQUIRE_THAT(a.grad()(1), WithinRel(0.196611933f, 1e-5f));
  REQUIRE_THAT(a.grad()(2), WithinRel(0.196611933f, 1e-5f));
}

TEST_CASE("sigmoid saturates without NaN", "[autograd][ops][sigmoid]") {
  auto a = parameter<float>(make_tensor<float>({2}, {-200, 200}));
  auto y = sigmoid(a);
  REQUIRE_THAT(y.value()(0), WithinAbs(0.f, 1e-30f));
  REQUIRE(y.value()(1) == 1.f);
  y.backward(ones<float>({2}));
  REQUIRE(std::isfinite(a.grad()(0)));
  REQUIRE_THAT(a.grad()(1), WithinAbs(0.f, 1e-30f));
}

TEST_CASE("sigmoid of an undefined variable names the op", "[autograd][ops][sigmoid]") {
  REQUIRE_THROWS_AS(sigmoid(variable<double>()), value_error);
  REQUIRE_THROWS_WITH(sigmoid(variable<double>()), Catch::Contains("sigmoid"));
}

TEST_CASE("sigmoid gradcheck", "[autograd][ops][sigmoid][gradcheck]") {
  rng g(19);
  auto a = parameter<double>(randn<double>({3, 5}, g, 0.0, 2.0));
  auto r = grad_check([](auto& in) { return sigmoid(in[0]); }, {a});
  INFO(r.report);
  REQUIRE(r.ok);
  REQUIRE(r.checked == 15);
}
