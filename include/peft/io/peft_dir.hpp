#pragma once
// A Hugging Face PEFT adapter directory: adapter_config.json + adapter_model.safetensors, as
// PeftModel.save_pretrained writes it and PeftModel.from_pretrained reads it, for LoRA, rsLoRA,
// DoRA (over LoRA) and VeRA. Tensor keys (PEFT's get_peft_model_state_dict, adapter name
// removed):
//   base_model.model.<layer>.lora_A.weight    [r, in]
//   base_model.model.<layer>.lora_B.weight    [out, r]
//   base_model.model.<layer>.lora_magnitude_vector   [out]   (DoRA; no ".weight")
//   base_model.model.<layer>.vera_lambda_b    [out]          (VeRA)
//   base_model.model.<layer>.vera_lambda_d    [r]
//   base_model.vera_A [r, max_in], base_model.vera_B [max_out, r]   (VeRA, save_projection)
//   base_model.model.<module>.<param>          (modules_to_save, e.g. classifier.weight)
// Loading builds the adapters onto a plain base model (injection with the config's targets,
// ranks and alphas) or fills an already-injected one, after checking every tensor: a missing,
// unexpected or mis-shaped tensor is an io_error naming it (and both shapes), and nothing in the
// model changes unless the whole load succeeds.
// VeRA with save_projection = false regenerates vera_A / vera_B from projection_prng_key with
// this library's generator, which is not torch's: such files only interoperate with
// themselves. With save_projection = true (PEFT's default) they interoperate both ways.
#include <algorithm>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "peft/adapters/dora.hpp"
#include "peft/adapters/inject.hpp"
#include "peft/adapters/lora.hpp"
#include "peft/adapters/vera.hpp"
#include "peft/core/config.hpp"
#include "peft/io/adapter_config.hpp"
#include "peft/io/safetensors.hpp"

namespace peft::io {

inline constexpr const char* adapter_config_file = "adapter_config.json";
inline constexpr const char* adapter_weights_file = "adapter_model.safetensors";
inline constexpr const char* peft_key_prefix = "base_model.model.";

// ---- config <-> library settings ----

// target_modules / exclude_modules as injection targets.
PEFT_INLINE target_modules to_target_modules(const adapter_config& c);

PEFT_INLINE inject_options to_inject_options(const adapter_config& c);

PEFT_INLINE lora_config to_lora_config(const adapter_config& c, std::uint64_t seed = 0);

PEFT_INLINE vera_config to_vera_config(const adapter_config& c, std::uint64_t seed = 0);

// What in the config these adapters cannot reproduce ("" when nothing): a file asking for it is
// refused instead of silently computing something else.
PEFT_INLINE std::string unsupported_setting(const adapter_config& c);
// Throws io_error naming `where` and the setting.
PEFT_INLINE void check_supported(const adapter_config& c, const std::string& where);

// ---- the adapted layers as PEFT sees them ----

template <class T>
struct peft_layer {
  std::string path;
  adapted_linear<T>* layer = nullptr;
  std::string kind;  // "lora", "dora" or "vera"
  std::size_t r = 0;
  double alpha = 0;     // LoRA / DoRA
  bool rslora = false;  // LoRA / DoRA
  vera_shared<T>* shared = nullptr;  // VeRA
};

namespace detail {
template <class T>
std::vector<peft_layer<T>> classify_layers(nn::module<T>& model) {
  std::vector<peft_layer<T>> out;
  for (auto& [path, al] : adapted_layers(model)) {
    peft_layer<T> L;
    L.path = path;
    L.layer = al;
    adapter<T>* a = &al->get_adapter();
    const lora<T>* lo = dynamic_cast<const lora<T>*>(a);
    if (auto* d = dynamic_cast<dora<T>*>(a)) {
      lo = dynamic_cast<const lora<T>*>(&d->inner());
      if (!lo)
        throw value_error("peft adapter: DoRA at '" + path + "' wraps a '" + d->inner().method() +
                          "' adapter; PEFT's layout has DoRA over LoRA only");
      L.kind = "dora";
    } else if (lo) {
      L.kind = "lora";
    } else if (auto* v = dynamic_cast<const vera<T>*>(a)) {
      L.kind = "vera";
      L.r = v->rank();
      L.shared = v->shared().get();
    } else {
      throw value_error("peft adapter: '" + path + "' has a '" + a->method() +
                        "' adapter, which has no PEFT adapter-directory layout here (LoRA, rsLoRA, DoRA, VeRA)");
    }
    if (lo) {
      L.r = lo->rank();
      L.alpha = lo->config().alpha;
      L.rslora = lo->config().use_rslora;
    }
    out.push_back(std::move(L));
  }
  return out;
}

// The Linear layers of a plain (or partly adapted) model that the config targets.
template <class T>
std::vector<std::pair<std::string, nn::linear<T>*>> config_targets(nn::module<T>& model, const inject_options& o) {
  std::vector<std::pair<std::string, nn::linear<T>*>> out;
  for (auto& [path, m] : model.named_modules()) {
    if (path.empty() || peft::detail::last_component(path) == "base_layer") continue;
    if (auto* lin = dynamic_cast<nn::linear<T>*>(m))
      if (is_target<T>(path, o.targets, o)) out.emplace_back(path, lin);
  }
  return out;
}

// Checks that an injected model is exactly what the config describes: the same set of adapted
// layers, the method, and each layer's rank and alpha after rank_pattern / alpha_pattern.
// Mismatches are reported through fail(message).
template <class T, class Fail>
std::vector<peft_layer<T>> check_model_against_config(nn::module<T>& model, const adapter_config& c, Fail&& fail) {
  std::vector<peft_layer<T>> layers;
  try {
    layers = classify_layers(model);
  } catch (const value_error& e) {
    fail(e.what());
  }
  if (layers.empty()) fail("the model has no adapted layers");
  inject_options o;
  try {
    o = to_inject_options(c);
  } catch (const value_error& e) {
    fail(e.what());
  }
  for (auto& L : layers) {
    const std::string at = "layer '" + L.path + "'";
    if (!is_target<T>(L.path, o.targets, o)) fail(at + " is adapted but target_modules does not select it");
    if (c.is_vera()) {
      if (L.kind != "vera") fail(at + " has a " + L.kind + " adapter, the config says VERA");
      if (L.r != c.r) fail(at + " has r = " + std::to_string(L.r) + ", the config says r = " + std::to_string(c.r));
      if (L.shared != layers.front().shared)
        fail(at + " does not share vera_A / vera_B with '" + layers.front().path + "'");
      continue;
    }
    if (L.kind == "vera") fail(at + " has a VeRA adapter, the config says LORA");
    if ((L.kind == "dora") != c.use_dora)
      fail(at + " is " + (L.kind == "dora" ? "DoRA" : "plain LoRA") + ", the config says use_dora = " +
           (c.use_dora ? "true" : "false"));
    if (L.rslora != c.use_rslora)
      fail(at + " has use_rslora = " + (L.rslora ? "true" : "false") + ", the config says " +
           (c.use_rslora ? "true" : "false"));
    std::size_t r = c.r;
    double alpha = c.lora_alpha;
    if (auto* rv = peft::detail::pattern_value(o.rank_pattern, L.path)) r = *rv;
    if (auto* av = peft::detail::pattern_value(o.alpha_pattern, L.path)) alpha = *av;
    if (L.r != r)
      fail(at + " has r = " + std::to_string(L.r) + ", the config (r / rank_pattern) gives " + std::to_string(r));
    if (L.alpha != alpha)
      fail(at + " has lora_alpha = " + std::to_string(L.alpha) + ", the config (lora_alpha / alpha_pattern) gives " +
           std::to_string(alpha));
  }
  for (auto& [path, lin] : config_targets(model, o)) {
    (void)lin;
    fail("layer '" + path + "' is selected by target_modules but has no adapter");
  }
  return layers;
}

// Paths of the modules that modules_to_save names.
template <class T>
std::vector<std::string> saved_module_paths(nn::module<T>& model, const adapter_config& c) {
  std::vector<std::string> out;
  if (!c.modules_to_save) return out;
  for (auto& name : *c.modules_to_save) {
    bool found = false;
    for (auto& [path, m] : model.named_modules())
      if (!path.empty() && peft::detail::name_matches(path, name)) {
        out.push_back(path);
        found = true;
      }
    if (!found) throw value_error("peft adapter: modules_to_save '" + name + "' not found in the model");
  }
  return out;
}

PEFT_INLINE std::string regex_escape(const std::string& s);

// Sets r / lora_alpha to the most common per-layer values (the smallest on a tie) and
// rank_pattern / alpha_pattern (regex-escaped exact paths) for the other layers. `layers` is a
// range of items with .path, .r and .alpha. Shared by save (make_adapter_config) and merge/.
template <class Layers>
void set_rank_patterns(adapter_config& c, const Layers& layers) {
  std::map<std::size_t, std::size_t> rc;
  std::map<double, std::size_t> ac;
  for (auto& L : layers) {
    ++rc[L.r];
    ++ac[L.alpha];
  }
  auto most = [](const auto& m) {
    auto best = m.begin();
    for (auto it = m.begin(); it != m.end(); ++it)
      if (it->second > best->second) best = it;
    return best->first;
  };
  c.r = most(rc);
  c.lora_alpha = most(ac);
  c.rank_pattern.clear();
  c.alpha_pattern.clear();
  for (auto& L : layers) {
    if (L.r != c.r) c.rank_pattern[regex_escape(L.path)] = L.r;
    if (L.alpha != c.lora_alpha) c.alpha_pattern[regex_escape(L.path)] = L.alpha;
  }
}

// Every parameter the directory holds for this model, by PEFT key (variables share the model's
// nodes). VeRA's shared projections are not parameters and are handled separately.
template <class T>
std::vector<std::pair<std::string, variable<T>>> peft_parameters(nn::module<T>& model, const adapter_config& c,
                                                                 const std::vector<peft_layer<T>>& layers) {
  std::vector<std::pair<std::string, variable<T>>> out;
  for (auto& L : layers)
    for (auto& [name, v] : L.layer->get_adapter().named_parameters())
      out.emplace_back(peft_key_prefix + L.path + "." + name, v);
  for (auto& path : saved_module_paths(model, c))
    for (auto& [name, v] : model.find_module(path)->named_parameters())
      out.emplace_back(peft_key_prefix + path + "." + name, v);
  return out;
}

// Builds the adapters the config describes onto a model that has none.
template <class T>
void inject_from_config(nn::module<T>& model, const adapter_config& c, std::uint64_t seed, const std::string& w) {
  try {
    const inject_options o = to_inject_options(c);
    if (c.is_lora() && !c.use_dora) {
      inject_lora<T>(model, to_lora_config(c, seed), o);
    } else if (c.is_lora()) {
      inject_adapters<T>(model, o, c.r, c.lora_alpha, [&](const layer_info<T>& info) {
        lora_config lc = to_lora_config(c);
        lc.r = info.r;
        lc.alpha = info.alpha;
        lc.seed = rng(seed).fork(info.index).next_u64();
        return std::static_pointer_cast<adapter<T>>(dora_lora<T>(info.in, info.out, lc, info.base->weight.value()));
      });
    } else {
      // VeRA's shared projections are sized for every target first (PEFT's _find_dim).
      std::vector<shape_t> shapes;
      for (auto& [path, lin] : config_targets(model, o)) shapes.push_back(shape_of(lin->weight.value()));
      if (shapes.empty()) throw value_error("target_modules match no Linear layer of the model");
      auto shared = std::make_shared<vera_shared<T>>(c.r, shapes, c.projection_prng_key);
      inject_adapters<T>(model, o, c.r, 0.0, [&](const layer_info<T>& info) {
        const vera_config vc = to_vera_config(c, rng(seed).fork(info.index).next_u64());
        return std::static_pointer_cast<adapter<T>>(std::make_shared<vera<T>>(info.in, info.out, shared, vc));
      });
    }
  } catch (const io_error&) {
    throw;
  } catch (const error& e) {
    // The config does not fit the model (no such targets, bad pattern, bad rank, ...).
    throw io_error(w + ": cannot build the adapters: " + e.what());
  }
}
}  // namespace detail

// A config describing an injected model (LoRA / rsLoRA / DoRA or VeRA): target_modules lists the
// adapted layers' exact paths; r / lora_alpha are the most common values and rank_pattern /
// alpha_pattern (regex-escaped exact paths) cover the others. VeRA settings come from the first
// layer. base_model_name_or_path, task_type and modules_to_save are the caller's to fill in.
template <class T>
adapter_config make_adapter_config(nn::module<T>& model) {
  const auto layers = detail::classify_layers(model);
  if (layers.empty()) throw value_error("make_adapter_config: the model has no adapted layers");
  const bool vera_family = layers.front().kind == "vera";
  adapter_config c = vera_family ? adapter_config::vera() : adapter_config::lora();
  std::vector<std::string> paths;
  for (auto& L : layers) {
    if ((L.kind == "vera") != vera_family)
      throw value_error("make_adapter_config: '" + L.path + "' is " + L.kind + " but '" + layers.front().path +
                        "' is " + layers.front().kind + "; one adapter directory holds one method");
    paths.push_back(L.path);
  }
  c.target_modules = paths;
  if (vera_family) {
    auto* v = dynamic_cast<const vera<T>*>(&layers.front().layer->get_adapter());
    const vera_config& vc = v->config();
    c.r = vc.r;
    c.d_initial = vc.d_initial;
    c.vera_dropout = vc.dropout;
    c.projection_prng_key = vc.projection_prng_key;
    c.save_projection = vc.save_projection;
    c.init_weights = vc.init_weights;
  } else {
    c.use_dora = layers.front().kind == "dora";
    c.use_rslora = layers.front().rslora;
    detail::set_rank_patterns(c, layers);
    const adapter<T>& a0 = layers.front().layer->get_adapter();
    const lora<T>* lo = dynamic_cast<const lora<T>*>(&a0);
    if (!lo) lo = dynamic_cast<const lora<T>*>(&dynamic_cast<const dora<T>&>(a0).inner());
    c.lora_dropout = lo->config().dropout;
  }
  // Everything else must agree with what was just derived (mixed DoRA / LoRA, rsLoRA flags, ...).
  detail::check_model_against_config(model, c, [](const std::string& m) {
    throw value_error("make_adapter_config: " + m);
  });
  return c;
}

// The adapter's tensors under PEFT's keys (copies), including VeRA's projections when
// save_projection is set. Throws value_error when the model does not match the config.
template <class T>
std::map<std::string, tensor<T>> peft_state_dict(nn::module<T>& model, const adapter_config& c) {
  const auto layers = detail::check_model_against_config(model, c, [](const std::string& m) {
    throw value_error("peft_state_dict: " + m);
  });
  std::map<std::string, tensor<T>> sd;
  for (auto& [key, v] : detail::peft_parameters(model, c, layers)) sd.emplace(key, v.value());
  if (c.is_vera() && c.save_projection) {
    sd.emplace(vera_shared<T>::key_A, layers.front().shared->vera_A());
    sd.emplace(vera_shared<T>::key_B, layers.front().shared->vera_B());
  }
  return sd;
}

// Writes <dir>/adapter_model.safetensors (tensors as `type`: F32, F16, BF16 or F64, metadata
// {"format": "pt"} as PEFT's) and <dir>/adapter_config.json (inference_mode = true, as
// save_pretrained writes it), each atomically; creates dir if needed.
template <class T>
void save_peft_adapter(const std::string& dir, nn::module<T>& model, const adapter_config& config,
                       dtype type = dtype::F32) {
  if (!config.is_lora() && !config.is_vera())
    throw value_error("save_peft_adapter: peft_type '" + config.peft_type + "' (LORA or VERA)");
  if (const auto why = unsupported_setting(config); !why.empty())
    throw value_error("save_peft_adapter: " + why + " is not supported");
  const auto sd = peft_state_dict(model, config);
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw io_error("save_peft_adapter: cannot create directory '" + dir + "': " + ec.message());
  safetensors_file f;
  for (auto& [k, t] : sd) f.add(k, t, type);
  f.metadata()["format"] = "pt";
  f.save((std::filesystem::path(dir) / adapter_weights_file).string());
  adapter_config out = config;
  out.inference_mode = true;
  out.save((std::filesystem::path(dir) / adapter_config_file).string());
}

struct peft_load_options {
  std::uint64_t seed = 0;   // seeds the built adapters' dropout streams
  bool trainable = true;    // false: freeze the whole model after loading (PEFT's inference default)
};

struct peft_load_result {
  adapter_config config;
  std::vector<std::string> layers;  // adapted layer paths, in model order
  bool injected = false;            // true if the adapters were built by this load
};

// Loads a PEFT adapter directory into `model`: builds the adapters when the model has none,
// otherwise checks the existing ones against the config. All tensors are checked (names,
// shapes, dtypes) before any is copied; on failure the model is left as it was.
template <class T>
peft_load_result load_peft_adapter(const std::string& dir, nn::module<T>& model, const peft_load_options& opt = {}) {
  const std::string cfg_path = (std::filesystem::path(dir) / adapter_config_file).string();
  const std::string st_path = (std::filesystem::path(dir) / adapter_weights_file).string();
  peft_load_result res;
  res.config = adapter_config::load(cfg_path);
  const adapter_config& c = res.config;
  check_supported(c, "adapter_config '" + cfg_path + "'");
  const auto file = safetensors_file::load(st_path);
  const std::string w = "peft adapter '" + dir + "'";

  // Snapshot for the rollback of an injection.
  std::vector<std::pair<variable<T>, bool>> flags;
  for (auto& [n, v] : model.named_parameters()) flags.emplace_back(v, v.requires_grad());
  res.injected = adapted_layers(model).empty();
  auto rollback = [&] {
    if (!res.injected) return;
    for (auto& [path, al] : adapted_layers(model)) model.replace_module(path, al->base_layer);
    for (auto& [v, r] : flags) v.set_requires_grad(r);
  };

  try {
    if (res.injected) detail::inject_from_config(model, c, opt.seed, w);
    const auto layers = detail::check_model_against_config(model, c, [&](const std::string& m) {
      throw io_error(w + ": the model does not match the config: " + m);
    });

    // Check every tensor and convert it before touching the model.
    std::vector<std::pair<variable<T>, tensor<T>>> updates;
    std::map<std::string, bool> used;
    for (auto& k : file.names()) used[k] = false;
    auto fetch = [&](const std::string& key, const shape_t& want) {
      if (!file.contains(key)) throw io_error(w + ": missing tensor '" + key + "' in '" + st_path + "'");
      const tensor_entry& e = file.at(key);
      if (e.shape != want)
        throw io_error(w + ": tensor '" + key + "' has shape " + shape_str(e.shape) + " in '" + st_path +
                       "', the model expects " + shape_str(want));
      used[key] = true;
      return file.get<T>(key);
    };
    for (auto& [key, v] : detail::peft_parameters(model, c, layers)) updates.emplace_back(v, fetch(key, v.shape()));
    std::map<std::string, tensor<T>> projections;
    if (c.is_vera()) {
      const vera_shared<T>& sh = *layers.front().shared;
      const bool in_file = file.contains(vera_shared<T>::key_A) || file.contains(vera_shared<T>::key_B);
      if (c.save_projection || in_file) {
        projections.emplace(vera_shared<T>::key_A, fetch(vera_shared<T>::key_A, shape_of(sh.vera_A())));
        projections.emplace(vera_shared<T>::key_B, fetch(vera_shared<T>::key_B, shape_of(sh.vera_B())));
      }
    }
    for (auto& [k, u] : used)
      if (!u) throw io_error(w + ": unexpected tensor '" + k + "' in '" + st_path + "'");

    // Commit.
    for (auto& [v, t] : updates) std::copy(t.begin(), t.end(), v.value().begin());
    if (!projections.empty()) layers.front().shared->load_state_dict(projections);
    for (auto& L : layers) res.layers.push_back(L.path);
  } catch (...) {
    rollback();
    throw;
  }
  if (!opt.trainable) model.freeze();
  return res;
}

// ---- definitions: here (inline) for header-only programs; in the compiled library only in
// src/io.cpp (PEFT_UNIT_IO), so that they are defined once ----
#if !defined(PEFT_COMPILED_LIB) || defined(PEFT_UNIT_IO)
PEFT_INLINE target_modules to_target_modules(const adapter_config& c) {
  target_modules t;
  if (std::holds_alternative<std::monostate>(c.target_modules))
    throw value_error("adapter_config: target_modules is null (PEFT would choose them by model architecture); "
                      "name the target modules");
  if (auto* l = std::get_if<std::vector<std::string>>(&c.target_modules)) t.names = *l;
  if (auto* s = std::get_if<std::string>(&c.target_modules)) {
    if (*s == "all-linear")
      t.all_linear = true;
    else
      t.regex = *s;
  }
  if (auto* l = std::get_if<std::vector<std::string>>(&c.exclude_modules)) t.exclude = *l;
  if (std::holds_alternative<std::string>(c.exclude_modules))
    throw value_error("adapter_config: exclude_modules as a regex is not supported (use a list of names)");
  return t;
}

PEFT_INLINE inject_options to_inject_options(const adapter_config& c) {
  inject_options o;
  o.targets = to_target_modules(c);
  if (c.is_lora()) {
    o.rank_pattern = c.rank_pattern;
    o.alpha_pattern = c.alpha_pattern;
  }
  if (c.modules_to_save) o.modules_to_save = *c.modules_to_save;
  return o;
}

PEFT_INLINE lora_config to_lora_config(const adapter_config& c, std::uint64_t seed) {
  lora_config l;
  l.r = c.r;
  l.alpha = c.lora_alpha;
  l.use_rslora = c.use_rslora;
  l.dropout = c.lora_dropout;
  l.seed = seed;
  return l;
}

PEFT_INLINE vera_config to_vera_config(const adapter_config& c, std::uint64_t seed) {
  vera_config v;
  v.r = c.r;
  v.d_initial = c.d_initial;
  v.dropout = c.vera_dropout;
  v.projection_prng_key = c.projection_prng_key;
  v.save_projection = c.save_projection;
  v.init_weights = c.init_weights;
  v.seed = seed;
  return v;
}

PEFT_INLINE std::string unsupported_setting(const adapter_config& c) {
  if (c.fan_in_fan_out) return "fan_in_fan_out = true (Conv1D-style weights)";
  if (c.bias != "none") return "bias = '" + c.bias + "' (only \"none\")";
  if (std::holds_alternative<std::string>(c.exclude_modules)) return "exclude_modules as a regex";
  // Keys kept in `extra` that change which layers are adapted or what they compute
  // (layers_pattern only matters together with layers_to_transform).
  for (const char* k : {"layers_to_transform", "layer_replication", "megatron_config",
                        "target_parameters", "trainable_token_indices", "alora_invocation_tokens",
                        "arrow_config", "use_bdlora", "lora_bias", "use_qalora"}) {
    auto it = c.extra.find(k);
    if (it != c.extra.end() && !it->is_null() && !(it->is_boolean() && !it->get<bool>()))
      return std::string(k) + " = " + it->dump(-1, ' ', true, nlohmann::json::error_handler_t::replace);
  }
  return "";
}
PEFT_INLINE void check_supported(const adapter_config& c, const std::string& where) {
  if (const auto why = unsupported_setting(c); !why.empty()) throw io_error(where + ": " + why + " is not supported");
}

namespace detail {
PEFT_INLINE std::string regex_escape(const std::string& s) {
  std::string out;
  for (char ch : s) {
    if (std::string_view("\\^$.|?*+()[]{}").find(ch) != std::string_view::npos) out += '\\';
    out += ch;
  }
  return out;
}
}  // namespace detail
#endif  // !PEFT_COMPILED_LIB || PEFT_UNIT_IO

}  // namespace peft::io
