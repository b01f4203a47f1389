#pragma once
// Stochastic gradient descent with momentum, as torch.optim.SGD:
//   d = ±g + wd·p                      (L2 weight decay added to the gradient; - if maximize)
//   buf = d on the first step, else buf = momentum·buf + (1 − dampening)·d
//   d = d + momentum·buf if nesterov, else d = buf          (only when momentum ≠ 0)
//   p = p − lr·d
// State: "momentum_buffer" (only when momentum ≠ 0).
#include <cmath>
#include <string>
#include <vector>

#include "peft/optim/optimizer.hpp"

namespace peft::optim {

struct sgd_options {
  static constexpr const char* name = "sgd";
  double lr = 1e-3;
  double momentum = 0;
  double dampening = 0;
  double weight_decay = 0;
  bool nesterov = false;
  bool maximize = false;

  void validate(const std::string& who) const {
    peft::detail::check_hparam_nonneg(who, "lr", lr);
    peft::detail::check_hparam_nonneg(who, "momentum", momentum);
    peft::detail::check_hparam_nonneg(who, "weight_decay", weight_decay);
    if (!std::isfinite(dampening))
      throw value_error(who + ": invalid dampening " + peft::detail::hparam_str(dampening));
    if (nesterov && (momentum <= 0 || dampening != 0))
      throw value_error(who + ": nesterov momentum requires a momentum > 0 and zero dampening "
                        "(momentum " + peft::detail::hparam_str(momentum) + ", dampening " +
                        peft::detail::hparam_str(dampening) + ")");
  }
};

template <class T>
class sgd : public basic_optimizer<T, sgd_options> {
  using base = basic_optimizer<T, sgd_options>;

 public:
  using typename base::group_type;

  explicit sgd(std::vector<variable<T>> params, const sgd_options& options = {})
      : base(std::move(params), options) {}
  explicit sgd(std::vector<param_group<T>> groups, const sgd_options& defaults = {})
      : base(std::move(groups), defaults) {}

 protected:
  std::vector<std::string> state_names(const group_type& g) const override {
    if (g.momentum != 0) return {"momentum_buffer"};
    return {};
  }

  void update(const group_type& g, variable<T>& p, param_state<T>& s) override {
    ++s.step;
    auto pv = as_vector(p.value());
    const tensor<T>& gt = p.grad();
    const auto gv = as_vector(gt);
    const T lr = T(g.lr), wd = T(g.weight_decay), mom = T(g.momentum);
    const T damp1 = T(1 - g.dampening);

    // One fused pass per line whatever the variant: d is an expression, never a tensor. Weight
    // decay is skipped when zero (as torch) so that 0·inf does not turn a parameter into NaN.
    auto apply = [&](const auto& d) {
      if (g.momentum == 0) {
        pv.array() += (-lr) * d;
        return;
      }
      auto it = s.tensors.find("momentum_buffer");
      if (it == s.tensors.end()) {
        tensor<T> b = tensor<T>::from_shape(p.value().shape());
        as_vector(b).array() = d;
        it = s.tensors.emplace("momentum_buffer", std::move(b)).first;
      } else {
        auto bv = as_vector(it->second);
        bv.array() = bv.array() * mom + damp1 * d;
      }
      auto bv = as_vector(it->second);
      if (g.nesterov)
        pv.array() += (-lr) * (d + mom * bv.array());
      else
        pv.array() += (-lr) * bv.array();
    };
    if (g.weight_decay != 0) {
      if (g.maximize)
        apply(-gv.array() + wd * pv.array());
      else
        apply(gv.array() + wd * pv.array());
    } else {
      if (g.maximize)
        apply(-gv.array());
      else
        apply(gv.array());
    }
  }
};

}  // namespace peft::optim
