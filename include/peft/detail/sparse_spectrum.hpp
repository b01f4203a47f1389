#pragma once
// Shared by the spectral adapters (FourierFT, DCT): n trainable coefficients c_k at fixed
// positions (u_k, v_k) of an out×in spectrum, and the pieces of the factored products that apply
// them without forming the dense out×in update. Both updates are separable,
//   ΔW[p, q] = Σ_k c_k · R(u_k, p) · C(v_k, q)      (a sum of such terms for FourierFT)
// so x·ΔWᵀ = ((x·C_Vᵀ) scattered by c into the distinct rows U)·R_U, where C_V holds one basis
// row per DISTINCT column frequency and R_U one per distinct row frequency: never more table
// rows than coefficients, nor than the dimension itself.
#include <algorithm>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "peft/core/error.hpp"
#include "peft/core/random.hpp"
#include "peft/core/tensor.hpp"

namespace peft::detail {

// n distinct values of [0, total), uniform without replacement, in draw order (the role of
// torch.randperm(total)[:n]; the bits differ from torch's generator). A partial Fisher–Yates
// over a virtual identity permutation: O(n) time and memory even when total = out·in is huge.
inline std::vector<std::uint64_t> sample_without_replacement(std::uint64_t total, std::size_t n,
                                                             rng& g) {
  if (n > total)
    throw value_error("sample_without_replacement: " + std::to_string(n) + " draws from " +
                      std::to_string(total));
  std::unordered_map<std::uint64_t, std::uint64_t> moved;  // only looked up, never iterated
  moved.reserve(2 * n);
  auto at = [&](std::uint64_t i) {
    auto it = moved.find(i);
    return it == moved.end() ? i : it->second;
  };
  std::vector<std::uint64_t> out(n);
  for (std::uint64_t i = 0; i < n; ++i) {
    const std::uint64_t j = i + g.uniform_int(total - i);
    const std::uint64_t vj = at(j);
    moved[j] = at(i);
    out[i] = vj;
  }
  return out;
}

struct spectral_positions {
  std::size_t rows = 0, cols = 0;               // spectrum shape [out, in]
  std::vector<std::size_t> u, v;                // coefficient k sits at (u[k], v[k])
  std::vector<std::size_t> row_freqs, col_freqs;  // distinct u and v values, ascending
  std::vector<Eigen::Index> iu, iv;             // u[k] = row_freqs[iu[k]], v[k] = col_freqs[iv[k]]
  std::size_t size() const { return u.size(); }
};

// Validates explicit positions (same count, in range, no duplicates) and groups them.
inline spectral_positions make_spectral_positions(const std::string& op, std::size_t rows,
                                                  std::size_t cols, std::vector<std::size_t> u,
                                                  std::vector<std::size_t> v) {
  if (u.size() != v.size())
    throw shape_error(op + ": " + std::to_string(u.size()) + " row indices but " +
                      std::to_string(v.size()) + " column indices");
  if (u.empty()) throw value_error(op + ": no spectral positions");
  std::vector<std::uint64_t> flat(u.size());
  for (std::size_t k = 0; k < u.size(); ++k) {
    if (u[k] >= rows || v[k] >= cols)
      throw value_error(op + ": position (" + std::to_string(u[k]) + "," + std::to_string(v[k]) +
                        ") outside the [" + std::to_string(rows) + "," + std::to_string(cols) +
                        "] spectrum");
    flat[k] = std::uint64_t(u[k]) * cols + v[k];
  }
  std::sort(flat.begin(), flat.end());
  if (std::adjacent_find(flat.begin(), flat.end()) != flat.end())
    throw value_error(op + ": duplicate spectral position");

  spectral_positions p;
  p.rows = rows;
  p.cols = cols;
  p.row_freqs = u;
  p.col_freqs = v;
  for (auto* f : {&p.row_freqs, &p.col_freqs}) {
    std::sort(f->begin(), f->end());
    f->erase(std::unique(f->begin(), f->end()), f->end());
  }
  p.iu.resize(u.size());
  p.iv.resize(v.size());
  for (std::size_t k = 0; k < u.size(); ++k) {
    p.iu[k] = std::lower_bound(p.row_freqs.begin(), p.row_freqs.end(), u[k]) - p.row_freqs.begin();
    p.iv[k] = std::lower_bound(p.col_freqs.begin(), p.col_freqs.end(), v[k]) - p.col_freqs.begin();
  }
  p.u = std::move(u);
  p.v = std::move(v);
  return p;
}

// n positions of a [rows, cols] spectrum drawn without replacement from `seed`, flat index f
// mapped to (f / cols, f % cols) as PEFT's FourierFT does.
inline spectral_positions random_spectral_positions(const std::string& op, std::size_t rows,
                                                    std::size_t cols, std::size_t n,
                                                    std::uint64_t seed) {
  rng g(seed);
  const auto flat = sample_without_replacement(std::uint64_t(rows) * cols, n, g);
  std::vector<std::size_t> u(n), v(n);
  for (std::size_t k = 0; k < n; ++k) {
    u[k] = std::size_t(flat[k] / cols);
    v[k] = std::size_t(flat[k] % cols);
  }
  return make_spectral_positions(op, rows, cols, std::move(u), std::move(v));
}

// Z.row(iu[k]) += sign·c[k]·P.row(iv[k]) for every k. Z [|U|, N], P [|V|, N] (activations kept
// transposed so these rows are contiguous).
template <class T>
void scatter_coefficients(matrix<T>& Z, const matrix<T>& P, const T* c, const spectral_positions& pos) {
  for (std::size_t k = 0; k < pos.size(); ++k) Z.row(pos.iu[k]) += c[k] * P.row(pos.iv[k]);
}

// Backward of scatter_coefficients for dL/dZ = s·G: dc[k] += s·<G.row(iu[k]), P.row(iv[k])>
// (when dc is non-null) and dP.row(iv[k]) += s·c[k]·G.row(iu[k]) (when dP is non-null).
template <class T>
void scatter_coefficients_backward(const matrix<T>& G, const matrix<T>& P, const T* c, T s,
                                   const spectral_positions& pos, T* dc, matrix<T>* dP) {
  for (std::size_t k = 0; k < pos.size(); ++k) {
    if (dc) dc[k] += s * G.row(pos.iu[k]).dot(P.row(pos.iv[k]));
    if (dP) dP->row(pos.iv[k]) += (s * c[k]) * G.row(pos.iu[k]);
  }
}

// The coefficients as a dense [|U|, |V|] matrix over the distinct frequencies (for merge/export).
template <class T>
matrix<T> coefficient_matrix(const T* c, const spectral_positions& pos) {
  matrix<T> M = matrix<T>::Zero(Eigen::Index(pos.row_freqs.size()), Eigen::Index(pos.col_freqs.size()));
  for (std::size_t k = 0; k < pos.size(); ++k) M(pos.iu[k], pos.iv[k]) = c[k];
  return M;
}

}  // namespace peft::detail
