#include <catch2/catch.hpp>

#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/add.hpp"
#include "peft/autograd/ops/div.hpp"

using namespace peft;
using Catch::Matchers::WithinRel;

TEST_CASE("div forward, broadcasting and scalars", "[autograd][ops][div]") {
  // a = [[1,2,3],[4,5,6]]; y = a / b elementwise
  auto a = constant<float>(make_tensor<float>({2, 3}, {1, 2, 3, 4, 5, 6}));
  auto b = constant<float>(make_tensor<float>({3}, {2, 4, 8}));
  auto y = a / b;
  REQUIRE(y.shape() == shape_t{2, 3});
  REQUIRE(y.value()(1, 2) == 6.f / 8.f);
  REQUIRE(y.value()(0, 1) == 2.f / 4.f);
  auto c = constant<float>(make_tensor<float>({2, 1}, {10, 20}));
  REQUIRE((c / a).value()(1, 0) == 20.f / 4.f);
  REQUIRE((a / a).value()(1, 1) == 1.f);  // equal shapes (Eigen path)
  REQUIRE((a / 4.f).value()(1, 2) == 1.5f);
  REQUIRE((6.f / a).value()(0, 2) == 2.f);
  REQUIRE(div(a, 2.f).value()(1, 0) == 2.f);
}

TEST_CASE("div gradients by hand", "[autograd][ops][div]") {
  // y = a / b, seed 1: dL/da = 1/b, dL/db = -a/b² (summed over the broadcast rows).
  auto a = parameter<float>(make_tensor<float>({2, 2}, {1, 2, 3, 4}));
  auto b = parameter<float>(make_tensor<float>({2}, {2, 4}));
  (a / b).backward(ones<float>({2, 2}));
  REQUIRE(a.grad()(1, 0) == 0.5f);
  REQUIRE(a.grad()(1, 1) == 0.25f);
  REQUIRE_THAT(b.grad()(0), WithinRel(-(1.f + 3.f) / 4.f, 1e-6f));   // -(1+3)/2²
  REQUIRE_THAT(b.grad()(1), WithinRel(-(2.f + 4.f) / 16.f, 1e-6f));  // -(2+4)/4²
  // s / x: d/dx = -s/x²
  auto x = parameter<float>(make_tensor<float>({2}, {2, -4}));
  (8.f / x).backward(ones<float>({2}));
  REQUIRE(x.grad()(0) == -2.f);
  REQUIRE(x.grad()(1) == -0.5f);
}

TEST_CASE("div with incompatible shapes names both", "[autograd][ops][div]") {
  auto a = constant<float>(ones<float>({2, 3}));
  auto b = constant<float>(ones<float>({3, 2}));
  REQUIRE_THROWS_AS(div(a, b), shape_error);
  REQUIRE_THROWS_WITH(a / b, Catch::Contains("div") && Catch::Contains("[2,3]") &&
                                 Catch::Contains("[3,2]"));
  REQUIRE_THROWS_WITH(a / variable<float>(), Catch::Contains("div"));
}

TEST_CASE("div gradcheck", "[autograd][ops][div][gradcheck]") {
  rng g(7);
  SECTION("b broadcast") {
    auto a = parameter<double>(randn<double>({2, 3, 4}, g));
    auto b = parameter<double>(rand_uniform<double>({3, 1}, g, 0.5, 2.0));
    auto r = grad_check([](auto& in) { return in[0] / in[1]; }, {a, b});
    INFO(r.report);
    REQUIRE(r.ok);
    REQUIRE(r.checked == 24 + 3);
  }
  SECTION("a broadcast, and both broadcast") {
    auto a = parameter<double>(rand_uniform<double>({2, 1, 4}, g, 0.5, 2.0));
    auto b = parameter<double>(rand_uniform<double>({3, 1}, g, -2.0, -0.5));
    auto r1 = grad_check([](auto& in) { return in[1] / in[0]; }, {a, b});
    INFO(r1.report);
    REQUIRE(r1.ok);
    auto c = parameter<double>(randn<double>({4}, g));
    auto d = parameter<double>(rand_uniform<double>({2, 3, 4}, g, 0.5, 2.0));
    auto r2 = grad_check([](auto& in) { return in[0] / in[1]; }, {c, d});
    INFO(r2.report);
    REQUIRE(r2.ok);
  }
  SECTION("equal shapes, 0-d operand, scalars") {
    auto a = parameter<double>(randn<double>({3, 4}, g));
    auto b = parameter<double>(rand_uniform<double>({3, 4}, g, 0.5, 2.0));
    auto s = parameter<double>(rand_uniform<double>({}, g, 1.0, 2.0));
    auto r = grad_check([](auto& in) { return 3.0 / ((in[0] / in[1]) / in[2] + 4.0) / 0.7; },
                        {a, b, s});
    INFO(r.report);
    REQUIRE(r.ok);
    REQUIRE(r.checked == 12 + 12 + 1);
  }
}

TEST_CASE("div does not give constants a gradient", "[autograd][ops][div]") {
  auto a = parameter<double>(ones<double>({2, 2}));
  auto b = constant<double>(ones<double>({2}));
  (a / b).backward(ones<double>({2, 2}));
  REQUIRE(a.has_grad());
  REQUIRE_FALSE(b.has_grad());
}
