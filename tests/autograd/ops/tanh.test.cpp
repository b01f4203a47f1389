#include <catch2/catch.hpp>

#include <cmath>

#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/tanh.hpp"

using namespace peft;
using Catch::Matchers::WithinRel;

TEST_CASE("tanh forward and gradient by hand", "[autograd][ops][tanh]") {
  // y = tanh(a): tanh(0.5) = 0.462117157, tanh(-2) = -0.964027580; dy/da = 1 - y²
  auto a = parameter<float>(make_tensor<float>({3}, {0.5f, -2, 0}));
  auto y = tanh(a);
  REQUIRE_THAT(y.value()(0), WithinRel(0.462117157f, 1e-6f));
  REQUIRE_THAT(y.value()(1), WithinRel(-0.964027580f, 1e-6f));
  REQUIRE(y.value()(2) == 0.f);
  y.backward(ones<float>({3}));
  REQUIRE_THAT(a.grad()(0), WithinRel(0.786447733f, 1e-6f));  // 1 - 0.462117157²
  REQUIRE_THAT(a.grad()(1), WithinRel(1.f - 0.964027580f * 0.964027580f, 1e-4f));
  REQUIRE(a.grad()(2) == 1.f);
  // saturates: tanh(±50) = ±1, no NaN
  auto big = tanh(constant<float>(make_tensor<float>({2}, {-50, 50})));
  REQUIRE(big.value()(0) == -1.f);
  REQUIRE(big.value()(1) == 1.f);
  REQUIRE(std::tanh(0.0) == 0.0);  // std::tanh on numbers is unaffected
}

TEST_CASE("tanh of an undefined variable names the op", "[autograd][ops][tanh]") {
  REQUIRE_THROWS_AS(tanh(variable<double>()), value_error);
  REQUIRE_THROWS_WITH(tanh(variable<double>()), Catch::Contains("tanh"));
}

TEST_CASE("tanh gradcheck", "[autograd][ops][tanh][gradcheck]") {
  rng g(20);
  auto a = parameter<double>(randn<double>({3, 5}, g, 0.0, 1.5));
  auto r = grad_check([](auto& in) { return tanh(in[0]); }, {a});
  INFO(r.report);
  REQUIRE(r.ok);
  REQUIRE(r.checked == 15);
}
