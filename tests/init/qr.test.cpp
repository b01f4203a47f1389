#include "peft/init/qr.hpp"

#include <catch2/catch.hpp>

#include "peft/adapters/adapted_linear.hpp"
#include "peft/adapters/lora.hpp"

using namespace peft;
using Catch::Matchers::Contains;

namespace {
double max_abs(const matrix<double>& m) { return m.cwiseAbs().maxCoeff(); }
}  // namespace

TEST_CASE("OLoRA: B = Q[:, :r] orthonormal, A = R[:r] upper triangular, W_res = W − s·B·A",
          "[init][qr][olora]") {
  // Büyükakyüz 2024 (OLoRA), as PEFT's olora_init: W = Q·R, B = Q_r, A = R_r, W ← W − s·Q_r R_r.
  for (auto [in, out] : {std::pair<std::size_t, std::size_t>{9, 6}, {5, 8}}) {
    INFO("in = " << in << ", out = " << out);
    const std::size_t r = 3;
    rng g(in * 10 + out);
    tensor<double> W = randn<double>({out, in}, g);
    const matrix<double> W0 = as_matrix(W);
    lora_config cfg;
    cfg.r = r;
    cfg.alpha = 6;  // s = 2
    lora<double> a(in, out, cfg, init::olora{}, &W);
    const double s = a.scaling();
    const auto A = as_matrix(a.lora_A.value());
    const auto B = as_matrix(a.lora_B.value());
    // Q has orthonormal columns.
    REQUIRE(max_abs(B.transpose() * B - matrix<double>::Identity(3, 3)) < 1e-12);
    // R is upper triangular.
    for (Eigen::Index i = 0; i < A.rows(); ++i)
      for (Eigen::Index j = 0; j < i; ++j) REQUIRE(A(i, j) == 0.0);
    // Q_r R_r equals the first r columns' QR: it reproduces W's first r columns exactly.
    REQUIRE(max_abs((B * A).leftCols(3) - W0.leftCols(3)) < 1e-12);
    // Full QR (k = min(out, in)) reproduces W; here we check the rank-r part against the span:
    // B·A = Q_r Q_rᵀ W (projection of W on the first r columns' span).
    REQUIRE(max_abs(B * A - B * B.transpose() * W0) < 1e-12);
    // No division by s (unlike PiSSA): the residual removes s·Q_r R_r.
    REQUIRE(max_abs(as_matrix(W) - (W0 - s * B * A)) < 1e-12);
    REQUIRE(max_abs(as_matrix(W) + s * B * A - W0) < 1e-12);
  }
  REQUIRE(init::olora{}.peft_init_name() == "olora");
}

TEST_CASE("OLoRA keeps the adapted layer identical to the base at init", "[init][qr][olora]") {
  rng g(4);
  auto base = std::make_shared<nn::linear<double>>(7, 5, true, g);
  base->freeze();
  auto x = constant<double>(randn<double>({3, 7}, g));
  const auto y0 = base->forward(x);
  lora_config cfg;
  cfg.r = 2;
  cfg.alpha = 8;
  auto a = std::make_shared<lora<double>>(7, 5, cfg, init::olora{}, &base->weight.value());
  adapted_linear<double> layer(base, a);
  REQUIRE(max_abs(as_matrix(layer.forward(x).value()) - as_matrix(y0.value())) < 1e-12);
}

TEST_CASE("OLoRA in float and bad input", "[init][qr][olora]") {
  rng g(5);
  tensor<float> W = randn<float>({6, 4}, g);
  const matrix<float> W0 = as_matrix(W);
  lora_config cfg;
  cfg.r = 2;
  lora<float> a(4, 6, cfg, init::olora{}, &W);
  const matrix<float> rec =
      as_matrix(W) + float(a.scaling()) * as_matrix(a.lora_B.value()) * as_matrix(a.lora_A.value());
  REQUIRE((rec - W0).cwiseAbs().maxCoeff() < 1e-5f);

  cfg.r = 5;
  tensor<double> Wd = zeros<double>({6, 4});
  REQUIRE_THROWS_WITH((lora<double>(4, 6, cfg, init::olora{}, &Wd)),
                      Contains("olora") && Contains("[6,4]"));
  cfg.r = 2;
  REQUIRE_THROWS_WITH((lora<double>(4, 6, cfg, init::olora{})), Contains("needs the base weight"));
}
