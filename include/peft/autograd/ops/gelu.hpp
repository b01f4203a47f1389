#pragma once
// gelu: y = a·Φ(a), Φ the standard normal CDF.
//   none (exact, PyTorch's default): y = 0.5·a·(1 + erf(a/√2)),
//       dy/da = 0.5·(1 + erf(a/√2)) + a·e^(-a²/2)/√(2π)
//   tanh: y = 0.5·a·(1 + t), t = tanh(k·(a + c·a³)), k = √(2/π), c = 0.044715,
//       dy/da = 0.5·(1 + t) + 0.5·a·(1 - t²)·k·(1 + 3c·a²)
#include <cmath>
#include <numbers>

#include "peft/autograd/variable.hpp"

namespace peft {

enum class gelu_approx { none, tanh };

namespace detail {
// erf(v/√2). erf is not in Eigen/Core (only in the unsupported SpecialFunctions module).
template <class T>
T gelu_erf(T v) {
  return std::erf(v / std::numbers::sqrt2_v<T>);
}
}  // namespace detail

template <class T>
variable<T> gelu(const variable<T>& a, gelu_approx approx = gelu_approx::none) {
  if (!a.defined()) throw value_error("gelu: undefined input");
  // static: the backward closures use them without capturing.
  static constexpr T inv_sqrt2 = T(1) / std::numbers::sqrt2_v<T>;
  static constexpr T inv_sqrt_2pi = std::numbers::inv_sqrtpi_v<T> * inv_sqrt2;
  static constexpr T k = std::numbers::sqrt2_v<T> * std::numbers::inv_sqrtpi_v<T>;
  static constexpr T c = T(0.044715);
  tensor<T> y = tensor<T>::from_shape(a.value().shape());
  auto x = as_vector(a.value()).array();
  if (approx == gelu_approx::none) {
    as_vector(y) = T(0.5) * x * (T(1) + x.unaryExpr(&detail::gelu_erf<T>));
    return make_result<T>(std::move(y), {a}, "gelu", [](node<T>& self) {
      auto x = as_vector(self.parents[0]->value).array();
      tensor<T> dx = tensor<T>::from_shape(self.grad.shape());
      as_vector(dx) = as_vector(self.grad).array() *
                      (T(0.5) * (T(1) + x.unaryExpr(&detail::gelu_erf<T>)) +
                       x * (T(-0.5) * x.square()).exp() * inv_sqrt_2pi);
      detail::accumulate(*self.parents[0], std::move(dx));
    });
  }
  as_vector(y) = T(0.5) * x * (T(1) + (k * (x + c * x.cube())).tanh());
  return make_result<T>(std::move(y), {a}, "gelu_tanh", [](node<T>& self) {
    auto x = as_vector(self.parents[0]->value).array();
    tensor<T> dx = tensor<T>::from_shape(self.grad.shape());
    auto d = as_vector(dx).array();
    d = (k * (x + c * x.cube())).tanh();  // t, then the derivative in place
    d = as_vector(self.grad).array() *
        (T(0.5) * (T(1) + d) +
         T(0.5) * k * x * (T(1) - d.square()) * (T(1) + T(3) * c * x.square()));
    detail::accumulate(*self.parents[0], std::move(dx));
  });
}

}  // namespace peft
