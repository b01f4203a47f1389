#include "peft/init/gradient.hpp"

#include <Eigen/SVD>
#include <catch2/catch.hpp>
#include <cmath>

#include "peft/adapters/lora.hpp"
#include "peft/adapters/lora_xs.hpp"

using namespace peft;
using Catch::Matchers::Contains;
using Catch::Matchers::WithinRel;

namespace {
struct structured {
  matrix<double> U, V, G;  // G = U·diag(s)·Vᵀ
  vector<double> s;
};
// A gradient of exact rank k with distinct singular values.
structured rank_k(Eigen::Index m, Eigen::Index n, Eigen::Index k, std::uint64_t seed) {
  rng g(seed);
  matrix<double> a(m, k), b(n, k);
  for (Eigen::Index i = 0; i < a.size(); ++i) a.data()[i] = g.normal();
  for (Eigen::Index i = 0; i < b.size(); ++i) b.data()[i] = g.normal();
  structured r;
  r.U = detail::orthonormal_basis<double>(a);
  r.V = detail::orthonormal_basis<double>(b);
  r.s.resize(k);
  for (Eigen::Index i = 0; i < k; ++i) r.s[i] = 5.0 / double(i + 1);
  r.G = r.U * r.s.asDiagonal() * r.V.transpose();
  return r;
}
matrix<double> proj(const matrix<double>& Q) { return Q * Q.transpose(); }  // Q orthonormal cols
matrix<double> svd_part(const matrix<double>& M, Eigen::Index r) {
  Eigen::JacobiSVD<Eigen::MatrixXd> svd(Eigen::MatrixXd(M),
                                        Eigen::ComputeThinU | Eigen::ComputeThinV);
  return svd.matrixU().leftCols(r) * svd.singularValues().head(r).asDiagonal() *
         svd.matrixV().leftCols(r).transpose();
}
double max_abs(const matrix<double>& m) { return m.cwiseAbs().maxCoeff(); }
}  // namespace

TEST_CASE("LoRA-GA: factors are singular vectors of G with the stable scale; W_res + s·B·A == W",
          "[init][gradient][lora_ga]") {
  // Wang et al. 2024 (LoRA-GA), ArB2r (PEFT's default direction): G = U Σ Vᵀ,
  //   A = c·V[:, :r]ᵀ,  B = c·U[:, r:2r],  c = out^{1/4}/√γ,  W ← W − s·B·A.
  const std::size_t in = 10, out = 8, r = 2;
  const auto S = rank_k(8, 10, 4, 1);
  rng g(2);
  tensor<double> W = randn<double>({out, in}, g);
  const matrix<double> W0 = as_matrix(W);
  lora_config cfg;
  cfg.r = r;
  cfg.alpha = 4;
  init::lora_ga_options o;
  o.kind = init::svd_kind::exact;
  lora<double> a(in, out, cfg, init::lora_ga(S.G, o), &W);
  const double s = a.scaling(), c = std::pow(8.0, 0.25) / 4.0;
  const matrix<double> A = as_matrix(a.lora_A.value()) / c, B = as_matrix(a.lora_B.value()) / c;
  REQUIRE(max_abs(A * A.transpose() - matrix<double>::Identity(2, 2)) < 1e-12);
  REQUIRE(max_abs(A.transpose() * A - proj(S.V.leftCols(2))) < 1e-12);
  REQUIRE(max_abs(B * B.transpose() - proj(S.U.middleCols(2, 2))) < 1e-12);
  REQUIRE(max_abs(as_matrix(W) + s * as_matrix(a.lora_B.value()) * as_matrix(a.lora_A.value()) -
                  W0) < 1e-12);
  REQUIRE(init::lora_ga(S.G).peft_init_name() == "lora_ga");
}

TEST_CASE("LoRA-GA: the first LoRA step follows the full gradient (every direction)",
          "[init][gradient][lora_ga]") {
  // The paper's gradient approximation: with ∂L/∂W_eff = G, ∂L/∂B = s·G·Aᵀ and ∂L/∂A = s·Bᵀ·G,
  // so one SGD step changes s·B·A by −η·s²·(G·AᵀA + B·Bᵀ·G) + O(η²). When A and B together
  // cover the top 2r singular pairs of G (rank 2r here) that is −η·s²·c²·G: proportional to the
  // full fine-tuning step.
  const std::size_t in = 9, out = 7, r = 2;
  const auto S = rank_k(7, 9, 4, 3);
  using D = init::lora_ga_direction;
  for (auto dir : {D::arb2r, D::a2rbr, D::arbr, D::random}) {
    INFO("direction " << int(dir));
    tensor<double> W = zeros<double>({out, in});
    lora_config cfg;
    cfg.r = r;
    cfg.alpha = 6;
    cfg.seed = 11;
    init::lora_ga_options o;
    o.direction = dir;
    o.kind = init::svd_kind::exact;
    lora<double> a(in, out, cfg, init::lora_ga(S.G, o), &W);
    const double s = a.scaling(), c2 = std::sqrt(7.0) / 16.0;
    const auto A = as_matrix(a.lora_A.value());
    const auto B = as_matrix(a.lora_B.value());
    const matrix<double> first_order = s * s * (S.G * A.transpose() * A + B * B.transpose() * S.G);
    REQUIRE(max_abs(first_order - s * s * c2 * S.G) < 1e-12);
  }
}

TEST_CASE("LoRA-GA scales and directions", "[init][gradient][lora_ga]") {
  const std::size_t in = 12, out = 10, r = 2;
  const auto S = rank_k(10, 12, 6, 4);
  lora_config cfg;
  cfg.r = r;
  cfg.alpha = 8;  // s = 4
  auto make = [&](init::lora_ga_options o) {
    o.kind = init::svd_kind::exact;
    tensor<double> W = zeros<double>({out, in});
    lora<double> a(in, out, cfg, init::lora_ga(S.G, o), &W);
    return std::pair<matrix<double>, matrix<double>>(as_matrix(a.lora_A.value()),
                                                     as_matrix(a.lora_B.value()));
  };
  init::lora_ga_options o;
  o.scale = init::lora_ga_scale::gd;
  o.direction = init::lora_ga_direction::a2rbr;
  auto [A, B] = make(o);
  // gd: A, B = V, U / s;  A2rBr: A from V[:, r:2r], B from U[:, :r].
  REQUIRE(max_abs(16.0 * A.transpose() * A - proj(S.V.middleCols(2, 2))) < 1e-12);
  REQUIRE(max_abs(16.0 * B * B.transpose() - proj(S.U.leftCols(2))) < 1e-12);
  o.scale = init::lora_ga_scale::unit;
  o.direction = init::lora_ga_direction::arbr;
  std::tie(A, B) = make(o);
  // ArBr: A from V[:, 1], V[:, 3]; B from U[:, 0], U[:, 2].
  matrix<double> v13(12, 2), u02(10, 2);
  v13 << S.V.col(1), S.V.col(3);
  u02 << S.U.col(0), S.U.col(2);
  REQUIRE(max_abs(A.transpose() * A - proj(v13)) < 1e-12);
  REQUIRE(max_abs(B * B.transpose() - proj(u02)) < 1e-12);
  // Randomized (the reference's default) agrees with exact on a low-rank gradient.
  tensor<double> W1 = zeros<double>({out, in}), W2 = zeros<double>({out, in});
  init::lora_ga_options ex;
  ex.kind = init::svd_kind::exact;
  lora<double> a1(in, out, cfg, init::lora_ga(S.G), &W1),
      a2(in, out, cfg, init::lora_ga(S.G, ex), &W2);
  const matrix<double> A1 = as_matrix(a1.lora_A.value()), A2 = as_matrix(a2.lora_A.value());
  REQUIRE(max_abs(A1.transpose() * A1 - A2.transpose() * A2) < 1e-9);
}

TEST_CASE("LoRA-One: s·B·A = s/(γ·σ_1)·(−G)_r, W unchanged", "[init][gradient][lora_one]") {
  // Zhang et al. 2025 (LoRA-One): −G = U Σ Vᵀ, B = U_r √Σ_r/√(σ_1 γ), A = √Σ_r V_rᵀ/√(σ_1 γ).
  const std::size_t in = 9, out = 11, r = 3;
  const auto S = rank_k(11, 9, 6, 5);
  rng g(6);
  tensor<double> W = randn<double>({out, in}, g);
  const matrix<double> W0 = as_matrix(W);
  lora_config cfg;
  cfg.r = r;
  cfg.alpha = 3;
  cfg.use_rslora = true;
  init::lora_one_options o;
  o.kind = init::svd_kind::exact;
  lora<double> a(in, out, cfg, init::lora_one(S.G, o), &W);
  const auto A = as_matrix(a.lora_A.value());
  const auto B = as_matrix(a.lora_B.value());
  const double gamma = 16, s1 = S.s[0];
  REQUIRE(max_abs(B * A - svd_part(-S.G, 3) / (gamma * s1)) < 1e-12);
  const matrix<double> AAt = A * A.transpose();
  for (Eigen::Index i = 0; i < 3; ++i)
    REQUIRE_THAT(AAt(i, i), WithinRel(S.s[i] / (s1 * gamma), 1e-12));
  REQUIRE(max_abs(as_matrix(W) - W0) == 0.0);  // no residual: the init is one descent step
  // Optional residual, and the randomized SVD of the reference.
  tensor<double> W2 = to_tensor(W0);
  init::lora_one_options o2;
  o2.subtract_from_weight = true;
  lora<double> b(in, out, cfg, init::lora_one(S.G, o2), &W2);
  const matrix<double> BA2 = as_matrix(b.lora_B.value()) * as_matrix(b.lora_A.value());
  REQUIRE(max_abs(BA2 - B * A) < 1e-9);
  REQUIRE(max_abs(as_matrix(W2) + b.scaling() * BA2 - W0) < 1e-12);
}

TEST_CASE("LoRA-SB: s·B·R·A is the best rank-r approximation of the update",
          "[init][gradient][lora_sb]") {
  // Ponkshe et al. 2024 (LoRA-SB): ΔW ≈ −η·sign(G) (Adam's first step) or −η·G (SGD);
  // ΔW ≈ U Σ Vᵀ, B = U_r, A = V_rᵀ, R = Σ_r / s, so s·B·R·A = (ΔW)_r.
  const std::size_t in = 8, out = 7, r = 2;
  const auto S = rank_k(7, 8, 5, 7);
  lora_xs_config cfg;
  cfg.r = r;
  cfg.alpha = 6;  // s = 3
  init::lora_sb_options o;
  o.lr = 0.01;
  o.rule = init::update_rule::sgd;
  rng g(1);
  tensor<double> W = randn<double>({out, in}, g);
  const matrix<double> W0 = as_matrix(W);
  auto a = make_lora_sb<double>(in, out, cfg, S.G, &W, o);
  const auto A = as_matrix(a->lora_A.value());
  const auto B = as_matrix(a->lora_B.value());
  const auto R = as_matrix(a->lora_R.value());
  REQUIRE(max_abs(a->delta_weight(W0) - (-0.01 * svd_part(S.G, 2))) < 1e-12);
  REQUIRE(max_abs(B.transpose() * B - matrix<double>::Identity(2, 2)) < 1e-12);
  REQUIRE(max_abs(A * A.transpose() - matrix<double>::Identity(2, 2)) < 1e-12);
  REQUIRE(max_abs(matrix<double>(R.diagonal().asDiagonal()) - R) == 0.0);
  REQUIRE_THAT(R(0, 0), WithinRel(0.01 * S.s[0] / 3.0, 1e-12));
  REQUIRE(max_abs(as_matrix(W) - W0) == 0.0);
  // Only R is trained.
  REQUIRE(a->lora_R.requires_grad());
  REQUIRE_FALSE(a->lora_A.requires_grad());
  REQUIRE_FALSE(a->lora_B.requires_grad());

  // Adam's sign update (default) and the optional residual.
  init::lora_sb_options o2;
  o2.lr = 0.5;
  o2.subtract_from_weight = true;
  auto b = make_lora_sb<double>(in, out, cfg, S.G, &W, o2);
  const matrix<double> sgn = S.G.unaryExpr([](double v) { return double((v > 0) - (v < 0)); });
  const matrix<double> d = b->delta_weight(W0);
  REQUIRE(max_abs(d - svd_part(-0.5 * sgn, 2)) < 1e-12);
  REQUIRE(max_abs(as_matrix(W) + d - W0) < 1e-12);
}

TEST_CASE("Gradient inits reject bad input", "[init][gradient]") {
  const auto S = rank_k(6, 5, 3, 8);
  lora_config cfg;
  cfg.r = 3;
  tensor<double> W = zeros<double>({6, 5});
  REQUIRE_THROWS_WITH((lora<double>(5, 6, cfg, init::lora_ga(S.G), &W)),
                      Contains("lora_ga") && Contains("2r = 6") && Contains("[6,5]"));
  cfg.r = 1;
  tensor<double> W2 = zeros<double>({5, 6});
  REQUIRE_THROWS_WITH((lora<double>(6, 5, cfg, init::lora_ga(S.G), &W2)),
                      Contains("lora_ga: gradient [6,5]") && Contains("[5,6]"));
  init::lora_ga_options bad;
  bad.stable_gamma = 0;
  REQUIRE_THROWS_WITH(init::lora_ga(S.G, bad), Contains("stable_gamma"));
  REQUIRE_THROWS_WITH((lora<double>(5, 6, cfg, init::lora_one(matrix<double>::Zero(6, 5)))),
                      Contains("lora_one: the gradient is zero"));
  REQUIRE_THROWS_WITH(init::lora_ga(zeros<double>({2, 3, 4})), Contains("not 2-D"));
  lora_xs_config xc;
  xc.r = 2;
  REQUIRE_THROWS_WITH(make_lora_sb<double>(4, 6, xc, S.G), Contains("lora_sb: gradient [6,5]"));
  init::lora_sb_options so;
  so.subtract_from_weight = true;
  REQUIRE_THROWS_WITH(make_lora_sb<double>(5, 6, xc, S.G, nullptr, so),
                      Contains("needs the base weight"));
}

TEST_CASE("Gradient inits in float", "[init][gradient]") {
  const auto S = rank_k(7, 9, 4, 9);
  const matrix<float> Gf = S.G.cast<float>();
  rng g(1);
  tensor<float> W = randn<float>({7, 9}, g);
  const matrix<float> W0 = as_matrix(W);
  lora_config cfg;
  cfg.r = 2;
  lora<float> a(9, 7, cfg, init::lora_ga(Gf), &W);
  const matrix<float> rec =
      as_matrix(W) + float(a.scaling()) * as_matrix(a.lora_B.value()) * as_matrix(a.lora_A.value());
  REQUIRE((rec - W0).cwiseAbs().maxCoeff() < 1e-5f);
  lora<float> b(9, 7, cfg, init::lora_one(to_tensor(Gf)));
  const matrix<double> BA = (as_matrix(b.lora_B.value()) * as_matrix(b.lora_A.value())).cast<double>();
  REQUIRE(max_abs(BA - svd_part(-S.G, 2) / (16.0 * S.s[0])) < 1e-6);
  lora_xs_config xc;
  xc.r = 2;
  init::lora_sb_options so;
  so.rule = init::update_rule::sgd;
  auto c = make_lora_sb<float>(9, 7, xc, Gf, &W, so);
  const matrix<double> d = c->delta_weight(as_matrix(W)).cast<double>();
  REQUIRE(max_abs(d - (-1e-4) * svd_part(S.G, 2)) < 1e-8);
}
