#pragma once
// A whole model's parameters by name (PyTorch state-dict names, "layers.0.attn.q_proj.weight")
// in a safetensors file: save_state_dict writes them (atomically), load_state_dict checks the
// file against the model (every parameter present with the model's shape; with strict, no
// extra tensors) before copying anything, so a failed load leaves the model untouched.
#include <map>
#include <string>

#include "peft/io/safetensors.hpp"
#include "peft/nn/module.hpp"

namespace peft::io {

// Writes every parameter of `model` as `type` (F32, F64, F16 or BF16) with the given metadata.
template <class T>
void save_state_dict(const std::string& path, const nn::module<T>& model, dtype type = dtype_of<T>(),
                     const std::map<std::string, std::string>& metadata = {{"format", "pt"}}) {
  safetensors_file f;
  for (auto& [name, v] : model.named_parameters()) {
    // A tied parameter registered under two names is written under both (as torch does).
    if (!f.contains(name)) f.add(name, v.value(), type);
  }
  f.metadata() = metadata;
  f.save(path);
}

// Loads parameters by name into `model` (values converted from any float dtype of the file).
// strict: every file tensor must name a parameter. Missing parameters, shape mismatches and
// unexpected tensors are io_errors naming the file and the tensor.
template <class T>
void load_state_dict(const std::string& path, nn::module<T>& model, bool strict = true) {
  const auto file = safetensors_file::load(path);
  const std::string w = "state dict '" + path + "'";
  nn::state_dict<T> sd;
  std::map<std::string, bool> used;
  for (auto& [name, v] : model.named_parameters()) {
    if (!file.contains(name)) {
      if (strict) throw io_error(w + ": missing tensor '" + name + "'");
      continue;
    }
    const tensor_entry& e = file.at(name);
    if (e.shape != v.shape())
      throw io_error(w + ": tensor '" + name + "' has shape " + shape_str(e.shape) + ", the model expects " +
                     shape_str(v.shape()));
    if (!sd.count(name)) sd.emplace(name, file.get<T>(name));
    used[name] = true;
  }
  if (strict)
    for (auto& name : file.names())
      if (!used.count(name)) throw io_error(w + ": unexpected tensor '" + name + "'");
  model.load_state_dict(sd, false);
}

}  // namespace peft::io
