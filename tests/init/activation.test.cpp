#include "peft/init/activation.hpp"

#include <Eigen/SVD>
#include <catch2/catch.hpp>
#include <cmath>

#include "peft/adapters/lora.hpp"

using namespace peft;
using Catch::Matchers::Contains;
using Catch::Matchers::WithinRel;

namespace {
// N rows whose centred covariance has principal directions P (orthonormal rows) with standard
// deviations sd, plus a mean offset and tiny isotropic noise.
matrix<double> activations(Eigen::Index n, const matrix<double>& P, const vector<double>& sd,
                           std::uint64_t seed, double noise = 1e-3) {
  rng g(seed);
  const Eigen::Index in = P.cols();
  matrix<double> X(n, in);
  vector<double> mean(in);
  for (Eigen::Index j = 0; j < in; ++j) mean[j] = g.normal(0.0, 3.0);
  for (Eigen::Index i = 0; i < n; ++i) {
    vector<double> row = mean;
    for (Eigen::Index k = 0; k < P.rows(); ++k) row += g.normal(0.0, sd[k]) * P.row(k).transpose();
    for (Eigen::Index j = 0; j < in; ++j) row[j] += g.normal(0.0, noise);
    X.row(i) = row.transpose();
  }
  return X;
}
matrix<double> orthonormal_rows(Eigen::Index k, Eigen::Index in, std::uint64_t seed) {
  rng g(seed);
  matrix<double> a(in, k);
  for (Eigen::Index i = 0; i < a.size(); ++i) a.data()[i] = g.normal();
  return detail::orthonormal_basis<double>(a).transpose();
}
double max_abs(const matrix<double>& m) { return m.cwiseAbs().maxCoeff(); }
// Reference PCA: thin SVD of the centred data (Jacobi).
Eigen::JacobiSVD<Eigen::MatrixXd> pca(const matrix<double>& X) {
  Eigen::MatrixXd Xc = X;
  Xc.rowwise() -= Xc.colwise().mean();
  return Eigen::JacobiSVD<Eigen::MatrixXd>(Xc, Eigen::ComputeThinV);
}
}  // namespace

TEST_CASE("EVA: A spans the top-r principal directions of the inputs, B = 0", "[init][eva]") {
  // Paischer et al. 2024 (EVA): A = the top-r right singular vectors of the (centred)
  // activations X, B = 0 (the adapted layer equals the base at init).
  const Eigen::Index in = 10;
  const matrix<double> P = orthonormal_rows(4, in, 1);
  vector<double> sd(4);
  sd << 4, 2, 1, 0.5;
  for (Eigen::Index n : {200, 6}) {  // N >= in: Gram eigen-path; N < in: SVD path
    INFO("N = " << n);
    const matrix<double> X = activations(n, P, sd, 2);
    const std::size_t r = 3;
    lora_config cfg;
    cfg.r = r;
    tensor<double> W = zeros<double>({5, std::size_t(in)});
    lora<double> a(std::size_t(in), 5, cfg, init::eva(X, 4), &W);
    const auto A = as_matrix(a.lora_A.value());
    for (double v : a.lora_B.value()) REQUIRE(v == 0.0);
    REQUIRE(max_abs(A * A.transpose() - matrix<double>::Identity(3, 3)) < 1e-10);
    // Same rows (up to sign, fixed by svd_flip) as an independent PCA.
    const auto ref = pca(X);
    const matrix<double> V = ref.matrixV().leftCols(3).transpose();
    for (Eigen::Index i = 0; i < 3; ++i) {
      const double dot = A.row(i).dot(V.row(i));
      REQUIRE_THAT(std::abs(dot), WithinRel(1.0, 1e-9));
      Eigen::Index j = 0;
      A.row(i).cwiseAbs().maxCoeff(&j);
      REQUIRE(A(i, j) > 0);  // svd_flip: largest-magnitude entry positive
    }
    if (n == 200) {  // enough samples: the planted directions are recovered
      REQUIRE(max_abs(A.transpose() * A - P.topRows(3).transpose() * P.topRows(3)) < 0.1);
    }
  }
}

TEST_CASE("EVA decomposition: ratios, whitening, no centring", "[init][eva]") {
  const Eigen::Index in = 6;
  const matrix<double> P = orthonormal_rows(3, in, 3);
  vector<double> sd(3);
  sd << 3, 1, 0.3;
  const matrix<double> X = activations(50, P, sd, 4);
  const auto d = init::eva_svd(X, 3);
  const auto ref = pca(X);
  Eigen::MatrixXd Xc = X;
  Xc.rowwise() -= Xc.colwise().mean();
  for (Eigen::Index i = 0; i < 3; ++i) {
    REQUIRE_THAT(d.singular_values[i], WithinRel(ref.singularValues()[i], 1e-10));
    REQUIRE_THAT(d.explained_variance_ratio[i],
                 WithinRel(std::pow(ref.singularValues()[i], 2) / Xc.squaredNorm(), 1e-10));
  }
  // whiten: row i divided by √σ_i.
  lora_config cfg;
  cfg.r = 2;
  init::eva_config ec;
  ec.whiten = true;
  lora<double> a(std::size_t(in), 4, cfg, init::eva(X, 3, ec));
  const auto A = as_matrix(a.lora_A.value());
  for (Eigen::Index i = 0; i < 2; ++i)
    REQUIRE_THAT(A.row(i).norm(), WithinRel(1.0 / std::sqrt(d.singular_values[i]), 1e-10));
  // Without centring, the mean direction dominates (uncentred SVD).
  const auto dn = init::eva_svd(X, 1, /*center=*/false);
  Eigen::JacobiSVD<Eigen::MatrixXd> raw(Eigen::MatrixXd(X), Eigen::ComputeThinV);
  REQUIRE_THAT(std::abs(dn.components.row(0).dot(raw.matrixV().col(0).transpose())),
               WithinRel(1.0, 1e-9));
}

TEST_CASE("EVA rank redistribution by explained variance", "[init][eva]") {
  // PEFT's _get_rank_distribution: at most round(r·rho) per layer, keep the sum(r) largest ratios.
  std::map<std::string, vector<double>> ratios;
  ratios["a"] = (vector<double>(4) << 0.5, 0.3, 0.1, 0.05).finished();
  ratios["b"] = (vector<double>(4) << 0.2, 0.15, 0.12, 0.01).finished();
  ratios["c"] = (vector<double>(4) << 0.04, 0.03, 0.02, 0.01).finished();
  const std::map<std::string, std::size_t> r{{"a", 2}, {"b", 2}, {"c", 2}};
  const auto d = init::eva_rank_distribution(ratios, r, 2.0);
  // pooled top 6: a .5 .3 .1 .05, b .2 .15 .12 -> a gets 3 (.5 .3 .1), b 3 (.2 .15 .12), c 0
  REQUIRE(d.at("a") == 3);
  REQUIRE(d.at("b") == 3);
  REQUIRE(d.at("c") == 0);
  // rho = 1: no redistribution (each layer keeps r).
  const auto d1 = init::eva_rank_distribution(ratios, r, 1.0);
  for (auto& [k, v] : d1) REQUIRE(v == 2);
  // Python's round: 2.5 -> 2, 3.5 -> 4.
  REQUIRE(init::eva_max_components(5, 0.5) == 2);
  REQUIRE(init::eva_max_components(7, 0.5) == 4);
  REQUIRE_THROWS_WITH(init::eva_rank_distribution(ratios, {{"z", 1}}, 2.0), Contains("'z'"));
}

TEST_CASE("EVA rejects bad input", "[init][eva]") {
  const matrix<double> X = matrix<double>::Random(5, 4);
  REQUIRE_THROWS_WITH(init::eva_svd(X, 5), Contains("eva_svd") && Contains("[5,4]"));
  REQUIRE_THROWS_WITH(init::eva_svd(matrix<double>::Ones(5, 4), 2), Contains("zero variance"));
  lora_config cfg;
  cfg.r = 3;
  REQUIRE_THROWS_WITH((lora<double>(4, 2, cfg, init::eva(X, 2))), Contains("only 2 components"));
  REQUIRE_THROWS_WITH((lora<double>(6, 2, cfg, init::eva(X, 3))),
                      Contains("eva: components [3,4]"));
  init::eva_config bad;
  bad.rho = 0.5;
  REQUIRE_THROWS_WITH(init::eva(X, 2, bad), Contains("rho"));
}

TEST_CASE("EVA in float", "[init][eva]") {
  const matrix<double> P = orthonormal_rows(3, 8, 7);
  vector<double> sd(3);
  sd << 2, 1, 0.5;
  const matrix<double> X = activations(60, P, sd, 8);
  lora_config cfg;
  cfg.r = 2;
  lora<double> ad(8, 3, cfg, init::eva(X, 2));
  lora<float> af(8, 3, cfg, init::eva(matrix<float>(X.cast<float>()), 2));
  REQUIRE(max_abs(as_matrix(af.lora_A.value()).cast<double>() - as_matrix(ad.lora_A.value())) < 1e-4);
  for (float v : af.lora_B.value()) REQUIRE(v == 0.0f);
}
