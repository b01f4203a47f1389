#include <catch2/catch.hpp>

#include <cmath>
#include <numbers>
#include <set>

#include "peft/adapters/adapted_linear.hpp"
#include "peft/adapters/dct_adapter.hpp"
#include "peft/autograd/grad_check.hpp"

using namespace peft;
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

namespace {
// Orthonormal 2-D inverse DCT (DCT-III along both axes) by definition:
//   x[p, q] = Σ_{u,v} c_u c_v S[u,v] cos(π(2p+1)u / 2·out) cos(π(2q+1)v / 2·in)
matrix<double> idct2_by_definition(const matrix<double>& S) {
  const auto out = S.rows(), in = S.cols();
  auto c = [](Eigen::Index k, Eigen::Index n) { return k == 0 ? std::sqrt(1.0 / double(n)) : std::sqrt(2.0 / double(n)); };
  matrix<double> X(out, in);
  for (Eigen::Index p = 0; p < out; ++p)
    for (Eigen::Index q = 0; q < in; ++q) {
      double s = 0;
      for (Eigen::Index u = 0; u < out; ++u)
        for (Eigen::Index v = 0; v < in; ++v)
          s += c(u, out) * c(v, in) * S(u, v) *
               std::cos(std::numbers::pi * double((2 * p + 1) * u) / double(2 * out)) *
               std::cos(std::numbers::pi * double((2 * q + 1) * v) / double(2 * in));
      X(p, q) = s;
    }
  return X;
}

matrix<double> dense_spectrum(const dct_adapter<double>& a) {
  matrix<double> S = matrix<double>::Zero(Eigen::Index(a.out_features()), Eigen::Index(a.in_features()));
  const auto& pos = a.positions();
  for (std::size_t k = 0; k < pos.size(); ++k)
    S(Eigen::Index(pos.u[k]), Eigen::Index(pos.v[k])) = a.dct_spectrum.value()(k);
  return S;
}

std::shared_ptr<adapted_linear<double>> make_layer(std::size_t in, std::size_t out, dct_config cfg,
                                                   bool random = true) {
  rng g(11);
  auto base = std::make_shared<nn::linear<double>>(in, out, true, g);
  base->freeze();
  cfg.init_weights = !random;
  return std::make_shared<adapted_linear<double>>(base, std::make_shared<dct_adapter<double>>(in, out, cfg));
}
}  // namespace

TEST_CASE("DCT adapter: dW = scaling * IDCT2(S) = scaling * D_out^T S D_in", "[adapters][dct]") {
  // LoCA (Du et al. 2025), eq. (2): W' = W0 + α·Cᵀ·S·D with C, D orthonormal DCT-II matrices.
  dct_config cfg;
  cfg.n_frequency = 11;
  cfg.scaling = 2.5;
  auto layer = make_layer(5, 6, cfg);
  auto& a = static_cast<dct_adapter<double>&>(layer->get_adapter());
  const matrix<double> S = dense_spectrum(a);
  const matrix<double> ref = 2.5 * idct2_by_definition(S);
  // The same through the cached DCT matrices of detail/dct.hpp.
  REQUIRE((ref - 2.5 * detail::idct_2d<double>(S)).cwiseAbs().maxCoeff() < 1e-12);
  const matrix<double> W = as_matrix(layer->base_layer->weight.value());
  REQUIRE((a.delta_weight(W) - ref).cwiseAbs().maxCoeff() < 1e-12);
  // Isometry: ‖ΔW‖_F = scaling · ‖c‖.
  REQUIRE_THAT(ref.norm(), WithinRel(2.5 * as_vector(a.dct_spectrum.value()).norm(), 1e-12));

  rng g(2);
  auto x = constant<double>(randn<double>({2, 3, 5}, g));
  auto y = layer->forward(x);
  matrix<double> yref = as_matrix(x.value()) * (W + ref).transpose();
  yref.rowwise() += as_vector(layer->base_layer->bias.value()).transpose();
  REQUIRE((as_matrix(y.value()) - yref).cwiseAbs().maxCoeff() < 1e-12);

  matrix<double> Bf, Af;
  REQUIRE(a.factors(Bf, Af));
  REQUIRE((Bf * Af - ref).cwiseAbs().maxCoeff() < 1e-12);
}

TEST_CASE("DCT adapter: the DC coefficient is a constant update", "[adapters][dct]") {
  dct_config cfg;
  dct_adapter<double> a(8, 2, cfg, {0}, {0});
  a.dct_spectrum.value()(0) = 4.0;
  const matrix<double> d = a.delta_weight(matrix<double>::Zero(2, 8));
  for (Eigen::Index i = 0; i < d.size(); ++i) REQUIRE_THAT(d.data()[i], WithinRel(1.0, 1e-14));  // 4/sqrt(16)
}

TEST_CASE("DCT adapter defaults: identity at init, seeded positions", "[adapters][dct]") {
  dct_config cfg;
  REQUIRE(cfg.n_frequency == 1000);
  REQUIRE(cfg.scaling == 1.0);
  REQUIRE(cfg.random_loc_seed == 777);
  REQUIRE(cfg.init_weights);
  dct_adapter<double> a(64, 32, cfg);
  REQUIRE(a.named_parameters().size() == 1);
  REQUIRE(a.named_parameters()[0].first == "dct_spectrum");
  REQUIRE(a.dct_spectrum.shape() == shape_t{1000});
  for (double v : a.dct_spectrum.value()) REQUIRE(v == 0.0);

  dct_config c2;
  c2.n_frequency = 10;
  auto layer = make_layer(6, 4, c2, /*random=*/false);
  rng g(3);
  auto x = constant<double>(randn<double>({3, 6}, g));
  REQUIRE((as_matrix(layer->forward(x).value()) - as_matrix(layer->base_layer->forward(x).value()))
              .cwiseAbs()
              .maxCoeff() == 0.0);

  // Same seed, same positions; another seed, other positions; all distinct.
  dct_adapter<float> p1(20, 15, c2), p2(20, 15, c2);
  REQUIRE(p1.positions().u == p2.positions().u);
  REQUIRE(p1.positions().v == p2.positions().v);
  std::set<std::size_t> flat;
  for (std::size_t k = 0; k < 10; ++k) flat.insert(p1.positions().u[k] * 20 + p1.positions().v[k]);
  REQUIRE(flat.size() == 10);
  c2.random_loc_seed = 1;
  dct_adapter<float> p3(20, 15, c2);
  REQUIRE(p3.positions().v != p1.positions().v);
  // One table row per distinct frequency: at most n·(in + out) scalars.
  REQUIRE(p1.table_size() <= 10 * (20 + 15));
}

TEST_CASE("DCT adapter gradcheck: input and coefficients", "[adapters][dct][gradcheck]") {
  dct_config cfg;
  cfg.n_frequency = 7;
  cfg.scaling = 3;
  auto layer = make_layer(4, 5, cfg);
  auto& a = static_cast<dct_adapter<double>&>(layer->get_adapter());
  rng g(4);
  auto x = parameter<double>(randn<double>({2, 3, 4}, g));
  SECTION("input and coefficients") {
    auto r = grad_check([&](auto&) { return layer->forward(x); }, {x, a.dct_spectrum});
    INFO(r.report);
    REQUIRE(r.ok);
  }
  SECTION("coefficients only") {
    auto xc = constant<double>(x.value());
    auto r = grad_check([&](auto&) { return layer->forward(xc); }, {a.dct_spectrum});
    INFO(r.report);
    REQUIRE(r.ok);
  }
  SECTION("frozen coefficients, gradient to x only") {
    a.dct_spectrum.set_requires_grad(false);
    auto r = grad_check([&](auto&) { return layer->forward(x); }, {x});
    INFO(r.report);
    REQUIRE(r.ok);
    REQUIRE_FALSE(a.dct_spectrum.has_grad());
  }
}

TEST_CASE("DCT adapter bad input gives clear errors", "[adapters][dct]") {
  dct_config cfg;
  cfg.n_frequency = 21;
  REQUIRE_THROWS_WITH((dct_adapter<float>(5, 4, cfg)), Catch::Contains("n_frequency 21") && Catch::Contains("[4,5]"));
  cfg.n_frequency = 3;
  REQUIRE_THROWS_WITH((dct_adapter<float>(5, 4, cfg, {0, 4}, {0, 0})), Catch::Contains("(4,0)"));
  REQUIRE_THROWS_WITH((dct_adapter<float>(5, 4, cfg, {1, 1}, {2, 2})), Catch::Contains("duplicate"));
  auto layer = make_layer(4, 3, cfg);
  auto x = constant<double>(zeros<double>({2, 5}));
  REQUIRE_THROWS_WITH(layer->forward(x), Catch::Contains("[2,5]"));
}
