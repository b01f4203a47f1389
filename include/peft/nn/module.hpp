#pragma once
// Module base: named parameters and children with PyTorch state-dict names
// ("layers.0.attn.q_proj.weight"), trainable flags, train/eval mode, and replacement of a child
// by path (how adapters are injected). Modules are held by shared_ptr and never copied or moved:
// the child registry points at the members that hold the children.
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "peft/autograd/variable.hpp"
#include "peft/core/error.hpp"

namespace peft::nn {

template <class T>
using state_dict = std::map<std::string, tensor<T>>;

template <class T>
class module {
 public:
  using value_type = T;

  module() = default;
  module(const module&) = delete;
  module& operator=(const module&) = delete;
  module(module&&) = delete;
  module& operator=(module&&) = delete;
  virtual ~module() = default;

  // Short type name for summaries ("linear", "lora_linear", ...).
  virtual std::string type_name() const { return "module"; }

  // ---- registration (called by subclasses' constructors) ----

  // Registers a parameter and returns a handle sharing its node. Names must be unique; they may
  // contain '.' (adapters use PEFT's "lora_A.weight"), module names may not.
  variable<T> register_parameter(const std::string& name, tensor<T> value, bool trainable = true) {
    check_new_name(name, "register_parameter", true);
    variable<T> v(std::move(value), trainable);
    params_.emplace_back(name, v);
    return v;
  }
  // Registers an existing variable (shared with another module, e.g. tied weights).
  variable<T> register_parameter(const std::string& name, variable<T> v) {
    check_new_name(name, "register_parameter", true);
    if (!v.defined()) throw value_error("register_parameter: '" + name + "' is undefined");
    params_.emplace_back(name, v);
    return v;
  }
  // Registers the child held in `slot` (a member of this module). replace_module() writes the
  // new child back into the slot, so the parent's forward() uses it. M must derive from module.
  template <class M>
  void register_module(const std::string& name, std::shared_ptr<M>& slot) {
    check_new_name(name, "register_module");
    if (!slot) throw value_error("register_module: child '" + name + "' is null");
    std::shared_ptr<M>* p = &slot;
    children_.push_back(child_entry{
        name, [p]() -> std::shared_ptr<module> { return *p; },
        [p, name](std::shared_ptr<module> m) {
          auto c = std::dynamic_pointer_cast<M>(m);
          if (!c)
            throw value_error("replace_module: '" + name + "' cannot hold a " +
                              (m ? m->type_name() : std::string("null")) + " (type mismatch)");
          *p = std::move(c);
        }});
  }

  // ---- traversal ----

  std::vector<std::pair<std::string, variable<T>>> named_parameters(bool recurse = true) const {
    std::vector<std::pair<std::string, variable<T>>> out;
    collect_params("", recurse, out);
    return out;
  }
  std::vector<variable<T>> parameters(bool recurse = true) const {
    std::vector<variable<T>> out;
    for (auto& [n, v] : named_parameters(recurse)) out.push_back(v);
    return out;
  }
  // Parameters that currently require grad (what an optimizer should update).
  std::vector<variable<T>> trainable_parameters() const {
    std::vector<variable<T>> out;
    for (auto& [n, v] : named_parameters())
      if (v.requires_grad()) out.push_back(v);
    return out;
  }
  std::vector<std::pair<std::string, std::shared_ptr<module>>> named_children() const {
    std::vector<std::pair<std::string, std::shared_ptr<module>>> out;
    for (auto& c : children_) out.emplace_back(c.name, c.get());
    return out;
  }
  // Every module in the tree with its path, this one first with path "".
  std::vector<std::pair<std::string, module*>> named_modules() {
    std::vector<std::pair<std::string, module*>> out;
    collect_modules("", out);
    return out;
  }

  // The module at a dotted path ("layers.0.attn"); throws naming the path if absent.
  std::shared_ptr<module> find_module(const std::string& path) const {
    const module* cur = this;
    std::shared_ptr<module> found;
    std::size_t pos = 0;
    while (pos <= path.size()) {
      const std::size_t dot = path.find('.', pos);
      const std::string part = path.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
      found = cur->child(part);
      if (!found) throw value_error("find_module: no module '" + path + "' (missing '" + part + "')");
      cur = found.get();
      if (dot == std::string::npos) break;
      pos = dot + 1;
    }
    return found;
  }
  // Replaces the module at a dotted path; the parent's slot now holds m.
  void replace_module(const std::string& path, std::shared_ptr<module> m) {
    const std::size_t dot = path.rfind('.');
    module* parent = this;
    std::shared_ptr<module> holder;
    if (dot != std::string::npos) {
      holder = find_module(path.substr(0, dot));
      parent = holder.get();
    }
    const std::string last = dot == std::string::npos ? path : path.substr(dot + 1);
    for (auto& c : parent->children_)
      if (c.name == last) {
        c.set(std::move(m));
        return;
      }
    throw value_error("replace_module: no module '" + path + "'");
  }

  // ---- trainability and mode ----

  void freeze() { set_requires_grad(false); }
  void unfreeze() { set_requires_grad(true); }
  void set_requires_grad(bool r) {
    for (auto& [n, v] : named_parameters()) v.set_requires_grad(r);
  }
  void zero_grad() {
    for (auto& [n, v] : named_parameters()) v.zero_grad();
  }
  void train(bool on = true) {
    training_ = on;
    for (auto& c : children_) c.get()->train(on);
  }
  void eval() { train(false); }
  bool is_training() const { return training_; }

  std::size_t num_parameters(bool trainable_only = false) const {
    std::size_t n = 0;
    for (auto& [name, v] : named_parameters())
      if (!trainable_only || v.requires_grad()) n += v.numel();
    return n;
  }

  // ---- state dict (copies of the values, by full name) ----

  state_dict<T> get_state_dict() const {
    state_dict<T> sd;
    for (auto& [n, v] : named_parameters()) sd.emplace(n, v.value());
    return sd;
  }
  // Copies values into the existing parameters (their nodes, and so optimizer handles, stay).
  // strict: every parameter must be present and no extra keys allowed. Shape mismatches throw
  // naming the tensor.
  void load_state_dict(const state_dict<T>& sd, bool strict = true) {
    auto named = named_parameters();
    std::size_t used = 0;
    for (auto& [n, v] : named) {
      auto it = sd.find(n);
      if (it == sd.end()) {
        if (strict) throw value_error("load_state_dict: missing tensor '" + n + "'");
        continue;
      }
      if (shape_of(it->second) != v.shape())
        throw shape_error("load_state_dict: tensor '" + n + "' has shape " +
                          shape_str(it->second.shape()) + ", model expects " + shape_str(v.shape()));
      v.value() = it->second;
      ++used;
    }
    if (strict && used != sd.size()) {
      for (auto& [k, t] : sd) {
        bool found = false;
        for (auto& [n, v] : named) found = found || n == k;
        if (!found) throw value_error("load_state_dict: unexpected tensor '" + k + "'");
      }
    }
  }

 private:
  struct child_entry {
    std::string name;
    std::function<std::shared_ptr<module>()> get;
    std::function<void(std::shared_ptr<module>)> set;
  };

  void check_new_name(const std::string& name, const char* op, bool dots_ok = false) const {
    if (name.empty() || (!dots_ok && name.find('.') != std::string::npos) || name.front() == '.' ||
        name.back() == '.')
      throw value_error(std::string(op) + ": invalid name '" + name + "'");
    for (auto& [n, v] : params_)
      if (n == name) throw value_error(std::string(op) + ": duplicate name '" + name + "'");
    for (auto& c : children_)
      if (c.name == name) throw value_error(std::string(op) + ": duplicate name '" + name + "'");
  }
  std::shared_ptr<module> child(const std::string& name) const {
    for (auto& c : children_)
      if (c.name == name) return c.get();
    return nullptr;
  }
  void collect_params(const std::string& prefix, bool recurse,
                      std::vector<std::pair<std::string, variable<T>>>& out) const {
    for (auto& [n, v] : params_) out.emplace_back(prefix + n, v);
    if (!recurse) return;
    for (auto& c : children_) c.get()->collect_params(prefix + c.name + ".", true, out);
  }
  void collect_modules(const std::string& path, std::vector<std::pair<std::string, module*>>& out) {
    out.emplace_back(path, this);
    for (auto& c : children_) c.get()->collect_modules(path.empty() ? c.name : path + "." + c.name, out);
  }

  std::vector<std::pair<std::string, variable<T>>> params_;
  std::vector<child_entry> children_;
  bool training_ = true;
};

// A module with one input and one output (Linear, MLP, norm, adapter-wrapped Linear, ...).
template <class T>
class unary_module : public module<T> {
 public:
  virtual variable<T> forward(const variable<T>& x) = 0;
  variable<T> operator()(const variable<T>& x) { return forward(x); }
};

}  // namespace peft::nn
