#include <catch2/catch.hpp>

#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/matmul.hpp"

using namespace peft;
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

namespace {

// Reference product of row-major [m,k] x [k,n] blocks, written out as loops on purpose.
template <class T>
std::vector<double> naive_mm(const T* a, const T* b, std::size_t m, std::size_t k, std::size_t n,
                             bool ta = false, bool tb = false) {
  std::vector<double> y(m * n, 0.0);
  for (std::size_t i = 0; i < m; ++i)
    for (std::size_t j = 0; j < n; ++j) {
      double s = 0;
      for (std::size_t p = 0; p < k; ++p)
        s += double(ta ? a[p * m + i] : a[i * k + p]) * double(tb ? b[j * k + p] : b[p * n + j]);
      y[i * n + j] = s;
    }
  return y;
}

}  // namespace

TEST_CASE("matmul 2-D forward", "[autograd][ops][matmul]") {
  auto a = constant<float>(make_tensor<float>({2, 3}, {1, 2, 3, 4, 5, 6}));
  auto b = constant<float>(make_tensor<float>({3, 2}, {1, 0, 0, 1, 1, 1}));
  auto y = matmul(a, b);
  REQUIRE(y.shape() == shape_t{2, 2});
  CHECK(y.value()(0, 0) == 4.f);
  CHECK(y.value()(0, 1) == 5.f);
  CHECK(y.value()(1, 0) == 10.f);
  CHECK(y.value()(1, 1) == 11.f);
  CHECK_FALSE(y.requires_grad());
}

TEST_CASE("matmul batched, shared right and shared left forward", "[autograd][ops][matmul]") {
  auto a = constant<double>(make_tensor<double>({2, 2, 2}, {1, 2, 3, 4, 5, 6, 7, 8}));
  auto b = constant<double>(make_tensor<double>({2, 2, 2}, {1, 0, 0, 1, 0, 1, 1, 0}));
  auto y = matmul(a, b);  // batch 0: A0 * I; batch 1: A1 with columns swapped
  REQUIRE(y.shape() == shape_t{2, 2, 2});
  const std::vector<double> ey{1, 2, 3, 4, 6, 5, 8, 7};
  for (std::size_t i = 0; i < 8; ++i) CHECK(y.value().data()[i] == ey[i]);

  auto w = constant<double>(make_tensor<double>({2, 2}, {1, 1, 0, 1}));
  auto ys = matmul(a, w);
  REQUIRE(ys.shape() == shape_t{2, 2, 2});
  const std::vector<double> es{1, 3, 3, 7, 5, 11, 7, 15};
  for (std::size_t i = 0; i < 8; ++i) CHECK(ys.value().data()[i] == es[i]);

  auto l = constant<double>(make_tensor<double>({2, 2}, {1, 2, 3, 4}));
  auto yl = matmul(l, b);
  REQUIRE(yl.shape() == shape_t{2, 2, 2});
  const std::vector<double> el{1, 2, 3, 4, 2, 1, 4, 3};
  for (std::size_t i = 0; i < 8; ++i) CHECK(yl.value().data()[i] == el[i]);
}

TEST_CASE("matmul gradcheck 2-D", "[autograd][ops][matmul][gradcheck]") {
  rng g(11);
  auto a = parameter<double>(randn<double>({3, 4}, g));
  auto b = parameter<double>(randn<double>({4, 5}, g));
  auto r = grad_check([](auto& in) { return matmul(in[0], in[1]); }, {a, b});
  INFO(r.report);
  REQUIRE(r.ok);
  REQUIRE(r.checked == 12 + 20);
}

TEST_CASE("matmul gradcheck batched 3-D and 4-D", "[autograd][ops][matmul][gradcheck]") {
  rng g(12);
  auto a = parameter<double>(randn<double>({2, 3, 4}, g));
  auto b = parameter<double>(randn<double>({2, 4, 5}, g));
  auto r = grad_check([](auto& in) { return matmul(in[0], in[1]); }, {a, b});
  INFO(r.report);
  REQUIRE(r.ok);
  REQUIRE(r.checked == 24 + 40);

  auto q = parameter<double>(randn<double>({2, 2, 3, 4}, g));
  auto k = parameter<double>(randn<double>({2, 2, 4, 3}, g));
  auto r4 = grad_check([](auto& in) { return matmul(in[0], in[1]); }, {q, k});
  INFO(r4.report);
  REQUIRE(r4.ok);
  REQUIRE(r4.checked == 48 + 48);
}

TEST_CASE("matmul gradcheck shared right and shared left operand",
          "[autograd][ops][matmul][gradcheck]") {
  rng g(13);
  auto a = parameter<double>(randn<double>({2, 3, 4}, g));
  auto w = parameter<double>(randn<double>({4, 5}, g));
  auto r = grad_check([](auto& in) { return matmul(in[0], in[1]); }, {a, w});
  INFO(r.report);
  REQUIRE(r.ok);
  REQUIRE(r.checked == 24 + 20);

  auto l = parameter<double>(randn<double>({3, 4}, g));
  auto b = parameter<double>(randn<double>({2, 4, 5}, g));
  auto rl = grad_check([](auto& in) { return matmul(in[0], in[1]); }, {l, b});
  INFO(rl.report);
  REQUIRE(rl.ok);
  REQUIRE(rl.checked == 12 + 40);
}

TEST_CASE("matmul of a variable with itself accumulates both gradients",
          "[autograd][ops][matmul][gradcheck]") {
  rng g(14);
  auto x = parameter<double>(randn<double>({3, 3}, g));
  auto r = grad_check([](auto& in) { return matmul(in[0], in[0]); }, {x});
  INFO(r.report);
  REQUIRE(r.ok);
}

TEST_CASE("matmul skips gradients of parents that do not require them",
          "[autograd][ops][matmul]") {
  rng g(15);
  auto a = constant<double>(randn<double>({3, 4}, g));
  auto b = parameter<double>(randn<double>({4, 2}, g));
  auto y = matmul(a, b);
  y.backward(ones<double>({3, 2}));
  CHECK_FALSE(a.has_grad());
  REQUIRE(b.has_grad());
  // dB = Aᵀ·1: every column of dB is the row sums of Aᵀ.
  for (std::size_t p = 0; p < 4; ++p) {
    double s = 0;
    for (std::size_t i = 0; i < 3; ++i) s += a.value()(i, p);
    CHECK_THAT(b.grad()(p, 0), WithinAbs(s, 1e-12));
    CHECK_THAT(b.grad()(p, 1), WithinAbs(s, 1e-12));
  }
}

TEST_CASE("matmul on GEMM-sized operands matches a reference in float",
          "[autograd][ops][matmul]") {
  // Sizes above Eigen's small-product threshold, so the blocked (multithreaded) GEMM runs.
  rng g(16);
  const std::size_t bt = 2, m = 67, k = 45, n = 53;
  auto a = parameter<float>(randn<float>({bt, m, k}, g));
  auto b = parameter<float>(randn<float>({bt, k, n}, g));
  auto w = parameter<float>(randn<float>({k, n}, g));
  tensor<float> seed = randn<float>({bt, m, n}, g);

  auto y = matmul(a, b);
  y.backward(seed);
  for (std::size_t i = 0; i < bt; ++i) {
    const auto ey = naive_mm(a.value().data() + i * m * k, b.value().data() + i * k * n, m, k, n);
    const auto eda = naive_mm(seed.data() + i * m * n, b.value().data() + i * k * n, m, n, k,
                              false, true);
    const auto edb = naive_mm(a.value().data() + i * m * k, seed.data() + i * m * n, k, m, n,
                              true, false);
    for (std::size_t j = 0; j < m * n; ++j)
      REQUIRE_THAT(y.value().data()[i * m * n + j], WithinAbs(ey[j], 1e-3));
    for (std::size_t j = 0; j < m * k; ++j)
      REQUIRE_THAT(a.grad().data()[i * m * k + j], WithinAbs(eda[j], 1e-3));
    for (std::size_t j = 0; j < k * n; ++j)
      REQUIRE_THAT(b.grad().data()[i * k * n + j], WithinAbs(edb[j], 1e-3));
  }

  a.zero_grad();
  auto ys = matmul(a, w);  // shared right operand: one [bt*m, k] x [k, n] GEMM
  ys.backward(seed);
  const auto ey = naive_mm(a.value().data(), w.value().data(), bt * m, k, n);
  const auto edw = naive_mm(a.value().data(), seed.data(), k, bt * m, n, true, false);
  for (std::size_t j = 0; j < bt * m * n; ++j)
    REQUIRE_THAT(ys.value().data()[j], WithinAbs(ey[j], 1e-3));
  for (std::size_t j = 0; j < k * n; ++j)
    REQUIRE_THAT(w.grad().data()[j], WithinAbs(edw[j], 2e-3));
}

TEST_CASE("matmul with mismatched shapes names the op and both shapes",
          "[autograd][ops][matmul]") {
  auto a = constant<float>(zeros<float>({4, 8}));
  auto b = constant<float>(zeros<float>({6, 3}));
  REQUIRE_THROWS_AS(matmul(a, b), shape_error);
  REQUIRE_THROWS_WITH(matmul(a, b), Catch::Contains("matmul: [4,8] x [6,3]"));

  auto x = constant<float>(zeros<float>({2, 3, 4}));
  auto y = constant<float>(zeros<float>({3, 4, 5}));  // batch 2 vs 3
  REQUIRE_THROWS_WITH(matmul(x, y), Catch::Contains("matmul") && Catch::Contains("[2,3,4]") &&
                                        Catch::Contains("[3,4,5]"));
  auto v = constant<float>(zeros<float>({4}));
  REQUIRE_THROWS_WITH(matmul(v, constant<float>(zeros<float>({4, 2}))),
                      Catch::Contains("matmul: [4] x [4,2]"));
  auto z = constant<float>(zeros<float>({2, 2, 3, 4}));
  REQUIRE_THROWS_WITH(matmul(z, constant<float>(zeros<float>({2, 4, 5}))),
                      Catch::Contains("matmul: [2,2,3,4] x [2,4,5]"));
}
