#pragma once
// The 2-layer Llama configuration the serve tests build models from (dim 16, 4 heads over 2 KV
// heads, so grouped-query attention and the q/k RoPE permutation are both exercised).
#include <cstddef>

#include "peft/nn/transformer.hpp"

namespace peft::test {

inline nn::llama_config tiny_llama_config(std::size_t vocab) {
  nn::llama_config c;
  c.vocab = vocab;
  c.dim = 16;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.hidden_dim = 24;
  c.max_seq = 16;
  return c;
}

}  // namespace peft::test
