#pragma once
// nn::llama models and their LoRA adapters as GGUF files in llama.cpp's "llama" layout, and back.
//
// Base model (save_gguf_llama / load_gguf_llama):
//   metadata  general.architecture = "llama", llama.{context_length, embedding_length,
//             block_count, feed_forward_length, attention.head_count, attention.head_count_kv,
//             rope.dimension_count, vocab_size} (UINT32), llama.rope.freq_base and
//             llama.attention.layer_norm_rms_epsilon (FLOAT32), and a tokenizer: byte-level BPE
//             ("gpt2", no merges) whose ids 0..255 are the 256 bytes, so a byte-level model's ids
//             are the bytes themselves and text round-trips exactly through llama.cpp.
//   tensors   embed_tokens -> token_embd, layers.N.self_attn.{q,k,v,o}_proj ->
//             blk.N.attn_{q,k,v,output}, layers.N.mlp.{gate,up,down}_proj -> blk.N.ffn_{gate,up,down},
//             layers.N.input_layernorm -> blk.N.attn_norm, post_attention_layernorm -> blk.N.ffn_norm,
//             norm -> output_norm, lm_head -> output (absent when the embeddings are tied).
//   RoPE      nn::llama rotates the two halves of a head (Hugging Face's rotate_half); GGUF llama
//             rotates adjacent pairs. As llama.cpp's converter does, the rows of q_proj (per query
//             head) and k_proj (per kv head) are permuted on export: within a head of size d,
//             GGUF row 2j + s = HF row s·d/2 + j (j < d/2, s ∈ {0, 1}); the import inverts it.
//
// LoRA adapter (save_gguf_lora / load_gguf_lora): general.type = "adapter", adapter.type = "lora",
// adapter.lora.alpha (FLOAT32), general.architecture = "llama"; for each adapted Linear
// "<gguf name>.weight.lora_a" = A [r, in] (ggml ne = [in, r]) and ".lora_b" = B [out, r]
// (ne = [r, out]), B's rows permuted like the base weight for q and k (A is not: the permutation
// acts on the output rows only).
// llama.cpp applies ΔW = (alpha / r_m)·B·A with the file's single alpha and each module's own rank
// r_m. Each module's own scale s_m (alpha_m / r_m, rsLoRA's alpha_m / sqrt(r_m), alpha_pattern,
// rank_pattern) is therefore folded into B:
//     B_file = B · s_m · r_m / alpha_file
// so that alpha_file / r_m · B_file · A = s_m · B · A exactly in real arithmetic (and bit for bit
// when s_m · r_m = alpha_file, e.g. plain LoRA with one alpha). alpha_file is the caller's choice
// or, by default, s·r of the first adapted module. Other factored adapters (VeRA, LoRA-XS, ...)
// export their Bf·Af = ΔW factors the same way; adapters without factors (DoRA, MoE) cannot be
// expressed as a llama.cpp LoRA and are refused (merge them into the base instead).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "peft/adapters/adapted_linear.hpp"
#include "peft/adapters/inject.hpp"
#include "peft/adapters/lora.hpp"
#include "peft/core/config.hpp"
#include "peft/io/gguf.hpp"
#include "peft/nn/attention.hpp"
#include "peft/nn/linear.hpp"
#include "peft/nn/mlp.hpp"
#include "peft/nn/norm.hpp"
#include "peft/nn/transformer.hpp"

namespace peft::io {

// ---- names ----

namespace detail {
struct llama_name_pair {
  const char* hf;
  const char* gguf;
};
inline constexpr llama_name_pair llama_layer_names[] = {
    {"self_attn.q_proj", "attn_q"},     {"self_attn.k_proj", "attn_k"},
    {"self_attn.v_proj", "attn_v"},     {"self_attn.o_proj", "attn_output"},
    {"mlp.gate_proj", "ffn_gate"},      {"mlp.up_proj", "ffn_up"},
    {"mlp.down_proj", "ffn_down"},      {"input_layernorm", "attn_norm"},
    {"post_attention_layernorm", "ffn_norm"}};
inline constexpr llama_name_pair llama_global_names[] = {
    {"embed_tokens", "token_embd"}, {"norm", "output_norm"}, {"lm_head", "output"}};

// "<prefix><digits>.<rest>" -> (digits, rest)
PEFT_INLINE std::optional<std::pair<std::string, std::string>> split_layer(const std::string& s, const std::string& prefix);
// Maps a module path (optionally followed by ".weight") from one naming to the other.
PEFT_INLINE std::optional<std::string> map_llama_name(const std::string& name, bool to_gguf);
}  // namespace detail

// "layers.3.self_attn.q_proj(.weight)" -> "blk.3.attn_q(.weight)", or nullopt when the name has
// no llama GGUF counterpart.
inline std::optional<std::string> gguf_llama_name(const std::string& hf_name) {
  return detail::map_llama_name(hf_name, true);
}
// The inverse: "blk.3.attn_q.weight" -> "layers.3.self_attn.q_proj.weight".
inline std::optional<std::string> hf_llama_name(const std::string& gguf_name) {
  return detail::map_llama_name(gguf_name, false);
}

// ---- RoPE row permutation ----

// Rows of a q/k projection (or of its LoRA B) [n_heads · d, cols] from rotate-half order to
// GGUF's interleaved order (to_gguf) or back.
template <class T>
tensor<T> permute_rope_rows(const tensor<T>& w, std::size_t n_heads, bool to_gguf) {
  if (w.dimension() != 2 || n_heads == 0 || w.shape()[0] % n_heads != 0 || (w.shape()[0] / n_heads) % 2 != 0)
    throw shape_error("permute_rope_rows: weight " + shape_str(w.shape()) + " for " + std::to_string(n_heads) +
                      " heads (rows must split into heads of even size)");
  const std::size_t d = w.shape()[0] / n_heads, half = d / 2;
  tensor<T> out = tensor<T>::from_shape(w.shape());
  const auto in = as_matrix(w);
  auto o = as_matrix(out);
  for (std::size_t h = 0; h < n_heads; ++h)
    for (std::size_t j = 0; j < half; ++j)
      for (std::size_t s = 0; s < 2; ++s) {
        const auto g = Eigen::Index(h * d + 2 * j + s), f = Eigen::Index(h * d + s * half + j);
        if (to_gguf)
          o.row(g) = in.row(f);
        else
          o.row(f) = in.row(g);
      }
  return out;
}

// ---- options ----

struct gguf_llama_options {
  std::string name = "peft.cpp llama";
  // Storage of the 2-D weights: F32, F16 or BF16 (norm weights are always F32).
  ggml_type weight_type = ggml_type::F32;
  // Vocabulary; empty = byte-level: GPT-2 byte tokens for ids < 256 (id = byte), "<extra_N>" after.
  std::vector<std::string> tokens;
  std::uint32_t bos_token_id = 2;  // ASCII STX, start of text
  std::uint32_t eos_token_id = 3;  // ASCII ETX, end of text
  bool add_bos_token = false;
  bool add_eos_token = false;
  std::uint32_t context_length = 0;  // 0 = the model's max_seq
};

struct gguf_lora_options {
  std::string name = "peft.cpp lora";
  std::optional<double> alpha;  // adapter.lora.alpha; default: s·r of the first adapted module
  ggml_type weight_type = ggml_type::F32;
};

namespace detail {
template <class T>
const variable<T>& llama_linear_weight(const std::shared_ptr<nn::unary_module<T>>& m, const std::string& path) {
  if (auto* l = dynamic_cast<nn::linear<T>*>(m.get())) {
    if (l->has_bias()) throw value_error("gguf llama: '" + path + "' has a bias, which the llama layout has no slot for");
    return l->weight;
  }
  if (auto* a = dynamic_cast<adapted_linear<T>*>(m.get())) {
    if (a->base_layer->has_bias())
      throw value_error("gguf llama: '" + path + "' has a bias, which the llama layout has no slot for");
    return a->base_layer->weight;
  }
  throw value_error("gguf llama: '" + path + "' is a " + (m ? m->type_name() : std::string("null")) +
                    ", not a linear layer");
}
template <class T>
const variable<T>& llama_norm_weight(const std::shared_ptr<nn::unary_module<T>>& m, const std::string& path) {
  if (auto* n = dynamic_cast<nn::rms_norm<T>*>(m.get())) return n->weight;
  throw value_error("gguf llama: '" + path + "' is a " + (m ? m->type_name() : std::string("null")) +
                    ", not an rms_norm");
}
template <class T>
nn::causal_self_attention<T>& llama_attention(nn::llama<T>& model, std::size_t i) {
  auto* a = dynamic_cast<nn::causal_self_attention<T>*>(model.block(i).self_attn.get());
  if (!a) throw value_error("gguf llama: layers." + std::to_string(i) + ".self_attn is not a causal_self_attention");
  return *a;
}
template <class T>
nn::swiglu_mlp<T>& llama_mlp(nn::llama<T>& model, std::size_t i) {
  auto* m = dynamic_cast<nn::swiglu_mlp<T>*>(model.block(i).mlp.get());
  if (!m) throw value_error("gguf llama: layers." + std::to_string(i) + ".mlp is not a swiglu_mlp");
  return *m;
}
// GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves, the other 68 bytes
// (controls, space, 0x7F-0xA0, 0xAD) for U+0100.. in byte order. Returns the UTF-8 text.
PEFT_INLINE std::string gpt2_byte_token(std::uint8_t b);
PEFT_INLINE std::uint32_t u32_of(std::size_t v, const char* what);
// Which projection's rows carry RoPE and with how many heads (0 = none).
PEFT_INLINE std::size_t rope_heads(const std::string& hf_path, const nn::llama_config& c);
}  // namespace detail

// ---- base model ----

// The model as a GGUF file in memory. Adapted layers contribute their base weight as it stands
// (including any merged adapter).
template <class T>
gguf_file llama_to_gguf(nn::llama<T>& model, const gguf_llama_options& opt = {}) {
  const nn::llama_config& c = model.config();
  const std::size_t kv = c.n_kv_heads ? c.n_kv_heads : c.n_heads;
  if (opt.weight_type != ggml_type::F32 && opt.weight_type != ggml_type::F16 && opt.weight_type != ggml_type::BF16)
    throw value_error(std::string("gguf llama: weight_type ") + ggml_type_name(opt.weight_type) +
                      " (F32, F16 or BF16)");
  if (!opt.tokens.empty() && opt.tokens.size() != c.vocab)
    throw value_error("gguf llama: " + std::to_string(opt.tokens.size()) + " tokens for a vocabulary of " +
                      std::to_string(c.vocab));
  gguf_file f;
  f.set("general.architecture", "llama");
  f.set("general.type", "model");
  f.set("general.name", opt.name);
  const std::uint32_t file_type = opt.weight_type == ggml_type::F32 ? 0 : opt.weight_type == ggml_type::F16 ? 1 : 32;
  f.set("general.file_type", file_type);
  f.set("llama.context_length", detail::u32_of(opt.context_length ? opt.context_length : c.max_seq, "context_length"));
  f.set("llama.embedding_length", detail::u32_of(c.dim, "dim"));
  f.set("llama.block_count", detail::u32_of(c.n_layers, "n_layers"));
  f.set("llama.feed_forward_length", detail::u32_of(c.hidden_dim, "hidden_dim"));
  f.set("llama.attention.head_count", detail::u32_of(c.n_heads, "n_heads"));
  f.set("llama.attention.head_count_kv", detail::u32_of(kv, "n_kv_heads"));
  f.set("llama.rope.dimension_count", detail::u32_of(c.dim / c.n_heads, "head_dim"));
  f.set("llama.rope.freq_base", float(c.rope_theta));
  f.set("llama.attention.layer_norm_rms_epsilon", float(c.norm_eps));
  f.set("llama.vocab_size", detail::u32_of(c.vocab, "vocab"));

  // Tokenizer: byte-level BPE ("gpt2") without merges, so every byte is one token and token id
  // = byte value; the text round-trips exactly through llama.cpp's tokenize / detokenize.
  std::vector<std::string> toks = opt.tokens;
  std::vector<std::int32_t> types(c.vocab, 1);  // NORMAL
  if (toks.empty()) {
    for (std::size_t i = 0; i < c.vocab; ++i) {
      if (i < 256) {
        toks.push_back(detail::gpt2_byte_token(std::uint8_t(i)));
      } else {
        toks.push_back("<extra_" + std::to_string(i) + ">");
        types[i] = 4;  // USER_DEFINED
      }
    }
  }
  f.set("tokenizer.ggml.model", "gpt2");
  f.set("tokenizer.ggml.pre", "default");
  f.set("tokenizer.ggml.tokens", gguf_value::array(std::move(toks)));
  f.set("tokenizer.ggml.token_type", gguf_value::array(std::move(types)));
  f.set("tokenizer.ggml.merges", gguf_value::array(std::vector<std::string>{}));
  f.set("tokenizer.ggml.bos_token_id", opt.bos_token_id);
  f.set("tokenizer.ggml.eos_token_id", opt.eos_token_id);
  f.set("tokenizer.ggml.add_bos_token", opt.add_bos_token);
  f.set("tokenizer.ggml.add_eos_token", opt.add_eos_token);

  const ggml_type wt = opt.weight_type;
  f.add_tensor("token_embd.weight", model.embed_tokens->weight.value(), wt);
  for (std::size_t i = 0; i < c.n_layers; ++i) {
    const std::string hp = "layers." + std::to_string(i) + ".", gp = "blk." + std::to_string(i) + ".";
    auto& blk = model.block(i);
    auto& at = detail::llama_attention(model, i);
    auto& mlp = detail::llama_mlp(model, i);
    f.add_tensor(gp + "attn_norm.weight", detail::llama_norm_weight(blk.input_layernorm, hp + "input_layernorm").value());
    f.add_tensor(gp + "attn_q.weight",
                 permute_rope_rows(detail::llama_linear_weight(at.q_proj, hp + "self_attn.q_proj").value(), c.n_heads, true), wt);
    f.add_tensor(gp + "attn_k.weight",
                 permute_rope_rows(detail::llama_linear_weight(at.k_proj, hp + "self_attn.k_proj").value(), kv, true), wt);
    f.add_tensor(gp + "attn_v.weight", detail::llama_linear_weight(at.v_proj, hp + "self_attn.v_proj").value(), wt);
    f.add_tensor(gp + "attn_output.weight", detail::llama_linear_weight(at.o_proj, hp + "self_attn.o_proj").value(), wt);
    f.add_tensor(gp + "ffn_norm.weight",
                 detail::llama_norm_weight(blk.post_attention_layernorm, hp + "post_attention_layernorm").value());
    f.add_tensor(gp + "ffn_gate.weight", detail::llama_linear_weight(mlp.gate_proj, hp + "mlp.gate_proj").value(), wt);
    f.add_tensor(gp + "ffn_up.weight", detail::llama_linear_weight(mlp.up_proj, hp + "mlp.up_proj").value(), wt);
    f.add_tensor(gp + "ffn_down.weight", detail::llama_linear_weight(mlp.down_proj, hp + "mlp.down_proj").value(), wt);
  }
  f.add_tensor("output_norm.weight", detail::llama_norm_weight(model.norm, "norm").value());
  if (model.lm_head) f.add_tensor("output.weight", detail::llama_linear_weight(model.lm_head, "lm_head").value(), wt);
  return f;
}

template <class T>
void save_gguf_llama(nn::llama<T>& model, const std::string& path, const gguf_llama_options& opt = {}) {
  llama_to_gguf(model, opt).save(path);
}

namespace detail {
PEFT_INLINE std::size_t gguf_count(const gguf_file& f, const std::string& key, bool required, std::size_t def = 0);
PEFT_INLINE double gguf_real(const gguf_file& f, const std::string& key, double def);
PEFT_INLINE void expect_architecture(const gguf_file& f);
}  // namespace detail

// The llama_config a GGUF llama file describes. io_error for anything nn::llama cannot represent
// (partial rotary, rope scaling, experts, head sizes other than dim / n_heads) or any value its
// constructor would refuse. max_seq is the file's context_length capped at max_seq_cap: it only
// sizes the RoPE tables, and a hostile file could otherwise ask for gigabytes of them.
PEFT_INLINE nn::llama_config gguf_llama_config(const gguf_file& f, std::size_t max_seq_cap = 8192);

// Builds an nn::llama<T> from a GGUF llama file: exactly the tensors the metadata implies, with
// their shapes, must be there (checked before anything is allocated), in a type that converts.
template <class T>
std::shared_ptr<nn::llama<T>> llama_from_gguf(const gguf_file& f, std::size_t max_seq_cap = 8192) {
  const nn::llama_config c = gguf_llama_config(f, max_seq_cap);
  const std::string w = "gguf '" + f.source() + "'";
  // Expected tensors (row-major shapes) by GGUF name.
  const std::size_t kvd = c.n_kv_heads * (c.dim / c.n_heads);
  std::map<std::string, shape_t> expect{{"token_embd.weight", {c.vocab, c.dim}}, {"output_norm.weight", {c.dim}}};
  if (!c.tie_embeddings) expect.emplace("output.weight", shape_t{c.vocab, c.dim});
  if (c.n_layers > f.tensors().size())
    throw io_error(w + ": llama.block_count " + std::to_string(c.n_layers) + " but only " +
                   std::to_string(f.tensors().size()) + " tensors");
  for (std::size_t i = 0; i < c.n_layers; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    expect.emplace(p + "attn_norm.weight", shape_t{c.dim});
    expect.emplace(p + "ffn_norm.weight", shape_t{c.dim});
    expect.emplace(p + "attn_q.weight", shape_t{c.dim, c.dim});
    expect.emplace(p + "attn_k.weight", shape_t{kvd, c.dim});
    expect.emplace(p + "attn_v.weight", shape_t{kvd, c.dim});
    expect.emplace(p + "attn_output.weight", shape_t{c.dim, c.dim});
    expect.emplace(p + "ffn_gate.weight", shape_t{c.hidden_dim, c.dim});
    expect.emplace(p + "ffn_up.weight", shape_t{c.hidden_dim, c.dim});
    expect.emplace(p + "ffn_down.weight", shape_t{c.dim, c.hidden_dim});
  }
  for (auto& [name, t] : f.tensors()) {
    auto it = expect.find(name);
    if (it == expect.end()) {
      if (name == "rope_freqs.weight") throw io_error(w + ": rope_freqs (llama-3 rope scaling) is not supported");
      throw io_error(w + ": tensor '" + name + "' has no place in an nn::llama with " + std::to_string(c.n_layers) +
                     " layers");
    }
    if (t.shape() != it->second)
      throw io_error(w + ": tensor '" + name + "' has shape " + shape_str(t.shape()) + ", expected " +
                     shape_str(it->second));
    if (!ggml_type_decodable(t.type))
      throw io_error(w + ": tensor '" + name + "' is " + ggml_type_name(t.type) + ", which cannot be converted");
  }
  for (auto& [name, shape] : expect)
    if (!f.has_tensor(name)) throw io_error(w + ": missing tensor '" + name + "'");

  rng g(0);  // the initial values are all overwritten
  auto model = std::make_shared<nn::llama<T>>(c, g);
  nn::state_dict<T> sd;
  for (auto& [name, t] : f.tensors()) {
    const std::string hf = *hf_llama_name(name);
    tensor<T> v = f.get_tensor<T>(name);
    if (const std::size_t heads = detail::rope_heads(hf.substr(0, hf.size() - 7), c))
      v = permute_rope_rows(v, heads, false);
    sd.emplace(hf, std::move(v));
  }
  model->load_state_dict(sd, true);
  return model;
}

template <class T>
std::shared_ptr<nn::llama<T>> load_gguf_llama(const std::string& path, std::size_t max_seq_cap = 8192) {
  return llama_from_gguf<T>(gguf_file::load(path), max_seq_cap);
}

// ---- LoRA adapters ----

// Every adapted Linear of the model as llama.cpp LoRA tensors (see the header comment for the
// scale folding). value_error if there is none, one is merged, or one has no B·A factors.
// One low-rank module of a llama.cpp LoRA file, independent of any model object. The module's
// update is ΔW = natural·B·A / r (r = rows of A); llama.cpp computes (alpha / r)·B'·A, so the
// file holds B' = (natural / alpha)·B with q/k rows in GGUF's RoPE order.
template <class T>
struct gguf_lora_factor {
  std::string name;            // the module's GGUF tensor name, e.g. "blk.0.attn_q.weight"
  matrix<T> B, A;              // [out, r], [r, in]
  double natural = 1;          // s·r for LoRA (B the raw lora_B); r for pre-scaled factors
  std::size_t rope_heads = 0;  // q/k projections: heads whose rows GGUF permutes; 0 = none
};

// The llama.cpp LoRA file of `factors`: adapter.lora.alpha = opt.alpha or the first module's
// natural scale; each module's own scale is folded into its B (llama.cpp applies alpha / r to
// every module alike), and q/k rows are permuted into GGUF's RoPE order. value_error names the
// module for a bad shape and the option for a bad alpha.
template <class T>
gguf_file lora_factors_to_gguf(const std::vector<gguf_lora_factor<T>>& factors, const gguf_lora_options& opt = {}) {
  if (factors.empty()) throw value_error("gguf lora: no adapted modules");
  double alpha = opt.alpha ? *opt.alpha : factors.front().natural;
  if (!std::isfinite(alpha) || alpha == 0.0) {
    if (opt.alpha) throw value_error("gguf lora: alpha must be finite and non-zero (llama.cpp reads 0 as 'no scaling')");
    alpha = 1.0;  // every module has a zero scale: any alpha works, B becomes zero
  }
  const float alpha_f = float(alpha);  // what llama.cpp will compute with

  gguf_file f;
  f.set("general.architecture", "llama");
  f.set("general.type", "adapter");
  f.set("general.name", opt.name);
  f.set("adapter.type", "lora");
  f.set("adapter.lora.alpha", alpha_f);
  for (const auto& x : factors) {
    if (x.B.cols() != x.A.rows())
      throw shape_error("gguf lora: module '" + x.name + "': B [" + std::to_string(x.B.rows()) + "," +
                        std::to_string(x.B.cols()) + "] and A [" + std::to_string(x.A.rows()) + "," +
                        std::to_string(x.A.cols()) + "] do not chain");
    const double fold = x.natural / double(alpha_f);
    tensor<T> B = to_tensor(x.B);
    if (fold != 1.0) as_matrix(B) *= T(fold);
    if (x.rope_heads) {
      try {
        B = permute_rope_rows(B, x.rope_heads, true);
      } catch (const error& e) {
        throw shape_error("gguf lora: module '" + x.name + "': " + e.what());
      }
    }
    f.add_tensor(x.name + ".lora_a", to_tensor(x.A), opt.weight_type);
    f.add_tensor(x.name + ".lora_b", B, opt.weight_type);
  }
  return f;
}

template <class T>
gguf_file lora_to_gguf(nn::llama<T>& model, const gguf_lora_options& opt = {}) {
  const nn::llama_config& c = model.config();
  auto layers = adapted_layers(model);
  if (layers.empty()) throw value_error("gguf lora: the model has no adapted layers");
  std::vector<gguf_lora_factor<T>> fs;
  for (auto& [path, al] : layers) {
    if (al->merged())
      throw value_error("gguf lora: '" + path + "' is merged into its base weight; unmerge it before exporting");
    const auto g = gguf_llama_name(path);
    if (!g) throw value_error("gguf lora: adapted layer '" + path + "' has no llama GGUF name");
    gguf_lora_factor<T> x;
    x.name = *g + ".weight";
    x.rope_heads = detail::rope_heads(path, c);
    const adapter<T>& a = al->get_adapter();
    if (auto* l = dynamic_cast<const lora<T>*>(&a)) {
      x.B = as_matrix(l->lora_B.value());
      x.A = as_matrix(l->lora_A.value());
      x.natural = l->scaling() * double(l->rank());
    } else if (a.factors(x.B, x.A)) {
      x.natural = double(x.A.rows());
    } else {
      throw value_error("gguf lora: '" + path + "' is a " + a.method() +
                        " adapter without low-rank factors; llama.cpp LoRA files cannot hold it (merge it instead)");
    }
    fs.push_back(std::move(x));
  }
  return lora_factors_to_gguf(fs, opt);
}

template <class T>
void save_gguf_lora(nn::llama<T>& model, const std::string& path, const gguf_lora_options& opt = {}) {
  lora_to_gguf(model, opt).save(path);
}

// Wraps the layers a llama.cpp LoRA file names with peft::lora adapters holding its A and B
// (B's q/k rows un-permuted), r = rows of A, alpha = adapter.lora.alpha (llama.cpp's rule: a
// missing or zero alpha means scale 1, i.e. alpha = r), and freezes everything else, like
// inject_lora. io_error for a malformed adapter file or one that does not fit the model.
template <class T>
injection_report lora_from_gguf(nn::llama<T>& model, const gguf_file& f) {
  const std::string w = "gguf '" + f.source() + "'";
  detail::expect_architecture(f);
  const gguf_value* gt = f.find("general.type");
  if (!gt || gt->type() != gguf_value_type::string || gt->get<std::string>() != "adapter")
    throw io_error(w + ": general.type is not 'adapter'");
  const gguf_value* at = f.find("adapter.type");
  if (!at || at->type() != gguf_value_type::string || at->get<std::string>() != "lora")
    throw io_error(w + ": adapter.type is not 'lora'");
  double alpha = 0;
  if (const gguf_value* a = f.find("adapter.lora.alpha")) {
    if (a->type() != gguf_value_type::float32) throw io_error(w + ": adapter.lora.alpha is " + a->type_str() + ", expected FLOAT32");
    alpha = a->get<float>();
    if (!std::isfinite(alpha)) throw io_error(w + ": adapter.lora.alpha is not finite");
  }

  struct pair_t {
    const gguf_tensor* a = nullptr;
    const gguf_tensor* b = nullptr;
    std::string a_name, b_name;
  };
  std::map<std::string, pair_t> pairs;  // HF module path -> tensors
  for (auto& [name, t] : f.tensors()) {
    const bool is_a = name.size() > 7 && name.compare(name.size() - 7, 7, ".lora_a") == 0;
    const bool is_b = name.size() > 7 && name.compare(name.size() - 7, 7, ".lora_b") == 0;
    if (!is_a && !is_b) throw io_error(w + ": tensor '" + name + "' is neither .lora_a nor .lora_b");
    const std::string target = name.substr(0, name.size() - 7);
    const auto hf = hf_llama_name(target);
    if (!hf || hf->size() < 7 || hf->compare(hf->size() - 7, 7, ".weight") != 0)
      throw io_error(w + ": tensor '" + name + "' names no llama weight");
    const std::string path = hf->substr(0, hf->size() - 7);
    if (path == "embed_tokens") throw io_error(w + ": LoRA on token_embd is not supported");
    if (!ggml_type_decodable(t.type) || t.ne.size() != 2)
      throw io_error(w + ": tensor '" + name + "' must be a 2-D float tensor, is " + ggml_type_name(t.type) + " ne " +
                     shape_str(t.ne));
    auto& p = pairs[path];
    (is_a ? p.a : p.b) = &t;
    (is_a ? p.a_name : p.b_name) = name;
  }
  if (pairs.empty()) throw io_error(w + ": no LoRA tensors");

  std::map<std::string, std::pair<tensor<T>, tensor<T>>> ab;
  inject_options io;
  for (auto& [path, p] : pairs) {
    if (!p.a || !p.b) throw io_error(w + ": LoRA pair for '" + path + "' is missing its " + (p.a ? "lora_b" : "lora_a"));
    nn::linear<T>* base = nullptr;
    try {
      base = dynamic_cast<nn::linear<T>*>(model.find_module(path).get());
    } catch (const value_error&) {
    }
    if (!base) throw io_error(w + ": '" + path + "' is not a plain linear layer of the model (missing or already adapted)");
    const std::uint64_t in = base->in_features(), out = base->out_features();
    // lora_a ne = [in, r], lora_b ne = [r, out] (llama.cpp's checks).
    if (p.a->ne[0] != in || p.b->ne[1] != out || p.a->ne[1] != p.b->ne[0] || p.a->ne[1] == 0)
      throw io_error(w + ": '" + p.a_name + "' ne " + shape_str(p.a->ne) + " and '" + p.b_name + "' ne " +
                     shape_str(p.b->ne) + " do not fit a layer with in=" + std::to_string(in) +
                     ", out=" + std::to_string(out));
    tensor<T> A = f.get_tensor<T>(p.a_name), B = f.get_tensor<T>(p.b_name);
    if (const std::size_t heads = detail::rope_heads(path, model.config())) B = permute_rope_rows(B, heads, false);
    ab.emplace(path, std::pair{std::move(A), std::move(B)});
    io.targets.names.push_back(path);
  }
  return inject_adapters<T>(model, io, 1, 1.0, [&](const layer_info<T>& info) {
    auto& [A, B] = ab.at(info.path);
    lora_config cfg;
    cfg.r = A.shape()[0];
    cfg.alpha = alpha == 0 ? double(cfg.r) : alpha;
    auto l = std::make_shared<lora<T>>(info.in, info.out, cfg);
    l->lora_A.value() = A;
    l->lora_B.value() = B;
    return l;
  });
}

template <class T>
injection_report load_gguf_lora(nn::llama<T>& model, const std::string& path) {
  return lora_from_gguf(model, gguf_file::load(path));
}

// ---- definitions: here (inline) for header-only programs; in the compiled library only in
// src/io.cpp (PEFT_UNIT_IO), so that they are defined once ----
#if !defined(PEFT_COMPILED_LIB) || defined(PEFT_UNIT_IO)
namespace detail {
PEFT_INLINE std::optional<std::pair<std::string, std::string>> split_layer(const std::string& s,
                                                                          const std::string& prefix) {
  if (s.compare(0, prefix.size(), prefix) != 0) return std::nullopt;
  std::size_t i = prefix.size();
  const std::size_t b = i;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
  if (i == b || i - b > 9 || i >= s.size() || s[i] != '.') return std::nullopt;
  if (s[b] == '0' && i - b > 1) return std::nullopt;  // no leading zeros
  return std::pair{s.substr(b, i - b), s.substr(i + 1)};
}
PEFT_INLINE std::optional<std::string> map_llama_name(const std::string& name, bool to_gguf) {
  std::string base = name, suffix;
  const std::string w = ".weight";
  if (base.size() > w.size() && base.compare(base.size() - w.size(), w.size(), w) == 0) {
    base.resize(base.size() - w.size());
    suffix = w;
  }
  for (auto& p : llama_global_names)
    if (base == (to_gguf ? p.hf : p.gguf)) return std::string(to_gguf ? p.gguf : p.hf) + suffix;
  if (auto l = split_layer(base, to_gguf ? "layers." : "blk."))
    for (auto& p : llama_layer_names)
      if (l->second == (to_gguf ? p.hf : p.gguf))
        return std::string(to_gguf ? "blk." : "layers.") + l->first + "." + (to_gguf ? p.gguf : p.hf) + suffix;
  return std::nullopt;
}

PEFT_INLINE std::string gpt2_byte_token(std::uint8_t b) {
  auto printable = [](unsigned c) { return (c >= 0x21 && c <= 0x7e) || (c >= 0xa1 && c <= 0xac) || (c >= 0xae); };
  unsigned cp = b;
  if (!printable(b)) {
    cp = 256;
    for (unsigned c = 0; c < b; ++c)
      if (!printable(c)) ++cp;
  }
  std::string s;
  if (cp < 0x80) {
    s += char(cp);
  } else {
    s += char(0xc0 | (cp >> 6));
    s += char(0x80 | (cp & 0x3f));
  }
  return s;
}
PEFT_INLINE std::uint32_t u32_of(std::size_t v, const char* what) {
  if (v > 0xffffffffu) throw value_error(std::string("gguf llama: ") + what + " " + std::to_string(v) + " exceeds UINT32");
  return std::uint32_t(v);
}
PEFT_INLINE std::size_t rope_heads(const std::string& hf_path, const nn::llama_config& c) {
  auto ends = [&](const char* s) {
    const std::string x(s);
    return hf_path.size() >= x.size() && hf_path.compare(hf_path.size() - x.size(), x.size(), x) == 0;
  };
  if (ends(".self_attn.q_proj")) return c.n_heads;
  if (ends(".self_attn.k_proj")) return c.n_kv_heads ? c.n_kv_heads : c.n_heads;
  return 0;
}

PEFT_INLINE std::size_t gguf_count(const gguf_file& f, const std::string& key, bool required, std::size_t def) {
  const gguf_value* v = f.find(key);
  if (!v) {
    if (required) throw io_error("gguf '" + f.source() + "': missing metadata key '" + key + "'");
    return def;
  }
  try {
    return std::size_t(v->to_uint64());
  } catch (const value_error&) {
    throw io_error("gguf '" + f.source() + "': metadata key '" + key + "' is " + v->type_str() +
                   ", expected a non-negative integer");
  }
}
PEFT_INLINE double gguf_real(const gguf_file& f, const std::string& key, double def) {
  const gguf_value* v = f.find(key);
  if (!v) return def;
  if (v->type() != gguf_value_type::float32 && v->type() != gguf_value_type::float64)
    throw io_error("gguf '" + f.source() + "': metadata key '" + key + "' is " + v->type_str() + ", expected FLOAT32");
  return v->to_double();
}
PEFT_INLINE void expect_architecture(const gguf_file& f) {
  const gguf_value* a = f.find("general.architecture");
  if (!a || a->type() != gguf_value_type::string || a->get<std::string>() != "llama")
    throw io_error("gguf '" + f.source() + "': general.architecture is " +
                   (a ? (a->type() == gguf_value_type::string ? "'" + a->get<std::string>() + "'" : a->type_str())
                      : std::string("missing")) +
                   ", expected 'llama'");
}
}  // namespace detail

PEFT_INLINE nn::llama_config gguf_llama_config(const gguf_file& f, std::size_t max_seq_cap) {
  detail::expect_architecture(f);
  const std::string w = "gguf '" + f.source() + "'";
  nn::llama_config c;
  c.dim = detail::gguf_count(f, "llama.embedding_length", true);
  c.n_layers = detail::gguf_count(f, "llama.block_count", true);
  c.hidden_dim = detail::gguf_count(f, "llama.feed_forward_length", true);
  c.n_heads = detail::gguf_count(f, "llama.attention.head_count", true);
  c.n_kv_heads = detail::gguf_count(f, "llama.attention.head_count_kv", false, c.n_heads);
  c.max_seq = std::min(detail::gguf_count(f, "llama.context_length", false, 2048), max_seq_cap);
  c.rope_theta = detail::gguf_real(f, "llama.rope.freq_base", 10000.0);
  c.norm_eps = detail::gguf_real(f, "llama.attention.layer_norm_rms_epsilon", 1e-5);
  if (c.dim == 0 || c.n_heads == 0 || c.dim % c.n_heads != 0 || c.n_kv_heads == 0 || c.n_heads % c.n_kv_heads != 0 ||
      (c.dim / c.n_heads) % 2 != 0)
    throw io_error(w + ": embedding_length " + std::to_string(c.dim) + ", head_count " + std::to_string(c.n_heads) +
                   ", head_count_kv " + std::to_string(c.n_kv_heads) +
                   " do not form a valid attention layout (heads of even size, kv heads dividing heads)");
  if (c.hidden_dim == 0) throw io_error(w + ": llama.feed_forward_length is 0");
  if (c.max_seq == 0) throw io_error(w + ": llama.context_length is 0");
  if (!(std::isfinite(c.rope_theta) && c.rope_theta > 0))
    throw io_error(w + ": llama.rope.freq_base " + std::to_string(c.rope_theta) + " is not a positive number");
  if (!(std::isfinite(c.norm_eps) && c.norm_eps >= 0))
    throw io_error(w + ": llama.attention.layer_norm_rms_epsilon " + std::to_string(c.norm_eps) + " is not >= 0");
  const std::size_t hd = c.dim / c.n_heads;
  if (detail::gguf_count(f, "llama.rope.dimension_count", false, hd) != hd)
    throw io_error(w + ": llama.rope.dimension_count differs from the head size " + std::to_string(hd) +
                   " (partial rotary embeddings are not supported)");
  for (const char* k : {"llama.attention.key_length", "llama.attention.value_length"})
    if (detail::gguf_count(f, k, false, hd) != hd)
      throw io_error(w + ": " + k + " differs from embedding_length / head_count = " + std::to_string(hd));
  if (detail::gguf_count(f, "llama.expert_count", false, 0) != 0)
    throw io_error(w + ": mixture-of-experts llama models are not supported");
  if (const gguf_value* s = f.find("llama.rope.scaling.type"))
    if (s->type() != gguf_value_type::string || s->get<std::string>() != "none")
      throw io_error(w + ": rope scaling is not supported");
  const gguf_tensor& emb = f.tensor_at("token_embd.weight");
  if (emb.ne.size() != 2 || emb.ne[0] != c.dim || emb.ne[1] == 0)
    throw io_error(w + ": token_embd.weight has ne " + shape_str(emb.ne) + ", expected [" + std::to_string(c.dim) +
                   ", vocab]");
  c.vocab = std::size_t(emb.ne[1]);
  c.tie_embeddings = !f.has_tensor("output.weight");
  return c;
}
#endif  // !PEFT_COMPILED_LIB || PEFT_UNIT_IO

}  // namespace peft::io
