#pragma once
// Reading adapter files straight into serving form (served_adapter), against the base model's
// Linear weights, without injecting anything into the model:
//   read_peft_adapter  a Hugging Face PEFT directory (io/peft_dir.hpp's layout: LoRA, rsLoRA,
//                      rank_pattern / alpha_pattern, DoRA, VeRA with or without saved projections)
//   read_gguf_lora     a llama.cpp LoRA GGUF (io/gguf_llama.hpp's rules: B's q/k rows in GGUF's
//                      RoPE order, ΔW = (alpha / r)·B·A, a zero or missing alpha meaning scale 1)
// The same checks as the model loaders: every expected tensor present with its exact shape, no
// unexpected tensor, an io_error naming the file and the tensor otherwise.
// base_linear_weights() maps layer paths to the base weights; it sees through wrappers that keep
// the original Linear as "base_layer" (mixed_linear, adapted_linear), so it works before and after
// install_mixed_linears.
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "peft/adapters/inject.hpp"
#include "peft/adapters/vera.hpp"
#include "peft/io/adapter_config.hpp"
#include "peft/io/gguf.hpp"
#include "peft/io/gguf_llama.hpp"
#include "peft/io/peft_dir.hpp"
#include "peft/io/safetensors.hpp"
#include "peft/nn/linear.hpp"
#include "peft/nn/transformer.hpp"
#include "peft/serve/served_adapter.hpp"

namespace peft::serve {

// Base weights [out, in] by layer path (the variables share the model's nodes: no copy).
template <class T>
using base_weights = std::map<std::string, variable<T>>;

template <class T>
base_weights<T> base_linear_weights(nn::module<T>& model) {
  base_weights<T> out;
  for (auto& [path, m] : model.named_modules()) {
    auto* lin = dynamic_cast<nn::linear<T>*>(m);
    if (!lin || path.empty()) continue;
    std::string p = path;
    if (peft::detail::last_component(p) == "base_layer") {
      const auto dot = p.rfind('.');
      p = dot == std::string::npos ? std::string() : p.substr(0, dot);
      if (p.empty()) continue;
    }
    out[p] = lin->weight;
  }
  return out;
}

namespace detail {
template <class T>
std::pair<std::size_t, std::size_t> out_in(const variable<T>& W) {
  return {W.dim(0), W.dim(1)};
}
}  // namespace detail

// A PEFT adapter directory as a served_adapter for a model with these base weights.
template <class T>
served_adapter<T> read_peft_adapter(const std::string& dir, const base_weights<T>& base) {
  namespace fs = std::filesystem;
  const std::string cfg_path = (fs::path(dir) / io::adapter_config_file).string();
  const std::string st_path = (fs::path(dir) / io::adapter_weights_file).string();
  const std::string w = "peft adapter '" + dir + "'";
  const io::adapter_config c = io::adapter_config::load(cfg_path);
  io::check_supported(c, "adapter_config '" + cfg_path + "'");
  if (!c.is_lora() && !c.is_vera())
    throw io_error(w + ": peft_type '" + c.peft_type + "' cannot be served (LORA or VERA)");
  if (c.modules_to_save && !c.modules_to_save->empty())
    throw io_error(w + ": modules_to_save replaces whole modules, which cannot differ per row of a batch");
  inject_options o;
  try {
    o = io::to_inject_options(c);
  } catch (const value_error& e) {
    throw io_error(w + ": " + e.what());
  }
  std::vector<std::string> targets;
  for (auto& [path, W] : base) {
    bool hit = false;
    try {
      hit = is_target<T>(path, o.targets, o);
    } catch (const value_error& e) {
      throw io_error(w + ": " + e.what());
    }
    if (hit) targets.push_back(path);
  }
  if (targets.empty()) throw io_error(w + ": target_modules match no Linear layer of the base model");

  const io::safetensors_file file = io::safetensors_file::load(st_path);
  std::map<std::string, bool> used;
  for (auto& k : file.names()) used[k] = false;
  auto fetch = [&](const std::string& key, const shape_t& want) {
    if (!file.contains(key)) throw io_error(w + ": missing tensor '" + key + "' in '" + st_path + "'");
    const io::tensor_entry& e = file.at(key);
    if (e.shape != want)
      throw io_error(w + ": tensor '" + key + "' has shape " + shape_str(e.shape) + " in '" + st_path +
                     "', the base model needs " + shape_str(want));
    used[key] = true;
    return file.get<T>(key);
  };
  auto mat = [](const tensor<T>& t) { return matrix<T>(as_matrix(t)); };

  served_adapter<T> s;
  s.source = dir;
  const std::string pre = io::peft_key_prefix;
  if (c.is_lora()) {
    for (auto& path : targets) {
      const auto [out, in] = detail::out_in(base.at(path));
      std::size_t r = c.r;
      double alpha = c.lora_alpha;
      if (auto* rv = peft::detail::pattern_value(o.rank_pattern, path)) r = *rv;
      if (auto* av = peft::detail::pattern_value(o.alpha_pattern, path)) alpha = *av;
      if (r == 0) throw io_error(w + ": rank 0 for layer '" + path + "'");
      const double scaling = c.use_rslora ? alpha / std::sqrt(double(r)) : alpha / double(r);
      const matrix<T> A = mat(fetch(pre + path + ".lora_A.weight", {r, in}));
      const matrix<T> B = mat(fetch(pre + path + ".lora_B.weight", {out, r}));
      if (c.use_dora) {
        const tensor<T> m = fetch(pre + path + ".lora_magnitude_vector", {out});
        s.layers.emplace(path, layer_adapter<T>::dora(A, T(scaling) * B, as_vector(m),
                                                      as_matrix(base.at(path).value())));
      } else {
        s.layers.emplace(path, layer_adapter<T>::lora(A, B, scaling));
      }
    }
  } else {
    std::vector<shape_t> shapes;
    for (auto& path : targets) shapes.push_back(base.at(path).shape());
    const shape_t mx = vera_max_shape(shapes);
    if (c.r == 0) throw io_error(w + ": rank 0");
    std::shared_ptr<const vera_shared<T>> shared;
    const bool in_file = file.contains(vera_shared<T>::key_A) || file.contains(vera_shared<T>::key_B);
    if (c.save_projection || in_file)
      shared = std::make_shared<const vera_shared<T>>(fetch(vera_shared<T>::key_A, {c.r, mx[1]}),
                                                      fetch(vera_shared<T>::key_B, {mx[0], c.r}));
    else
      shared = std::make_shared<const vera_shared<T>>(c.r, shapes, c.projection_prng_key);
    for (auto& path : targets) {
      const auto [out, in] = detail::out_in(base.at(path));
      const tensor<T> lb = fetch(pre + path + ".vera_lambda_b", {out});
      const tensor<T> ld = fetch(pre + path + ".vera_lambda_d", {c.r});
      s.layers.emplace(path, layer_adapter<T>::vera_layer(shared, in, as_vector(ld), as_vector(lb)));
    }
  }
  for (auto& [k, u] : used)
    if (!u) throw io_error(w + ": unexpected tensor '" + k + "' in '" + st_path + "'");
  return s;
}

// A llama.cpp LoRA GGUF as a served_adapter. `llama` is the base model's config (for the q/k row
// order); base weights are matched by Hugging Face path.
template <class T>
served_adapter<T> read_gguf_lora(const io::gguf_file& f, const base_weights<T>& base, const nn::llama_config& llama) {
  const std::string w = "gguf '" + f.source() + "'";
  io::detail::expect_architecture(f);
  const io::gguf_value* gt = f.find("general.type");
  if (!gt || gt->type() != io::gguf_value_type::string || gt->get<std::string>() != "adapter")
    throw io_error(w + ": general.type is not 'adapter'");
  const io::gguf_value* at = f.find("adapter.type");
  if (!at || at->type() != io::gguf_value_type::string || at->get<std::string>() != "lora")
    throw io_error(w + ": adapter.type is not 'lora'");
  double alpha = 0;
  if (const io::gguf_value* a = f.find("adapter.lora.alpha")) {
    if (a->type() != io::gguf_value_type::float32)
      throw io_error(w + ": adapter.lora.alpha is " + a->type_str() + ", expected FLOAT32");
    alpha = a->get<float>();
    if (!std::isfinite(alpha)) throw io_error(w + ": adapter.lora.alpha is not finite");
  }
  struct pair_t {
    std::string a, b;
  };
  std::map<std::string, pair_t> pairs;
  for (auto& [name, t] : f.tensors()) {
    const bool is_a = name.size() > 7 && name.compare(name.size() - 7, 7, ".lora_a") == 0;
    const bool is_b = name.size() > 7 && name.compare(name.size() - 7, 7, ".lora_b") == 0;
    if (!is_a && !is_b) throw io_error(w + ": tensor '" + name + "' is neither .lora_a nor .lora_b");
    const auto hf = io::hf_llama_name(name.substr(0, name.size() - 7));
    if (!hf || hf->size() < 7 || hf->compare(hf->size() - 7, 7, ".weight") != 0)
      throw io_error(w + ": tensor '" + name + "' names no llama weight");
    const std::string path = hf->substr(0, hf->size() - 7);
    if (!io::ggml_type_decodable(t.type) || t.ne.size() != 2)
      throw io_error(w + ": tensor '" + name + "' must be a 2-D float tensor, is " + io::ggml_type_name(t.type) +
                     " ne " + shape_str(t.ne));
    (is_a ? pairs[path].a : pairs[path].b) = name;
  }
  if (pairs.empty()) throw io_error(w + ": no LoRA tensors");
  served_adapter<T> s;
  s.source = f.source();
  for (auto& [path, p] : pairs) {
    if (p.a.empty() || p.b.empty())
      throw io_error(w + ": LoRA pair for '" + path + "' is missing its " + (p.a.empty() ? "lora_a" : "lora_b"));
    auto it = base.find(path);
    if (it == base.end()) throw io_error(w + ": '" + path + "' is not a Linear layer of the base model");
    const auto [out, in] = detail::out_in(it->second);
    const io::gguf_tensor& ta = f.tensor_at(p.a);
    const io::gguf_tensor& tb = f.tensor_at(p.b);
    if (ta.ne[0] != in || tb.ne[1] != out || ta.ne[1] != tb.ne[0] || ta.ne[1] == 0)
      throw io_error(w + ": '" + p.a + "' ne " + shape_str(ta.ne) + " and '" + p.b + "' ne " + shape_str(tb.ne) +
                     " do not fit a layer with in=" + std::to_string(in) + ", out=" + std::to_string(out));
    tensor<T> A = f.get_tensor<T>(p.a), B = f.get_tensor<T>(p.b);
    if (const std::size_t heads = io::detail::rope_heads(path, llama)) B = io::permute_rope_rows(B, heads, false);
    const double r = double(A.shape()[0]);
    s.layers.emplace(path, layer_adapter<T>::lora(as_matrix(A), as_matrix(B), alpha == 0 ? 1.0 : alpha / r));
  }
  return s;
}

template <class T>
served_adapter<T> read_gguf_lora(const std::string& path, const base_weights<T>& base, const nn::llama_config& llama) {
  return read_gguf_lora<T>(io::gguf_file::load(path), base, llama);
}

}  // namespace peft::serve
