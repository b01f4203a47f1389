#pragma once
// exp: y = e^a.  dy/da = y (the saved output, so backward needs no second exp).
// Named peft::exp: found by ADL on variable<T>, does not clash with std::exp on numbers.
#include "peft/autograd/variable.hpp"

namespace peft {

template <class T>
variable<T> exp(const variable<T>& a) {
  if (!a.defined()) throw value_error("exp: undefined input");
  tensor<T> y = tensor<T>::from_shape(a.value().shape());
  as_vector(y) = as_vector(a.value()).array().exp();
  return make_result<T>(std::move(y), {a}, "exp", [](node<T>& self) {
    tensor<T> dx = tensor<T>::from_shape(self.grad.shape());
    as_vector(dx) = as_vector(self.grad).cwiseProduct(as_vector(self.value));
    detail::accumulate(*self.parents[0], std::move(dx));
  });
}

}  // namespace peft
