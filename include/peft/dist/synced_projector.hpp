#pragma once
// synced_projector<P>: any Projector (GaLore, Flora, COAP, DCT, identity) made ready for
// data-parallel training in which the ranks exchange PROJECTED gradients. Use it in place of P:
//
//   using proj = dist::synced_projector<optim::flora_projector<float>>;
//   optim::projected<optim::adamw<float>, proj> opt(params, adamw_opts, flora_opts, {.seed = 1});
//   dist::data_parallel<float> dp(comm, opt);   // sees the synced projectors
//
// Between basis refreshes, data_parallel::sync() asks every projector for its rank's local
// projection (project_local, the very call the optimizer would make), all-reduces those small
// matrices, and hands each projector the average (set_synced). When the optimizer then calls
// project(G, step) for that step, it gets the average instead of a projection of its own rank's
// gradient. Projection is linear, so the average of the projections is the projection of the
// averaged gradient: the step is the one a single process would take on the whole batch.
//
// Everything else is forwarded to P, so the projector behaves exactly as P when nothing was
// synced (a single process, or a run without data_parallel), and its checkpoint state is P's.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "peft/core/error.hpp"
#include "peft/core/tensor.hpp"
#include "peft/optim/projection/projector.hpp"
#include "peft/optim/projection/projector_state.hpp"

namespace peft::dist {

template <class P>
class synced_projector {
 public:
  using inner_type = P;
  using value_type = typename P::value_type;
  using options_type = typename P::options_type;
  using T = value_type;

  // As P's constructor (what projected<> calls with the per-parameter seed).
  synced_projector(const options_type& o, std::size_t rows, std::size_t cols,
                   std::uint64_t seed = 0)
      : inner_(o, rows, cols, seed) {}
  explicit synced_projector(P inner) : inner_(std::move(inner)) {}

  P& inner() { return inner_; }
  const P& inner() const { return inner_; }

  bool needs_refresh(std::size_t step) const { return inner_.needs_refresh(step); }
  void refresh(matrix_cref<T> G, std::size_t step) {
    synced_.reset();  // a basis change makes a synced projection stale
    inner_.refresh(G, step);
  }
  void transfer(matrix<T>& m, optim::moment which) { inner_.transfer(m, which); }

  // The synced average when one was set for this step, else P's projection of G.
  matrix<T> project(matrix_cref<T> G, std::size_t step) {
    if (synced_ && synced_step_ == step) {
      matrix<T> low = std::move(*synced_);
      synced_.reset();
      return low;
    }
    return inner_.project(G, step);
  }
  matrix<T> project_back(matrix_cref<T> low, std::size_t step) {
    return inner_.project_back(low, step);
  }
  void project_back_add(matrix_cref<T> low, std::size_t step, matrix_ref<T> W, T alpha = T(1))
    requires requires(P& p, matrix_cref<T> l, std::size_t t, matrix_ref<T> w, T a) {
      p.project_back_add(l, t, w, a);
    }
  {
    inner_.project_back_add(low, step, W, alpha);
  }
  std::pair<std::size_t, std::size_t> low_shape(std::size_t rows, std::size_t cols) const {
    return inner_.low_shape(rows, cols);
  }
  std::size_t state_bytes() const { return inner_.state_bytes(); }
  std::size_t planned_state_bytes(std::size_t rows, std::size_t cols) const
    requires optim::plans_state_bytes<P>
  {
    return inner_.planned_state_bytes(rows, cols);
  }

  void save_state(optim::projector_state<T>& out) const { inner_.save_state(out); }
  void load_state(const optim::projector_state<T>& in) {
    synced_.reset();
    inner_.load_state(in);
  }

  // ---- the data-parallel hooks (data_parallel.hpp) ----

  // This rank's projection of G at `step` (the basis must be current: !needs_refresh(step)).
  // Calls P::project, so projector-side effects of the step (Flora keeps its matrix for
  // project_back) happen exactly once, here; project() then only returns the synced average.
  matrix<T> project_local(matrix_cref<T> G, std::size_t step) {
    if (inner_.needs_refresh(step))
      throw value_error("synced_projector: project_local at step " + std::to_string(step) +
                        " needs a refresh first (sync the full gradient at refresh steps)");
    return inner_.project(G, step);
  }
  // The averaged projection that project() returns at `step`.
  void set_synced(matrix<T> low, std::size_t step) {
    synced_ = std::move(low);
    synced_step_ = step;
  }
  bool has_synced() const { return synced_.has_value(); }

 private:
  P inner_;
  std::optional<matrix<T>> synced_;
  std::size_t synced_step_ = 0;
};

}  // namespace peft::dist
