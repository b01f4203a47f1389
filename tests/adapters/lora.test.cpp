#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include "peft/adapters/adapted_linear.hpp"
#include "peft/adapters/lora.hpp"
#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/add.hpp"
#include "peft/autograd/ops/matmul.hpp"
#include "peft/autograd/ops/mul.hpp"
#include "peft/autograd/ops/transpose.hpp"

using namespace peft;
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

namespace {
template <class T>
std::shared_ptr<adapted_linear<T>> make_layer(std::size_t in, std::size_t out, lora_config cfg,
                                              bool random_b = true, bool bias = true) {
  rng g(11);
  auto base = std::make_shared<nn::linear<T>>(in, out, bias, g);
  base->freeze();
  std::shared_ptr<lora<T>> a;
  if (random_b)
    a = std::make_shared<lora<T>>(in, out, cfg, init::random_both{0.3});
  else
    a = std::make_shared<lora<T>>(in, out, cfg);
  return std::make_shared<adapted_linear<T>>(base, a);
}
}  // namespace

TEST_CASE("LoRA forward is h = W0 x + (alpha/r) B A x", "[adapters][lora]") {
  // Hu et al. 2021, eq. (3): h = W0·x + ΔW·x = W0·x + B·A·x, scaled by alpha / r.
  lora_config cfg;
  cfg.r = 3;
  cfg.alpha = 6;
  auto layer = make_layer<double>(5, 4, cfg);
  rng g(2);
  auto x = constant<double>(randn<double>({2, 3, 5}, g));
  auto y = layer->forward(x);
  REQUIRE(y.shape() == shape_t{2, 3, 4});
  auto& a = static_cast<lora<double>&>(layer->get_adapter());
  const matrix<double> W = as_matrix(layer->base_layer->weight.value());
  const matrix<double> dW = 2.0 * as_matrix(a.lora_B.value()) * as_matrix(a.lora_A.value());
  const auto xm = as_matrix(x.value());
  matrix<double> ref = xm * (W + dW).transpose();
  ref.rowwise() += as_vector(layer->base_layer->bias.value()).transpose();
  REQUIRE((as_matrix(y.value()) - ref).cwiseAbs().maxCoeff() < 1e-12);
  REQUIRE_THAT(a.scaling(), WithinRel(2.0, 1e-15));
}

TEST_CASE("rsLoRA scales by alpha / sqrt(r)", "[adapters][lora]") {
  // Kalajdzievska 2023: gamma_r = alpha / sqrt(r).
  lora_config cfg;
  cfg.r = 16;
  cfg.alpha = 8;
  cfg.use_rslora = true;
  lora<float> a(8, 8, cfg);
  REQUIRE_THAT(a.scaling(), WithinRel(2.0, 1e-15));
  REQUIRE(a.method() == "rslora");
}

TEST_CASE("PEFT default init: A kaiming-uniform(a=sqrt 5), B = 0, identity at init",
          "[adapters][lora]") {
  lora_config cfg;
  cfg.r = 4;
  auto layer = make_layer<double>(16, 6, cfg, /*random_b=*/false);
  auto& a = static_cast<lora<double>&>(layer->get_adapter());
  double mx = 0;
  for (double v : a.lora_A.value()) mx = std::max(mx, std::abs(v));
  REQUIRE(mx <= 0.25);  // bound 1/sqrt(in) = 0.25
  REQUIRE(mx > 0.2);
  for (double v : a.lora_B.value()) REQUIRE(v == 0.0);
  rng g(3);
  auto x = constant<double>(randn<double>({3, 16}, g));
  auto y = layer->forward(x);
  auto y0 = layer->base_layer->forward(x);
  REQUIRE((as_matrix(y.value()) - as_matrix(y0.value())).cwiseAbs().maxCoeff() == 0.0);
}

TEST_CASE("gaussian init: A ~ N(0, 1/r), B = 0", "[adapters][lora]") {
  lora_config cfg;
  cfg.r = 4;
  lora<double> a(400, 3, cfg, init::gaussian{});
  double s2 = 0;
  for (double v : a.lora_A.value()) s2 += v * v;
  REQUIRE_THAT(std::sqrt(s2 / 1600.0), WithinAbs(0.25, 0.02));
}

TEST_CASE("LoRA gradcheck: input, A, B, and an unfrozen base", "[adapters][lora][gradcheck]") {
  lora_config cfg;
  cfg.r = 2;
  cfg.alpha = 3;
  auto layer = make_layer<double>(4, 3, cfg);
  auto& a = static_cast<lora<double>&>(layer->get_adapter());
  rng g(4);
  auto x = parameter<double>(randn<double>({2, 2, 4}, g));
  SECTION("frozen base") {
    auto r = grad_check([&](auto&) { return layer->forward(x); }, {x, a.lora_A, a.lora_B});
    INFO(r.report);
    REQUIRE(r.ok);
  }
  SECTION("trainable base and bias") {
    layer->base_layer->unfreeze();
    auto r = grad_check([&](auto&) { return layer->forward(x); },
                        {x, a.lora_A, a.lora_B, layer->base_layer->weight, layer->base_layer->bias});
    INFO(r.report);
    REQUIRE(r.ok);
  }
}

TEST_CASE("only adapter parameters get gradients when the base is frozen", "[adapters][lora]") {
  lora_config cfg;
  auto layer = make_layer<float>(6, 5, cfg);
  rng g(5);
  auto x = constant<float>(randn<float>({4, 6}, g));
  auto y = layer->forward(x);
  y.backward(ones<float>(y.shape()));
  for (auto& [name, v] : layer->named_parameters()) {
    INFO(name);
    REQUIRE(v.has_grad() == (name.rfind("lora_", 0) == 0));
  }
}

TEST_CASE("LoRA dropout: reproducible mask, fused backward equals composition",
          "[adapters][lora][dropout]") {
  // With dropout p on the adapter input: h = W0 x + s B A (m ⊙ x) / (1-p), m ~ Bernoulli(1-p).
  lora_config cfg;
  cfg.r = 2;
  cfg.alpha = 2;
  cfg.dropout = 0.5;
  cfg.seed = 9;
  auto l1 = make_layer<double>(6, 3, cfg);
  auto l2 = make_layer<double>(6, 3, cfg);
  rng g(6);
  auto x = parameter<double>(randn<double>({5, 6}, g));
  auto y1 = l1->forward(x);
  auto y2 = l2->forward(x);
  REQUIRE(as_matrix(y1.value()) == as_matrix(y2.value()));  // same seed, same bits

  // Recover the mask via the fast path and compare with an op composition.
  auto& a = static_cast<lora<double>&>(l1->get_adapter());
  auto& W = l1->base_layer->weight;
  rng saved = a.dropout_rng();
  adapter_ctx<double> ctx;
  tensor<double> yf = zeros<double>({5, 3});
  a.forward(as_matrix(x.value()), as_matrix(W.value()), l1->base_layer->bias.value().data(),
            as_matrix(yf), ctx, true);
  const matrix<double> mask = ctx.m[1];
  int zeros_seen = 0;
  for (Eigen::Index i = 0; i < mask.size(); ++i) zeros_seen += mask.data()[i] == 0.0;
  REQUIRE(zeros_seen > 3);
  REQUIRE(zeros_seen < 27);

  a.dropout_rng() = saved;  // replay the same mask on the tape
  x.zero_grad();
  a.lora_A.zero_grad();
  auto yt = l1->forward(x);
  tensor<double> seed = randn<double>({5, 3}, g);
  yt.backward(seed);
  const tensor<double> gx = x.grad(), gA = a.lora_A.grad();

  x.zero_grad();
  a.lora_A.zero_grad();
  tensor<double> mt = zeros<double>({5, 6});
  as_matrix(mt) = mask;
  auto xd = mul(x, constant<double>(mt));
  auto ref = l1->base_layer->forward(x) +
             matmul(matmul(xd, transpose(a.lora_A)), transpose(a.lora_B)) * a.scaling();
  REQUIRE((as_matrix(ref.value()) - as_matrix(yt.value())).cwiseAbs().maxCoeff() < 1e-12);
  ref.backward(seed);
  REQUIRE((as_matrix(x.grad()) - as_matrix(gx)).cwiseAbs().maxCoeff() < 1e-12);
  REQUIRE((as_matrix(a.lora_A.grad()) - as_matrix(gA)).cwiseAbs().maxCoeff() < 1e-12);

  l1->eval();  // no dropout in eval mode: deterministic and equal to the dense formula
  auto e1 = l1->forward(x), e2 = l1->forward(x);
  REQUIRE(as_matrix(e1.value()) == as_matrix(e2.value()));
}

TEST_CASE("merge gives the same output; unmerge restores W", "[adapters][lora][merge]") {
  lora_config cfg;
  cfg.r = 3;
  auto layer = make_layer<float>(8, 6, cfg);
  rng g(7);
  auto x = constant<float>(randn<float>({4, 8}, g));
  const tensor<float> W0 = layer->base_layer->weight.value();
  auto y = layer->forward(x);
  layer->merge();
  REQUIRE(layer->merged());
  auto ym = layer->forward(x);
  REQUIRE((as_matrix(ym.value()) - as_matrix(y.value())).cwiseAbs().maxCoeff() < 1e-5f);
  REQUIRE_THROWS_AS(layer->merge(), error);
  layer->unmerge();
  REQUIRE((as_matrix(layer->base_layer->weight.value()) - as_matrix(W0)).cwiseAbs().maxCoeff() <
          1e-6f);
}

TEST_CASE("safe merge refuses non-finite weights and leaves W untouched", "[adapters][lora][merge]") {
  lora_config cfg;
  auto layer = make_layer<float>(4, 4, cfg);
  auto& a = static_cast<lora<float>&>(layer->get_adapter());
  a.lora_B.value()(0, 0) = std::numeric_limits<float>::infinity();
  const tensor<float> W0 = layer->base_layer->weight.value();
  REQUIRE_THROWS_WITH(layer->merge(), Catch::Contains("non-finite"));
  REQUIRE(as_matrix(layer->base_layer->weight.value()) == as_matrix(W0));
  REQUIRE_FALSE(layer->merged());
}

TEST_CASE("LoRA bad input gives clear errors", "[adapters][lora]") {
  lora_config cfg;
  cfg.r = 0;
  REQUIRE_THROWS_WITH((lora<float>(4, 4, cfg)), Catch::Contains("rank"));
  cfg.r = 2;
  cfg.dropout = 1.0;
  REQUIRE_THROWS_WITH((lora<float>(4, 4, cfg)), Catch::Contains("dropout"));
  cfg.dropout = 0;
  auto layer = make_layer<float>(4, 3, cfg);
  auto x = constant<float>(zeros<float>({2, 5}));
  REQUIRE_THROWS_WITH(layer->forward(x), Catch::Contains("[2,5]"));
  rng g(1);
  auto base = std::make_shared<nn::linear<float>>(4, 3, g);
  auto wrong = std::make_shared<lora<float>>(5, 3, cfg);
  REQUIRE_THROWS_AS(adapted_linear<float>(base, wrong), shape_error);
}
