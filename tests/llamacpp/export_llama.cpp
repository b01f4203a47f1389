// Writes what compare.mjs checks against llama.cpp (through node-llama-cpp):
//   <dir>/base.gguf          a tiny byte-level nn::llama (vocab 256, dim 64, 2 layers, 4 query /
//                            2 kv heads, MLP 128), weights scaled so next-token distributions
//                            are far from uniform
//   <dir>/lora.gguf          LoRA r=4, alpha=8 on q,k,v,o,gate,up,down with random non-zero B
//   <dir>/lora_mixed.gguf    rsLoRA with rank_pattern / alpha_pattern (per-module scales folded)
//   <dir>/expected.json      our next-token probabilities at every position of a fixed token
//                            sequence for: base only, base + lora, base + lora_mixed
// Usage: export_llama <dir>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "peft/adapters/inject.hpp"
#include "peft/autograd/variable.hpp"
#include "peft/io/gguf_llama.hpp"
#include "peft/nn/transformer.hpp"

using namespace peft;

namespace {

nn::llama_config config() {
  nn::llama_config c;
  c.vocab = 256;
  c.dim = 64;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.hidden_dim = 128;
  c.max_seq = 256;
  c.norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  return c;
}

void scale(variable<float>& v, float s) { v.value() *= s; }

// Default init gives near-uniform distributions; scale the weights up so the comparison is
// sensitive (peaked softmax, non-uniform attention), and make the norm weights non-trivial.
std::shared_ptr<nn::llama<float>> make_base() {
  rng g(1234);
  auto m = std::make_shared<nn::llama<float>>(config(), g);
  for (auto& [name, v] : m->named_parameters()) {
    auto ends = [&](const std::string& s) {
      return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
    };
    if (ends("q_proj.weight") || ends("k_proj.weight")) scale(v, 3.0f);
    else if (ends("v_proj.weight") || ends("o_proj.weight")) scale(v, 2.0f);
    else if (ends("_proj.weight")) scale(v, 2.0f);
    else if (name == "lm_head.weight") scale(v, 5.0f);
    else if (ends("norm.weight")) fill_uniform(v.value(), 0.5, 1.5, g);
  }
  return m;
}

// Next-token probabilities [seq][vocab] (softmax in double of our float logits).
std::vector<std::vector<double>> probabilities(nn::llama<float>& m, const std::vector<std::int64_t>& ids) {
  no_grad_guard ng;
  m.eval();
  const auto logits = m.forward(ids, 1, ids.size()).value();
  const std::size_t V = logits.shape()[2];
  std::vector<std::vector<double>> out;
  for (std::size_t s = 0; s < ids.size(); ++s) {
    std::vector<double> p(V);
    double mx = -1e300, sum = 0;
    for (std::size_t v = 0; v < V; ++v) mx = std::max(mx, double(logits(0, s, v)));
    for (std::size_t v = 0; v < V; ++v) sum += p[v] = std::exp(double(logits(0, s, v)) - mx);
    for (auto& x : p) x /= sum;
    out.push_back(std::move(p));
  }
  return out;
}

void randomize_b(nn::llama<float>& m, std::uint64_t seed) {
  rng g(seed);
  for (auto& [path, al] : adapted_layers(m))
    for (auto& [name, v] : al->get_adapter().named_parameters())
      if (name == "lora_B.weight") fill_normal(v.value(), 0.0, 1.0, g);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <output dir>\n", argv[0]);
    return 2;
  }
  const std::filesystem::path dir = argv[1];
  std::filesystem::create_directories(dir);

  const std::string text = "Hello, llama.cpp! peft.cpp 0123";
  std::vector<std::int64_t> ids(text.begin(), text.end());

  nlohmann::json j;
  j["text"] = text;
  j["tokens"] = ids;
  j["cases"] = nlohmann::json::array();

  auto base = make_base();
  io::save_gguf_llama(*base, (dir / "base.gguf").string());
  j["cases"].push_back({{"name", "base"}, {"lora", nullptr}, {"probs", probabilities(*base, ids)}});

  const std::vector<std::string> targets{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  {
    auto m = make_base();
    lora_config cfg;
    cfg.r = 4;
    cfg.alpha = 8;
    cfg.seed = 5;
    inject_options opt;
    opt.targets = target_modules::list(targets);
    inject_lora(*m, cfg, opt);
    randomize_b(*m, 77);
    io::save_gguf_lora(*m, (dir / "lora.gguf").string());
    j["cases"].push_back({{"name", "lora"}, {"lora", "lora.gguf"}, {"probs", probabilities(*m, ids)}});
  }
  {
    auto m = make_base();
    lora_config cfg;
    cfg.r = 4;
    cfg.alpha = 6;
    cfg.use_rslora = true;
    cfg.seed = 9;
    inject_options opt;
    opt.targets = target_modules::list(targets);
    opt.rank_pattern = {{"down_proj", 2}, {"layers.1.self_attn.k_proj", 8}};
    opt.alpha_pattern = {{"v_proj", 3.0}, {"gate_proj", 12.0}};
    inject_lora(*m, cfg, opt);
    randomize_b(*m, 78);
    io::save_gguf_lora(*m, (dir / "lora_mixed.gguf").string());
    j["cases"].push_back({{"name", "rslora_patterns"}, {"lora", "lora_mixed.gguf"}, {"probs", probabilities(*m, ids)}});
  }

  std::ofstream((dir / "expected.json").string()) << j.dump();
  std::printf("wrote %s/{base,lora,lora_mixed}.gguf and expected.json (%zu tokens)\n", dir.string().c_str(), ids.size());
  return 0;
}
