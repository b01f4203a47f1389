#include <catch2/catch.hpp>

#include <cmath>
#include <string>

#include "peft/autograd/grad_check.hpp"
#include "peft/core/threads.hpp"
#include "peft/nn/loss.hpp"
#include "peft/nn/transformer.hpp"

using namespace peft;

// Every GEMM here is tiny: OpenMP threads only add overhead, and spin badly on a loaded machine.
static const bool single_threaded = (set_num_threads(1), true);
using Catch::Matchers::WithinAbs;

namespace {
nn::llama_config tiny_config(bool tie = false) {
  // vocab, dim, n_layers, n_heads, n_kv_heads, hidden_dim, max_seq, norm_eps, rope_theta, tie
  return nn::llama_config{11, 8, 2, 2, 1, 12, 16, 1e-6, 10000.0, tie};
}
const std::vector<std::int64_t> ids8{1, 5, 2, 9, 0, 10, 3, 3};  // [2, 4]

double max_abs_diff(const tensor<double>& a, const tensor<double>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a.data()[i] - b.data()[i]));
  return m;
}
}  // namespace

TEST_CASE("llama parameter names are the Hugging Face names", "[nn][transformer]") {
  rng g(1);
  nn::llama<float> m(tiny_config(), g);
  REQUIRE(m.type_name() == "llama");
  std::vector<std::string> expected{"embed_tokens.weight"};
  for (int l = 0; l < 2; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    for (auto s : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                   "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm",
                   "post_attention_layernorm"})
      expected.push_back(p + s + ".weight");
  }
  expected.push_back("norm.weight");
  expected.push_back("lm_head.weight");
  std::vector<std::string> names;
  for (auto& [n, v] : m.named_parameters()) names.push_back(n);
  REQUIRE(names == expected);

  auto sd = m.get_state_dict();
  REQUIRE(shape_of(sd.at("embed_tokens.weight")) == shape_t{11, 8});
  REQUIRE(shape_of(sd.at("layers.1.self_attn.k_proj.weight")) == shape_t{4, 8});  // 1 kv head
  REQUIRE(shape_of(sd.at("layers.0.mlp.gate_proj.weight")) == shape_t{12, 8});
  REQUIRE(shape_of(sd.at("layers.0.mlp.down_proj.weight")) == shape_t{8, 12});
  REQUIRE(shape_of(sd.at("lm_head.weight")) == shape_t{11, 8});
  REQUIRE(m.num_parameters() == 11 * 8 + 2 * (8 * 8 + 4 * 8 * 2 + 8 * 8 + 3 * 12 * 8 + 16) + 8 + 88);

  // Module paths too.
  std::vector<std::string> paths;
  for (auto& [p, mod] : m.named_modules()) paths.push_back(p);
  REQUIRE(paths[1] == "embed_tokens");
  REQUIRE(paths[2] == "layers");
  REQUIRE(paths[3] == "layers.0");
  REQUIRE(paths[4] == "layers.0.self_attn");
  REQUIRE(m.find_module("layers.1.mlp.up_proj")->type_name() == "linear");
  REQUIRE(m.block(1).self_attn == m.find_module("layers.1.self_attn"));
}

TEST_CASE("llama forward shapes and tied embeddings", "[nn][transformer]") {
  rng g(2);
  nn::llama<double> m(tiny_config(true), g);
  REQUIRE_FALSE(m.lm_head);
  for (auto& [n, v] : m.named_parameters()) REQUIRE(n != "lm_head.weight");
  auto logits = m(ids8, 2, 4);
  REQUIRE(logits.shape() == shape_t{2, 4, 11});
  // logits = h · Eᵀ
  auto h = m.hidden_states(ids8, 2, 4).value();
  const auto& E = m.embed_tokens->weight.value();
  double acc = 0;
  for (std::size_t d = 0; d < 8; ++d) acc += h(1, 2, d) * E(7, d);
  REQUIRE_THAT(logits.value()(1, 2, 7), WithinAbs(acc, 1e-12));
}

TEST_CASE("llama is causal: earlier logits ignore later tokens", "[nn][transformer]") {
  rng g(3);
  nn::llama<double> m(tiny_config(), g);
  auto a = m(ids8, 2, 4).value();
  auto ids2 = ids8;
  ids2[3] = 4;  // last token of row 0
  auto b = m(ids2, 2, 4).value();
  for (std::size_t t = 0; t < 3; ++t)
    for (std::size_t v = 0; v < 11; ++v) REQUIRE(a(0, t, v) == b(0, t, v));
  REQUIRE(std::abs(a(0, 3, 0) - b(0, 3, 0)) > 1e-9);
  for (std::size_t t = 0; t < 4; ++t) REQUIRE(a(1, t, 5) == b(1, t, 5));  // other row untouched
}

TEST_CASE("llama block and model gradcheck", "[nn][transformer][gradcheck]") {
  rng g(4);
  auto cfg = tiny_config();
  {
    nn::llama_block<double> blk(cfg, g);
    REQUIRE(blk.type_name() == "llama_block");
    // Non-trivial norm weights so their gradients are exercised.
    for (auto& [n, v] : blk.named_parameters())
      if (n.find("layernorm") != std::string::npos) v.value() = randn<double>({8}, g, 1.0, 0.3);
    auto x = parameter<double>(randn<double>({2, 4, 8}, g));
    std::vector<variable<double>> in{x};
    for (auto& p : blk.parameters()) in.push_back(p);
    auto r = grad_check([&](auto& v) { return blk(v[0]); }, in);
    INFO(r.report);
    REQUIRE(r.ok);
  }
  for (bool tie : {false, true}) {
    nn::llama<double> m(tiny_config(tie), g);
    auto r = grad_check([&](auto&) { return m(ids8, 2, 4); }, m.parameters());
    INFO("tie " << tie << "\n" << r.report);
    REQUIRE(r.ok);
  }
}

TEST_CASE("replace_module on layers.0.self_attn.q_proj changes the forward", "[nn][transformer]") {
  rng g(5);
  nn::llama<double> m(tiny_config(), g);
  auto y0 = m(ids8, 2, 4).value();
  auto old = m.find_module("layers.0.self_attn.q_proj");
  auto zq = std::make_shared<nn::linear<double>>(parameter<double>(zeros<double>({8, 8})));
  m.replace_module("layers.0.self_attn.q_proj", zq);
  REQUIRE(m.find_module("layers.0.self_attn.q_proj") == zq);
  REQUIRE(m.block(0).self_attn != nullptr);
  auto y1 = m(ids8, 2, 4).value();
  REQUIRE(max_abs_diff(y0, y1) > 1e-6);
  // The parameter list follows the replacement.
  bool found = false;
  for (auto& [n, v] : m.named_parameters())
    if (n == "layers.0.self_attn.q_proj.weight") found = v.get() == zq->weight.get();
  REQUIRE(found);
  m.replace_module("layers.0.self_attn.q_proj", old);
  REQUIRE(max_abs_diff(y0, m(ids8, 2, 4).value()) == 0.0);
  // Every linear is reachable by path.
  m.replace_module("layers.1.mlp.down_proj",
                   std::make_shared<nn::linear<double>>(parameter<double>(zeros<double>({8, 12}))));
  REQUIRE(max_abs_diff(y0, m(ids8, 2, 4).value()) > 1e-6);
  // Type mismatch and bad paths throw naming them.
  REQUIRE_THROWS_WITH(m.replace_module("embed_tokens", zq), Catch::Contains("embed_tokens"));
  REQUIRE_THROWS_WITH(m.replace_module("layers.7.mlp", zq), Catch::Contains("layers.7"));
}

TEST_CASE("freeze / unfreeze and gradients reach only trainable parameters", "[nn][transformer]") {
  rng g(6);
  nn::llama<double> m(tiny_config(), g);
  m.freeze();
  REQUIRE(m.trainable_parameters().empty());
  m.find_module("layers.0.self_attn.q_proj")->unfreeze();
  m.find_module("layers.1.mlp")->unfreeze();
  REQUIRE(m.trainable_parameters().size() == 4);
  REQUIRE(m.num_parameters(true) == 8 * 8 + 3 * 12 * 8);
  auto loss = nn::cross_entropy(m(ids8, 2, 4), {5, 2, 9, 0, 10, 3, 3, 1});
  loss.backward();
  for (auto& [n, v] : m.named_parameters()) {
    INFO(n);
    const bool trainable = n.rfind("layers.0.self_attn.q_proj", 0) == 0 ||
                           n.rfind("layers.1.mlp.", 0) == 0;
    REQUIRE(v.has_grad() == trainable);
  }
  m.unfreeze();
  REQUIRE(m.trainable_parameters().size() == m.parameters().size());
}

TEST_CASE("state dict round-trips between models", "[nn][transformer]") {
  rng g1(7), g2(8);
  nn::llama<double> a(tiny_config(), g1), b(tiny_config(), g2);
  auto ya = a(ids8, 2, 4).value();
  REQUIRE(max_abs_diff(ya, b(ids8, 2, 4).value()) > 1e-6);
  auto handle = b.find_module("norm")->parameters()[0];
  b.load_state_dict(a.get_state_dict());
  REQUIRE(max_abs_diff(ya, b(ids8, 2, 4).value()) == 0.0);
  REQUIRE(handle.get() == b.find_module("norm")->parameters()[0].get());  // nodes kept

  auto sd = a.get_state_dict();
  sd.erase("layers.1.input_layernorm.weight");
  REQUIRE_THROWS_WITH(b.load_state_dict(sd), Catch::Contains("layers.1.input_layernorm.weight"));
  b.load_state_dict(sd, false);  // non-strict: missing keys are skipped
  auto sd2 = a.get_state_dict();
  sd2["layers.0.self_attn.k_proj.weight"] = zeros<double>({8, 8});
  REQUIRE_THROWS_WITH(b.load_state_dict(sd2),
                      Catch::Contains("k_proj") && Catch::Contains("[8,8]") && Catch::Contains("[4,8]"));
}

TEST_CASE("llama rejects bad inputs naming shapes", "[nn][transformer]") {
  rng g(9);
  nn::llama<float> m(tiny_config(), g);
  REQUIRE_THROWS_AS(m(ids8, 3, 4), shape_error);
  REQUIRE_THROWS_WITH(m(ids8, 3, 4), Catch::Contains("8 ids") && Catch::Contains("[3,4]"));
  REQUIRE_THROWS_AS(m({1, 11}, 1, 2), value_error);  // id == vocab
  std::vector<std::int64_t> longer(17, 1);
  REQUIRE_THROWS_WITH(m(longer, 1, 17), Catch::Contains("max_seq"));
  REQUIRE_THROWS_AS(m.block(2), value_error);
  auto bad = tiny_config();
  bad.n_kv_heads = 3;
  REQUIRE_THROWS_AS(nn::llama<float>(bad, g), value_error);
  bad.n_kv_heads = 1;
  bad.vocab = 0;
  REQUIRE_THROWS_AS(nn::llama<float>(bad, g), value_error);
}

TEST_CASE("a 2-layer llama overfits a 32-byte sequence", "[nn][transformer][train]") {
  const std::string text = "peft.cpp: tiny llama, big dreams";  // 32 bytes
  REQUIRE(text.size() == 32);
  std::vector<std::int64_t> in, target;
  for (std::size_t i = 0; i < text.size(); ++i) {
    in.push_back(std::uint8_t(text[i]));
    target.push_back(i + 1 < text.size() ? std::uint8_t(text[i + 1]) : -100);  // last: ignored
  }
  rng g(10);
  // vocab, dim, n_layers, n_heads, n_kv_heads, hidden_dim, max_seq
  nn::llama<float> m(nn::llama_config{256, 32, 2, 4, 2, 64, 64}, g);
  auto params = m.trainable_parameters();
  // Adam written out (the optimizers are tested elsewhere).
  std::vector<tensor<float>> M, V;
  for (auto& p : params) M.push_back(zeros<float>(p.shape())), V.push_back(zeros<float>(p.shape()));
  const float lr = 1e-2f, b1 = 0.9f, b2 = 0.999f;
  float first = 0, loss_v = 0;
  int step = 0;
  for (; step < 400; ++step) {
    auto loss = nn::cross_entropy(m(in, 1, 32), target);
    loss_v = loss.item();
    if (step == 0) first = loss_v;
    if (loss_v < 0.02f) break;
    loss.backward();
    const float c1 = 1 - std::pow(b1, float(step + 1)), c2 = 1 - std::pow(b2, float(step + 1));
    for (std::size_t i = 0; i < params.size(); ++i) {
      auto gr = as_vector(params[i].grad()).array();
      auto m1 = as_vector(M[i]).array();
      auto m2 = as_vector(V[i]).array();
      m1 = b1 * m1 + (1 - b1) * gr;
      m2 = b2 * m2 + (1 - b2) * gr.square();
      as_vector(params[i].value()).array() -= lr * (m1 / c1) / ((m2 / c2).sqrt() + 1e-8f);
      params[i].zero_grad();
    }
  }
  INFO("loss " << first << " -> " << loss_v << " after " << step << " steps");
  REQUIRE(first > 4.0f);  // ~ log(256) at init
  REQUIRE(loss_v < 0.05f);
  // Greedy next-byte predictions reproduce the text.
  no_grad_guard ng;
  auto logits = m(in, 1, 32).value();
  std::size_t right = 0;
  for (std::size_t t = 0; t + 1 < 32; ++t) {
    std::size_t best = 0;
    for (std::size_t v = 1; v < 256; ++v)
      if (logits(0, t, v) > logits(0, t, best)) best = v;
    right += std::int64_t(best) == target[t];
  }
  REQUIRE(right == 31);
}
