#pragma once
// Adafactor (Shazeer & Stern 2018) as Hugging Face transformers' `Adafactor` computes it. Per
// parameter, t = step (1-based), all in T:
//   lr_t   = lr, or min(warmup_init ? 1e-6·t : 1e-2, 1/sqrt(t)) if relative_step;
//            × max(eps[1], RMS(W)) if scale_parameter
//   β2_t   = 1 − t^decay_rate
//   U      = G² + eps[0]
//   factored (>= 2-D; last two dims are the matrix, leading dims a batch):
//     R = β2_t·R + (1 − β2_t)·mean_cols(U)          ("exp_avg_sq_row", shape[:-1])
//     C = β2_t·C + (1 − β2_t)·mean_rows(U)          ("exp_avg_sq_col", shape[:-2] + shape[-1:])
//     u = (rsqrt(R / mean(R)) ⊗ rsqrt(C)) · G
//   else: V = β2_t·V + (1 − β2_t)·U ("exp_avg_sq"),  u = rsqrt(V)·G
//   u = u / max(RMS(u) / clip_threshold, 1) · lr_t
//   if beta1: M = β1·M + (1 − β1)·u ("exp_avg"), u = M
//   W = W·(1 − weight_decay·lr_t) − u
// Defaults follow the usage transformers documents for a manual schedule (and GaLore's
// Adafactor runs): lr 1e-3, relative_step = scale_parameter = warmup_init = false, beta1 unset,
// eps (1e-30, 1e-3), clip_threshold 1, decay_rate −0.8. (transformers' own defaults are lr=None
// with relative_step and scale_parameter on; with relative_step, lr here is ignored.)
//
// Under projected<adafactor<T>, P> the factored moments live in the low shape [r, n] / [m, r]
// (row and column vectors of that shape) and the first moment, if any, in the low shape too.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "peft/optim/optimizer.hpp"
#include "peft/optim/rule_optimizer.hpp"

namespace peft::optim {

struct adafactor_options {
  static constexpr const char* name = "adafactor";
  double lr = 1e-3;
  std::pair<double, double> eps{1e-30, 1e-3};
  double clip_threshold = 1.0;
  double decay_rate = -0.8;
  std::optional<double> beta1{};
  double weight_decay = 0;
  bool scale_parameter = false;
  bool relative_step = false;
  bool warmup_init = false;

  void validate(const std::string& who) const {
    peft::detail::check_hparam_nonneg(who, "lr", lr);
    peft::detail::check_hparam_nonneg(who, "eps[0]", eps.first);
    peft::detail::check_hparam_nonneg(who, "eps[1]", eps.second);
    if (!(clip_threshold > 0))
      throw value_error(who + ": invalid clip_threshold " + peft::detail::hparam_str(clip_threshold) +
                        " (must be > 0)");
    if (!(decay_rate <= 0) || !std::isfinite(decay_rate))
      throw value_error(who + ": invalid decay_rate " + peft::detail::hparam_str(decay_rate) +
                        " (must be <= 0)");
    if (beta1) peft::detail::check_hparam_unit(who, "beta1", *beta1);
    peft::detail::check_hparam_nonneg(who, "weight_decay", weight_decay);
    if (warmup_init && !relative_step)
      throw value_error(who + ": invalid warmup_init (requires relative_step)");
  }
};

}  // namespace peft::optim

namespace peft::detail {

template <class T>
struct adafactor_rule {
  using options_type = optim::adafactor_options;

  static std::vector<optim::state_spec> state_specs(const options_type& o, const shape_t& s) {
    std::vector<optim::state_spec> v;
    if (o.beta1) v.push_back({"exp_avg", s, true, false, optim::moment::first});
    if (s.size() >= 2) {
      shape_t row(s.begin(), s.end() - 1), col(s.begin(), s.end() - 2);
      col.push_back(s.back());
      // The factors are small (rows + cols); they stay in full precision and are not rotated.
      v.push_back({"exp_avg_sq_row", row, false, true, std::nullopt});
      v.push_back({"exp_avg_sq_col", col, false, true, std::nullopt});
    } else {
      v.push_back({"exp_avg_sq", s, true, true, optim::moment::second});
    }
    return v;
  }
  static double grad_sign(const options_type&) { return 1; }
  static double l2_decay(const options_type&) { return 0; }

  // The learning rate of step t (transformers' _get_lr).
  static double step_lr(const options_type& o, std::size_t t, const_vector_map<T> w) {
    double rel = o.lr;
    if (o.relative_step) {
      const double min_step = o.warmup_init ? 1e-6 * double(t) : 1e-2;
      rel = std::min(min_step, 1.0 / std::sqrt(double(t)));
    }
    double scale = 1.0;
    if (o.scale_parameter) scale = std::max(o.eps.second, rms(w));
    return scale * rel;
  }
  template <class V>
  static double rms(const V& x) {
    return x.size() == 0 ? 0.0 : double(x.norm()) / std::sqrt(double(x.size()));
  }

  static double direction(const options_type& o, std::size_t t, vector_map<T> g, const shape_t& shape,
                          optim::state_tensors<T>& s, const_vector_map<T> w) {
    const double lr = step_lr(o, t, w);
    const double b2t = 1.0 - std::pow(double(t), o.decay_rate);
    const T beta2t = T(b2t), w2 = T(1.0 - b2t), eps1 = T(o.eps.first);
    if (shape.size() >= 2) {
      const std::size_t C = shape.back(), R = shape[shape.size() - 2];
      const std::size_t B = (R * C) == 0 ? 0 : g.size() / (R * C);
      shape_t rs(shape.begin(), shape.end() - 1), cs(shape.begin(), shape.end() - 2);
      cs.push_back(C);
      T* row = rule_state(s, "exp_avg_sq_row", rs).data();
      T* col = rule_state(s, "exp_avg_sq_col", cs).data();
      matrix<T> U;
      for (std::size_t b = 0; b < B; ++b) {
        matrix_map<T> G(g.data() + b * R * C, Eigen::Index(R), Eigen::Index(C));
        vector_map<T> r(row + b * R, Eigen::Index(R)), c(col + b * C, Eigen::Index(C));
        U = G.array().square() + eps1;
        r = r * beta2t + w2 * U.rowwise().mean();
        c = c * beta2t + w2 * U.colwise().mean().transpose();
        const T rmean = r.mean();
        const vector<T> rf = (r.array() / rmean).rsqrt().matrix();
        const vector<T> cf = c.array().rsqrt().matrix();
        for (Eigen::Index i = 0; i < G.rows(); ++i)
          G.row(i).array() = (rf[i] * cf.transpose().array()) * G.row(i).array();
      }
    } else {
      auto v = as_vector(rule_state(s, "exp_avg_sq", shape));
      v.array() = v.array() * beta2t + w2 * (g.array().square() + eps1);
      g.array() = v.array().rsqrt() * g.array();
    }
    const double clip = std::max(rms(g) / o.clip_threshold, 1.0);
    g.array() = g.array() / T(clip) * T(lr);
    if (o.beta1) {
      auto m = as_vector(rule_state(s, "exp_avg", shape));
      const T b1 = T(*o.beta1), w1 = T(1 - *o.beta1);
      m.array() = m.array() * b1 + w1 * g.array();
      g = -m;
    } else {
      g = -g;
    }
    return o.weight_decay != 0 ? o.weight_decay * lr : 0.0;
  }
};

}  // namespace peft::detail

namespace peft::optim {

// Full-rank Adafactor. State per parameter: "exp_avg_sq_row" + "exp_avg_sq_col" (>= 2-D) or
// "exp_avg_sq" (vectors), plus "exp_avg" with beta1.
template <class T>
class adafactor : public rule_optimizer<T, peft::detail::adafactor_rule<T>> {
  using base = rule_optimizer<T, peft::detail::adafactor_rule<T>>;

 public:
  explicit adafactor(std::vector<variable<T>> params, const adafactor_options& o = {})
      : base(std::move(params), o) {}
  explicit adafactor(std::vector<param_group<T>> groups, const adafactor_options& defaults = {})
      : base(std::move(groups), defaults) {}
};

}  // namespace peft::optim
