#pragma once
// mul: y = a * b (elementwise) with NumPy broadcasting.  dy/da = b, dy/db = a (each gradient
// summed over the axes its operand was broadcast along).
#include <type_traits>

#include "peft/autograd/variable.hpp"
#include "peft/detail/broadcast.hpp"

namespace peft {

template <class T>
variable<T> mul(const variable<T>& a, const variable<T>& b) {
  if (!a.defined() || !b.defined()) throw value_error("mul: undefined operand");
  const shape_t sa = a.shape(), sb = b.shape();
  tensor<T> y;
  if (sa == sb) {
    y = tensor<T>::from_shape(sa);
    as_vector(y) = as_vector(a.value()).cwiseProduct(as_vector(b.value()));
  } else {
    detail::broadcast_shape(sa, sb, "mul");  // throws with both shapes if incompatible
    y = a.value() * b.value();
  }
  return make_result<T>(std::move(y), {a, b}, "mul", [sa, sb](node<T>& self) {
    auto& pa = *self.parents[0];
    auto& pb = *self.parents[1];
    // g * other, evaluated at the output shape, then summed down to `target`.
    auto grad_of = [&self](const tensor<T>& other, const shape_t& target) {
      tensor<T> d;
      if (shape_of(other) == shape_of(self.grad)) {
        d = tensor<T>::from_shape(self.grad.shape());
        as_vector(d) = as_vector(self.grad).cwiseProduct(as_vector(other));
      } else {
        d = self.grad * other;  // xtensor broadcasts `other` to the output shape
      }
      if (shape_of(d) == target) return d;
      return detail::reduce_to_shape(d, target);
    };
    if (pa.requires_grad) detail::accumulate(pa, grad_of(pb.value, sa));
    if (pb.requires_grad) detail::accumulate(pb, grad_of(pa.value, sb));
  });
}

// a * s for a scalar constant s.
template <class T>
variable<T> mul(const variable<T>& a, std::type_identity_t<T> s) {
  if (!a.defined()) throw value_error("mul: undefined operand");
  tensor<T> y = tensor<T>::from_shape(a.value().shape());
  as_vector(y) = as_vector(a.value()) * s;
  return make_result<T>(std::move(y), {a}, "mul_scalar", [s](node<T>& self) {
    tensor<T> dx = tensor<T>::from_shape(self.grad.shape());
    as_vector(dx) = as_vector(self.grad) * s;
    detail::accumulate(*self.parents[0], std::move(dx));
  });
}

template <class T>
variable<T> operator*(const variable<T>& a, const variable<T>& b) { return mul(a, b); }
template <class T>
variable<T> operator*(const variable<T>& a, std::type_identity_t<T> s) { return mul(a, s); }
template <class T>
variable<T> operator*(std::type_identity_t<T> s, const variable<T>& a) { return mul(a, s); }

}  // namespace peft
