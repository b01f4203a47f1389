#include <catch2/catch.hpp>

#include <Eigen/SVD>
#include <cmath>

#include "peft/adapters/adapted_linear.hpp"
#include "peft/adapters/lora.hpp"
#include "peft/adapters/lora_xs.hpp"
#include "peft/autograd/grad_check.hpp"

using namespace peft;
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

namespace {
std::shared_ptr<adapted_linear<double>> make_layer(std::size_t in, std::size_t out, lora_xs_config cfg,
                                                   init::svd_sigma side = init::svd_sigma::a) {
  rng g(11);
  auto base = std::make_shared<nn::linear<double>>(in, out, true, g);
  base->freeze();
  auto a = std::make_shared<lora_xs<double>>(in, out, cfg, base->weight.value(), init::lora_xs_svd{side});
  return std::make_shared<adapted_linear<double>>(base, a);
}
lora_xs<double>& xs(adapted_linear<double>& l) { return static_cast<lora_xs<double>&>(l.get_adapter()); }

// Best rank-r approximation of W by an independent SVD (Jacobi).
matrix<double> rank_r(const matrix<double>& W, Eigen::Index r) {
  Eigen::JacobiSVD<Eigen::MatrixXd> svd(Eigen::MatrixXd(W), Eigen::ComputeThinU | Eigen::ComputeThinV);
  return svd.matrixU().leftCols(r) * svd.singularValues().head(r).asDiagonal() *
         svd.matrixV().leftCols(r).transpose();
}
}  // namespace

TEST_CASE("LoRA-XS forward is h = W0 x + s B R A x", "[adapters][lora_xs]") {
  // Bałazy et al. 2024, eq. (2): h = x·W + x·A·R·B with A, B from the truncated SVD of W (frozen)
  // and R ∈ R^{r×r} trained; here in PEFT's [out, in] convention ΔW = s·B·R·A.
  lora_xs_config cfg;
  cfg.r = 3;
  cfg.alpha = 6;
  auto layer = make_layer(6, 5, cfg);
  auto& a = xs(*layer);
  rng g(1);
  for (auto& v : a.lora_R.value()) v = g.normal();
  auto x = constant<double>(randn<double>({2, 3, 6}, g));
  auto y = layer->forward(x);
  const matrix<double> W = as_matrix(layer->base_layer->weight.value());
  const matrix<double> dW =
      2.0 * as_matrix(a.lora_B.value()) * as_matrix(a.lora_R.value()) * as_matrix(a.lora_A.value());
  matrix<double> ref = as_matrix(x.value()) * (W + dW).transpose();
  ref.rowwise() += as_vector(layer->base_layer->bias.value()).transpose();
  REQUIRE((as_matrix(y.value()) - ref).cwiseAbs().maxCoeff() < 1e-12);
  REQUIRE((a.delta_weight(W) - dW).cwiseAbs().maxCoeff() < 1e-12);
  matrix<double> Bf, Af;
  REQUIRE(a.factors(Bf, Af));
  REQUIRE((Bf * Af - dW).cwiseAbs().maxCoeff() < 1e-12);
}

TEST_CASE("LoRA-XS SVD bases: B = U_r, A = Σ_r V_rᵀ", "[adapters][lora_xs]") {
  lora_xs_config cfg;
  cfg.r = 3;
  auto layer = make_layer(7, 5, cfg);
  auto& a = xs(*layer);
  const matrix<double> W = as_matrix(layer->base_layer->weight.value());
  const auto A = as_matrix(a.lora_A.value());
  const auto B = as_matrix(a.lora_B.value());
  // B has orthonormal columns; A's rows are orthogonal with norms σ_1 ≥ σ_2 ≥ σ_3.
  REQUIRE((B.transpose() * B - matrix<double>::Identity(3, 3)).cwiseAbs().maxCoeff() < 1e-12);
  const matrix<double> AAt = A * A.transpose();
  const Eigen::MatrixXd Wc = W;
  Eigen::JacobiSVD<Eigen::MatrixXd> svd(Wc);
  for (Eigen::Index i = 0; i < 3; ++i) {
    REQUIRE_THAT(std::sqrt(AAt(i, i)), WithinRel(svd.singularValues()(i), 1e-12));
    for (Eigen::Index j = 0; j < 3; ++j)
      if (i != j) REQUIRE_THAT(AAt(i, j), WithinAbs(0.0, 1e-12));
  }
  // B·A is the best rank-r approximation of W (so with R = I, ΔW = s·W_r).
  REQUIRE((B * A - rank_r(W, 3)).cwiseAbs().maxCoeff() < 1e-12);
  // Other placements of Σ give the same product.
  for (auto side : {init::svd_sigma::b, init::svd_sigma::split}) {
    auto l2 = make_layer(7, 5, cfg, side);
    const matrix<double> BA = as_matrix(xs(*l2).lora_B.value()) * as_matrix(xs(*l2).lora_A.value());
    REQUIRE((BA - rank_r(W, 3)).cwiseAbs().maxCoeff() < 1e-12);
  }
  auto lb = make_layer(7, 5, cfg, init::svd_sigma::b);
  const auto Ab = as_matrix(xs(*lb).lora_A.value());
  REQUIRE((Ab * Ab.transpose() - matrix<double>::Identity(3, 3)).cwiseAbs().maxCoeff() < 1e-12);
}

TEST_CASE("LoRA-XS parameters: only R trains; names; R init", "[adapters][lora_xs]") {
  lora_xs_config cfg;
  REQUIRE(cfg.r == 8);
  REQUIRE(cfg.r_init_std == 1e-5);
  cfg.r = 4;
  auto layer = make_layer(8, 6, cfg);
  auto& a = xs(*layer);
  auto named = a.named_parameters();
  REQUIRE(named.size() == 3);
  REQUIRE(named[0].first == "lora_A.weight");
  REQUIRE(named[1].first == "lora_B.weight");
  REQUIRE(named[2].first == "lora_latent_mapping.weight");
  REQUIRE_FALSE(a.lora_A.requires_grad());
  REQUIRE_FALSE(a.lora_B.requires_grad());
  REQUIRE(a.lora_R.requires_grad());
  REQUIRE(a.num_parameters(/*trainable_only=*/true) == 16);
  // R ~ N(0, 1e-5²): tiny but not zero.
  double mx = 0;
  for (double v : a.lora_R.value()) mx = std::max(mx, std::abs(v));
  REQUIRE(mx > 0.0);
  REQUIRE(mx < 1e-4);

  rng g(5);
  auto x = constant<double>(randn<double>({4, 8}, g));
  auto y = layer->forward(x);
  y.backward(ones<double>(y.shape()));
  REQUIRE(a.lora_R.has_grad());
  REQUIRE_FALSE(a.lora_A.has_grad());
  REQUIRE_FALSE(a.lora_B.has_grad());
  REQUIRE_FALSE(layer->base_layer->weight.has_grad());

  // r_init_std = 0: R = 0, an exact identity at init.
  cfg.r_init_std = 0;
  auto l0 = make_layer(8, 6, cfg);
  REQUIRE((as_matrix(l0->forward(x).value()) - as_matrix(l0->base_layer->forward(x).value()))
              .cwiseAbs()
              .maxCoeff() == 0.0);
}

TEST_CASE("LoRA-XS precomputed bases and float", "[adapters][lora_xs]") {
  lora_xs_config cfg;
  cfg.r = 2;
  cfg.seed = 3;
  rng g(7);
  const tensor<float> A = randn<float>({2, 5}, g), B = randn<float>({4, 2}, g);
  lora_xs<float> a(5, 4, cfg, A, B);
  REQUIRE(as_matrix(a.lora_A.value()) == as_matrix(A));
  REQUIRE(as_matrix(a.lora_B.value()) == as_matrix(B));
  // Non-const tensors must pick the same constructor (not be taken for an init policy: the
  // lora_init concept requires a void operator()(init_target&), which xtensor's does not have).
  tensor<float> An = A, Bn = B;
  lora_xs<float> an(5, 4, cfg, An, Bn);
  REQUIRE(as_matrix(an.lora_A.value()) == as_matrix(A));
  REQUIRE(as_matrix(an.lora_B.value()) == as_matrix(B));
  STATIC_REQUIRE_FALSE(init::lora_init<tensor<float>, float>);
  // The SVD policy in float: SVD computed in double, then rounded.
  tensor<float> W = randn<float>({4, 5}, g);
  lora_xs<float> s(5, 4, cfg, W);
  const matrix<double> BA = (as_matrix(s.lora_B.value()) * as_matrix(s.lora_A.value())).cast<double>();
  REQUIRE((BA - rank_r(as_matrix(W).cast<double>(), 2)).cwiseAbs().maxCoeff() < 1e-5);
  // Same seed, same R.
  lora_xs<float> s2(5, 4, cfg, W);
  REQUIRE(as_vector(s2.lora_R.value()) == as_vector(s.lora_R.value()));
}

TEST_CASE("LoRA-XS gradcheck", "[adapters][lora_xs][gradcheck]") {
  lora_xs_config cfg;
  cfg.r = 2;
  cfg.alpha = 3;
  auto layer = make_layer(4, 3, cfg);
  auto& a = xs(*layer);
  rng g(4);
  for (auto& v : a.lora_R.value()) v = g.normal();
  auto x = parameter<double>(randn<double>({2, 2, 4}, g));
  SECTION("input and R") {
    auto r = grad_check([&](auto&) { return layer->forward(x); }, {x, a.lora_R});
    INFO(r.report);
    REQUIRE(r.ok);
  }
  SECTION("bases unfrozen too") {
    a.lora_A.set_requires_grad(true);
    a.lora_B.set_requires_grad(true);
    auto r = grad_check([&](auto&) { return layer->forward(x); }, {x, a.lora_A, a.lora_R, a.lora_B});
    INFO(r.report);
    REQUIRE(r.ok);
  }
  SECTION("with dropout, replaying the mask") {
    cfg.dropout = 0.3;
    auto ld = make_layer(4, 3, cfg);
    auto& ad = xs(*ld);
    for (auto& v : ad.lora_R.value()) v = g.normal();
    const rng saved = ad.dropout_rng();
    auto r = grad_check(
        [&](auto&) {
          ad.dropout_rng() = saved;
          return ld->forward(x);
        },
        {x, ad.lora_R});
    INFO(r.report);
    REQUIRE(r.ok);
  }
}

TEST_CASE("LoRA-XS bad input gives clear errors", "[adapters][lora_xs]") {
  lora_xs_config cfg;
  cfg.r = 4;
  tensor<double> W = zeros<double>({3, 5});
  REQUIRE_THROWS_WITH((lora_xs<double>(5, 3, cfg, W)),
                      Catch::Contains("r = 4") && Catch::Contains("[3,5]"));
  cfg.r = 0;
  REQUIRE_THROWS_WITH((lora_xs<double>(5, 3, cfg, W)), Catch::Contains("rank"));
  cfg.r = 2;
  cfg.r_init_std = -1;
  REQUIRE_THROWS_WITH((lora_xs<double>(5, 3, cfg, W)), Catch::Contains("r_init_std"));
  cfg.r_init_std = 0;
  tensor<double> Wbad = zeros<double>({5, 3});
  REQUIRE_THROWS_WITH((lora_xs<double>(5, 3, cfg, Wbad)), Catch::Contains("[5,3]"));
  const tensor<double> A = zeros<double>({2, 4}), B = zeros<double>({3, 2});
  REQUIRE_THROWS_WITH((lora_xs<double>(5, 3, cfg, A, B)), Catch::Contains("[2,4]"));
  // The SVD policy needs the base weight (used as a plain LoRA init without one).
  lora_config lc;
  lc.r = 2;
  REQUIRE_THROWS_WITH((lora<double>(5, 3, lc, init::lora_xs_svd{})), Catch::Contains("base weight"));
  auto layer = make_layer(4, 3, cfg);
  auto x = constant<double>(zeros<double>({2, 5}));
  REQUIRE_THROWS_WITH(layer->forward(x), Catch::Contains("[2,5]"));
}
