#pragma once
// nn::linear: y = x·Wᵀ + b with PyTorch's layout (weight [out, in], bias [out]) and PyTorch's
// default initialisation, so weights and state dicts interchange with torch.nn.Linear.
// The forward pass is the single `peft::linear` node (no transpose copy of W).
#include <cmath>
#include <cstddef>
#include <string>

#include "peft/autograd/ops/linear.hpp"
#include "peft/core/random.hpp"
#include "peft/nn/module.hpp"

namespace peft::nn {

template <class T>
class linear : public unary_module<T> {
 public:
  // torch.nn.Linear init: weight ~ kaiming_uniform(a = sqrt(5)) (bound 1/sqrt(in)),
  // bias ~ U(-1/sqrt(in), 1/sqrt(in)). Draws the weight (row-major) then the bias from g.
  linear(std::size_t in_features, std::size_t out_features, bool with_bias, rng& g) {
    if (in_features == 0 || out_features == 0)
      throw value_error("nn::linear: in_features = " + std::to_string(in_features) +
                        ", out_features = " + std::to_string(out_features) + " (must be > 0)");
    tensor<T> w = tensor<T>::from_shape({out_features, in_features});
    fill_kaiming_uniform(w, std::sqrt(5.0), g);
    weight = this->register_parameter("weight", std::move(w));
    if (with_bias) {
      const double bound = 1.0 / std::sqrt(double(in_features));
      tensor<T> b = tensor<T>::from_shape({out_features});
      fill_uniform(b, -bound, bound, g);
      bias = this->register_parameter("bias", std::move(b));
    }
  }
  linear(std::size_t in_features, std::size_t out_features, rng& g)
      : linear(in_features, out_features, true, g) {}

  // Wraps existing tensors/variables (loaded weights, tied weights). bias may be undefined.
  explicit linear(variable<T> w, variable<T> b = {}) {
    if (!w.defined() || w.ndim() != 2)
      throw shape_error("nn::linear: weight must be 2-D [out, in], got " +
                        (w.defined() ? shape_str(w.shape()) : std::string("undefined")));
    if (b.defined() && b.shape() != shape_t{w.dim(0)})
      throw shape_error("nn::linear: bias " + shape_str(b.shape()) + " for weight " +
                        shape_str(w.shape()));
    weight = this->register_parameter("weight", std::move(w));
    if (b.defined()) bias = this->register_parameter("bias", std::move(b));
  }

  std::string type_name() const override { return "linear"; }

  std::size_t in_features() const { return weight.dim(1); }
  std::size_t out_features() const { return weight.dim(0); }
  bool has_bias() const { return bias.defined(); }

  variable<T> forward(const variable<T>& x) override {
    if (x.ndim() == 0 || x.dim(-1) != in_features())
      throw shape_error("nn::linear(in=" + std::to_string(in_features()) +
                        ", out=" + std::to_string(out_features()) + "): input " +
                        shape_str(x.shape()) + " has last dim != " +
                        std::to_string(in_features()));
    return peft::linear(x, weight, bias);
  }

  variable<T> weight;  // [out, in]
  variable<T> bias;    // [out], undefined when constructed without bias
};

}  // namespace peft::nn
