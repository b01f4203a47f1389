#include <catch2/catch.hpp>

#include <algorithm>

#include "peft/adapters/inject.hpp"
#include "peft/autograd/ops/add.hpp"

using namespace peft;

namespace {
// encoder.{q_proj, k_proj, fc}, head (a linear called lm_head), and a norm-like module "scale".
struct block : nn::unary_module<double> {
  explicit block(rng& g) {
    q_proj = std::make_shared<nn::linear<double>>(4, 4, true, g);
    k_proj = std::make_shared<nn::linear<double>>(4, 4, true, g);
    fc = std::make_shared<nn::linear<double>>(4, 4, false, g);
    register_module("q_proj", q_proj);
    register_module("k_proj", k_proj);
    register_module("fc", fc);
  }
  variable<double> forward(const variable<double>& x) override {
    return fc->forward(q_proj->forward(x) + k_proj->forward(x));
  }
  std::shared_ptr<nn::unary_module<double>> q_proj, k_proj, fc;
};
struct toy : nn::unary_module<double> {
  toy() {
    rng g(1);
    encoder = std::make_shared<block>(g);
    lm_head = std::make_shared<nn::linear<double>>(4, 3, false, g);
    register_module("encoder", encoder);
    register_module("lm_head", lm_head);
  }
  variable<double> forward(const variable<double>& x) override {
    return lm_head->forward(encoder->forward(x));
  }
  std::shared_ptr<block> encoder;
  std::shared_ptr<nn::unary_module<double>> lm_head;
};

std::vector<std::string> wrapped(toy& m) {
  std::vector<std::string> out;
  for (auto& [p, a] : adapted_layers<double>(m)) out.push_back(p);
  return out;
}
}  // namespace

TEST_CASE("target_modules list matches exact paths and '.'-suffixes", "[adapters][inject]") {
  toy m;
  lora_config cfg;
  cfg.r = 2;
  auto rep = inject_lora<double>(m, cfg, {target_modules::list({"q_proj", "encoder.fc"})});
  REQUIRE(rep.wrapped == std::vector<std::string>{"encoder.q_proj", "encoder.fc"});
  REQUIRE(wrapped(m) == rep.wrapped);
  // "proj" is not a '.'-suffix of "encoder.q_proj"
  toy m2;
  REQUIRE_THROWS_WITH(inject_lora<double>(m2, cfg, {target_modules::list({"proj"})}),
                      Catch::Contains("not found") && Catch::Contains("proj"));
}

TEST_CASE("regex targets use a full match; all-linear skips lm_head", "[adapters][inject]") {
  lora_config cfg;
  toy m;
  inject_lora<double>(m, cfg, {target_modules::pattern(".*_proj")});
  REQUIRE(wrapped(m) == std::vector<std::string>{"encoder.q_proj", "encoder.k_proj"});
  toy m2;
  inject_lora<double>(m2, cfg, {target_modules::all_linear_layers()});
  REQUIRE(wrapped(m2) ==
          std::vector<std::string>{"encoder.q_proj", "encoder.k_proj", "encoder.fc"});
  toy m3;
  REQUIRE_THROWS_WITH(inject_lora<double>(m3, cfg, {target_modules::pattern("(")}),
                      Catch::Contains("invalid"));
}

TEST_CASE("parameter names follow PEFT and only adapters train", "[adapters][inject]") {
  toy m;
  lora_config cfg;
  cfg.r = 2;
  inject_lora<double>(m, cfg, {target_modules::list({"q_proj"})});
  std::vector<std::string> trainable, names;
  for (auto& [n, v] : m.named_parameters()) {
    names.push_back(n);
    if (v.requires_grad()) trainable.push_back(n);
  }
  REQUIRE(trainable ==
          std::vector<std::string>{"encoder.q_proj.lora_A.weight", "encoder.q_proj.lora_B.weight"});
  REQUIRE(std::find(names.begin(), names.end(), "encoder.q_proj.base_layer.weight") != names.end());
  REQUIRE(std::find(names.begin(), names.end(), "encoder.q_proj.base_layer.bias") != names.end());
}

TEST_CASE("rank_pattern and alpha_pattern override per module", "[adapters][inject]") {
  toy m;
  lora_config cfg;
  cfg.r = 2;
  cfg.alpha = 4;
  inject_options opt{target_modules::all_linear_layers()};
  opt.rank_pattern = {{"k_proj", 3}};
  opt.alpha_pattern = {{"encoder\\.fc", 1.0}};
  inject_lora<double>(m, cfg, opt);
  for (auto& [p, a] : adapted_layers<double>(m)) {
    auto& l = static_cast<lora<double>&>(a->get_adapter());
    INFO(p);
    if (p == "encoder.k_proj") {
      REQUIRE(l.rank() == 3);
      REQUIRE(l.scaling() == 4.0 / 3.0);
    } else if (p == "encoder.fc") {
      REQUIRE(l.rank() == 2);
      REQUIRE(l.scaling() == 0.5);
    } else {
      REQUIRE(l.rank() == 2);
      REQUIRE(l.scaling() == 2.0);
    }
  }
}

TEST_CASE("modules_to_save stay trainable; summary line like PEFT", "[adapters][inject]") {
  toy m;
  lora_config cfg;
  cfg.r = 1;
  inject_options opt{target_modules::list({"q_proj"})};
  opt.modules_to_save = {"lm_head"};
  auto rep = inject_lora<double>(m, cfg, opt);
  REQUIRE(rep.saved_modules == std::vector<std::string>{"lm_head"});
  // q_proj LoRA: A [1,4] + B [4,1] = 8; lm_head 12. Total: 3 linears 4x4 (+2 biases of 4) = 56,
  // lm_head 12, adapters 8 -> 76.
  const auto c = count_parameters<double>(m);
  REQUIRE(c.trainable == 20);
  REQUIRE(c.total == 76);
  REQUIRE(trainable_parameters_summary<double>(m) ==
          "trainable params: 20 || all params: 76 || trainable%: 26.3158");
  toy m2;
  opt.modules_to_save = {"missing"};
  REQUIRE_THROWS_WITH(inject_lora<double>(m2, cfg, opt), Catch::Contains("missing"));
}

TEST_CASE("injected model uses the adapters; merge_adapters folds them in", "[adapters][inject]") {
  toy m;
  rng g(5);
  auto x = constant<double>(randn<double>({2, 4}, g));
  const auto y0 = m.forward(x).value();
  lora_config cfg;
  cfg.r = 2;
  inject_lora<double>(m, cfg, {target_modules::all_linear_layers()});
  REQUIRE((as_vector(m.forward(x).value()) - as_vector(y0)).cwiseAbs().maxCoeff() == 0.0);
  for (auto& [n, v] : m.named_parameters())
    if (v.requires_grad())
      for (auto& e : v.value()) e += g.normal(0, 0.5);
  const auto y1 = m.forward(x).value();
  REQUIRE((as_vector(y1) - as_vector(y0)).cwiseAbs().maxCoeff() > 1e-3);
  merge_adapters<double>(m);
  REQUIRE((as_vector(m.forward(x).value()) - as_vector(y1)).cwiseAbs().maxCoeff() < 1e-12);
  unmerge_adapters<double>(m);
  set_adapters_enabled<double>(m, false);
  REQUIRE((as_vector(m.forward(x).value()) - as_vector(y0)).cwiseAbs().maxCoeff() < 1e-12);
}
