#pragma once
// GaLore (Zhao et al. 2024, "Gradient Low-Rank Projection"): every update_proj_gap steps the
// basis is recomputed from the SVD of the current gradient G [m, n]; in between, gradients are
// projected onto it and the optimizer's moments live in the small shape.
//
// Side rule of the reference (galore_projector.py, proj_type):
//   standard ("std"):          m >= n -> right:  low = G·Q [m, r], back = low·Qᵀ   (Q = V[:, :r])
//                              m <  n -> left:   low = Pᵀ·G [r, n], back = P·low   (P = U[:, :r])
//                              i.e. the smaller dimension is projected.
//   reverse_standard:          the other side.
//   left / right:              forced.
//   full:                      low = Pᵀ·G·Q [r, r], back = P·low·Qᵀ.
// project_back multiplies by `scale` (the reference's project_back does `* self.scale`).
//
// Refresh rule: the basis is (re)computed when the optimizer's step counter (updates already
// taken, 0 for the first) is a multiple of update_proj_gap, and before the first projection; so
// at steps 0, gap, 2·gap, ... as in the reference (`iter % update_proj_gap == 0`).
//
// Moments across a basis change: the reference does NOT transfer them (Adam's moments from the
// old subspace are reused as is in the new one). transfer() does the same by default; with
// rotate_first_moment the first moment is rotated into the new basis, M_new = P_newᵀ·P_old·M_old
// (right side: M_old·Q_oldᵀ·Q_new), which is exact when the subspaces coincide. Second moments
// (elementwise squares) have no such map and are kept as is.
//
// Defaults: rank 128, gap 200, scale 0.25 (the reference's training scripts; the projector class
// itself defaults to scale 1.0). The exact SVD is computed in T (the reference computes it in
// float32); the randomized range finder (Halko et al.) with power iterations is the cheap option,
// ending by default in a Rayleigh–Ritz step (fast_tail): at power_iters = 2 that is 5 products
// with G where torch.svd_lowrank(niter=2) does 6, for a basis of the same captured energy.
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "peft/core/error.hpp"
#include "peft/core/random.hpp"
#include "peft/core/tensor.hpp"
#include "peft/detail/gemm.hpp"
#include "peft/detail/svd.hpp"
#include "peft/optim/optimizer.hpp"
#include "peft/optim/projection/projector.hpp"
#include "peft/optim/projection/projector_state.hpp"

namespace peft::optim {

enum class galore_proj_type { standard, reverse_standard, left, right, full };
enum class svd_solver { exact, randomized };
// Which side(s) of G a projector multiplies.
enum class projection_side { left, right, both };

struct galore_options {
  static constexpr const char* name = "galore";
  std::size_t rank = 128;
  std::size_t update_proj_gap = 200;
  double scale = 0.25;
  galore_proj_type proj_type = galore_proj_type::standard;
  svd_solver solver = svd_solver::exact;
  std::size_t power_iters = 2;  // randomized solver only
  std::size_t oversample = 8;   // randomized solver only
  // Randomized solver only: the Rayleigh–Ritz tail (detail::rsvd_tail) when power_iters >= 1,
  // one product with G fewer than the exact tail (Halko et al.'s / torch.svd_lowrank's) for a
  // one-sided basis of the same captured energy (within 1e-3 on σ_i ∝ 1/i); with proj_type
  // full the right basis is half a power iteration behind. false = the exact tail.
  bool fast_tail = true;
  bool rotate_first_moment = false;

  void validate(const std::string& who) const {
    if (rank == 0) throw value_error(who + ": invalid rank 0 (must be >= 1)");
    if (update_proj_gap == 0)
      throw value_error(who + ": invalid update_proj_gap 0 (must be >= 1)");
    if (!std::isfinite(scale) || scale == 0)
      throw value_error(who + ": invalid scale " + peft::detail::hparam_str(scale) +
                        " (must be finite and nonzero)");
  }
};

// The side GaLore projects for a [rows, cols] gradient.
inline projection_side galore_side(galore_proj_type t, std::size_t rows, std::size_t cols) {
  switch (t) {
    case galore_proj_type::standard:
      return rows >= cols ? projection_side::right : projection_side::left;
    case galore_proj_type::reverse_standard:
      return rows >= cols ? projection_side::left : projection_side::right;
    case galore_proj_type::left:
      return projection_side::left;
    case galore_proj_type::right:
      return projection_side::right;
    case galore_proj_type::full:
      return projection_side::both;
  }
  return projection_side::both;
}

template <class T>
class galore_projector {
 public:
  using value_type = T;
  using options_type = galore_options;

  galore_projector(const galore_options& o, std::size_t rows, std::size_t cols,
                   std::uint64_t seed = 0)
      : o_(o), rows_(rows), cols_(cols), side_(galore_side(o.proj_type, rows, cols)), rng_(seed) {
    o_.validate("galore");
    if (o_.rank > std::min(rows, cols))
      throw value_error("galore: invalid rank " + std::to_string(o_.rank) + " for a [" +
                        std::to_string(rows) + "," + std::to_string(cols) +
                        "] weight (must be <= " + std::to_string(std::min(rows, cols)) + ")");
  }

  const galore_options& options() const { return o_; }
  projection_side side() const { return side_; }
  bool has_basis() const { return has_basis_; }
  std::size_t refresh_count() const { return refreshes_; }
  std::size_t last_refresh_step() const { return last_refresh_; }
  // P [rows, r] (left or both) and Q [cols, r] (right or both); empty when unused.
  const matrix<T>& left_basis() const { return P_; }
  const matrix<T>& right_basis() const { return Q_; }

  bool needs_refresh(std::size_t step) const {
    return !has_basis_ || (step % o_.update_proj_gap == 0 && step != last_refresh_);
  }

  void refresh(matrix_cref<T> G, std::size_t step) {
    check("refresh", G.rows(), G.cols(), rows_, cols_);
    const bool left = side_ != projection_side::right, right = side_ != projection_side::left;
    if (o_.rotate_first_moment && has_basis_) {
      P_old_ = std::move(P_);
      Q_old_ = std::move(Q_);
    }
    const Eigen::Index r = Eigen::Index(o_.rank);
    if (o_.solver == svd_solver::exact) {
      // Only the factors this side needs (a thin U of a tall G is the expensive half).
      auto svd = peft::detail::thin_svd<T>(matrix<T>(G), left, right);
      if (left) P_ = svd.U.leftCols(r);
      if (right) Q_ = svd.V.leftCols(r);
    } else {
      // Only the factors this side needs, oriented so that the one used comes from the last
      // product with G (half a power iteration ahead of the other): the left factor with the
      // Rayleigh–Ritz tail, the right one with the exact tail (see detail::rsvd_options).
      peft::detail::rsvd_options ro;
      ro.oversample = o_.oversample;
      ro.tail = o_.fast_tail ? peft::detail::rsvd_tail::rayleigh_ritz
                             : peft::detail::rsvd_tail::exact;
      const bool ritz = o_.fast_tail && o_.power_iters >= 1;
      ro.transpose = side_ == projection_side::both ? false
                                                    : (side_ == projection_side::right) == ritz;
      ro.want_u = left;
      ro.want_v = right;
      auto s = peft::detail::randomized_svd<T>(G, o_.rank, o_.power_iters, rng_, ro);
      if (left) P_ = std::move(s.U);
      if (right) Q_ = std::move(s.V);
    }
    has_basis_ = true;
    last_refresh_ = step;
    ++refreshes_;
  }

  void transfer(matrix<T>& m, moment which) {
    if (which != moment::first || !o_.rotate_first_moment) return;
    if (P_old_.size() == 0 && Q_old_.size() == 0) return;  // first refresh: nothing to rotate
    const auto ls = low_shape(rows_, cols_);
    check("transfer", m.rows(), m.cols(), ls.first, ls.second);
    if (P_old_.size() != 0) {
      const matrix<T> R = peft::detail::gemm_new<T>(trans::t, trans::n, P_, P_old_, T(1),
                                                    "galore.transfer");  // [r, r]
      m = peft::detail::gemm_new<T>(trans::n, trans::n, R, m, T(1), "galore.transfer");
    }
    if (Q_old_.size() != 0) {
      const matrix<T> R =
          peft::detail::gemm_new<T>(trans::t, trans::n, Q_old_, Q_, T(1), "galore.transfer");
      m = peft::detail::gemm_new<T>(trans::n, trans::n, m, R, T(1), "galore.transfer");
    }
  }

  matrix<T> project(matrix_cref<T> G, std::size_t /*step*/) {
    check("project", G.rows(), G.cols(), rows_, cols_);
    if (!has_basis_) throw value_error("galore: project before the first refresh");
    release_old();
    matrix<T> low;
    switch (side_) {
      case projection_side::left:
        peft::detail::gemm_into<T>(low, trans::t, trans::n, P_, G, T(1), "galore.project");
        break;
      case projection_side::right:
        peft::detail::gemm_into<T>(low, trans::n, trans::n, G, Q_, T(1), "galore.project");
        break;
      case projection_side::both: {
        const matrix<T> t =
            peft::detail::gemm_new<T>(trans::t, trans::n, P_, G, T(1), "galore.project");
        peft::detail::gemm_into<T>(low, trans::n, trans::n, t, Q_, T(1), "galore.project");
        break;
      }
    }
    return low;
  }

  matrix<T> project_back(matrix_cref<T> low, std::size_t /*step*/) const {
    const auto ls = low_shape(rows_, cols_);
    check("project_back", low.rows(), low.cols(), ls.first, ls.second);
    if (!has_basis_) throw value_error("galore: project_back before the first refresh");
    // The scale rides in the last product's alpha.
    const T sc = T(o_.scale);
    matrix<T> full;
    switch (side_) {
      case projection_side::left:
        peft::detail::gemm_into<T>(full, trans::n, trans::n, P_, low, sc, "galore.project_back");
        break;
      case projection_side::right:
        peft::detail::gemm_into<T>(full, trans::n, trans::t, low, Q_, sc, "galore.project_back");
        break;
      case projection_side::both: {
        const matrix<T> t =
            peft::detail::gemm_new<T>(trans::n, trans::n, P_, low, T(1), "galore.project_back");
        peft::detail::gemm_into<T>(full, trans::n, trans::t, t, Q_, sc, "galore.project_back");
        break;
      }
    }
    return full;
  }

  // W += alpha·project_back(low) with the product accumulated straight into W: no W-sized
  // temporary and no extra pass over it (the optimizer's hot path).
  void project_back_add(matrix_cref<T> low, std::size_t /*step*/, matrix_ref<T> W,
                        T alpha = T(1)) const {
    const auto ls = low_shape(rows_, cols_);
    check("project_back_add", low.rows(), low.cols(), ls.first, ls.second);
    check("project_back_add", W.rows(), W.cols(), rows_, cols_);
    if (!has_basis_) throw value_error("galore: project_back_add before the first refresh");
    const T a = alpha * T(o_.scale);
    const char* op = "galore.project_back_add";
    switch (side_) {
      case projection_side::left:
        peft::detail::gemm<T>(trans::n, trans::n, a, P_, low, T(1), W, op);
        break;
      case projection_side::right:
        peft::detail::gemm<T>(trans::n, trans::t, a, low, Q_, T(1), W, op);
        break;
      case projection_side::both: {
        const matrix<T> t = peft::detail::gemm_new<T>(trans::n, trans::n, P_, low, a, op);
        peft::detail::gemm<T>(trans::n, trans::t, T(1), t, Q_, T(1), W, op);
        break;
      }
    }
  }

  std::pair<std::size_t, std::size_t> low_shape(std::size_t rows, std::size_t cols) const {
    switch (galore_side(o_.proj_type, rows, cols)) {
      case projection_side::left: return {o_.rank, cols};
      case projection_side::right: return {rows, o_.rank};
      case projection_side::both: break;
    }
    return {o_.rank, o_.rank};
  }

  // Basis (+ the rng words of the randomized solver). The previous basis, held only between a
  // refresh and the next projection when rotate_first_moment is on, is scratch, not state.
  std::size_t state_bytes() const {
    if (!has_basis_) return 0;
    return std::size_t(P_.size() + Q_.size()) * sizeof(T) + rng_bytes();
  }
  std::size_t planned_state_bytes(std::size_t rows, std::size_t cols) const {
    const auto s = galore_side(o_.proj_type, rows, cols);
    std::size_t n = 0;
    if (s != projection_side::right) n += rows * o_.rank;
    if (s != projection_side::left) n += cols * o_.rank;
    return n * sizeof(T) + rng_bytes();
  }

  // "P" / "Q" (the bases in use), "meta" = packed {has_basis, last_refresh, refreshes, rng[4]}.
  void save_state(projector_state<T>& out) const {
    if (P_.size() != 0) out["P"] = to_tensor(P_);
    if (Q_.size() != 0) out["Q"] = to_tensor(Q_);
    const auto s = rng_.state();
    out["meta"] = peft::detail::pack_u64<T>(
        {has_basis_ ? 1u : 0u, last_refresh_, refreshes_, s[0], s[1], s[2], s[3]});
  }

  void load_state(const projector_state<T>& in) {
    const std::string who = "galore";
    peft::detail::check_state_names(in, {"P", "Q", "meta"}, who);
    const auto w = peft::detail::unpack_u64(peft::detail::state_entry(in, "meta", who), 7,
                                            who + ": load_state: 'meta'");
    const bool has = w[0] != 0;
    const bool left = side_ != projection_side::right, right = side_ != projection_side::left;
    const Eigen::Index r = Eigen::Index(o_.rank);
    matrix<T> P, Q;
    auto take = [&](const char* name, bool needed, std::size_t n, matrix<T>& dst) {
      auto it = in.find(name);
      if (!has || !needed) {
        if (it != in.end())
          throw value_error(who + ": load_state: unexpected tensor '" + name + "' for this side");
        return;
      }
      if (it == in.end()) throw value_error(who + ": load_state: missing tensor '" + name + "'");
      if (shape_of(it->second) != shape_t{n, o_.rank})
        throw shape_error(who + ": load_state: '" + name + "' has shape " +
                          shape_str(it->second.shape()) + ", expected [" + std::to_string(n) +
                          "," + std::to_string(r) + "]");
      dst = as_matrix(it->second);
    };
    take("P", left, rows_, P);
    take("Q", right, cols_, Q);
    rng g;
    if (w[3] | w[4] | w[5] | w[6]) g.set_state({w[3], w[4], w[5], w[6]});
    // All checked: commit.
    P_ = std::move(P);
    Q_ = std::move(Q);
    P_old_.resize(0, 0);
    Q_old_.resize(0, 0);
    has_basis_ = has;
    last_refresh_ = std::size_t(w[1]);
    refreshes_ = std::size_t(w[2]);
    rng_ = g;
  }

 private:
  using trans = peft::detail::trans;

  std::size_t rng_bytes() const {
    return o_.solver == svd_solver::randomized ? sizeof(rng::state_type) : 0;
  }
  void release_old() {
    if (P_old_.size() != 0) P_old_.resize(0, 0);
    if (Q_old_.size() != 0) Q_old_.resize(0, 0);
  }
  static void check(const char* op, Eigen::Index r, Eigen::Index c, std::size_t er,
                    std::size_t ec) {
    if (std::size_t(r) != er || std::size_t(c) != ec)
      throw shape_error(std::string("galore: ") + op + ": [" + std::to_string(r) + "," +
                        std::to_string(c) + "], expected [" + std::to_string(er) + "," +
                        std::to_string(ec) + "]");
  }

  galore_options o_;
  std::size_t rows_, cols_;
  projection_side side_;
  rng rng_;
  matrix<T> P_, Q_, P_old_, Q_old_;
  bool has_basis_ = false;
  std::size_t last_refresh_ = 0;
  std::size_t refreshes_ = 0;
};

static_assert(checkpointable_projector<galore_projector<float>, float>);

}  // namespace peft::optim
