#pragma once
// Shared by the `peft` subcommands that work on an adapter without the model's code: a module
// tree built from names alone. A PEFT adapter directory names its modules by path
// ("base_model.model.<path>.lora_A.weight"); the tree has an nn::linear at each such path (weight
// and bias from a base safetensors file, where base key = <path>.weight / <path>.bias, or zeros of
// the adapter's shapes) and a holder for each modules_to_save parameter, so the library's own
// loader (io::load_peft_adapter) builds the adapters with the config's targets, rank / alpha
// patterns, rsLoRA, DoRA and VeRA, and the library's merge / forward do the math. Everything is
// computed in double.
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "peft/adapters/inject.hpp"
#include "peft/io/peft_dir.hpp"
#include "peft/io/safetensors.hpp"
#include "peft/nn/linear.hpp"
#include "peft/nn/module.hpp"

namespace peft_cli {

using real = double;
using peft::shape_t;
using peft::tensor;

// A module whose children and parameters are created from dotted paths.
class tree_module : public peft::nn::unary_module<real> {
 public:
  std::string type_name() const override { return "tree"; }
  peft::variable<real> forward(const peft::variable<real>&) override {
    throw peft::value_error("tree_module: a container, not a layer");
  }

  // The Linear at `path` (created): weight [out, in], optional bias [out].
  void put_linear(const std::string& path, tensor<real> weight, std::optional<tensor<real>> bias) {
    auto [parent, last] = walk(path);
    peft::variable<real> w(std::move(weight), false);
    peft::variable<real> b;
    if (bias) b = peft::variable<real>(std::move(*bias), false);
    parent->slots_.push_back(std::make_shared<peft::nn::linear<real>>(w, b));
    parent->register_module(last, parent->slots_.back());
  }
  // A parameter `name` of the holder module at `path` (created; a holder may hold several).
  void put_parameter(const std::string& path, const std::string& name, tensor<real> value) {
    auto [parent, last] = walk(path);
    tree_module* holder = nullptr;
    if (auto it = parent->kids_.find(last); it != parent->kids_.end()) {
      holder = it->second;
    } else {
      auto t = std::make_shared<tree_module>();
      holder = t.get();
      parent->kids_.emplace(last, holder);
      parent->slots_.push_back(t);
      parent->register_module(last, parent->slots_.back());
    }
    holder->register_parameter(name, std::move(value), false);
  }

 private:
  // The tree_module that holds the last component of `path` (intermediates created).
  std::pair<tree_module*, std::string> walk(const std::string& path) {
    if (path.empty() || path.front() == '.' || path.back() == '.' || path.find("..") != std::string::npos)
      throw peft::value_error("invalid module path '" + path + "'");
    tree_module* cur = this;
    std::size_t pos = 0;
    for (;;) {
      const std::size_t dot = path.find('.', pos);
      if (dot == std::string::npos) return {cur, path.substr(pos)};
      const std::string part = path.substr(pos, dot - pos);
      auto it = cur->kids_.find(part);
      if (it == cur->kids_.end()) {
        auto t = std::make_shared<tree_module>();
        cur->slots_.push_back(t);
        cur->register_module(part, cur->slots_.back());
        it = cur->kids_.emplace(part, t.get()).first;
      }
      cur = it->second;
      pos = dot + 1;
    }
  }

  std::deque<std::shared_ptr<peft::nn::module<real>>> slots_;  // stable addresses for register_module
  std::map<std::string, tree_module*> kids_;
};

// What an adapter directory holds, by module path.
struct adapter_dir {
  std::string dir, config_path, weights_path;
  peft::io::adapter_config config;
  peft::io::safetensors_file weights;
  std::set<std::string> modules;                           // adapted module paths
  std::map<std::string, std::vector<std::string>> saved;   // modules_to_save: path -> parameter names
};

inline bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Reads adapter_config.json and adapter_model.safetensors of `dir` and sorts the tensor keys.
inline adapter_dir read_adapter_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  adapter_dir a;
  a.dir = dir;
  if (!fs::is_directory(dir)) throw peft::io_error("'" + dir + "' is not a directory (expected a PEFT adapter directory)");
  a.config_path = (fs::path(dir) / peft::io::adapter_config_file).string();
  a.weights_path = (fs::path(dir) / peft::io::adapter_weights_file).string();
  a.config = peft::io::adapter_config::load(a.config_path);
  a.weights = peft::io::safetensors_file::load(a.weights_path);
  const std::string prefix = peft::io::peft_key_prefix;
  static const char* suffixes[] = {".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector", ".vera_lambda_b",
                                   ".vera_lambda_d"};
  for (const auto& key : a.weights.names()) {
    if (key == "base_model.vera_A" || key == "base_model.vera_B") continue;
    if (key.rfind(prefix, 0) != 0)
      throw peft::io_error("safetensors '" + a.weights_path + "': tensor '" + key + "' does not start with '" + prefix +
                           "' (not a PEFT adapter key)");
    const std::string rest = key.substr(prefix.size());
    bool adapter_key = false;
    for (const char* s : suffixes)
      if (ends_with(rest, s) && rest.size() > std::string(s).size()) {
        a.modules.insert(rest.substr(0, rest.size() - std::string(s).size()));
        adapter_key = true;
        break;
      }
    if (adapter_key) continue;
    const auto dot = rest.rfind('.');
    if (dot == std::string::npos || dot == 0)
      throw peft::io_error("safetensors '" + a.weights_path + "': tensor '" + key +
                           "' names no module parameter (<module>.<name>)");
    a.saved[rest.substr(0, dot)].push_back(rest.substr(dot + 1));
  }
  if (a.modules.empty())
    throw peft::io_error("safetensors '" + a.weights_path + "': no adapter tensors (lora_A / lora_B / vera_lambda_*)");
  return a;
}

// A base tensor as double, checked to exist, be a float dtype and have `rank` dims.
inline tensor<real> base_tensor(const peft::io::safetensors_file& base, const std::string& key, std::size_t rank,
                                const std::string& why) {
  const std::string w = "safetensors '" + base.source() + "'";
  if (!base.contains(key)) throw peft::io_error(w + ": no tensor '" + key + "' (" + why + ")");
  const auto& e = base.at(key);
  if (!peft::io::is_float_dtype(e.type))
    throw peft::io_error(w + ": tensor '" + key + "' is " + peft::io::dtype_name(e.type) +
                         ", not a floating-point weight");
  if (e.shape.size() != rank)
    throw peft::io_error(w + ": tensor '" + key + "' has shape " + peft::shape_str(e.shape) + ", expected " +
                         std::to_string(rank) + " dims");
  return base.get<real>(key);
}

// The tree for an adapter directory, with the adapters loaded (eval mode, frozen). Linear
// weights (and biases when with_bias) come from `base`, or are zeros of the shapes lora_A /
// lora_B imply when base is null (LoRA only: the weights do not matter for exporting factors).
inline std::shared_ptr<tree_module> build_adapted_model(const adapter_dir& a, const peft::io::safetensors_file* base,
                                                        bool with_bias) {
  auto tree = std::make_shared<tree_module>();
  const std::string prefix = peft::io::peft_key_prefix;
  for (const auto& m : a.modules) {
    if (base) {
      const std::string why = "the base weight of adapted module '" + m + "'";
      tensor<real> w = base_tensor(*base, m + ".weight", 2, why);
      std::optional<tensor<real>> b;
      if (with_bias && base->contains(m + ".bias")) b = base_tensor(*base, m + ".bias", 1, "the bias of '" + m + "'");
      tree->put_linear(m, std::move(w), std::move(b));
    } else {
      const std::string ka = prefix + m + ".lora_A.weight", kb = prefix + m + ".lora_B.weight";
      if (!a.weights.contains(ka) || !a.weights.contains(kb))
        throw peft::io_error("safetensors '" + a.weights_path + "': module '" + m +
                             "' has no lora_A / lora_B pair to take its shape from");
      const auto& sa = a.weights.at(ka).shape;
      const auto& sb = a.weights.at(kb).shape;
      if (sa.size() != 2 || sb.size() != 2 || sa[0] != sb[1] || sa[0] == 0)
        throw peft::io_error("safetensors '" + a.weights_path + "': module '" + m + "' has lora_A " +
                             peft::shape_str(sa) + " and lora_B " + peft::shape_str(sb) +
                             " (expected [r,in] and [out,r])");
      tree->put_linear(m, peft::zeros<real>({sb[0], sa[1]}), std::nullopt);
    }
  }
  for (const auto& [path, names] : a.saved)
    for (const auto& n : names) {
      const std::string key = path + "." + n;
      if (!base) throw peft::io_error("'" + a.dir + "': modules_to_save tensor '" + key + "' needs the base weights");
      const auto& e = base->at(key);  // io_error naming the base file if absent
      tree->put_parameter(path, n, base_tensor(*base, key, e.shape.size(), "replaced by modules_to_save"));
    }
  peft::io::peft_load_options lo;
  lo.trainable = false;
  peft::io::load_peft_adapter<real>(a.dir, *tree, lo);
  tree->eval();
  return tree;
}

}  // namespace peft_cli
