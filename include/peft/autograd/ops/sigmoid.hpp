#pragma once
// sigmoid: y = 1 / (1 + e^-a) (Eigen's logistic: saturates to 0/1 without overflow or NaN).
// dy/da = y·(1 - y) (from the saved output).
#include "peft/autograd/variable.hpp"

namespace peft {

template <class T>
variable<T> sigmoid(const variable<T>& a) {
  if (!a.defined()) throw value_error("sigmoid: undefined input");
  tensor<T> y = tensor<T>::from_shape(a.value().shape());
  as_vector(y) = as_vector(a.value()).array().logistic();
  return make_result<T>(std::move(y), {a}, "sigmoid", [](node<T>& self) {
    auto s = as_vector(self.value).array();
    tensor<T> dx = tensor<T>::from_shape(self.grad.shape());
    as_vector(dx) = as_vector(self.grad).array() * s * (T(1) - s);
    detail::accumulate(*self.parents[0], std::move(dx));
  });
}

}  // namespace peft
