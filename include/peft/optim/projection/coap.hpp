#pragma once
// COAP (Xiao et al. 2025, "COAP: Memory-Efficient Training with Correlation-Aware Gradient
// Projection", arXiv:2412.00071; reference: the authors' coap_torch, projection/coap_matrix.py,
// utils/orthogonal.py, optim/adamw*.py).
//
// The basis P [d, r] (columns; the reference stores its transpose [r, d]) projects the smaller
// dimension, as GaLore's standard rule: rows >= cols -> right, low = G·P [rows, r], back =
// low·Pᵀ; rows < cols -> left, low = Pᵀ·G [r, cols], back = P·low; back is multiplied by scale.
//
// Schedule, with t = updates already taken (the reference's state["step"] before its increment):
//   t = first step:                 P from a randomized range finder with a seeded Gaussian Ω
//   t % (update_interval·reproject_factor) == 0:
//                                   re-projection, warm-started: Ω = P_prev (one pass, no power
//                                   iterations): Y = A·Ω, Q = qr(Y), B = Qᵀ·A [r, d], P = the r
//                                   right singular vectors of B  (A = G on the right side, Gᵀ on
//                                   the left)
//   other t % update_interval == 0: correlation-aware update, one gradient step on P of
//       L(P) = mse(recon(G), G) · (1 − mean_i cos(X_i, G_i))
//     where recon(G) = G·P·Pᵀ (right) or P·Pᵀ·G (left), mse averages over all m·n entries,
//     X = M·Pᵀ (right) or P·M (left) is the optimizer's first moment M (in the old basis) taken
//     back to the full shape, and cos runs over the rows of the [m, n] matrices (torch's
//     cosine_similarity(dim=1), each norm clamped below at 1e-8). The gradient ∇L (closed form
//     below, checked against finite differences in the tests) is clipped to norm
//     proj_max_grad_norm and P ← P − proj_lr·∇L (the reference's lr = 0.1, clip_grad_norm_ 1.0).
//     P is not re-orthonormalised between re-projections (as the reference).
//   restore_state: moments are carried into the new basis through the full shape: first moment
//     M ← M·P_oldᵀ·P (right) or Pᵀ·P_old·M (left); second moment V ← (the same map of sqrt(V))²,
//     as the reference does. Off by default (the reference's default).
// Defaults: update_interval 32, reproject_factor 5, restore_state off, scale 1 (the reference
// optimizer's constructor defaults).
//
// The first moment reaches the projector through transfer(m, moment::first), which projected<>
// calls right after refresh() on a basis change: refresh() on an update step only keeps a copy
// of G (scratch, freed within the step) and the update is taken when the first moment arrives.
// If no first moment arrives (SGD without momentum, Adafactor without beta1, a second moment
// transferred first), the update is taken at the next transfer()/project() without the cosine
// factor, i.e. on L = mse alone.
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
#include "peft/optim/projection/galore.hpp"  // projection_side
#include "peft/optim/projection/projector.hpp"
#include "peft/optim/projection/projector_state.hpp"

namespace peft::optim {

struct coap_options {
  static constexpr const char* name = "coap";
  std::size_t rank = 128;
  // T_u: steps between updates of P (correlation-aware step or re-projection).
  std::size_t update_interval = 32;
  // Every reproject_factor-th update is a full re-projection (range finder).
  std::size_t reproject_factor = 5;
  // Step size and gradient-norm clip of the correlation-aware update (0 = no clipping).
  double proj_lr = 0.1;
  double proj_max_grad_norm = 1.0;
  // Carry the moments into the new basis at each update of P.
  bool restore_state = false;
  double scale = 1.0;

  void validate(const std::string& who) const {
    if (rank == 0) throw value_error(who + ": invalid rank 0 (must be >= 1)");
    if (update_interval == 0)
      throw value_error(who + ": invalid update_interval 0 (must be >= 1)");
    if (reproject_factor == 0)
      throw value_error(who + ": invalid reproject_factor 0 (must be >= 1)");
    if (!(proj_lr >= 0) || !std::isfinite(proj_lr))
      throw value_error(who + ": invalid proj_lr " + peft::detail::hparam_str(proj_lr) +
                        " (must be finite and >= 0)");
    if (!(proj_max_grad_norm >= 0))
      throw value_error(who + ": invalid proj_max_grad_norm " +
                        peft::detail::hparam_str(proj_max_grad_norm) + " (must be >= 0)");
    if (!std::isfinite(scale) || scale == 0)
      throw value_error(who + ": invalid scale " + peft::detail::hparam_str(scale) +
                        " (must be finite and nonzero)");
  }
};

}  // namespace peft::optim

namespace peft::detail {

// The r right singular vectors [d, r] of Qᵀ·A where Q = orth(A·Ω), A = G (right) or Gᵀ (left),
// Ω [d, r]: the reference's compute_orthogonal (one pass of a randomized range finder). Both
// factorisations are of tall-thin matrices: Q by CholeskyQR2 (detail::orthonormalize_in_place,
// Householder when A·Ω is rank deficient), and the SVD of the wide B = Qᵀ·A [r, d] through the
// QR of its transpose (detail::svd_of_projection).
template <class T>
matrix<T> coap_range_finder(matrix_cref<T> G, matrix_cref<T> Omega, bool left) {
  // Column-major Y and Bt are written through their row-major transposes (row_major_transpose):
  // Y = Gᵀ·Ω is Yᵀ = Ωᵀ·G, Y = G·Ω is Yᵀ = Ωᵀ·Gᵀ, and likewise for Bt.
  const Eigen::Index m = G.rows(), n = G.cols(), r = Omega.cols();
  col_matrix<T> Y(left ? n : m, r);
  if (left)
    gemm<T>(trans::t, trans::n, T(1), Omega, G, T(0), row_major_transpose<T>(Y),
            "coap_range_finder");  // [n, r]
  else
    gemm<T>(trans::t, trans::t, T(1), Omega, G, T(0), row_major_transpose<T>(Y),
            "coap_range_finder");  // [m, r]
  orthonormalize_in_place<T>(Y);
  col_matrix<T> Bt(left ? m : n, r);
  if (left)
    gemm<T>(trans::n, trans::t, T(1), row_major_transpose<T>(Y), G, T(0),
            row_major_transpose<T>(Bt), "coap_range_finder");  // (Qᵀ·Gᵀ)ᵀ [m, r]
  else
    gemm<T>(trans::n, trans::n, T(1), row_major_transpose<T>(Y), G, T(0),
            row_major_transpose<T>(Bt), "coap_range_finder");  // (Qᵀ·G)ᵀ [n, r]
  return svd_of_projection<T>(Bt, r, false, true).V;
}

// The correlation-aware objective of COAP at P [d, r] (see coap.hpp's header comment):
//   L = ‖E‖²/(m·n) · (1 − C),   E = recon(G) − G,   C = mean_i cos(X_i, G_i)
// with C = 0 when M is null. Writes ∇_P L into *grad when grad is not null. With H = G·P (right)
// or Pᵀ·G (left):
//   ∇ mse = 2/(m·n) · (Gᵀ·(E·P) + Eᵀ·H)          (right)
//         = 2/(m·n) · (E·Hᵀ + G·(Eᵀ·P))          (left)
//   with s_i = 1/(m·|X_i|·|G_i|), t_i = cos_i/(m·|X_i|²) (t_i = 0 where |X_i| is clamped):
//   ∇ C   = Gᵀ·(s∘M) − P·(Mᵀ·(t∘M))              (right, M [m, r], rows scaled)
//         = s∘(G·Mᵀ) − t∘(P·(M·Mᵀ))              (left,  M [r, n], rows of [m, r] scaled)
//   ∇ L   = (1 − C)·∇ mse − mse·∇ C
// so nothing larger than G itself is formed and everything is O(m·n·r).
template <class T>
T coap_objective(matrix_cref<T> G, matrix_cref<T> P, const matrix<T>* M, bool left,
                 matrix<T>* grad = nullptr) {
  const Eigen::Index m = G.rows(), n = G.cols();
  const T mn = T(double(m) * double(n));
  const char* op = "coap_objective";
  matrix<T> H, E;
  if (left) {
    gemm_into<T>(H, trans::t, trans::n, P, G, T(1), op);  // [r, n]
    gemm_into<T>(E, trans::n, trans::n, P, H, T(1), op);
  } else {
    gemm_into<T>(H, trans::n, trans::n, G, P, T(1), op);  // [m, r]
    gemm_into<T>(E, trans::n, trans::t, H, P, T(1), op);
  }
  E -= G;
  const T mse = E.squaredNorm() / mn;

  T C = 0;
  matrix<T> gC;  // ∇C [d, r]
  if (M) {
    const T eps = T(1e-8);
    // a_i = <X_i, G_i>, |X_i|² per row of the [m, n] shape, without forming X.
    vector<T> a(m), nx2(m);
    matrix<T> K;  // left: G·Mᵀ [m, r]
    if (left) {
      gemm_into<T>(K, trans::n, trans::t, G, *M, T(1), op);
      const matrix<T> MMt = gemm_new<T>(trans::n, trans::t, *M, *M, T(1), op);
      const matrix<T> PM = gemm_new<T>(trans::n, trans::n, P, MMt, T(1), op);  // [m, r]
      a = (P.array() * K.array()).rowwise().sum().matrix();
      nx2 = (PM.array() * P.array()).rowwise().sum().matrix();
      vector<T> s(m), t(m);
      for (Eigen::Index i = 0; i < m; ++i) {
        const T nx = std::sqrt(std::max(nx2[i], T(0))), ng = G.row(i).norm();
        const T dx = std::max(nx, eps), dg = std::max(ng, eps);
        const T c = a[i] / (dx * dg);
        C += c;
        s[i] = T(1) / (T(m) * dx * dg);
        t[i] = nx > eps ? c / (T(m) * nx * nx) : T(0);
      }
      if (grad) gC = s.asDiagonal() * K - t.asDiagonal() * PM;
    } else {
      const matrix<T> PtP = gemm_new<T>(trans::t, trans::n, P, P, T(1), op);
      const matrix<T> MG = gemm_new<T>(trans::n, trans::n, *M, PtP, T(1), op);  // [m, r]
      a = (M->array() * H.array()).rowwise().sum().matrix();
      nx2 = (MG.array() * M->array()).rowwise().sum().matrix();
      vector<T> s(m), t(m);
      for (Eigen::Index i = 0; i < m; ++i) {
        const T nx = std::sqrt(std::max(nx2[i], T(0))), ng = G.row(i).norm();
        const T dx = std::max(nx, eps), dg = std::max(ng, eps);
        const T c = a[i] / (dx * dg);
        C += c;
        s[i] = T(1) / (T(m) * dx * dg);
        t[i] = nx > eps ? c / (T(m) * nx * nx) : T(0);
      }
      if (grad) {
        const matrix<T> sM = s.asDiagonal() * *M, tM = t.asDiagonal() * *M;
        const matrix<T> MtM = gemm_new<T>(trans::t, trans::n, *M, tM, T(1), op);  // [r, r]
        gemm_into<T>(gC, trans::t, trans::n, G, sM, T(1), op);
        gemm<T>(trans::n, trans::n, T(-1), P, MtM, T(1), gC, op);
      }
    }
    C /= T(m);
  }

  if (grad) {
    matrix<T>& g = *grad;
    const T f = T(2) / mn * (T(1) - C);  // (1 − C)·2/(m·n), in the products' alpha
    if (left) {
      const matrix<T> EtP = gemm_new<T>(trans::t, trans::n, E, P, T(1), op);  // [n, r]
      gemm_into<T>(g, trans::n, trans::t, E, H, f, op);
      gemm<T>(trans::n, trans::n, f, G, EtP, T(1), g, op);
    } else {
      const matrix<T> EP = gemm_new<T>(trans::n, trans::n, E, P, T(1), op);  // [m, r]
      gemm_into<T>(g, trans::t, trans::n, G, EP, f, op);
      gemm<T>(trans::t, trans::n, f, E, H, T(1), g, op);
    }
    if (M) g -= mse * gC;
  }
  return mse * (T(1) - C);
}

}  // namespace peft::detail

namespace peft::optim {

template <class T>
class coap_projector {
 public:
  using value_type = T;
  using options_type = coap_options;

  coap_projector(const coap_options& o, std::size_t rows, std::size_t cols, std::uint64_t seed = 0)
      : o_(o), rows_(rows), cols_(cols), left_(rows < cols), seed_(seed) {
    o_.validate("coap");
    if (o_.rank > std::min(rows, cols))
      throw value_error("coap: invalid rank " + std::to_string(o_.rank) + " for a [" +
                        std::to_string(rows) + "," + std::to_string(cols) +
                        "] weight (must be <= " + std::to_string(std::min(rows, cols)) + ")");
  }

  const coap_options& options() const { return o_; }
  projection_side side() const { return left_ ? projection_side::left : projection_side::right; }
  bool has_basis() const { return has_basis_; }
  // P [d, r]: columns span the projected side (d = rows on the left, cols on the right).
  const matrix<T>& basis() const { return P_; }
  std::size_t refresh_count() const { return refreshes_; }
  std::size_t reprojection_count() const { return reprojections_; }  // range finder (incl. first)
  std::size_t update_count() const { return updates_; }              // correlation-aware steps
  std::size_t last_refresh_step() const { return last_refresh_; }
  // Whether a correlation-aware update is waiting for the first moment (between refresh and
  // transfer/project of one step).
  bool update_pending() const { return pending_; }

  bool needs_refresh(std::size_t step) const {
    return !has_basis_ || (step % o_.update_interval == 0 && step != last_refresh_);
  }

  void refresh(matrix_cref<T> G, std::size_t step) {
    check("refresh", G.rows(), G.cols(), rows_, cols_);
    resolve(nullptr);  // a previous refresh never completed: finish it first
    P_old_.resize(0, 0);
    if (!has_basis_) {
      const Eigen::Index d = Eigen::Index(left_ ? rows_ : cols_), r = Eigen::Index(o_.rank);
      rng g(seed_);
      matrix<T> omega(d, r);
      for (Eigen::Index k = 0; k < omega.size(); ++k) omega.data()[k] = T(g.normal());
      P_ = peft::detail::coap_range_finder<T>(G, omega, left_);
      ++reprojections_;
    } else {
      if (o_.restore_state) P_old_ = P_;
      if (step % (o_.update_interval * o_.reproject_factor) == 0) {
        P_ = peft::detail::coap_range_finder<T>(G, P_, left_);
        ++reprojections_;
      } else {
        pending_G_ = G;
        pending_ = true;
        ++updates_;
      }
    }
    has_basis_ = true;
    last_refresh_ = step;
    ++refreshes_;
  }

  void transfer(matrix<T>& m, moment which) {
    if (!pending_ && P_old_.size() == 0) return;  // nothing changed since the moments were made
    const auto ls = low_shape(rows_, cols_);
    check("transfer", m.rows(), m.cols(), ls.first, ls.second);
    resolve(which == moment::first ? &m : nullptr);
    if (P_old_.size() == 0) return;
    // R maps old low coordinates to new ones through the full shape.
    if (left_) {
      const matrix<T> R = peft::detail::gemm_new<T>(trans::t, trans::n, P_, P_old_, T(1),
                                                    "coap.transfer");  // [r, r]
      if (which == moment::first) {
        m = peft::detail::gemm_new<T>(trans::n, trans::n, R, m, T(1), "coap.transfer");
      } else {
        const matrix<T> root = m.cwiseMax(T(0)).cwiseSqrt();
        peft::detail::gemm_into<T>(m, trans::n, trans::n, R, root, T(1), "coap.transfer");
        m = m.cwiseAbs2();
      }
    } else {
      const matrix<T> R =
          peft::detail::gemm_new<T>(trans::t, trans::n, P_old_, P_, T(1), "coap.transfer");
      if (which == moment::first) {
        m = peft::detail::gemm_new<T>(trans::n, trans::n, m, R, T(1), "coap.transfer");
      } else {
        const matrix<T> root = m.cwiseMax(T(0)).cwiseSqrt();
        peft::detail::gemm_into<T>(m, trans::n, trans::n, root, R, T(1), "coap.transfer");
        m = m.cwiseAbs2();
      }
    }
  }

  matrix<T> project(matrix_cref<T> G, std::size_t /*step*/) {
    check("project", G.rows(), G.cols(), rows_, cols_);
    if (!has_basis_) throw value_error("coap: project before the first refresh");
    resolve(nullptr);
    P_old_.resize(0, 0);
    matrix<T> low;
    if (left_)
      peft::detail::gemm_into<T>(low, trans::t, trans::n, P_, G, T(1), "coap.project");
    else
      peft::detail::gemm_into<T>(low, trans::n, trans::n, G, P_, T(1), "coap.project");
    return low;
  }

  matrix<T> project_back(matrix_cref<T> low, std::size_t /*step*/) const {
    const auto ls = low_shape(rows_, cols_);
    check("project_back", low.rows(), low.cols(), ls.first, ls.second);
    if (!has_basis_) throw value_error("coap: project_back before the first refresh");
    // The scale rides in the product's alpha.
    matrix<T> full;
    if (left_)
      peft::detail::gemm_into<T>(full, trans::n, trans::n, P_, low, T(o_.scale),
                                 "coap.project_back");
    else
      peft::detail::gemm_into<T>(full, trans::n, trans::t, low, P_, T(o_.scale),
                                 "coap.project_back");
    return full;
  }

  // W += alpha·project_back(low), accumulated straight into W (no W-sized temporary).
  void project_back_add(matrix_cref<T> low, std::size_t /*step*/, matrix_ref<T> W,
                        T alpha = T(1)) const {
    const auto ls = low_shape(rows_, cols_);
    check("project_back_add", low.rows(), low.cols(), ls.first, ls.second);
    check("project_back_add", W.rows(), W.cols(), rows_, cols_);
    if (!has_basis_) throw value_error("coap: project_back_add before the first refresh");
    const T a = alpha * T(o_.scale);
    if (left_)
      peft::detail::gemm<T>(trans::n, trans::n, a, P_, low, T(1), W, "coap.project_back_add");
    else
      peft::detail::gemm<T>(trans::n, trans::t, a, low, P_, T(1), W, "coap.project_back_add");
  }

  std::pair<std::size_t, std::size_t> low_shape(std::size_t rows, std::size_t cols) const {
    if (rows < cols) return {o_.rank, cols};
    return {rows, o_.rank};
  }

  // The basis P; the copy of G and the previous basis live only inside one step (scratch).
  std::size_t state_bytes() const { return std::size_t(P_.size()) * sizeof(T); }
  std::size_t planned_state_bytes(std::size_t rows, std::size_t cols) const {
    return std::min(rows, cols) * o_.rank * sizeof(T);
  }

  // "P" (once refreshed), "meta" = packed {has_basis, last_refresh, refreshes, reprojections,
  // updates}.
  void save_state(projector_state<T>& out) const {
    if (has_basis_) out["P"] = to_tensor(P_);
    out["meta"] = peft::detail::pack_u64<T>(
        {has_basis_ ? 1u : 0u, last_refresh_, refreshes_, reprojections_, updates_});
  }
  void load_state(const projector_state<T>& in) {
    const std::string who = "coap";
    peft::detail::check_state_names(in, {"P", "meta"}, who);
    const auto w = peft::detail::unpack_u64(peft::detail::state_entry(in, "meta", who), 5,
                                            who + ": load_state: 'meta'");
    if (w[0] > 1) throw value_error(who + ": load_state: 'meta' has_basis must be 0 or 1");
    const bool has = w[0] != 0;
    matrix<T> P;
    auto it = in.find("P");
    if (has) {
      if (it == in.end()) throw value_error(who + ": load_state: missing tensor 'P'");
      const std::size_t d = left_ ? rows_ : cols_;
      if (shape_of(it->second) != shape_t{d, o_.rank})
        throw shape_error(who + ": load_state: 'P' has shape " + shape_str(it->second.shape()) +
                          ", expected [" + std::to_string(d) + "," + std::to_string(o_.rank) + "]");
      P = as_matrix(it->second);
    } else if (it != in.end()) {
      throw value_error(who + ": load_state: unexpected tensor 'P' before the first refresh");
    }
    P_ = std::move(P);
    P_old_.resize(0, 0);
    pending_G_.resize(0, 0);
    pending_ = false;
    has_basis_ = has;
    last_refresh_ = std::size_t(w[1]);
    refreshes_ = std::size_t(w[2]);
    reprojections_ = std::size_t(w[3]);
    updates_ = std::size_t(w[4]);
  }

 private:
  using trans = peft::detail::trans;

  // Takes the pending correlation-aware step (with the first moment M in the old basis, or
  // without the cosine factor when M is null).
  void resolve(const matrix<T>* M) {
    if (!pending_) return;
    matrix<T> grad;
    peft::detail::coap_objective<T>(pending_G_, P_, M, left_, &grad);
    if (o_.proj_max_grad_norm > 0) {
      // torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is < 1.
      const double norm = double(grad.norm());
      const double coef = o_.proj_max_grad_norm / (norm + 1e-6);
      if (coef < 1) grad *= T(coef);
    }
    P_ -= T(o_.proj_lr) * grad;
    pending_G_.resize(0, 0);
    pending_ = false;
  }
  static void check(const char* op, Eigen::Index r, Eigen::Index c, std::size_t er, std::size_t ec) {
    if (std::size_t(r) != er || std::size_t(c) != ec)
      throw shape_error(std::string("coap: ") + op + ": [" + std::to_string(r) + "," +
                        std::to_string(c) + "], expected [" + std::to_string(er) + "," +
                        std::to_string(ec) + "]");
  }

  coap_options o_;
  std::size_t rows_, cols_;
  bool left_;
  std::uint64_t seed_;
  matrix<T> P_, P_old_, pending_G_;
  bool has_basis_ = false, pending_ = false;
  std::size_t last_refresh_ = 0, refreshes_ = 0, reprojections_ = 0, updates_ = 0;
};

static_assert(checkpointable_projector<coap_projector<float>, float>);

}  // namespace peft::optim
