#pragma once
// The only place the library instantiates Eigen's dense decompositions (thin SVD, thin QR,
// symmetric eigen-decomposition, Cholesky). They are by far the most expensive templates to compile
// (tens of seconds each per scalar type), so every caller goes through these few functions. With
// peft::compiled (PEFT_COMPILED_LIB, core/config.hpp) they are only declared here and compiled
// once, in src/linalg_*.cpp; header-only programs instantiate them where they are used.
#include <Eigen/Core>
#include <algorithm>

#include "peft/core/config.hpp"
#include "peft/core/tensor.hpp"

namespace peft::detail {

// A ≈ U · diag(S) · Vᵀ with U [m, k], S [k] (descending), V [n, k], k = min(m, n).
template <class T>
struct svd_result {
  matrix<T> U;
  vector<T> S;
  matrix<T> V;
};

// Thin Q [m, k] and upper-triangular R [k, n] of A = Q·R, k = min(m, n).
template <class T>
struct qr_result {
  matrix<T> Q;
  matrix<T> R;
};

// Eigenvalues ascending and the matching eigenvectors as columns.
template <class T>
struct eig_result {
  vector<T> values;
  matrix<T> vectors;
};

// Declarations (the definitions follow below, or are compiled into peft::compiled).
template <class T>
svd_result<T> thin_svd(const matrix<T>& a, bool want_u, bool want_v);
template <class T>
qr_result<T> thin_qr(const matrix<T>& a, bool want_r);
template <class T>
eig_result<T> symmetric_eigen(const matrix<T>& a);
template <class T>
bool cholesky_upper(const matrix<T>& a, matrix<T>& R);

}  // namespace peft::detail

// A program linking peft::compiled sees only the declarations and parses none of Eigen's
// decomposition headers.
#if PEFT_DEFINITIONS
#include <Eigen/Cholesky>
#include <Eigen/Eigenvalues>
#include <Eigen/QR>
#include <Eigen/SVD>

namespace peft::detail {

// Thin SVD (Eigen's BDCSVD). U and/or V are left empty when not wanted (half the work for a
// tall or wide matrix when only one side is needed).
template <class T>
svd_result<T> thin_svd(const matrix<T>& a, bool want_u, bool want_v) {
  const unsigned flags = (want_u ? unsigned(Eigen::ComputeThinU) : 0u) |
                         (want_v ? unsigned(Eigen::ComputeThinV) : 0u);
  Eigen::BDCSVD<matrix<T>> svd(a, flags);
  svd_result<T> r;
  r.S = svd.singularValues();
  if (want_u) r.U = svd.matrixU();
  if (want_v) r.V = svd.matrixV();
  return r;
}

// Thin Householder QR; R is left empty unless wanted.
template <class T>
qr_result<T> thin_qr(const matrix<T>& a, bool want_r) {
  const Eigen::Index m = a.rows(), k = std::min(a.rows(), a.cols());
  Eigen::HouseholderQR<matrix<T>> qr(a);
  qr_result<T> r;
  r.Q = qr.householderQ() * matrix<T>::Identity(m, k);  // reflectors applied to [I_k; 0]
  if (want_r) r.R = qr.matrixQR().topRows(k).template triangularView<Eigen::Upper>();
  return r;
}

// Symmetric eigen-decomposition of a self-adjoint matrix (only its lower triangle is read).
// Throws peft::error-free: returns an empty result when Eigen reports no convergence.
template <class T>
eig_result<T> symmetric_eigen(const matrix<T>& a) {
  Eigen::SelfAdjointEigenSolver<matrix<T>> es(a);
  if (es.info() != Eigen::Success) return {};
  return {es.eigenvalues(), es.eigenvectors()};
}

// Cholesky factor: upper-triangular R with a = Rᵀ·R of a symmetric positive definite matrix (only
// its lower triangle is read). Returns false, R unspecified, when a is not numerically positive
// definite (a pivot <= 0; tiny positive pivots pass, callers judge the result).
template <class T>
bool cholesky_upper(const matrix<T>& a, matrix<T>& R) {
  Eigen::LLT<matrix<T>, Eigen::Lower> llt(a);
  if (llt.info() != Eigen::Success) return false;
  R = llt.matrixU();  // the strictly lower part is set to zero
  return true;
}

}  // namespace peft::detail
#endif  // PEFT_DEFINITIONS

namespace peft::detail {

#define PEFT_DETAIL_DECOMPOSITIONS(prefix, T)                              \
  prefix svd_result<T> thin_svd<T>(const matrix<T>&, bool, bool);          \
  prefix qr_result<T> thin_qr<T>(const matrix<T>&, bool);                  \
  prefix eig_result<T> symmetric_eigen<T>(const matrix<T>&);               \
  prefix bool cholesky_upper<T>(const matrix<T>&, matrix<T>&);
#if defined(PEFT_COMPILED_LIB)
PEFT_DETAIL_DECOMPOSITIONS(extern template, float)
PEFT_DETAIL_DECOMPOSITIONS(extern template, double)
#endif

}  // namespace peft::detail
