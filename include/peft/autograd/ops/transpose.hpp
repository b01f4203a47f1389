#pragma once
// transpose: swaps the last two dims, [..., m, n] -> [..., n, m]. Each trailing matrix is
// transposed by Eigen (blocked, vectorised copy); the backward pass is the same transpose of the
// gradient, added straight into the parent's gradient buffer.
#include "peft/autograd/variable.hpp"

namespace peft {

namespace detail {

// dst[i] (n x m) = src[i]ᵀ (src[i] is m x n) for each of `batches` consecutive matrices;
// with Accumulate the result is added to dst instead.
template <bool Accumulate, class T>
void batched_transpose(const T* src, T* dst, std::size_t batches, std::size_t m, std::size_t n) {
  const auto M = Eigen::Index(m), N = Eigen::Index(n);
  for (std::size_t i = 0; i < batches; ++i) {
    const_matrix_map<T> S(src + i * m * n, M, N);
    matrix_map<T> D(dst + i * m * n, N, M);
    if constexpr (Accumulate)
      D += S.transpose();
    else
      D = S.transpose();
  }
}

}  // namespace detail

template <class T>
variable<T> transpose(const variable<T>& a) {
  const shape_t sa = a.shape();
  const std::size_t nd = sa.size();
  if (nd < 2) throw shape_error("transpose: " + shape_str(sa) + " has fewer than 2 dims");
  const std::size_t m = sa[nd - 2], n = sa[nd - 1];
  const std::size_t batches = numel(shape_t(sa.begin(), sa.end() - 2));
  shape_t sy = sa;
  std::swap(sy[nd - 2], sy[nd - 1]);
  tensor<T> y = tensor<T>::from_shape(sy);
  detail::batched_transpose<false>(a.value().data(), y.data(), batches, m, n);
  return make_result<T>(std::move(y), {a}, "transpose", [batches, m, n](node<T>& self) {
    auto& p = *self.parents[0];
    if (!p.requires_grad) return;
    // The gradient is [..., n, m]; transposing each matrix back gives [..., m, n].
    detail::batched_transpose<true>(self.grad.data(), detail::grad_buffer(p).data(), batches, n,
                                    m);
  });
}

}  // namespace peft
