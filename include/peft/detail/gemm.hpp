#pragma once
// The one GEMM entry point:  C ← α·op(A)·op(B) + β·C,  op(X) = X or Xᵀ, every operand row-major
// with a leading dimension (the stride between rows, in elements). Every matrix product of the
// library goes through here (the matmul/linear ops, the adapters' fused paths, the projectors,
// the decompositions' sketches, serve's grouped products), so that:
//   - the backend is chosen once (CMake PEFT_GEMM; see gemm_impl.hpp): oneDNN picks its ISA at
//     run time, so a default build is fast without -march flags; Eigen's kernel is the fallback;
//   - a program that links peft::compiled instantiates no GEMM kernel at all (PEFT_COMPILED_LIB:
//     only the declarations below are seen), and a header-only one instantiates four per scalar
//     type, not one per product expression.
// β = 0 ignores C's contents (NaN-safe, as BLAS). C must not alias A or B (as Eigen's noalias();
// gemm_into resizes C before reading A and B). Results are the same bits from run to run at a
// fixed thread count. Only the declarations live here: no kernel is instantiated by including it.
#include <cstddef>

#include "peft/core/config.hpp"
#include "peft/core/tensor.hpp"

namespace peft::detail {

enum class trans : bool { n = false, t = true };

using gemm_index = std::ptrdiff_t;

// op(A) is [m, k], op(B) [k, n], C [m, n]; lda/ldb/ldc are the row strides of A, B, C as stored.
template <class T>
void gemm(trans ta, trans tb, gemm_index m, gemm_index n, gemm_index k, T alpha, const T* a,
          gemm_index lda, const T* b, gemm_index ldb, T beta, T* c, gemm_index ldc);

// Eigen's own kernel, whatever the backend: C += α·op(A)·op(B) (no β). It is the fallback, and
// the reference the backends are tested against.
template <class T>
void gemm_eigen(trans ta, trans tb, gemm_index m, gemm_index n, gemm_index k, T alpha, const T* a,
                gemm_index lda, const T* b, gemm_index ldb, T* c, gemm_index ldc);

// Strided batch: for i < batch, C_i ← α·op(A_i)·op(B_i) + β·C_i with A_i = a + i·stride_a, ...
// A stride of 0 shares that operand across the batch; C's stride must not be 0 (use a loop with
// β = 1 to accumulate into one C). Batches run in parallel over the library's threads when each
// product is small, one after another (each product threaded) otherwise.
template <class T>
void gemm_batched(trans ta, trans tb, gemm_index m, gemm_index n, gemm_index k, T alpha,
                  const T* a, gemm_index lda, gemm_index stride_a, const T* b, gemm_index ldb,
                  gemm_index stride_b, T beta, T* c, gemm_index ldc, gemm_index stride_c,
                  gemm_index batch);

// Eigen-view forms (row-major Maps, matrices and Refs bind without a copy). Shapes are checked and
// a mismatch throws shape_error naming `op` and the three shapes.
template <class T>
void gemm(trans ta, trans tb, T alpha, matrix_cref<T> A, matrix_cref<T> B, T beta,
          matrix_ref<T> C, const char* op = "gemm");
// C resized to op(A)·op(B)'s shape, then C ← α·op(A)·op(B).
template <class T>
void gemm_into(matrix<T>& C, trans ta, trans tb, matrix_cref<T> A, matrix_cref<T> B, T alpha = T(1),
               const char* op = "gemm");
// A new matrix α·op(A)·op(B).
template <class T>
matrix<T> gemm_new(trans ta, trans tb, matrix_cref<T> A, matrix_cref<T> B, T alpha = T(1),
                   const char* op = "gemm") {
  matrix<T> C;
  gemm_into<T>(C, ta, tb, A, B, alpha, op);
  return C;
}

// Name of the backend compiled in ("onednn", "blas" or "eigen").
PEFT_INLINE const char* gemm_backend();

#define PEFT_DETAIL_GEMM(prefix, T)                                                              \
  prefix void gemm_eigen<T>(trans, trans, gemm_index, gemm_index, gemm_index, T, const T*,        \
                            gemm_index, const T*, gemm_index, T*, gemm_index);                   \
  prefix void gemm<T>(trans, trans, gemm_index, gemm_index, gemm_index, T, const T*, gemm_index,  \
                      const T*, gemm_index, T, T*, gemm_index);                                  \
  prefix void gemm_batched<T>(trans, trans, gemm_index, gemm_index, gemm_index, T, const T*,      \
                              gemm_index, gemm_index, const T*, gemm_index, gemm_index, T, T*,    \
                              gemm_index, gemm_index, gemm_index);                               \
  prefix void gemm<T>(trans, trans, T, matrix_cref<T>, matrix_cref<T>, T, matrix_ref<T>,         \
                      const char*);                                                              \
  prefix void gemm_into<T>(matrix<T>&, trans, trans, matrix_cref<T>, matrix_cref<T>, T,           \
                           const char*);
#if defined(PEFT_COMPILED_LIB)
PEFT_DETAIL_GEMM(extern template, float)
PEFT_DETAIL_GEMM(extern template, double)
#endif

}  // namespace peft::detail

#if PEFT_DEFINITIONS
#include "peft/detail/gemm_impl.hpp"
#endif
