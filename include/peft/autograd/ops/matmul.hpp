#pragma once
// matmul: the library's GEMM path on the tape. Y = A·B; dA = dY·Bᵀ, dB = Aᵀ·dY.
// Shapes:  [m,k] x [k,n]            -> [m,n]
//          [...,m,k] x [k,n]         -> [...,m,n]  (shared right operand: one GEMM over all rows)
//          [...,m,k] x [...,k,n]     -> [...,m,n]  (equal batch dims: one GEMM per batch)
//          [m,k] x [...,k,n]         -> [...,m,n]  (shared left operand)
// Every product is an Eigen GEMM over Maps of the tensors' own buffers: the transposes in the
// backward pass are Eigen expression flags, never copies, and results are written straight into
// the output / gradient buffers.
#include <algorithm>
#include <string>

#include "peft/autograd/variable.hpp"
#include "peft/core/threads.hpp"

namespace peft {

namespace detail {

[[noreturn]] inline void matmul_shape_fail(const shape_t& sa, const shape_t& sb) {
  throw shape_error("matmul: " + shape_str(sa) + " x " + shape_str(sb));
}

// Runs f(i) for i in [0, batches). Small per-batch products (attention heads) are spread over
// threads by batch, which beats letting Eigen split each small GEMM; Eigen runs single-threaded
// inside the parallel region. Large products keep Eigen's own GEMM threading.
// With a BLAS the batches run in order and the BLAS threads each product (PEFT_OWN_OPENMP).
// f must write disjoint memory for different i.
template <class F>
void matmul_for_batches(std::size_t batches, std::size_t work_per_batch, F&& f) {
#ifdef PEFT_OWN_OPENMP
  const int nt = num_threads();
  if (nt > 1 && batches > 1 && work_per_batch <= std::size_t(1) << 21) {
    const serial_blas_guard one_blas_thread;  // with EIGEN_USE_BLAS: no BLAS threads inside
    const auto nb = std::ptrdiff_t(batches);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (std::ptrdiff_t i = 0; i < nb; ++i) f(std::size_t(i));
    return;
  }
#endif
  (void)work_per_batch;
  for (std::size_t i = 0; i < batches; ++i) f(i);
}

}  // namespace detail

template <class T>
variable<T> matmul(const variable<T>& a, const variable<T>& b) {
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
    as_matrix(y, r, n).noalias() = as_matrix(a.value(), r, k) * as_matrix(b.value(), k, n);
    return make_result<T>(std::move(y), {a, b}, "matmul", [r, k, n](node<T>& self) {
      auto& pa = *self.parents[0];
      auto& pb = *self.parents[1];
      const auto dY = as_matrix(self.grad, r, n);
      if (pa.requires_grad)
        as_matrix(detail::grad_buffer(pa), r, k).noalias() +=
            dY * as_matrix(pb.value, k, n).transpose();
      if (pb.requires_grad)
        as_matrix(detail::grad_buffer(pb), k, n).noalias() +=
            as_matrix(pa.value, r, k).transpose() * dY;
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
  const std::size_t a_step = shared_left ? 0 : m * k, b_step = k * n, y_step = m * n;

  tensor<T> y = tensor<T>::from_shape(sy);
  {
    const T* ap = a.value().data();
    const T* bp = b.value().data();
    T* yp = y.data();
    detail::matmul_for_batches(batches, m * k * n, [&](std::size_t i) {
      matrix_map<T> Y(yp + i * y_step, Eigen::Index(m), Eigen::Index(n));
      Y.noalias() = const_matrix_map<T>(ap + i * a_step, Eigen::Index(m), Eigen::Index(k)) *
                    const_matrix_map<T>(bp + i * b_step, Eigen::Index(k), Eigen::Index(n));
    });
  }
  return make_result<T>(
      std::move(y), {a, b}, "matmul",
      [batches, m, k, n, a_step, b_step, y_step](node<T>& self) {
        auto& pa = *self.parents[0];
        auto& pb = *self.parents[1];
        const T* gp = self.grad.data();
        const T* ap = pa.value.data();
        const T* bp = pb.value.data();
        const auto M = Eigen::Index(m), K = Eigen::Index(k), N = Eigen::Index(n);
        if (pa.requires_grad) {
          T* dap = detail::grad_buffer(pa).data();
          auto da = [&](std::size_t i) {
            matrix_map<T>(dap + i * a_step, M, K).noalias() +=
                const_matrix_map<T>(gp + i * y_step, M, N) *
                const_matrix_map<T>(bp + i * b_step, K, N).transpose();
          };
          if (a_step == 0)  // shared left operand: every batch adds into the same dA
            for (std::size_t i = 0; i < batches; ++i) da(i);
          else
            detail::matmul_for_batches(batches, m * k * n, da);
        }
        if (pb.requires_grad) {
          T* dbp = detail::grad_buffer(pb).data();
          detail::matmul_for_batches(batches, m * k * n, [&](std::size_t i) {
            matrix_map<T>(dbp + i * b_step, K, N).noalias() +=
                const_matrix_map<T>(ap + i * a_step, M, K).transpose() *
                const_matrix_map<T>(gp + i * y_step, M, N);
          });
        }
      });
}

}  // namespace peft
