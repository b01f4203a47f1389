#pragma once
// dropout (inverted): in training each element is zeroed with probability p and the kept ones
// are scaled by 1/(1-p), so evaluation needs no rescaling. One uniform is drawn from g per
// element in row-major order and the element is dropped when it is < p, so a seed reproduces the
// mask. Identity (the input itself, no node) when !training or p == 0. The mask is kept as one
// byte per element for the backward pass, which applies the same mask and scale.
#include <cstdint>
#include <string>

#include "peft/autograd/variable.hpp"
#include "peft/core/random.hpp"

namespace peft {

template <class T>
variable<T> dropout(const variable<T>& a, double p, rng& g, bool training) {
  if (!(p >= 0.0 && p < 1.0))
    throw value_error("dropout: p = " + std::to_string(p) + " outside [0, 1) for input " +
                      shape_str(a.shape()));
  if (!training || p == 0.0) return a;
  const T scale = T(1.0 / (1.0 - p));
  const std::size_t n = a.numel();
  tensor<std::uint8_t> keep = tensor<std::uint8_t>::from_shape(a.value().shape());
  tensor<T> y = tensor<T>::from_shape(a.value().shape());
  {
    const T* ap = a.value().data();
    std::uint8_t* kp = keep.data();
    T* yp = y.data();
    for (std::size_t i = 0; i < n; ++i) {
      kp[i] = g.uniform() >= p;
      yp[i] = kp[i] ? ap[i] * scale : T(0);
    }
  }
  return make_result<T>(std::move(y), {a}, "dropout",
                        [keep = std::move(keep), scale](node<T>& self) {
    auto& parent = *self.parents[0];
    if (!parent.requires_grad) return;
    const Eigen::Map<const Eigen::Matrix<std::uint8_t, Eigen::Dynamic, 1>> K(
        keep.data(), Eigen::Index(keep.size()));
    as_vector(detail::grad_buffer(parent)).array() +=
        as_vector(self.grad).array() * K.template cast<T>().array() * scale;
  });
}

}  // namespace peft
