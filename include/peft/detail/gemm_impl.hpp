#pragma once
// Definitions of detail/gemm.hpp. Seen by header-only programs and by the compiled library
// (src/gemm.cpp); a program linking peft::compiled never includes this.
//
// Backends (CMake PEFT_GEMM, which defines one macro as a usage requirement):
//   PEFT_GEMM_ONEDNN: float products through oneDNN's dnnl_sgemm (ISA chosen at run time, no
//                     -march needed); double through Eigen's kernel.
//   otherwise:        Eigen's kernel, or the BLAS when EIGEN_USE_BLAS is set (PEFT_GEMM=blas).
#include <string>
#include <type_traits>

#include "peft/core/error.hpp"
#include "peft/core/threads.hpp"
#include "peft/detail/gemm.hpp"

#if defined(PEFT_GEMM_ONEDNN)
#include <oneapi/dnnl/dnnl.h>
#endif

namespace peft::detail {

template <class T>
void gemm_eigen(trans ta, trans tb, gemm_index m, gemm_index n, gemm_index k, T alpha,
                const T* a, gemm_index lda, const T* b, gemm_index ldb, T* c, gemm_index ldc) {
  using cmap = Eigen::Map<const matrix<T>, 0, Eigen::OuterStride<>>;
  Eigen::Map<matrix<T>, 0, Eigen::OuterStride<>> C(c, m, n, Eigen::OuterStride<>(ldc));
  const cmap A(a, ta == trans::n ? m : k, ta == trans::n ? k : m, Eigen::OuterStride<>(lda));
  const cmap B(b, tb == trans::n ? k : n, tb == trans::n ? n : k, Eigen::OuterStride<>(ldb));
  // Four instantiations in all: every product of the library is one of these.
  if (ta == trans::n && tb == trans::n)
    C.noalias() += alpha * A * B;
  else if (ta == trans::n)
    C.noalias() += alpha * A * B.transpose();
  else if (tb == trans::n)
    C.noalias() += alpha * A.transpose() * B;
  else
    C.noalias() += alpha * A.transpose() * B.transpose();
}

template <class T>
void gemm(trans ta, trans tb, gemm_index m, gemm_index n, gemm_index k, T alpha, const T* a,
          gemm_index lda, const T* b, gemm_index ldb, T beta, T* c, gemm_index ldc) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "peft::detail::gemm: float or double");
  if (m < 0 || n < 0 || k < 0)
    throw shape_error("gemm: negative size m=" + std::to_string(m) + " n=" + std::to_string(n) +
                      " k=" + std::to_string(k));
  if (m == 0 || n == 0) return;
  // β: 0 overwrites (C's old contents, even NaN, are ignored), 1 accumulates.
  auto scale_c = [&] {
    for (gemm_index i = 0; i < m; ++i) {
      T* row = c + i * ldc;
      if (beta == T(0))
        for (gemm_index j = 0; j < n; ++j) row[j] = T(0);
      else
        for (gemm_index j = 0; j < n; ++j) row[j] *= beta;
    }
  };
  if (k == 0 || alpha == T(0)) {
    if (beta != T(1)) scale_c();
    return;
  }
#if defined(PEFT_GEMM_ONEDNN)
  if constexpr (std::is_same_v<T, float>) {
    const dnnl_status_t st =
        dnnl_sgemm(ta == trans::t ? 'T' : 'N', tb == trans::t ? 'T' : 'N', m, n, k, alpha, a, lda,
                   b, ldb, beta, c, ldc);
    if (st != dnnl_success)
      throw value_error("gemm (onednn): dnnl_sgemm failed with status " +
                        std::to_string(int(st)) + " for m=" + std::to_string(m) +
                        " n=" + std::to_string(n) + " k=" + std::to_string(k));
  } else
#endif
  {
    // (In the else branch: with oneDNN, float instantiates no Eigen kernel here.)
    if (beta != T(1)) scale_c();
    gemm_eigen<T>(ta, tb, m, n, k, alpha, a, lda, b, ldb, c, ldc);
  }
}

template <class T>
void gemm_batched(trans ta, trans tb, gemm_index m, gemm_index n, gemm_index k, T alpha,
                  const T* a, gemm_index lda, gemm_index stride_a, const T* b, gemm_index ldb,
                  gemm_index stride_b, T beta, T* c, gemm_index ldc, gemm_index stride_c,
                  gemm_index batch) {
  if (m == 0 || n == 0 || batch <= 0) return;
  if (batch > 1 && stride_c == 0)
    throw value_error("gemm_batched: stride_c = 0 with " + std::to_string(batch) +
                      " batches (the products would race on one C)");
  auto one = [&](gemm_index i) {
    gemm<T>(ta, tb, m, n, k, alpha, a + i * stride_a, lda, b + i * stride_b, ldb, beta,
            c + i * stride_c, ldc);
  };
#ifdef PEFT_OWN_OPENMP
  // Small products (attention heads) are spread over threads by batch, which beats splitting
  // each small GEMM; each runs single-threaded inside the region.
  const int nt = num_threads();
  if (nt > 1 && batch > 1 && m * n * k <= gemm_index(1) << 21) {
    const serial_blas_guard one_blas_thread;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (gemm_index i = 0; i < batch; ++i) one(i);
    return;
  }
#endif
  for (gemm_index i = 0; i < batch; ++i) one(i);
}

template <class T>
void gemm(trans ta, trans tb, T alpha, matrix_cref<T> A, matrix_cref<T> B, T beta,
          matrix_ref<T> C, const char* op) {
  const gemm_index m = ta == trans::n ? A.rows() : A.cols();
  const gemm_index k = ta == trans::n ? A.cols() : A.rows();
  const gemm_index kb = tb == trans::n ? B.rows() : B.cols();
  const gemm_index n = tb == trans::n ? B.cols() : B.rows();
  if (k != kb || C.rows() != m || C.cols() != n) {
    auto dims = [](const char* name, gemm_index r, gemm_index c, trans t) {
      return std::string(name) + (t == trans::t ? "ᵀ" : "") + " [" + std::to_string(r) + "," +
             std::to_string(c) + "]";
    };
    throw shape_error(std::string(op) + ": " + dims("A", A.rows(), A.cols(), ta) + " x " +
                      dims("B", B.rows(), B.cols(), tb) + " into C [" +
                      std::to_string(C.rows()) + "," + std::to_string(C.cols()) + "]");
  }
  // A 1-row or 1-column operand may carry any outer stride; a row stride below the width
  // only happens for such vectors, where it is never used.
  auto ld = [](gemm_index stride, gemm_index cols) { return stride < cols ? cols : stride; };
  gemm<T>(ta, tb, m, n, k, alpha, A.data(), ld(A.outerStride(), A.cols()), B.data(),
          ld(B.outerStride(), B.cols()), beta, C.data(), ld(C.outerStride(), C.cols()));
}

template <class T>
void gemm_into(matrix<T>& C, trans ta, trans tb, matrix_cref<T> A, matrix_cref<T> B, T alpha,
               const char* op) {
  C.resize(ta == trans::n ? A.rows() : A.cols(), tb == trans::n ? B.cols() : B.rows());
  gemm<T>(ta, tb, alpha, A, B, T(0), matrix_ref<T>(C), op);
}

// Non-template: defined in every header-only TU (inline), and in the compiled library only in
// src/gemm.cpp (PEFT_UNIT_GEMM), so that it is defined once.
#if !defined(PEFT_COMPILED_LIB) || defined(PEFT_UNIT_GEMM)
PEFT_INLINE const char* gemm_backend() {
#if defined(PEFT_GEMM_ONEDNN)
  return "onednn";
#elif defined(EIGEN_USE_BLAS)
  return "blas";
#else
  return "eigen";
#endif
}
#endif

}  // namespace peft::detail
