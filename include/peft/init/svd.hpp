#pragma once
// SVD initialisations of the low-rank factors from the base weight W = U·Σ·Vᵀ [out, in]:
//
// PiSSA (Meng et al. 2024, arXiv:2404.02948), as Hugging Face PEFT's pissa_init:
//   Σ_r ← Σ_r / s,  A = √Σ_r·V_rᵀ [r, in],  B = U_r·√Σ_r [out, r],  W_res = W − s·B·A
// so s·B·A = U_r·Σ_r·V_rᵀ (the principal part of W) and W_res + s·B·A = W: the adapted layer
// equals the original at init. PEFT computes W_res from the factors actually stored, which keeps
// that identity exact even when the SVD is approximate (init_lora_weights="pissa_niter_N" uses
// torch.svd_lowrank(W, q=r, niter=N): randomized, no oversampling); we do the same.
// MiLoRA (Wang et al. 2024, arXiv:2406.09044): the same with the r SMALLEST singular triplets
// (the minor components), leaving the principal ones in W_res.
// LoRA-XS bases: A, B from the SVD of W for the LoRA-XS adapter (adapters/lora_xs.hpp), with a
// randomized option for large layers.
//
// All SVDs run in double whatever T is (PEFT uses float32); the factors are rounded to T first
// and W_res is computed from the rounded factors.
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <string>

#include "peft/adapters/lora_xs.hpp"
#include "peft/core/error.hpp"
#include "peft/core/tensor.hpp"
#include "peft/detail/gemm.hpp"
#include "peft/detail/svd.hpp"
#include "peft/init/policy.hpp"

namespace peft {

namespace init {
// Exact SVD (Eigen BDCSVD) or randomized range finder with power iterations (detail/svd.hpp).
enum class svd_kind { exact, randomized };
}  // namespace init

// Helpers shared by the init policies (svd, qr, gradient, activation, dct); prefixed `init_`.
namespace detail {

inline std::string init_shape_str(std::size_t a, std::size_t b) { return shape_str(shape_t{a, b}); }

// The base weight of an init target, checked against the factor shapes A [r, in], B [out, r].
template <class T>
tensor<T>& init_checked_base(init::init_target<T>& t, const char* policy) {
  tensor<T>& W = init::require_base(t, policy);
  const std::size_t r = t.A.shape()[0], in = t.A.shape()[1], out = t.B.shape()[0];
  if (shape_of(W) != shape_t{out, in} || t.B.shape()[1] != r)
    throw shape_error(std::string(policy) + ": base weight " + shape_str(W.shape()) + " for A " +
                      shape_str(t.A.shape()) + ", B " + shape_str(t.B.shape()));
  return W;
}

// Throws unless `need` singular triplets exist in an [out, in] matrix.
inline void init_check_rank(const char* policy, std::size_t need, std::size_t out, std::size_t in,
                            const char* what = "rank r") {
  if (need == 0 || need > std::min(out, in))
    throw value_error(std::string(policy) + ": " + what + " = " + std::to_string(need) +
                      " exceeds min(out, in) of a " + init_shape_str(out, in) + " weight");
}

template <class T>
matrix<double> init_to_double(const tensor<T>& W) {
  return as_matrix(W).template cast<double>();
}

// W ← W − s·B·A, computed in double from the factors as stored in T (so that the rounded
// residual plus the stored update reproduces W to one rounding per entry).
template <class T>
void init_subtract_scaled(tensor<T>& W, const tensor<T>& B, const tensor<T>& A, double s) {
  auto Wm = as_matrix(W);
  const matrix<double> Bd = as_matrix(B).template cast<double>();
  const matrix<double> Ad = as_matrix(A).template cast<double>();
  matrix<double> res = Wm.template cast<double>();
  gemm<double>(trans::n, trans::n, -s, Bd, Ad, 1.0, res);  // res −= s·B·A
  Wm = res.template cast<T>();
}

// Truncated SVD of M (r triplets), exact or randomized. Randomized only finds the largest ones.
// (A template although only double is used: non-template code here would instantiate the
// randomized SVD in every TU that includes an init header, used or not.)
template <class T>
svd_result<T> init_svd(const matrix<T>& M, std::size_t r, init::svd_kind kind, std::size_t niter,
                       std::size_t oversample, rng& g, bool largest = true) {
  if (kind == init::svd_kind::randomized) {
    if (!largest)
      throw value_error(
          "svd init: the randomized SVD finds the largest singular triplets only; "
          "use svd_kind::exact for the smallest");
    return randomized_svd<T>(M, r, niter, g, oversample);
  }
  return truncated_svd<T>(M, r, largest);
}

// PiSSA-style factors of an SVD: S ← S / s, A = √S·Vᵀ, B = U·√S (rounded to T).
template <class T>
void init_sqrt_split(const svd_result<double>& d, double s, tensor<T>& A, tensor<T>& B) {
  const Eigen::VectorXd sq = (d.S / s).cwiseSqrt();
  as_matrix(A) = (sq.asDiagonal() * d.V.transpose()).template cast<T>();
  as_matrix(B) = (d.U * sq.asDiagonal()).template cast<T>();
}

}  // namespace detail

namespace init {

// PEFT init_lora_weights="pissa" (kind = exact) or "pissa_niter_<niter>" (kind = randomized).
struct pissa {
  svd_kind kind = svd_kind::exact;
  // PEFT's docs: with 16 subspace iterations the fast SVD trains about as well as the exact one.
  std::size_t niter = 16;
  // torch.svd_lowrank(W, q=r): a sketch of exactly r columns. Raise it for a more accurate
  // randomized SVD at little cost.
  std::size_t oversample = 0;

  static pissa fast(std::size_t n_iter) { return {svd_kind::randomized, n_iter, 0}; }
  // The value of PEFT's LoraConfig.init_lora_weights for this policy.
  std::string peft_init_name() const {
    return kind == svd_kind::exact ? "pissa" : "pissa_niter_" + std::to_string(niter);
  }

  template <class T>
  void operator()(init_target<T>& t) const {
    tensor<T>& W = detail::init_checked_base(t, "pissa");
    const std::size_t r = t.A.shape()[0], out = W.shape()[0], in = W.shape()[1];
    detail::init_check_rank("pissa", r, out, in);
    const auto d = detail::init_svd(detail::init_to_double(W), r, kind, niter, oversample, t.g);
    detail::init_sqrt_split(d, t.scaling, t.A, t.B);
    detail::init_subtract_scaled(W, t.B, t.A, t.scaling);
  }
};

// MiLoRA: PiSSA's construction on the r smallest singular triplets (exact SVD).
struct milora {
  template <class T>
  void operator()(init_target<T>& t) const {
    tensor<T>& W = detail::init_checked_base(t, "milora");
    const std::size_t r = t.A.shape()[0], out = W.shape()[0], in = W.shape()[1];
    detail::init_check_rank("milora", r, out, in);
    const auto d =
        peft::detail::truncated_svd<double>(detail::init_to_double(W), r, /*largest=*/false);
    detail::init_sqrt_split(d, t.scaling, t.A, t.B);
    detail::init_subtract_scaled(W, t.B, t.A, t.scaling);
  }
};

// Bases for LoRA-XS (ΔW = s·B·R·A, A and B frozen) from the truncated SVD of W, exact or
// randomized; `sigma` says which factor carries Σ_r (lora_xs.hpp). W is left unchanged. Use as
// lora_xs<T>(in, out, cfg, W, init::lora_xs_bases{...}); lora_xs_svd there is the exact case.
struct lora_xs_bases {
  svd_sigma sigma = svd_sigma::a;
  svd_kind kind = svd_kind::randomized;
  std::size_t niter = 16;
  std::size_t oversample = 8;

  template <class T>
  void operator()(init_target<T>& t) const {
    tensor<T>& W = detail::init_checked_base(t, "lora_xs_bases");
    const std::size_t r = t.A.shape()[0], out = W.shape()[0], in = W.shape()[1];
    detail::init_check_rank("lora_xs_bases", r, out, in);
    const auto d = detail::init_svd(detail::init_to_double(W), r, kind, niter, oversample, t.g);
    const auto ri = Eigen::Index(r);
    const Eigen::VectorXd ones = Eigen::VectorXd::Ones(ri), sq = d.S.cwiseSqrt();
    const Eigen::VectorXd sa = sigma == svd_sigma::a   ? Eigen::VectorXd(d.S)
                               : sigma == svd_sigma::b ? ones
                                                       : sq;
    const Eigen::VectorXd sb = sigma == svd_sigma::b   ? Eigen::VectorXd(d.S)
                               : sigma == svd_sigma::a ? ones
                                                       : sq;
    as_matrix(t.A) = (sa.asDiagonal() * d.V.transpose()).template cast<T>();
    as_matrix(t.B) = (d.U * sb.asDiagonal()).template cast<T>();
  }
};

}  // namespace init
}  // namespace peft
