#pragma once
// The fused kernel shared by the adapters whose update is LoRA with an r×r matrix between the
// factors, Δ(x) = s·B·M·A·x_d (MoSLoRA's trainable mixer, LoRA-XS's R between frozen SVD bases):
// they differ only in names, trainability and initialisation. x_d = x ⊙ mask / (1-p) when
// dropout is active. Never forms B·M·A: (x·Aᵀ)·Mᵀ·Bᵀ.
#include "peft/adapters/adapter.hpp"
#include "peft/core/random.hpp"

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
    ctx.m[0].noalias() = (x.array() * mask.array()).matrix() * A.transpose();
  } else {
    ctx.m[1].resize(0, 0);
    ctx.m[0].noalias() = x * A.transpose();
  }
  ctx.m[2].noalias() = ctx.m[0] * M.transpose();
  y.noalias() += (s * ctx.m[2]) * B.transpose();
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
  if (gB) as_matrix(*gB).noalias() += s * (dy.transpose() * ctx.m[2]);
  if (!gM && !gA && !dx) return;
  const matrix<T> t = s * (dy * B);
  if (gM) as_matrix(*gM).noalias() += t.transpose() * xa;
  if (!gA && !dx) return;
  const matrix<T> u = t * M;
  if (gA) {
    if (mask.size())
      as_matrix(*gA).noalias() += u.transpose() * (x.array() * mask.array()).matrix();
    else
      as_matrix(*gA).noalias() += u.transpose() * x;
  }
  if (dx) {
    if (mask.size())
      dx->array() += (u * A).array() * mask.array();
    else
      dx->noalias() += u * A;
  }
}

}  // namespace peft::detail
