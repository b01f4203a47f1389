#pragma once
// Mixed-adapter batched forward of one Linear layer: every row of X names its adapter (an index
// into a list of layer_adapters, or -1 for the base alone), as in S-LoRA / Punica's SGMV:
//
//   1. Y = X·Wᵀ for ALL rows: one base GEMM, whatever the adapters;
//   2. rows are grouped by adapter (a stable counting sort, O(rows));
//   3. per group g of n_g rows: X_g = the group's rows of X (gathered into a workspace, or used
//      in place when the rows are already consecutive), U = X_g·Aᵀ [n_g, r], D = U·Bᵀ [n_g, out],
//      scattered back: Y_g += D. Two small GEMMs per adapter, never a loop of per-row GEMVs.
//      With several groups and threads, groups run in one OpenMP region (each group's GEMMs
//      single-threaded), as SGMV runs all adapters in one launch;
//   4. Y += b for all rows.
//
// DoRA: y = s ⊙ (x·Wᵀ + x·Aᵀ·Bᵀ) + b with s = m / ‖W + B·A‖_row precomputed in the layer_adapter
// (served_adapter.hpp). The base GEMM of step 1 leaves x·Wᵀ WITHOUT bias in Y, so step 3 makes
// Y_g = (Y_g + D) ⊙ s row by row and step 4 adds the bias after the scaling, exactly DoRA's
// formula; no second GEMM with a DoRA-specific weight is needed.
//
// VeRA: adapters built on the same vera_shared share A and B, so all their rows are taken
// together: U = X_v·A[:r_max]ᵀ (ONE GEMM for every VeRA row of the batch), each group's rows of U
// are scaled by its λ_d (zero-padded to r_max, so an adapter of smaller rank reads only its own
// r columns), V = U·B[:out, :r_max]ᵀ (ONE GEMM), and row j of V is scattered as V_j ⊙ λ_b of its
// adapter. The cost is independent of how many VeRA adapters the batch mixes.
#include <algorithm>
#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "peft/core/error.hpp"
#include "peft/core/tensor.hpp"
#include "peft/core/threads.hpp"
#include "peft/detail/gemm.hpp"
#include "peft/serve/served_adapter.hpp"

namespace peft::serve {

// Reusable buffers for mixed_linear_forward (they only grow). One per thread.
template <class T>
struct mixed_workspace {
  std::vector<T> x, u, d;
  std::vector<std::size_t> order, start, cursor, vrows;
  std::vector<const vera_shared<T>*> vsets;
  struct group {
    std::size_t slot, u, x, d;  // adapter slot; offsets of its U, gathered X and D slices
    bool in_place;
  };
  std::vector<group> groups;
};

namespace detail {
template <class T>
matrix_map<T> buffer(std::vector<T>& v, Eigen::Index rows, Eigen::Index cols) {
  const std::size_t n = std::size_t(rows * cols);
  if (v.size() < n) v.resize(n);
  return matrix_map<T>(v.data(), rows, cols);
}
inline bool consecutive(const std::size_t* rows, std::size_t n) {
  return n > 0 && rows[n - 1] - rows[0] + 1 == n;  // rows are strictly increasing
}
inline std::string dims(Eigen::Index r, Eigen::Index c) { return peft::detail::dims_str(r, c); }
template <class T>
void check_adapter(const layer_adapter<T>& a, std::size_t slot, Eigen::Index in, Eigen::Index out) {
  auto fail = [&](const std::string& why) {
    throw shape_error("serve::mixed_linear_forward: adapter " + std::to_string(slot) + " (" + kind_name(a.kind) +
                      ", in=" + std::to_string(a.in) + ", out=" + std::to_string(a.out) + ", r=" +
                      std::to_string(a.r) + ") on a layer with in=" + std::to_string(in) +
                      ", out=" + std::to_string(out) + why);
  };
  if (a.in != std::size_t(in) || a.out != std::size_t(out)) fail("");
  if (a.kind == adapter_kind::vera) {
    if (!a.vera || std::size_t(a.lambda_d.size()) != a.r || std::size_t(a.lambda_b.size()) != a.out)
      fail(": inconsistent VeRA parts");
  } else {
    if (std::size_t(a.A.rows()) != a.r || std::size_t(a.A.cols()) != a.in || std::size_t(a.B.rows()) != a.out ||
        std::size_t(a.B.cols()) != a.r)
      fail(": factors B " + dims(a.B.rows(), a.B.cols()) + " x A " + dims(a.A.rows(), a.A.cols()));
    if (a.kind == adapter_kind::dora && std::size_t(a.row_scale.size()) != a.out)
      fail(": DoRA row scale has " + std::to_string(a.row_scale.size()) + " entries");
  }
}
}  // namespace detail

// Y [N, out] = X [N, in]·Wᵀ (+ bias [out] when non-null) with row i adapted by
// adapters[ids[i]] (ids[i] = -1, or a null entry, means the base alone). Throws value_error naming
// the row and the id for an id outside [-1, adapters.size()), shape_error for mismatched shapes.
// Y must not alias X.
template <class T>
void mixed_linear_forward(matrix_cref<T> X, matrix_cref<T> W, const T* bias, std::span<const int> ids,
                          std::span<const layer_adapter<T>* const> adapters, matrix_ref<T> Y,
                          mixed_workspace<T>& ws) {
  using peft::detail::gemm;
  using peft::detail::trans;
  const Eigen::Index N = X.rows(), in = X.cols(), out = W.rows();
  if (W.cols() != in || Y.rows() != N || Y.cols() != out || ids.size() != std::size_t(N))
    throw shape_error("serve::mixed_linear_forward: X " + detail::dims(N, in) + ", W " +
                      detail::dims(W.rows(), W.cols()) + ", Y " + detail::dims(Y.rows(), Y.cols()) + ", " +
                      std::to_string(ids.size()) + " adapter ids");
  const std::size_t S = adapters.size();

  // Group rows by adapter: counting sort, stable (rows stay increasing within a group).
  ws.start.assign(S + 1, 0);
  for (Eigen::Index i = 0; i < N; ++i) {
    const int id = ids[std::size_t(i)];
    if (id < -1 || id >= int(S))
      throw value_error("serve::mixed_linear_forward: row " + std::to_string(i) + " has adapter id " +
                        std::to_string(id) + ", the batch has " + std::to_string(S) + " adapters (valid ids: -1.." +
                        std::to_string(int(S) - 1) + ")");
    if (id >= 0 && adapters[std::size_t(id)]) ++ws.start[std::size_t(id) + 1];
  }
  for (std::size_t k = 0; k < S; ++k) {
    if (ws.start[k + 1] && adapters[k]) detail::check_adapter(*adapters[k], k, in, out);
    ws.start[k + 1] += ws.start[k];
  }
  ws.order.resize(ws.start[S]);
  ws.cursor.assign(ws.start.begin(), ws.start.end() - 1);
  for (Eigen::Index i = 0; i < N; ++i) {
    const int id = ids[std::size_t(i)];
    if (id >= 0 && adapters[std::size_t(id)]) ws.order[ws.cursor[std::size_t(id)]++] = std::size_t(i);
  }

  // 1. the base GEMM, all rows, no bias yet (DoRA scales before the bias).
  gemm<T>(trans::n, trans::t, T(1), X, W, T(0), Y, "serve::mixed_linear_forward");

  // 3. low-rank and DoRA groups. Each group gets its own slices of the workspace (laid out
  // first, so groups are independent) and writes only its own rows of Y.
  ws.vsets.clear();
  ws.groups.clear();
  std::size_t u_len = 0, x_len = 0, d_len = 0;
  for (std::size_t k = 0; k < S; ++k) {
    const std::size_t n = ws.start[k + 1] - ws.start[k];
    if (n == 0) continue;
    const layer_adapter<T>& a = *adapters[k];
    if (a.kind == adapter_kind::vera) {
      if (std::find(ws.vsets.begin(), ws.vsets.end(), a.vera.get()) == ws.vsets.end())
        ws.vsets.push_back(a.vera.get());
      continue;
    }
    const bool in_place = detail::consecutive(ws.order.data() + ws.start[k], n);
    ws.groups.push_back({k, u_len, x_len, d_len, in_place});
    u_len += n * a.r;
    if (!in_place) {
      x_len += n * std::size_t(in);
      d_len += n * std::size_t(out);
    }
  }
  if (ws.u.size() < u_len) ws.u.resize(u_len);
  if (ws.x.size() < x_len) ws.x.resize(x_len);
  if (ws.d.size() < d_len) ws.d.resize(d_len);
  auto run_group = [&](std::size_t gi) {
    const auto& gr = ws.groups[gi];
    const layer_adapter<T>& a = *adapters[gr.slot];
    const std::size_t* rows = ws.order.data() + ws.start[gr.slot];
    const Eigen::Index ni = Eigen::Index(ws.start[gr.slot + 1] - ws.start[gr.slot]), r = Eigen::Index(a.r);
    matrix_map<T> U(ws.u.data() + gr.u, ni, r);
    if (gr.in_place) {
      // Consecutive rows (the usual "one adapter per request" layout): no gather, no scatter.
      const Eigen::Index f = Eigen::Index(rows[0]);
      gemm<T>(trans::n, trans::t, T(1), X.middleRows(f, ni), a.A, T(0), U);
      auto Yg = Y.middleRows(f, ni);
      gemm<T>(trans::n, trans::t, T(1), U, a.B, T(1), Yg);
      if (a.kind == adapter_kind::dora) Yg.array().rowwise() *= a.row_scale.transpose().array();
      return;
    }
    matrix_map<T> Xg(ws.x.data() + gr.x, ni, in);
    for (Eigen::Index j = 0; j < ni; ++j) Xg.row(j) = X.row(Eigen::Index(rows[j]));
    gemm<T>(trans::n, trans::t, T(1), Xg, a.A, T(0), U);
    matrix_map<T> D(ws.d.data() + gr.d, ni, out);
    gemm<T>(trans::n, trans::t, T(1), U, a.B, T(0), D);
    if (a.kind == adapter_kind::dora) {
      for (Eigen::Index j = 0; j < ni; ++j) {
        auto y = Y.row(Eigen::Index(rows[j]));
        y = (y + D.row(j)).cwiseProduct(a.row_scale.transpose());
      }
    } else {
      for (Eigen::Index j = 0; j < ni; ++j) Y.row(Eigen::Index(rows[j])) += D.row(j);
    }
  };
  // Many groups: one parallel region over groups, each group's two small GEMMs single-threaded
  // inside it (the CPU analogue of SGMV's single launch); splitting each small GEMM over threads
  // instead would pay a fork/join per adapter. One group: the GEMM backend threads it itself.
  const std::size_t n_groups = ws.groups.size();
#ifdef _OPENMP
  const int nt = num_threads();
  if (nt > 1 && n_groups > 1) {
    const peft::detail::serial_blas_guard one_blas_thread;
    const auto ng = std::ptrdiff_t(n_groups);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (std::ptrdiff_t gi = 0; gi < ng; ++gi) run_group(std::size_t(gi));
  } else
#endif
  {
    for (std::size_t gi = 0; gi < n_groups; ++gi) run_group(gi);
  }

  // VeRA: per shared projection pair, all its rows at once.
  for (const vera_shared<T>* sh : ws.vsets) {
    std::size_t rmax = 0;
    ws.vrows.clear();
    for (std::size_t k = 0; k < S; ++k)
      if (ws.start[k + 1] > ws.start[k] && adapters[k]->kind == adapter_kind::vera && adapters[k]->vera.get() == sh) {
        rmax = std::max(rmax, adapters[k]->r);
        ws.vrows.insert(ws.vrows.end(), ws.order.begin() + std::ptrdiff_t(ws.start[k]),
                        ws.order.begin() + std::ptrdiff_t(ws.start[k + 1]));
      }
    const Eigen::Index nv = Eigen::Index(ws.vrows.size()), rm = Eigen::Index(rmax);
    auto U = detail::buffer(ws.u, nv, rm);
    const auto A = sh->A_block(rmax, std::size_t(in));
    if (std::is_sorted(ws.vrows.begin(), ws.vrows.end()) && detail::consecutive(ws.vrows.data(), ws.vrows.size())) {
      gemm<T>(trans::n, trans::t, T(1), X.middleRows(Eigen::Index(ws.vrows[0]), nv), A, T(0), U);
    } else {
      auto Xg = detail::buffer(ws.x, nv, in);
      for (Eigen::Index j = 0; j < nv; ++j) Xg.row(j) = X.row(Eigen::Index(ws.vrows[std::size_t(j)]));
      gemm<T>(trans::n, trans::t, T(1), Xg, A, T(0), U);
    }
    // λ_d per group (zero beyond the adapter's own rank).
    Eigen::Index off = 0;
    for (std::size_t k = 0; k < S; ++k) {
      if (!(ws.start[k + 1] > ws.start[k] && adapters[k]->kind == adapter_kind::vera && adapters[k]->vera.get() == sh))
        continue;
      const layer_adapter<T>& a = *adapters[k];
      const Eigen::Index n = Eigen::Index(ws.start[k + 1] - ws.start[k]), r = Eigen::Index(a.r);
      auto blk = U.middleRows(off, n);
      blk.leftCols(r).array().rowwise() *= a.lambda_d.transpose().array();
      blk.rightCols(rm - r).setZero();
      off += n;
    }
    auto V = detail::buffer(ws.d, nv, out);
    gemm<T>(trans::n, trans::t, T(1), U, sh->B_block(std::size_t(out), rmax), T(0), V);
    off = 0;
    for (std::size_t k = 0; k < S; ++k) {
      if (!(ws.start[k + 1] > ws.start[k] && adapters[k]->kind == adapter_kind::vera && adapters[k]->vera.get() == sh))
        continue;
      const layer_adapter<T>& a = *adapters[k];
      const std::size_t* rows = ws.order.data() + ws.start[k];
      const Eigen::Index n = Eigen::Index(ws.start[k + 1] - ws.start[k]);
      for (Eigen::Index j = 0; j < n; ++j)
        Y.row(Eigen::Index(rows[j])) += V.row(off + j).cwiseProduct(a.lambda_b.transpose());
      off += n;
    }
  }

  // 4. bias, every row.
  if (bias) Y.rowwise() += const_vector_map<T>(bias, out).transpose();
}

// Same, with a temporary workspace.
template <class T>
void mixed_linear_forward(matrix_cref<T> X, matrix_cref<T> W, const T* bias, std::span<const int> ids,
                          std::span<const layer_adapter<T>* const> adapters, matrix_ref<T> Y) {
  mixed_workspace<T> ws;
  mixed_linear_forward<T>(X, W, bias, ids, adapters, Y, ws);
}

}  // namespace peft::serve
