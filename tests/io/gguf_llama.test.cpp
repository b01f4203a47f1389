#include <catch2/catch.hpp>

#include <cmath>
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <unistd.h>

#include "peft/adapters/dora.hpp"
#include "peft/adapters/inject.hpp"
#include "peft/core/random.hpp"
#include "peft/io/gguf_llama.hpp"
#include "peft/nn/transformer.hpp"

using namespace peft;
using io::ggml_type;
using io::gguf_file;
using io::gguf_value_type;

namespace {

nn::llama_config small_config(bool tied = false) {
  nn::llama_config c;
  c.vocab = 256;
  c.dim = 16;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.hidden_dim = 24;
  c.max_seq = 64;
  c.norm_eps = 1e-5;
  c.rope_theta = 500.0;
  c.tie_embeddings = tied;
  return c;
}

template <class T>
std::shared_ptr<nn::llama<T>> small_model(bool tied = false, std::uint64_t seed = 1) {
  rng g(seed);
  auto m = std::make_shared<nn::llama<T>>(small_config(tied), g);
  for (auto& [name, v] : m->named_parameters())
    if (name.find("norm") != std::string::npos) fill_uniform(v.value(), 0.5, 1.5, g);
  return m;
}

template <class T>
tensor<T> logits(nn::llama<T>& m, const std::vector<std::int64_t>& ids) {
  no_grad_guard ng;
  return m.forward(ids, 1, ids.size()).value();
}

template <class T>
bool same(const tensor<T>& a, const tensor<T>& b) {
  return a.shape() == b.shape() && std::equal(a.data(), a.data() + a.size(), b.data());
}

const std::vector<std::int64_t> ids{72, 101, 108, 108, 111, 44, 32, 10, 0, 255};

template <class T>
double max_abs_diff(const tensor<T>& a, const tensor<T>& b) {
  REQUIRE(a.shape() == b.shape());
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(double(a.data()[i]) - double(b.data()[i])));
  return m;
}

gguf_file reparse(const gguf_file& f) {
  const auto bytes = f.serialize();
  return gguf_file::parse(bytes.data(), bytes.size(), "rt.gguf");
}

template <class T>
void randomize_lora_b(nn::llama<T>& m, std::uint64_t seed) {
  rng g(seed);
  for (auto& [path, al] : adapted_layers(m))
    for (auto& [name, v] : al->get_adapter().named_parameters())
      if (name == "lora_B.weight") fill_normal(v.value(), 0.0, 0.5, g);
}

const std::vector<std::string> all_targets{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

std::string io_message(const std::function<void()>& f) {
  try {
    f();
  } catch (const io_error& e) {
    return e.what();
  }
  return "<no io_error>";
}

}  // namespace

TEST_CASE("Hugging Face and GGUF llama names map both ways", "[io][gguf_llama]") {
  const std::vector<std::pair<std::string, std::string>> names{
      {"embed_tokens.weight", "token_embd.weight"},
      {"norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"},
      {"layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight"},
      {"layers.1.self_attn.k_proj.weight", "blk.1.attn_k.weight"},
      {"layers.12.self_attn.v_proj.weight", "blk.12.attn_v.weight"},
      {"layers.3.self_attn.o_proj.weight", "blk.3.attn_output.weight"},
      {"layers.3.mlp.gate_proj.weight", "blk.3.ffn_gate.weight"},
      {"layers.3.mlp.up_proj.weight", "blk.3.ffn_up.weight"},
      {"layers.3.mlp.down_proj.weight", "blk.3.ffn_down.weight"},
      {"layers.3.input_layernorm.weight", "blk.3.attn_norm.weight"},
      {"layers.3.post_attention_layernorm.weight", "blk.3.ffn_norm.weight"},
      {"layers.7.self_attn.q_proj", "blk.7.attn_q"}};
  for (auto& [hf, g] : names) {
    INFO(hf);
    CHECK(io::gguf_llama_name(hf) == g);
    CHECK(io::hf_llama_name(g) == hf);
  }
  for (const char* bad : {"layers.x.self_attn.q_proj", "layers.01.mlp.up_proj", "layers.1.attn.q_proj",
                          "model.norm.weight", "layers..mlp.up_proj", "blk.0.attn_qkv.weight", ""}) {
    INFO(bad);
    CHECK_FALSE(io::gguf_llama_name(bad));
    CHECK_FALSE(io::hf_llama_name(bad));
  }
}

TEST_CASE("the q/k row permutation is convert_hf_to_gguf's reshape-swapaxes", "[io][gguf_llama]") {
  // 2 heads of size 4: reshape(2, 2, 2, cols).swapaxes(1, 2) puts rows in the order
  // 0 2 1 3 | 4 6 5 7.
  tensor<double> w = tensor<double>::from_shape({8, 3});
  for (std::size_t r = 0; r < 8; ++r)
    for (std::size_t c = 0; c < 3; ++c) w(r, c) = double(10 * r + c);
  const auto p = io::permute_rope_rows(w, 2, true);
  const std::size_t order[8] = {0, 2, 1, 3, 4, 6, 5, 7};
  for (std::size_t r = 0; r < 8; ++r)
    for (std::size_t c = 0; c < 3; ++c) CHECK(p(r, c) == w(order[r], c));
  CHECK(same(io::permute_rope_rows(p, 2, false), w));
  CHECK_THROWS_AS(io::permute_rope_rows(w, 3, true), shape_error);
  CHECK_THROWS_AS(io::permute_rope_rows(w, 8, true), shape_error);  // head size 1 is odd
}

TEST_CASE("permuted rows turn rotate-half RoPE into GGUF's interleaved RoPE", "[io][gguf_llama]") {
  // Why the permutation is right: rope_halves(x) permuted == rope_pairs(x permuted), for every
  // position. Rows are the head dims, so x is passed transposed through the row permutation.
  const std::size_t d = 8, P = 6;
  const double theta = 10000.0;
  rng g(5);
  tensor<double> x = randn<double>({P, d}, g);
  const auto table = nn::functional::make_rope_table<double>(d, P, theta);
  const auto y = nn::functional::rope(constant(x), table).value();  // [P, d], rotate-half
  auto to_gguf = [&](const tensor<double>& a) {                       // permute the d axis
    tensor<double> t = tensor<double>::from_shape({d, P});
    for (std::size_t i = 0; i < d; ++i)
      for (std::size_t p = 0; p < P; ++p) t(i, p) = a(p, i);
    return io::permute_rope_rows(t, 1, true);
  };
  const auto xg = to_gguf(x), yg = to_gguf(y);
  for (std::size_t p = 0; p < P; ++p)
    for (std::size_t j = 0; j < d / 2; ++j) {
      const double a = double(p) * std::pow(theta, -2.0 * double(j) / double(d));
      const double e0 = xg(2 * j, p) * std::cos(a) - xg(2 * j + 1, p) * std::sin(a);
      const double e1 = xg(2 * j, p) * std::sin(a) + xg(2 * j + 1, p) * std::cos(a);
      CHECK_THAT(yg(2 * j, p), Catch::Matchers::WithinAbs(e0, 1e-12));
      CHECK_THAT(yg(2 * j + 1, p), Catch::Matchers::WithinAbs(e1, 1e-12));
    }
}

TEST_CASE("a llama exports with llama.cpp's metadata keys and exact types", "[io][gguf_llama]") {
  auto m = small_model<float>();
  const gguf_file f = reparse(io::llama_to_gguf(*m));
  CHECK(f.get<std::string>("general.architecture") == "llama");
  CHECK(f.get<std::uint32_t>("llama.context_length") == 64);
  CHECK(f.get<std::uint32_t>("llama.embedding_length") == 16);
  CHECK(f.get<std::uint32_t>("llama.block_count") == 2);
  CHECK(f.get<std::uint32_t>("llama.feed_forward_length") == 24);
  CHECK(f.get<std::uint32_t>("llama.attention.head_count") == 4);
  CHECK(f.get<std::uint32_t>("llama.attention.head_count_kv") == 2);
  CHECK(f.get<std::uint32_t>("llama.rope.dimension_count") == 4);
  CHECK(f.get<std::uint32_t>("llama.vocab_size") == 256);
  CHECK(f.get<float>("llama.rope.freq_base") == 500.0f);
  CHECK(f.get<float>("llama.attention.layer_norm_rms_epsilon") == 1e-5f);
  CHECK(f.get<std::string>("tokenizer.ggml.model") == "gpt2");
  CHECK(f.get<bool>("tokenizer.ggml.add_bos_token") == false);
  CHECK(f.get<std::uint32_t>("tokenizer.ggml.eos_token_id") == 3);
  CHECK(f.at("tokenizer.ggml.merges").elem_type() == gguf_value_type::string);
  const auto& toks = f.at("tokenizer.ggml.tokens").get_array<std::string>();
  REQUIRE(toks.size() == 256);
  // GPT-2's byte alphabet: printable ASCII is itself, space is U+0120 'Ġ', '\n' U+010A 'Ċ', 0 U+0100.
  CHECK(toks['A'] == "A");
  CHECK(toks[' '] == "\xc4\xa0");
  CHECK(toks['\n'] == "\xc4\x8a");
  CHECK(toks[0] == "\xc4\x80");
  CHECK(toks[0xff] == "\xc3\xbf");
  CHECK(toks[0xad] == "\xc5\x83");  // soft hyphen: the 68th and last remapped byte, U+0143
  CHECK(std::set<std::string>(toks.begin(), toks.end()).size() == 256);
  CHECK(f.at("tokenizer.ggml.token_type").get_array<std::int32_t>() == std::vector<std::int32_t>(256, 1));

  CHECK(f.tensor_at("token_embd.weight").ne == std::vector<std::uint64_t>{16, 256});
  CHECK(f.tensor_at("blk.1.attn_q.weight").ne == std::vector<std::uint64_t>{16, 16});
  CHECK(f.tensor_at("blk.1.attn_k.weight").ne == std::vector<std::uint64_t>{16, 8});
  CHECK(f.tensor_at("blk.1.ffn_down.weight").ne == std::vector<std::uint64_t>{24, 16});
  CHECK(f.tensor_at("blk.0.ffn_norm.weight").ne == std::vector<std::uint64_t>{16});
  CHECK(f.has_tensor("output.weight"));
  CHECK(f.tensors().size() == 3 + 2 * 9);
  // v is stored as is, q and k permuted per head.
  CHECK(same(f.get_tensor<float>("blk.0.attn_v.weight"), m->block(0).self_attn->named_parameters()[2].second.value()));
  const auto& wk = dynamic_cast<nn::linear<float>&>(
                       *dynamic_cast<nn::causal_self_attention<float>&>(*m->block(0).self_attn).k_proj)
                       .weight.value();
  CHECK(same(f.get_tensor<float>("blk.0.attn_k.weight"), io::permute_rope_rows(wk, 2, true)));

  io::gguf_llama_options opt;
  opt.weight_type = ggml_type::F16;
  opt.add_bos_token = true;
  opt.context_length = 4096;
  const gguf_file h = io::llama_to_gguf(*m, opt);
  CHECK(h.tensor_at("blk.0.attn_q.weight").type == ggml_type::F16);
  CHECK(h.tensor_at("blk.0.attn_norm.weight").type == ggml_type::F32);
  CHECK(h.get<std::uint32_t>("general.file_type") == 1);
  CHECK(h.get<bool>("tokenizer.ggml.add_bos_token"));
  CHECK(h.get<std::uint32_t>("llama.context_length") == 4096);
  opt.weight_type = ggml_type::Q8_0;
  CHECK_THROWS_AS(io::llama_to_gguf(*m, opt), value_error);
  opt.weight_type = ggml_type::F32;
  opt.tokens = {"a", "b"};
  CHECK_THROWS_AS(io::llama_to_gguf(*m, opt), value_error);
}

TEST_CASE("llama -> GGUF -> llama reproduces every parameter and the logits", "[io][gguf_llama]") {
  for (bool tied : {false, true}) {
    INFO("tied " << tied);
    auto m = small_model<float>(tied);
    const gguf_file f = reparse(io::llama_to_gguf(*m));
    CHECK(f.has_tensor("output.weight") == !tied);
    const auto cfg = io::gguf_llama_config(f);
    CHECK(cfg.tie_embeddings == tied);
    CHECK(cfg.vocab == 256);
    CHECK(cfg.n_kv_heads == 2);
    CHECK(cfg.max_seq == 64);
    CHECK(cfg.rope_theta == 500.0);
    auto back = io::llama_from_gguf<float>(f);
    const auto a = m->get_state_dict(), b = back->get_state_dict();
    REQUIRE(a.size() == b.size());
    for (auto& [name, t] : a) {
      INFO(name);
      CHECK(same(b.at(name), t));  // F32 is exact, the permutation is undone exactly
    }
    CHECK(same(logits(*back, ids), logits(*m, ids)));
  }
  // double models export as F32 and read back within float rounding
  auto md = small_model<double>();
  auto bd = io::llama_from_gguf<double>(reparse(io::llama_to_gguf(*md)));
  CHECK(max_abs_diff(logits(*bd, ids), logits(*md, ids)) < 1e-4);
}

TEST_CASE("save_gguf_llama / load_gguf_llama go through a file", "[io][gguf_llama]") {
  const std::string path = (std::filesystem::temp_directory_path() / ("peft_gguf_llama_" + std::to_string(::getpid()) + ".gguf")).string();
  auto m = small_model<float>();
  io::save_gguf_llama(*m, path);
  auto back = io::load_gguf_llama<float>(path);
  CHECK(same(logits(*back, ids), logits(*m, ids)));
  std::filesystem::remove(path);
}

TEST_CASE("malformed llama files are refused with io_error", "[io][gguf_llama]") {
  auto m = small_model<float>();
  const gguf_file good = io::llama_to_gguf(*m);
  {
    gguf_file f = good;
    f.erase_tensor("blk.1.ffn_up.weight");
    CHECK_THAT(io_message([&] { io::llama_from_gguf<float>(f); }), Catch::Matchers::Contains("missing tensor 'blk.1.ffn_up.weight'"));
  }
  {
    gguf_file f = good;
    f.add_tensor("blk.0.attn_qkv.weight", tensor<float>(zeros<float>({2, 2})));
    CHECK_THAT(io_message([&] { io::llama_from_gguf<float>(f); }), Catch::Matchers::Contains("'blk.0.attn_qkv.weight' has no place"));
  }
  {
    gguf_file f = good;
    f.set("general.architecture", "gpt2");
    CHECK_THAT(io_message([&] { io::llama_from_gguf<float>(f); }), Catch::Matchers::Contains("is 'gpt2', expected 'llama'"));
  }
  {
    gguf_file f = good;
    f.set("llama.rope.dimension_count", std::uint32_t(2));
    CHECK_THAT(io_message([&] { io::gguf_llama_config(f); }), Catch::Matchers::Contains("partial rotary"));
  }
  {
    gguf_file f = good;
    f.set("llama.block_count", 2.0f);
    CHECK_THAT(io_message([&] { io::gguf_llama_config(f); }), Catch::Matchers::Contains("'llama.block_count' is FLOAT32"));
  }
  {
    gguf_file f = good;
    f.set("llama.attention.head_count_kv", std::uint32_t(3));
    CHECK_THAT(io_message([&] { io::gguf_llama_config(f); }), Catch::Matchers::Contains("head_count_kv 3"));
  }
  {
    gguf_file f = good;
    f.set("llama.embedding_length", std::uint64_t(32));  // any integer type is read; shapes must agree
    f.set("llama.attention.head_count", std::uint64_t(8));
    f.set("llama.attention.head_count_kv", std::uint64_t(4));
    CHECK_THAT(io_message([&] { io::llama_from_gguf<float>(f); }), Catch::Matchers::Contains("token_embd.weight has ne [16,256]"));
  }
  {
    gguf_file f = good;
    f.erase_tensor("blk.0.ffn_gate.weight");
    f.add_tensor("blk.0.ffn_gate.weight", tensor<float>(zeros<float>({16, 24})));
    CHECK_THAT(io_message([&] { io::llama_from_gguf<float>(f); }),
               Catch::Matchers::Contains("'blk.0.ffn_gate.weight' has shape [16,24], expected [24,16]"));
  }
  {
    gguf_file f = good;
    f.set("llama.block_count", std::uint32_t(4000000000u));  // refused before anything is allocated
    CHECK_THAT(io_message([&] { io::llama_from_gguf<float>(f); }), Catch::Matchers::Contains("but only 21 tensors"));
  }
  {
    gguf_file f = good;
    f.set("llama.context_length", std::uint32_t(4000000000u));  // only sizes RoPE tables: capped
    CHECK(io::gguf_llama_config(f).max_seq == 8192);
    CHECK(io::gguf_llama_config(f, 100).max_seq == 100);
    f.set("llama.attention.head_count", std::uint32_t(16));  // head size 1
    f.set("llama.attention.head_count_kv", std::uint32_t(16));
    CHECK_THAT(io_message([&] { io::gguf_llama_config(f); }), Catch::Matchers::Contains("heads of even size"));
  }
  {
    gguf_file f = good;
    f.set("llama.rope.freq_base", -1.0f);
    CHECK_THAT(io_message([&] { io::gguf_llama_config(f); }), Catch::Matchers::Contains("freq_base"));
  }
  {
    gguf_file f = good;
    f.erase("llama.embedding_length");
    CHECK_THAT(io_message([&] { io::gguf_llama_config(f); }), Catch::Matchers::Contains("missing metadata key 'llama.embedding_length'"));
  }
}

TEST_CASE("LoRA adapters export with llama.cpp's names, shapes and folded scales", "[io][gguf_llama]") {
  auto m = small_model<float>();
  lora_config cfg;
  cfg.r = 4;
  cfg.alpha = 6;
  cfg.use_rslora = true;
  inject_options opt;
  opt.targets = target_modules::list(all_targets);
  opt.rank_pattern = {{"down_proj", 2}};
  opt.alpha_pattern = {{"v_proj", 3.0}};
  inject_lora(*m, cfg, opt);
  randomize_lora_b(*m, 3);
  const auto layers = adapted_layers(*m);
  REQUIRE(layers.size() == 14);

  const gguf_file f = reparse(io::lora_to_gguf(*m));
  CHECK(f.get<std::string>("general.type") == "adapter");
  CHECK(f.get<std::string>("adapter.type") == "lora");
  CHECK(f.get<std::string>("general.architecture") == "llama");
  // Default alpha: s·r of the first adapted module (q_proj: rsLoRA 6 / sqrt(4) · 4 = 12).
  const float alpha = f.get<float>("adapter.lora.alpha");
  CHECK(alpha == 12.0f);
  CHECK(f.tensors().size() == 28);
  for (auto& [path, al] : layers) {
    INFO(path);
    const std::string g = *io::gguf_llama_name(path);
    const auto& A = f.tensor_at(g + ".weight.lora_a");
    const auto& B = f.tensor_at(g + ".weight.lora_b");
    const auto& l = dynamic_cast<const lora<float>&>(al->get_adapter());
    const std::uint64_t r = l.rank();
    CHECK(A.ne == std::vector<std::uint64_t>{al->in_features(), r});
    CHECK(B.ne == std::vector<std::uint64_t>{r, al->out_features()});
    // llama.cpp's ΔW = alpha / r · B_file · A (in GGUF row order) == our ΔW (permuted for q, k).
    tensor<float> Bf = f.get_tensor<float>(g + ".weight.lora_b");
    const std::size_t heads = path.find("q_proj") != std::string::npos ? 4 : path.find("k_proj") != std::string::npos ? 2 : 0;
    if (heads) Bf = io::permute_rope_rows(Bf, heads, false);
    const matrix<float> theirs = (alpha / float(r)) * as_matrix(Bf) * as_matrix(f.get_tensor<float>(g + ".weight.lora_a"));
    const matrix<float> ours = al->get_adapter().delta_weight(as_matrix(al->base_layer->weight.value()));
    CHECK((theirs - ours).cwiseAbs().maxCoeff() <= 1e-5f * (1.0f + ours.cwiseAbs().maxCoeff()));
  }
  // The scale of q (and of every module with the default r, alpha) needs no folding: B is stored
  // bit for bit, only permuted.
  const auto& q = dynamic_cast<const lora<float>&>(layers[0].second->get_adapter());
  REQUIRE(layers[0].first == "layers.0.self_attn.q_proj");
  CHECK(same(io::permute_rope_rows(f.get_tensor<float>("blk.0.attn_q.weight.lora_b"), 4, false), q.lora_B.value()));
  CHECK(same(f.get_tensor<float>("blk.0.attn_q.weight.lora_a"), q.lora_A.value()));
}

TEST_CASE("LoRA GGUF -> lora_from_gguf reproduces the adapted model", "[io][gguf_llama]") {
  for (bool rs : {false, true}) {
    INFO("rslora " << rs);
    auto m = small_model<float>();
    lora_config cfg;
    cfg.r = 4;
    cfg.alpha = 8;
    cfg.use_rslora = rs;
    inject_options opt;
    opt.targets = target_modules::list(all_targets);
    opt.rank_pattern = {{"layers.1.self_attn.k_proj", 2}};
    opt.alpha_pattern = {{"gate_proj", 20.0}};
    inject_lora(*m, cfg, opt);
    randomize_lora_b(*m, 4);
    const gguf_file f = reparse(io::lora_to_gguf(*m));

    auto fresh = small_model<float>();
    CHECK(max_abs_diff(logits(*fresh, ids), logits(*m, ids)) > 1e-2);  // the adapter matters
    const auto rep = io::lora_from_gguf(*fresh, f);
    CHECK(rep.wrapped.size() == 14);
    CHECK(max_abs_diff(logits(*fresh, ids), logits(*m, ids)) < 1e-4);
    // Only the adapter is trainable after the load, as after inject_lora.
    for (auto& [name, v] : fresh->named_parameters())
      CHECK(v.requires_grad() == (name.find("lora_") != std::string::npos));
    // Loading again onto already adapted layers is refused.
    CHECK_THAT(io_message([&] { io::lora_from_gguf(*fresh, f); }), Catch::Matchers::Contains("not a plain linear layer"));
  }
}

TEST_CASE("an explicit alpha folds into B; the loaded adapter is unchanged", "[io][gguf_llama]") {
  auto m = small_model<float>();
  lora_config cfg;
  cfg.r = 4;
  cfg.alpha = 8;
  inject_options opt;
  opt.targets = target_modules::list({"v_proj", "up_proj"});
  inject_lora(*m, cfg, opt);
  randomize_lora_b(*m, 5);
  io::gguf_lora_options lo;
  lo.alpha = 2.0;
  const gguf_file f = io::lora_to_gguf(*m, lo);
  CHECK(f.get<float>("adapter.lora.alpha") == 2.0f);
  const auto& l = dynamic_cast<const lora<float>&>(adapted_layers(*m)[0].second->get_adapter());
  // B_file = B · s · r / alpha = B · 2 · 4 / 2 = 4 B (exact in binary)
  CHECK(same(f.get_tensor<float>("blk.0.attn_v.weight.lora_b"), tensor<float>(4.0f * l.lora_B.value())));
  auto fresh = small_model<float>();
  io::lora_from_gguf(*fresh, f);
  CHECK(max_abs_diff(logits(*fresh, ids), logits(*m, ids)) < 1e-5);
  lo.alpha = 0.0;
  CHECK_THROWS_AS(io::lora_to_gguf(*m, lo), value_error);
}

TEST_CASE("save_gguf_lora / load_gguf_lora and what cannot be exported", "[io][gguf_llama]") {
  auto plain = small_model<float>();
  CHECK_THROWS_WITH(io::lora_to_gguf(*plain), Catch::Matchers::Contains("no adapted layers"));

  auto m = small_model<float>();
  lora_config cfg;
  cfg.r = 2;
  inject_options opt;
  opt.targets = target_modules::list({"q_proj"});
  inject_lora(*m, cfg, opt);
  randomize_lora_b(*m, 6);
  const std::string path = (std::filesystem::temp_directory_path() / ("peft_gguf_lora_" + std::to_string(::getpid()) + ".gguf")).string();
  io::save_gguf_lora(*m, path);
  auto fresh = small_model<float>();
  CHECK(io::load_gguf_lora(*fresh, path).wrapped == std::vector<std::string>{"layers.0.self_attn.q_proj", "layers.1.self_attn.q_proj"});
  CHECK(max_abs_diff(logits(*fresh, ids), logits(*m, ids)) < 1e-5);
  std::filesystem::remove(path);

  merge_adapters(*m);
  CHECK_THROWS_WITH(io::lora_to_gguf(*m), Catch::Matchers::Contains("unmerge it"));
  unmerge_adapters(*m);

  auto d = small_model<float>();
  inject_adapters<float>(*d, opt, 2, 2.0, [](const layer_info<float>& info) {
    lora_config c;
    c.r = 2;
    return std::make_shared<dora<float>>(std::make_shared<lora<float>>(info.in, info.out, c),
                                         as_matrix(info.base->weight.value()));
  });
  CHECK_THROWS_WITH(io::lora_to_gguf(*d), Catch::Matchers::Contains("without low-rank factors"));
}

TEST_CASE("malformed LoRA files are refused with io_error", "[io][gguf_llama]") {
  auto m = small_model<float>();
  lora_config cfg;
  cfg.r = 2;
  inject_options opt;
  opt.targets = target_modules::list({"q_proj", "down_proj"});
  inject_lora(*m, cfg, opt);
  const gguf_file good = io::lora_to_gguf(*m);
  auto check = [&](const std::function<void(gguf_file&)>& edit, const char* expect) {
    gguf_file f = good;
    edit(f);
    auto fresh = small_model<float>();
    INFO(expect);
    CHECK_THAT(io_message([&] { io::lora_from_gguf(*fresh, f); }), Catch::Matchers::Contains(expect));
  };
  check([](gguf_file& f) { f.set("general.type", "model"); }, "general.type is not 'adapter'");
  check([](gguf_file& f) { f.set("adapter.type", "control_vector"); }, "adapter.type is not 'lora'");
  check([](gguf_file& f) { f.set("adapter.lora.alpha", 2.0); }, "adapter.lora.alpha is FLOAT64");
  check([](gguf_file& f) { f.erase_tensor("blk.1.ffn_down.weight.lora_b"); }, "missing its lora_b");
  check([](gguf_file& f) { f.add_tensor("blk.0.attn_q.weight.lora_c", tensor<float>(zeros<float>({2}))); },
        "neither .lora_a nor .lora_b");
  check([](gguf_file& f) {
          f.add_tensor("blk.9.attn_q.weight.lora_a", tensor<float>(zeros<float>({2, 16})));
          f.add_tensor("blk.9.attn_q.weight.lora_b", tensor<float>(zeros<float>({16, 2})));
        },
        "'layers.9.self_attn.q_proj' is not a plain linear layer");
  check([](gguf_file& f) {
          f.erase_tensor("blk.0.attn_q.weight.lora_a");
          f.add_tensor("blk.0.attn_q.weight.lora_a", tensor<float>(zeros<float>({2, 15})));
        },
        "do not fit a layer with in=16, out=16");
  check([](gguf_file& f) { f.add_tensor("token_embd.weight.lora_a", tensor<float>(zeros<float>({2, 16}))); },
        "token_embd");
}

// The model-free exporter (used by lora_to_gguf and by `peft convert`): llama.cpp computes
// ΔW = (alpha / r)·B'·A, so each module's B' = (natural / alpha)·B with alpha = the first
// module's natural scale unless given.
TEST_CASE("gguf lora: lora_factors_to_gguf folds each module's scale into B and names bad modules",
          "[io][gguf][llama]") {
  io::gguf_lora_factor<double> a, b;
  a.name = "blk.0.ffn_up.weight";
  a.B = matrix<double>::Constant(4, 2, 1.0);
  a.A = matrix<double>::Constant(2, 3, 0.5);
  a.natural = 8.0;  // alpha = 8
  b = a;
  b.name = "blk.0.ffn_down.weight";
  b.natural = 2.0;  // folded: B' = (2 / 8)·B
  const gguf_file f = io::lora_factors_to_gguf<double>({a, b});
  CHECK(f.get<float>("adapter.lora.alpha") == 8.0f);
  const tensor<double> down = f.get_tensor<double>("blk.0.ffn_down.weight.lora_b");
  CHECK_THAT(down(0, 0), Catch::Matchers::WithinAbs(0.25, 1e-12));
  const tensor<double> up = f.get_tensor<double>("blk.0.ffn_up.weight.lora_b");
  CHECK_THAT(up(3, 1), Catch::Matchers::WithinAbs(1.0, 1e-12));

  io::gguf_lora_factor<double> bad = a;
  bad.A = matrix<double>::Constant(3, 3, 0.5);  // B [4,2] does not chain with A [3,3]
  CHECK_THROWS_WITH(io::lora_factors_to_gguf<double>({bad}),
                    Catch::Contains("blk.0.ffn_up.weight") && Catch::Contains("[4,2]") && Catch::Contains("[3,3]"));
  io::gguf_lora_factor<double> rope = a;
  rope.name = "blk.0.attn_q.weight";
  rope.rope_heads = 3;  // 4 rows cannot split into 3 heads
  CHECK_THROWS_WITH(io::lora_factors_to_gguf<double>({rope}), Catch::Contains("blk.0.attn_q.weight"));
  io::gguf_lora_options o;
  o.alpha = 0.0;
  CHECK_THROWS_WITH(io::lora_factors_to_gguf<double>({a}, o), Catch::Contains("alpha must be finite and non-zero"));
  CHECK_THROWS_WITH(io::lora_factors_to_gguf<double>({}), Catch::Contains("no adapted modules"));
}
