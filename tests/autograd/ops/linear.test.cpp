#include <catch2/catch.hpp>

#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/linear.hpp"

using namespace peft;
using Catch::Matchers::WithinAbs;

TEST_CASE("linear forward with and without bias", "[autograd][ops][linear]") {
  auto x = constant<float>(make_tensor<float>({2, 3}, {1, 2, 3, 4, 5, 6}));
  auto W = constant<float>(make_tensor<float>({2, 3}, {1, 0, -1, 0.5f, 0.5f, 0.5f}));
  auto b = constant<float>(make_tensor<float>({2}, {10, 20}));
  auto y = linear(x, W, b);
  REQUIRE(y.shape() == shape_t{2, 2});
  CHECK_THAT(y.value()(0, 0), WithinAbs(8.0, 1e-6));
  CHECK_THAT(y.value()(0, 1), WithinAbs(23.0, 1e-6));
  CHECK_THAT(y.value()(1, 0), WithinAbs(8.0, 1e-6));
  CHECK_THAT(y.value()(1, 1), WithinAbs(27.5, 1e-6));

  auto y0 = linear(x, W);  // no bias
  CHECK_THAT(y0.value()(0, 0), WithinAbs(-2.0, 1e-6));
  CHECK_THAT(y0.value()(1, 1), WithinAbs(7.5, 1e-6));
  auto y1 = linear(x, W, variable<float>());  // explicit undefined bias
  CHECK_THAT(y1.value()(0, 1), WithinAbs(3.0, 1e-6));
}

TEST_CASE("linear keeps leading dims: [b,s,in] -> [b,s,out] and [in] -> [out]",
          "[autograd][ops][linear]") {
  auto x = constant<double>(make_tensor<double>({2, 1, 3}, {1, 2, 3, 4, 5, 6}));
  auto W = constant<double>(make_tensor<double>({2, 3}, {1, 0, -1, 0.5, 0.5, 0.5}));
  auto b = constant<double>(make_tensor<double>({2}, {10, 20}));
  auto y = linear(x, W, b);
  REQUIRE(y.shape() == shape_t{2, 1, 2});
  CHECK(y.value()(1, 0, 1) == 27.5);
  auto v = constant<double>(make_tensor<double>({3}, {1, 2, 3}));
  auto yv = linear(v, W, b);
  REQUIRE(yv.shape() == shape_t{2});
  CHECK(yv.value()(0) == 8.0);
  CHECK(yv.value()(1) == 23.0);
}

TEST_CASE("linear gradcheck with bias on 3-D input", "[autograd][ops][linear][gradcheck]") {
  rng g(21);
  auto x = parameter<double>(randn<double>({2, 3, 4}, g));
  auto W = parameter<double>(randn<double>({5, 4}, g));
  auto b = parameter<double>(randn<double>({5}, g));
  auto r = grad_check([](auto& in) { return linear(in[0], in[1], in[2]); }, {x, W, b});
  INFO(r.report);
  REQUIRE(r.ok);
  REQUIRE(r.checked == 24 + 20 + 5);
}

TEST_CASE("linear gradcheck without bias", "[autograd][ops][linear][gradcheck]") {
  rng g(22);
  auto x = parameter<double>(randn<double>({2, 3, 4}, g));
  auto W = parameter<double>(randn<double>({5, 4}, g));
  auto r = grad_check([](auto& in) { return linear(in[0], in[1]); }, {x, W});
  INFO(r.report);
  REQUIRE(r.ok);
  REQUIRE(r.checked == 24 + 20);

  auto x2 = parameter<double>(randn<double>({3, 4}, g));
  auto r2 = grad_check([](auto& in) { return linear(in[0], in[1]); }, {x2, W});
  INFO(r2.report);
  REQUIRE(r2.ok);
}

TEST_CASE("linear with a frozen weight computes no weight gradient", "[autograd][ops][linear]") {
  rng g(23);
  auto x = parameter<double>(randn<double>({3, 4}, g));
  auto W = constant<double>(randn<double>({2, 4}, g));
  auto b = constant<double>(randn<double>({2}, g));
  auto y = linear(x, W, b);
  y.backward(ones<double>({3, 2}));
  CHECK_FALSE(W.has_grad());
  CHECK_FALSE(b.has_grad());
  REQUIRE(x.has_grad());
  // dX = 1·W: every row is the column sums of W.
  for (std::size_t i = 0; i < 3; ++i)
    for (std::size_t j = 0; j < 4; ++j)
      CHECK_THAT(x.grad()(i, j), WithinAbs(W.value()(0, j) + W.value()(1, j), 1e-12));

  // Only the bias trains: its gradient is the column sums of dY.
  auto bt = parameter<double>(randn<double>({2}, g));
  auto xc = constant<double>(randn<double>({3, 4}, g));
  auto y2 = linear(xc, W, bt);
  y2.backward(make_tensor<double>({3, 2}, {1, 2, 3, 4, 5, 6}));
  CHECK_FALSE(xc.has_grad());
  CHECK_THAT(bt.grad()(0), WithinAbs(9.0, 1e-12));
  CHECK_THAT(bt.grad()(1), WithinAbs(12.0, 1e-12));
}

TEST_CASE("linear on GEMM-sized operands matches a reference in float", "[autograd][ops][linear]") {
  rng g(24);
  const std::size_t rows = 70, in = 48, out = 40;
  auto x = parameter<float>(randn<float>({2, rows / 2, in}, g));
  auto W = parameter<float>(randn<float>({out, in}, g));
  auto b = parameter<float>(randn<float>({out}, g));
  tensor<float> seed = randn<float>({2, rows / 2, out}, g);
  auto y = linear(x, W, b);
  y.backward(seed);
  const float* xp = x.value().data();
  const float* wp = W.value().data();
  const float* sp = seed.data();
  for (std::size_t i = 0; i < rows; ++i)
    for (std::size_t o = 0; o < out; ++o) {
      double s = b.value()(o);
      for (std::size_t p = 0; p < in; ++p) s += double(xp[i * in + p]) * wp[o * in + p];
      REQUIRE_THAT(y.value().data()[i * out + o], WithinAbs(s, 1e-3));
    }
  for (std::size_t i = 0; i < rows; ++i)
    for (std::size_t p = 0; p < in; ++p) {
      double s = 0;
      for (std::size_t o = 0; o < out; ++o) s += double(sp[i * out + o]) * wp[o * in + p];
      REQUIRE_THAT(x.grad().data()[i * in + p], WithinAbs(s, 1e-3));
    }
  for (std::size_t o = 0; o < out; ++o) {
    double sb = 0;
    for (std::size_t i = 0; i < rows; ++i) sb += sp[i * out + o];
    REQUIRE_THAT(b.grad()(o), WithinAbs(sb, 1e-3));
    for (std::size_t p = 0; p < in; ++p) {
      double s = 0;
      for (std::size_t i = 0; i < rows; ++i) s += double(sp[i * out + o]) * xp[i * in + p];
      REQUIRE_THAT(W.grad()(o, p), WithinAbs(s, 1e-3));
    }
  }
}

TEST_CASE("linear with bad shapes names the op and the shapes", "[autograd][ops][linear]") {
  auto x = constant<float>(zeros<float>({2, 5}));
  auto W = constant<float>(zeros<float>({3, 4}));
  REQUIRE_THROWS_AS(linear(x, W), shape_error);
  REQUIRE_THROWS_WITH(linear(x, W), Catch::Contains("linear") && Catch::Contains("[2,5]") &&
                                        Catch::Contains("[3,4]"));
  auto x4 = constant<float>(zeros<float>({2, 4}));
  auto b = constant<float>(zeros<float>({4}));
  REQUIRE_THROWS_WITH(linear(x4, W, b), Catch::Contains("linear") && Catch::Contains("bias [4]") &&
                                            Catch::Contains("[3,4]"));
  auto W3 = constant<float>(zeros<float>({3, 4, 1}));
  REQUIRE_THROWS_WITH(linear(x4, W3), Catch::Contains("linear") && Catch::Contains("[2,4]") &&
                                          Catch::Contains("[3,4,1]"));
}
