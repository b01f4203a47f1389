#pragma once
// A small Llama-style decoder with Hugging Face parameter names, so state dicts line up with
// LlamaModel / LlamaForCausalLM checkpoints:
//   embed_tokens.weight
//   layers.N.self_attn.{q,k,v,o}_proj.weight
//   layers.N.mlp.{gate,up,down}_proj.weight
//   layers.N.input_layernorm.weight, layers.N.post_attention_layernorm.weight
//   norm.weight, lm_head.weight (absent when tie_embeddings: the logits reuse embed_tokens)
// (HF's LlamaForCausalLM nests all but lm_head under "model."; a loader adds/strips that prefix.)
// Every submodule sits in a registered slot, so any Linear can be replaced by path.
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "peft/autograd/ops/add.hpp"
#include "peft/autograd/ops/linear.hpp"
#include "peft/nn/attention.hpp"
#include "peft/nn/embedding.hpp"
#include "peft/nn/linear.hpp"
#include "peft/nn/mlp.hpp"
#include "peft/nn/module.hpp"
#include "peft/nn/norm.hpp"

namespace peft::nn {

// An indexed container of child modules named "0", "1", ... (torch.nn.ModuleList).
template <class T, class M = module<T>>
class module_list : public module<T> {
 public:
  module_list() = default;

  // Registers m as child "<size()>". (A deque: appending never moves the existing slots, which
  // the registry points at.)
  void append(std::shared_ptr<M> m) {
    items_.push_back(std::move(m));
    this->register_module(std::to_string(items_.size() - 1), items_.back());
  }
  std::size_t size() const { return items_.size(); }
  std::shared_ptr<M>& at(std::size_t i) {
    if (i >= items_.size())
      throw value_error("module_list: index " + std::to_string(i) + " out of range (size " +
                        std::to_string(items_.size()) + ")");
    return items_[i];
  }
  std::shared_ptr<M>& operator[](std::size_t i) { return at(i); }

  std::string type_name() const override { return "module_list"; }

 private:
  std::deque<std::shared_ptr<M>> items_;
};

struct llama_config {
  std::size_t vocab = 0;
  std::size_t dim = 0;
  std::size_t n_layers = 0;
  std::size_t n_heads = 0;
  std::size_t n_kv_heads = 0;  // 0 = n_heads
  std::size_t hidden_dim = 0;  // MLP width (HF intermediate_size)
  std::size_t max_seq = 2048;
  double norm_eps = 1e-6;  // HF rms_norm_eps
  double rope_theta = 10000.0;
  bool tie_embeddings = false;
};

// LlamaDecoderLayer: h = x + self_attn(input_layernorm(x)); y = h + mlp(post_attention_layernorm(h)).
template <class T>
class llama_block : public unary_module<T> {
 public:
  llama_block(const llama_config& cfg, rng& g) {
    attention_config ac;
    ac.dim = cfg.dim;
    ac.n_heads = cfg.n_heads;
    ac.n_kv_heads = cfg.n_kv_heads;
    ac.max_seq = cfg.max_seq;
    ac.rope_theta = cfg.rope_theta;
    self_attn = std::make_shared<causal_self_attention<T>>(ac, g);
    mlp = std::make_shared<swiglu_mlp<T>>(cfg.dim, cfg.hidden_dim, g);
    input_layernorm = std::make_shared<rms_norm<T>>(cfg.dim, cfg.norm_eps);
    post_attention_layernorm = std::make_shared<rms_norm<T>>(cfg.dim, cfg.norm_eps);
    // Registration order = HF state-dict order.
    this->register_module("self_attn", self_attn);
    this->register_module("mlp", mlp);
    this->register_module("input_layernorm", input_layernorm);
    this->register_module("post_attention_layernorm", post_attention_layernorm);
  }
  std::string type_name() const override { return "llama_block"; }

  variable<T> forward(const variable<T>& x) override {
    auto h = add(x, self_attn->forward(input_layernorm->forward(x)));
    return add(h, mlp->forward(post_attention_layernorm->forward(h)));
  }

  std::shared_ptr<unary_module<T>> self_attn, mlp, input_layernorm, post_attention_layernorm;
};

// Decoder-only language model: ids [batch, seq] -> logits [batch, seq, vocab].
template <class T>
class llama : public module<T> {
 public:
  llama(const llama_config& cfg, rng& g) : cfg_(cfg) {
    if (cfg_.n_kv_heads == 0) cfg_.n_kv_heads = cfg_.n_heads;
    if (cfg_.vocab == 0 || cfg_.dim == 0 || cfg_.n_heads == 0 || cfg_.hidden_dim == 0)
      throw value_error("nn::llama: vocab, dim, n_heads and hidden_dim must be > 0 (vocab=" +
                        std::to_string(cfg_.vocab) + ", dim=" + std::to_string(cfg_.dim) +
                        ", n_heads=" + std::to_string(cfg_.n_heads) +
                        ", hidden_dim=" + std::to_string(cfg_.hidden_dim) + ")");
    embed_tokens = std::make_shared<embedding<T>>(cfg_.vocab, cfg_.dim, g);
    layers = std::make_shared<module_list<T, unary_module<T>>>();
    for (std::size_t i = 0; i < cfg_.n_layers; ++i)
      layers->append(std::make_shared<llama_block<T>>(cfg_, g));
    norm = std::make_shared<rms_norm<T>>(cfg_.dim, cfg_.norm_eps);
    this->register_module("embed_tokens", embed_tokens);
    this->register_module("layers", layers);
    this->register_module("norm", norm);
    if (!cfg_.tie_embeddings) {
      lm_head = std::make_shared<linear<T>>(cfg_.dim, cfg_.vocab, false, g);
      this->register_module("lm_head", lm_head);
    }
  }
  std::string type_name() const override { return "llama"; }
  const llama_config& config() const { return cfg_; }

  // Layer i as a llama_block (throws if that slot now holds another type).
  llama_block<T>& block(std::size_t i) {
    auto* b = dynamic_cast<llama_block<T>*>(layers->at(i).get());
    if (!b) throw value_error("nn::llama::block(" + std::to_string(i) + "): not a llama_block");
    return *b;
  }

  // Final hidden states after the last norm: [batch, seq, dim].
  variable<T> hidden_states(const std::vector<std::int64_t>& ids, std::size_t batch,
                            std::size_t seq) {
    if (ids.size() != batch * seq || batch == 0 || seq == 0)
      throw shape_error("nn::llama: " + std::to_string(ids.size()) + " ids for [batch, seq] = [" +
                        std::to_string(batch) + "," + std::to_string(seq) + "]");
    if (seq > cfg_.max_seq)
      throw shape_error("nn::llama: seq " + std::to_string(seq) + " > max_seq " +
                        std::to_string(cfg_.max_seq));
    variable<T> h = embed_tokens->forward(ids, shape_t{batch, seq});
    for (std::size_t i = 0; i < layers->size(); ++i) h = layers->at(i)->forward(h);
    return norm->forward(h);
  }

  // Logits [batch, seq, vocab] for ids laid out row-major as [batch, seq].
  variable<T> forward(const std::vector<std::int64_t>& ids, std::size_t batch, std::size_t seq) {
    auto h = hidden_states(ids, batch, seq);
    if (lm_head) return lm_head->forward(h);
    return peft::linear(h, embed_tokens->weight);
  }
  variable<T> operator()(const std::vector<std::int64_t>& ids, std::size_t batch,
                         std::size_t seq) {
    return forward(ids, batch, seq);
  }

  std::shared_ptr<embedding<T>> embed_tokens;
  std::shared_ptr<module_list<T, unary_module<T>>> layers;
  std::shared_ptr<unary_module<T>> norm;
  std::shared_ptr<unary_module<T>> lm_head;  // null when tie_embeddings

 private:
  llama_config cfg_;
};

}  // namespace peft::nn
