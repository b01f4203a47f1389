#include <catch2/catch.hpp>

#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/pow.hpp"

using namespace peft;
using Catch::Matchers::WithinRel;

TEST_CASE("pow forward and gradient by hand", "[autograd][ops][pow]") {
  // y = a^p, dy/da = p·a^(p-1)
  auto a = parameter<float>(make_tensor<float>({3}, {2, -3, 0.5f}));
  auto sq = pow(a, 2.f);  // 4, 9, 0.25
  REQUIRE(sq.value()(0) == 4.f);
  REQUIRE(sq.value()(1) == 9.f);
  REQUIRE(sq.value()(2) == 0.25f);
  sq.backward(ones<float>({3}));  // 2a = 4, -6, 1
  REQUIRE(a.grad()(1) == -6.f);
  REQUIRE(a.grad()(2) == 1.f);

  auto b = parameter<float>(make_tensor<float>({2}, {2, 4}));
  auto y = pow(b, 1.5f);  // 2^1.5 = 2.828427125, 4^1.5 = 8
  REQUIRE_THAT(y.value()(0), WithinRel(2.828427125f, 1e-6f));
  REQUIRE_THAT(y.value()(1), WithinRel(8.f, 1e-6f));
  y.backward(ones<float>({2}));  // 1.5·√a = 2.121320344, 3
  REQUIRE_THAT(b.grad()(0), WithinRel(2.121320344f, 1e-6f));
  REQUIRE_THAT(b.grad()(1), WithinRel(3.f, 1e-6f));

  // p = 0: y = 1 and the gradient is exactly 0, even at a = 0 (not 0·inf = NaN).
  auto z = parameter<float>(make_tensor<float>({2}, {0, 5}));
  auto one = pow(z, 0.f);
  REQUIRE(one.value()(0) == 1.f);
  one.backward(ones<float>({2}));
  REQUIRE(z.grad()(0) == 0.f);
  REQUIRE(z.grad()(1) == 0.f);
}

TEST_CASE("pow of an undefined variable names the op", "[autograd][ops][pow]") {
  REQUIRE_THROWS_AS(pow(variable<double>(), 2.0), value_error);
  REQUIRE_THROWS_WITH(pow(variable<double>(), 2.0), Catch::Contains("pow"));
}

TEST_CASE("pow gradcheck", "[autograd][ops][pow][gradcheck]") {
  rng g(15);
  auto a = parameter<double>(rand_uniform<double>({3, 4}, g, 0.3, 2.0));
  const double p = GENERATE(2.0, 3.0, 0.5, -1.5, 0.0, 1.0);
  INFO("p = " << p);
  auto r = grad_check([p](auto& in) { return pow(in[0], p); }, {a});
  INFO(r.report);
  REQUIRE(r.ok);
  REQUIRE(r.checked == 12);
  // integer exponents are fine for negative bases too
  auto b = parameter<double>(randn<double>({5}, g));
  auto r2 = grad_check([](auto& in) { return pow(in[0], 3.0); }, {b});
  INFO(r2.report);
  REQUIRE(r2.ok);
}
