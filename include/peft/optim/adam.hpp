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
#include <algorithm>
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

    const bool decay = Options::decoupled_weight_decay && g.weight_decay != 0;
    const T decay_factor = T(1 - g.lr * g.weight_decay);
    const bool l2 = !Options::decoupled_weight_decay && g.weight_decay != 0;
    const T wd = T(g.weight_decay);
    T* vmax_data = nullptr;
    if (g.amsgrad) vmax_data = as_vector(base::zeros_state(s, "max_exp_avg_sq", p)).data();

    // The whole update runs chunk by chunk (a few KB per tensor, so each chunk stays in L1)
    // rather than one pass over the whole tensor per statement: the same operations on every
    // element in the same order (so the same bits), about a third less memory traffic.
    using arr = Eigen::Array<T, Eigen::Dynamic, 1>;
    constexpr Eigen::Index chunk = 2048;
    const Eigen::Index n = pv.size();
    T* const pd = pv.data();
    T* const md = m.data();
    T* const vd = v.data();
    const T* const gd = gv.data();
    // grad_of(g, p) is the gradient as an expression (fused into each statement, never stored).
    auto run = [&](auto&& grad_of) {
      for (Eigen::Index i0 = 0; i0 < n; i0 += chunk) {
        const Eigen::Index len = std::min(chunk, n - i0);
        Eigen::Map<arr> pc(pd + i0, len), mc(md + i0, len), vc(vd + i0, len);
        const Eigen::Map<const arr> gc(gd + i0, len);
        if (decay) pc *= decay_factor;  // AdamW: decoupled decay before the update
        const auto gr = grad_of(gc, pc);
        // torch's lerp: start + w·(end − start) for w < 0.5, else end − (end − start)·(1 − w).
        if (1 - b1 < 0.5)
          mc += w1 * (gr - mc);
        else
          mc = gr - (gr - mc) * (T(1) - w1);
        vc = vc * beta2 + w2 * gr * gr;
        // torch's addcdiv: p + (−step_size·m) / denom.
        if (vmax_data) {
          Eigen::Map<arr> xc(vmax_data + i0, len);
          xc = xc.max(vc);
          pc += (neg_step * mc) / (xc.sqrt() / bc2_sqrt_t + eps);
        } else {
          pc += (neg_step * mc) / (vc.sqrt() / bc2_sqrt_t + eps);
        }
      }
    };
    if (l2) {
      if (g.maximize)
        run([&](const auto& gc, const auto& pc) { return -gc + wd * pc; });
      else
        run([&](const auto& gc, const auto& pc) { return gc + wd * pc; });
    } else {
      if (g.maximize)
        run([](const auto& gc, const auto&) { return -gc; });
      else
        run([](const auto& gc, const auto&) { return gc; });
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
