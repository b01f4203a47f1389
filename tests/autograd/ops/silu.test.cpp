#include <catch2/catch.hpp>

#include <cmath>

#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/silu.hpp"

using namespace peft;
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

TEST_CASE("silu forward and gradient by hand", "[autograd][ops][silu]") {
  // y = a·σ(a), σ(a) = 1/(1+e^-a): σ(1) = 0.731058579, σ(2.5) = 0.924141820
  //   → silu(1) = 0.731058579, silu(-1) = -0.268941421, silu(2.5) = 2.310354550
  // dy/da = σ(a)·(1 + a·(1 - σ(a))): 0.927670512 at 1, 0.072329488 at -1, 1.099401111 at 2.5
  auto a = parameter<float>(make_tensor<float>({4}, {1, -1, 2.5f, 0}));
  auto y = silu(a);
  REQUIRE_THAT(y.value()(0), WithinRel(0.731058579f, 1e-6f));
  REQUIRE_THAT(y.value()(1), WithinRel(-0.268941421f, 1e-6f));
  REQUIRE_THAT(y.value()(2), WithinRel(2.310354550f, 1e-6f));
  REQUIRE(y.value()(3) == 0.f);
  y.backward(ones<float>({4}));
  REQUIRE_THAT(a.grad()(0), WithinRel(0.927670512f, 1e-5f));
  REQUIRE_THAT(a.grad()(1), WithinRel(0.072329488f, 1e-5f));
  REQUIRE_THAT(a.grad()(2), WithinRel(1.099401111f, 1e-5f));
  REQUIRE_THAT(a.grad()(3), WithinAbs(0.5f, 1e-7f));
}

TEST_CASE("silu saturates without NaN", "[autograd][ops][silu]") {
  // silu(-100) ≈ -100·e^-100 ≈ 0, silu(100) ≈ 100; the gradients tend to 0 and 1
  auto a = parameter<float>(make_tensor<float>({2}, {-100, 100}));
  auto y = silu(a);
  REQUIRE_THAT(y.value()(0), WithinAbs(0.f, 1e-6f));
  REQUIRE_THAT(y.value()(1), WithinRel(100.f, 1e-6f));
  y.backward(ones<float>({2}));
  REQUIRE_THAT(a.grad()(0), WithinAbs(0.f, 1e-6f));
  REQUIRE_THAT(a.grad()(1), WithinRel(1.f, 1e-6f));
}

TEST_CASE("silu of an undefined variable names the op", "[autograd][ops][silu]") {
  REQUIRE_THROWS_AS(silu(variable<double>()), value_error);
  REQUIRE_THROWS_WITH(silu(variable<double>()), Catch::Contains("silu"));
}

TEST_CASE("silu gradcheck", "[autograd][ops][silu][gradcheck]") {
  rng g(18);
  auto a = parameter<double>(randn<double>({3, 5}, g, 0.0, 2.0));
  auto r = grad_check([](auto& in) { return silu(in[0]); }, {a});
  INFO(r.report);
  REQUIRE(r.ok);
  REQUIRE(r.checked == 15);
}
