#include <catch2/catch.hpp>

#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/sub.hpp"

using namespace peft;
using Catch::Matchers::WithinAbs;

TEST_CASE("sub forward, broadcasting and scalars", "[autograd][ops][sub]") {
  // a = [[1,2,3],[4,5,6]]; y = a - b
  auto a = constant<float>(make_tensor<float>({2, 3}, {1, 2, 3, 4, 5, 6}));
  auto b = constant<float>(make_tensor<float>({3}, {10, 20, 30}));
  auto y = a - b;
  REQUIRE(y.shape() == shape_t{2, 3});
  REQUIRE(y.value()(1, 2) == 6.f - 30.f);
  REQUIRE(y.value()(0, 0) == 1.f - 10.f);
  auto c = constant<float>(make_tensor<float>({2, 1}, {100, 200}));
  REQUIRE((a - c).value()(1, 0) == 4.f - 200.f);
  REQUIRE((c - a).value()(0, 2) == 100.f - 3.f);
  REQUIRE((a - a).value()(1, 1) == 0.f);                 // equal shapes (Eigen path)
  REQUIRE((a - 1.f).value()(1, 2) == 5.f);               // a - s
  REQUIRE((10.f - a).value()(0, 1) == 8.f);              // s - a
  REQUIRE(sub(a, 0.5f).value()(0, 0) == 0.5f);
}

TEST_CASE("sub gradients by hand", "[autograd][ops][sub]") {
  // y = a - b, b [3] broadcast over 2 rows: dL/da = 1, dL/db = -(number of rows) = -2.
  auto a = parameter<float>(make_tensor<float>({2, 3}, {1, 2, 3, 4, 5, 6}));
  auto b = parameter<float>(make_tensor<float>({3}, {1, 1, 1}));
  auto y = a - b;
  y.backward(ones<float>({2, 3}));
  REQUIRE(a.grad()(1, 2) == 1.f);
  REQUIRE(b.grad()(0) == -2.f);
  // s - a: dy/da = -1
  auto x = parameter<float>(make_tensor<float>({2}, {3, 4}));
  (2.f - x).backward(ones<float>({2}));
  REQUIRE(x.grad()(1) == -1.f);
}

TEST_CASE("sub with incompatible shapes names both", "[autograd][ops][sub]") {
  auto a = constant<float>(zeros<float>({2, 3}));
  auto b = constant<float>(zeros<float>({4}));
  REQUIRE_THROWS_AS(sub(a, b), shape_error);
  REQUIRE_THROWS_WITH(sub(a, b), Catch::Contains("sub") && Catch::Contains("[2,3]") &&
                                     Catch::Contains("[4]"));
  REQUIRE_THROWS_WITH(a - variable<float>(), Catch::Contains("sub"));
}

TEST_CASE("sub gradcheck", "[autograd][ops][sub][gradcheck]") {
  rng g(3);
  SECTION("b broadcast") {
    auto a = parameter<double>(randn<double>({2, 3, 4}, g));
    auto b = parameter<double>(randn<double>({3, 1}, g));
    auto r = grad_check([](auto& in) { return in[0] - in[1]; }, {a, b});
    INFO(r.report);
    REQUIRE(r.ok);
    REQUIRE(r.checked == 24 + 3);
  }
  SECTION("a broadcast, and both broadcast") {
    auto a = parameter<double>(randn<double>({2, 1, 4}, g));
    auto b = parameter<double>(randn<double>({3, 1}, g));
    auto r = grad_check([](auto& in) { return in[1] - in[0]; }, {a, b});
    INFO(r.report);
    REQUIRE(r.ok);
  }
  SECTION("equal shapes, 0-d operand, scalars") {
    auto a = parameter<double>(randn<double>({3, 4}, g));
    auto b = parameter<double>(randn<double>({3, 4}, g));
    auto s = parameter<double>(randn<double>({}, g));
    auto r = grad_check([](auto& in) { return (1.5 - (in[0] - in[1])) - in[2] - 0.25; }, {a, b, s});
    INFO(r.report);
    REQUIRE(r.ok);
    REQUIRE(r.checked == 12 + 12 + 1);
  }
}

TEST_CASE("sub does not give constants a gradient", "[autograd][ops][sub]") {
  auto a = parameter<double>(ones<double>({2, 2}));
  auto b = constant<double>(ones<double>({2}));
  (a - b).backward(ones<double>({2, 2}));
  REQUIRE(a.has_grad());
  REQUIRE_FALSE(b.has_grad());
}
