#include <catch2/catch.hpp>

#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/neg.hpp"

using namespace peft;

TEST_CASE("neg forward and gradient by hand", "[autograd][ops][neg]") {
  // y = -a, dy/da = -1
  auto a = parameter<float>(make_tensor<float>({2, 2}, {1, -2, 0.5f, 0}));
  auto y = -a;
  REQUIRE(y.shape() == shape_t{2, 2});
  REQUIRE(y.value()(0, 0) == -1.f);
  REQUIRE(y.value()(0, 1) == 2.f);
  REQUIRE(neg(a).value()(1, 0) == -0.5f);
  y.backward(make_tensor<float>({2, 2}, {1, 2, 3, 4}));
  REQUIRE(a.grad()(1, 1) == -4.f);
}

TEST_CASE("neg of an undefined variable names the op", "[autograd][ops][neg]") {
  REQUIRE_THROWS_AS(neg(variable<float>()), value_error);
  REQUIRE_THROWS_WITH(-variable<float>(), Catch::Contains("neg"));
}

TEST_CASE("neg gradcheck", "[autograd][ops][neg][gradcheck]") {
  rng g(11);
  auto a = parameter<double>(randn<double>({3, 4}, g));
  auto r = grad_check([](auto& in) { return -(-neg(in[0])); }, {a});
  INFO(r.report);
  REQUIRE(r.ok);
  REQUIRE(r.checked == 12);
}
