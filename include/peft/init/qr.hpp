#pragma once
// OLoRA (Büyükakyüz 2024, arXiv:2406.01775), as Hugging Face PEFT's olora_init
// (init_lora_weights="olora"): the reduced QR decomposition of the base weight
//   W = Q·R,  Q [out, k] orthonormal columns,  R [k, in] upper triangular,  k = min(out, in)
//   B = Q[:, :r],  A = R[:r, :],  W_res = W − s·B·A
// Unlike PiSSA, PEFT does not divide by the scaling s: B·A = Q_r·R_r and the residual removes
// s times it, so W_res + s·B·A = W (the adapted layer equals the original at init).
// The QR runs in double (Householder, the same sign convention as LAPACK's geqrf that
// torch.linalg.qr uses); PEFT runs it in float32.
#include <Eigen/Core>
#include "peft/detail/decompositions.hpp"

#include "peft/init/policy.hpp"
#include "peft/init/svd.hpp"

namespace peft::init {

struct olora {
  std::string peft_init_name() const { return "olora"; }

  template <class T>
  void operator()(init_target<T>& t) const {
    tensor<T>& W = detail::init_checked_base(t, "olora");
    const std::size_t r = t.A.shape()[0], out = W.shape()[0], in = W.shape()[1];
    detail::init_check_rank("olora", r, out, in);
    const Eigen::Index ri = Eigen::Index(r);
    const auto qr = peft::detail::thin_qr<double>(detail::init_to_double(W), true);
    // The first r columns of the thin Q and the first r rows of R.
    as_matrix(t.A) = qr.R.topRows(ri).template cast<T>();
    as_matrix(t.B) = qr.Q.leftCols(ri).template cast<T>();
    detail::init_subtract_scaled(W, t.B, t.A, t.scaling);
  }
};

}  // namespace peft::init
