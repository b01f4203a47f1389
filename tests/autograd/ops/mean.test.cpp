#include <catch2/catch.hpp>

#include <cmath>

#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/mean.hpp"

using namespace peft;

namespace {
// a[i,j,k] = 12i + 4j + k for shape [2,3,4] (values 0..23)
tensor<float> iota_234() {
  tensor<float> t = tensor<float>::from_shape({2, 3, 4});
  for (std::size_t i = 0; i < t.size(); ++i) t.data()[i] = float(i);
  return t;
}
}  // namespace

TEST_CASE("mean forward by hand", "[autograd][ops][mean]") {
  auto a = constant<float>(iota_234());
  auto all = mean(a);  // (0 + ... + 23) / 24 = 11.5
  REQUIRE(all.shape() == shape_t{});
  REQUIRE(all.item() == 11.5f);
  auto last = mean(a, {-1});  // (48i + 16j + 6) / 4
  REQUIRE(last.shape() == shape_t{2, 3});
  REQUIRE(last.value()(1, 2) == 86.f / 4.f);
  auto outer = mean(a, {0, 2});  // (60 + 32j) / 8
  REQUIRE(outer.shape() == shape_t{3});
  REQUIRE(outer.value()(0) == 7.5f);
  REQUIRE(outer.value()(2) == 15.5f);
  auto mid = mean(a, {1}, true);  // (36i + 12 + 3k) / 3 = 12i + 4 + k
  REQUIRE(mid.shape() == shape_t{2, 1, 4});
  REQUIRE(mid.value()(1, 0, 3) == 19.f);
  // mean over zero elements is NaN, as in NumPy
  REQUIRE(std::isnan(mean(constant<float>(zeros<float>({0}))).item()));
}

TEST_CASE("mean gradient by hand", "[autograd][ops][mean]") {
  // dy/da = 1/n with n the number of elements averaged into each output.
  auto a = parameter<float>(iota_234());
  mean(a).backward();
  REQUIRE(a.grad()(1, 2, 3) == 1.f / 24.f);
  a.zero_grad();
  mean(a, {0, 1}).backward(make_tensor<float>({4}, {6, 12, 18, 24}));  // n = 6
  REQUIRE(a.grad()(1, 1, 0) == 1.f);
  REQUIRE(a.grad()(0, 2, 3) == 4.f);
}

TEST_CASE("mean with bad axes names the op, axes and shape", "[autograd][ops][mean]") {
  auto a = constant<float>(zeros<float>({2, 3}));
  REQUIRE_THROWS_AS(mean(a, {2}), shape_error);
  REQUIRE_THROWS_WITH(mean(a, {2}), Catch::Contains("mean") && Catch::Contains("axis 2") &&
                                        Catch::Contains("[2,3]"));
  REQUIRE_THROWS_AS(mean(a, {0, 0}), value_error);
  REQUIRE_THROWS_WITH(mean(a, {0, 0}), Catch::Contains("mean") && Catch::Contains("[2,3]"));
  REQUIRE_THROWS_WITH(mean(variable<float>()), Catch::Contains("mean"));
}

TEST_CASE("mean gradcheck over several axes", "[autograd][ops][mean][gradcheck]") {
  rng g(22);
  auto a = parameter<double>(randn<double>({2, 3, 4}, g));
  using axes_t = std::vector<int>;
  const auto axes = GENERATE(axes_t{0}, axes_t{1}, axes_t{-1}, axes_t{-2, -1}, axes_t{0, 2},
                             axes_t{0, 1, 2}, axes_t{});
  const bool keepdims = GENERATE(false, true);
  CAPTURE(axes, keepdims);
  auto r = grad_check([&](auto& in) { return mean(in[0], axes, keepdims); }, {a});
  INFO(r.report);
  REQUIRE(r.ok);
  REQUIRE(r.checked == 24);
  auto r_all = grad_check([](auto& in) { return mean(in[0]); }, {a});
  INFO(r_all.report);
  REQUIRE(r_all.ok);
}
