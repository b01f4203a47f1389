#pragma once
// silu (swish): y = a·σ(a).  dy/da = σ(a)·(1 + a·(1 - σ(a))); σ is recomputed in backward
// rather than stored, trading one exp per element for a tensor of memory.
#include "peft/autograd/variable.hpp"

namespace peft {

template <class T>
variable<T> silu(const variable<T>& a) {
  if (!a.defined()) throw value_error("silu: undefined input");
  tensor<T> y = tensor<T>::from_shape(a.value().shape());
  auto x = as_vector(a.value()).array();
  as_vector(y) = x * x.logistic();
  return make_result<T>(std::move(y), {a}, "silu", [](node<T>& self) {
    auto x = as_vector(self.parents[0]->value).array();
    tensor<T> dx = tensor<T>::from_shape(self.grad.shape());
    auto dxv = as_vector(dx).array();
    dxv = x.logistic();  // σ(x), then the derivative in place
    dxv = as_vector(self.grad).array() * dxv * (T(1) + x * (T(1) - dxv));
    detail::accumulate(*self.parents[0], std::move(dx));
  });
}

}  // namespace peft
