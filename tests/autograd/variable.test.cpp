#include <catch2/catch.hpp>

#include "peft/autograd/ops/add.hpp"
#include "peft/autograd/variable.hpp"

using namespace peft;

TEST_CASE("gradients accumulate on leaves and flow through shared nodes", "[autograd]") {
  auto x = parameter<double>(make_tensor<double>({2}, {1.0, 2.0}));
  auto y = x + x;        // dy/dx = 2
  auto z = add(y, x);    // dz/dx = 3
  z.backward(ones<double>({2}));
  REQUIRE(x.grad()(0) == 3.0);
  z = add(x, 1.0);
  z.backward(ones<double>({2}));  // accumulates: 3 + 1
  REQUIRE(x.grad()(1) == 4.0);
  x.zero_grad();
  REQUIRE_FALSE(x.has_grad());
}

TEST_CASE("no_grad records no graph; constants get no gradient", "[autograd]") {
  auto x = parameter<float>(ones<float>({3}));
  auto c = constant<float>(ones<float>({3}));
  {
    no_grad_guard g;
    auto y = x + c;
    REQUIRE_FALSE(y.requires_grad());
    REQUIRE(y.is_leaf());
  }
  auto y = x + c;
  REQUIRE(y.requires_grad());
  y.backward(ones<float>({3}));
  REQUIRE(x.has_grad());
  REQUIRE_FALSE(c.has_grad());
}

TEST_CASE("detach cuts the graph", "[autograd]") {
  auto x = parameter<double>(ones<double>({2}));
  auto d = (x + 1.0).detach();
  REQUIRE_FALSE(d.requires_grad());
  REQUIRE(d.value()(0) == 2.0);
}

TEST_CASE("backward errors are clear", "[autograd]") {
  auto x = parameter<double>(ones<double>({2}));
  auto y = x + 1.0;
  REQUIRE_THROWS_WITH(y.backward(), Catch::Contains("one-element") && Catch::Contains("[2]"));
  REQUIRE_THROWS_WITH(y.backward(ones<double>({3})), Catch::Contains("[3]"));
  auto c = constant<double>(ones<double>({1}));
  REQUIRE_THROWS_AS(c.backward(), error);
  variable<double> u;
  REQUIRE_THROWS_AS(u.value(), error);
}

TEST_CASE("deep chains do not overflow the stack", "[autograd]") {
  auto x = parameter<float>(ones<float>({1}));
  auto y = x;
  for (int i = 0; i < 100000; ++i) y = y + 1.0f;
  y.backward();
  REQUIRE(x.grad()(0) == 1.0f);
}
