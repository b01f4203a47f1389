#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

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

namespace {
template <class T>
matrix<T> gaussian(Eigen::Index m, Eigen::Index n, std::uint64_t seed) {
  rng g(seed);
  return as_matrix(randn<T>({std::size_t(m), std::size_t(n)}, g));
}
// [m, n] with the given singular values (random orthonormal factors, Householder-made).
template <class T>
matrix<T> with_spectrum(Eigen::Index m, Eigen::Index n, const vector<double>& s,
                        std::uint64_t seed) {
  const Eigen::Index k = s.size();
  const matrix<double> U = detail::orthonormal_basis<double>(gaussian<double>(m, k, seed));
  const matrix<double> V = detail::orthonormal_basis<double>(gaussian<double>(n, k, seed + 1));
  return (U * s.asDiagonal() * V.transpose()).cast<T>();
}
vector<double> power_spectrum(Eigen::Index k, double a) {
  vector<double> s(k);
  for (Eigen::Index i = 0; i < k; ++i) s[i] = std::pow(double(i + 1), -a);
  return s;
}
template <class T>
double orth_error(const matrix<T>& Q) {
  const Eigen::Index k = Q.cols();
  return (Q.transpose().template cast<double>() * Q.template cast<double>() -
          matrix<double>::Identity(k, k))
      .norm();
}
template <class T>
double rel_residual(const matrix<T>& Y, const detail::orthonormalize_result<T>& o) {
  return (o.Q.template cast<double>() * o.R.template cast<double>() - Y.template cast<double>())
             .norm() /
         Y.template cast<double>().norm();
}
// ‖G·V‖²_F / (sum of the r largest σ²): the energy a right basis V [n, r] captures.
double captured(const matrix<double>& G, const matrix<double>& V, const vector<double>& s) {
  return (G * V).squaredNorm() / s.head(V.cols()).squaredNorm();
}
}  // namespace

TEMPLATE_TEST_CASE("orthonormalize: CholeskyQR2 on a well-conditioned tall matrix", "[detail][svd]",
                   float, double) {
  using T = TestType;
  const double eps = double(std::numeric_limits<T>::epsilon());
  // cond(Y) = 100: the Cholesky path.
  const matrix<T> Y = with_spectrum<T>(300, 20, power_spectrum(20, 1.5) * 7.0, 1);
  const auto o = detail::orthonormalize<T>(Y, true);
  REQUIRE_FALSE(o.householder);
  REQUIRE(o.Q.rows() == 300);
  REQUIRE(o.Q.cols() == 20);
  CHECK(orth_error(o.Q) < 50 * eps);
  CHECK(rel_residual(Y, o) < 50 * eps);
  // R is upper triangular with a positive diagonal (Cholesky's convention).
  REQUIRE(o.R.rows() == 20);
  REQUIRE(o.R.cols() == 20);
  CHECK(matrix<T>(o.R.template triangularView<Eigen::StrictlyLower>()).norm() == 0);
  CHECK(o.R.diagonal().minCoeff() > 0);
  // Without R: the same Q.
  const auto q = detail::orthonormalize<T>(Y);
  CHECK(q.R.size() == 0);
  CHECK(q.Q == o.Q);
  // In place on a column-major copy: the same factorisation.
  detail::col_matrix<T> Yc = Y;
  matrix<T> R;
  REQUIRE(detail::orthonormalize_in_place<T>(Yc, &R));
  CHECK((matrix<T>(Yc) - o.Q).norm() < 10 * eps);
}

TEMPLATE_TEST_CASE("orthonormalize falls back to Householder on rank-deficient input",
                   "[detail][svd]", float, double) {
  using T = TestType;
  const double eps = double(std::numeric_limits<T>::epsilon());
  // Rank 3 in 8 columns (e.g. a gradient from fewer tokens than the sketch has columns).
  const matrix<T> low = gaussian<T>(50, 3, 2) * gaussian<T>(3, 8, 3);
  // A zero column.
  matrix<T> zero_col = gaussian<T>(50, 8, 4);
  zero_col.col(5).setZero();
  // A repeated column.
  matrix<T> repeated = gaussian<T>(50, 8, 5);
  repeated.col(7) = repeated.col(2);
  for (const matrix<T>* Y : std::vector<const matrix<T>*>{&low, &zero_col, &repeated}) {
    const auto o = detail::orthonormalize<T>(*Y, true);
    CHECK(o.householder);
    CHECK(orth_error(o.Q) < 50 * eps);
    CHECK(rel_residual(*Y, o) < 50 * eps);
    CHECK(matrix<T>(o.R.template triangularView<Eigen::StrictlyLower>()).norm() == 0);
  }
  // The all-zero matrix: an orthonormal Q and R = 0.
  const auto z = detail::orthonormalize<T>(matrix<T>::Zero(10, 4), true);
  CHECK(z.householder);
  CHECK(orth_error(z.Q) < 50 * eps);
  CHECK(z.R.norm() == 0);
}

TEST_CASE("orthonormalize: cond(Y)² beyond 1/eps takes Householder in float, not in double",
          "[detail][svd]") {
  // cond(Y) = 1e5: float's CholeskyQR2 cannot hold it (cond² = 1e10 > 1/eps ≈ 8e6), double's can
  // (1e10 < 1/eps ≈ 4.5e15).
  vector<double> s(12);
  for (Eigen::Index i = 0; i < 12; ++i) s[i] = std::pow(10.0, -5.0 * double(i) / 11.0);
  const matrix<double> Yd = with_spectrum<double>(200, 12, s, 6);
  const matrix<float> Yf = Yd.cast<float>();
  const auto f = detail::orthonormalize<float>(Yf, true);
  CHECK(f.householder);
  CHECK(orth_error(f.Q) < 1e-5);
  CHECK(rel_residual(Yf, f) < 1e-5);
  const auto d = detail::orthonormalize<double>(Yd, true);
  CHECK_FALSE(d.householder);
  CHECK(orth_error(d.Q) < 1e-13);
  CHECK(rel_residual(Yd, d) < 1e-14);
  // A moderately conditioned float matrix (cond 300) stays on the fast path.
  for (Eigen::Index i = 0; i < 12; ++i) s[i] = std::pow(300.0, -double(i) / 11.0);
  const matrix<float> Ym = with_spectrum<float>(200, 12, s, 7);
  const auto m = detail::orthonormalize<float>(Ym, true);
  CHECK_FALSE(m.householder);
  CHECK(orth_error(m.Q) < 1e-5);
  CHECK(rel_residual(Ym, m) < 1e-6);
}

TEST_CASE("span_basis_in_place: one pass keeps the span, falls back on rank deficiency",
          "[detail][svd]") {
  // cond(Y) = 300 in float: one CholeskyQR pass is orthonormal only to ~eps·cond² ≈ 1e-2, but
  // its span is Y's to working precision.
  vector<double> s(12);
  for (Eigen::Index i = 0; i < 12; ++i) s[i] = std::pow(300.0, -double(i) / 11.0);
  const matrix<float> Y = with_spectrum<float>(200, 12, s, 7);
  detail::col_matrix<float> Q = Y;
  REQUIRE(detail::span_basis_in_place<float>(Q));
  CHECK(orth_error(matrix<float>(Q)) < 0.05);
  const matrix<double> P = detail::orthonormal_basis<double>(matrix<double>(Q.cast<double>()));
  const matrix<double> Yd = Y.cast<double>();
  CHECK((Yd - P * (P.transpose() * Yd)).norm() < 1e-6 * Yd.norm());
  // Rank 3 of 8 columns: Householder, orthonormal.
  detail::col_matrix<double> L = gaussian<double>(50, 3, 2) * gaussian<double>(3, 8, 3);
  CHECK_FALSE(detail::span_basis_in_place<double>(L));
  CHECK(orth_error(matrix<double>(L)) < 1e-13);
  detail::col_matrix<double> wide(3, 5);
  REQUIRE_THROWS_WITH(detail::span_basis_in_place<double>(wide), Catch::Contains("[3,5]"));
}

TEST_CASE("orthonormalize rejects a wide matrix with its shape", "[detail][svd]") {
  REQUIRE_THROWS_AS(detail::orthonormalize<double>(matrix<double>::Ones(3, 5)), shape_error);
  REQUIRE_THROWS_WITH(detail::orthonormalize<double>(matrix<double>::Ones(3, 5)),
                      Catch::Contains("orthonormalize") && Catch::Contains("[3,5]"));
}

TEST_CASE("the Gaussian sketch is standard normal and reproducible", "[detail][svd]") {
  rng g1(7), g2(7);
  matrix<float> a(1001, 999), b(1001, 999);  // odd size: the last pair is half used
  detail::fill_gaussian_sketch(a, g1);
  detail::fill_gaussian_sketch(b, g2);
  REQUIRE(a == b);
  REQUIRE(g1 == g2);
  const Eigen::ArrayXd x = Eigen::Map<const vector<float>>(a.data(), a.size()).cast<double>();
  const double n = double(x.size());
  const double mean = x.sum() / n;
  const double var = (x - mean).square().sum() / n;
  const double kurt = (x - mean).pow(4).sum() / n / (var * var);
  // Standard errors at n = 1e6: 0.001 (mean), 0.0014 (variance), 0.005 (kurtosis).
  CHECK(std::abs(mean) < 0.005);
  CHECK(std::abs(var - 1) < 0.007);
  CHECK(std::abs(kurt - 3) < 0.03);
  // Exactly one uniform per entry (rounded up to pairs).
  rng used(7), counted(7);
  matrix<double> c(3, 3);
  detail::fill_gaussian_sketch(c, used);
  for (int i = 0; i < 10; ++i) counted.uniform();
  CHECK(used == counted);
}

TEST_CASE("Rayleigh-Ritz tail: same energy as the exact tail, same singular values",
          "[detail][svd]") {
  const std::size_t r = 16;
  // σ_i = 1/(i+1), the GaLore benchmark's spectrum: the fast tail (one product with G fewer)
  // keeps the energy of the exact tail's basis within 1e-3 at the same niter.
  {
    const vector<double> s = power_spectrum(200, 1.0);
    const matrix<double> G = with_spectrum<double>(300, 200, s, 8);
    for (std::size_t niter : {1, 2}) {
      detail::rsvd_options exact, ritz;
      ritz.tail = detail::rsvd_tail::rayleigh_ritz;
      ritz.transpose = true;  // the right factor is the accurate one (it is the one scored)
      rng g1(9), g2(9);
      const auto e = detail::randomized_svd<double>(G, r, niter, g1, exact);
      const auto f = detail::randomized_svd<double>(G, r, niter, g2, ritz);
      INFO("niter " << niter << ": energy exact " << captured(G, e.V, s) << ", ritz "
                    << captured(G, f.V, s));
      CHECK(std::abs(captured(G, f.V, s) / captured(G, e.V, s) - 1) < 1e-3);
      CHECK(captured(G, f.V, s) > 0.99);
      // Singular values: the leading ones agree; the last few of the fast tail at niter 1 sit up
      // to ~7% lower (they are those of G·Z, Z half an iteration behind).
      for (Eigen::Index i = 0; i < Eigen::Index(niter == 1 ? r / 2 : r); ++i)
        CHECK_THAT(f.S[i], Catch::Matchers::WithinRel(e.S[i], 1e-2));
      // A valid factorisation: orthonormal factors, Uᵀ·G·V = diag(S).
      CHECK(orth_error(f.U) < 1e-12);
      CHECK(orth_error(f.V) < 1e-12);
      CHECK((f.U.transpose() * G * f.V - matrix<double>(f.S.asDiagonal())).norm() < 1e-12);
    }
  }
  // σ_i = (i+1)^-1/2, slowly decaying: here the exact tail's right factor (2·niter + 2 products)
  // is visibly better than either factor of a 2·niter + 1 product scheme. The Rayleigh-Ritz
  // right factor (transposed run) matches the exact tail's 2·niter + 1 factor, the left one of
  // the transposed run, i.e. the fast tail gives up exactly the product it saves.
  {
    const vector<double> s = power_spectrum(150, 0.5);
    const matrix<double> G = with_spectrum<double>(200, 150, s, 8);
    for (std::size_t niter : {1, 2}) {
      detail::rsvd_options exact_t, ritz;
      exact_t.transpose = true;
      ritz.tail = detail::rsvd_tail::rayleigh_ritz;
      ritz.transpose = true;
      rng g1(9), g2(9);
      const auto e = detail::randomized_svd<double>(G, r, niter, g1, exact_t);
      const auto f = detail::randomized_svd<double>(G, r, niter, g2, ritz);
      INFO("niter " << niter << ": energy exact (transposed) " << captured(G, e.V, s)
                    << ", ritz " << captured(G, f.V, s));
      CHECK(std::abs(captured(G, f.V, s) / captured(G, e.V, s) - 1) < 2e-3);
    }
  }
}

TEST_CASE("Rayleigh-Ritz tail is exact on a fast-decaying spectrum, float and double",
          "[detail][svd]") {
  const matrix<double> G = decaying(60, 40, 2);
  auto e = detail::truncated_svd<double>(G, 5);
  detail::rsvd_options o;
  o.tail = detail::rsvd_tail::rayleigh_ritz;
  for (bool tr : {false, true}) {
    o.transpose = tr;
    rng g(3);
    auto r = detail::randomized_svd<double>(G, 5, 2, g, o);
    for (int i = 0; i < 5; ++i) CHECK(r.S[i] == Approx(e.S[i]).epsilon(1e-8));
    CHECK((r.U * r.U.transpose() - e.U * e.U.transpose()).norm() < 1e-8);
    CHECK((r.V * r.V.transpose() - e.V * e.V.transpose()).norm() < 1e-8);
    rng gf(3);
    auto f = detail::randomized_svd<float>(G.cast<float>(), 5, 2, gf, o);
    for (int i = 0; i < 5; ++i) CHECK(f.S[i] == Approx(e.S[i]).epsilon(1e-4));
    CHECK((f.V.cast<double>() * f.V.cast<double>().transpose() - e.V * e.V.transpose()).norm() <
          1e-4);
  }
}

TEST_CASE("randomized SVD options: reproducible bits, niter 0, wanted factors, rank deficiency",
          "[detail][svd]") {
  const matrix<float> G = with_spectrum<float>(70, 50, power_spectrum(50, 1.0), 10);
  detail::rsvd_options o;
  o.tail = detail::rsvd_tail::rayleigh_ritz;
  rng g1(4), g2(4);
  const auto a = detail::randomized_svd<float>(G, 6, 2, g1, o);
  const auto b = detail::randomized_svd<float>(G, 6, 2, g2, o);
  REQUIRE(a.U == b.U);
  REQUIRE(a.S == b.S);
  REQUIRE(a.V == b.V);
  REQUIRE(g1 == g2);
  // niter = 0 has no power-iteration pair: the exact tail runs, bit for bit.
  rng g3(4), g4(4);
  detail::rsvd_options ex;
  const auto c = detail::randomized_svd<float>(G, 6, 0, g3, o);
  const auto d = detail::randomized_svd<float>(G, 6, 0, g4, ex);
  REQUIRE(c.V == d.V);
  // Only the wanted factor is formed; it is the same as when both are.
  for (auto tail : {detail::rsvd_tail::exact, detail::rsvd_tail::rayleigh_ritz}) {
    o.tail = tail;
    rng g5(4), g6(4);
    o.want_u = false;
    const auto v_only = detail::randomized_svd<float>(G, 6, 2, g5, o);
    o.want_u = true;
    const auto both = detail::randomized_svd<float>(G, 6, 2, g6, o);
    CHECK(v_only.U.size() == 0);
    CHECK(v_only.V == both.V);
  }
  // A gradient of rank 3 < k: the Householder fallback keeps everything orthonormal and exact.
  const matrix<double> L = gaussian<double>(40, 3, 11) * gaussian<double>(3, 30, 12);
  for (auto tail : {detail::rsvd_tail::exact, detail::rsvd_tail::rayleigh_ritz})
    for (bool tr : {false, true}) {
      detail::rsvd_options p;
      p.tail = tail;
      p.transpose = tr;
      rng g(5);
      const auto s = detail::randomized_svd<double>(L, 5, 1, g, p);
      CHECK(orth_error(s.U) < 1e-12);
      CHECK(orth_error(s.V) < 1e-12);
      CHECK((s.U * s.S.asDiagonal() * s.V.transpose() - L).norm() < 1e-10 * L.norm());
    }
}
