#pragma once
// A whole model with a different adapter per sequence. install_mixed_linears() replaces target
// nn::linear modules of a model by path (as injection does, module.hpp's replace_module) with
// mixed_linear modules that keep the original Linear (and so its weights, no copy) as
// "base_layer". A mixed_linear reads the batch's adapters from the adapter_batch made active on
// the calling thread by an adapter_batch_scope, looks up its own layer path in each of them and
// runs the mixed kernel (mixed_batch.hpp). Without an active batch, or when every row is -1, it is
// exactly the base Linear (autograd path included).
//
//   serve::install_mixed_linears(model);                  // all Linears but lm_head
//   serve::adapter_batch<float> b;
//   b.push(registry.get("alice"));  b.push(nullptr);  b.push(registry.get("bob"));
//   tensor<float> logits = serve::forward_with_adapters(model, ids, 3, seq, b);
//
// The per-row path is inference only: with gradient recording on and a parent requiring grad it
// throws rather than cut the graph silently (forward_with_adapters runs under no_grad_guard).
// The active batch is thread-local, so several threads may run batches through one model as far
// as the model's other modules allow; a batch holds shared_ptr snapshots of its adapters, so the
// registry may unload or hot-swap them meanwhile.
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "peft/adapters/inject.hpp"
#include "peft/autograd/variable.hpp"
#include "peft/nn/linear.hpp"
#include "peft/nn/module.hpp"
#include "peft/nn/transformer.hpp"
#include "peft/serve/mixed_batch.hpp"
#include "peft/serve/served_adapter.hpp"

namespace peft::serve {

// The adapters of one batch: a list of distinct adapters (slots) and, per row of the batch's
// first dimension (a sequence of [batch, seq, dim] activations, or a row of [rows, dim]), the slot
// it uses or -1 for the base model.
template <class T>
class adapter_batch {
 public:
  using handle = std::shared_ptr<const served_adapter<T>>;

  // The slot of `a` (added on first use); -1 for null.
  int slot(const handle& a) {
    if (!a) return -1;
    for (std::size_t i = 0; i < adapters_.size(); ++i)
      if (adapters_[i] == a) return int(i);
    adapters_.push_back(a);
    return int(adapters_.size() - 1);
  }
  // Appends one row (sequence) using `a`, or the base model when a is null.
  void push(const handle& a) { ids_.push_back(slot(a)); }
  // Appends one row with an explicit id (validated by the forward, which names a bad one).
  void push_id(int id) { ids_.push_back(id); }
  void clear() {
    adapters_.clear();
    ids_.clear();
  }

  std::size_t size() const { return ids_.size(); }
  const std::vector<int>& ids() const { return ids_; }
  std::vector<int>& ids() { return ids_; }
  const std::vector<handle>& adapters() const { return adapters_; }
  bool all_base() const {
    for (int id : ids_)
      if (id != -1) return false;
    return true;
  }

 private:
  std::vector<handle> adapters_;
  std::vector<int> ids_;
};

namespace detail {
template <class T>
const adapter_batch<T>*& active_batch() {
  thread_local const adapter_batch<T>* b = nullptr;
  return b;
}
}  // namespace detail

// Makes `b` the batch that mixed_linear modules on this thread use, until the scope ends
// (scopes nest). b must outlive the scope.
template <class T>
class adapter_batch_scope {
 public:
  explicit adapter_batch_scope(const adapter_batch<T>& b) : prev_(detail::active_batch<T>()) {
    detail::active_batch<T>() = &b;
  }
  ~adapter_batch_scope() { detail::active_batch<T>() = prev_; }
  adapter_batch_scope(const adapter_batch_scope&) = delete;
  adapter_batch_scope& operator=(const adapter_batch_scope&) = delete;

 private:
  const adapter_batch<T>* prev_;
};

template <class T>
const adapter_batch<T>* active_adapter_batch() {
  return detail::active_batch<T>();
}

template <class T>
class mixed_linear : public nn::unary_module<T> {
 public:
  // path: the layer path adapters name it by ("layers.0.self_attn.q_proj").
  mixed_linear(std::shared_ptr<nn::linear<T>> base, std::string path)
      : base_layer(std::move(base)), path_(std::move(path)) {
    if (!base_layer) throw value_error("serve::mixed_linear: null base layer for '" + path_ + "'");
    this->register_module("base_layer", base_layer);
  }

  std::string type_name() const override { return "mixed_linear"; }
  const std::string& path() const { return path_; }
  std::size_t in_features() const { return base_layer->in_features(); }
  std::size_t out_features() const { return base_layer->out_features(); }

  variable<T> forward(const variable<T>& x) override {
    const std::size_t in = in_features(), out = out_features();
    if (x.ndim() == 0 || x.dim(-1) != in)
      throw shape_error("serve::mixed_linear '" + path_ + "': input " + shape_str(x.shape()) + " for in_features " +
                        std::to_string(in));
    const adapter_batch<T>* b = detail::active_batch<T>();
    if (!b || b->all_base()) return base_layer->forward(x);

    const variable<T>& W = base_layer->weight;
    const variable<T>& bias = base_layer->bias;
    if (grad_enabled() && (x.requires_grad() || W.requires_grad() || (bias.defined() && bias.requires_grad())))
      throw error("serve::mixed_linear '" + path_ +
                  "': the per-row adapter path is inference only; run it under no_grad_guard "
                  "(forward_with_adapters does)");
    const std::size_t lead = x.ndim() == 1 ? 1 : x.dim(0);
    const std::size_t rows = x.numel() / in;
    if (b->size() != lead)
      throw shape_error("serve::mixed_linear '" + path_ + "': " + std::to_string(b->size()) +
                        " adapter ids for input " + shape_str(x.shape()) + " (one per entry of the first dimension)");
    const std::size_t per = lead ? rows / lead : 0;
    thread_local std::vector<int> row_ids;
    thread_local std::vector<const layer_adapter<T>*> layers;
    thread_local mixed_workspace<T> ws;
    row_ids.resize(rows);
    for (std::size_t s = 0; s < lead; ++s)
      std::fill_n(row_ids.begin() + std::ptrdiff_t(s * per), per, b->ids()[s]);
    layers.clear();
    for (auto& a : b->adapters()) layers.push_back(a ? a->find(path_) : nullptr);

    shape_t ys = x.shape();
    ys.back() = out;
    tensor<T> y = tensor<T>::from_shape(ys);
    const T* bp = bias.defined() ? bias.value().data() : nullptr;
    try {
      mixed_linear_forward<T>(as_matrix(x.value()), as_matrix(W.value()), bp, row_ids, layers, as_matrix(y), ws);
    } catch (const shape_error& e) {
      throw shape_error("serve::mixed_linear '" + path_ + "': " + e.what());
    } catch (const value_error& e) {
      throw value_error("serve::mixed_linear '" + path_ + "': " + e.what());
    }
    return variable<T>(std::move(y), false);
  }

  std::shared_ptr<nn::linear<T>> base_layer;

 private:
  std::string path_;
};

// Replaces every nn::linear selected by `targets` (inject.hpp's matching rules; "all-linear"
// skips lm_head) with a mixed_linear named by its path. Returns the paths; value_error if none
// matched. Layers that are already mixed_linear are left alone.
template <class T>
std::vector<std::string> install_mixed_linears(nn::module<T>& model,
                                               const target_modules& targets = target_modules::all_linear_layers()) {
  inject_options opt;
  opt.targets = targets;
  std::vector<std::pair<std::string, std::shared_ptr<nn::linear<T>>>> found;
  for (auto& [path, m] : model.named_modules()) {
    if (path.empty() || peft::detail::last_component(path) == "base_layer") continue;
    if (!dynamic_cast<nn::linear<T>*>(m) || !is_target<T>(path, opt.targets, opt)) continue;
    found.emplace_back(path, std::dynamic_pointer_cast<nn::linear<T>>(model.find_module(path)));
  }
  if (found.empty()) throw value_error("serve::install_mixed_linears: no Linear layer of the model matches the targets");
  std::vector<std::string> paths;
  for (auto& [path, lin] : found) {
    model.replace_module(path, std::make_shared<mixed_linear<T>>(lin, path));
    paths.push_back(path);
  }
  return paths;
}

// Puts the original Linear layers back. Returns how many were restored.
template <class T>
std::size_t uninstall_mixed_linears(nn::module<T>& model) {
  std::vector<std::pair<std::string, std::shared_ptr<nn::linear<T>>>> found;
  for (auto& [path, m] : model.named_modules())
    if (auto* ml = dynamic_cast<mixed_linear<T>*>(m)) found.emplace_back(path, ml->base_layer);
  for (auto& [path, lin] : found) model.replace_module(path, lin);
  return found.size();
}

// Paths of the model's mixed_linear layers.
template <class T>
std::set<std::string> mixed_linear_paths(nn::module<T>& model) {
  std::set<std::string> out;
  for (auto& [path, m] : model.named_modules())
    if (dynamic_cast<mixed_linear<T>*>(m)) out.insert(path);
  return out;
}

// Throws value_error unless every layer of every adapter in `b` is a mixed_linear of the model
// (an adapter layer with no mixed_linear would silently run as the base).
template <class T>
void check_batch_fits(nn::module<T>& model, const adapter_batch<T>& b) {
  const auto paths = mixed_linear_paths(model);
  for (auto& a : b.adapters()) {
    if (!a) continue;
    for (auto& [path, l] : a->layers)
      if (!paths.count(path))
        throw value_error("serve: adapter '" + a->name + "' adapts layer '" + path +
                          "', which is not a mixed_linear of the model (install_mixed_linears with that target)");
  }
}

// Logits [batch, seq, vocab] of an nn::llama for token ids [batch, seq] (row-major), sequence i
// run with adapter slot b.ids()[i] (or the base). No graph is recorded.
template <class T>
tensor<T> forward_with_adapters(nn::llama<T>& model, const std::vector<std::int64_t>& ids, std::size_t batch,
                                std::size_t seq, const adapter_batch<T>& b) {
  if (b.size() != batch)
    throw shape_error("serve::forward_with_adapters: " + std::to_string(b.size()) + " adapter ids for batch " +
                      std::to_string(batch));
  check_batch_fits(model, b);
  no_grad_guard ng;
  adapter_batch_scope<T> scope(b);
  return model.forward(ids, batch, seq).value();
}

}  // namespace peft::serve
