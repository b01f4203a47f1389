#pragma once
// sub: y = a - b with NumPy broadcasting.  dy/da = 1, dy/db = -1 (summed over broadcast axes).
#include <type_traits>

#include "peft/autograd/variable.hpp"
#include "peft/detail/broadcast.hpp"

namespace peft {

template <class T>
variable<T> sub(const variable<T>& a, const variable<T>& b) {
  if (!a.defined() || !b.defined()) throw value_error("sub: undefined operand");
  const shape_t sa = a.shape(), sb = b.shape();
  tensor<T> y;
  if (sa == sb) {
    y = tensor<T>::from_shape(sa);
    as_vector(y) = as_vector(a.value()) - as_vector(b.value());
  } else {
    detail::broadcast_shape(sa, sb, "sub");  // throws with both shapes if incompatible
    y = a.value() - b.value();
  }
  return make_result<T>(std::move(y), {a, b}, "sub", [sa, sb](node<T>& self) {
    auto& pa = *self.parents[0];
    auto& pb = *self.parents[1];
    if (pa.requires_grad) detail::accumulate(pa, detail::reduce_to_shape(self.grad, sa));
    if (pb.requires_grad) {
      tensor<T> gb = detail::reduce_to_shape(self.grad, sb);
      as_vector(gb) = -as_vector(gb);
      detail::accumulate(pb, std::move(gb));
    }
  });
}

// a - s for a scalar constant s.
template <class T>
variable<T> sub(const variable<T>& a, std::type_identity_t<T> s) {
  if (!a.defined()) throw value_error("sub: undefined operand");
  tensor<T> y = tensor<T>::from_shape(a.value().shape());
  as_vector(y) = as_vector(a.value()).array() - s;
  return make_result<T>(std::move(y), {a}, "sub_scalar", [](node<T>& self) {
    detail::accumulate(*self.parents[0], tensor<T>(self.grad));
  });
}

template <class T>
variable<T> operator-(const variable<T>& a, const variable<T>& b) { return sub(a, b); }
template <class T>
variable<T> operator-(const variable<T>& a, std::type_identity_t<T> s) { return sub(a, s); }
// s - a: one node (no separate negation), dy/da = -1.
template <class T>
variable<T> operator-(std::type_identity_t<T> s, const variable<T>& a) {
  if (!a.defined()) throw value_error("sub: undefined operand");
  tensor<T> y = tensor<T>::from_shape(a.value().shape());
  as_vector(y) = s - as_vector(a.value()).array();
  return make_result<T>(std::move(y), {a}, "rsub_scalar", [](node<T>& self) {
    tensor<T> dx = tensor<T>::from_shape(self.grad.shape());
    as_vector(dx) = -as_vector(self.grad);
    detail::accumulate(*self.parents[0], std::move(dx));
  });
}

}  // namespace peft
