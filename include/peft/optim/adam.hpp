#pragma once
// Adam and AdamW, as torch.optim.Adam / AdamW (single-tensor path). Per parameter, t = step:
//   g = ±grad                                   (- if maximize)
//   Adam:  g = g + wd·p                         (L2 decay added to the gradient)
//   AdamW: p = p·(1 − lr·wd)                    (decoupled decay, before the update)
//   m = lerp(m, g, 1 − β1)                      (= β1·m + (1 − β1)·g)
//   v = β2·v + (1 − β2)·g²
//   v_max = max(v_max, v) if amsgrad, and v_max replaces v below
//   denom = sqrt(v) / sqrt(1 − β2^t) + eps      (eps outside the sqrt, as torch)
//   p = p − (lr / (1 − β1^t)) · m / denom
// State: "exp_avg", "exp_avg_sq" (+ "max_exp_avg_sq" with amsgrad), each of the parameter's
// shape, and the step count t.
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "peft/optim/optimizer.hpp"

namespace peft::optim {

namespace adam_detail {
template <class O>
void validate(const O& o, const std::string& who) {
  peft::detail::check_hparam_nonneg(who, "lr", o.lr);
  peft::detail::check_hparam_unit(who, "betas[0]", o.betas.first);
  peft::detail::check_hparam_unit(who, "betas[1]", o.betas.second);
  peft::detail::check_hparam_nonneg(who, "eps", o.eps);
  peft::detail::check_hparam_nonneg(who, "weight_decay", o.weight_decay);
}
}  // namespace adam_detail

struct adam_options {
  static constexpr const char* name = "adam";
  static constexpr bool decoupled_weight_decay = false;
  double lr = 1e-3;
  std::pair<double, double> betas{0.9, 0.999};
  double eps = 1e-8;
  double weight_decay = 0;
  bool amsgrad = false;
  bool maximize = false;

  void validate(const std::string& who) const { adam_detail::validate(*this, who); }
};

// Same fields as adam_options; only the default weight decay and its meaning differ.
struct adamw_options {
  static constexpr const char* name = "adamw";
  static constexpr bool decoupled_weight_decay = true;
  double lr = 1e-3;
  std::pair<double, double> betas{0.9, 0.999};
  double eps = 1e-8;
  double weight_decay = 1e-2;
  bool amsgrad = false;
  bool maximize = false;

  void validate(const std::string& who) const { adam_detail::validate(*this, who); }
};

template <class T, class Options>
class basic_adam : public basic_optimizer<T, Options> {
  using base = basic_optimizer<T, Options>;

 public:
  using typename base::group_type;

  explicit basic_adam(std::vector<variable<T>> params, const Options& options = {})
      : base(std::move(params), options) {}
  explicit basic_adam(std::vector<param_group<T>> groups, const Options& defaults = {})
      : base(std::move(groups), defaults) {}

 protected:
  std::vector<std::string> state_names(const group_type& g) const override {
    if (g.amsgrad) return {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
    return {"exp_avg", "exp_avg_sq"};
  }

  void update(const group_type& g, variable<T>& p, param_state<T>& s) override {
    auto m = as_vector(base::zeros_state(s, "exp_avg", p));
    auto v = as_vector(base::zeros_state(s, "exp_avg_sq", p));
    const std::size_t t = ++s.step;
    auto pv = as_vector(p.value());
    const tensor<T>& gt = p.grad();
    const auto gv = as_vector(gt);

    // Scalars in double (as torch computes them in Python floats), cast once.
    const double b1 = g.betas.first, b2 = g.betas.second;
    const double bc1 = 1 - std::pow(b1, double(t));
    const double bc2_sqrt = std::sqrt(1 - std::pow(b2, double(t)));
    const T w1 = T(1 - b1), beta2 = T(b2), w2 = T(1 - b2);
    const T bc2_sqrt_t = T(bc2_sqrt), eps = T(g.eps);
    const T neg_step = T(-(g.lr / bc1));

    if constexpr (Options::decoupled_weight_decay)
      if (g.weight_decay != 0) pv.array() *= T(1 - g.lr * g.weight_decay);

    // g is an expression (fused into each pass, never materialised).
    auto moments = [&](const auto& gr) {
      // torch's lerp: start + w·(end − start) for w < 0.5, else end − (end − start)·(1 − w).
      if (1 - b1 < 0.5)
        m.array() += w1 * (gr - m.array());
      else
        m.array() = gr - (gr - m.array()) * (T(1) - w1);
      v.array() = v.array() * beta2 + w2 * gr * gr;
    };
    const bool l2 = !Options::decoupled_weight_decay && g.weight_decay != 0;
    const T wd = T(g.weight_decay);
    if (l2) {
      if (g.maximize)
        moments(-gv.array() + wd * pv.array());
      else
        moments(gv.array() + wd * pv.array());
    } else {
      if (g.maximize)
        moments(-gv.array());
      else
        moments(gv.array());
    }

    // torch's addcdiv: p + (−step_size·m) / denom.
    auto finish = [&](const auto& second) {
      pv.array() += (neg_step * m.array()) / (second.sqrt() / bc2_sqrt_t + eps);
    };
    if (g.amsgrad) {
      auto vmax = as_vector(base::zeros_state(s, "max_exp_avg_sq", p));
      vmax = vmax.cwiseMax(v);
      finish(vmax.array());
    } else {
      finish(v.array());
    }
  }
};

template <class T>
class adam : public basic_adam<T, adam_options> {
 public:
  using basic_adam<T, adam_options>::basic_adam;
};

template <class T>
class adamw : public basic_adam<T, adamw_options> {
 public:
  using basic_adam<T, adamw_options>::basic_adam;
};

}  // namespace peft::optim
