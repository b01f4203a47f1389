#pragma once
// Truncated SVD, exact (Eigen's BDCSVD) and randomized (Halko, Martinsson & Tropp 2011: Gaussian
// range finder with power iterations, re-orthonormalised between iterations). Shared by the SVD
// inits (PiSSA, MiLoRA, LoRA-XS, LoRA-GA, EVA), LoRA extraction and the GaLore/COAP projectors.
#include <Eigen/Core>
#include <algorithm>
#include <string>

#include "peft/core/error.hpp"
#include "peft/core/random.hpp"
#include "peft/core/tensor.hpp"
#include "peft/detail/decompositions.hpp"

namespace peft::detail {

// Thin orthonormal basis Q [m, k] of the columns of Y [m, k] (Householder QR).
template <class T>
matrix<T> orthonormal_basis(const matrix<T>& Y) {
  return thin_qr<T>(Y, false).Q;
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

// Randomized truncated SVD: Y = G·Ω (Ω Gaussian [n, r + oversample]), then `niter` power
// iterations Y ← G·(Gᵀ·Q) with QR in between, Q = orth(Y), SVD of the small Qᵀ·G. Reproducible
// from the rng.
template <class T>
svd_result<T> randomized_svd(matrix_cref<T> G, std::size_t r, std::size_t niter, rng& g,
                             std::size_t oversample = 8) {
  check_rank("randomized_svd", G.rows(), G.cols(), r);
  const Eigen::Index m = G.rows(), n = G.cols();
  const Eigen::Index k = std::min<Eigen::Index>(Eigen::Index(r + oversample), std::min(m, n));
  matrix<T> omega(n, k);
  for (Eigen::Index i = 0; i < omega.size(); ++i) omega.data()[i] = T(g.normal());
  matrix<T> Q = orthonormal_basis<T>(G * omega);
  for (std::size_t it = 0; it < niter; ++it) {
    matrix<T> Z = orthonormal_basis<T>(G.transpose() * Q);
    Q = orthonormal_basis<T>(G * Z);
  }
  const matrix<T> Bs = Q.transpose() * G;  // [k, n]
  const auto svd = thin_svd<T>(Bs, true, true);
  const Eigen::Index rr = Eigen::Index(r);
  return {Q * svd.U.leftCols(rr), svd.S.head(rr), svd.V.leftCols(rr)};
}

}  // namespace peft::detail
