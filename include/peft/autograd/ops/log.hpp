#pragma once
// log: y = ln(a) (natural log; a <= 0 gives -inf / NaN as in IEEE).  dy/da = 1/a.
#include "peft/autograd/variable.hpp"

namespace peft {

template <class T>
variable<T> log(const variable<T>& a) {
  if (!a.defined()) throw value_error("log: undefined input");
  tensor<T> y = tensor<T>::from_shape(a.value().shape());
  as_vector(y) = as_vector(a.value()).array().log();
  return make_result<T>(std::move(y), {a}, "log", [](node<T>& self) {
    const auto& x = self.parents[0]->value;
    tensor<T> dx = tensor<T>::from_shape(self.grad.shape());
    as_vector(dx) = as_vector(self.grad).cwiseQuotient(as_vector(x));
    detail::accumulate(*self.parents[0], std::move(dx));
  });
}

}  // namespace peft
