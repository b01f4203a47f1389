#include "peft/init/svd.hpp"

#include <Eigen/SVD>
#include <catch2/catch.hpp>
#include <cmath>

#include "peft/adapters/adapted_linear.hpp"
#include "peft/adapters/lora.hpp"
#include "peft/adapters/lora_xs.hpp"

using namespace peft;
using Catch::Matchers::Contains;
using Catch::Matchers::WithinRel;

namespace {
// W [m, n] = U·diag(s)·Vᵀ with random orthonormal U, V and a chosen spectrum.
matrix<double> with_spectrum(Eigen::Index m, Eigen::Index n, const vector<double>& s,
                             std::uint64_t seed) {
  rng g(seed);
  matrix<double> a(m, m), b(n, n);
  for (Eigen::Index i = 0; i < a.size(); ++i) a.data()[i] = g.normal();
  for (Eigen::Index i = 0; i < b.size(); ++i) b.data()[i] = g.normal();
  const matrix<double> U = detail::orthonormal_basis<double>(a);
  const matrix<double> V = detail::orthonormal_basis<double>(b);
  const Eigen::Index k = s.size();
  return U.leftCols(k) * s.asDiagonal() * V.leftCols(k).transpose();
}
vector<double> decaying(Eigen::Index k) {
  vector<double> s(k);
  for (Eigen::Index i = 0; i < k; ++i) s[i] = 3.0 * std::pow(0.5, double(i));
  return s;
}
// Independent reference (Jacobi SVD): the sum of the singular triplets [from, from + r).
matrix<double> svd_part(const matrix<double>& W, Eigen::Index from, Eigen::Index r) {
  Eigen::JacobiSVD<Eigen::MatrixXd> svd(Eigen::MatrixXd(W),
                                        Eigen::ComputeThinU | Eigen::ComputeThinV);
  return svd.matrixU().middleCols(from, r) * svd.singularValues().segment(from, r).asDiagonal() *
         svd.matrixV().middleCols(from, r).transpose();
}
double max_abs(const matrix<double>& m) { return m.cwiseAbs().maxCoeff(); }
}  // namespace

TEST_CASE("PiSSA: s·B·A is the principal rank-r part of W and W_res + s·B·A == W",
          "[init][svd][pissa]") {
  // Meng et al. 2024, eq. (2)-(4) with PEFT's handling of the scaling s:
  //   W = U Σ Vᵀ,  A = √(Σ_r/s)·V_rᵀ,  B = U_r·√(Σ_r/s),  W_res = W − s·B·A
  const std::size_t in = 9, out = 7, r = 3;
  lora_config cfg;
  cfg.r = r;
  cfg.alpha = 12;  // s = 4: the division by s matters
  const matrix<double> W0 = with_spectrum(7, 9, decaying(7), 1);
  tensor<double> W = to_tensor(W0);
  lora<double> a(in, out, cfg, init::pissa{}, &W);
  const double s = a.scaling();
  REQUIRE(s == 4.0);
  const auto A = as_matrix(a.lora_A.value());
  const auto B = as_matrix(a.lora_B.value());
  REQUIRE(max_abs(s * B * A - svd_part(W0, 0, r)) < 1e-12);
  REQUIRE(max_abs(as_matrix(W) + s * B * A - W0) < 1e-12);
  // √(Σ_r/s) on each side: A·Aᵀ = B ᵀ·B = Σ_r / s (diagonal).
  const matrix<double> AAt = A * A.transpose(), BtB = B.transpose() * B;
  const vector<double> S = decaying(7).head(r);
  for (Eigen::Index i = 0; i < Eigen::Index(r); ++i) {
    REQUIRE_THAT(AAt(i, i), WithinRel(S[i] / s, 1e-12));
    REQUIRE_THAT(BtB(i, i), WithinRel(S[i] / s, 1e-12));
  }
  REQUIRE(max_abs(matrix<double>(AAt.diagonal().asDiagonal()) - AAt) < 1e-12);
  // W_res holds only the minor components.
  REQUIRE(max_abs(as_matrix(W) - svd_part(W0, r, 7 - r)) < 1e-12);
  REQUIRE(init::pissa{}.peft_init_name() == "pissa");
  REQUIRE(init::pissa::fast(4).peft_init_name() == "pissa_niter_4");
}

TEST_CASE("PiSSA keeps the adapted layer identical to the base at init", "[init][svd][pissa]") {
  rng g(3);
  auto base = std::make_shared<nn::linear<double>>(8, 6, true, g);
  base->freeze();
  const tensor<double> W0 = base->weight.value();
  auto x = constant<double>(randn<double>({4, 8}, g));
  const auto y0 = base->forward(x);
  lora_config cfg;
  cfg.r = 2;
  cfg.alpha = 16;
  auto a = std::make_shared<lora<double>>(8, 6, cfg, init::pissa{}, &base->weight.value());
  adapted_linear<double> layer(base, a);
  const auto y = layer.forward(x);
  REQUIRE(max_abs(as_matrix(y.value()) - as_matrix(y0.value())) < 1e-12);
  REQUIRE(max_abs(as_matrix(base->weight.value()) - as_matrix(W0)) > 1e-3);  // W was rewritten
}

TEST_CASE("PiSSA randomized (niter = 4) is close to the exact SVD on a decaying spectrum",
          "[init][svd][pissa]") {
  const std::size_t in = 40, out = 30, r = 4;
  lora_config cfg;
  cfg.r = r;
  cfg.alpha = 4;
  cfg.seed = 7;
  const matrix<double> W0 = with_spectrum(30, 40, decaying(30), 2);
  tensor<double> We = to_tensor(W0), Wr = to_tensor(W0);
  lora<double> exact(in, out, cfg, init::pissa{}, &We);
  lora<double> fast(in, out, cfg, init::pissa::fast(4), &Wr);
  const matrix<double> de = as_matrix(exact.lora_B.value()) * as_matrix(exact.lora_A.value());
  const matrix<double> df = as_matrix(fast.lora_B.value()) * as_matrix(fast.lora_A.value());
  INFO("relative difference " << (df - de).norm() / de.norm());
  REQUIRE((df - de).norm() / de.norm() < 1e-3);
  // The residual is exact whatever the SVD's error: W_res + s·B·A == W.
  REQUIRE(max_abs(as_matrix(Wr) + df - W0) < 1e-12);
  // Same seed, same bits.
  tensor<double> Wr2 = to_tensor(W0);
  lora<double> fast2(in, out, cfg, init::pissa::fast(4), &Wr2);
  const bool same = fast2.lora_A.value() == fast.lora_A.value();
  REQUIRE(same);
}

TEST_CASE("PiSSA in float: factors and residual in float, identity to float rounding",
          "[init][svd][pissa]") {
  const matrix<double> W0 = with_spectrum(6, 10, decaying(6), 4);
  tensor<float> W = to_tensor(matrix<float>(W0.cast<float>()));
  const matrix<float> Wf = as_matrix(W);
  lora_config cfg;
  cfg.r = 3;
  lora<float> a(10, 6, cfg, init::pissa{}, &W);
  const matrix<float> rec =
      as_matrix(W) + float(a.scaling()) * as_matrix(a.lora_B.value()) * as_matrix(a.lora_A.value());
  REQUIRE((rec - Wf).cwiseAbs().maxCoeff() < 1e-5f);
}

TEST_CASE("MiLoRA: s·B·A is the r smallest singular components", "[init][svd][milora]") {
  // Wang et al. 2024 (MiLoRA): W = W_p + W_m with W_m = U_{[r]}' Σ' V'ᵀ the r minor triplets;
  // B·A carries W_m (PiSSA's scaling), W_res = W − s·B·A = W_p.
  const std::size_t in = 8, out = 6, r = 2;
  lora_config cfg;
  cfg.r = r;
  cfg.alpha = 6;
  const matrix<double> W0 = with_spectrum(6, 8, decaying(6), 5);
  tensor<double> W = to_tensor(W0);
  lora<double> a(in, out, cfg, init::milora{}, &W);
  const double s = a.scaling();
  const matrix<double> BA = as_matrix(a.lora_B.value()) * as_matrix(a.lora_A.value());
  REQUIRE(max_abs(s * BA - svd_part(W0, 6 - r, r)) < 1e-12);
  REQUIRE(max_abs(as_matrix(W) - svd_part(W0, 0, 6 - r)) < 1e-12);
  REQUIRE(max_abs(as_matrix(W) + s * BA - W0) < 1e-12);
}

TEST_CASE("LoRA-XS bases: randomized close to exact; sigma placement", "[init][svd][lora_xs]") {
  const matrix<double> W0 = with_spectrum(20, 24, decaying(20), 6);
  tensor<double> W = to_tensor(W0);
  lora_xs_config cfg;
  cfg.r = 3;
  cfg.r_init_std = 0;
  lora_xs<double> ex(24, 20, cfg, W, init::lora_xs_svd{});
  lora_xs<double> rnd(24, 20, cfg, W, init::lora_xs_bases{});  // randomized, Σ in A
  lora_xs<double> ex2(24, 20, cfg, W,
                      init::lora_xs_bases{init::svd_sigma::a, init::svd_kind::exact});
  REQUIRE(max_abs(as_matrix(ex2.lora_A.value()) - as_matrix(ex.lora_A.value())) < 1e-12);
  REQUIRE(max_abs(as_matrix(ex2.lora_B.value()) - as_matrix(ex.lora_B.value())) < 1e-12);
  // B·A of either is U_r Σ_r V_rᵀ (signs of singular vectors cancel in the product).
  const matrix<double> top = svd_part(W0, 0, 3);
  REQUIRE(max_abs(as_matrix(rnd.lora_B.value()) * as_matrix(rnd.lora_A.value()) - top) < 1e-8);
  REQUIRE(max_abs(as_matrix(W) - W0) == 0.0);  // LoRA-XS leaves W alone
  lora_xs<double> split(24, 20, cfg, W, init::lora_xs_bases{init::svd_sigma::split});
  const matrix<double> BtB =
      as_matrix(split.lora_B.value()).transpose() * as_matrix(split.lora_B.value());
  REQUIRE_THAT(BtB(0, 0), WithinRel(3.0, 1e-8));  // √σ_1 on each side: ‖B_0‖² = σ_1
}

TEST_CASE("SVD inits reject bad input", "[init][svd]") {
  lora_config cfg;
  cfg.r = 5;
  tensor<double> W = zeros<double>({4, 6});
  REQUIRE_THROWS_WITH((lora<double>(6, 4, cfg, init::pissa{}, &W)),
                      Contains("pissa") && Contains("rank r = 5") && Contains("[4,6]"));
  REQUIRE_THROWS_WITH((lora<double>(6, 4, cfg, init::pissa{})), Contains("needs the base weight"));
  cfg.r = 2;
  REQUIRE_THROWS_WITH((lora<double>(6, 4, cfg, init::milora{})), Contains("milora"));
  // Randomized SVD cannot give the smallest triplets.
  rng g(1);
  REQUIRE_THROWS_WITH(detail::init_svd<double>(matrix<double>::Identity(4, 4), 2,
                                       init::svd_kind::randomized, 2, 0, g, false),
                      Contains("smallest"));
}
