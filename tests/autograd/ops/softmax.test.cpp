#include <catch2/catch.hpp>

#include <cmath>

#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/softmax.hpp"

using namespace peft;
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

// softmax([1,2,3]) = [e^-2, e^-1, 1] / (1 + e^-1 + e^-2) = [0.090030573, 0.244728471, 0.665240956]
constexpr float p0 = 0.090030573f, p1 = 0.244728471f, p2 = 0.665240956f;

TEST_CASE("softmax forward by hand, last axis", "[autograd][ops][softmax]") {
  auto a = constant<float>(make_tensor<float>({2, 3}, {1, 2, 3, 3, 2, 1}));
  auto y = softmax(a);
  REQUIRE(y.shape() == shape_t{2, 3});
  REQUIRE_THAT(y.value()(0, 0), WithinRel(p0, 1e-6f));
  REQUIRE_THAT(y.value()(0, 1), WithinRel(p1, 1e-6f));
  REQUIRE_THAT(y.value()(0, 2), WithinRel(p2, 1e-6f));
  REQUIRE_THAT(y.value()(1, 0), WithinRel(p2, 1e-6f));
  REQUIRE_THAT(y.value()(1, 2), WithinRel(p0, 1e-6f));
}

TEST_CASE("softmax forward by hand, other axes", "[autograd][ops][softmax]") {
  // [3,2] with columns [1,2,3] and [3,2,1]: softmax over axis 0 normalises each column
  auto a = constant<float>(make_tensor<float>({3, 2}, {1, 3, 2, 2, 3, 1}));
  auto y = softmax(a, 0);
  REQUIRE_THAT(y.value()(0, 0), WithinRel(p0, 1e-6f));
  REQUIRE_THAT(y.value()(2, 0), WithinRel(p2, 1e-6f));
  REQUIRE_THAT(y.value()(0, 1), WithinRel(p2, 1e-6f));
  REQUIRE_THAT(y.value()(1, 1), WithinRel(p1, 1e-6f));
  const bool same = softmax(a, -2).value() == y.value();  // negative axis = same axis
  REQUIRE(same);
  // middle axis of [2,3,2]: each (i, :, k) line sums to 1
  rng g(1);
  auto b = constant<float>(randn<float>({2, 3, 2}, g));
  auto z = softmax(b, 1);
  for (std::size_t i = 0; i < 2; ++i)
    for (std::size_t k = 0; k < 2; ++k)
      REQUIRE_THAT(z.value()(i, 0, k) + z.value()(i, 1, k) + z.value()(i, 2, k),
                   WithinAbs(1.f, 1e-6f));
}

TEST_CASE("softmax is stable for large inputs", "[autograd][ops][softmax]") {
  // softmax is shift-invariant: [1000,1001,1002] and [-1002,-1003,-1004] give the same
  // probabilities as [1,2,3] (reversed for the latter); naive e^1000 would overflow.
  auto a = constant<float>(make_tensor<float>({2, 3}, {1000, 1001, 1002, -1002, -1003, -1004}));
  auto y = softmax(a);
  REQUIRE_THAT(y.value()(0, 0), WithinRel(p0, 1e-5f));
  REQUIRE_THAT(y.value()(0, 2), WithinRel(p2, 1e-5f));
  REQUIRE_THAT(y.value()(1, 0), WithinRel(p2, 1e-5f));
  REQUIRE_THAT(y.value()(1, 2), WithinRel(p0, 1e-5f));
  auto x = constant<float>(make_tensor<float>({2, 2}, {1e4f, -1e4f, -1e4f, 1e4f}));
  auto z = softmax(x, 0);
  REQUIRE(z.value()(0, 0) == 1.f);
  REQUIRE(z.value()(1, 0) == 0.f);
  REQUIRE(z.value()(1, 1) == 1.f);
}

TEST_CASE("softmax gradient by hand", "[autograd][ops][softmax]") {
  // dx = y·(g - Σ g·y); with g = e_2: dx = y·(e_2 - y_2) = [-y0·y2, -y1·y2, y2·(1-y2)]
  auto a = parameter<float>(make_tensor<float>({3}, {1, 2, 3}));
  softmax(a).backward(make_tensor<float>({3}, {0, 0, 1}));
  REQUIRE_THAT(a.grad()(0), WithinRel(-p0 * p2, 1e-5f));
  REQUIRE_THAT(a.grad()(1), WithinRel(-p1 * p2, 1e-5f));
  REQUIRE_THAT(a.grad()(2), WithinRel(p2 * (1 - p2), 1e-5f));
  // the same along axis 0 of [3,2] (columns [1,2,3] and [3,2,1]; seed e_2 in column 0 only)
  auto b = parameter<float>(make_tensor<float>({3, 2}, {1, 3, 2, 2, 3, 1}));
  softmax(b, 0).backward(make_tensor<float>({3, 2}, {0, 0, 0, 0, 1, 0}));
  REQUIRE_THAT(b.grad()(0, 0), WithinRel(-p0 * p2, 1e-5f));
  REQUIRE_THAT(b.grad()(2, 0), WithinRel(p2 * (1 - p2), 1e-5f));
  REQUIRE(b.grad()(1, 1) == 0.f);
}

TEST_CASE("softmax with a bad axis names the op, axis and shape", "[autograd][ops][softmax]") {
  auto a = constant<float>(zeros<float>({2, 3}));
  REQUIRE_THROWS_AS(softmax(a, 2), shape_error);
  REQUIRE_THROWS_WITH(softmax(a, 2), Catch::Contains("softmax") && Catch::Contains("axis 2") &&
                                         Catch::Contains("[2,3]"));
  REQUIRE_THROWS_WITH(softmax(a, -3), Catch::Contains("axis -3") && Catch::Contains("[2,3]"));
  REQUIRE_THROWS_WITH(softmax(constant<float>(ones<float>({}))), Catch::Contains("[]"));
  REQUIRE_THROWS_WITH(softmax(variable<float>()), Catch::Contains("softmax"));
}

TEST_CASE("softmax gradcheck over several axes", "[autograd][ops][softmax][gradcheck]") {
  rng g(23);
  const int axis = GENERATE(-1, 0, 1, 2, -2);
  CAPTURE(axis);
  auto a = parameter<double>(randn<double>({2, 3, 4}, g, 0.0, 2.0));
  auto r = grad_check([axis](auto& in) { return softmax(in[0], axis); }, {a});
  INFO(r.report);
  REQUIRE(r.ok);
  REQUIRE(r.checked == 24);
}

TEST_CASE("softmax gradcheck with large-magnitude inputs", "[autograd][ops][softmax][gradcheck]") {
  rng g(24);
  auto t = randn<double>({3, 4}, g);
  for (std::size_t i = 0; i < 4; ++i) t(0, i) += 1000.0, t(1, i) -= 1000.0, t(2, i) += 500.0;
  auto a = parameter<double>(t);
  for (int axis : {-1, 0}) {
    CAPTURE(axis);
    auto r = grad_check([axis](auto& in) { return softmax(in[0], axis); }, {a});
    INFO(r.report);
    REQUIRE(r.ok);
    auto y = softmax(a, axis);
    for (double v : y.value()) REQUIRE(std::isfinite(v));
  }
}
