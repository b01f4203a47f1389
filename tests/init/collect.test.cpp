#include "peft/init/collect.hpp"

#include <catch2/catch.hpp>
#include <memory>

#include "peft/autograd/ops/mul.hpp"
#include "peft/autograd/ops/sum.hpp"

using namespace peft;
using Catch::Matchers::Contains;

namespace {
// Test-local model: x -> fc1 (4->3) -> fc2 (3->2). In two_layer fc1 sits in a Linear-typed
// slot, fc2 in a unary_module slot, so the recorder must fit both; injection needs unary_module
// slots (two_layer_u).
template <class Slot1>
struct two_layer_t : nn::module<double> {
  std::shared_ptr<Slot1> fc1;
  std::shared_ptr<nn::unary_module<double>> fc2;
  explicit two_layer_t(std::uint64_t seed) {
    rng g(seed);
    fc1 = std::make_shared<nn::linear<double>>(4, 3, true, g);
    fc2 = std::make_shared<nn::linear<double>>(3, 2, true, g);
    register_module("fc1", fc1);
    register_module("fc2", fc2);
  }
  variable<double> forward(const variable<double>& x) { return fc2->forward(fc1->forward(x)); }
  nn::linear<double>& l1() { return dynamic_cast<nn::linear<double>&>(*fc1); }
  nn::linear<double>& l2() { return dynamic_cast<nn::linear<double>&>(*fc2); }
};
using two_layer = two_layer_t<nn::linear<double>>;
using two_layer_u = two_layer_t<nn::unary_module<double>>;

double max_abs(const matrix<double>& m) { return m.cwiseAbs().maxCoeff(); }
bool same_state(const nn::state_dict<double>& a, const nn::state_dict<double>& b) {
  if (a.size() != b.size()) return false;
  for (auto& [k, v] : a) {
    auto it = b.find(k);
    if (it == b.end()) return false;
    const bool eq = v == it->second;
    if (!eq) return false;
  }
  return true;
}
}  // namespace

TEST_CASE("full_weight_gradients returns dL/dW = dyᵀ·x and restores the model", "[init][collect]") {
  two_layer m(1);
  rng g(2);
  const tensor<double> xt = randn<double>({5, 4}, g), C = randn<double>({5, 2}, g);
  auto loss_fn = [&] {
    auto x = constant<double>(xt);
    return sum(m.forward(x) * constant<double>(C));
  };
  // Some prior state that must survive: fc1.bias trainable with a gradient; the rest frozen.
  m.freeze();
  m.l1().bias.set_requires_grad(true);
  m.l1().bias.get()->grad = ones<double>({3});
  m.l1().bias.get()->has_grad = true;
  const auto sd0 = m.get_state_dict();

  const auto G = full_weight_gradients(m, {"fc1", "fc2"}, loss_fn);
  // Analytic: L = Σ y⊙C, dy = C; dW2 = Cᵀ·h, dW1 = (C·W2)ᵀ·x.
  const auto X = as_matrix(xt);
  const auto Cm = as_matrix(C);
  const matrix<double> W1 = as_matrix(m.l1().weight.value()), W2 = as_matrix(m.l2().weight.value());
  matrix<double> h = X * W1.transpose();
  h.rowwise() += as_vector(m.l1().bias.value()).transpose();
  REQUIRE(max_abs(G.at("fc2") - Cm.transpose() * h) < 1e-12);
  REQUIRE(max_abs(G.at("fc1") - (Cm * W2).transpose() * X) < 1e-12);

  // Restored exactly: values, flags, gradients.
  REQUIRE(same_state(m.get_state_dict(), sd0));
  REQUIRE_FALSE(m.l1().weight.requires_grad());
  REQUIRE_FALSE(m.l2().weight.requires_grad());
  REQUIRE_FALSE(m.l1().weight.has_grad());
  REQUIRE_FALSE(m.l2().bias.has_grad());
  REQUIRE(m.l1().bias.requires_grad());
  REQUIRE(m.l1().bias.has_grad());
  const bool bias_grad_kept = m.l1().bias.grad() == ones<double>({3});
  REQUIRE(bias_grad_kept);

  // Averaged over calls: the same batch twice gives the same gradient.
  const auto G2 = full_weight_gradients(m, {"fc2"}, loss_fn, 2);
  REQUIRE(max_abs(G2.at("fc2") - G.at("fc2")) < 1e-12);
}

TEST_CASE("full_weight_gradients errors leave the model as it was", "[init][collect]") {
  two_layer m(3);
  m.freeze();
  rng g(4);
  const tensor<double> xt = randn<double>({2, 4}, g);
  // fc2 unused by this loss.
  auto only_fc1 = [&] { return sum(m.fc1->forward(constant<double>(xt))); };
  REQUIRE_THROWS_WITH(full_weight_gradients(m, {"fc1", "fc2"}, only_fc1),
                      Contains("'fc2' received no gradient"));
  auto not_scalar = [&] { return m.forward(constant<double>(xt)); };
  REQUIRE_THROWS_WITH(full_weight_gradients(m, {"fc1"}, not_scalar), Contains("one-element loss"));
  auto throws = [&]() -> variable<double> { throw std::runtime_error("user error"); };
  REQUIRE_THROWS_WITH(full_weight_gradients(m, {"fc1"}, throws), Contains("user error"));
  REQUIRE_THROWS_WITH(full_weight_gradients(m, {"nope"}, only_fc1), Contains("nope"));
  for (auto& [n, v] : m.named_parameters()) {
    INFO(n);
    REQUIRE_FALSE(v.requires_grad());
    REQUIRE_FALSE(v.has_grad());
  }
}

TEST_CASE("layer_inputs records each Linear's input rows and restores the modules",
          "[init][collect]") {
  two_layer m(5);
  auto fc1 = m.fc1;
  auto fc2 = m.fc2;
  rng g(6);
  const tensor<double> x1 = randn<double>({2, 4}, g), x2 = randn<double>({1, 3, 4}, g);
  const auto y_before = m.forward(constant<double>(x2));
  const auto in = layer_inputs(m, {"fc1", "fc2"}, [&] {
    m.forward(constant<double>(x1));
    m.forward(constant<double>(x2));
  });
  REQUIRE(in.at("fc1").rows() == 5);
  REQUIRE(max_abs(in.at("fc1").topRows(2) - as_matrix(x1)) == 0.0);
  REQUIRE(max_abs(in.at("fc1").bottomRows(3) - as_matrix(x2)) == 0.0);
  const auto h = fc1->forward(constant<double>(x2));
  REQUIRE(in.at("fc2").rows() == 5);
  REQUIRE(max_abs(in.at("fc2").bottomRows(3) - as_matrix(h.value())) == 0.0);
  // The very same modules are back in place, and the model computes what it did.
  REQUIRE(m.fc1 == fc1);
  REQUIRE(m.fc2 == fc2);
  REQUIRE(m.find_module("fc1") == fc1);
  const auto y_after = m.forward(constant<double>(x2));
  REQUIRE(max_abs(as_matrix(y_after.value()) - as_matrix(y_before.value())) == 0.0);
  // Restored also when fn throws.
  REQUIRE_THROWS_WITH(layer_inputs(m, {"fc1"}, [] { throw std::runtime_error("boom"); }),
                      Contains("boom"));
  REQUIRE(m.fc1 == fc1);
  // fc1 alone runs (through the model's slot, which holds the recorder during fn).
  REQUIRE_THROWS_WITH(
      layer_inputs(m, {"fc1", "fc2"}, [&] { m.fc1->forward(constant<double>(x1)); }),
      Contains("'fc2' received no input"));
  REQUIRE(m.fc2 == fc2);
}

TEST_CASE("inject_lora_ga: per-layer LoRA-GA from the model's gradients, identity at init",
          "[init][collect]") {
  two_layer_u m(7), ref(7);
  rng g(8);
  const tensor<double> xt = randn<double>({6, 4}, g), C = randn<double>({6, 2}, g);
  auto loss_fn = [&] { return sum(m.forward(constant<double>(xt)) * constant<double>(C)); };
  const auto y0 = m.forward(constant<double>(xt));
  const auto G = full_weight_gradients(m, {"fc1", "fc2"}, loss_fn);
  lora_config cfg;
  cfg.r = 1;
  cfg.alpha = 2;
  inject_options opt;
  opt.targets = target_modules::list({"fc1", "fc2"});
  init::lora_ga_options ga;
  ga.kind = init::svd_kind::exact;
  const auto rep = inject_lora_ga(m, cfg, opt, loss_fn, ga);
  REQUIRE(rep.wrapped == std::vector<std::string>{"fc1", "fc2"});
  const auto y = m.forward(constant<double>(xt));
  REQUIRE(max_abs(as_matrix(y.value()) - as_matrix(y0.value())) < 1e-12);
  // fc2's adapter is what init::lora_ga makes from fc2's gradient.
  auto* a2 = dynamic_cast<adapted_linear<double>*>(m.find_module("fc2").get());
  REQUIRE(a2);
  const auto& l2 = static_cast<const lora<double>&>(a2->get_adapter());
  tensor<double> Wc = ref.l2().weight.value();
  lora<double> expect(
      3, 2, detail::init_layer_lora_config(cfg, layer_info<double>{"fc2", 3, 2, 1, 2, nullptr, 1}),
      init::lora_ga(G.at("fc2"), ga), &Wc);
  REQUIRE(max_abs(as_matrix(l2.lora_A.value()) - as_matrix(expect.lora_A.value())) < 1e-12);
  REQUIRE(max_abs(as_matrix(a2->base_layer->weight.value()) - as_matrix(Wc)) < 1e-12);
  // Only adapter parameters train.
  for (auto& [n, v] : m.named_parameters()) {
    INFO(n);
    REQUIRE(v.requires_grad() == (n.find("lora_") != std::string::npos));
  }
}

TEST_CASE("inject_eva: components of the recorded inputs, ranks redistributed, B = 0",
          "[init][collect]") {
  two_layer_u m(9);
  rng g(10);
  const tensor<double> xt = randn<double>({40, 4}, g);
  const auto y0 = m.forward(constant<double>(xt));
  const auto X = layer_inputs(m, {"fc1", "fc2"}, [&] { m.forward(constant<double>(xt)); });
  lora_config cfg;
  cfg.r = 1;
  cfg.alpha = 4;
  inject_options opt;
  opt.targets = target_modules::list({"fc1", "fc2"});
  m.train();
  const auto res = inject_eva(m, cfg, opt, [&] { m.forward(constant<double>(xt)); });
  REQUIRE(m.is_training());  // mode restored
  // Budget 2 over max 2 components per layer (rho = 2).
  REQUIRE(res.rank_pattern.at("fc1") + res.rank_pattern.at("fc2") == 2);
  const auto y = m.forward(constant<double>(xt));
  REQUIRE(max_abs(as_matrix(y.value()) - as_matrix(y0.value())) < 1e-12);
  for (auto& path : res.report.wrapped) {
    INFO(path);
    const std::size_t r = res.rank_pattern.at(path);
    REQUIRE(r > 0);
    REQUIRE(res.alpha_pattern.at(path) == 4.0 * double(r));  // adjust_scaling_factors: α·r_new/r
    auto* al = dynamic_cast<adapted_linear<double>*>(m.find_module(path).get());
    REQUIRE(al);
    const auto& l = static_cast<const lora<double>&>(al->get_adapter());
    REQUIRE(l.rank() == r);
    const auto d = init::eva_svd(X.at(path), r);
    REQUIRE(max_abs(as_matrix(l.lora_A.value()) - d.components) < 1e-10);
    for (double v : l.lora_B.value()) REQUIRE(v == 0.0);
  }
  for (auto& [p, r] : res.rank_pattern)
    if (r == 0) REQUIRE(dynamic_cast<nn::linear<double>*>(m.find_module(p).get()));
}

TEST_CASE("inject_lora_one and inject_lora_sb", "[init][collect]") {
  two_layer_u m(11);
  rng g(12);
  const tensor<double> xt = randn<double>({6, 4}, g), C = randn<double>({6, 2}, g);
  auto loss_fn = [&] { return sum(m.forward(constant<double>(xt)) * constant<double>(C)); };
  inject_options opt;
  opt.targets = target_modules::list({"fc2"});
  lora_xs_config xc;
  xc.r = 1;
  init::lora_sb_options sb;
  sb.rule = init::update_rule::sgd;
  sb.lr = 0.1;
  sb.subtract_from_weight = true;
  const auto y0 = m.forward(constant<double>(xt));
  inject_lora_sb(m, xc, opt, loss_fn, sb);
  const auto y = m.forward(constant<double>(xt));
  REQUIRE(max_abs(as_matrix(y.value()) - as_matrix(y0.value())) < 1e-12);
  std::size_t trainable = 0;
  for (auto& [n, v] : m.named_parameters())
    if (v.requires_grad()) {
      REQUIRE(n == "fc2.lora_latent_mapping.weight");
      ++trainable;
    }
  REQUIRE(trainable == 1);

  two_layer_u m2(11);
  auto loss2 = [&] { return sum(m2.forward(constant<double>(xt)) * constant<double>(C)); };
  const auto G = full_weight_gradients(m2, {"fc2"}, loss2);
  lora_config cfg;
  cfg.r = 1;
  inject_lora_one(m2, cfg, opt, loss2);
  auto* al = dynamic_cast<adapted_linear<double>*>(m2.find_module("fc2").get());
  REQUIRE(al);
  // One normalised descent step: ΔW ∝ −G_1 with a positive factor.
  const matrix<double> dW =
      al->get_adapter().delta_weight(as_matrix(al->base_layer->weight.value()));
  REQUIRE(dW.cwiseProduct(G.at("fc2")).sum() < 0);
  REQUIRE_THROWS_WITH(inject_lora_one(m2, cfg, opt, loss2), Contains("no target modules matched"));
}

TEST_CASE("Collectors and injection in float", "[init][collect]") {
  struct model_f : nn::module<float> {
    std::shared_ptr<nn::unary_module<float>> fc1, fc2;
    model_f() {
      rng g(13);
      fc1 = std::make_shared<nn::linear<float>>(5, 4, true, g);
      fc2 = std::make_shared<nn::linear<float>>(4, 3, true, g);
      register_module("fc1", fc1);
      register_module("fc2", fc2);
    }
    variable<float> forward(const variable<float>& x) { return fc2->forward(fc1->forward(x)); }
  };
  rng g(14);
  const tensor<float> xt = randn<float>({8, 5}, g), C = randn<float>({8, 3}, g);
  inject_options opt;
  opt.targets = target_modules::all_linear_layers();
  lora_config cfg;
  cfg.r = 1;

  model_f a;
  auto loss_a = [&] { return sum(a.forward(constant<float>(xt)) * constant<float>(C)); };
  const auto y0 = a.forward(constant<float>(xt));
  REQUIRE(inject_lora_ga(a, cfg, opt, loss_a).wrapped.size() == 2);
  const auto ya = a.forward(constant<float>(xt));
  REQUIRE((as_matrix(ya.value()) - as_matrix(y0.value())).cwiseAbs().maxCoeff() < 1e-5f);

  model_f b;
  const auto res = inject_eva(b, cfg, opt, [&] { b.forward(constant<float>(xt)); });
  REQUIRE(res.rank_pattern.at("fc1") + res.rank_pattern.at("fc2") == 2);
  const auto yb = b.forward(constant<float>(xt));
  REQUIRE((as_matrix(yb.value()) - as_matrix(y0.value())).cwiseAbs().maxCoeff() == 0.0f);
}
