#pragma once
// Thread count for the library's GEMMs (Eigen parallelises its GEMM with OpenMP).
#include <Eigen/Core>

#include "peft/core/error.hpp"

namespace peft {

// Sets the number of threads Eigen's GEMM may use; n <= 0 is rejected.
inline void set_num_threads(int n) {
  if (n <= 0) throw value_error("set_num_threads: n = " + std::to_string(n) + " (must be > 0)");
  Eigen::setNbThreads(n);
}
inline int num_threads() { return Eigen::nbThreads(); }

}  // namespace peft
