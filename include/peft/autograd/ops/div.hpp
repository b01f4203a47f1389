#pragma once
// div: y = a / b (elementwise) with NumPy broadcasting.  dy/da = 1/b, dy/db = -a/b² = -y/b (each
// gradient summed over the axes its operand was broadcast along). Division by zero follows IEEE.
#include <type_traits>

#include "peft/autograd/variable.hpp"
#include "peft/detail/broadcast.hpp"

namespace peft {

template <class T>
variable<T> div(const variable<T>& a, const variable<T>& b) {
  if (!a.defined() || !b.defined()) throw value_error("div: undefined operand");
  const shape_t sa = a.shape(), sb = b.shape();
  tensor<T> y;
  if (sa == sb) {
    y = tensor<T>::from_shape(sa);
    as_vector(y) = as_vector(a.value()).cwiseQuotient(as_vector(b.value()));
  } else {
    detail::broadcast_shape(sa, sb, "div");  // throws with both shapes if incompatible
    y = a.value() / b.value();
  }
  return make_result<T>(std::move(y), {a, b}, "div", [sa, sb](node<T>& self) {
    auto& pa = *self.parents[0];
    auto& pb = *self.parents[1];
    const tensor<T>& bv = pb.value;
    const bool same = shape_of(bv) == shape_of(self.grad);  // b has the output shape
    auto reduce = [](tensor<T>&& d, const shape_t& target) {
      if (shape_of(d) == target) return std::move(d);
      return detail::reduce_to_shape(d, target);
    };
    if (pa.requires_grad) {  // g / b
      tensor<T> d;
      if (same) {
        d = tensor<T>::from_shape(self.grad.shape());
        as_vector(d) = as_vector(self.grad).cwiseQuotient(as_vector(bv));
      } else {
        d = self.grad / bv;
      }
      detail::accumulate(pa, reduce(std::move(d), sa));
    }
    if (pb.requires_grad) {  // -g * y / b
      tensor<T> d;
      if (same) {
        d = tensor<T>::from_shape(self.grad.shape());
        as_vector(d) = -as_vector(self.grad).array() * as_vector(self.value).array() /
                       as_vector(bv).array();
      } else {
        d = -(self.grad * self.value) / bv;
      }
      detail::accumulate(pb, reduce(std::move(d), sb));
    }
  });
}

// a / s for a scalar constant s.
template <class T>
variable<T> div(const variable<T>& a, std::type_identity_t<T> s) {
  if (!a.defined()) throw value_error("div: undefined operand");
  tensor<T> y = tensor<T>::from_shape(a.value().shape());
  as_vector(y) = as_vector(a.value()) / s;
  return make_result<T>(std::move(y), {a}, "div_scalar", [s](node<T>& self) {
    tensor<T> dx = tensor<T>::from_shape(self.grad.shape());
    as_vector(dx) = as_vector(self.grad) / s;
    detail::accumulate(*self.parents[0], std::move(dx));
  });
}

template <class T>
variable<T> operator/(const variable<T>& a, const variable<T>& b) { return div(a, b); }
template <class T>
variable<T> operator/(const variable<T>& a, std::type_identity_t<T> s) { return div(a, s); }
// s / a: one node, dy/da = -s/a² = -y/a.
template <class T>
variable<T> operator/(std::type_identity_t<T> s, const variable<T>& a) {
  if (!a.defined()) throw value_error("div: undefined operand");
  tensor<T> y = tensor<T>::from_shape(a.value().shape());
  as_vector(y) = s / as_vector(a.value()).array();
  return make_result<T>(std::move(y), {a}, "rdiv_scalar", [](node<T>& self) {
    const auto& x = self.parents[0]->value;
    tensor<T> dx = tensor<T>::from_shape(self.grad.shape());
    as_vector(dx) =
        -as_vector(self.grad).array() * as_vector(self.value).array() / as_vector(x).array();
    detail::accumulate(*self.parents[0], std::move(dx));
  });
}

}  // namespace peft
