#pragma once
// A Linear layer with an adapter: the module that injection puts in place of a target Linear.
// Parameter names follow PEFT's in-memory layout: "<module>.base_layer.weight",
// "<module>.lora_A.weight", ... The adapted forward is ONE node on the tape whose backward calls
// the adapter's fused fast path.
#include <cmath>
#include <memory>
#include <optional>
#include <utility>
#include <string>

#include "peft/adapters/adapter.hpp"
#include "peft/autograd/ops/linear.hpp"
#include "peft/nn/linear.hpp"

namespace peft {

template <class T>
class adapted_linear : public nn::unary_module<T> {
 public:
  adapted_linear(std::shared_ptr<nn::linear<T>> base, std::shared_ptr<adapter<T>> a)
      : base_layer(std::move(base)), adapter_(std::move(a)) {
    if (!base_layer || !adapter_) throw value_error("adapted_linear: null base layer or adapter");
    if (base_layer->in_features() != adapter_->in_features() ||
        base_layer->out_features() != adapter_->out_features())
      throw shape_error("adapted_linear: base layer [" + std::to_string(base_layer->out_features()) +
                        "," + std::to_string(base_layer->in_features()) + "] vs adapter [" +
                        std::to_string(adapter_->out_features()) + "," +
                        std::to_string(adapter_->in_features()) + "]");
    this->register_module("base_layer", base_layer);
    // The adapter's parameters appear directly under this module, with the adapter's names.
    for (auto& [name, v] : adapter_->named_parameters()) this->register_parameter(name, v);
  }

  std::string type_name() const override { return adapter_->method() + "_linear"; }
  adapter<T>& get_adapter() { return *adapter_; }
  const adapter<T>& get_adapter() const { return *adapter_; }
  std::shared_ptr<adapter<T>> adapter_ptr() const { return adapter_; }
  std::size_t in_features() const { return base_layer->in_features(); }
  std::size_t out_features() const { return base_layer->out_features(); }

  variable<T> forward(const variable<T>& x) override {
    const std::size_t in = in_features(), out = out_features();
    if (x.ndim() == 0 || x.dim(-1) != in)
      throw shape_error("adapted_linear: input " + shape_str(x.shape()) + " for in_features " +
                        std::to_string(in));
    if (merged_ || !adapter_->enabled()) return peft::linear(x, base_layer->weight, base_layer->bias);

    shape_t ys = x.shape();
    ys.back() = out;
    tensor<T> y = tensor<T>::from_shape(ys);
    auto ctx = std::make_shared<adapter_ctx<T>>();
    const T* bias = base_layer->bias.defined() ? base_layer->bias.value().data() : nullptr;
    adapter_->forward(as_matrix(x.value()), as_matrix(base_layer->weight.value()), bias,
                      as_matrix(y), *ctx, this->is_training());

    std::vector<variable<T>> parents{x, base_layer->weight, base_layer->bias};
    for (auto& [name, v] : adapter_->named_parameters()) parents.push_back(v);
    if (adapter_->has_aux_loss() && ctx->delta_applied) {
      // The auxiliary loss is its own scalar node (parents: x and the adapter's parameters).
      std::vector<variable<T>> aux_parents{x};
      for (auto& [name, v] : adapter_->named_parameters()) aux_parents.push_back(v);
      tensor<T> aux = tensor<T>::from_shape({});
      aux() = adapter_->aux_loss(*ctx);
      last_aux_ = make_result<T>(std::move(aux), std::move(aux_parents), "adapter_aux_loss",
                                 [ctx, a = adapter_](node<T>& self) {
                                   node<T>& px = *self.parents[0];
                                   const auto xm = as_matrix(std::as_const(px.value));
                                   std::optional<matrix_ref<T>> dx;
                                   if (px.requires_grad) dx.emplace(as_matrix(detail::grad_buffer(px)));
                                   a->aux_backward(*self.grad.data(), xm, *ctx, dx ? &*dx : nullptr);
                                 });
    } else {
      last_aux_ = variable<T>();
    }
    return make_result<T>(std::move(y), std::move(parents), "adapted_linear",
                          [ctx, a = adapter_](node<T>& self) {
                            node<T>& px = *self.parents[0];
                            node<T>& pw = *self.parents[1];
                            node<T>* pb = self.parents[2].get();
                            const auto dy = as_matrix(std::as_const(self.grad));
                            const auto xm = as_matrix(std::as_const(px.value));
                            const auto wm = as_matrix(std::as_const(pw.value));
                            std::optional<matrix_ref<T>> dx, dw;
                            if (px.requires_grad) dx.emplace(as_matrix(detail::grad_buffer(px)));
                            if (pw.requires_grad) dw.emplace(as_matrix(detail::grad_buffer(pw)));
                            a->backward(dy, xm, wm, *ctx, dx ? &*dx : nullptr, dw ? &*dw : nullptr);
                            if (pb && pb->requires_grad)
                              as_vector(detail::grad_buffer(*pb)) += dy.colwise().sum().transpose();
                          });
  }

  // The auxiliary loss of the last forward (e.g. MoE load balancing), or an undefined variable.
  const variable<T>& last_aux_loss() const { return last_aux_; }

  // W ← W + ΔW. safe: compute the result first and refuse (throw, W untouched) if any entry is
  // not finite.
  void merge(bool safe = true) {
    if (merged_) throw error("adapted_linear::merge: already merged");
    if (!adapter_->mergeable())
      throw error("adapted_linear::merge: " + adapter_->method() +
                  " has an input-dependent update and cannot be merged");
    auto W = as_matrix(base_layer->weight.value());
    matrix<T> d = adapter_->delta_weight(W);
    if (safe && !(W + d).allFinite())
      throw error("adapted_linear::merge: merged weight [" + std::to_string(W.rows()) + "," +
                  std::to_string(W.cols()) + "] has non-finite values; not merged");
    W += d;
    // Keep ΔW only when it cannot be recomputed from the merged weight (DoRA).
    if (adapter_->delta_depends_on_weight()) merged_delta_ = std::move(d);
    merged_ = true;
  }
  // W ← W − ΔW with the same ΔW that was added (exact inverse up to one rounding per entry).
  void unmerge() {
    if (!merged_) throw error("adapted_linear::unmerge: not merged");
    auto W = as_matrix(base_layer->weight.value());
    if (adapter_->delta_depends_on_weight())
      W -= merged_delta_;
    else
      W -= adapter_->delta_weight(W);
    merged_delta_.resize(0, 0);
    merged_ = false;
  }
  bool merged() const { return merged_; }

  std::shared_ptr<nn::linear<T>> base_layer;

 private:
  std::shared_ptr<adapter<T>> adapter_;
  matrix<T> merged_delta_;
  variable<T> last_aux_;
  bool merged_ = false;
};

}  // namespace peft
