#include <catch2/catch.hpp>

#include "peft/detail/svd.hpp"

using namespace peft;

namespace {
// A [m, n] matrix with singular values 2^-i (a decaying spectrum like real gradients).
matrix<double> decaying(Eigen::Index m, Eigen::Index n, std::uint64_t seed) {
  rng g(seed);
  matrix<double> a(m, m), b(n, n);
  for (Eigen::Index i = 0; i < a.size(); ++i) a.data()[i] = g.normal();
  for (Eigen::Index i = 0; i < b.size(); ++i) b.data()[i] = g.normal();
  const matrix<double> U = detail::orthonormal_basis<double>(a);
  const matrix<double> V = detail::orthonormal_basis<double>(b);
  const Eigen::Index k = std::min(m, n);
  vector<double> s(k);
  for (Eigen::Index i = 0; i < k; ++i) s[i] = std::pow(2.0, -double(i));
  return U.leftCols(k) * s.asDiagonal() * V.leftCols(k).transpose();
}
}  // namespace

TEST_CASE("truncated SVD reconstructs and orders singular values", "[detail][svd]") {
  const matrix<double> G = decaying(12, 9, 1);
  auto s = detail::truncated_svd<double>(G, 9);
  REQUIRE((s.U * s.S.asDiagonal() * s.V.transpose() - G).norm() < 1e-12);
  REQUIRE(s.S[0] == Approx(1.0));
  REQUIRE(s.S[8] == Approx(std::pow(2.0, -8)));
  auto small = detail::truncated_svd<double>(G, 2, /*largest=*/false);
  REQUIRE(small.S[1] == Approx(std::pow(2.0, -8)));
  REQUIRE((s.U.transpose() * s.U - matrix<double>::Identity(9, 9)).norm() < 1e-12);
}

TEST_CASE("randomized SVD recovers the top-r subspace of a decaying spectrum", "[detail][svd]") {
  const matrix<double> G = decaying(60, 40, 2);
  rng g(3);
  auto r = detail::randomized_svd<double>(G, 5, 2, g);
  auto e = detail::truncated_svd<double>(G, 5);
  for (int i = 0; i < 5; ++i) REQUIRE(r.S[i] == Approx(e.S[i]).epsilon(1e-8));
  // Same subspace: projector difference is ~0.
  REQUIRE((r.U * r.U.transpose() - e.U * e.U.transpose()).norm() < 1e-8);
  // Reproducible from the seed.
  rng g1(3), g2(3);
  auto a = detail::randomized_svd<double>(G, 5, 1, g1);
  auto b = detail::randomized_svd<double>(G, 5, 1, g2);
  REQUIRE(a.U == b.U);
}

TEST_CASE("a rank-r matrix is recovered exactly by the randomized SVD", "[detail][svd]") {
  rng g(4);
  matrix<double> a(30, 3), b(3, 20);
  for (Eigen::Index i = 0; i < a.size(); ++i) a.data()[i] = g.normal();
  for (Eigen::Index i = 0; i < b.size(); ++i) b.data()[i] = g.normal();
  const matrix<double> G = a * b;
  auto r = detail::randomized_svd<double>(G, 3, 0, g);
  REQUIRE((r.U * r.S.asDiagonal() * r.V.transpose() - G).norm() < 1e-10 * G.norm());
}

TEST_CASE("bad ranks are rejected with the shape", "[detail][svd]") {
  matrix<double> G = matrix<double>::Ones(4, 3);
  REQUIRE_THROWS_WITH(detail::truncated_svd<double>(G, 4), Catch::Contains("[4,3]"));
  rng g(1);
  REQUIRE_THROWS_AS(detail::randomized_svd<double>(G, 0, 1, g), value_error);
}
