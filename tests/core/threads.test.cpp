#include <catch2/catch.hpp>

#include "peft/core/threads.hpp"

#if defined(EIGEN_USE_BLAS) && defined(__GNUC__) && !defined(_WIN32)
extern "C" int openblas_get_num_threads(void) __attribute__((weak));
#endif

using namespace peft;

TEST_CASE("set_num_threads sets the library's GEMM thread count", "[threads]") {
  const int before = num_threads();
  set_num_threads(2);
  CHECK(num_threads() == 2);
#ifndef EIGEN_USE_BLAS
  CHECK(Eigen::nbThreads() == 2);
#endif
  set_num_threads(1);
  CHECK(num_threads() == 1);
  set_num_threads(before);
}

TEST_CASE("set_num_threads rejects n <= 0 and names itself", "[threads]") {
  const int before = num_threads();
  CHECK_THROWS_AS(set_num_threads(0), value_error);
  CHECK_THROWS_WITH(set_num_threads(-3), Catch::Contains("set_num_threads") &&
                                              Catch::Contains("-3"));
  CHECK(num_threads() == before);  // unchanged after a rejected call
}

#if defined(EIGEN_USE_BLAS) && defined(__GNUC__) && !defined(_WIN32)
TEST_CASE("with a BLAS, set_num_threads drives OpenBLAS's pool too", "[threads]") {
  if (!openblas_get_num_threads) {
    WARN("the linked BLAS is not OpenBLAS: its thread count is not checked");
    return;
  }
  const int before = num_threads();
  set_num_threads(2);
  CHECK(openblas_get_num_threads() == 2);
  {
    const detail::serial_blas_guard g;  // inside peft's own OpenMP loops
    CHECK(openblas_get_num_threads() == 1);
  }
  CHECK(openblas_get_num_threads() == 2);
  set_num_threads(1);
  CHECK(openblas_get_num_threads() == 1);
  set_num_threads(before);
}
#endif
