#pragma once
// Flora (Hao, Cao & Mou 2024, "Flora: Low-Rank Adapters Are Secretly Gradient Compressors",
// arXiv:2402.03293; reference: BorealisAI/flora-opt, flora_opt/optimizers/torch/flora.py).
//
// The basis is a Gaussian random matrix P [d, r] with i.i.d. N(0, 1/r) entries (the reference
// draws randn / sqrt(rank)), so E[P·Pᵀ] = I_d: projecting down and back is unbiased,
// E[P·Pᵀ·G] = G, though not an orthogonal projection for one draw. P is never stored: it is
// regenerated from a 64-bit seed whenever it is needed, and the seed is the whole state.
//
// Side rule (as the reference's _down_proj / _up_proj): the smaller dimension is compressed,
//   rows <  cols -> left:  low = Pᵀ·G [r, cols], back = P·low        (P [rows, r])
//   rows >= cols -> right: low = G·P [rows, r],  back = low·Pᵀ       (P [cols, r])
// which is GaLore's "standard" rule.
//
// Resampling: every `kappa` steps a new seed is derived from the old one (the reference's
// next_seed) and the first moment is carried over by going up with the old matrix and down with
// the new one, M_new = P_newᵀ·(P_old·M_old) (left) or (M_old·P_oldᵀ)·P_new (right), computed
// through the small [r, r] product P_newᵀ·P_old. Step numbering as GaLore's (updates already
// taken): the basis is drawn before step 0 and redrawn at steps kappa, 2·kappa, ... (the
// reference redraws after its step kappa, i.e. for the update numbered kappa from 0).
//
// Transfer stability: the transfer is unbiased over the new draw but not norm-preserving,
// E‖P·Pᵀ·x‖² = (d + r + 1)/r·‖x‖² (a Wishart moment), so each resample grows the momentum by about
// sqrt((d + r + 1)/r) while momentum β shrinks it by β^kappa between resamples: momentum stays
// bounded only when β^kappa·sqrt((d + r + 1)/r) < 1. The reference's kappa = 1000 is far inside;
// a small kappa with a small d/r is not (measured with SGD-momentum 0.9, d = 12, r = 4: kappa = 5
// diverges, kappa = 10 converges).
//
// Second moments are kept as they are at a resample. The reference keeps Adafactor's factored
// second moment on the FULL gradient and compresses only the first moment; under projected<>
// every moment lives in the low shape. A Gaussian projection is isotropic, E[(Pᵀ·g)_i²] = ‖g‖²/r
// for every draw, so a low-rank second moment has the same statistics in the new basis. (Zeroing
// it while the first moment is carried over makes Adam's m/sqrt(v) explode; carrying it through
// |R| over-estimates it at every resample until the steps vanish: both measured, both worse.)
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
#include "peft/optim/optimizer.hpp"
#include "peft/optim/projection/galore.hpp"  // projection_side
#include "peft/optim/projection/projector.hpp"
#include "peft/optim/projection/projector_state.hpp"

namespace peft::optim {

struct flora_options {
  static constexpr const char* name = "flora";
  std::size_t rank = 128;
  // Steps between resamples of the random matrix (the reference's default).
  std::size_t kappa = 1000;
  // project_back multiplies by scale (1 in the reference, which has no scale).
  double scale = 1.0;

  void validate(const std::string& who) const {
    if (rank == 0) throw value_error(who + ": invalid rank 0 (must be >= 1)");
    if (kappa == 0) throw value_error(who + ": invalid kappa 0 (must be >= 1)");
    if (!std::isfinite(scale) || scale == 0)
      throw value_error(who + ": invalid scale " + peft::detail::hparam_str(scale) +
                        " (must be finite and nonzero)");
  }
};

namespace flora_detail {
// The seed of the next draw (a splitmix64 step): deterministic, and a different stream each time.
inline std::uint64_t next_seed(std::uint64_t s) {
  std::uint64_t z = s + 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}
}  // namespace flora_detail

template <class T>
class flora_projector {
 public:
  using value_type = T;
  using options_type = flora_options;

  flora_projector(const flora_options& o, std::size_t rows, std::size_t cols, std::uint64_t seed = 0)
      : o_(o), rows_(rows), cols_(cols), left_(rows < cols), base_seed_(seed) {
    o_.validate("flora");
    if (o_.rank > std::min(rows, cols))
      throw value_error("flora: invalid rank " + std::to_string(o_.rank) + " for a [" +
                        std::to_string(rows) + "," + std::to_string(cols) +
                        "] weight (must be <= " + std::to_string(std::min(rows, cols)) + ")");
  }

  const flora_options& options() const { return o_; }
  projection_side side() const { return left_ ? projection_side::left : projection_side::right; }
  bool has_basis() const { return has_basis_; }
  std::size_t refresh_count() const { return refreshes_; }
  std::size_t last_refresh_step() const { return last_refresh_; }
  // The seed of the matrix in use (valid once refreshed).
  std::uint64_t seed() const { return seed_; }

  // The matrix P [d, r] drawn from `seed` for a projector of this shape (d = rows on the left
  // side, cols on the right): entries N(0, 1/r) in row-major order, drawn in double and rounded
  // to T, so one seed gives the same matrix on every build.
  matrix<T> matrix_for(std::uint64_t seed) const {
    const Eigen::Index d = Eigen::Index(left_ ? rows_ : cols_), r = Eigen::Index(o_.rank);
    const double s = 1.0 / std::sqrt(double(o_.rank));
    rng g(seed);
    matrix<T> P(d, r);
    for (Eigen::Index k = 0; k < P.size(); ++k) P.data()[k] = T(g.normal() * s);
    return P;
  }
  // The matrix in use, regenerated.
  matrix<T> basis() const {
    if (!has_basis_) throw value_error("flora: basis before the first refresh");
    return matrix_for(seed_);
  }

  bool needs_refresh(std::size_t step) const {
    return !has_basis_ || (step % o_.kappa == 0 && step != last_refresh_);
  }

  // Draws the first matrix, or moves to the next seed (the gradient itself is not needed: the
  // basis is data-independent).
  void refresh(matrix_cref<T> G, std::size_t step) {
    check("refresh", G.rows(), G.cols(), rows_, cols_);
    if (has_basis_) {
      prev_seed_ = seed_;
      has_prev_ = true;
      seed_ = flora_detail::next_seed(seed_);
    } else {
      seed_ = base_seed_;
      has_prev_ = false;
    }
    drop_scratch();
    has_basis_ = true;
    last_refresh_ = step;
    ++refreshes_;
  }

  void transfer(matrix<T>& m, moment which) {
    if (!has_prev_) return;  // first draw: nothing to carry
    const auto ls = low_shape(rows_, cols_);
    check("transfer", m.rows(), m.cols(), ls.first, ls.second);
    if (which == moment::second) return;  // kept (see above)
    const matrix<T> R = peft::detail::gemm_new<T>(trans::t, trans::n, matrix_for(seed_),
                                                  matrix_for(prev_seed_), T(1),
                                                  "flora.transfer");  // P_newᵀ·P_old
    if (left_)
      m = peft::detail::gemm_new<T>(trans::n, trans::n, R, m, T(1), "flora.transfer");
    else
      m = peft::detail::gemm_new<T>(trans::n, trans::t, m, R, T(1), "flora.transfer");
  }

  matrix<T> project(matrix_cref<T> G, std::size_t /*step*/) {
    check("project", G.rows(), G.cols(), rows_, cols_);
    if (!has_basis_) throw value_error("flora: project before the first refresh");
    has_prev_ = false;
    // Kept for the project_back of the same step only (scratch, not state).
    scratch_ = matrix_for(seed_);
    scratch_seed_ = seed_;
    has_scratch_ = true;
    matrix<T> low;
    if (left_)
      peft::detail::gemm_into<T>(low, trans::t, trans::n, scratch_, G, T(1), "flora.project");
    else
      peft::detail::gemm_into<T>(low, trans::n, trans::n, G, scratch_, T(1), "flora.project");
    return low;
  }

  matrix<T> project_back(matrix_cref<T> low, std::size_t /*step*/) {
    const auto ls = low_shape(rows_, cols_);
    check("project_back", low.rows(), low.cols(), ls.first, ls.second);
    if (!has_basis_) throw value_error("flora: project_back before the first refresh");
    matrix<T> P = has_scratch_ && scratch_seed_ == seed_ ? std::move(scratch_) : matrix_for(seed_);
    drop_scratch();
    // The scale rides in the product's alpha.
    matrix<T> full;
    if (left_)
      peft::detail::gemm_into<T>(full, trans::n, trans::n, P, low, T(o_.scale),
                                 "flora.project_back");
    else
      peft::detail::gemm_into<T>(full, trans::n, trans::t, low, P, T(o_.scale),
                                 "flora.project_back");
    return full;
  }

  // W += alpha·project_back(low), accumulated straight into W (no W-sized temporary).
  void project_back_add(matrix_cref<T> low, std::size_t /*step*/, matrix_ref<T> W,
                        T alpha = T(1)) {
    const auto ls = low_shape(rows_, cols_);
    check("project_back_add", low.rows(), low.cols(), ls.first, ls.second);
    check("project_back_add", W.rows(), W.cols(), rows_, cols_);
    if (!has_basis_) throw value_error("flora: project_back_add before the first refresh");
    matrix<T> P = has_scratch_ && scratch_seed_ == seed_ ? std::move(scratch_) : matrix_for(seed_);
    drop_scratch();
    const T a = alpha * T(o_.scale);
    if (left_)
      peft::detail::gemm<T>(trans::n, trans::n, a, P, low, T(1), W, "flora.project_back_add");
    else
      peft::detail::gemm<T>(trans::n, trans::t, a, low, P, T(1), W, "flora.project_back_add");
  }

  std::pair<std::size_t, std::size_t> low_shape(std::size_t rows, std::size_t cols) const {
    if (rows < cols) return {o_.rank, cols};
    return {rows, o_.rank};
  }

  // The seed: the matrix is regenerated, never kept between steps.
  std::size_t state_bytes() const { return has_basis_ ? sizeof(std::uint64_t) : 0; }
  std::size_t planned_state_bytes(std::size_t, std::size_t) const { return sizeof(std::uint64_t); }

  // "meta" = packed {has_basis, last_refresh, refreshes, seed}.
  void save_state(projector_state<T>& out) const {
    out["meta"] = peft::detail::pack_u64<T>(
        {has_basis_ ? 1u : 0u, last_refresh_, refreshes_, seed_});
  }
  void load_state(const projector_state<T>& in) {
    const std::string who = "flora";
    peft::detail::check_state_names(in, {"meta"}, who);
    const auto w = peft::detail::unpack_u64(peft::detail::state_entry(in, "meta", who), 4,
                                            who + ": load_state: 'meta'");
    if (w[0] > 1) throw value_error(who + ": load_state: 'meta' has_basis must be 0 or 1");
    has_basis_ = w[0] != 0;
    last_refresh_ = std::size_t(w[1]);
    refreshes_ = std::size_t(w[2]);
    seed_ = w[3];
    has_prev_ = false;
    drop_scratch();
  }

 private:
  using trans = peft::detail::trans;

  void drop_scratch() {
    has_scratch_ = false;
    scratch_.resize(0, 0);
  }
  static void check(const char* op, Eigen::Index r, Eigen::Index c, std::size_t er, std::size_t ec) {
    if (std::size_t(r) != er || std::size_t(c) != ec)
      throw shape_error(std::string("flora: ") + op + ": [" + std::to_string(r) + "," +
                        std::to_string(c) + "], expected [" + std::to_string(er) + "," +
                        std::to_string(ec) + "]");
  }

  flora_options o_;
  std::size_t rows_, cols_;
  bool left_;
  std::uint64_t base_seed_;
  std::uint64_t seed_ = 0, prev_seed_ = 0;
  bool has_basis_ = false, has_prev_ = false;
  std::size_t last_refresh_ = 0;
  std::size_t refreshes_ = 0;
  matrix<T> scratch_;  // P of the current step, between project and project_back
  std::uint64_t scratch_seed_ = 0;
  bool has_scratch_ = false;
};

static_assert(checkpointable_projector<flora_projector<float>, float>);

}  // namespace peft::optim
