#include <catch2/catch.hpp>

#include <cmath>
#include <complex>
#include <numbers>
#include <set>

#include "peft/adapters/adapted_linear.hpp"
#include "peft/adapters/fourierft.hpp"
#include "peft/autograd/grad_check.hpp"

using namespace peft;
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

namespace {
// Re(IDFT2(F)) by definition: (ν) Σ_{u,v} F[u,v] exp(2πi (u p / out + v q / in)).
matrix<double> idft2_real(const matrix<double>& F, double nu) {
  const auto out = F.rows(), in = F.cols();
  matrix<double> R(out, in);
  for (Eigen::Index p = 0; p < out; ++p)
    for (Eigen::Index q = 0; q < in; ++q) {
      std::complex<double> s = 0;
      for (Eigen::Index u = 0; u < out; ++u)
        for (Eigen::Index v = 0; v < in; ++v)
          s += F(u, v) * std::exp(std::complex<double>(
                             0, 2 * std::numbers::pi * (double(u * p) / double(out) + double(v * q) / double(in))));
      R(p, q) = (nu * s).real();
    }
  return R;
}

// The dense spectrum the adapter represents.
matrix<double> dense_spectrum(const fourierft<double>& a) {
  matrix<double> F = matrix<double>::Zero(Eigen::Index(a.out_features()), Eigen::Index(a.in_features()));
  const auto& pos = a.positions();
  for (std::size_t k = 0; k < pos.size(); ++k)
    F(Eigen::Index(pos.u[k]), Eigen::Index(pos.v[k])) = a.fourierft_spectrum.value()(k);
  return F;
}

std::shared_ptr<adapted_linear<double>> make_layer(std::size_t in, std::size_t out, const fourierft_config& cfg) {
  rng g(11);
  auto base = std::make_shared<nn::linear<double>>(in, out, true, g);
  base->freeze();
  return std::make_shared<adapted_linear<double>>(base, std::make_shared<fourierft<double>>(in, out, cfg));
}
}  // namespace

TEST_CASE("FourierFT: dW = scaling * Re(IDFT2(F)) against the DFT definition", "[adapters][fourierft]") {
  // Gao et al. 2024, eq. (2)-(3): F sparse with trainable entries at random positions,
  // ΔW = IDFT2(F) (real part) · α; PEFT: torch.fft.ifft2(dense_spectrum, norm).real * scaling.
  for (auto norm : {fft_norm::backward, fft_norm::ortho, fft_norm::forward}) {
    fourierft_config cfg;
    cfg.n_frequency = 9;
    cfg.scaling = 3.5;
    cfg.ifft2_norm = norm;
    auto layer = make_layer(5, 6, cfg);
    auto& a = static_cast<fourierft<double>&>(layer->get_adapter());
    const double nu = norm == fft_norm::backward ? 1.0 / 30 : norm == fft_norm::ortho ? 1.0 / std::sqrt(30.0) : 1.0;
    const matrix<double> ref = 3.5 * idft2_real(dense_spectrum(a), nu);
    const matrix<double> W = as_matrix(layer->base_layer->weight.value());
    REQUIRE((a.delta_weight(W) - ref).cwiseAbs().maxCoeff() < 1e-12);

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
}

TEST_CASE("FourierFT: a single coefficient is a cosine wave", "[adapters][fourierft]") {
  // c at (u, v) = (1, 2) of a 4x8 spectrum, norm backward: ΔW[p,q] = s·c/32·cos(2π(p/4 + 2q/8)).
  fourierft_config cfg;
  cfg.scaling = 2.0;
  fourierft<double> a(8, 4, cfg, {1}, {2});
  a.fourierft_spectrum.value()(0) = 16.0;
  const matrix<double> d = a.delta_weight(matrix<double>::Zero(4, 8));
  REQUIRE_THAT(d(0, 0), WithinRel(1.0, 1e-14));                                   // 2·16/32
  REQUIRE_THAT(d(1, 0), WithinAbs(0.0, 1e-14));                                   // cos(π/2)
  REQUIRE_THAT(d(0, 2), WithinRel(-1.0, 1e-14));                                  // cos(π)
  REQUIRE_THAT(d(1, 1), WithinRel(-1.0, 1e-14));                                  // cos(π/2 + π/2)
  REQUIRE_THAT(d(3, 3), WithinRel(std::cos(2 * std::numbers::pi * (0.75 + 0.75)), 1e-14));
}

TEST_CASE("FourierFT defaults are PEFT's", "[adapters][fourierft]") {
  fourierft_config cfg;
  REQUIRE(cfg.n_frequency == 1000);
  REQUIRE(cfg.scaling == 150.0);
  REQUIRE(cfg.random_loc_seed == 777);
  REQUIRE_FALSE(cfg.init_weights);
  REQUIRE(cfg.ifft2_norm == fft_norm::backward);
  REQUIRE(cfg.alpha == 0.0);
  fourierft<double> a(64, 48, cfg);
  REQUIRE(a.n_frequency() == 1000);
  REQUIRE(a.fourierft_spectrum.shape() == shape_t{1000});
  REQUIRE(a.peft_type() == "FOURIERFT");
  REQUIRE(a.named_parameters().size() == 1);
  REQUIRE(a.named_parameters()[0].first == "fourierft_spectrum");
  REQUIRE_THAT(a.effective_scaling(), WithinRel(150.0 / (64 * 48), 1e-15));
  // init_weights = False: spectrum ~ N(0, 1) (not the identity at init).
  double m = 0, s2 = 0;
  for (double v : a.fourierft_spectrum.value()) m += v, s2 += v * v;
  m /= 1000;
  REQUIRE_THAT(m, WithinAbs(0.0, 0.1));
  REQUIRE_THAT(std::sqrt(s2 / 1000 - m * m), WithinAbs(1.0, 0.08));
  // alpha sets n_frequency = int(alpha · in · out).
  cfg.alpha = 0.01;
  fourierft<double> b(64, 48, cfg);
  REQUIRE(b.n_frequency() == std::size_t(0.01 * 64 * 48));
}

TEST_CASE("FourierFT init_weights = true starts as the identity", "[adapters][fourierft]") {
  fourierft_config cfg;
  cfg.n_frequency = 10;
  cfg.init_weights = true;
  auto layer = make_layer(6, 4, cfg);
  rng g(3);
  auto x = constant<double>(randn<double>({3, 6}, g));
  REQUIRE((as_matrix(layer->forward(x).value()) - as_matrix(layer->base_layer->forward(x).value()))
              .cwiseAbs()
              .maxCoeff() == 0.0);
}

TEST_CASE("FourierFT positions: seeded, distinct, reproducible", "[adapters][fourierft]") {
  fourierft_config cfg;
  cfg.n_frequency = 200;
  fourierft<float> a(20, 15, cfg), b(20, 15, cfg);
  REQUIRE(a.positions().u == b.positions().u);
  REQUIRE(a.positions().v == b.positions().v);
  REQUIRE(as_vector(a.fourierft_spectrum.value()) == as_vector(b.fourierft_spectrum.value()));
  std::set<std::size_t> flat;
  for (std::size_t k = 0; k < 200; ++k) {
    REQUIRE(a.positions().u[k] < 15);
    REQUIRE(a.positions().v[k] < 20);
    flat.insert(a.positions().u[k] * 20 + a.positions().v[k]);
  }
  REQUIRE(flat.size() == 200);
  cfg.random_loc_seed = 778;
  fourierft<float> c(20, 15, cfg);
  REQUIRE(c.positions().u != a.positions().u);
  // The full spectrum (n = out·in) is a permutation of all positions.
  cfg.n_frequency = 300;
  fourierft<float> full(20, 15, cfg);
  std::set<std::size_t> all;
  for (std::size_t k = 0; k < 300; ++k) all.insert(full.positions().u[k] * 20 + full.positions().v[k]);
  REQUIRE(all.size() == 300);
  // Tables hold one row per distinct frequency: ≤ 2·(|V|·in + |U|·out).
  REQUIRE(full.table_size() == 2 * (20 * 20 + 15 * 15));
}

TEST_CASE("FourierFT memory: tables are small when n is small", "[adapters][fourierft]") {
  fourierft_config cfg;
  cfg.n_frequency = 4;
  fourierft<float> a(256, 128, cfg);
  REQUIRE(a.table_size() <= 2 * 4 * (256 + 128));
  REQUIRE(a.table_size() < 256 * 128 / 10);
}

TEST_CASE("FourierFT gradcheck: input and spectrum", "[adapters][fourierft][gradcheck]") {
  fourierft_config cfg;
  cfg.n_frequency = 7;
  cfg.scaling = 20;
  auto layer = make_layer(4, 5, cfg);
  auto& a = static_cast<fourierft<double>&>(layer->get_adapter());
  rng g(4);
  auto x = parameter<double>(randn<double>({2, 3, 4}, g));
  SECTION("frozen base") {
    auto r = grad_check([&](auto&) { return layer->forward(x); }, {x, a.fourierft_spectrum});
    INFO(r.report);
    REQUIRE(r.ok);
  }
  SECTION("spectrum only (no dx requested)") {
    auto xc = constant<double>(x.value());
    auto r = grad_check([&](auto&) { return layer->forward(xc); }, {a.fourierft_spectrum});
    INFO(r.report);
    REQUIRE(r.ok);
  }
  SECTION("trainable base and bias") {
    layer->base_layer->unfreeze();
    auto r = grad_check([&](auto&) { return layer->forward(x); },
                        {x, a.fourierft_spectrum, layer->base_layer->weight, layer->base_layer->bias});
    INFO(r.report);
    REQUIRE(r.ok);
  }
}

TEST_CASE("FourierFT in float agrees with double", "[adapters][fourierft]") {
  fourierft_config cfg;
  cfg.n_frequency = 12;
  fourierft<float> af(7, 5, cfg);
  fourierft<double> ad(7, 5, cfg);
  rng g(8);
  const tensor<double> xd = randn<double>({4, 7}, g);
  const tensor<float> xf = xt::cast<float>(xd);
  adapter_ctx<float> cf;
  adapter_ctx<double> cd;
  matrix<float> yf = matrix<float>::Zero(4, 5);
  matrix<double> yd = matrix<double>::Zero(4, 5);
  af.forward_delta(as_matrix(xf), yf, cf, true);
  ad.forward_delta(as_matrix(xd), yd, cd, true);
  REQUIRE((yf.cast<double>() - yd).cwiseAbs().maxCoeff() < 1e-4 * (1 + yd.cwiseAbs().maxCoeff()));
}

TEST_CASE("FourierFT bad input gives clear errors", "[adapters][fourierft]") {
  fourierft_config cfg;
  cfg.n_frequency = 13;
  REQUIRE_THROWS_WITH((fourierft<float>(4, 3, cfg)),
                      Catch::Contains("n_frequency 13") && Catch::Contains("[3,4]"));
  cfg.n_frequency = 0;
  REQUIRE_THROWS_AS((fourierft<float>(4, 3, cfg)), value_error);
  cfg.n_frequency = 2;
  cfg.alpha = 1.5;
  REQUIRE_THROWS_WITH((fourierft<float>(4, 3, cfg)), Catch::Contains("alpha"));
  cfg.alpha = 0;
  cfg.scaling = std::nan("");
  REQUIRE_THROWS_WITH((fourierft<float>(4, 3, cfg)), Catch::Contains("scaling"));
  cfg.scaling = 1;
  REQUIRE_THROWS_WITH((fourierft<float>(4, 3, cfg, {0, 3}, {0, 1})), Catch::Contains("(3,1)"));
  REQUIRE_THROWS_WITH((fourierft<float>(4, 3, cfg, {1, 1}, {2, 2})), Catch::Contains("duplicate"));
  REQUIRE_THROWS_AS((fourierft<float>(4, 3, cfg, {1}, {2, 2})), shape_error);
  auto layer = make_layer(4, 3, cfg);
  auto x = constant<double>(zeros<double>({2, 5}));
  REQUIRE_THROWS_WITH(layer->forward(x), Catch::Contains("[2,5]"));
}
