#include <catch2/catch.hpp>

#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/exp.hpp"

using namespace peft;
using Catch::Matchers::WithinRel;

TEST_CASE("exp forward and gradient by hand", "[autograd][ops][exp]") {
  // y = e^a: e^0 = 1, e^1 = 2.718281828, e^-2 = 0.135335283; dy/da = e^a
  auto a = parameter<float>(make_tensor<float>({3}, {0, 1, -2}));
  auto y = exp(a);
  REQUIRE(y.value()(0) == 1.f);
  REQUIRE_THAT(y.value()(1), WithinRel(2.718281828f, 1e-6f));
  REQUIRE_THAT(y.value()(2), WithinRel(0.135335283f, 1e-6f));
  y.backward(make_tensor<float>({3}, {1, 2, 1}));
  REQUIRE_THAT(a.grad()(1), WithinRel(2 * 2.718281828f, 1e-6f));
  REQUIRE_THAT(a.grad()(2), WithinRel(0.135335283f, 1e-6f));
  // std::exp on numbers is unaffected by peft::exp
  REQUIRE(std::exp(0.0) == 1.0);
}

TEST_CASE("exp of an undefined variable names the op", "[autograd][ops][exp]") {
  REQUIRE_THROWS_AS(exp(variable<double>()), value_error);
  REQUIRE_THROWS_WITH(exp(variable<double>()), Catch::Contains("exp"));
}

TEST_CASE("exp gradcheck", "[autograd][ops][exp][gradcheck]") {
  rng g(12);
  auto a = parameter<double>(randn<double>({2, 3, 2}, g));
  auto r = grad_check([](auto& in) { return exp(in[0]); }, {a});
  INFO(r.report);
  REQUIRE(r.ok);
  REQUIRE(r.checked == 12);
}
