#pragma once
// relu: y = max(a, 0).  dy/da = 1 where a > 0, else 0 (0 at a = 0, as in PyTorch).
#include "peft/autograd/variable.hpp"

namespace peft {

template <class T>
variable<T> relu(const variable<T>& a) {
  if (!a.defined()) throw value_error("relu: undefined input");
  tensor<T> y = tensor<T>::from_shape(a.value().shape());
  as_vector(y) = as_vector(a.value()).cwiseMax(T(0));
  return make_result<T>(std::move(y), {a}, "relu", [](node<T>& self) {
    auto x = as_vector(self.parents[0]->value).array();
    tensor<T> dx = tensor<T>::from_shape(self.grad.shape());
    as_vector(dx) = (x > T(0)).select(as_vector(self.grad), T(0));
    detail::accumulate(*self.parents[0], std::move(dx));
  });
}

}  // namespace peft
