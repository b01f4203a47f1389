#pragma once
// Memory-bound passes over big buffers, split over the library's threads (with OpenMP and
// Eigen's own GEMM, see PEFT_OWN_OPENMP in core/threads.hpp). Each element sees
// exactly the same arithmetic as the serial loop, so results are bit-identical for any thread
// count.
#include <Eigen/Core>
#include <algorithm>

#include "peft/core/tensor.hpp"
#include "peft/core/threads.hpp"

namespace peft::detail {

// Below this many elements a pass stays on one thread (thread start-up would cost more).
inline constexpr Eigen::Index parallel_min_elements = Eigen::Index(1) << 18;

// x *= a.
template <class T>
void scale_in_place(vector_map<T> x, T a) {
  const Eigen::Index n = x.size();
#ifdef PEFT_OWN_OPENMP
  const int nt = n >= parallel_min_elements ? std::max(1, num_threads()) : 1;
#else
  const int nt = 1;
#endif
  if (nt == 1) {
    x.array() *= a;
    return;
  }
  const Eigen::Index per = (n + nt - 1) / nt;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int i = 0; i < nt; ++i) {
    const Eigen::Index b = Eigen::Index(i) * per, len = std::min(per, n - b);
    if (len > 0) x.segment(b, len).array() *= a;
  }
}

}  // namespace peft::detail
