#include <catch2/catch.hpp>

#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/sum.hpp"

using namespace peft;

namespace {
// a[i,j,k] = 12i + 4j + k for shape [2,3,4] (values 0..23)
tensor<float> iota_234() {
  tensor<float> t = tensor<float>::from_shape({2, 3, 4});
  for (std::size_t i = 0; i < t.size(); ++i) t.data()[i] = float(i);
  return t;
}
}  // namespace

TEST_CASE("sum forward by hand", "[autograd][ops][sum]") {
  auto a = constant<float>(iota_234());
  SECTION("all elements -> 0-d") {
    auto y = sum(a);  // Σ 0..23 = 276
    REQUIRE(y.shape() == shape_t{});
    REQUIRE(y.item() == 276.f);
  }
  SECTION("axis 0") {
    auto y = sum(a, {0});  // y[j,k] = (4j+k) + (12+4j+k) = 12 + 8j + 2k
    REQUIRE(y.shape() == shape_t{3, 4});
    REQUIRE(y.value()(2, 3) == 12.f + 16.f + 6.f);
    REQUIRE(y.value()(0, 0) == 12.f);
  }
  SECTION("last axis, negative index") {
    auto y = sum(a, {-1});  // y[i,j] = 4(12i+4j) + 0+1+2+3 = 48i + 16j + 6
    REQUIRE(y.shape() == shape_t{2, 3});
    REQUIRE(y.value()(1, 2) == 48.f + 32.f + 6.f);
  }
  SECTION("middle axis with keepdims") {
    auto y = sum(a, {1}, true);  // y[i,0,k] = Σ_j (12i+4j+k) = 36i + 12 + 3k
    REQUIRE(y.shape() == shape_t{2, 1, 4});
    REQUIRE(y.value()(1, 0, 3) == 36.f + 12.f + 9.f);
    REQUIRE(y.value()(0, 0, 1) == 15.f);
  }
  SECTION("non-adjacent axes {0,2}") {
    auto y = sum(a, {0, 2});  // y[j] = Σ_i Σ_k (12i+4j+k) = 8·4j + 4·12 + 2·6 = 60 + 32j
    REQUIRE(y.shape() == shape_t{3});
    REQUIRE(y.value()(0) == 60.f);
    REQUIRE(y.value()(1) == 92.f);
    REQUIRE(y.value()(2) == 124.f);
    auto k = sum(a, {2, 0}, true);  // axis order does not matter
    REQUIRE(k.shape() == shape_t{1, 3, 1});
    REQUIRE(k.value()(0, 2, 0) == 124.f);
  }
  SECTION("leading axes {0,1} and all axes with keepdims") {
    auto y = sum(a, {0, 1});  // y[k] = Σ_i Σ_j (12i+4j+k) = 3·12 + 2·12 + 6k = 60 + 6k
    REQUIRE(y.shape() == shape_t{4});
    REQUIRE(y.value()(3) == 78.f);
    auto all = sum(a, {0, 1, 2}, true);
    REQUIRE(all.shape() == shape_t{1, 1, 1});
    REQUIRE(all.value()(0, 0, 0) == 276.f);
  }
  SECTION("empty axis list reduces nothing") {
    auto y = sum(a, {});
    REQUIRE(y.shape() == shape_t{2, 3, 4});
    REQUIRE(y.value()(1, 2, 3) == 23.f);
  }
  SECTION("size-1 dims around the reduced axis") {
    auto b = constant<float>(make_tensor<float>({1, 2, 1, 3}, {1, 2, 3, 4, 5, 6}));
    auto y = sum(b, {3, 0});  // [2,1]: rows 1+2+3, 4+5+6
    REQUIRE(y.shape() == shape_t{2, 1});
    REQUIRE(y.value()(0, 0) == 6.f);
    REQUIRE(y.value()(1, 0) == 15.f);
  }
}

TEST_CASE("sum gradient by hand", "[autograd][ops][sum]") {
  // dy/da = 1: each input element receives the seed of the output it was summed into.
  auto a = parameter<float>(iota_234());
  auto y = sum(a, {1});  // [2,4]
  y.backward(make_tensor<float>({2, 4}, {1, 2, 3, 4, 5, 6, 7, 8}));
  REQUIRE(a.grad()(0, 2, 1) == 2.f);
  REQUIRE(a.grad()(1, 0, 3) == 8.f);
  auto s = parameter<float>(ones<float>({3}));
  sum(s).backward();
  REQUIRE(s.grad()(2) == 1.f);
}

TEST_CASE("sum with bad axes names the op, axes and shape", "[autograd][ops][sum]") {
  auto a = constant<float>(zeros<float>({2, 3, 4}));
  REQUIRE_THROWS_AS(sum(a, {3}), shape_error);
  REQUIRE_THROWS_WITH(sum(a, {3}), Catch::Contains("sum") && Catch::Contains("axis 3") &&
                                       Catch::Contains("[2,3,4]"));
  REQUIRE_THROWS_WITH(sum(a, {-4}), Catch::Contains("axis -4") && Catch::Contains("[2,3,4]"));
  REQUIRE_THROWS_AS(sum(a, {1, -2}), value_error);
  REQUIRE_THROWS_WITH(sum(a, {1, -2}), Catch::Contains("sum") && Catch::Contains("duplicate") &&
                                           Catch::Contains("[1,-2]") &&
                                           Catch::Contains("[2,3,4]"));
  REQUIRE_THROWS_WITH(sum(constant<float>(ones<float>({})), {0}),
                      Catch::Contains("sum") && Catch::Contains("[]"));
  REQUIRE_THROWS_WITH(sum(variable<float>()), Catch::Contains("sum"));
}

TEST_CASE("sum gradcheck over several axes", "[autograd][ops][sum][gradcheck]") {
  rng g(21);
  auto a = parameter<double>(randn<double>({2, 3, 4}, g));
  using axes_t = std::vector<int>;
  const auto axes = GENERATE(axes_t{0}, axes_t{1}, axes_t{-1}, axes_t{0, 1}, axes_t{1, 2},
                             axes_t{0, 2}, axes_t{0, 1, 2}, axes_t{});
  const bool keepdims = GENERATE(false, true);
  CAPTURE(axes, keepdims);
  auto r = grad_check([&](auto& in) { return sum(in[0], axes, keepdims); }, {a});
  INFO(r.report);
  REQUIRE(r.ok);
  REQUIRE(r.checked == 24);
  auto r_all = grad_check([](auto& in) { return sum(in[0]); }, {a});
  INFO(r_all.report);
  REQUIRE(r_all.ok);
}
