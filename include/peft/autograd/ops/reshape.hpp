#pragma once
// reshape: same elements in the same row-major order under a new shape. One entry may be -1
// (inferred from the others). Every node owns its value, so the data is copied once; the
// backward pass adds the gradient back element for element.
#include <string>
#include <vector>

#include "peft/autograd/variable.hpp"

namespace peft {

template <class T>
variable<T> reshape(const variable<T>& a, const std::vector<std::ptrdiff_t>& shape) {
  const shape_t sa = a.shape();
  const std::size_t total = numel(sa);
  auto fail = [&](const std::string& why) {
    throw shape_error("reshape: " + shape_str(sa) + " to " + shape_str(shape) + " (" + why + ")");
  };
  shape_t sy(shape.size());
  std::size_t known = 1;
  std::ptrdiff_t infer = -1;
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      if (infer >= 0) fail("more than one -1");
      infer = std::ptrdiff_t(i);
    } else if (shape[i] < 0) {
      fail("negative size");
    } else {
      sy[i] = std::size_t(shape[i]);
      known *= sy[i];
    }
  }
  if (infer >= 0) {
    if (known == 0 || total % known != 0) fail("cannot infer the -1 dim");
    sy[std::size_t(infer)] = total / known;
  } else if (known != total) {
    fail("numel " + std::to_string(total) + " vs " + std::to_string(known));
  }

  tensor<T> y = tensor<T>::from_shape(sy);
  as_vector(y) = as_vector(a.value());
  return make_result<T>(std::move(y), {a}, "reshape", [](node<T>& self) {
    auto& p = *self.parents[0];
    if (p.requires_grad) as_vector(detail::grad_buffer(p)) += as_vector(self.grad);
  });
}

}  // namespace peft
