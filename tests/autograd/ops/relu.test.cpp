#include <catch2/catch.hpp>

#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/relu.hpp"

using namespace peft;

TEST_CASE("relu forward and gradient by hand", "[autograd][ops][relu]") {
  // y = max(a, 0); dy/da = 1 if a > 0 else 0 (0 at a = 0)
  auto a = parameter<float>(make_tensor<float>({2, 2}, {-1.5f, 0, 2, 0.25f}));
  auto y = relu(a);
  REQUIRE(y.value()(0, 0) == 0.f);
  REQUIRE(y.value()(0, 1) == 0.f);
  REQUIRE(y.value()(1, 0) == 2.f);
  REQUIRE(y.value()(1, 1) == 0.25f);
  y.backward(make_tensor<float>({2, 2}, {5, 6, 7, 8}));
  REQUIRE(a.grad()(0, 0) == 0.f);
  REQUIRE(a.grad()(0, 1) == 0.f);
  REQUIRE(a.grad()(1, 0) == 7.f);
  REQUIRE(a.grad()(1, 1) == 8.f);
}

TEST_CASE("relu of an undefined variable names the op", "[autograd][ops][relu]") {
  REQUIRE_THROWS_AS(relu(variable<double>()), value_error);
  REQUIRE_THROWS_WITH(relu(variable<double>()), Catch::Contains("relu"));
}

TEST_CASE("relu gradcheck", "[autograd][ops][relu][gradcheck]") {
  // Inputs kept away from the kink at 0, where finite differences are meaningless.
  rng g(16);
  auto t = randn<double>({3, 5}, g);
  for (auto& v : t) v += v < 0 ? -0.1 : 0.1;
  auto a = parameter<double>(t);
  auto r = grad_check([](auto& in) { return relu(in[0]); }, {a});
  INFO(r.report);
  REQUIRE(r.ok);
  REQUIRE(r.checked == 15);
}
