#pragma once
// neg: y = -a.  dy/da = -1.
#include "peft/autograd/variable.hpp"

namespace peft {

template <class T>
variable<T> neg(const variable<T>& a) {
  if (!a.defined()) throw value_error("neg: undefined input");
  tensor<T> y = tensor<T>::from_shape(a.value().shape());
  as_vector(y) = -as_vector(a.value());
  return make_result<T>(std::move(y), {a}, "neg", [](node<T>& self) {
    tensor<T> dx = tensor<T>::from_shape(self.grad.shape());
    as_vector(dx) = -as_vector(self.grad);
    detail::accumulate(*self.parents[0], std::move(dx));
  });
}

template <class T>
variable<T> operator-(const variable<T>& a) { return neg(a); }

}  // namespace peft
