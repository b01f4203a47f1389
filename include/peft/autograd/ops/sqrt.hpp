#pragma once
// sqrt: y = √a.  dy/da = 1/(2√a) = 0.5/y (the saved output; infinite at a = 0, as in PyTorch).
#include "peft/autograd/variable.hpp"

namespace peft {

template <class T>
variable<T> sqrt(const variable<T>& a) {
  if (!a.defined()) throw value_error("sqrt: undefined input");
  tensor<T> y = tensor<T>::from_shape(a.value().shape());
  as_vector(y) = as_vector(a.value()).array().sqrt();
  return make_result<T>(std::move(y), {a}, "sqrt", [](node<T>& self) {
    tensor<T> dx = tensor<T>::from_shape(self.grad.shape());
    as_vector(dx) = T(0.5) * as_vector(self.grad).array() / as_vector(self.value).array();
    detail::accumulate(*self.parents[0], std::move(dx));
  });
}

}  // namespace peft
