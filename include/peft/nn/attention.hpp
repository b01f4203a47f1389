#pragma once
// Causal multi-head self-attention as in Hugging Face's LlamaAttention: q/k/v/o projections
// (replaceable by path, e.g. "self_attn.q_proj", so adapters can wrap them), rotary position
// embeddings (rotate-half convention), grouped-query attention (n_kv_heads divides n_heads,
// query head h reads key/value head h / (n_heads / n_kv_heads)), causal softmax attention.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>

#include "peft/autograd/ops/matmul.hpp"
#include "peft/autograd/ops/mul.hpp"
#include "peft/autograd/ops/permute.hpp"
#include "peft/autograd/ops/reshape.hpp"
#include "peft/autograd/ops/softmax.hpp"
#include "peft/autograd/ops/transpose.hpp"
#include "peft/autograd/ops/where.hpp"
#include "peft/nn/linear.hpp"
#include "peft/nn/module.hpp"

namespace peft::nn {

namespace functional {

// cos/sin of the rotary angles, [max_seq, head_dim / 2]: angle(p, i) = p · theta^(−2i/head_dim)
// (HF's inv_freq; HF stores each half twice, which is the same numbers).
template <class T>
struct rope_table {
  // Shared and immutable: every rope node's closure keeps them alive without a copy.
  std::shared_ptr<const tensor<T>> cos;  // [max_seq, head_dim / 2]
  std::shared_ptr<const tensor<T>> sin;
  std::size_t head_dim = 0;
  std::size_t max_seq = 0;
};

template <class T>
rope_table<T> make_rope_table(std::size_t head_dim, std::size_t max_seq, double theta = 10000.0) {
  if (head_dim == 0 || head_dim % 2 != 0)
    throw value_error("make_rope_table: head_dim = " + std::to_string(head_dim) +
                      " (must be even and > 0)");
  if (!(theta > 0)) throw value_error("make_rope_table: theta = " + std::to_string(theta));
  const std::size_t h = head_dim / 2;
  rope_table<T> t;
  t.head_dim = head_dim;
  t.max_seq = max_seq;
  tensor<T> c = tensor<T>::from_shape({max_seq, h});
  tensor<T> s = tensor<T>::from_shape({max_seq, h});
  for (std::size_t i = 0; i < h; ++i) {
    const double inv_freq = 1.0 / std::pow(theta, double(2 * i) / double(head_dim));
    for (std::size_t p = 0; p < max_seq; ++p) {
      const double a = double(p) * inv_freq;
      c(p, i) = T(std::cos(a));
      s(p, i) = T(std::sin(a));
    }
  }
  t.cos = std::make_shared<const tensor<T>>(std::move(c));
  t.sin = std::make_shared<const tensor<T>>(std::move(s));
  return t;
}

// Rotary embedding of x [..., seq, head_dim]; row s is at position offset + s. With x = [x1, x2]
// (halves): y = [x1·cos − x2·sin, x2·cos + x1·sin] (= x·cos + rotate_half(x)·sin). One node; the
// backward pass is the inverse rotation.
template <class T>
variable<T> rope(const variable<T>& x, const rope_table<T>& table, std::size_t offset = 0) {
  if (!table.cos || !table.sin) throw value_error("rope: empty rope_table");
  const shape_t sx = x.shape();
  if (sx.size() < 2 || sx.back() != table.head_dim)
    throw shape_error("rope: input " + shape_str(sx) + " needs [..., seq, " +
                      std::to_string(table.head_dim) + "]");
  const std::size_t seq = sx[sx.size() - 2], hd = sx.back(), h = hd / 2;
  if (offset + seq > table.max_seq)
    throw shape_error("rope: positions up to " + std::to_string(offset + seq) + " for input " +
                      shape_str(sx) + " exceed the table's max_seq " +
                      std::to_string(table.max_seq));
  const std::size_t rows = x.numel() / hd;
  const auto C = table.cos, S = table.sin;
  auto apply = [rows, seq, hd, h, offset](const tensor<T>& cos, const tensor<T>& sin,
                                          const tensor<T>& in, tensor<T>& out, bool inverse) {
    const auto Ct = as_matrix(cos), St = as_matrix(sin);
    const auto X = as_matrix(in, rows, hd);
    auto Y = as_matrix(out, rows, hd);
    for (std::size_t r = 0; r < rows; ++r) {
      const Eigen::Index p = Eigen::Index(offset + r % seq), n = Eigen::Index(h);
      const auto c = Ct.row(p).array();
      const auto s = St.row(p).array();
      const auto x1 = X.row(Eigen::Index(r)).head(n).array();
      const auto x2 = X.row(Eigen::Index(r)).tail(n).array();
      if (!inverse) {
        Y.row(Eigen::Index(r)).head(n).array() += x1 * c - x2 * s;
        Y.row(Eigen::Index(r)).tail(n).array() += x2 * c + x1 * s;
      } else {
        Y.row(Eigen::Index(r)).head(n).array() += x1 * c + x2 * s;
        Y.row(Eigen::Index(r)).tail(n).array() += x2 * c - x1 * s;
      }
    }
  };
  tensor<T> y = zeros<T>(sx);
  apply(*C, *S, x.value(), y, false);
  return make_result<T>(std::move(y), {x}, "rope", [apply, C, S](node<T>& self) {
    auto& px = *self.parents[0];
    if (px.requires_grad) apply(*C, *S, self.grad, peft::detail::grad_buffer(px), true);
  });
}

}  // namespace functional

struct attention_config {
  std::size_t dim = 0;         // model width (input and output)
  std::size_t n_heads = 0;     // query heads; head_dim = dim / n_heads
  std::size_t n_kv_heads = 0;  // key/value heads (0 = n_heads); must divide n_heads
  std::size_t max_seq = 2048;  // longest sequence (rope table size)
  double rope_theta = 10000.0;
  bool bias = false;  // biases on q/k/v/o (HF attention_bias)
};

template <class T>
class causal_self_attention : public unary_module<T> {
 public:
  causal_self_attention(const attention_config& cfg, rng& g) : cfg_(cfg) {
    if (cfg_.n_kv_heads == 0) cfg_.n_kv_heads = cfg_.n_heads;
    const auto bad = [&](const std::string& why) {
      return value_error("nn::causal_self_attention(dim=" + std::to_string(cfg_.dim) +
                         ", n_heads=" + std::to_string(cfg_.n_heads) +
                         ", n_kv_heads=" + std::to_string(cfg_.n_kv_heads) + "): " + why);
    };
    if (cfg_.dim == 0 || cfg_.n_heads == 0) throw bad("dim and n_heads must be > 0");
    if (cfg_.dim % cfg_.n_heads != 0) throw bad("n_heads must divide dim");
    if (cfg_.n_heads % cfg_.n_kv_heads != 0) throw bad("n_kv_heads must divide n_heads");
    if ((cfg_.dim / cfg_.n_heads) % 2 != 0) throw bad("head_dim must be even (rotary)");
    if (cfg_.max_seq == 0) throw bad("max_seq must be > 0");
    const std::size_t hd = head_dim();
    q_proj = std::make_shared<linear<T>>(cfg_.dim, cfg_.n_heads * hd, cfg_.bias, g);
    k_proj = std::make_shared<linear<T>>(cfg_.dim, cfg_.n_kv_heads * hd, cfg_.bias, g);
    v_proj = std::make_shared<linear<T>>(cfg_.dim, cfg_.n_kv_heads * hd, cfg_.bias, g);
    o_proj = std::make_shared<linear<T>>(cfg_.n_heads * hd, cfg_.dim, cfg_.bias, g);
    this->register_module("q_proj", q_proj);
    this->register_module("k_proj", k_proj);
    this->register_module("v_proj", v_proj);
    this->register_module("o_proj", o_proj);
    rope_ = functional::make_rope_table<T>(hd, cfg_.max_seq, cfg_.rope_theta);
  }
  causal_self_attention(std::size_t dim, std::size_t n_heads, std::size_t n_kv_heads, rng& g)
      : causal_self_attention(attention_config{dim, n_heads, n_kv_heads}, g) {}

  std::string type_name() const override { return "causal_self_attention"; }

  const attention_config& config() const { return cfg_; }
  std::size_t head_dim() const { return cfg_.dim / cfg_.n_heads; }
  const functional::rope_table<T>& rope_table() const { return rope_; }

  // x [batch, seq, dim] -> [batch, seq, dim]; position of token s is s.
  variable<T> forward(const variable<T>& x) override {
    if (x.ndim() != 3 || x.dim(2) != cfg_.dim)
      throw shape_error("nn::causal_self_attention(dim=" + std::to_string(cfg_.dim) +
                        "): input " + shape_str(x.shape()) + " (expects [batch, seq, " +
                        std::to_string(cfg_.dim) + "])");
    if (x.dim(1) > cfg_.max_seq)
      throw shape_error("nn::causal_self_attention: input " + shape_str(x.shape()) +
                        " is longer than max_seq " + std::to_string(cfg_.max_seq));
    using idx = std::ptrdiff_t;
    const std::size_t B = x.dim(0), S = x.dim(1), H = cfg_.n_heads, KV = cfg_.n_kv_heads,
                      hd = head_dim(), rep = H / KV;

    // [B, S, heads*hd] -> [B, heads, S, hd], then rotate q and k.
    auto heads = [&](const variable<T>& t, std::size_t nh) {
      return permute(reshape(t, {idx(B), idx(S), idx(nh), idx(hd)}), {0, 2, 1, 3});
    };
    auto q = functional::rope(heads(q_proj->forward(x), H), rope_);
    auto k = functional::rope(heads(k_proj->forward(x), KV), rope_);
    auto v = heads(v_proj->forward(x), KV);

    // Grouped-query attention without repeating k/v: the rep query heads that share a kv head
    // are consecutive, so q viewed as [B*KV, rep*S, hd] lines up with k, v as [B*KV, S, hd].
    auto q3 = reshape(q, {idx(B * KV), idx(rep * S), idx(hd)});
    auto k3 = reshape(k, {idx(B * KV), idx(S), idx(hd)});
    auto v3 = reshape(v, {idx(B * KV), idx(S), idx(hd)});
    auto scores = mul(matmul(q3, transpose(k3)), T(1.0 / std::sqrt(double(hd))));
    scores = masked_fill(scores, causal_mask(rep, S), std::numeric_limits<T>::lowest());
    auto ctx = matmul(softmax(scores, -1), v3);  // [B*KV, rep*S, hd]
    ctx = permute(reshape(ctx, {idx(B), idx(H), idx(S), idx(hd)}), {0, 2, 1, 3});
    return o_proj->forward(reshape(ctx, {idx(B), idx(S), idx(H * hd)}));
  }

  std::shared_ptr<unary_module<T>> q_proj, k_proj, v_proj, o_proj;

 private:
  // [rep*S, S]: row r*S + i (query position i) masks keys j > i.
  static tensor<std::uint8_t> causal_mask(std::size_t rep, std::size_t S) {
    tensor<std::uint8_t> m = tensor<std::uint8_t>::from_shape({rep * S, S});
    for (std::size_t r = 0; r < rep * S; ++r)
      for (std::size_t j = 0; j < S; ++j) m(r, j) = std::uint8_t(j > r % S);
    return m;
  }

  attention_config cfg_;
  functional::rope_table<T> rope_;
};

}  // namespace peft::nn
