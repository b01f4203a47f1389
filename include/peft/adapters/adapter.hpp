#pragma once
// The shared adapter lifecycle. An adapter is a module (its parameters have PEFT's names, e.g.
// "lora_A.weight") that computes an adapted Linear layer on plain matrices:
//   fast path   forward(x, W, b) -> y and backward(dy) -> parameter grads, dx, (dW)
// with the frozen base weight W passed in, so a C++ engine with its own layers can call it with
// no autograd at all. adapted_linear (adapted_linear.hpp) wraps it as ONE node on the tape.
// Additive adapters (y = x·Wᵀ + b + Δ(x)) only implement forward_delta/backward_delta; others
// (DoRA) override forward/backward.
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "peft/core/error.hpp"
#include "peft/core/tensor.hpp"
#include "peft/detail/gemm.hpp"
#include "peft/nn/module.hpp"

namespace peft {

// What a forward pass saves for its backward. Each adapter documents which slots it uses.
template <class T>
struct adapter_ctx {
  std::vector<matrix<T>> m;
  std::vector<vector<T>> v;
  std::vector<std::vector<std::size_t>> idx;  // row indices (routing)
  std::vector<adapter_ctx> sub;               // contexts of nested adapters (experts)
  bool training = false;
  bool delta_applied = false;  // the adapter was enabled during forward
};

namespace detail {
template <class T>
void check_layer_shapes(const char* op, matrix_cref<T> x, matrix_cref<T> W,
                        std::size_t in, std::size_t out) {
  if (std::size_t(x.cols()) != in || std::size_t(W.cols()) != in || std::size_t(W.rows()) != out)
    throw shape_error(std::string(op) + ": x [" + std::to_string(x.rows()) + "," +
                      std::to_string(x.cols()) + "], W [" + std::to_string(W.rows()) + "," +
                      std::to_string(W.cols()) + "], adapter expects in=" + std::to_string(in) +
                      ", out=" + std::to_string(out));
}
// Gradient buffer of a parameter, or nullptr when the parameter is frozen.
template <class T>
tensor<T>* grad_target(const variable<T>& v) {
  if (!v.defined() || !v.requires_grad()) return nullptr;
  return &detail::grad_buffer(*v.get());
}
}  // namespace detail

template <class T>
class adapter : public nn::module<T> {
 public:
  adapter(std::size_t in_features, std::size_t out_features)
      : in_(in_features), out_(out_features) {
    if (in_ == 0 || out_ == 0)
      throw value_error("adapter: in_features and out_features must be > 0");
  }

  std::size_t in_features() const { return in_; }
  std::size_t out_features() const { return out_; }

  // PEFT's peft_type ("LORA", "VERA", ...) and a short method name for tables ("lora", "dora").
  virtual std::string peft_type() const = 0;
  virtual std::string method() const = 0;
  std::string type_name() const override { return method(); }

  // Multiplier of the update (alpha / r for LoRA, alpha / sqrt(r) for rsLoRA, ...).
  virtual double scaling() const { return 1.0; }

  bool enabled() const { return enabled_; }
  void set_enabled(bool on) { enabled_ = on; }

  // ---- fast path ----

  // y = adapted layer(x): x [N,in], W [out,in] (base weight), bias [out] or nullptr, y [N,out]
  // (overwritten). Saves what backward needs in ctx.
  virtual void forward(matrix_cref<T> x, matrix_cref<T> W, const T* bias,
                       matrix_ref<T> y, adapter_ctx<T>& ctx, bool training) {
    using detail::trans;
    detail::check_layer_shapes<T>("adapter::forward", x, W, in_, out_);
    detail::gemm<T>(trans::n, trans::t, T(1), x, W, T(0), y, "adapter::forward");
    if (bias) y.rowwise() += const_vector_map<T>(bias, Eigen::Index(out_)).transpose();
    ctx.training = training;
    ctx.delta_applied = enabled_;
    if (enabled_) forward_delta(x, y, ctx, training);
  }

  // Given dy = dL/dy [N,out]: accumulates gradients into this adapter's trainable parameters,
  // and adds dL/dx into *dx and dL/dW into *dW when those are non-null. (Bias grads are the
  // caller's: db = column sums of dy for every adapter.)
  virtual void backward(matrix_cref<T> dy, matrix_cref<T> x, matrix_cref<T> W,
                        const adapter_ctx<T>& ctx, matrix_ref<T>* dx, matrix_ref<T>* dW) {
    using detail::trans;
    if (dx) detail::gemm<T>(trans::n, trans::n, T(1), dy, W, T(1), *dx, "adapter::backward");
    if (dW) detail::gemm<T>(trans::t, trans::n, T(1), dy, x, T(1), *dW, "adapter::backward");
    if (ctx.delta_applied) backward_delta(dy, x, ctx, dx);
  }

  // Additive part: y += Δ(x). Non-additive adapters override forward/backward instead.
  virtual void forward_delta(matrix_cref<T> x, matrix_ref<T> y, adapter_ctx<T>& ctx,
                             bool training) = 0;
  // Backward of the additive part: parameter grads, and dx += dΔ/dx when dx is non-null.
  virtual void backward_delta(matrix_cref<T> dy, matrix_cref<T> x,
                              const adapter_ctx<T>& ctx, matrix_ref<T>* dx) = 0;

  // The dense change this adapter makes to W (merged weight − W), [out, in]. Used by merge,
  // export and tests; never on a training path.
  virtual matrix<T> delta_weight(matrix_cref<T> W) const = 0;

  // Auxiliary loss produced by the last forward (MoE load balancing); adapted_linear exposes it
  // as a variable on the tape. aux_backward adds d(aux)/d(params) · g and, when dx is non-null,
  // d(aux)/dx · g.
  virtual bool has_aux_loss() const { return false; }
  virtual T aux_loss(const adapter_ctx<T>& ctx) const {
    (void)ctx;
    return T(0);
  }
  virtual void aux_backward(T g, matrix_cref<T> x, const adapter_ctx<T>& ctx, matrix_ref<T>* dx) {
    (void)g;
    (void)x;
    (void)ctx;
    (void)dx;
  }

  // Whether delta_weight() exists (an input-dependent update such as MoE cannot be merged).
  virtual bool mergeable() const { return true; }

  // True when delta_weight(W) depends on W itself (DoRA), so unmerge needs the ΔW that was
  // merged rather than a recomputation from the merged weight.
  virtual bool delta_depends_on_weight() const { return false; }

  // Low-rank adapters expose Δ = Bf·Af (scaling folded in) so DoRA can compute row norms and
  // the serving path can batch them without forming Δ. Returns false if not factored.
  virtual bool factors(matrix<T>& Bf, matrix<T>& Af) const {
    (void)Bf;
    (void)Af;
    return false;
  }

 private:
  std::size_t in_, out_;
  bool enabled_ = true;
};

}  // namespace peft
