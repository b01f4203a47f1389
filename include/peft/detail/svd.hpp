#pragma once
// Truncated SVD, exact (Eigen's BDCSVD) and randomized (Halko, Martinsson & Tropp 2011: Gaussian
// range finder with power iterations, re-orthonormalised between iterations). Shared by the SVD
// inits (PiSSA, MiLoRA, LoRA-XS, LoRA-GA, EVA), LoRA extraction and the GaLore/COAP projectors.
//
// Tall-thin orthonormalisation is CholeskyQR2 (Fukaya, Nakatsukasa, Yanagisawa & Yamamoto 2014):
// two passes of  W = YᵀY = RᵀR (Cholesky of the small Gram matrix), Q = Y·R⁻¹. Its work is two
// [k, m]·[m, k]-sized level-3 products per pass, where Householder QR with an explicit Q is
// largely level-2 (4096 x 136 float, 1 thread: Householder ~9 ms, CholeskyQR2 ~2.8 ms). It needs
// cond(Y)² well below 1/eps: rank-deficient or ill-conditioned inputs fall back to Householder.
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <string>
#include <utility>

#include "peft/core/error.hpp"
#include "peft/core/random.hpp"
#include "peft/core/tensor.hpp"
#include "peft/detail/decompositions.hpp"
#include "peft/detail/gemm.hpp"

namespace peft::detail {

// Thin orthonormal basis Q [m, k] of the columns of Y [m, k] (Householder QR; any shape).
template <class T>
matrix<T> orthonormal_basis(const matrix<T>& Y) {
  return thin_qr<T>(Y, false).Q;
}

// Y = Q·R with Q [m, k] orthonormal (QᵀQ = I) and R [k, k] upper triangular (empty unless asked
// for). `householder` says the CholeskyQR2 path was refused and Householder QR ran instead.
template <class T>
struct orthonormalize_result {
  matrix<T> Q;
  matrix<T> R;
  bool householder = false;
};

// Column-major storage for the tall-thin [m, k] matrices of the range finder: Eigen 3.4's
// triangular solve from the right runs ~2.7x faster on it than on row-major (0.7 vs 1.9 ms at
// 4096 x 136), and Gᵀ·X for a row-major G writes a column-major result at G·X's speed (a
// row-major one costs ~1.35x more); G·X itself is within 5% either way.
template <class T>
using col_matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;

// A column-major X [m, n] read as the row-major Xᵀ [n, m] over the same memory, for the row-major
// GEMM entry point (detail/gemm.hpp): a column-major product C = A·B is the row-major product
// Cᵀ = Bᵀ·Aᵀ on these views, so no operand is copied and the results stay column-major.
template <class T>
Eigen::Map<const matrix<T>> row_major_transpose(const col_matrix<T>& X) {
  return {X.data(), X.cols(), X.rows()};
}
template <class T>
Eigen::Map<matrix<T>> row_major_transpose(col_matrix<T>& X) {
  return {X.data(), X.cols(), X.rows()};
}

// One CholeskyQR pass on Y [m, k]: W = YᵀY (lower triangle, a rank-k update), W = RᵀR, Q = Y·R⁻¹.
// False, Q and R unspecified, when W is not finite or not numerically positive definite, or a
// pivot is below the rounding level of its column (R_jj² <= eps·W_jj: column j lies in the span
// of the previous ones to working precision). Two modes:
//   near_identity = false: Q by a triangular solve from the right, backward stable row by row:
//     ‖Y − Q·R‖ = O(eps·‖Y‖) whatever cond(Y) is (Y times an explicit R⁻¹ would add
//     O(eps·cond(Y)·‖Y‖)).
//   near_identity = true (CholeskyQR2's second pass): first requires ‖W − I‖_F <= 1/2, so
//     cond(R) <= √3 and Q = Y·R⁻¹ with the explicit inverse is as accurate, and a triangular
//     product is ~2x faster than the solve with a BLAS (0.44 vs 1.1 ms at 4096 x 136).
template <class T, int Options>
bool cholesky_qr_pass(const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Options>& Y,
                      Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Options>& Q, matrix<T>& R,
                      bool near_identity = false) {
  const Eigen::Index k = Y.cols();
  matrix<T> W = matrix<T>::Zero(k, k);
  W.template selfadjointView<Eigen::Lower>().rankUpdate(Y.transpose());
  if (!W.allFinite()) return false;
  if (near_identity) {
    double off = 0, diag = 0;  // ‖W − I‖²_F from the lower triangle (W is symmetric)
    for (Eigen::Index i = 0; i < k; ++i) {
      diag += (double(W(i, i)) - 1.0) * (double(W(i, i)) - 1.0);
      for (Eigen::Index j = 0; j < i; ++j) off += double(W(i, j)) * double(W(i, j));
    }
    if (!(std::sqrt(diag + 2 * off) <= 0.5)) return false;
  }
  if (!cholesky_upper<T>(W, R)) return false;
  const T eps = std::numeric_limits<T>::epsilon();
  for (Eigen::Index j = 0; j < k; ++j)
    if (!(R(j, j) * R(j, j) > eps * W(j, j))) return false;
  if (near_identity) {
    const matrix<T> Rinv =
        R.template triangularView<Eigen::Upper>().solve(matrix<T>::Identity(k, k));
    Q.noalias() = Y * Rinv.template triangularView<Eigen::Upper>();
  } else {
    Q = Y;
    R.template triangularView<Eigen::Upper>().template solveInPlace<Eigen::OnTheRight>(Q);
  }
  return true;
}

template <class T, int Options>
void check_tall(const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Options>& Y) {
  if (Y.rows() < Y.cols())
    throw shape_error("orthonormalize: [" + std::to_string(Y.rows()) + "," +
                      std::to_string(Y.cols()) + "] has more columns than rows");
}

// Householder QR in place of Y (and R when not null): the fallback of the CholeskyQR paths.
template <class T, int Options>
void householder_in_place(Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Options>& Y,
                          matrix<T>* R) {
  auto qr = thin_qr<T>(matrix<T>(Y), R != nullptr);
  Y = std::move(qr.Q);
  if (R) *R = std::move(qr.R);
}

// Orthonormalises the columns of a tall Y [m, k] (m >= k) in place, Y ← Q, and writes R [k, k]
// (Y = Q·R, upper triangular) when R is not null. CholeskyQR2: the first pass leaves
// ‖QᵀQ − I‖ ≈ eps·cond(Y)², the second (on a Q1 with cond(Q1) ≈ 1) takes it to O(eps), and
// R = R2·R1. Falls back to Householder QR when the first Cholesky fails (a zero column, rank
// < k, overflow) or the second Gram matrix is far from I (‖Q1ᵀQ1 − I‖_F > 1/2: cond(Y)² near
// 1/eps, e.g. a float Y with cond(Y) above ~10³, or rank < k hidden by rounding). Returns false
// when the fallback ran. Row- or column-major Y (column-major is the fast one, see col_matrix).
template <class T, int Options>
bool orthonormalize_in_place(Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Options>& Y,
                             matrix<T>* R = nullptr) {
  using mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Options>;
  check_tall<T>(Y);
  if (Y.cols() == 0) {
    if (R) R->resize(0, 0);
    return true;
  }
  mat Q1, Q2;
  matrix<T> R1, R2;
  if (cholesky_qr_pass<T>(Y, Q1, R1) && cholesky_qr_pass<T>(Q1, Q2, R2, true)) {
    Y = std::move(Q2);
    if (R) R->noalias() = R2.template triangularView<Eigen::Upper>() * R1;
    return true;
  }
  householder_in_place<T>(Y, R);
  return false;
}

// A basis of the column space of a tall Y, for the intermediate iterates of the range finder,
// where only the span matters: one CholeskyQR pass (Householder on its failure). span(Q) is
// span(Y) to O(eps·cond(Y)) as with Householder, but ‖QᵀQ − I‖ is only O(eps·cond(Y)²), which
// the next orthonormalisation, after the next product with G, does not see. Returns false when
// the fallback ran.
template <class T, int Options>
bool span_basis_in_place(Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Options>& Y) {
  check_tall<T>(Y);
  if (Y.cols() == 0) return true;
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Options> Q;
  matrix<T> R;
  if (cholesky_qr_pass<T>(Y, Q, R)) {
    Y = std::move(Q);
    return true;
  }
  householder_in_place<T>(Y, nullptr);
  return false;
}

// Y = Q·R for a tall Y [m, k] (m >= k): CholeskyQR2 with a Householder fallback (see
// orthonormalize_in_place). Throws peft::shape_error when m < k.
template <class T>
orthonormalize_result<T> orthonormalize(matrix_cref<T> Y, bool want_r = false) {
  orthonormalize_result<T> out;
  col_matrix<T> Q = Y;
  out.householder = !orthonormalize_in_place<T>(Q, want_r ? &out.R : nullptr);
  out.Q = Q;
  return out;
}

inline void check_rank(const char* op, Eigen::Index m, Eigen::Index n, std::size_t r) {
  if (r == 0 || r > std::size_t(std::min(m, n)))
    throw value_error(std::string(op) + ": rank " + std::to_string(r) + " for a [" +
                      std::to_string(m) + "," + std::to_string(n) + "] matrix");
}

// Exact SVD truncated to the r largest (largest = true) or r smallest singular triplets.
template <class T>
svd_result<T> truncated_svd(matrix_cref<T> G, std::size_t r, bool largest = true) {
  check_rank("truncated_svd", G.rows(), G.cols(), r);
  const auto svd = thin_svd<T>(matrix<T>(G), true, true);
  const Eigen::Index k = Eigen::Index(r), full = svd.S.size();
  const Eigen::Index start = largest ? 0 : full - k;
  return {svd.U.middleCols(start, k), svd.S.segment(start, k), svd.V.middleCols(start, k)};
}

// Ω with independent N(0, 1) entries drawn from g: Box–Muller on pairs of uniforms with both
// outputs used (ρ·cos θ and ρ·sin θ), evaluated by Eigen's vectorised log/sin/cos in T. Calling
// rng::normal() per entry (scalar log and cos in double, one value per pair of uniforms) took
// ~11 ms for a 4096 x 136 float sketch, this ~0.7 ms (a GaLore refresh is ~80-180 ms). Consumes
// exactly 2·ceil(size/2) uniforms; the same rng state gives the same Ω on the same build.
template <class Matrix>
void fill_gaussian_sketch(Matrix& omega, rng& g) {
  using T = typename Matrix::Scalar;
  using array = Eigen::Array<T, Eigen::Dynamic, 1>;
  const Eigen::Index n = omega.size(), h = (n + 1) / 2;
  array u1(h), u2(h);
  for (Eigen::Index i = 0; i < h; ++i) {
    u1[i] = T(1.0 - g.uniform());  // (0, 1]: the log stays finite
    u2[i] = T(g.uniform());
  }
  const array rho = (T(-2) * u1.log()).sqrt();
  const array theta = T(2 * std::numbers::pi) * u2;
  Eigen::Map<array>(omega.data(), h) = rho * theta.cos();
  Eigen::Map<array>(omega.data() + h, n - h) = (rho * theta.sin()).head(n - h);
}

// SVD of a wide projection B = Qᵀ·A [k, n] given its tall transpose Bt = Aᵀ·Q [n, k] (overwritten):
// Bt = Qb·Rb by CholeskyQR2 and Rb = Ur·Σ·Vrᵀ [k, k], so B = Vr·Σ·(Qb·Ur)ᵀ. Returns S = Σ, U = Vr
// [k, k] (the caller lifts it: Q·Vr) and V = Qb·Ur [n, r], each factor only when wanted. Eigen's
// BDCSVD of B itself would bidiagonalise the whole k x n matrix, several times the cost.
template <class T>
svd_result<T> svd_of_projection(col_matrix<T>& Bt, Eigen::Index r, bool want_u, bool want_v) {
  matrix<T> Rb;
  orthonormalize_in_place<T>(Bt, &Rb);
  auto s = thin_svd<T>(Rb, want_v, want_u);  // Rb = Ur·Σ·Vrᵀ
  svd_result<T> out;
  out.S = std::move(s.S);
  if (want_u) out.U = std::move(s.V);
  // V = Qb·Ur = (Btᵀ as stored)ᵀ·Ur.
  if (want_v)
    gemm_into<T>(out.V, trans::t, trans::n, row_major_transpose<T>(Bt), s.U.leftCols(r), T(1),
                 "svd_of_projection");
  return out;
}

// How randomized_svd turns the range-finder basis into singular triplets.
enum class rsvd_tail {
  // SVD of the projection Qᵀ·A [k, n] (Halko et al.'s Algorithm 5.1, torch.svd_lowrank): one more
  // product with A after the last power iteration. Valid for any niter.
  exact,
  // Rayleigh–Ritz on the last power iteration's pair: one product with A fewer (see
  // randomized_svd). Needs niter >= 1; with niter = 0 the exact tail runs instead.
  rayleigh_ritz,
};

struct rsvd_options {
  // Sketch columns beyond r: k = min(r + oversample, min(m, n)).
  std::size_t oversample = 8;
  rsvd_tail tail = rsvd_tail::exact;
  // Run the range finder on Gᵀ (the sketch Ω is then [m, k]). The two factors are not equally
  // accurate: the one from the last product with G or Gᵀ is half a power iteration ahead, i.e.
  // the left factor with the Rayleigh–Ritz tail and the right one with the exact tail. transpose
  // swaps the sides, so a caller who needs one factor puts it where it is best.
  bool transpose = false;
  // Factors to form (singular values are always returned); an unwanted one is left empty.
  bool want_u = true;
  bool want_v = true;
};

// Randomized truncated SVD of G [m, n] to rank r, written for A = G (or Gᵀ with transpose):
//   Y = A·Ω (Ω Gaussian [n_A, k]), Q = orth(Y); then niter power iterations
//   Z = orth(Aᵀ·Q), Q = orth(A·Z);
// orth() is CholeskyQR2 (Householder when Y is rank deficient or too ill-conditioned) where the
// basis is used, one CholeskyQR pass where only its span is (span_basis_in_place). Tails:
//   exact:  B = Qᵀ·A [k, n_A] and A ≈ Q·B. Its SVD goes through a QR of the tall Bᵀ = Aᵀ·Q =
//           Qb·Rb (Bᵀ is tall, so this is CholeskyQR2 again; Eigen's BDCSVD would bidiagonalise
//           the whole k x n_A matrix): Rb = Ur·Σ·Vrᵀ [k, k] gives B = Vr·Σ·(Qb·Ur)ᵀ, so
//           U = Q·Vr, V = Qb·Ur.
//   rayleigh_ritz (niter >= 1): the last iteration already has Z orthonormal and A·Z = Q·R
//           (R from the QR). Then A·Z·Zᵀ = Q·R·Zᵀ, and with R = Ur·Σ·Vrᵀ [k, k]:
//               A·Z·Zᵀ = (Q·Ur)·Σ·(Z·Vr)ᵀ,
//           an exact SVD of A restricted to span(Z): U = Q·Ur, V = Z·Vr, S = Σ. The final
//           Qᵀ·A product and the k x n_A SVD are gone (one GEMM of 2·niter + 2 fewer); V is the
//           best rank-r basis inside span(Z) for ‖A·V‖_F (A restricted to span(Z) is exactly
//           diagonalised), U is half an iteration further (span(Q) = span(A·Z)).
// Only the leading r triplets are returned. Reproducible from the rng.
template <class T>
svd_result<T> randomized_svd(matrix_cref<T> G, std::size_t r, std::size_t niter, rng& g,
                             const rsvd_options& o) {
  check_rank("randomized_svd", G.rows(), G.cols(), r);
  const bool tr = o.transpose;
  const Eigen::Index m = G.rows(), n = G.cols();
  const Eigen::Index ma = tr ? n : m, na = tr ? m : n;  // A = tr ? Gᵀ : G is [ma, na]
  const Eigen::Index k = std::min<Eigen::Index>(Eigen::Index(r + o.oversample), std::min(m, n));
  const Eigen::Index rr = Eigen::Index(r);
  // A·X and Aᵀ·X as single products with G (no transposed copy of G), column-major X and Y
  // through their row-major transposes: Y = G·X is Yᵀ = Xᵀ·Gᵀ, Y = Gᵀ·X is Yᵀ = Xᵀ·G.
  auto times_a = [&](const col_matrix<T>& X) {
    col_matrix<T> Y(ma, X.cols());
    gemm<T>(trans::n, tr ? trans::n : trans::t, T(1), row_major_transpose<T>(X), G, T(0),
            row_major_transpose<T>(Y), "randomized_svd");
    return Y;
  };
  auto times_at = [&](const col_matrix<T>& X) {
    col_matrix<T> Y(na, X.cols());
    gemm<T>(trans::n, tr ? trans::t : trans::n, T(1), row_major_transpose<T>(X), G, T(0),
            row_major_transpose<T>(Y), "randomized_svd");
    return Y;
  };
  const bool ritz = o.tail == rsvd_tail::rayleigh_ritz && niter >= 1;
  const bool want_ua = tr ? o.want_v : o.want_u, want_va = tr ? o.want_u : o.want_v;

  col_matrix<T> Q;
  {
    col_matrix<T> omega(na, k);
    fill_gaussian_sketch(omega, g);
    Q = times_a(omega);
  }
  // Orthonormal where a factor or the tail uses the basis (the last Q, and the last Z for the
  // Rayleigh–Ritz tail); elsewhere only the span feeds the next product.
  col_matrix<T> Z;
  matrix<T> R;
  if (niter == 0)
    orthonormalize_in_place<T>(Q);
  else
    span_basis_in_place<T>(Q);
  for (std::size_t it = 0; it < niter; ++it) {
    const bool last = it + 1 == niter;
    Z = times_at(Q);
    if (last && ritz)
      orthonormalize_in_place<T>(Z);
    else
      span_basis_in_place<T>(Z);
    Q = times_a(Z);
    if (last)
      orthonormalize_in_place<T>(Q, ritz ? &R : nullptr);
    else
      span_basis_in_place<T>(Q);
  }

  matrix<T> Ua, Va;
  vector<T> S;
  if (ritz) {
    const auto s = thin_svd<T>(R, want_ua, want_va);
    S = s.S.head(rr);
    if (want_ua)
      gemm_into<T>(Ua, trans::t, trans::n, row_major_transpose<T>(Q), s.U.leftCols(rr), T(1),
                   "randomized_svd");
    if (want_va)
      gemm_into<T>(Va, trans::t, trans::n, row_major_transpose<T>(Z), s.V.leftCols(rr), T(1),
                   "randomized_svd");
  } else {
    Z = times_at(Q);  // Bᵀ
    auto s = svd_of_projection<T>(Z, rr, want_ua, want_va);
    S = s.S.head(rr);
    if (want_ua)
      gemm_into<T>(Ua, trans::t, trans::n, row_major_transpose<T>(Q), s.U.leftCols(rr), T(1),
                   "randomized_svd");
    if (want_va) Va = std::move(s.V);
  }
  if (tr) return {std::move(Va), std::move(S), std::move(Ua)};
  return {std::move(Ua), std::move(S), std::move(Va)};
}

// The exact tail, both factors, sketch of r + oversample columns.
template <class T>
svd_result<T> randomized_svd(matrix_cref<T> G, std::size_t r, std::size_t niter, rng& g,
                             std::size_t oversample = 8) {
  rsvd_options o;
  o.oversample = oversample;
  return randomized_svd<T>(G, r, niter, g, o);
}

// With peft::compiled these are compiled once (src/linalg_*.cpp): a TU that calls them instantiates
// none of the sketching, orthonormalisation or decomposition code.
#define PEFT_DETAIL_SVD(prefix, T)                                                                \
  prefix matrix<T> orthonormal_basis<T>(const matrix<T>&);                                        \
  prefix bool orthonormalize_in_place<T, Eigen::RowMajor>(matrix<T>&, matrix<T>*);                \
  prefix bool orthonormalize_in_place<T, Eigen::ColMajor>(col_matrix<T>&, matrix<T>*);            \
  prefix bool span_basis_in_place<T, Eigen::RowMajor>(matrix<T>&);                                \
  prefix bool span_basis_in_place<T, Eigen::ColMajor>(col_matrix<T>&);                            \
  prefix orthonormalize_result<T> orthonormalize<T>(matrix_cref<T>, bool);                        \
  prefix svd_result<T> truncated_svd<T>(matrix_cref<T>, std::size_t, bool);                       \
  prefix svd_result<T> svd_of_projection<T>(col_matrix<T>&, Eigen::Index, bool, bool);            \
  prefix svd_result<T> randomized_svd<T>(matrix_cref<T>, std::size_t, std::size_t, rng&,          \
                                         const rsvd_options&);                                    \
  prefix svd_result<T> randomized_svd<T>(matrix_cref<T>, std::size_t, std::size_t, rng&,          \
                                         std::size_t);
#if defined(PEFT_COMPILED_LIB)
PEFT_DETAIL_SVD(extern template, float)
PEFT_DETAIL_SVD(extern template, double)
#endif

}  // namespace peft::detail
