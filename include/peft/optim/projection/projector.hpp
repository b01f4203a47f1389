#pragma once
// The Projector concept shared by every low-rank projected optimizer (GaLore, Flora, COAP, DCT).
// A projector maps a full gradient G [m, n] of one weight to a low-rank representation and maps a
// low-rank update back. The optimizer (projected<Base, Projector>) never knows which one it has:
//
//   if (p.needs_refresh(step)) { p.refresh(G, step); p.transfer(m1, moment::first); ... }
//   low  = p.project(G, step);             // optimizer moments live in low's shape
//   full = p.project_back(update_low, step);
//
// Optional: `void project_back_add(matrix_cref<T> low, std::size_t step, matrix_ref<T> W, T alpha)`
// (W += alpha·project_back(low)). When a projector has it the optimizer uses it instead of
// project_back, so the back-projection is one GEMM accumulating into W with no temporary of
// W's size (every projector of the library has it).
//
// Shapes: for a left projection with basis P [m, r], low = Pᵀ·G [r, n] and back = P·low; for a
// right projection with Q [n, r], low = G·Q [m, r] and back = low·Qᵀ; two-sided: Pᵀ·G·Q [r, r].
#include <concepts>
#include <cstddef>
#include <utility>

#include "peft/core/tensor.hpp"

namespace peft::optim {

// Which optimizer moment transfer() receives: the first moment (a linear quantity, rotated into
// the new basis) or a second moment (elementwise squares; projectors choose how to carry it,
// e.g. keep it as is as GaLore does, or reset it).
enum class moment { first, second };

template <class P, class T>
concept projector = requires(P p, const P cp, matrix_cref<T> G, std::size_t step, matrix<T>& m) {
  // Whether the basis must be (re)computed before projecting the gradient of `step`
  // (always true before the first refresh).
  { cp.needs_refresh(step) } -> std::convertible_to<bool>;
  // Recomputes the basis from the current full gradient (keeps what transfer() needs).
  p.refresh(G, step);
  // Rewrites a moment expressed in the previous basis into the new one (no-op allowed).
  p.transfer(m, moment::first);
  { p.project(G, step) } -> std::convertible_to<matrix<T>>;
  { p.project_back(std::as_const(m), step) } -> std::convertible_to<matrix<T>>;
  // Shape of project()'s result for a [rows, cols] gradient.
  { cp.low_shape(std::size_t{}, std::size_t{}) } -> std::convertible_to<std::pair<std::size_t, std::size_t>>;
  // Bytes the projector keeps between steps (basis, indices, seeds).
  { cp.state_bytes() } -> std::convertible_to<std::size_t>;
};

}  // namespace peft::optim
