#pragma once
// Feed-forward blocks. Their Linear layers live in unary_module slots registered by name, so an
// adapter can replace e.g. "mlp.gate_proj" in place (module::replace_module).
//   gelu_mlp:   fc2(gelu(fc1(x)))                          (GPT/BERT/ViT style, names fc1, fc2)
//   swiglu_mlp: down_proj(silu(gate_proj(x)) * up_proj(x))  (LlamaMLP, no biases)
#include <cstddef>
#include <memory>
#include <string>

#include "peft/autograd/ops/gelu.hpp"
#include "peft/autograd/ops/mul.hpp"
#include "peft/autograd/ops/silu.hpp"
#include "peft/nn/linear.hpp"
#include "peft/nn/module.hpp"

namespace peft::nn {

template <class T>
class gelu_mlp : public unary_module<T> {
 public:
  gelu_mlp(std::size_t in_features, std::size_t hidden_features, std::size_t out_features,
           rng& g, bool bias = true, gelu_approx approx = gelu_approx::none)
      : approx_(approx) {
    fc1 = std::make_shared<linear<T>>(in_features, hidden_features, bias, g);
    fc2 = std::make_shared<linear<T>>(hidden_features, out_features, bias, g);
    this->register_module("fc1", fc1);
    this->register_module("fc2", fc2);
  }
  std::string type_name() const override { return "gelu_mlp"; }

  variable<T> forward(const variable<T>& x) override {
    return fc2->forward(gelu(fc1->forward(x), approx_));
  }

  std::shared_ptr<unary_module<T>> fc1, fc2;

 private:
  gelu_approx approx_;
};

template <class T>
class swiglu_mlp : public unary_module<T> {
 public:
  swiglu_mlp(std::size_t dim, std::size_t hidden_dim, rng& g) {
    gate_proj = std::make_shared<linear<T>>(dim, hidden_dim, false, g);
    up_proj = std::make_shared<linear<T>>(dim, hidden_dim, false, g);
    down_proj = std::make_shared<linear<T>>(hidden_dim, dim, false, g);
    this->register_module("gate_proj", gate_proj);
    this->register_module("up_proj", up_proj);
    this->register_module("down_proj", down_proj);
  }
  std::string type_name() const override { return "swiglu_mlp"; }

  variable<T> forward(const variable<T>& x) override {
    return down_proj->forward(mul(silu(gate_proj->forward(x)), up_proj->forward(x)));
  }

  std::shared_ptr<unary_module<T>> gate_proj, up_proj, down_proj;
};

}  // namespace peft::nn
