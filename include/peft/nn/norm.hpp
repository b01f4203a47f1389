#pragma once
// Normalisation over the last dimension: layer_norm (torch.nn.LayerNorm) and rms_norm
// (LlamaRMSNorm: x * rsqrt(mean(x²) + eps) * weight). Each is one fused node with a hand-written
// backward (checked against finite differences in the tests): a composition of primitives would
// record ~7 nodes and as many full-size temporaries per call.
#include <cstddef>
#include <string>

#include "peft/autograd/variable.hpp"
#include "peft/nn/module.hpp"

namespace peft::nn {

namespace functional {

namespace detail {
template <class T>
std::size_t norm_rows(const variable<T>& x, const variable<T>& w, const variable<T>& b,
                      const char* op) {
  const shape_t sx = x.shape();
  if (sx.empty() || sx.back() == 0)
    throw shape_error(std::string(op) + ": input " + shape_str(sx) + " has no last dim");
  const std::size_t d = sx.back();
  if (w.defined() && w.shape() != shape_t{d})
    throw shape_error(std::string(op) + ": weight " + shape_str(w.shape()) + " for input " +
                      shape_str(sx));
  if (b.defined() && b.shape() != shape_t{d})
    throw shape_error(std::string(op) + ": bias " + shape_str(b.shape()) + " for input " +
                      shape_str(sx));
  return x.numel() / d;
}
}  // namespace detail

// y = x / sqrt(mean(x², last dim) + eps) * weight; weight [d] may be undefined (no scale).
template <class T>
variable<T> rms_norm(const variable<T>& x, const variable<T>& weight, double eps) {
  const std::size_t rows = detail::norm_rows(x, weight, variable<T>(), "rms_norm");
  const std::size_t d = x.dim(-1);
  const auto X = as_matrix(x.value(), rows, d);
  // r = 1/sqrt(ms + eps) per row, kept for the backward pass.
  peft::vector<T> r =
      ((X.array().square().rowwise().sum() / T(d)) + T(eps)).rsqrt().matrix();
  tensor<T> y = tensor<T>::from_shape(x.value().shape());
  auto Y = as_matrix(y, rows, d);
  Y.array() = X.array().colwise() * r.array();
  if (weight.defined()) Y.array().rowwise() *= as_vector(weight.value()).array().transpose();

  return make_result<T>(
      std::move(y), {x, weight}, "rms_norm", [rows, d, r = std::move(r)](node<T>& self) {
        auto& px = *self.parents[0];
        node<T>* pw = self.parents[1].get();
        const auto G = as_matrix(self.grad, rows, d);
        const auto Xp = as_matrix(px.value, rows, d);
        if (px.requires_grad) {
          // dx = r·(g⊙w) − x·r³·mean((g⊙w)⊙x)
          matrix<T> gw = G;
          if (pw) gw.array().rowwise() *= as_vector(pw->value).array().transpose();
          const peft::vector<T> dot = (gw.array() * Xp.array()).rowwise().sum().matrix();
          const peft::vector<T> c = (r.array().cube() * dot.array() / T(d)).matrix();
          as_matrix(peft::detail::grad_buffer(px), rows, d).array() +=
              gw.array().colwise() * r.array() - Xp.array().colwise() * c.array();
        }
        if (pw && pw->requires_grad)
          as_vector(peft::detail::grad_buffer(*pw)) +=
              ((G.array() * Xp.array()).colwise() * r.array()).colwise().sum().transpose().matrix();
      });
}

// y = (x − mean) / sqrt(var + eps) * weight + bias over the last dim (biased variance, like
// PyTorch). weight and bias [d] may each be undefined.
template <class T>
variable<T> layer_norm(const variable<T>& x, const variable<T>& weight, const variable<T>& bias,
                       double eps) {
  const std::size_t rows = detail::norm_rows(x, weight, bias, "layer_norm");
  const std::size_t d = x.dim(-1);
  const auto X = as_matrix(x.value(), rows, d);
  const peft::vector<T> mu = X.rowwise().mean();
  matrix<T> xhat = X.colwise() - mu;
  peft::vector<T> rstd =
      ((xhat.array().square().rowwise().sum() / T(d)) + T(eps)).rsqrt().matrix();
  xhat.array().colwise() *= rstd.array();
  tensor<T> y = tensor<T>::from_shape(x.value().shape());
  auto Y = as_matrix(y, rows, d);
  Y = xhat;
  if (weight.defined()) Y.array().rowwise() *= as_vector(weight.value()).array().transpose();
  if (bias.defined()) Y.rowwise() += as_vector(bias.value()).transpose();

  return make_result<T>(std::move(y), {x, weight, bias}, "layer_norm",
                        [rows, d, xhat = std::move(xhat), rstd = std::move(rstd)](node<T>& self) {
                          auto& px = *self.parents[0];
                          node<T>* pw = self.parents[1].get();
                          node<T>* pb = self.parents[2].get();
                          const auto G = as_matrix(self.grad, rows, d);
                          if (px.requires_grad) {
                            // dx = rstd·(gw − mean(gw) − x̂·mean(gw⊙x̂)), gw = g⊙w
                            matrix<T> gw = G;
                            if (pw) gw.array().rowwise() *= as_vector(pw->value).array().transpose();
                            const peft::vector<T> m1 = gw.rowwise().mean();
                            const peft::vector<T> m2 =
                                (gw.array() * xhat.array()).rowwise().mean().matrix();
                            gw.colwise() -= m1;
                            gw.array() -= xhat.array().colwise() * m2.array();
                            gw.array().colwise() *= rstd.array();
                            as_matrix(peft::detail::grad_buffer(px), rows, d) += gw;
                          }
                          if (pw && pw->requires_grad)
                            as_vector(peft::detail::grad_buffer(*pw)) +=
                                (G.array() * xhat.array()).colwise().sum().transpose().matrix();
                          if (pb && pb->requires_grad)
                            as_vector(peft::detail::grad_buffer(*pb)) +=
                                G.colwise().sum().transpose();
                        });
}

}  // namespace functional

// torch.nn.LayerNorm(dim, eps, elementwise_affine): parameters "weight" (ones) and "bias" (zeros).
template <class T>
class layer_norm : public unary_module<T> {
 public:
  explicit layer_norm(std::size_t dim, double eps = 1e-5, bool affine = true) : eps_(eps) {
    if (dim == 0) throw value_error("nn::layer_norm: dim = 0");
    if (!(eps >= 0)) throw value_error("nn::layer_norm: eps = " + std::to_string(eps));
    dim_ = dim;
    if (affine) {
      weight = this->register_parameter("weight", ones<T>({dim}));
      bias = this->register_parameter("bias", zeros<T>({dim}));
    }
  }
  std::string type_name() const override { return "layer_norm"; }
  std::size_t dim() const { return dim_; }
  double eps() const { return eps_; }

  variable<T> forward(const variable<T>& x) override {
    if (x.ndim() == 0 || x.dim(-1) != dim_)
      throw shape_error("nn::layer_norm(dim=" + std::to_string(dim_) + "): input " +
                        shape_str(x.shape()));
    return functional::layer_norm(x, weight, bias, eps_);
  }

  variable<T> weight;  // [dim] or undefined (affine = false)
  variable<T> bias;    // [dim] or undefined

 private:
  std::size_t dim_;
  double eps_;
};

// LlamaRMSNorm(dim, eps): parameter "weight" (ones).
template <class T>
class rms_norm : public unary_module<T> {
 public:
  explicit rms_norm(std::size_t dim, double eps = 1e-6) : dim_(dim), eps_(eps) {
    if (dim == 0) throw value_error("nn::rms_norm: dim = 0");
    if (!(eps >= 0)) throw value_error("nn::rms_norm: eps = " + std::to_string(eps));
    weight = this->register_parameter("weight", ones<T>({dim}));
  }
  std::string type_name() const override { return "rms_norm"; }
  std::size_t dim() const { return dim_; }
  double eps() const { return eps_; }

  variable<T> forward(const variable<T>& x) override {
    if (x.ndim() == 0 || x.dim(-1) != dim_)
      throw shape_error("nn::rms_norm(dim=" + std::to_string(dim_) + "): input " +
                        shape_str(x.shape()));
    return functional::rms_norm(x, weight, eps_);
  }

  variable<T> weight;  // [dim]

 private:
  std::size_t dim_;
  double eps_;
};

}  // namespace peft::nn
