#include <catch2/catch.hpp>

#include <cmath>
#include <numbers>
#include <thread>
#include <vector>

#include "peft/core/random.hpp"
#include "peft/detail/dct.hpp"

using namespace peft;
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

namespace {
// Orthonormal DCT-II by its definition: X_k = c_k Σ_j x_j cos(π (2j+1) k / (2n)).
std::vector<double> dct_by_definition(const std::vector<double>& x) {
  const std::size_t n = x.size();
  std::vector<double> X(n, 0.0);
  for (std::size_t k = 0; k < n; ++k) {
    double s = 0;
    for (std::size_t j = 0; j < n; ++j)
      s += x[j] * std::cos(std::numbers::pi * double(2 * j + 1) * double(k) / (2.0 * double(n)));
    X[k] = s * (k == 0 ? std::sqrt(1.0 / double(n)) : std::sqrt(2.0 / double(n)));
  }
  return X;
}
}  // namespace

TEST_CASE("DCT-II matrix is orthonormal: DᵀD = DDᵀ = I", "[detail][dct]") {
  for (std::size_t n : {1u, 2u, 3u, 7u, 16u, 61u, 256u}) {
    INFO("n = " << n);
    const matrix<double> D = detail::dct_matrix<double>(n);
    const matrix<double> I = matrix<double>::Identity(Eigen::Index(n), Eigen::Index(n));
    REQUIRE((D.transpose() * D - I).cwiseAbs().maxCoeff() < 1e-12);
    REQUIRE((D * D.transpose() - I).cwiseAbs().maxCoeff() < 1e-12);
  }
}

TEST_CASE("DCT-II matches its definition (scipy dct type 2, norm ortho)", "[detail][dct]") {
  // Hand-computed n = 2: D = [[1/√2, 1/√2], [1/√2, -1/√2]].
  const matrix<double> D2 = detail::dct_matrix<double>(2);
  const double h = std::sqrt(0.5);
  REQUIRE_THAT(D2(0, 0), WithinRel(h, 1e-15));
  REQUIRE_THAT(D2(1, 1), WithinRel(-h, 1e-15));
  // n = 4, x = [1, 2, 3, 4]: X_0 = 10/2 = 5, X_1 = -2.2304424973876635 (scipy.fft.dct, norm="ortho").
  {
    vector<double> x(4);
    x << 1, 2, 3, 4;
    const vector<double> X = detail::dct_matrix<double>(4) * x;
    REQUIRE_THAT(X[0], WithinRel(5.0, 1e-14));
    REQUIRE_THAT(X[1], WithinRel(-2.2304424973876635, 1e-12));
    REQUIRE_THAT(X[2], WithinAbs(0.0, 1e-14));
  }
  rng g(3);
  for (std::size_t n : {5u, 12u, 33u}) {
    std::vector<double> x(n);
    for (auto& v : x) v = g.normal();
    const auto ref = dct_by_definition(x);
    const vector<double> X = detail::dct_matrix<double>(n) * Eigen::Map<const vector<double>>(x.data(), Eigen::Index(n));
    for (std::size_t k = 0; k < n; ++k) REQUIRE_THAT(X[Eigen::Index(k)], WithinAbs(ref[k], 1e-12));
  }
}

TEST_CASE("basis rows are rows of D; cache returns one shared matrix", "[detail][dct]") {
  const matrix<double> D = detail::dct_matrix<double>(9);
  const matrix<double> R = detail::dct_basis_rows<double>(9, {4, 0, 8});
  REQUIRE(R.rows() == 3);
  REQUIRE((R.row(0) - D.row(4)).cwiseAbs().maxCoeff() == 0.0);
  REQUIRE((R.row(1) - D.row(0)).cwiseAbs().maxCoeff() == 0.0);
  REQUIRE((R.row(2) - D.row(8)).cwiseAbs().maxCoeff() == 0.0);
  auto a = detail::dct_matrix_cached<double>(9);
  auto b = detail::dct_matrix_cached<double>(9);
  REQUIRE(a.get() == b.get());
  REQUIRE(*a == D);
  // Concurrent first use is safe and still yields one matrix.
  detail::dct_cache_clear<double>();
  std::vector<std::shared_ptr<const matrix<double>>> got(4);
  std::vector<std::thread> ts;
  for (int i = 0; i < 4; ++i) ts.emplace_back([&, i] { got[std::size_t(i)] = detail::dct_matrix_cached<double>(31); });
  for (auto& t : ts) t.join();
  for (auto& p : got) REQUIRE(p.get() == got[0].get());
  // float entries agree with double ones to float rounding.
  const matrix<float> Df = detail::dct_matrix<float>(9);
  REQUIRE((Df.cast<double>() - D).cwiseAbs().maxCoeff() < 1e-7);
}

TEST_CASE("large n stays accurate (argument reduction)", "[detail][dct]") {
  const std::size_t n = 4096;
  const matrix<double> R = detail::dct_basis_rows<double>(n, {1, 2047, 4095});
  // Each basis row has unit norm and they are mutually orthogonal.
  REQUIRE_THAT(R.row(0).norm(), WithinAbs(1.0, 1e-12));
  REQUIRE_THAT(R.row(2).norm(), WithinAbs(1.0, 1e-12));
  REQUIRE(std::abs(R.row(0).dot(R.row(1))) < 1e-12);
  REQUIRE(std::abs(R.row(1).dot(R.row(2))) < 1e-12);
}

TEST_CASE("1-D and 2-D transforms invert each other", "[detail][dct]") {
  rng g(5);
  matrix<double> X(6, 4);
  for (Eigen::Index i = 0; i < X.size(); ++i) X.data()[i] = g.normal();
  REQUIRE((detail::idct_colwise<double>(detail::dct_colwise<double>(X)) - X).cwiseAbs().maxCoeff() < 1e-12);
  REQUIRE((detail::idct_rowwise<double>(detail::dct_rowwise<double>(X)) - X).cwiseAbs().maxCoeff() < 1e-12);
  const matrix<double> S = detail::dct_2d<double>(X);
  REQUIRE((detail::idct_2d<double>(S) - X).cwiseAbs().maxCoeff() < 1e-12);
  // Separable: 2-D = columns then rows; Parseval: orthonormal transforms keep the norm.
  REQUIRE((S - detail::dct_rowwise<double>(detail::dct_colwise<double>(X))).cwiseAbs().maxCoeff() < 1e-12);
  REQUIRE_THAT(S.norm(), WithinRel(X.norm(), 1e-12));
  // Column transform of column j equals the 1-D transform of that column.
  const vector<double> c1 = detail::dct_matrix<double>(6) * X.col(1);
  REQUIRE((detail::dct_colwise<double>(X).col(1) - c1).cwiseAbs().maxCoeff() < 1e-12);
}

TEST_CASE("DCT bad input", "[detail][dct]") {
  REQUIRE_THROWS_AS(detail::dct_matrix<double>(0), value_error);
  REQUIRE_THROWS_WITH(detail::dct_basis_rows<double>(4, {1, 4}), Catch::Contains("frequency 4") && Catch::Contains("n = 4"));
}
