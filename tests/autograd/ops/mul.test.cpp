#include <catch2/catch.hpp>

#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/mul.hpp"

using namespace peft;
using Catch::Matchers::WithinAbs;

TEST_CASE("mul forward, broadcasting and scalars", "[autograd][ops][mul]") {
  // a = [[1,2,3],[4,5,6]]; y = a * b elementwise
  auto a = constant<float>(make_tensor<float>({2, 3}, {1, 2, 3, 4, 5, 6}));
  auto b = constant<float>(make_tensor<float>({3}, {10, 20, 30}));
  auto y = a * b;
  REQUIRE(y.shape() == shape_t{2, 3});
  REQUIRE(y.value()(1, 2) == 6.f * 30.f);
  REQUIRE(y.value()(0, 1) == 2.f * 20.f);
  auto c = constant<float>(make_tensor<float>({2, 1}, {100, 200}));
  REQUIRE((c * a).value()(1, 0) == 800.f);
  REQUIRE((a * a).value()(1, 1) == 25.f);  // equal shapes (Eigen path)
  REQUIRE((a * 3.f).value()(1, 2) == 18.f);
  REQUIRE((0.5f * a).value()(0, 0) == 0.5f);
  REQUIRE(mul(a, -1.f).value()(0, 2) == -3.f);
}

TEST_CASE("mul gradients by hand", "[autograd][ops][mul]") {
  // y = a * b, b [3] broadcast over 2 rows, seed 1: dL/da[i,j] = b[j], dL/db[j] = Σ_i a[i,j].
  auto a = parameter<float>(make_tensor<float>({2, 3}, {1, 2, 3, 4, 5, 6}));
  auto b = parameter<float>(make_tensor<float>({3}, {10, 20, 30}));
  (a * b).backward(ones<float>({2, 3}));
  REQUIRE(a.grad()(1, 2) == 30.f);
  REQUIRE(b.grad()(0) == 1.f + 4.f);
  REQUIRE(b.grad()(2) == 3.f + 6.f);
  // x * x: d/dx = 2x (the same node reached through both parents)
  auto x = parameter<float>(make_tensor<float>({2}, {3, -4}));
  (x * x).backward(ones<float>({2}));
  REQUIRE(x.grad()(1) == -8.f);
}

TEST_CASE("mul with incompatible shapes names both", "[autograd][ops][mul]") {
  auto a = constant<float>(zeros<float>({2, 3}));
  auto b = constant<float>(zeros<float>({2}));
  REQUIRE_THROWS_AS(mul(a, b), shape_error);
  REQUIRE_THROWS_WITH(a * b, Catch::Contains("mul") && Catch::Contains("[2,3]") &&
                                 Catch::Contains("[2]"));
  REQUIRE_THROWS_WITH(variable<float>() * a, Catch::Contains("mul"));
}

TEST_CASE("mul gradcheck", "[autograd][ops][mul][gradcheck]") {
  rng g(5);
  SECTION("b broadcast") {
    auto a = parameter<double>(randn<double>({2, 3, 4}, g));
    auto b = parameter<double>(randn<double>({3, 1}, g));
    auto r = grad_check([](auto& in) { return in[0] * in[1]; }, {a, b});
    INFO(r.report);
    REQUIRE(r.ok);
    REQUIRE(r.checked == 24 + 3);
  }
  SECTION("a broadcast, and both broadcast") {
    auto a = parameter<double>(randn<double>({2, 1, 4}, g));
    auto b = parameter<double>(randn<double>({3, 1}, g));
    auto r = grad_check([](auto& in) { return in[1] * in[0]; }, {a, b});
    INFO(r.report);
    REQUIRE(r.ok);
  }
  SECTION("equal shapes, 0-d operand, scalars, reuse") {
    auto a = parameter<double>(randn<double>({3, 4}, g));
    auto b = parameter<double>(randn<double>({3, 4}, g));
    auto s = parameter<double>(randn<double>({}, g));
    auto r = grad_check([](auto& in) { return 2.0 * (in[0] * in[1]) * in[2] * in[0] * -0.5; },
                        {a, b, s});
    INFO(r.report);
    REQUIRE(r.ok);
    REQUIRE(r.checked == 12 + 12 + 1);
  }
}

TEST_CASE("mul does not give constants a gradient", "[autograd][ops][mul]") {
  auto a = parameter<double>(ones<double>({2, 2}));
  auto b = constant<double>(ones<double>({2}));
  (a * b).backward(ones<double>({2, 2}));
  REQUIRE(a.has_grad());
  REQUIRE_FALSE(b.has_grad());
}
