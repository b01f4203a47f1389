#pragma once
// What the data-driven inits need from a model, and injection helpers that use it:
//
//   full_weight_gradients(model, paths, fn)  ∂L/∂W [out, in] of each target Linear's weight
//       (LoRA-GA, LoRA-One, LoRA-SB), as PEFT's preprocess_loraga / estimate_gradients
//   layer_inputs(model, paths, fn)           the rows each target Linear sees, stacked [N, in]
//       (EVA), as PEFT's forward hooks in get_eva_state_dict
//   inject_lora_ga / inject_lora_one / inject_lora_sb / inject_eva
//       collect, build one init policy per layer, inject (inject.hpp)
//
// `fn` is the user's batch: it runs the model and, for gradients, returns the scalar loss.
// Both collectors leave the model exactly as they found it (modules, trainable flags, grads),
// also when fn throws.
#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "peft/adapters/adapted_linear.hpp"
#include "peft/adapters/inject.hpp"
#include "peft/adapters/lora.hpp"
#include "peft/adapters/lora_xs.hpp"
#include "peft/init/activation.hpp"
#include "peft/init/gradient.hpp"
#include "peft/nn/linear.hpp"

namespace peft {

namespace detail {

// Stands in for a Linear while recording its inputs. It IS a linear (sharing the original's
// weight and bias nodes), so it fits any slot the original could be in.
template <class T>
class input_recorder : public nn::linear<T> {
 public:
  explicit input_recorder(std::shared_ptr<nn::linear<T>> original)
      : nn::linear<T>(original->weight, original->bias), original_(std::move(original)) {}

  std::string type_name() const override { return "input_recorder"; }
  variable<T> forward(const variable<T>& x) override {
    variable<T> y = original_->forward(x);  // validates x first
    rows_.emplace_back(as_matrix(x.value()));
    return y;
  }
  // All recorded rows, stacked in call order: [N, in].
  matrix<T> stacked() const {
    Eigen::Index n = 0;
    for (auto& m : rows_) n += m.rows();
    matrix<T> X(n, Eigen::Index(this->in_features()));
    Eigen::Index at = 0;
    for (auto& m : rows_) {
      X.middleRows(at, m.rows()) = m;
      at += m.rows();
    }
    return X;
  }
  const std::shared_ptr<nn::linear<T>>& original() const { return original_; }

 private:
  std::shared_ptr<nn::linear<T>> original_;
  std::vector<matrix<T>> rows_;
};

// The Linear whose weight a path names: an nn::linear, or the base layer of an adapted one.
template <class T>
std::shared_ptr<nn::linear<T>> collect_target_linear(nn::module<T>& model, const std::string& path,
                                                     const char* op, bool allow_adapted) {
  auto m = model.find_module(path);
  if (auto lin = std::dynamic_pointer_cast<nn::linear<T>>(m)) return lin;
  if (allow_adapted)
    if (auto a = std::dynamic_pointer_cast<adapted_linear<T>>(m)) return a->base_layer;
  throw value_error(std::string(op) + ": module '" + path + "' is a " + m->type_name() +
                    ", not a Linear");
}

inline std::string init_regex_escape(const std::string& s) {
  static const std::string special = R"(\^$.|?*+()[]{})";
  std::string out;
  for (char c : s) {
    if (special.find(c) != std::string::npos) out += '\\';
    out += c;
  }
  return out;
}

// Injection options that target exactly `paths` (a full-match regex of the escaped paths).
inline inject_options init_exact_targets(const inject_options& opt,
                                         const std::vector<std::string>& paths) {
  inject_options o = opt;
  std::string re = "(";
  for (std::size_t i = 0; i < paths.size(); ++i) {
    if (i) re += '|';
    re += init_regex_escape(paths[i]);
  }
  re += ')';
  o.targets = target_modules::pattern(re);
  return o;
}

}  // namespace detail

// The paths inject_adapters(model, opt, ...) would wrap, in model order (possibly empty).
template <class T>
std::vector<std::string> target_paths(nn::module<T>& model, const inject_options& opt) {
  std::vector<std::string> out;
  for (auto& [path, m] : model.named_modules()) {
    if (path.empty() || !dynamic_cast<nn::linear<T>*>(m)) continue;
    if (detail::last_component(path) == "base_layer") continue;
    if (is_target<T>(path, opt.targets, opt)) out.push_back(path);
  }
  return out;
}

// ∂L/∂W of the weight of each Linear at `paths` (an nn::linear or the base layer of an
// adapted_linear), averaged over `calls` calls of fn(), each returning a one-element loss.
// While fn runs and the loss is backpropagated, only these weights require grad (nothing else in
// the model accumulates a gradient). Afterwards every trainable flag and gradient of the model is
// as before. Runs in the model's current train/eval mode. Throws if a weight got no gradient.
template <class T, class Fn>
std::map<std::string, matrix<T>> full_weight_gradients(nn::module<T>& model,
                                                       const std::vector<std::string>& paths,
                                                       Fn&& fn, std::size_t calls = 1) {
  if (paths.empty()) throw value_error("full_weight_gradients: no target paths");
  if (calls == 0) throw value_error("full_weight_gradients: calls must be > 0");
  std::vector<variable<T>> weights;
  for (auto& p : paths)
    weights.push_back(
        detail::collect_target_linear(model, p, "full_weight_gradients", true)->weight);

  // Snapshot of every parameter (and each target weight's own gradient), restored on exit.
  struct saved {
    variable<T> v;
    bool requires_grad, has_grad;
    tensor<T> grad;
  };
  std::vector<saved> snapshot;
  for (auto& [name, v] : model.named_parameters())
    snapshot.push_back({v, v.requires_grad(), v.has_grad(), v.has_grad() ? v.grad() : tensor<T>()});
  for (auto& w : weights)  // a weight outside the model's parameter list (shared) is saved too
    snapshot.push_back({w, w.requires_grad(), w.has_grad(), w.has_grad() ? w.grad() : tensor<T>()});
  struct restore_guard {
    std::vector<saved>& s;
    ~restore_guard() {
      for (auto it = s.rbegin(); it != s.rend(); ++it) {
        it->v.set_requires_grad(it->requires_grad);
        it->v.zero_grad();
        if (it->has_grad) {
          it->v.get()->grad = it->grad;
          it->v.get()->has_grad = true;
        }
      }
    }
  } guard{snapshot};

  for (auto& s : snapshot) {
    s.v.set_requires_grad(false);
    s.v.zero_grad();
  }
  for (auto& w : weights) w.set_requires_grad(true);

  for (std::size_t c = 0; c < calls; ++c) {
    variable<T> loss = fn();
    if (!loss.defined() || loss.numel() != 1)
      throw shape_error("full_weight_gradients: fn must return a one-element loss, got " +
                        (loss.defined() ? shape_str(loss.shape()) : std::string("undefined")));
    if (!loss.requires_grad())
      throw value_error("full_weight_gradients: the loss does not depend on any target weight");
    loss.backward();
  }

  std::map<std::string, matrix<T>> out;
  for (std::size_t i = 0; i < paths.size(); ++i) {
    if (!weights[i].has_grad())
      throw value_error("full_weight_gradients: '" + paths[i] +
                        "' received no gradient (is it used by fn?)");
    out[paths[i]] = as_matrix(weights[i].grad()) / T(calls);
  }
  return out;
}

// The inputs each Linear at `paths` receives while fn() runs (under no_grad), stacked as
// [N, in] (leading dimensions of a call's input collapsed, calls in order). Each target is
// replaced by a recording stand-in for the duration and put back afterwards.
template <class T, class Fn>
std::map<std::string, matrix<T>> layer_inputs(nn::module<T>& model,
                                              const std::vector<std::string>& paths, Fn&& fn) {
  if (paths.empty()) throw value_error("layer_inputs: no target paths");
  std::vector<std::pair<std::string, std::shared_ptr<detail::input_recorder<T>>>> rec;
  struct restore_guard {
    nn::module<T>& model;
    decltype(rec)& r;
    ~restore_guard() {
      for (auto it = r.rbegin(); it != r.rend(); ++it)
        model.replace_module(it->first, it->second->original());
    }
  } guard{model, rec};
  for (auto& p : paths) {
    auto lin = detail::collect_target_linear(model, p, "layer_inputs", false);
    auto r = std::make_shared<detail::input_recorder<T>>(lin);
    model.replace_module(p, r);
    rec.emplace_back(p, r);
  }
  {
    no_grad_guard ng;
    fn();
  }
  std::map<std::string, matrix<T>> out;
  for (auto& [p, r] : rec) {
    out[p] = r->stacked();
    if (out[p].rows() == 0)
      throw value_error("layer_inputs: '" + p + "' received no input (is it used by fn?)");
  }
  return out;
}

// ---- injection with data-driven inits ----

namespace detail {
template <class T>
std::vector<std::string> collect_paths_or_throw(nn::module<T>& model, const inject_options& opt,
                                                const char* op) {
  auto paths = target_paths(model, opt);
  if (paths.empty())
    throw value_error(std::string(op) + ": no target modules matched in the model");
  return paths;
}
// inject_lora's per-layer config (rank/alpha patterns applied, seed derived from the index).
template <class T>
lora_config init_layer_lora_config(const lora_config& cfg, const layer_info<T>& info) {
  lora_config c = cfg;
  c.r = info.r;
  c.alpha = info.alpha;
  c.seed = rng(cfg.seed).fork(info.index).next_u64();
  return c;
}
}  // namespace detail

// LoRA with LoRA-GA init on the targets: gradients from `calls` runs of fn (as PEFT's
// preprocess_loraga averages them), then W ← W − s·B·A per layer.
template <class T, class Fn>
injection_report inject_lora_ga(nn::module<T>& model, const lora_config& cfg,
                                const inject_options& opt, Fn&& fn,
                                const init::lora_ga_options& ga = {}, std::size_t calls = 1) {
  const auto paths = detail::collect_paths_or_throw(model, opt, "inject_lora_ga");
  const auto grads = full_weight_gradients(model, paths, fn, calls);
  return inject_adapters<T>(model, opt, cfg.r, cfg.alpha, [&](const layer_info<T>& info) {
    return std::make_shared<lora<T>>(info.in, info.out, detail::init_layer_lora_config(cfg, info),
                                     init::lora_ga(grads.at(info.path), ga),
                                     &info.base->weight.value());
  });
}

// LoRA with LoRA-One init on the targets.
template <class T, class Fn>
injection_report inject_lora_one(nn::module<T>& model, const lora_config& cfg,
                                 const inject_options& opt, Fn&& fn,
                                 const init::lora_one_options& one = {}, std::size_t calls = 1) {
  const auto paths = detail::collect_paths_or_throw(model, opt, "inject_lora_one");
  const auto grads = full_weight_gradients(model, paths, fn, calls);
  return inject_adapters<T>(model, opt, cfg.r, cfg.alpha, [&](const layer_info<T>& info) {
    return std::make_shared<lora<T>>(info.in, info.out, detail::init_layer_lora_config(cfg, info),
                                     init::lora_one(grads.at(info.path), one),
                                     &info.base->weight.value());
  });
}

// LoRA-SB (LoRA-XS adapters, only R trained) on the targets.
template <class T, class Fn>
injection_report inject_lora_sb(nn::module<T>& model, const lora_xs_config& cfg,
                                const inject_options& opt, Fn&& fn,
                                const init::lora_sb_options& sb = {}, std::size_t calls = 1) {
  const auto paths = detail::collect_paths_or_throw(model, opt, "inject_lora_sb");
  const auto grads = full_weight_gradients(model, paths, fn, calls);
  return inject_adapters<T>(model, opt, cfg.r, cfg.alpha, [&](const layer_info<T>& info) {
    lora_xs_config c = cfg;
    c.r = info.r;
    c.alpha = info.alpha;
    c.seed = rng(cfg.seed).fork(info.index).next_u64();
    return make_lora_sb<T>(info.in, info.out, c, grads.at(info.path), &info.base->weight.value(),
                           sb);
  });
}

// What inject_eva did: the new rank and alpha of every target (PEFT writes them to the config's
// rank_pattern / alpha_pattern); layers with rank 0 were left unadapted.
struct eva_injection {
  injection_report report;
  std::map<std::string, std::size_t> rank_pattern;
  std::map<std::string, double> alpha_pattern;
};

// LoRA with EVA init on the targets: inputs from fn (run under no_grad, model in eval mode as
// PEFT does, mode restored after), round(r·rho) components per layer, ranks redistributed by
// explained variance, alpha rescaled by r_new / r when adjust_scaling_factors.
template <class T, class Fn>
eva_injection inject_eva(nn::module<T>& model, const lora_config& cfg, const inject_options& opt,
                         Fn&& fn, const init::eva_config& ec = {}) {
  ec.validate("inject_eva");
  cfg.validate("inject_eva");
  const auto paths = detail::collect_paths_or_throw(model, opt, "inject_eva");
  std::map<std::string, std::size_t> layer_r;
  std::map<std::string, double> layer_alpha;
  for (auto& p : paths) {
    const auto* rv = detail::pattern_value(opt.rank_pattern, p);
    const auto* av = detail::pattern_value(opt.alpha_pattern, p);
    layer_r[p] = rv ? *rv : cfg.r;
    layer_alpha[p] = av ? *av : cfg.alpha;
  }
  std::map<std::string, matrix<T>> inputs;
  {
    const bool was_training = model.is_training();
    model.eval();
    struct mode_guard {
      nn::module<T>& m;
      bool on;
      ~mode_guard() { m.train(on); }
    } mg{model, was_training};
    inputs = layer_inputs(model, paths, fn);
  }
  std::map<std::string, init::eva_decomposition> dec;
  std::map<std::string, vector<double>> ratios;
  for (auto& p : paths) {
    const auto& X = inputs.at(p);
    const std::size_t k = std::min({init::eva_max_components(layer_r[p], ec.rho),
                                    std::size_t(X.rows()), std::size_t(X.cols())});
    if (k == 0) throw value_error("inject_eva: no components for '" + p + "'");
    dec.emplace(p, init::eva_svd(X, k, ec.center));
    ratios[p] = dec.at(p).explained_variance_ratio;
  }
  const auto ranks = init::eva_rank_distribution(ratios, layer_r, ec.rho);

  eva_injection res;
  std::vector<std::string> kept;
  for (auto& p : paths) {
    const std::size_t r = ranks.at(p);
    res.rank_pattern[p] = r;
    res.alpha_pattern[p] = ec.adjust_scaling_factors
                               ? layer_alpha[p] * double(r) / double(layer_r[p])
                               : layer_alpha[p];
    if (r > 0) kept.push_back(p);
  }
  if (kept.empty()) throw value_error("inject_eva: every target got rank 0");
  res.report =
      inject_adapters<T>(model, detail::init_exact_targets(opt, kept), cfg.r, cfg.alpha,
                         [&](const layer_info<T>& info) {
                           lora_config c = detail::init_layer_lora_config(cfg, info);
                           c.r = res.rank_pattern.at(info.path);
                           c.alpha = res.alpha_pattern.at(info.path);
                           return std::make_shared<lora<T>>(info.in, info.out, c,
                                                            init::eva(dec.at(info.path), ec.whiten),
                                                            &info.base->weight.value());
                         });
  return res;
}

}  // namespace peft
