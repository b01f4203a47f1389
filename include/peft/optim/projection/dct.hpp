#pragma once
// The SVD-free DCT projector (Modoranu, Safaryan, Schultheis & Alistarh 2025, "SVD-Free Low-Rank
// Adaptive Gradient Optimization for Large Language Models" / "FFT-based Dynamic Subspace
// Selection ...", arXiv:2505.17967; reference: ISTA-DASLab-Optimizers, DCT-AdamW and its
// FFTLowRankProjector).
//
// The basis is a fixed orthonormal DCT-II matrix: Q = Dᵀ [s, s] (peft::detail::dct, rows of D
// are the cosine vectors, so column k of Q is frequency k) with s the projected dimension. At a
// refresh, S = G·Q (right) or Qᵀ·G (left) is formed, its columns (right) / rows (left) are
// ranked by their ℓ1 norm (the reference's ell_norm = 1; ℓ2 on request) and the indices of the r
// largest are kept, in descending order of norm (ties: lower frequency first). Then
//   rows >= cols -> right: low = G·Q[:, idx] [rows, r], back = low·Q[:, idx]ᵀ
//   rows <  cols -> left:  low = Q[:, idx]ᵀ·G [r, cols], back = Q[:, idx]·low
// (back multiplied by scale). Q[:, idx] is gathered from the shared basis for each product
// (r·s copies, against the m·n·r of the product) and never kept.
//
// Memory: the projector keeps only the r indices (state_bytes = r·4 bytes). The basis D [s, s]
// is built once per (scalar type, size) in detail::dct_cache and shared through a shared_ptr by
// every DCT projector of that size (and the DCT adapters/inits); it is reported separately by
// shared_basis_bytes() and is not part of any projector's state_bytes().
//
// Moments across a refresh: kept as they are by default (the reference's rotate_subspace =
// False). With rotate_moments, M_new = Q_newᵀ·Q_old·M_old (left; right: M_old·Q_oldᵀ·Q_new);
// since the columns of Q are orthonormal, Q_newᵀ·Q_old is the 0/1 matrix matching equal
// frequencies, so the rotation is a reindexing: a frequency kept across the refresh keeps its
// moment (moved to its new position), a new one starts at zero. The reference rotates the
// second moment by the same matrix (then takes abs); with a 0/1 matrix that is the same
// reindexing, which transfer() applies to both moments.
//
// Schedule: refresh before the first projection and when t % update_interval == 0 (t = updates
// already taken). The reference optimizer's default gap is 1 (every step); here the default is
// GaLore's 200 so that the projectors are interchangeable, set 1 for the reference behaviour.
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "peft/core/error.hpp"
#include "peft/core/tensor.hpp"
#include "peft/detail/dct.hpp"
#include "peft/detail/gemm.hpp"
#include "peft/optim/optimizer.hpp"
#include "peft/optim/projection/galore.hpp"  // projection_side
#include "peft/optim/projection/projector.hpp"
#include "peft/optim/projection/projector_state.hpp"

namespace peft::optim {

struct dct_options {
  static constexpr const char* name = "dct";
  std::size_t rank = 128;
  std::size_t update_interval = 200;
  // Norm ranking the DCT columns: 1 (the reference) or 2.
  int norm = 1;
  // Reindex the moments to follow the selected frequencies at each refresh.
  bool rotate_moments = false;
  double scale = 1.0;

  void validate(const std::string& who) const {
    if (rank == 0) throw value_error(who + ": invalid rank 0 (must be >= 1)");
    if (update_interval == 0)
      throw value_error(who + ": invalid update_interval 0 (must be >= 1)");
    if (norm != 1 && norm != 2)
      throw value_error(who + ": invalid norm " + std::to_string(norm) + " (must be 1 or 2)");
    if (!std::isfinite(scale) || scale == 0)
      throw value_error(who + ": invalid scale " + peft::detail::hparam_str(scale) +
                        " (must be finite and nonzero)");
  }
};

template <class T>
class dct_projector {
 public:
  using value_type = T;
  using options_type = dct_options;
  using index_type = std::uint32_t;

  dct_projector(const dct_options& o, std::size_t rows, std::size_t cols, std::uint64_t /*seed*/ = 0)
      : o_(o), rows_(rows), cols_(cols), left_(rows < cols), size_(left_ ? rows : cols) {
    o_.validate("dct");
    if (o_.rank > std::min(rows, cols))
      throw value_error("dct: invalid rank " + std::to_string(o_.rank) + " for a [" +
                        std::to_string(rows) + "," + std::to_string(cols) +
                        "] weight (must be <= " + std::to_string(std::min(rows, cols)) + ")");
  }

  const dct_options& options() const { return o_; }
  projection_side side() const { return left_ ? projection_side::left : projection_side::right; }
  bool has_basis() const { return !idx_.empty(); }
  // The selected frequencies (columns of Q), in the order of the low-rank coordinates.
  const std::vector<index_type>& indices() const { return idx_; }
  std::size_t refresh_count() const { return refreshes_; }
  std::size_t last_refresh_step() const { return last_refresh_; }
  // The projected dimension s (the DCT size).
  std::size_t basis_size() const { return size_; }
  // The shared DCT-II matrix D [s, s] (Q = Dᵀ), built on first use and shared by size.
  const std::shared_ptr<const matrix<T>>& shared_basis() const {
    if (!D_) D_ = peft::detail::dct_matrix_cached<T>(size_);
    return D_;
  }
  // Bytes of that shared matrix, counted once per size for all projectors (not in state_bytes).
  std::size_t shared_basis_bytes() const { return size_ * size_ * sizeof(T); }
  // Q[:, idx] [s, r], gathered from the shared basis.
  matrix<T> basis() const {
    if (idx_.empty()) throw value_error("dct: basis before the first refresh");
    return gather().transpose();
  }

  bool needs_refresh(std::size_t step) const {
    return idx_.empty() || (step % o_.update_interval == 0 && step != last_refresh_);
  }

  void refresh(matrix_cref<T> G, std::size_t step) {
    check("refresh", G.rows(), G.cols(), rows_, cols_);
    const matrix<T>& D = *shared_basis();
    const Eigen::Index s = Eigen::Index(size_);
    // Norm of each column of G·Dᵀ (right) / row of D·G (left), accumulated over blocks of G so
    // that the full S is never held.
    vector<T> score = vector<T>::Zero(s);
    const Eigen::Index block = 256;
    matrix<T> S;
    if (left_) {
      for (Eigen::Index c0 = 0; c0 < G.cols(); c0 += block) {
        const Eigen::Index nc = std::min(block, G.cols() - c0);
        peft::detail::gemm_into<T>(S, trans::n, trans::n, D, G.middleCols(c0, nc), T(1),
                                   "dct.refresh");  // [s, nc]
        if (o_.norm == 1)
          score += S.cwiseAbs().rowwise().sum();
        else
          score += S.cwiseAbs2().rowwise().sum();
      }
    } else {
      for (Eigen::Index r0 = 0; r0 < G.rows(); r0 += block) {
        const Eigen::Index nr = std::min(block, G.rows() - r0);
        peft::detail::gemm_into<T>(S, trans::n, trans::t, G.middleRows(r0, nr), D, T(1),
                                   "dct.refresh");  // [nr, s]
        if (o_.norm == 1)
          score += S.cwiseAbs().colwise().sum().transpose();
        else
          score += S.cwiseAbs2().colwise().sum().transpose();
      }
    }
    // (ℓ2 ranks by the squared norm: same order.)
    std::vector<index_type> order(size_);
    std::iota(order.begin(), order.end(), index_type(0));
    const std::size_t r = o_.rank;
    std::partial_sort(order.begin(), order.begin() + std::ptrdiff_t(r), order.end(),
                      [&](index_type a, index_type b) {
                        const T sa = score[Eigen::Index(a)], sb = score[Eigen::Index(b)];
                        return sa > sb || (sa == sb && a < b);
                      });
    order.resize(r);
    if (o_.rotate_moments && !idx_.empty()) {
      prev_ = std::move(idx_);
      has_prev_ = true;
    } else {
      has_prev_ = false;
      prev_.clear();
    }
    idx_ = std::move(order);
    last_refresh_ = step;
    ++refreshes_;
  }

  // Reindexing of a moment from the previous selection to the current one (rotate_moments).
  void transfer(matrix<T>& m, moment /*which*/) {
    if (!has_prev_) return;
    const auto ls = low_shape(rows_, cols_);
    check("transfer", m.rows(), m.cols(), ls.first, ls.second);
    std::vector<std::ptrdiff_t> where(size_, -1);  // frequency -> old position
    for (std::size_t a = 0; a < prev_.size(); ++a) where[prev_[a]] = std::ptrdiff_t(a);
    matrix<T> out = matrix<T>::Zero(m.rows(), m.cols());
    for (std::size_t b = 0; b < idx_.size(); ++b) {
      const std::ptrdiff_t a = where[idx_[b]];
      if (a < 0) continue;
      if (left_)
        out.row(Eigen::Index(b)) = m.row(Eigen::Index(a));
      else
        out.col(Eigen::Index(b)) = m.col(Eigen::Index(a));
    }
    m = std::move(out);
  }

  matrix<T> project(matrix_cref<T> G, std::size_t /*step*/) {
    check("project", G.rows(), G.cols(), rows_, cols_);
    if (idx_.empty()) throw value_error("dct: project before the first refresh");
    has_prev_ = false;
    prev_.clear();
    const matrix<T> Qt = gather();  // [r, s] = Q[:, idx]ᵀ
    matrix<T> low;
    if (left_)
      peft::detail::gemm_into<T>(low, trans::n, trans::n, Qt, G, T(1), "dct.project");
    else
      peft::detail::gemm_into<T>(low, trans::n, trans::t, G, Qt, T(1), "dct.project");
    return low;
  }

  matrix<T> project_back(matrix_cref<T> low, std::size_t /*step*/) const {
    const auto ls = low_shape(rows_, cols_);
    check("project_back", low.rows(), low.cols(), ls.first, ls.second);
    if (idx_.empty()) throw value_error("dct: project_back before the first refresh");
    const matrix<T> Qt = gather();
    // The scale rides in the product's alpha.
    matrix<T> full;
    if (left_)
      peft::detail::gemm_into<T>(full, trans::t, trans::n, Qt, low, T(o_.scale),
                                 "dct.project_back");
    else
      peft::detail::gemm_into<T>(full, trans::n, trans::n, low, Qt, T(o_.scale),
                                 "dct.project_back");
    return full;
  }

  // W += alpha·project_back(low), accumulated straight into W (no W-sized temporary).
  void project_back_add(matrix_cref<T> low, std::size_t /*step*/, matrix_ref<T> W,
                        T alpha = T(1)) const {
    const auto ls = low_shape(rows_, cols_);
    check("project_back_add", low.rows(), low.cols(), ls.first, ls.second);
    check("project_back_add", W.rows(), W.cols(), rows_, cols_);
    if (idx_.empty()) throw value_error("dct: project_back_add before the first refresh");
    const matrix<T> Qt = gather();
    const T a = alpha * T(o_.scale);
    if (left_)
      peft::detail::gemm<T>(trans::t, trans::n, a, Qt, low, T(1), W, "dct.project_back_add");
    else
      peft::detail::gemm<T>(trans::n, trans::n, a, low, Qt, T(1), W, "dct.project_back_add");
  }

  std::pair<std::size_t, std::size_t> low_shape(std::size_t rows, std::size_t cols) const {
    if (rows < cols) return {o_.rank, cols};
    return {rows, o_.rank};
  }

  // The r indices (4 bytes each); see shared_basis_bytes() for the basis.
  std::size_t state_bytes() const { return idx_.size() * sizeof(index_type); }
  std::size_t planned_state_bytes(std::size_t, std::size_t) const {
    return o_.rank * sizeof(index_type);
  }

  // "indices" [r] (once refreshed; integers < 2^24 are exact in float and double), "meta" =
  // packed {last_refresh, refreshes}.
  void save_state(projector_state<T>& out) const {
    if (!idx_.empty()) {
      tensor<T> t = tensor<T>::from_shape({idx_.size()});
      for (std::size_t i = 0; i < idx_.size(); ++i) t(i) = T(idx_[i]);
      out["indices"] = std::move(t);
    }
    out["meta"] = peft::detail::pack_u64<T>({last_refresh_, refreshes_});
  }
  void load_state(const projector_state<T>& in) {
    const std::string who = "dct";
    peft::detail::check_state_names(in, {"indices", "meta"}, who);
    const auto w = peft::detail::unpack_u64(peft::detail::state_entry(in, "meta", who), 2,
                                            who + ": load_state: 'meta'");
    std::vector<index_type> idx;
    auto it = in.find("indices");
    if (it != in.end()) {
      const tensor<T>& t = it->second;
      if (t.dimension() != 1 || t.size() != o_.rank)
        throw shape_error(who + ": load_state: 'indices' has shape " + shape_str(t.shape()) +
                          ", expected [" + std::to_string(o_.rank) + "]");
      std::vector<bool> seen(size_, false);
      for (std::size_t i = 0; i < t.size(); ++i) {
        const double v = double(t(i));
        if (!(v >= 0 && v < double(size_) && std::floor(v) == v))
          throw value_error(who + ": load_state: 'indices' entry " + std::to_string(i) + " is " +
                            std::to_string(v) + " (must be an integer in [0, " +
                            std::to_string(size_) + "))");
        const auto k = index_type(v);
        if (seen[k])
          throw value_error(who + ": load_state: 'indices' repeats frequency " + std::to_string(k));
        seen[k] = true;
        idx.push_back(k);
      }
    }
    idx_ = std::move(idx);
    prev_.clear();
    has_prev_ = false;
    last_refresh_ = std::size_t(w[0]);
    refreshes_ = std::size_t(w[1]);
  }

 private:
  using trans = peft::detail::trans;

  // Q[:, idx]ᵀ = rows idx of D [r, s] (D is row-major: contiguous row copies).
  matrix<T> gather() const {
    const matrix<T>& D = *shared_basis();
    matrix<T> Qt(Eigen::Index(idx_.size()), Eigen::Index(size_));
    for (std::size_t i = 0; i < idx_.size(); ++i) Qt.row(Eigen::Index(i)) = D.row(Eigen::Index(idx_[i]));
    return Qt;
  }
  static void check(const char* op, Eigen::Index r, Eigen::Index c, std::size_t er, std::size_t ec) {
    if (std::size_t(r) != er || std::size_t(c) != ec)
      throw shape_error(std::string("dct: ") + op + ": [" + std::to_string(r) + "," +
                        std::to_string(c) + "], expected [" + std::to_string(er) + "," +
                        std::to_string(ec) + "]");
  }

  dct_options o_;
  std::size_t rows_, cols_;
  bool left_;
  std::size_t size_;
  mutable std::shared_ptr<const matrix<T>> D_;
  std::vector<index_type> idx_, prev_;
  bool has_prev_ = false;
  std::size_t last_refresh_ = 0, refreshes_ = 0;
};

static_assert(checkpointable_projector<dct_projector<float>, float>);

}  // namespace peft::optim
