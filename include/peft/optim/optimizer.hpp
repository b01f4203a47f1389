#pragma once
// Common layer of the plain optimizers: parameter groups (per-group lr and weight decay, as
// LoRA+ needs), lazily created per-parameter state stored as named tensors (the layout a
// checkpoint writer saves: "exp_avg", "exp_avg_sq", "momentum_buffer" + a step count), and the
// step loop. Concrete optimizers only supply the per-parameter update and their state names.
//
// Parameters are indexed in flat order (group 0's parameters, then group 1's, ...), like the
// integer keys of torch.optim.Optimizer.state_dict()["state"].
#include <cstddef>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "peft/autograd/variable.hpp"
#include "peft/core/error.hpp"
#include "peft/core/tensor.hpp"

namespace peft::detail {
// (peft::detail rather than optim::detail: a nested detail would hide peft::detail inside optim.)
// Shortest readable form of a hyper-parameter for messages ("1e-05", not "0.000010").
inline std::string hparam_str(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}
// "adam: invalid lr -0.1 (must be >= 0)"-style checks shared by the options structs.
inline void check_hparam_nonneg(const std::string& who, const char* option, double v) {
  if (!(v >= 0))
    throw value_error(who + ": invalid " + option + " " + hparam_str(v) + " (must be >= 0)");
}
inline void check_hparam_unit(const std::string& who, const char* option, double v) {
  if (!(v >= 0 && v < 1))
    throw value_error(who + ": invalid " + option + " " + hparam_str(v) +
                      " (must be in [0, 1))");
}
}  // namespace peft::detail

namespace peft::optim {

// A group as the user passes it: parameters plus optional overrides of the optimizer's
// defaults. Other hyper-parameters can be changed per group after construction through
// optimizer.group(i) (e.g. opt.group(1).betas = {0.9, 0.99}).
template <class T>
struct param_group {
  std::vector<variable<T>> params{};
  std::optional<double> lr{};
  std::optional<double> weight_decay{};
};

// A group as the optimizer holds it: every hyper-parameter of Options (lr, weight_decay, ...)
// resolved, plus the parameter handles (they share nodes with the model).
template <class T, class Options>
struct group : Options {
  std::vector<variable<T>> params;
};

// The state of one parameter: the number of updates it received and named tensors.
template <class T>
struct param_state {
  std::size_t step = 0;
  std::map<std::string, tensor<T>> tensors;

  std::size_t bytes() const {
    std::size_t n = 0;
    for (const auto& [name, t] : tensors) n += t.size() * sizeof(T);
    return n;
  }
};

// Optimizer state by flat parameter index; parameters never updated have no entry.
template <class T>
using state_map = std::map<std::size_t, param_state<T>>;

// What every optimizer offers to schedules, clipping and checkpoint code.
template <class T>
class optimizer {
 public:
  using value_type = T;

  optimizer() = default;
  optimizer(const optimizer&) = delete;
  optimizer& operator=(const optimizer&) = delete;
  virtual ~optimizer() = default;

  virtual std::string name() const = 0;

  // Updates every parameter that has a gradient; the others are skipped (no state created).
  virtual void step() = 0;
  // Drops the gradients of all parameters (like torch's zero_grad(set_to_none=True)).
  virtual void zero_grad() = 0;

  virtual std::size_t num_groups() const = 0;
  virtual double lr(std::size_t group) const = 0;
  virtual void set_lr(std::size_t group, double lr) = 0;
  // Sets the same lr on every group.
  void set_lr(double lr) {
    for (std::size_t g = 0; g < num_groups(); ++g) set_lr(g, lr);
  }

  // All parameters in flat order.
  virtual std::vector<variable<T>> parameters() const = 0;

  // Bytes of state currently held (allocated on a parameter's first update).
  virtual std::size_t state_bytes() const = 0;
  virtual std::size_t state_bytes(std::size_t param_index) const = 0;

  // The state for saving, and its restoration. load_state replaces the whole state, validating
  // everything (indices, tensor names, shapes) before changing anything.
  virtual const state_map<T>& named_state() const = 0;
  virtual void load_state(const state_map<T>& state) = 0;
};

// Groups, the step loop, and state bookkeeping shared by the plain optimizers.
// Options: an aggregate of hyper-parameters with `static constexpr const char* name`,
// `double lr`, `double weight_decay` and `void validate(const std::string& who) const`.
template <class T, class Options>
class basic_optimizer : public optimizer<T> {
 public:
  using options_type = Options;
  using group_type = optim::group<T, Options>;

  // One group holding every parameter.
  basic_optimizer(std::vector<variable<T>> params, const Options& options) {
    if (params.empty()) throw value_error(std::string(Options::name) + ": empty parameter list");
    group_type g;
    static_cast<Options&>(g) = options;
    g.params = std::move(params);
    add_group(std::move(g));
  }
  // Several groups; fields a group leaves unset come from `defaults`.
  basic_optimizer(std::vector<param_group<T>> groups, const Options& defaults) {
    if (groups.empty()) throw value_error(std::string(Options::name) + ": no parameter groups");
    for (auto& spec : groups) {
      group_type g;
      static_cast<Options&>(g) = defaults;
      if (spec.lr) g.lr = *spec.lr;
      if (spec.weight_decay) g.weight_decay = *spec.weight_decay;
      g.params = std::move(spec.params);
      add_group(std::move(g));
    }
  }

  std::string name() const override { return Options::name; }

  std::size_t num_groups() const override { return groups_.size(); }
  group_type& group(std::size_t i) { return groups_.at(check_group(i)); }
  const group_type& group(std::size_t i) const { return groups_.at(check_group(i)); }
  const std::vector<group_type>& groups() const { return groups_; }

  double lr(std::size_t g) const override { return group(g).lr; }
  using optimizer<T>::set_lr;
  void set_lr(std::size_t g, double lr) override {
    if (!(lr >= 0))
      throw value_error(std::string(Options::name) + ": invalid lr " +
                        peft::detail::hparam_str(lr) + " for group " + std::to_string(g) +
                        " (must be >= 0)");
    group(g).lr = lr;
  }

  std::vector<variable<T>> parameters() const override {
    std::vector<variable<T>> out;
    out.reserve(num_params_);
    for (const auto& g : groups_) out.insert(out.end(), g.params.begin(), g.params.end());
    return out;
  }
  std::size_t num_parameters() const { return num_params_; }
  // Flat index of a parameter (it shares the node); throws if the optimizer does not hold it.
  std::size_t index_of(const variable<T>& p) const {
    std::size_t i = 0;
    for (const auto& g : groups_)
      for (const auto& q : g.params) {
        if (q.get() == p.get()) return i;
        ++i;
      }
    throw value_error(std::string(Options::name) + ": index_of: parameter not in this optimizer");
  }

  void step() override {
    std::size_t i = 0;
    for (std::size_t gi = 0; gi < groups_.size(); ++gi) {
      auto& g = groups_[gi];
      // Re-checked every step: group(i) hands out mutable access to the hyper-parameters.
      g.validate(std::string(Options::name) + " group " + std::to_string(gi));
      for (auto& p : g.params) {
        const std::size_t idx = i++;
        if (!p.has_grad()) continue;
        if (p.grad().shape() != p.value().shape())
          throw shape_error(std::string(Options::name) + ": parameter " + std::to_string(idx) +
                            " has value " + shape_str(p.value().shape()) + " but gradient " +
                            shape_str(p.grad().shape()));
        update(g, p, state_[idx]);
      }
    }
  }

  void zero_grad() override {
    for (auto& g : groups_)
      for (auto& p : g.params) p.zero_grad();
  }

  std::size_t state_bytes() const override {
    std::size_t n = 0;
    for (const auto& [i, s] : state_) n += s.bytes();
    return n;
  }
  std::size_t state_bytes(std::size_t param_index) const override {
    check_param(param_index, "state_bytes");
    auto it = state_.find(param_index);
    return it == state_.end() ? 0 : it->second.bytes();
  }

  const state_map<T>& named_state() const override { return state_; }

  void load_state(const state_map<T>& state) override {
    const std::string who = std::string(Options::name) + ": load_state: ";
    const auto params = parameters();
    const auto gidx = group_indices();
    for (const auto& [i, s] : state) {
      if (i >= num_params_)
        throw value_error(who + "state for parameter " + std::to_string(i) + ", optimizer has " +
                          std::to_string(num_params_) + " parameters");
      const auto names = state_names(groups_[gidx[i]]);
      for (const auto& n : names) {
        auto it = s.tensors.find(n);
        if (it == s.tensors.end())
          throw value_error(who + "parameter " + std::to_string(i) + ": missing tensor '" + n + "'");
        if (shape_of(it->second) != params[i].shape())
          throw shape_error(who + "parameter " + std::to_string(i) + ": tensor '" + n +
                            "' has shape " + shape_str(it->second.shape()) +
                            ", parameter has shape " + shape_str(params[i].shape()));
      }
      for (const auto& [n, t] : s.tensors) {
        bool expected = false;
        for (const auto& e : names) expected = expected || e == n;
        if (!expected)
          throw value_error(who + "parameter " + std::to_string(i) + ": unexpected tensor '" + n +
                            "'");
      }
    }
    state_ = state;
  }

 protected:
  // Applies one update to p (which has a gradient of p's shape) given its group and state.
  // The state entry is empty on the parameter's first update; the update creates its tensors.
  virtual void update(const group_type& g, variable<T>& p, param_state<T>& s) = 0;
  // The tensors (each of the parameter's shape) an updated parameter of group g holds.
  virtual std::vector<std::string> state_names(const group_type& g) const = 0;

  // The named state tensor, created as zeros of p's shape if absent.
  static tensor<T>& zeros_state(param_state<T>& s, const char* name, const variable<T>& p) {
    auto it = s.tensors.find(name);
    if (it == s.tensors.end()) it = s.tensors.emplace(name, zeros<T>(p.shape())).first;
    return it->second;
  }

 private:
  void add_group(group_type g) {
    const std::string who = std::string(Options::name) + " group " + std::to_string(groups_.size());
    g.validate(who);
    for (const auto& p : g.params) {
      if (!p.defined()) throw value_error(who + ": undefined parameter");
      if (!seen_.insert(p.get()).second)
        throw value_error(who + ": a parameter appears more than once");
    }
    num_params_ += g.params.size();
    groups_.push_back(std::move(g));
  }
  std::size_t check_group(std::size_t i) const {
    if (i >= groups_.size())
      throw value_error(std::string(Options::name) + ": group " + std::to_string(i) + " of " +
                        std::to_string(groups_.size()));
    return i;
  }
  void check_param(std::size_t i, const char* op) const {
    if (i >= num_params_)
      throw value_error(std::string(Options::name) + ": " + op + ": parameter " +
                        std::to_string(i) + " of " + std::to_string(num_params_));
  }
  // The group of each flat parameter index.
  std::vector<std::size_t> group_indices() const {
    std::vector<std::size_t> out;
    out.reserve(num_params_);
    for (std::size_t g = 0; g < groups_.size(); ++g) out.insert(out.end(), groups_[g].params.size(), g);
    return out;
  }

  std::vector<group_type> groups_;
  std::unordered_set<const node<T>*> seen_;
  std::size_t num_params_ = 0;
  state_map<T> state_;
};

}  // namespace peft::optim
