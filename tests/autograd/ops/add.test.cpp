#include <catch2/catch.hpp>

#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/add.hpp"

using namespace peft;
using Catch::Matchers::WithinAbs;

TEST_CASE("add broadcasts like NumPy", "[autograd][ops][add]") {
  auto a = constant<float>(make_tensor<float>({2, 3}, {1, 2, 3, 4, 5, 6}));
  auto b = constant<float>(make_tensor<float>({3}, {10, 20, 30}));
  auto y = a + b;
  REQUIRE(y.shape() == shape_t{2, 3});
  REQUIRE(y.value()(1, 2) == 36.f);
  auto c = constant<float>(make_tensor<float>({2, 1}, {100, 200}));
  REQUIRE((a + c).value()(1, 0) == 204.f);
  REQUIRE((a + 1.f).value()(0, 0) == 2.f);
}

TEST_CASE("add with incompatible shapes names both", "[autograd][ops][add]") {
  auto a = constant<float>(zeros<float>({2, 3}));
  auto b = constant<float>(zeros<float>({4}));
  REQUIRE_THROWS_WITH(add(a, b), Catch::Contains("add") && Catch::Contains("[2,3]") &&
                                     Catch::Contains("[4]"));
}

TEST_CASE("add gradcheck with broadcasting", "[autograd][ops][add][gradcheck]") {
  rng g(3);
  auto a = parameter<double>(randn<double>({2, 3, 4}, g));
  auto b = parameter<double>(randn<double>({3, 1}, g));
  auto r = grad_check([](auto& in) { return add(in[0], in[1]) + 0.5; }, {a, b});
  INFO(r.report);
  REQUIRE(r.ok);
  REQUIRE(r.checked == 24 + 3);
}
