#pragma once
// log_softmax along one axis: y = a - max - log Σ e^(a - max) (log-sum-exp with the max
// subtracted: finite for large inputs, and exact where softmax would underflow to 0).
// Backward: dx = g - softmax(a)·Σ g along the axis, with softmax(a) = e^y.
#include <cmath>

#include "peft/autograd/ops/softmax.hpp"

namespace peft {

template <class T>
variable<T> log_softmax(const variable<T>& a, int axis = -1) {
  if (!a.defined()) throw value_error("log_softmax: undefined input");
  const auto v = detail::make_axis_view(a.shape(), axis, "log_softmax");
  tensor<T> y = tensor<T>::from_shape(a.value().shape());
  detail::for_each_axis_slice(
      v,
      [](auto xs, auto ys) {
        ys = xs - xs.maxCoeff();
        ys -= std::log(ys.exp().sum());
      },
      [](auto xs, auto ys) {
        ys = xs.rowwise() - detail::col_max(xs);
        ys.rowwise() -= detail::col_sum(ys.exp()).log().eval();
      },
      a.value().data(), y.data());
  return make_result<T>(std::move(y), {a}, "log_softmax", [v](node<T>& self) {
    tensor<T> dx = tensor<T>::from_shape(self.grad.shape());
    detail::for_each_axis_slice(
        v, [](auto gs, auto ys, auto ds) { ds = gs - ys.exp() * gs.sum(); },
        [](auto gs, auto ys, auto ds) { ds = gs - ys.exp().rowwise() * detail::col_sum(gs); },
        static_cast<const T*>(self.grad.data()), static_cast<const T*>(self.value.data()),
        dx.data());
    detail::accumulate(*self.parents[0], std::move(dx));
  });
}

}  // namespace peft
