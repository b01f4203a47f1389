#pragma once
// Gradient clipping, as torch.nn.utils.clip_grad_norm_ / clip_grad_value_. Parameters without
// a gradient are ignored.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "peft/autograd/variable.hpp"
#include "peft/core/error.hpp"
#include "peft/optim/optimizer.hpp"

namespace peft::optim {

// The norm of all gradients together, as if concatenated into one vector; norm_type is p > 0
// or +infinity (max |g|). Accumulated in double whatever T.
template <class T>
double grad_norm(const std::vector<variable<T>>& params, double norm_type = 2.0) {
  if (!(norm_type > 0))
    throw value_error("grad_norm: invalid norm_type " + peft::detail::hparam_str(norm_type) +
                      " (must be > 0 or inf)");
  const bool inf = std::isinf(norm_type);
  double acc = 0;
  bool nan = false;  // maxCoeff does not propagate NaN, the p-norm sums do
  for (const auto& p : params) {
    if (!p.defined() || !p.has_grad()) continue;
    const tensor<T>& gt = p.grad();
    const auto g = as_vector(gt).template cast<double>();
    if (gt.size() == 0) continue;
    if (inf) {
      nan = nan || g.hasNaN();
      acc = std::max(acc, g.cwiseAbs().maxCoeff());
    }
    else if (norm_type == 2)
      acc += g.squaredNorm();
    else if (norm_type == 1)
      acc += g.cwiseAbs().sum();
    else
      acc += g.array().abs().pow(norm_type).sum();
  }
  if (nan) return std::numeric_limits<double>::quiet_NaN();
  if (inf || norm_type == 1) return acc;
  if (norm_type == 2) return std::sqrt(acc);
  return std::pow(acc, 1.0 / norm_type);
}

// Scales all gradients in place by max_norm / (total + 1e-6) when that factor is below 1 (as
// torch, which clamps the factor at 1), and returns the total norm before clipping.
// error_if_nonfinite: throw when the total norm is NaN or infinite (the gradients are then
// left unchanged either way).
template <class T>
double clip_grad_norm(const std::vector<variable<T>>& params, double max_norm,
                      double norm_type = 2.0, bool error_if_nonfinite = false) {
  if (!(max_norm >= 0))
    throw value_error("clip_grad_norm: invalid max_norm " + peft::detail::hparam_str(max_norm) +
                      " (must be >= 0)");
  const double total = grad_norm(params, norm_type);
  if (!std::isfinite(total)) {
    if (error_if_nonfinite)
      throw value_error("clip_grad_norm: the total " + peft::detail::hparam_str(norm_type) +
                        "-norm of the gradients is non-finite (" +
                        peft::detail::hparam_str(total) + ")");
    return total;
  }
  const double coef = max_norm / (total + 1e-6);
  if (coef < 1) {
    const T c = T(coef);
    for (auto p : params)
      if (p.defined() && p.has_grad()) as_vector(p.grad()) *= c;
  }
  return total;
}

// Clamps every gradient element to [-clip_value, clip_value] in place.
template <class T>
void clip_grad_value(const std::vector<variable<T>>& params, double clip_value) {
  if (!(clip_value >= 0))
    throw value_error("clip_grad_value: invalid clip_value " +
                      peft::detail::hparam_str(clip_value) + " (must be >= 0)");
  const T hi = T(clip_value), lo = -hi;
  for (auto p : params)
    if (p.defined() && p.has_grad()) {
      auto g = as_vector(p.grad());
      g = g.cwiseMax(lo).cwiseMin(hi);
    }
}

}  // namespace peft::optim
