#pragma once
// Thread count for the library's GEMMs (detail/gemm.hpp).
//   PEFT_GEMM=onednn: oneDNN splits each product over OpenMP threads (omp_set_num_threads).
//   default build:   Eigen runs its own GEMM kernel and splits each product over OpenMP threads
//                    (Eigen::setNbThreads).
//   EIGEN_USE_BLAS:  (CMake PEFT_USE_BLAS) Eigen hands every product to the BLAS's sgemm/dgemm
//                    and never splits it over OpenMP itself (Eigen 3.4, Parallelizer.h); the BLAS
//                    threads it with its own pool, so set_num_threads(n) sets that pool to n too
//                    (OpenBLAS, MKL and BLIS are recognised at link time; another BLAS keeps its
//                    own setting, e.g. from its environment variable).
// num_threads() is the count the library's own OpenMP loops use (batched products, see
// detail::gemm_batched in detail/gemm_impl.hpp) in both builds.
#include <Eigen/Core>
#include <string>

#if defined(PEFT_GEMM_ONEDNN) && defined(_OPENMP)
// oneDNN (PEFT_GEMM=onednn) threads its products with OpenMP's own thread count.
#include <omp.h>
#endif

#include "peft/core/error.hpp"

#if defined(EIGEN_USE_BLAS) && defined(__GNUC__) && !defined(_WIN32)
// Weak references: non-null only when the linked BLAS defines them, so any BLAS links.
extern "C" void openblas_set_num_threads(int) __attribute__((weak));
extern "C" void MKL_Set_Num_Threads(int) __attribute__((weak));
extern "C" void bli_thread_set_num_threads(long) __attribute__((weak));
#define PEFT_BLAS_THREADS 1
#endif

// peft's own OpenMP loops (batched small products, memory-bound passes) run only when Eigen's
// OpenMP GEMM is the one in use. Next to a BLAS's own thread pool an OpenMP team makes the two
// spin against each other after every switch (measured with OpenBLAS: a 2-thread llama training
// step 1.8x slower than the 1-thread one); with a BLAS those loops run in order and the BLAS threads
// each product.
#if defined(_OPENMP) && !defined(EIGEN_USE_BLAS)
#define PEFT_OWN_OPENMP 1
#endif

namespace peft {

namespace detail {
inline void set_blas_threads([[maybe_unused]] int n) {
#ifdef PEFT_BLAS_THREADS
  if (openblas_set_num_threads) openblas_set_num_threads(n);
  if (MKL_Set_Num_Threads) MKL_Set_Num_Threads(n);
  if (bli_thread_set_num_threads) bli_thread_set_num_threads(long(n));
#endif
}
}  // namespace detail

// Sets the number of threads the library's GEMMs (Eigen's, or the BLAS's) may use; n <= 0 is
// rejected.
inline void set_num_threads(int n) {
  if (n <= 0) throw value_error("set_num_threads: n = " + std::to_string(n) + " (must be > 0)");
  Eigen::setNbThreads(n);
  detail::set_blas_threads(n);
#if defined(PEFT_GEMM_ONEDNN) && defined(_OPENMP)
  omp_set_num_threads(n);
#endif
}
inline int num_threads() { return Eigen::nbThreads(); }

namespace detail {
// Inside the library's own OpenMP regions (one small product per thread) a BLAS must not start
// threads of its own on top: pins it to 1 for the guard's lifetime. A no-op without a BLAS.
class serial_blas_guard {
 public:
  serial_blas_guard() { set_blas_threads(1); }
  ~serial_blas_guard() { set_blas_threads(num_threads()); }
  serial_blas_guard(const serial_blas_guard&) = delete;
  serial_blas_guard& operator=(const serial_blas_guard&) = delete;
};
}  // namespace detail

}  // namespace peft
