#pragma once
// mean: y = (1/n) Σ a over the given axes, n = number of elements reduced into each output (all
// axes -> a 0-d tensor).  dy/da = 1/n, broadcast back. One node (not sum then scale).
// Axes as for sum: negative counts from the end, an empty list reduces nothing. A mean over zero
// elements is NaN, as in NumPy.
#include <vector>

#include "peft/autograd/ops/sum.hpp"

namespace peft {

template <class T>
variable<T> mean(const variable<T>& a, const std::vector<int>& axes, bool keepdims = false) {
  if (!a.defined()) throw value_error("mean: undefined input");
  const auto plan = detail::make_reduce_plan(a.shape(), axes, keepdims, "mean");
  const T scale = T(1) / T(plan.count);
  tensor<T> y = detail::reduce_sum(a.value(), plan);
  as_vector(y) *= scale;
  return make_result<T>(std::move(y), {a}, "mean", [plan, scale](node<T>& self) {
    detail::accumulate(*self.parents[0], detail::expand_reduced(self.grad, plan, scale));
  });
}

// Mean of all elements, as a 0-d tensor (shape {}).
template <class T>
variable<T> mean(const variable<T>& a) {
  if (!a.defined()) throw value_error("mean: undefined input");
  return mean(a, detail::all_axes(a.ndim()), false);
}

}  // namespace peft
