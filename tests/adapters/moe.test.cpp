#include <catch2/catch.hpp>

#include "peft/adapters/adapted_linear.hpp"
#include "peft/adapters/lora.hpp"
#include "peft/adapters/moe.hpp"
#include "peft/autograd/grad_check.hpp"

using namespace peft;

namespace {
std::shared_ptr<moe<double>> make_moe(std::size_t in, std::size_t out, moe_config cfg,
                                      bool random = true) {
  std::vector<std::shared_ptr<adapter<double>>> experts;
  for (std::size_t e = 0; e < cfg.num_experts; ++e) {
    lora_config lc;
    lc.r = 2;
    lc.alpha = 4;
    lc.seed = 100 + e;
    if (random)
      experts.push_back(std::make_shared<lora<double>>(in, out, lc, init::random_both{0.4}));
    else
      experts.push_back(std::make_shared<lora<double>>(in, out, lc));
  }
  return std::make_shared<moe<double>>(in, out, cfg, experts);
}
std::shared_ptr<adapted_linear<double>> wrap(std::shared_ptr<moe<double>> m, std::size_t in,
                                             std::size_t out) {
  rng g(3);
  auto base = std::make_shared<nn::linear<double>>(in, out, true, g);
  base->freeze();
  return std::make_shared<adapted_linear<double>>(base, m);
}
}  // namespace

TEST_CASE("MoE-LoRA forward: h = W0 x + Σ_{e∈TopK} g_e(x) s B_e A_e x", "[adapters][moe]") {
  // g = softmax(R x) restricted to the top-k experts, renormalised (or not) over them.
  for (bool norm : {true, false}) {
    moe_config cfg;
    cfg.num_experts = 4;
    cfg.top_k = 2;
    cfg.normalize_top_k = norm;
    auto m = make_moe(5, 3, cfg);
    auto layer = wrap(m, 5, 3);
    rng g(7);
    auto x = constant<double>(randn<double>({6, 5}, g));
    auto y = layer->forward(x);
    const matrix<double> W = as_matrix(layer->base_layer->weight.value());
    const auto xm = as_matrix(x.value());
    const matrix<double> R = as_matrix(m->router.value());
    for (Eigen::Index i = 0; i < 6; ++i) {
      vector<double> logits = R * xm.row(i).transpose();
      vector<double> p = (logits.array() - logits.maxCoeff()).exp();
      p /= p.sum();
      std::vector<int> idx{0, 1, 2, 3};
      std::sort(idx.begin(), idx.end(), [&](int a, int b) { return p[a] > p[b]; });
      const double s = norm ? p[idx[0]] + p[idx[1]] : 1.0;
      vector<double> ref = W * xm.row(i).transpose() + as_vector(layer->base_layer->bias.value());
      for (int j = 0; j < 2; ++j) {
        auto& ex = static_cast<lora<double>&>(m->expert(std::size_t(idx[j])));
        ref += p[idx[j]] / s * ex.delta_weight(W) * xm.row(i).transpose();
      }
      REQUIRE((as_matrix(y.value()).row(i).transpose() - ref).cwiseAbs().maxCoeff() < 1e-12);
    }
  }
}

TEST_CASE("MoE-LoRA is the identity at init and only its parameters train", "[adapters][moe]") {
  moe_config cfg;
  auto layer = wrap(make_moe(4, 4, cfg, /*random=*/false), 4, 4);
  rng g(1);
  auto x = constant<double>(randn<double>({5, 4}, g));
  auto y = layer->forward(x);
  REQUIRE((as_vector(y.value()) - as_vector(layer->base_layer->forward(x).value())).cwiseAbs().maxCoeff() == 0);
  std::vector<std::string> names;
  for (auto& [n, v] : layer->named_parameters()) names.push_back(n);
  REQUIRE(std::find(names.begin(), names.end(), "experts.3.lora_B.weight") != names.end());
  REQUIRE(std::find(names.begin(), names.end(), "router.weight") != names.end());
}

TEST_CASE("MoE-LoRA gradcheck through routing, gates and experts", "[adapters][moe][gradcheck]") {
  for (bool norm : {true, false}) {
    moe_config cfg;
    cfg.num_experts = 3;
    cfg.top_k = 2;
    cfg.normalize_top_k = norm;
    auto m = make_moe(4, 3, cfg);
    auto layer = wrap(m, 4, 3);
    rng g(5);
    auto x = parameter<double>(randn<double>({5, 4}, g));
    std::vector<variable<double>> in{x};
    for (auto& [n, v] : layer->named_parameters())
      if (v.requires_grad()) in.push_back(v);
    auto r = grad_check([&](auto&) { return layer->forward(x); }, in);
    INFO(r.report);
    REQUIRE(r.ok);
  }
}

TEST_CASE("Switch load-balancing loss: L = E Σ f_e P_e, gradient through P", "[adapters][moe]") {
  moe_config cfg;
  cfg.num_experts = 3;
  cfg.top_k = 1;
  auto m = make_moe(4, 3, cfg);
  auto layer = wrap(m, 4, 3);
  rng g(9);
  auto x = parameter<double>(randn<double>({8, 4}, g));
  layer->forward(x);
  const auto aux = layer->last_aux_loss();
  REQUIRE(aux.defined());
  // Reference: f_e = share of tokens whose argmax is e; P_e = mean router probability.
  const matrix<double> logits = as_matrix(x.value()) * as_matrix(m->router.value()).transpose();
  vector<double> f = vector<double>::Zero(3), P = vector<double>::Zero(3);
  for (Eigen::Index i = 0; i < 8; ++i) {
    vector<double> p = (logits.row(i).array() - logits.row(i).maxCoeff()).exp();
    p /= p.sum();
    Eigen::Index am;
    p.maxCoeff(&am);
    f[am] += 1.0 / 8;
    P += p / 8;
  }
  REQUIRE(aux.item() == Approx(3 * f.dot(P)).epsilon(1e-12));
  auto r = grad_check(
      [&](auto&) {
        layer->forward(x);
        return layer->last_aux_loss();
      },
      {x, m->router});
  INFO(r.report);
  REQUIRE(r.ok);
}

TEST_CASE("router noise is seeded and off in eval; MoE cannot merge; bad config",
          "[adapters][moe]") {
  moe_config cfg;
  cfg.noise_std = 1.0;
  cfg.seed = 4;
  auto l1 = wrap(make_moe(4, 4, cfg), 4, 4);
  auto l2 = wrap(make_moe(4, 4, cfg), 4, 4);
  rng g(2);
  auto x = constant<double>(randn<double>({16, 4}, g));
  REQUIRE(as_matrix(l1->forward(x).value()) == as_matrix(l2->forward(x).value()));
  l1->eval();
  auto e1 = l1->forward(x).value();
  REQUIRE(as_matrix(l1->forward(x).value()) == as_matrix(e1));
  REQUIRE_THROWS_WITH(l1->merge(), Catch::Contains("cannot be merged"));
  moe_config bad;
  bad.top_k = 5;
  REQUIRE_THROWS_WITH(make_moe(4, 4, bad), Catch::Contains("top_k"));
  bad.top_k = 1;
  std::vector<std::shared_ptr<adapter<double>>> wrong{std::make_shared<lora<double>>(3, 4, lora_config{})};
  bad.num_experts = 1;
  REQUIRE_THROWS_AS(moe<double>(4, 4, bad, wrong), shape_error);
}
