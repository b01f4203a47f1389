#pragma once
// Injection: wrap the target Linear modules of a model with adapters, by name, as Hugging Face
// PEFT's get_peft_model does:
//   target_modules as a list: a module matches when its path equals an entry or ends with
//     "." + entry (PEFT's check_target_module_exists);
//   target_modules as a regex: the whole path must match (re.fullmatch);
//   "all-linear": every Linear except the output layer (lm_head);
//   rank_pattern / alpha_pattern: the first key for which (.*\.)?(key)$ matches the path
//     overrides r / lora_alpha for that module;
//   modules_to_save: extra modules whose own parameters stay fully trainable.
// Everything else is frozen.
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "peft/adapters/adapted_linear.hpp"
#include "peft/adapters/lora.hpp"
#include "peft/detail/format.hpp"
#include "peft/nn/linear.hpp"

namespace peft {

struct target_modules {
  std::vector<std::string> names;  // exact path or suffix after a '.'
  std::optional<std::string> regex;
  bool all_linear = false;
  std::vector<std::string> exclude;  // same matching rule as names; wins over the targets

  static target_modules list(std::vector<std::string> n) { return {std::move(n), {}, false, {}}; }
  static target_modules pattern(std::string re) { return {{}, std::move(re), false, {}}; }
  static target_modules all_linear_layers() { return {{}, {}, true, {}}; }
};

struct inject_options {
  target_modules targets;
  std::map<std::string, std::size_t> rank_pattern;
  std::map<std::string, double> alpha_pattern;
  std::vector<std::string> modules_to_save;
  std::vector<std::string> output_layer_names{"lm_head"};  // skipped by all-linear
};

// What the adapter factory sees for one target layer.
template <class T>
struct layer_info {
  std::string path;       // "layers.0.self_attn.q_proj"
  std::size_t in = 0, out = 0;
  std::size_t r = 0;      // after rank_pattern
  double alpha = 0;       // after alpha_pattern
  nn::linear<T>* base = nullptr;  // its weight may be rewritten by an init (PiSSA)
  std::size_t index = 0;  // 0, 1, ... in model order (for per-layer seeds)
};

struct injection_report {
  std::vector<std::string> wrapped;          // paths of adapted layers, in model order
  std::vector<std::string> saved_modules;    // modules_to_save that were found
};

namespace detail {
inline bool name_matches(const std::string& path, const std::string& key) {
  return path == key ||
         (path.size() > key.size() && path.compare(path.size() - key.size(), key.size(), key) == 0 &&
          path[path.size() - key.size() - 1] == '.');
}
inline std::regex compile_regex(const std::string& re, const char* what) {
  try {
    return std::regex(re, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    throw value_error(std::string("inject: invalid ") + what + " regex '" + re + "': " + e.what());
  }
}
// PEFT's get_pattern_key: the first key (in map order) such that (.*\.)?(key)$ matches.
template <class V>
const V* pattern_value(const std::map<std::string, V>& patterns, const std::string& path) {
  for (auto& [key, v] : patterns)
    if (key == path || std::regex_match(path, compile_regex("(.*\\.)?(" + key + ")", "pattern")))
      return &v;
  return nullptr;
}
inline std::string last_component(const std::string& path) {
  const auto dot = path.rfind('.');
  return dot == std::string::npos ? path : path.substr(dot + 1);
}
}  // namespace detail

template <class T>
bool is_target(const std::string& path, const target_modules& t, const inject_options& opt) {
  for (auto& e : t.exclude)
    if (detail::name_matches(path, e)) return false;
  if (t.all_linear) {
    const auto last = detail::last_component(path);
    for (auto& o : opt.output_layer_names)
      if (last == o) return false;
    return true;
  }
  if (t.regex) return std::regex_match(path, detail::compile_regex(*t.regex, "target_modules"));
  for (auto& n : t.names)
    if (detail::name_matches(path, n)) return true;
  return false;
}

// Wraps every target nn::linear of `model` with make_adapter(info) (which returns a
// std::shared_ptr<adapter<T>>), freezes everything else, unfreezes modules_to_save. `r` and
// `alpha` are the defaults before rank/alpha patterns. Throws if nothing matched.
template <class T, class Factory>
injection_report inject_adapters(nn::module<T>& model, const inject_options& opt, std::size_t r,
                                 double alpha, Factory&& make_adapter) {
  injection_report rep;
  std::vector<std::pair<std::string, nn::linear<T>*>> targets;
  for (auto& [path, m] : model.named_modules()) {
    if (path.empty()) continue;
    auto* lin = dynamic_cast<nn::linear<T>*>(m);
    if (!lin) continue;
    // A linear already inside an adapted layer (its base_layer) is not a new target.
    if (detail::last_component(path) == "base_layer") continue;
    if (is_target<T>(path, opt.targets, opt)) targets.emplace_back(path, lin);
  }
  if (targets.empty()) {
    std::string what = opt.targets.regex ? *opt.targets.regex : "";
    for (auto& n : opt.targets.names) what += (what.empty() ? "" : ", ") + n;
    if (opt.targets.all_linear) what = "all-linear";
    throw value_error("inject: target modules {" + what + "} not found in the base model");
  }
  model.freeze();
  std::size_t index = 0;
  for (auto& [path, lin] : targets) {
    layer_info<T> info;
    info.path = path;
    info.in = lin->in_features();
    info.out = lin->out_features();
    info.r = r;
    info.alpha = alpha;
    if (auto* rv = detail::pattern_value(opt.rank_pattern, path)) info.r = *rv;
    if (auto* av = detail::pattern_value(opt.alpha_pattern, path)) info.alpha = *av;
    info.base = lin;
    info.index = index++;
    auto base = std::dynamic_pointer_cast<nn::linear<T>>(model.find_module(path));
    std::shared_ptr<adapter<T>> a = make_adapter(info);
    if (!a) throw value_error("inject: adapter factory returned null for '" + path + "'");
    model.replace_module(path, std::make_shared<adapted_linear<T>>(base, a));
    rep.wrapped.push_back(path);
  }
  for (auto& name : opt.modules_to_save) {
    bool found = false;
    for (auto& [path, m] : model.named_modules())
      if (!path.empty() && detail::name_matches(path, name)) {
        m->unfreeze();
        rep.saved_modules.push_back(path);
        found = true;
      }
    if (!found) throw value_error("inject: modules_to_save '" + name + "' not found in the model");
  }
  return rep;
}

// LoRA on the targets (get_peft_model with a LoraConfig). Each layer's seed is derived from
// cfg.seed and the layer's index so layers differ but the whole model is reproducible.
template <class T, class Init = init::kaiming_default>
injection_report inject_lora(nn::module<T>& model, const lora_config& cfg,
                             const inject_options& opt, const Init& init = {}) {
  return inject_adapters<T>(model, opt, cfg.r, cfg.alpha, [&](const layer_info<T>& info) {
    lora_config c = cfg;
    c.r = info.r;
    c.alpha = info.alpha;
    c.seed = rng(cfg.seed).fork(info.index).next_u64();
    return std::make_shared<lora<T>>(info.in, info.out, c, init, &info.base->weight.value());
  });
}

// All adapted layers of a model, by path.
template <class T>
std::vector<std::pair<std::string, adapted_linear<T>*>> adapted_layers(nn::module<T>& model) {
  std::vector<std::pair<std::string, adapted_linear<T>*>> out;
  for (auto& [path, m] : model.named_modules())
    if (auto* a = dynamic_cast<adapted_linear<T>*>(m)) out.emplace_back(path, a);
  return out;
}

template <class T>
void merge_adapters(nn::module<T>& model, bool safe = true) {
  for (auto& [p, a] : adapted_layers(model)) a->merge(safe);
}
template <class T>
void unmerge_adapters(nn::module<T>& model) {
  for (auto& [p, a] : adapted_layers(model)) a->unmerge();
}
template <class T>
void set_adapters_enabled(nn::module<T>& model, bool on) {
  for (auto& [p, a] : adapted_layers(model)) a->get_adapter().set_enabled(on);
}

struct parameter_counts {
  std::size_t trainable = 0, total = 0;
  double percent() const { return total ? 100.0 * double(trainable) / double(total) : 0.0; }
};
template <class T>
parameter_counts count_parameters(const nn::module<T>& model) {
  return {model.num_parameters(true), model.num_parameters(false)};
}
// PEFT's print_trainable_parameters line:
// "trainable params: 294,912 || all params: 124,734,720 || trainable%: 0.2364"
template <class T>
std::string trainable_parameters_summary(const nn::module<T>& model) {
  const auto c = count_parameters(model);
  using detail::group_digits;
  char pct[32];
  std::snprintf(pct, sizeof pct, "%.4f", c.percent());
  return "trainable params: " + group_digits(c.trainable) + " || all params: " + group_digits(c.total) +
         " || trainable%: " + pct;
}

}  // namespace peft
