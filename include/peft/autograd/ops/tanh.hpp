#pragma once
// tanh: y = tanh(a).  dy/da = 1 - y² (from the saved output).
#include "peft/autograd/variable.hpp"

namespace peft {

template <class T>
variable<T> tanh(const variable<T>& a) {
  if (!a.defined()) throw value_error("tanh: undefined input");
  tensor<T> y = tensor<T>::from_shape(a.value().shape());
  as_vector(y) = as_vector(a.value()).array().tanh();
  return make_result<T>(std::move(y), {a}, "tanh", [](node<T>& self) {
    auto t = as_vector(self.value).array();
    tensor<T> dx = tensor<T>::from_shape(self.grad.shape());
    as_vector(dx) = as_vector(self.grad).array() * (T(1) - t.square());
    detail::accumulate(*self.parents[0], std::move(dx));
  });
}

}  // namespace peft
