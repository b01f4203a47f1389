#pragma once
// matmul: the library's GEMM path on the tape. Y = A·B; dA = dY·Bᵀ, dB = Aᵀ·dY.
// Shapes:  [m,k] x [k,n]            -> [m,n]
//          [...,m,k] x [k,n]         -> [...,m,n]  (shared right operand: one GEMM over all rows)
//          [...,m,k] x [...,k,n]     -> [...,m,n]  (equal batch dims: one strided batched GEMM)
//          [m,k] x [...,k,n]         -> [...,m,n]  (shared left operand)
// Every product goes through detail::gemm / gemm_batched on the tensors' own buffers: the
// transposes in the backward pass are trans flags, never copies, and results are written
// straight into the output / gradient buffers (β = 1 accumulates into a gradient).
#include <algorithm>
#include <string>

#include "peft/autograd/variable.hpp"
#include "peft/detail/gemm.hpp"

namespace peft {

namespace detail {

[[noreturn]] inline void matmul_shape_fail(const shape_t& sa, const shape_t& sb) {
  throw shape_error("matmul: " + shape_str(sa) + " x " + shape_str(sb));
}

}  // namespace detail

template <class T>
variable<T> matmul(const variable<T>& a, const variable<T>& b) {
  using detail::trans;
  const shape_t sa = a.shape(), sb = b.shape();
  const std::size_t na = sa.size(), nb = sb.size();
  if (na < 2 || nb < 2 || sa[na - 1] != sb[nb - 2]) detail::matmul_shape_fail(sa, sb);
  const std::size_t m = sa[na - 2], k = sa[na - 1], n = sb[nb - 1];

  if (nb == 2) {
    // [..., m, k] x [k, n]: all leading rows of A form one tall matrix -> a single GEMM.
    shape_t sy = sa;
    sy.back() = n;
    const std::size_t r = numel(shape_t(sa.begin(), sa.end() - 1));
    tensor<T> y = tensor<T>::from_shape(sy);
    detail::gemm<T>(trans::n, trans::n, T(1), as_matrix(a.value(), r, k),
                    as_matrix(b.value(), k, n), T(0), as_matrix(y, r, n), "matmul");
    return make_result<T>(std::move(y), {a, b}, "matmul", [r, k, n](node<T>& self) {
      auto& pa = *self.parents[0];
      auto& pb = *self.parents[1];
      const auto dY = as_matrix(self.grad, r, n);
      if (pa.requires_grad)  // dA += dY·Bᵀ
        detail::gemm<T>(trans::n, trans::t, T(1), dY, as_matrix(pb.value, k, n), T(1),
                        as_matrix(detail::grad_buffer(pa), r, k), "matmul (backward dA)");
      if (pb.requires_grad)  // dB += Aᵀ·dY
        detail::gemm<T>(trans::t, trans::n, T(1), as_matrix(pa.value, r, k), dY, T(1),
                        as_matrix(detail::grad_buffer(pb), k, n), "matmul (backward dB)");
    });
  }

  // Batched: A's batch dims equal B's, or A is a single shared [m, k] matrix.
  const bool shared_left = na == 2;
  if (!shared_left &&
      (na != nb || !std::equal(sa.begin(), sa.end() - 2, sb.begin(), sb.end() - 2)))
    detail::matmul_shape_fail(sa, sb);
  shape_t sy(sb.begin(), sb.end() - 2);
  sy.push_back(m);
  sy.push_back(n);
  const std::size_t batches = numel(shape_t(sb.begin(), sb.end() - 2));
  using gi = detail::gemm_index;
  // Row-major batches back to back: the element strides between consecutive A_i, B_i, Y_i.
  const gi M = gi(m), K = gi(k), N = gi(n), NB = gi(batches);
  const gi a_step = shared_left ? 0 : M * K, b_step = K * N, y_step = M * N;

  tensor<T> y = tensor<T>::from_shape(sy);
  detail::gemm_batched<T>(trans::n, trans::n, M, N, K, T(1), a.value().data(), K, a_step,
                          b.value().data(), N, b_step, T(0), y.data(), N, y_step, NB);
  return make_result<T>(
      std::move(y), {a, b}, "matmul",
      [NB, M, K, N, shared_left, a_step, b_step, y_step](node<T>& self) {
        auto& pa = *self.parents[0];
        auto& pb = *self.parents[1];
        const T* gp = self.grad.data();
        const T* ap = pa.value.data();
        const T* bp = pb.value.data();
        if (pa.requires_grad) {  // dA_i += dY_i·B_iᵀ
          T* dap = detail::grad_buffer(pa).data();
          if (shared_left) {  // every batch adds into the same dA: one GEMM after another, β = 1
            for (gi i = 0; i < NB; ++i)
              detail::gemm<T>(trans::n, trans::t, M, K, N, T(1), gp + i * y_step, N,
                              bp + i * b_step, N, T(1), dap, K);
          } else if (a_step > 0) {
            detail::gemm_batched<T>(trans::n, trans::t, M, K, N, T(1), gp, N, y_step, bp, N,
                                    b_step, T(1), dap, K, a_step, NB);
          }
        }
        if (pb.requires_grad) {  // dB_i += A_iᵀ·dY_i (the one A for a shared left operand)
          T* dbp = detail::grad_buffer(pb).data();
          if (b_step > 0)
            detail::gemm_batched<T>(trans::t, trans::n, K, N, M, T(1), ap, K, a_step, gp, N,
                                    y_step, T(1), dbp, N, b_step, NB);
        }
      });
}

}  // namespace peft
