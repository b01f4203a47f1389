#pragma once
// The fused kernel shared by the adapters whose update is LoRA with an r×r matrix between the
// factors, Δ(x) = s·B·M·A·x_d (MoSLoRA's trainable mixer, LoRA-XS's R between frozen SVD bases):
// they differ only in names, trainability and initialisation. x_d = x ⊙ mask / (1-p) when
// dropout is active. Never forms B·M·A: (x·Aᵀ)·Mᵀ·Bᵀ.
#include "peft/adapters/adapter.hpp"
#include "peft/core/random.hpp"
#include "peft/detail/gemm.hpp"

namespace peft::detail {

// ctx.m[0] = x_d·Aᵀ [N, r]; ctx.m[1] = dropout mask scaled by 1/(1-p) [N, in] (empty when
// dropout is off); ctx.m[2] = x_d·Aᵀ·Mᵀ [N, r].  y += s·ctx.m[2]·Bᵀ.
template <class T>
void mixed_low_rank_forward(matrix_cref<T> x, matrix_cref<T> A, matrix_cref<T> M,
                            matrix_cref<T> B, T s, double dropout, bool training, rng& drop,
                            matrix_ref<T> y, adapter_ctx<T>& ctx) {
  ctx.m.resize(3);
  if (training && dropout > 0) {
    const T keep = T(1) / T(1 - dropout);
    matrix<T>& mask = ctx.m[1];
    mask.resize(x.rows(), x.cols());
    T* mp = mask.data();
    for (Eigen::Index i = 0; i < mask.size(); ++i) mp[i] = drop.uniform() < dropout ? T(0) : keep;
    const matrix<T> xd = (x.array() * mask.array()).matrix();
    gemm_into<T>(ctx.m[0], trans::n, trans::t, xd, A);
  } else {
    ctx.m[1].resize(0, 0);
    gemm_into<T>(ctx.m[0], trans::n, trans::t, x, A);
  }
  gemm_into<T>(ctx.m[2], trans::n, trans::t, ctx.m[0], M);
  gemm<T>(trans::n, trans::t, s, ctx.m[2], B, T(1), y);
}

// With t = s·dy·B [N, r] and u = t·M [N, r]:
//   dB = s·dyᵀ·(x_d Aᵀ Mᵀ),  dM = tᵀ·(x_d Aᵀ),  dA = uᵀ·x_d,  dx += (u·A) ⊙ mask.
// Null gradient targets (frozen parameters) are skipped, and so is any product only they need.
template <class T>
void mixed_low_rank_backward(matrix_cref<T> dy, matrix_cref<T> x, matrix_cref<T> A,
                             matrix_cref<T> M, matrix_cref<T> B, T s, const adapter_ctx<T>& ctx,
                             tensor<T>* gA, tensor<T>* gM, tensor<T>* gB, matrix_ref<T>* dx) {
  const matrix<T>& xa = ctx.m[0];
  const matrix<T>& mask = ctx.m[1];
  if (gB) gemm<T>(trans::t, trans::n, s, dy, ctx.m[2], T(1), as_matrix(*gB));
  if (!gM && !gA && !dx) return;
  const matrix<T> t = gemm_new<T>(trans::n, trans::n, dy, B, s);
  if (gM) gemm<T>(trans::t, trans::n, T(1), t, xa, T(1), as_matrix(*gM));
  if (!gA && !dx) return;
  const matrix<T> u = gemm_new<T>(trans::n, trans::n, t, M);
  if (gA) {
    if (mask.size()) {
      const matrix<T> xd = (x.array() * mask.array()).matrix();
      gemm<T>(trans::t, trans::n, T(1), u, xd, T(1), as_matrix(*gA));
    } else {
      gemm<T>(trans::t, trans::n, T(1), u, x, T(1), as_matrix(*gA));
    }
  }
  if (dx) {
    if (mask.size()) {
      const matrix<T> uA = gemm_new<T>(trans::n, trans::n, u, A);
      dx->array() += uA.array() * mask.array();
    } else {
      gemm<T>(trans::n, trans::n, T(1), u, A, T(1), *dx);
    }
  }
}

}  // namespace peft::detail
