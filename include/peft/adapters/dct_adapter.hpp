#pragma once
// DCT-domain adapter, the cosine counterpart of FourierFT (as in LoCA, Du et al. 2025,
// arXiv:2502.06820, and other "DCT-based fine-tuning"): n trainable coefficients c at fixed
// positions (u_k, v_k) of a sparse spectrum S [out, in], and
//   ΔW = scaling · IDCT2(S) = scaling · D_outᵀ·S·D_in
// with D_n the orthonormal DCT-II matrix (detail/dct.hpp), i.e.
//   ΔW[p, q] = scaling · Σ_k c_k · D_out[u_k, p] · D_in[v_k, q].
// The orthonormal basis makes the map c ↦ ΔW an isometry (‖ΔW‖_F = scaling·‖c‖), so no
// size-dependent normaliser is needed. Positions are seeded random (as FourierFT) or explicit
// (e.g. a low-frequency block, or LoCA's selected locations; LoCA's location learning itself is
// not implemented here).
//
// PEFT has no DCT method, so the names are ours: parameter "dct_spectrum" [n], peft_type
// "DCTFT". Defaults: n_frequency 1000, scaling 1.0, random_loc_seed 777, init_weights true
// (zeros, so the adapter starts as the identity; false gives N(0, 1)).
//
// Fused path: tables D_V = rows V of D_in [|V|, in] and D_U = rows U of D_out [|U|, out] for the
// distinct frequencies only. forward Pᵀ = D_V·xᵀ; Z [|U|, N] ← scatter of c·Pᵀ; y += s·Zᵀ·D_U.
// Memory |V|·in + |U|·out scalars plus |V|·N saved activations; cost per row ≈ 2·(|V|·in + |U|·out)
// flops vs 2·in·out for a dense ΔW (half of FourierFT's: one real term instead of two).
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "peft/adapters/adapter.hpp"
#include "peft/core/random.hpp"
#include "peft/detail/dct.hpp"
#include "peft/detail/gemm.hpp"
#include "peft/detail/sparse_spectrum.hpp"

namespace peft {

struct dct_config {
  std::size_t n_frequency = 1000;
  double alpha = 0.0;  // > 0: n_frequency = int(alpha · in · out)
  double scaling = 1.0;
  std::uint64_t random_loc_seed = 777;
  bool init_weights = true;  // true: zeros (identity at init); false: N(0, 1)
  std::uint64_t seed = 0;    // coefficient init stream

  void validate(const std::string& op) const {
    if (!std::isfinite(scaling)) throw value_error(op + ": scaling is not finite");
    if (!(alpha >= 0.0 && alpha <= 1.0))
      throw value_error(op + ": alpha " + std::to_string(alpha) + " outside [0, 1]");
    if (alpha == 0.0 && n_frequency == 0) throw value_error(op + ": n_frequency must be > 0");
  }
  std::size_t frequencies(const std::string& op, std::size_t in, std::size_t out) const {
    const std::size_t total = in * out;
    const std::size_t n = alpha > 0 ? std::size_t(alpha * double(in) * double(out)) : n_frequency;
    if (n == 0)
      throw value_error(op + ": n_frequency = int(alpha·in·out) is 0 for [" + std::to_string(out) +
                        "," + std::to_string(in) + "]");
    if (n > total)
      throw value_error(op + ": n_frequency " + std::to_string(n) + " exceeds out·in = " +
                        std::to_string(total) + " of the [" + std::to_string(out) + "," +
                        std::to_string(in) + "] spectrum");
    return n;
  }
};

template <class T>
class dct_adapter : public adapter<T> {
 public:
  dct_adapter(std::size_t in, std::size_t out, const dct_config& cfg)
      : dct_adapter(in, out, cfg, checked_positions(in, out, cfg)) {}

  // Explicit positions: coefficient k sits at (u[k], v[k]) of the [out, in] spectrum.
  dct_adapter(std::size_t in, std::size_t out, const dct_config& cfg, std::vector<std::size_t> u,
              std::vector<std::size_t> v)
      : dct_adapter(in, out, cfg,
                    (cfg.validate("dct_adapter"),
                     detail::make_spectral_positions("dct_adapter", out, in, std::move(u), std::move(v)))) {}

  std::string peft_type() const override { return "DCTFT"; }
  std::string method() const override { return "dct"; }
  double scaling() const override { return cfg_.scaling; }
  const dct_config& config() const { return cfg_; }
  std::size_t n_frequency() const { return pos_.size(); }
  const detail::spectral_positions& positions() const { return pos_; }
  std::size_t table_size() const { return std::size_t(Dv_.size() + Du_.size()); }

  // ctx.m[0] = Pᵀ = D_V·xᵀ [|V|, N].
  void forward_delta(matrix_cref<T> x, matrix_ref<T> y, adapter_ctx<T>& ctx, bool) override {
    using detail::trans;
    ctx.m.resize(1);
    detail::gemm_into<T>(ctx.m[0], trans::n, trans::t, Dv_, x, T(1), "dct_adapter.forward");
    matrix<T> Z = matrix<T>::Zero(Du_.rows(), x.rows());
    detail::scatter_coefficients(Z, ctx.m[0], dct_spectrum.value().data(), pos_);
    // y += s·Zᵀ·D_U (s rides in alpha)
    detail::gemm<T>(trans::t, trans::n, T(cfg_.scaling), Z, Du_, T(1), y, "dct_adapter.forward");
  }

  // G = D_U·dyᵀ [|U|, N]: dc_k = s·<G_u, P_v>, dPᵀ_v += s·c_k·G_u, dx += dPᵀᵀ·D_V.
  void backward_delta(matrix_cref<T> dy, matrix_cref<T>, const adapter_ctx<T>& ctx,
                      matrix_ref<T>* dx) override {
    auto* gc = detail::grad_target(dct_spectrum);
    if (!gc && !dx) return;
    using detail::trans;
    const T s = T(cfg_.scaling);
    const matrix<T> G =
        detail::gemm_new<T>(trans::n, trans::t, Du_, dy, T(1), "dct_adapter.backward");
    T* dc = gc ? gc->data() : nullptr;
    if (!dx) {
      detail::scatter_coefficients_backward<T>(G, ctx.m[0], dct_spectrum.value().data(), s, pos_, dc,
                                               nullptr);
      return;
    }
    matrix<T> dP = matrix<T>::Zero(Dv_.rows(), dy.rows());
    detail::scatter_coefficients_backward<T>(G, ctx.m[0], dct_spectrum.value().data(), s, pos_, dc, &dP);
    detail::gemm<T>(trans::t, trans::n, T(1), dP, Dv_, T(1), *dx, "dct_adapter.backward");
  }

  matrix<T> delta_weight(matrix_cref<T>) const override {
    using detail::trans;
    const matrix<T> M = detail::coefficient_matrix(dct_spectrum.value().data(), pos_);
    const matrix<T> MD = detail::gemm_new<T>(trans::n, trans::n, M, Dv_, T(cfg_.scaling));
    return detail::gemm_new<T>(trans::t, trans::n, Du_, MD);
  }

  // ΔW = (s·D_Uᵀ·M)·D_V: inner dimension |V|.
  bool factors(matrix<T>& Bf, matrix<T>& Af) const override {
    const matrix<T> M = detail::coefficient_matrix(dct_spectrum.value().data(), pos_);
    detail::gemm_into<T>(Bf, detail::trans::t, detail::trans::n, Du_, M, T(cfg_.scaling));
    Af = Dv_;
    return true;
  }

  variable<T> dct_spectrum;

 private:
  static detail::spectral_positions checked_positions(std::size_t in, std::size_t out, const dct_config& cfg) {
    cfg.validate("dct_adapter");
    const std::size_t n = cfg.frequencies("dct_adapter", in, out);
    return detail::random_spectral_positions("dct_adapter", out, in, n, cfg.random_loc_seed);
  }

  dct_adapter(std::size_t in, std::size_t out, const dct_config& cfg, detail::spectral_positions pos)
      : adapter<T>(in, out), cfg_(cfg), pos_(std::move(pos)),
        Dv_(detail::dct_basis_rows<T>(in, pos_.col_freqs)),
        Du_(detail::dct_basis_rows<T>(out, pos_.row_freqs)) {
    tensor<T> c = zeros<T>({pos_.size()});
    if (!cfg_.init_weights) {
      rng g = rng(cfg_.seed).fork(0);
      fill_normal(c, 0.0, 1.0, g);
    }
    dct_spectrum = this->register_parameter("dct_spectrum", std::move(c));
  }

  dct_config cfg_;
  detail::spectral_positions pos_;
  matrix<T> Dv_, Du_;
};

}  // namespace peft
