#include <catch2/catch.hpp>

#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/log.hpp"

using namespace peft;
using Catch::Matchers::WithinRel;

TEST_CASE("log forward and gradient by hand", "[autograd][ops][log]") {
  // y = ln a: ln 1 = 0, ln 2 = 0.693147181, ln 0.5 = -0.693147181; dy/da = 1/a
  auto a = parameter<float>(make_tensor<float>({3}, {1, 2, 0.5f}));
  auto y = log(a);
  REQUIRE(y.value()(0) == 0.f);
  REQUIRE_THAT(y.value()(1), WithinRel(0.693147181f, 1e-6f));
  REQUIRE_THAT(y.value()(2), WithinRel(-0.693147181f, 1e-6f));
  y.backward(ones<float>({3}));
  REQUIRE(a.grad()(1) == 0.5f);
  REQUIRE(a.grad()(2) == 2.f);
  // IEEE at the edge of the domain: ln 0 = -inf
  REQUIRE(std::isinf(log(constant<float>(zeros<float>({1}))).value()(0)));
}

TEST_CASE("log of an undefined variable names the op", "[autograd][ops][log]") {
  REQUIRE_THROWS_AS(log(variable<double>()), value_error);
  REQUIRE_THROWS_WITH(log(variable<double>()), Catch::Contains("log"));
}

TEST_CASE("log gradcheck", "[autograd][ops][log][gradcheck]") {
  rng g(13);
  auto a = parameter<double>(rand_uniform<double>({3, 4}, g, 0.2, 3.0));
  auto r = grad_check([](auto& in) { return log(in[0]); }, {a});
  INFO(r.report);
  REQUIRE(r.ok);
  REQUIRE(r.checked == 12);
}
