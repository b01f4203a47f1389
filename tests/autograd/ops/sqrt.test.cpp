#include <catch2/catch.hpp>

#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/sqrt.hpp"

using namespace peft;
using Catch::Matchers::WithinRel;

TEST_CASE("sqrt forward and gradient by hand", "[autograd][ops][sqrt]") {
  // y = √a: √4 = 2, √2 = 1.414213562, √0.25 = 0.5; dy/da = 1/(2√a)
  auto a = parameter<float>(make_tensor<float>({3}, {4, 2, 0.25f}));
  auto y = sqrt(a);
  REQUIRE(y.value()(0) == 2.f);
  REQUIRE_THAT(y.value()(1), WithinRel(1.414213562f, 1e-6f));
  REQUIRE(y.value()(2) == 0.5f);
  y.backward(ones<float>({3}));
  REQUIRE(a.grad()(0) == 0.25f);
  REQUIRE_THAT(a.grad()(1), WithinRel(0.5f / 1.414213562f, 1e-6f));
  REQUIRE(a.grad()(2) == 1.f);
}

TEST_CASE("sqrt of an undefined variable names the op", "[autograd][ops][sqrt]") {
  REQUIRE_THROWS_AS(sqrt(variable<double>()), value_error);
  REQUIRE_THROWS_WITH(sqrt(variable<double>()), Catch::Contains("sqrt"));
}

TEST_CASE("sqrt gradcheck", "[autograd][ops][sqrt][gradcheck]") {
  rng g(14);
  auto a = parameter<double>(rand_uniform<double>({3, 4}, g, 0.2, 3.0));
  auto r = grad_check([](auto& in) { return sqrt(in[0]); }, {a});
  INFO(r.report);
  REQUIRE(r.ok);
  REQUIRE(r.checked == 12);
}
