#pragma once
// The trivial projector: low = G, back = low. projected<Base, identity_projector<T>> takes the
// same steps as Base itself (bit for bit for AdamW and SGD), which makes it the reference point
// for tests and benchmarks of the other projectors.
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "peft/core/error.hpp"
#include "peft/core/tensor.hpp"
#include "peft/optim/projection/projector.hpp"
#include "peft/optim/projection/projector_state.hpp"

namespace peft::optim {

struct identity_options {
  static constexpr const char* name = "identity";
  // Only used by projected<> to pick parameters (2-D with both dims >= rank); 1 = every matrix.
  std::size_t rank = 1;

  void validate(const std::string& who) const {
    if (rank == 0) throw value_error(who + ": invalid rank 0 (must be >= 1)");
  }
};

template <class T>
class identity_projector {
 public:
  using value_type = T;
  using options_type = identity_options;

  identity_projector() = default;
  identity_projector(const identity_options& o, std::size_t rows, std::size_t cols,
                     std::uint64_t /*seed*/ = 0)
      : rows_(rows), cols_(cols) {
    o.validate("identity projector");
  }

  bool needs_refresh(std::size_t /*step*/) const { return !ready_; }
  void refresh(matrix_cref<T> G, std::size_t /*step*/) {
    check("refresh", G.rows(), G.cols());
    ready_ = true;
  }
  void transfer(matrix<T>& /*m*/, moment /*which*/) {}
  matrix<T> project(matrix_cref<T> G, std::size_t /*step*/) const {
    check("project", G.rows(), G.cols());
    return G;
  }
  matrix<T> project_back(matrix_cref<T> low, std::size_t /*step*/) const {
    check("project_back", low.rows(), low.cols());
    return low;
  }
  // W += alpha·low (alpha = 1 adds without a multiply: bit-identical to the plain optimizer).
  void project_back_add(matrix_cref<T> low, std::size_t /*step*/, matrix_ref<T> W,
                        T alpha = T(1)) const {
    check("project_back_add", low.rows(), low.cols());
    check("project_back_add", W.rows(), W.cols());
    if (alpha == T(1))
      W += low;
    else
      W += alpha * low;
  }
  std::pair<std::size_t, std::size_t> low_shape(std::size_t rows, std::size_t cols) const {
    return {rows, cols};
  }
  std::size_t state_bytes() const { return 0; }
  std::size_t planned_state_bytes(std::size_t, std::size_t) const { return 0; }

  void save_state(projector_state<T>& out) const { out["ready"] = full<T>({1}, T(ready_ ? 1 : 0)); }
  void load_state(const projector_state<T>& in) {
    const std::string who = "identity projector";
    peft::detail::check_state_names(in, {"ready"}, who);
    const auto& r = peft::detail::state_entry(in, "ready", who);
    if (r.size() != 1 || !(r(0) == T(0) || r(0) == T(1)))
      throw value_error(who + ": load_state: 'ready' must be a single 0 or 1");
    ready_ = r(0) == T(1);
  }

 private:
  void check(const char* op, Eigen::Index r, Eigen::Index c) const {
    if (std::size_t(r) != rows_ || std::size_t(c) != cols_)
      throw shape_error(std::string("identity projector: ") + op + ": [" + std::to_string(r) + "," +
                        std::to_string(c) + "] for a projector of [" + std::to_string(rows_) +
                        "," + std::to_string(cols_) + "]");
  }

  std::size_t rows_ = 0, cols_ = 0;
  bool ready_ = false;
};

static_assert(checkpointable_projector<identity_projector<float>, float>);

}  // namespace peft::optim
