#pragma once
// pow: y = a^p for a constant exponent p.  dy/da = p·a^(p-1); exactly 0 when p == 0 (so that
// a = 0 does not give 0·inf = NaN).
#include <type_traits>

#include "peft/autograd/variable.hpp"

namespace peft {

template <class T>
variable<T> pow(const variable<T>& a, std::type_identity_t<T> p) {
  if (!a.defined()) throw value_error("pow: undefined input");
  tensor<T> y = tensor<T>::from_shape(a.value().shape());
  auto x = as_vector(a.value()).array();
  if (p == T(2))  // the common case (squares in norms and losses) without a transcendental call
    as_vector(y) = x.square();
  else
    as_vector(y) = x.pow(p);
  return make_result<T>(std::move(y), {a}, "pow", [p](node<T>& self) {
    auto x = as_vector(self.parents[0]->value).array();
    auto g = as_vector(self.grad).array();
    tensor<T> dx = tensor<T>::from_shape(self.grad.shape());
    if (p == T(0))
      dx.fill(T(0));
    else if (p == T(2))
      as_vector(dx) = T(2) * g * x;
    else
      as_vector(dx) = p * g * x.pow(p - T(1));
    detail::accumulate(*self.parents[0], std::move(dx));
  });
}

}  // namespace peft
