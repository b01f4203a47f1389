#include <catch2/catch.hpp>

#include <cmath>

#include "peft/adapters/adapted_linear.hpp"
#include "peft/adapters/moslora.hpp"
#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/add.hpp"
#include "peft/autograd/ops/matmul.hpp"
#include "peft/autograd/ops/mul.hpp"
#include "peft/autograd/ops/transpose.hpp"

using namespace peft;
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

namespace {
std::shared_ptr<adapted_linear<double>> make_layer(std::size_t in, std::size_t out, moslora_config cfg,
                                                   bool random_b = true) {
  rng g(11);
  auto base = std::make_shared<nn::linear<double>>(in, out, true, g);
  base->freeze();
  std::shared_ptr<moslora<double>> a;
  if (random_b)
    a = std::make_shared<moslora<double>>(in, out, cfg, init::random_both{0.3});
  else
    a = std::make_shared<moslora<double>>(in, out, cfg);
  return std::make_shared<adapted_linear<double>>(base, a);
}
}  // namespace

TEST_CASE("MoSLoRA forward is h = W0 x + s B M A x", "[adapters][moslora]") {
  // Wu et al. 2024, eq. (5): h = W0·x + B·W·A·x with a learnable mixer W ∈ R^{r×r}.
  moslora_config cfg;
  cfg.r = 3;
  cfg.alpha = 6;
  auto layer = make_layer(5, 4, cfg);
  rng g(2);
  auto x = constant<double>(randn<double>({2, 3, 5}, g));
  auto y = layer->forward(x);
  auto& a = static_cast<moslora<double>&>(layer->get_adapter());
  const matrix<double> W = as_matrix(layer->base_layer->weight.value());
  const matrix<double> dW =
      2.0 * as_matrix(a.lora_B.value()) * as_matrix(a.lora_AB.value()) * as_matrix(a.lora_A.value());
  matrix<double> ref = as_matrix(x.value()) * (W + dW).transpose();
  ref.rowwise() += as_vector(layer->base_layer->bias.value()).transpose();
  REQUIRE((as_matrix(y.value()) - ref).cwiseAbs().maxCoeff() < 1e-12);
  REQUIRE((a.delta_weight(W) - dW).cwiseAbs().maxCoeff() < 1e-12);
  matrix<double> Bf, Af;
  REQUIRE(a.factors(Bf, Af));
  REQUIRE((Bf * Af - dW).cwiseAbs().maxCoeff() < 1e-12);
  REQUIRE(layer->named_parameters().size() == 5);  // base weight, bias, lora_A, lora_AB, lora_B
}

TEST_CASE("MoSLoRA with M = I is LoRA", "[adapters][moslora]") {
  moslora_config cfg;
  cfg.r = 2;
  auto layer = make_layer(4, 3, cfg);
  auto& a = static_cast<moslora<double>&>(layer->get_adapter());
  as_matrix(a.lora_AB.value()).setIdentity();
  const matrix<double> BA = as_matrix(a.lora_B.value()) * as_matrix(a.lora_A.value());
  REQUIRE((a.delta_weight(BA) - a.scaling() * BA).cwiseAbs().maxCoeff() < 1e-14);
}

TEST_CASE("MoSLoRA init: A, M kaiming-uniform, B = 0, identity at init", "[adapters][moslora]") {
  moslora_config cfg;
  cfg.r = 16;
  REQUIRE(cfg.alpha == 8);
  REQUIRE(cfg.mixer_init == moslora_mixer_init::kaiming_uniform);
  auto layer = make_layer(64, 6, cfg, /*random_b=*/false);
  auto& a = static_cast<moslora<double>&>(layer->get_adapter());
  auto max_abs = [](const tensor<double>& t) {
    double m = 0;
    for (double v : t) m = std::max(m, std::abs(v));
    return m;
  };
  REQUIRE(max_abs(a.lora_A.value()) <= 0.125);  // 1/sqrt(in)
  REQUIRE(max_abs(a.lora_A.value()) > 0.1);
  REQUIRE(max_abs(a.lora_AB.value()) <= 0.25);  // 1/sqrt(r)
  REQUIRE(max_abs(a.lora_AB.value()) > 0.2);
  REQUIRE(max_abs(a.lora_B.value()) == 0.0);
  rng g(3);
  auto x = constant<double>(randn<double>({3, 64}, g));
  REQUIRE((as_matrix(layer->forward(x).value()) - as_matrix(layer->base_layer->forward(x).value()))
              .cwiseAbs()
              .maxCoeff() == 0.0);
  // Same seed, same bits; A and M come from different streams.
  moslora<double> b(64, 6, cfg);
  REQUIRE(as_vector(b.lora_A.value()) == as_vector(a.lora_A.value()));
  REQUIRE(as_vector(b.lora_AB.value()) == as_vector(a.lora_AB.value()));
  REQUIRE(as_matrix(a.lora_AB.value()).row(0) != as_matrix(a.lora_A.value()).row(0).head(16));
}

TEST_CASE("MoSLoRA orthogonal mixer: MᵀM = I", "[adapters][moslora]") {
  moslora_config cfg;
  cfg.r = 6;
  cfg.mixer_init = moslora_mixer_init::orthogonal;
  moslora<double> a(10, 7, cfg);
  const auto M = as_matrix(a.lora_AB.value());
  REQUIRE((M.transpose() * M - matrix<double>::Identity(6, 6)).cwiseAbs().maxCoeff() < 1e-12);
  moslora<float> f(10, 7, cfg);
  const matrix<double> Mf = as_matrix(f.lora_AB.value()).cast<double>();
  REQUIRE((Mf - matrix<double>(M)).cwiseAbs().maxCoeff() < 1e-6);  // same draw in float
}

TEST_CASE("MoSLoRA gradcheck and fused backward vs op composition", "[adapters][moslora][gradcheck]") {
  moslora_config cfg;
  cfg.r = 2;
  cfg.alpha = 3;
  auto layer = make_layer(4, 3, cfg);
  auto& a = static_cast<moslora<double>&>(layer->get_adapter());
  rng g(4);
  auto x = parameter<double>(randn<double>({2, 2, 4}, g));
  SECTION("gradcheck") {
    auto r = grad_check([&](auto&) { return layer->forward(x); }, {x, a.lora_A, a.lora_AB, a.lora_B});
    INFO(r.report);
    REQUIRE(r.ok);
  }
  SECTION("composition on the tape") {
    auto x2 = parameter<double>(randn<double>({5, 4}, g));
    tensor<double> seed = randn<double>({5, 3}, g);
    layer->forward(x2).backward(seed);
    const tensor<double> gx = x2.grad(), gA = a.lora_A.grad(), gM = a.lora_AB.grad(), gB = a.lora_B.grad();
    x2.zero_grad();
    a.zero_grad();
    auto ref = layer->base_layer->forward(x2) +
               matmul(matmul(matmul(x2, transpose(a.lora_A)), transpose(a.lora_AB)), transpose(a.lora_B)) *
                   a.scaling();
    ref.backward(seed);
    REQUIRE((as_matrix(x2.grad()) - as_matrix(gx)).cwiseAbs().maxCoeff() < 1e-12);
    REQUIRE((as_matrix(a.lora_A.grad()) - as_matrix(gA)).cwiseAbs().maxCoeff() < 1e-12);
    REQUIRE((as_matrix(a.lora_AB.grad()) - as_matrix(gM)).cwiseAbs().maxCoeff() < 1e-12);
    REQUIRE((as_matrix(a.lora_B.grad()) - as_matrix(gB)).cwiseAbs().maxCoeff() < 1e-12);
  }
}

TEST_CASE("MoSLoRA dropout: same seed same mask, gradcheck of a fixed mask", "[adapters][moslora][dropout]") {
  moslora_config cfg;
  cfg.r = 2;
  cfg.dropout = 0.4;
  cfg.seed = 5;
  auto l1 = make_layer(6, 3, cfg), l2 = make_layer(6, 3, cfg);
  rng g(6);
  auto x = constant<double>(randn<double>({5, 6}, g));
  REQUIRE(as_matrix(l1->forward(x).value()) == as_matrix(l2->forward(x).value()));
  // Replaying the dropout stream reproduces the output, so finite differences see one mask.
  auto& a = static_cast<moslora<double>&>(l1->get_adapter());
  const rng saved = a.dropout_rng();
  auto xp = parameter<double>(x.value());
  auto r = grad_check(
      [&](auto&) {
        a.dropout_rng() = saved;
        return l1->forward(xp);
      },
      {xp, a.lora_A, a.lora_AB, a.lora_B});
  INFO(r.report);
  REQUIRE(r.ok);
}

TEST_CASE("MoSLoRA bad input gives clear errors", "[adapters][moslora]") {
  moslora_config cfg;
  cfg.r = 0;
  REQUIRE_THROWS_WITH((moslora<float>(4, 4, cfg)), Catch::Contains("moslora") && Catch::Contains("rank"));
  cfg.r = 2;
  cfg.dropout = -0.1;
  REQUIRE_THROWS_WITH((moslora<float>(4, 4, cfg)), Catch::Contains("dropout"));
  cfg.dropout = 0;
  tensor<float> W = zeros<float>({3, 5});
  REQUIRE_THROWS_WITH((moslora<float>(4, 3, cfg, init::kaiming_default{}, &W)), Catch::Contains("[3,5]"));
  auto layer = make_layer(4, 3, cfg);
  auto x = constant<double>(zeros<double>({2, 5}));
  REQUIRE_THROWS_WITH(layer->forward(x), Catch::Contains("[2,5]"));
}
