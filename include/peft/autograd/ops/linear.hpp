#pragma once
// linear: y = x·Wᵀ + b as one node, PyTorch layout (W is [out, in], b is [out] or absent).
//   x [..., in] -> y [..., out]; the leading dims of x are collapsed into the rows of one GEMM.
// Backward: dX = dY·W, dW = dYᵀ·X, db = column sums of dY, each only for a parent that requires
// grad (a frozen base weight costs no dW GEMM). Wᵀ is a detail::gemm trans flag, never a copy.
#include <string>

#include "peft/autograd/variable.hpp"
#include "peft/detail/gemm.hpp"

namespace peft {

// bias may be an undefined variable<T>() for no bias.
template <class T>
variable<T> linear(const variable<T>& x, const variable<T>& W, const variable<T>& bias = {}) {
  using detail::trans;
  const shape_t sx = x.shape(), sw = W.shape();
  if (sx.empty() || sw.size() != 2 || sx.back() != sw[1])
    throw shape_error("linear: x " + shape_str(sx) + " x W " + shape_str(sw) +
                      " (expects x [..., in], W [out, in])");
  const std::size_t in = sw[1], out = sw[0];
  const bool has_bias = bias.defined();
  if (has_bias && bias.shape() != shape_t{out})
    throw shape_error("linear: bias " + shape_str(bias.shape()) + " for W " + shape_str(sw) +
                      " (expects [" + std::to_string(out) + "])");
  const std::size_t rows = numel(shape_t(sx.begin(), sx.end() - 1));

  shape_t sy = sx;
  sy.back() = out;
  tensor<T> y = tensor<T>::from_shape(sy);
  auto Y = as_matrix(y, rows, out);
  // Start from the broadcast bias and let the GEMM accumulate (beta = 1): no extra pass over Y.
  if (has_bias)
    Y.rowwise() = as_vector(bias.value()).transpose();
  else
    Y.setZero();
  detail::gemm<T>(trans::n, trans::t, T(1), as_matrix(x.value(), rows, in),
                  as_matrix(W.value(), out, in), T(1), Y, "linear");

  return make_result<T>(std::move(y), {x, W, bias}, "linear", [rows, in, out](node<T>& self) {
    auto& px = *self.parents[0];
    auto& pw = *self.parents[1];
    node<T>* pb = self.parents[2].get();
    const auto dY = as_matrix(self.grad, rows, out);
    if (px.requires_grad)  // dX += dY·W
      detail::gemm<T>(trans::n, trans::n, T(1), dY, as_matrix(pw.value, out, in), T(1),
                      as_matrix(detail::grad_buffer(px), rows, in), "linear (backward dX)");
    if (pw.requires_grad)  // dW += dYᵀ·X
      detail::gemm<T>(trans::t, trans::n, T(1), dY, as_matrix(px.value, rows, in), T(1),
                      as_matrix(detail::grad_buffer(pw), out, in), "linear (backward dW)");
    if (pb && pb->requires_grad)
      as_vector(detail::grad_buffer(*pb)) += dY.colwise().sum().transpose();
  });
}

}  // namespace peft
