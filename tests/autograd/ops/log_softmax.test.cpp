#include <catch2/catch.hpp>

#include <cmath>

#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/log_softmax.hpp"

using namespace peft;
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

// log_softmax([1,2,3]) = x - 3 - log(1 + e^-1 + e^-2) = x - 3 - 0.407605964
//                      = [-2.407605964, -1.407605964, -0.407605964]
constexpr float l0 = -2.407605964f, l1 = -1.407605964f, l2 = -0.407605964f;

TEST_CASE("log_softmax forward by hand, last axis", "[autograd][ops][log_softmax]") {
  auto a = constant<float>(make_tensor<float>({2, 3}, {1, 2, 3, 3, 2, 1}));
  auto y = log_softmax(a);
  REQUIRE(y.shape() == shape_t{2, 3});
  REQUIRE_THAT(y.value()(0, 0), WithinRel(l0, 1e-6f));
  REQUIRE_THAT(y.value()(0, 1), WithinRel(l1, 1e-6f));
  REQUIRE_THAT(y.value()(0, 2), WithinRel(l2, 1e-6f));
  REQUIRE_THAT(y.value()(1, 0), WithinRel(l2, 1e-6f));
  REQUIRE_THAT(y.value()(1, 2), WithinRel(l0, 1e-6f));
}

TEST_CASE("log_softmax forward by hand, other axes", "[autograd][ops][log_softmax]") {
  // [3,2] with columns [1,2,3] and [3,2,1], over axis 0
  auto a = constant<float>(make_tensor<float>({3, 2}, {1, 3, 2, 2, 3, 1}));
  auto y = log_softmax(a, 0);
  REQUIRE_THAT(y.value()(0, 0), WithinRel(l0, 1e-6f));
  REQUIRE_THAT(y.value()(1, 0), WithinRel(l1, 1e-6f));
  REQUIRE_THAT(y.value()(0, 1), WithinRel(l2, 1e-6f));
  REQUIRE_THAT(y.value()(2, 1), WithinRel(l0, 1e-6f));
  const bool same = log_softmax(a, -2).value() == y.value();  // negative axis = same axis
  REQUIRE(same);
}

TEST_CASE("log_softmax is stable for large inputs", "[autograd][ops][log_softmax]") {
  // shift invariance: [1000,1001,1002] gives the same as [1,2,3]
  auto a = constant<float>(make_tensor<float>({2, 3}, {1000, 1001, 1002, -1002, -1003, -1004}));
  auto y = log_softmax(a);
  REQUIRE_THAT(y.value()(0, 0), WithinRel(l0, 1e-5f));
  REQUIRE_THAT(y.value()(0, 2), WithinRel(l2, 1e-5f));
  REQUIRE_THAT(y.value()(1, 0), WithinRel(l2, 1e-5f));
  REQUIRE_THAT(y.value()(1, 2), WithinRel(l0, 1e-5f));
  // [1000, 0]: log_softmax = [-log(1 + e^-1000), -1000 - log(1 + e^-1000)] = [0, -1000]
  // exactly, where log(softmax) would give log(0) = -inf.
  auto b = constant<float>(make_tensor<float>({2}, {1000, 0}));
  auto z = log_softmax(b);
  REQUIRE(z.value()(0) == 0.f);
  REQUIRE(z.value()(1) == -1000.f);
}

TEST_CASE("log_softmax gradient by hand", "[autograd][ops][log_softmax]") {
  // dx = g - softmax·Σ g; with g = e_2: dx = e_2 - softmax = [-p0, -p1, 1 - p2]
  auto a = parameter<float>(make_tensor<float>({3}, {1, 2, 3}));
  log_softmax(a).backward(make_tensor<float>({3}, {0, 0, 1}));
  REQUIRE_THAT(a.grad()(0), WithinRel(-0.090030573f, 1e-5f));
  REQUIRE_THAT(a.grad()(1), WithinRel(-0.244728471f, 1e-5f));
  REQUIRE_THAT(a.grad()(2), WithinRel(1 - 0.665240956f, 1e-5f));
  // the same along axis 0 of [3,2] (columns [1,2,3] and [3,2,1]; seed e_2 in column 0 only)
  auto b = parameter<float>(make_tensor<float>({3, 2}, {1, 3, 2, 2, 3, 1}));
  log_softmax(b, 0).backward(make_tensor<float>({3, 2}, {0, 0, 0, 0, 1, 0}));
  REQUIRE_THAT(b.grad()(0, 0), WithinRel(-0.090030573f, 1e-5f));
  REQUIRE_THAT(b.grad()(2, 0), WithinRel(1 - 0.665240956f, 1e-5f));
  REQUIRE(b.grad()(1, 1) == 0.f);
}

TEST_CASE("log_softmax with a bad axis names the op, axis and shape",
          "[autograd][ops][log_softmax]") {
  auto a = constant<float>(zeros<float>({2, 3}));
  REQUIRE_THROWS_AS(log_softmax(a, 5), shape_error);
  REQUIRE_THROWS_WITH(log_softmax(a, 5), Catch::Contains("log_softmax") &&
                                             Catch::Contains("axis 5") && Catch::Contains("[2,3]"));
  REQUIRE_THROWS_WITH(log_softmax(variable<float>()), Catch::Contains("log_softmax"));
}

TEST_CASE("log_softmax gradcheck over several axes", "[autograd][ops][log_softmax][gradcheck]") {
  rng g(25);
  const int axis = GENERATE(-1, 0, 1, 2, -2);
  CAPTURE(axis);
  auto a = parameter<double>(randn<double>({2, 3, 4}, g, 0.0, 2.0));
  auto r = grad_check([axis](auto& in) { return log_softmax(in[0], axis); }, {a});
  INFO(r.report);
  REQUIRE(r.ok);
  REQUIRE(r.checked == 24);
}

TEST_CASE("log_softmax gradcheck with large-magnitude inputs",
          "[autograd][ops][log_softmax][gradcheck]") {
  rng g(26);
  auto t = randn<double>({3, 4}, g);
  for (std::size_t i = 0; i < 4; ++i) t(0, i) += 1000.0, t(1, i) -= 1000.0, t(2, i) += 500.0;
  auto a = parameter<double>(t);
  for (int axis : {-1, 0}) {
    CAPTURE(axis);
    auto r = grad_check([axis](auto& in) { return log_softmax(in[0], axis); }, {a});
    INFO(r.report);
    REQUIRE(r.ok);
    auto y = log_softmax(a, axis);
    for (double v : y.value()) REQUIRE(std::isfinite(v));
  }
}
