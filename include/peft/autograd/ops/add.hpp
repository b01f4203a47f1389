#pragma once
// add: y = a + b with NumPy broadcasting.  dy/da = 1, dy/db = 1 (summed over broadcast axes).
#include <type_traits>

#include "peft/autograd/variable.hpp"
#include "peft/detail/broadcast.hpp"

namespace peft {

template <class T>
variable<T> add(const variable<T>& a, const variable<T>& b) {
  const shape_t sa = a.shape(), sb = b.shape();
  tensor<T> y;
  if (sa == sb) {
    y = tensor<T>::from_shape(sa);
    as_vector(y) = as_vector(a.value()) + as_vector(b.value());
  } else {
    detail::broadcast_shape(sa, sb, "add");  // throws with both shapes if incompatible
    y = a.value() + b.value();
  }
  return make_result<T>(std::move(y), {a, b}, "add", [sa, sb](node<T>& self) {
    auto& pa = *self.parents[0];
    auto& pb = *self.parents[1];
    if (pa.requires_grad) detail::accumulate(pa, detail::reduce_to_shape(self.grad, sa));
    if (pb.requires_grad) detail::accumulate(pb, detail::reduce_to_shape(self.grad, sb));
  });
}

// a + s for a scalar constant s.
template <class T>
variable<T> add(const variable<T>& a, std::type_identity_t<T> s) {
  tensor<T> y = tensor<T>::from_shape(a.value().shape());
  as_vector(y) = as_vector(a.value()).array() + s;
  return make_result<T>(std::move(y), {a}, "add_scalar", [](node<T>& self) {
    detail::accumulate(*self.parents[0], tensor<T>(self.grad));
  });
}

template <class T>
variable<T> operator+(const variable<T>& a, const variable<T>& b) { return add(a, b); }
template <class T>
variable<T> operator+(const variable<T>& a, std::type_identity_t<T> s) { return add(a, s); }
template <class T>
variable<T> operator+(std::type_identity_t<T> s, const variable<T>& a) { return add(a, s); }

}  // namespace peft
