#pragma once
// The orthonormal DCT-II basis, shared by the DCT adapter, the DCT init and the DCT optimizer
// projector:
//   D[k, j] = c_k · cos(π (2j + 1) k / (2n)),   c_0 = sqrt(1/n),  c_k = sqrt(2/n) (k > 0)
// D is orthogonal (Dᵀ·D = I): X = D·x is the orthonormal DCT-II of x (scipy's
// dct(x, type=2, norm="ortho")) and x = Dᵀ·X its inverse (the orthonormal DCT-III).
//
// Transforms are dense products with a cached D (O(n²) per vector). There is no O(n log n) path:
// every user here needs either a few rows of D (dct_basis_rows, O(r·n), no n×n matrix at all) or
// products with a whole block of vectors, where one GEMM beats n separate FFTs for the sizes of
// interest. Memory of a cached D: n² scalars (4096² doubles = 128 MiB), so adapters use
// dct_basis_rows instead of the full matrix.
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <numbers>
#include <string>
#include <vector>

#include "peft/core/error.hpp"
#include "peft/core/tensor.hpp"
#include "peft/detail/gemm.hpp"

namespace peft::detail {

// D[k, j] in double. The angle's integer part (2j+1)·k is reduced mod 4n first, so the argument
// of cos stays in [0, 2π) and entries are accurate to a few ulps for any n.
inline double dct_entry(std::size_t n, std::size_t k, std::size_t j) {
  const std::uint64_t period = 4 * std::uint64_t(n);
  const std::uint64_t m = ((2 * std::uint64_t(j) + 1) % period) * (std::uint64_t(k) % period) % period;
  const double c = k == 0 ? std::sqrt(1.0 / double(n)) : std::sqrt(2.0 / double(n));
  return c * std::cos(std::numbers::pi * double(m) / (2.0 * double(n)));
}

// Rows k_0, k_1, ... of the n-point orthonormal DCT-II matrix: [len(k), n]. Row i is the
// frequency-k_i cosine basis vector.
template <class T>
matrix<T> dct_basis_rows(std::size_t n, const std::vector<std::size_t>& k) {
  if (n == 0) throw value_error("dct_basis_rows: size n must be > 0");
  matrix<T> D(Eigen::Index(k.size()), Eigen::Index(n));
  for (std::size_t i = 0; i < k.size(); ++i) {
    if (k[i] >= n)
      throw value_error("dct_basis_rows: frequency " + std::to_string(k[i]) + " out of range for n = " +
                        std::to_string(n));
    for (std::size_t j = 0; j < n; ++j) D(Eigen::Index(i), Eigen::Index(j)) = T(dct_entry(n, k[i], j));
  }
  return D;
}

// The full [n, n] orthonormal DCT-II matrix (a fresh copy).
template <class T>
matrix<T> dct_matrix(std::size_t n) {
  if (n == 0) throw value_error("dct_matrix: size n must be > 0");
  matrix<T> D(static_cast<Eigen::Index>(n), static_cast<Eigen::Index>(n));
  for (std::size_t k = 0; k < n; ++k)
    for (std::size_t j = 0; j < n; ++j) D(Eigen::Index(k), Eigen::Index(j)) = T(dct_entry(n, k, j));
  return D;
}

// One shared, immutable D per (scalar type, size), built on first use; thread-safe. The cache
// keeps every size it has seen until dct_cache_clear<T>().
template <class T>
class dct_cache {
 public:
  static std::shared_ptr<const matrix<T>> get(std::size_t n) {
    if (n == 0) throw value_error("dct_matrix_cached: size n must be > 0");
    std::lock_guard<std::mutex> lock(mutex());
    auto& m = map();
    auto it = m.find(n);
    if (it != m.end()) return it->second;
    auto D = std::make_shared<const matrix<T>>(dct_matrix<T>(n));
    m.emplace(n, D);
    return D;
  }
  static void clear() {
    std::lock_guard<std::mutex> lock(mutex());
    map().clear();
  }

 private:
  static std::mutex& mutex() {
    static std::mutex mu;
    return mu;
  }
  static std::map<std::size_t, std::shared_ptr<const matrix<T>>>& map() {
    static std::map<std::size_t, std::shared_ptr<const matrix<T>>> m;
    return m;
  }
};

template <class T>
std::shared_ptr<const matrix<T>> dct_matrix_cached(std::size_t n) {
  return dct_cache<T>::get(n);
}
template <class T>
void dct_cache_clear() {
  dct_cache<T>::clear();
}

// ---- transforms (orthonormal; every inverse is the transpose) ----

// DCT-II of each column of X [n, m]: D·X.
template <class T>
matrix<T> dct_colwise(matrix_cref<T> X) {
  const auto D = dct_matrix_cached<T>(std::size_t(X.rows()));
  return gemm_new<T>(trans::n, trans::n, *D, X, T(1), "dct_colwise");
}
// Inverse (DCT-III) of each column of X [n, m]: Dᵀ·X.
template <class T>
matrix<T> idct_colwise(matrix_cref<T> X) {
  const auto D = dct_matrix_cached<T>(std::size_t(X.rows()));
  return gemm_new<T>(trans::t, trans::n, *D, X, T(1), "idct_colwise");
}
// DCT-II of each row of X [m, n]: X·Dᵀ.
template <class T>
matrix<T> dct_rowwise(matrix_cref<T> X) {
  const auto D = dct_matrix_cached<T>(std::size_t(X.cols()));
  return gemm_new<T>(trans::n, trans::t, X, *D, T(1), "dct_rowwise");
}
// Inverse of each row of X [m, n]: X·D.
template <class T>
matrix<T> idct_rowwise(matrix_cref<T> X) {
  const auto D = dct_matrix_cached<T>(std::size_t(X.cols()));
  return gemm_new<T>(trans::n, trans::n, X, *D, T(1), "idct_rowwise");
}
// 2-D DCT-II of X [m, n]: D_m·X·D_nᵀ.
template <class T>
matrix<T> dct_2d(matrix_cref<T> X) {
  const auto Dm = dct_matrix_cached<T>(std::size_t(X.rows()));
  const auto Dn = dct_matrix_cached<T>(std::size_t(X.cols()));
  const matrix<T> DX = gemm_new<T>(trans::n, trans::n, *Dm, X, T(1), "dct_2d");  // D_m·X
  return gemm_new<T>(trans::n, trans::t, DX, *Dn, T(1), "dct_2d");
}
// 2-D inverse: S [m, n] ↦ D_mᵀ·S·D_n.
template <class T>
matrix<T> idct_2d(matrix_cref<T> S) {
  const auto Dm = dct_matrix_cached<T>(std::size_t(S.rows()));
  const auto Dn = dct_matrix_cached<T>(std::size_t(S.cols()));
  const matrix<T> DS = gemm_new<T>(trans::t, trans::n, *Dm, S, T(1), "idct_2d");  // D_mᵀ·S
  return gemm_new<T>(trans::n, trans::n, DS, *Dn, T(1), "idct_2d");
}

}  // namespace peft::detail
