#pragma once
// FourierFT (Gao et al. 2024, arXiv:2405.03003): the update is the real part of the 2-D inverse
// DFT of a sparse spectrum F [out, in] holding n trainable coefficients c at fixed random
// positions (u_k, v_k):
//   ΔW = scaling · Re(IDFT2(F)),   IDFT2 normalised like torch.fft.ifft2(norm = ifft2_norm)
// so ΔW[p, q] = scaling · ν · Σ_k c_k cos(2π (u_k p / out + v_k q / in)), with ν = 1/(out·in)
// ("backward", PEFT's default), 1/sqrt(out·in) ("ortho") or 1 ("forward").
//
// Hugging Face PEFT: parameter "fourierft_spectrum" [n]; n_frequency 1000, scaling 150.0,
// random_loc_seed 777, init_weights False (spectrum ~ N(0, 1): NOT the identity at init;
// init_weights = true gives zeros); alpha > 0 sets n_frequency = int(alpha·in·out). PEFT keeps the
// positions out of the state dict and regenerates them from random_loc_seed with torch.randperm;
// we draw them with peft::rng (same seed, same positions on every build, but not torch's), so a
// PEFT checkpoint needs its positions passed explicitly (the constructor taking u, v).
// PEFT rejects n_frequency == out·in; we accept it (the full spectrum is well defined).
//
// Fused path: with cos(a+b) = cos a cos b − sin a sin b the update is a sum of two separable
// terms. Tables (built once, shared by every step):
//   C_V, S_V [|V|, in]   cos / sin(2π v q / in)  for the distinct column frequencies V
//   C_U, S_U [|U|, out]  cos / sin(2π u p / out) for the distinct row frequencies U
// forward   Pᵀ = C_V·xᵀ, Qᵀ = S_V·xᵀ;  Zc, Zs [|U|, N] ← scatter of c·Pᵀ, c·Qᵀ by (u, v);
//           y += s·(Zcᵀ·C_U − Zsᵀ·S_U),  s = scaling·ν
// Memory: 2·(|V|·in + |U|·out) table scalars (≤ 2n·(in+out), and ≤ 2·(in² + out²)), plus
// 2·|V|·N saved activations. Cost per row ≈ 4·(|V|·in + |U|·out) flops vs 2·in·out for a dense
// ΔW: the fused path wins only while |U|, |V| < in·out / (2·(in + out)), e.g. n ≲ 190 for
// 768×768; PEFT's n = 1000 at 768×768 costs ~3× the dense GEMM. It never forms ΔW.
#include <cmath>
#include <cstdint>
#include <numbers>
#include <string>
#include <vector>

#include "peft/adapters/adapter.hpp"
#include "peft/core/random.hpp"
#include "peft/detail/gemm.hpp"
#include "peft/detail/sparse_spectrum.hpp"

namespace peft {

// torch.fft's `norm` for the inverse transform.
enum class fft_norm { backward, ortho, forward };

struct fourierft_config {
  std::size_t n_frequency = 1000;
  double alpha = 0.0;  // > 0: n_frequency = int(alpha · in · out) (PEFT's `alpha`)
  double scaling = 150.0;
  std::uint64_t random_loc_seed = 777;  // spectral positions
  bool init_weights = false;            // false: spectrum ~ N(0, 1) (PEFT); true: zeros
  fft_norm ifft2_norm = fft_norm::backward;
  std::uint64_t seed = 0;  // spectrum init stream

  void validate(const std::string& op) const {
    if (!std::isfinite(scaling)) throw value_error(op + ": scaling is not finite");
    if (!(alpha >= 0.0 && alpha <= 1.0))
      throw value_error(op + ": alpha " + std::to_string(alpha) + " outside [0, 1]");
    if (alpha == 0.0 && n_frequency == 0) throw value_error(op + ": n_frequency must be > 0");
  }
  // Number of coefficients for a [out, in] layer; throws if it does not fit the spectrum.
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
  double norm_factor(std::size_t in, std::size_t out) const {
    const double n = double(in) * double(out);
    switch (ifft2_norm) {
      case fft_norm::backward: return 1.0 / n;
      case fft_norm::ortho: return 1.0 / std::sqrt(n);
      case fft_norm::forward: return 1.0;
    }
    return 1.0;
  }
};

namespace detail {
// cos / sin(2π f j / n) for the frequencies f (rows) and j = 0..n-1 (columns). The product f·j is
// reduced mod n in integers first, so the angle stays in [0, 2π).
template <class T>
void fourier_tables(std::size_t n, const std::vector<std::size_t>& freqs, matrix<T>& C, matrix<T>& S) {
  C.resize(Eigen::Index(freqs.size()), Eigen::Index(n));
  S.resize(C.rows(), C.cols());
  for (std::size_t i = 0; i < freqs.size(); ++i)
    for (std::size_t j = 0; j < n; ++j) {
      const std::uint64_t m = (std::uint64_t(freqs[i]) * j) % n;
      const double a = 2.0 * std::numbers::pi * double(m) / double(n);
      C(Eigen::Index(i), Eigen::Index(j)) = T(std::cos(a));
      S(Eigen::Index(i), Eigen::Index(j)) = T(std::sin(a));
    }
}
}  // namespace detail

template <class T>
class fourierft : public adapter<T> {
 public:
  // Positions drawn from cfg.random_loc_seed.
  fourierft(std::size_t in, std::size_t out, const fourierft_config& cfg)
      : fourierft(in, out, cfg, checked_positions(in, out, cfg)) {}

  // Explicit positions (e.g. PEFT's `indices` [2, n] rows u and v): coefficient k sits at
  // (u[k], v[k]) of the [out, in] spectrum. cfg.n_frequency / alpha are ignored.
  fourierft(std::size_t in, std::size_t out, const fourierft_config& cfg, std::vector<std::size_t> u,
            std::vector<std::size_t> v)
      : fourierft(in, out, cfg,
                  (cfg.validate("fourierft"),
                   detail::make_spectral_positions("fourierft", out, in, std::move(u), std::move(v)))) {}

  std::string peft_type() const override { return "FOURIERFT"; }
  std::string method() const override { return "fourierft"; }
  // PEFT's fourierft_scaling; the update is also multiplied by the ifft2 norm factor.
  double scaling() const override { return cfg_.scaling; }
  double effective_scaling() const { return cfg_.scaling * cfg_.norm_factor(this->in_features(), this->out_features()); }
  const fourierft_config& config() const { return cfg_; }
  std::size_t n_frequency() const { return pos_.size(); }
  const detail::spectral_positions& positions() const { return pos_; }
  // Scalars held by the trig tables (for memory accounting).
  std::size_t table_size() const { return std::size_t(Cv_.size() + Sv_.size() + Cu_.size() + Su_.size()); }

  // ctx.m[0] = Pᵀ = C_V·xᵀ [|V|, N], ctx.m[1] = Qᵀ = S_V·xᵀ [|V|, N].
  void forward_delta(matrix_cref<T> x, matrix_ref<T> y, adapter_ctx<T>& ctx, bool) override {
    const T* c = fourierft_spectrum.value().data();
    using detail::trans;
    const T s = T(effective_scaling());
    ctx.m.resize(2);
    detail::gemm_into<T>(ctx.m[0], trans::n, trans::t, Cv_, x, T(1), "fourierft.forward");
    detail::gemm_into<T>(ctx.m[1], trans::n, trans::t, Sv_, x, T(1), "fourierft.forward");
    matrix<T> Zc = matrix<T>::Zero(Cu_.rows(), x.rows());
    matrix<T> Zs = matrix<T>::Zero(Cu_.rows(), x.rows());
    detail::scatter_coefficients(Zc, ctx.m[0], c, pos_);
    detail::scatter_coefficients(Zs, ctx.m[1], c, pos_);
    // y += s·Zcᵀ·C_U − s·Zsᵀ·S_U (s rides in alpha)
    detail::gemm<T>(trans::t, trans::n, s, Zc, Cu_, T(1), y, "fourierft.forward");
    detail::gemm<T>(trans::t, trans::n, T(-s), Zs, Su_, T(1), y, "fourierft.forward");
  }

  // With Gc = C_U·dyᵀ, Gs = S_U·dyᵀ [|U|, N]: dL/dZc = s·Gc, dL/dZs = −s·Gs, so
  //   dc_k = s·(<Gc_u, P_v> − <Gs_u, Q_v>),  dPᵀ_v += s·c_k·Gc_u,  dQᵀ_v −= s·c_k·Gs_u,
  //   dx += dPᵀᵀ·C_V + dQᵀᵀ·S_V.
  void backward_delta(matrix_cref<T> dy, matrix_cref<T>, const adapter_ctx<T>& ctx,
                      matrix_ref<T>* dx) override {
    auto* gc = detail::grad_target(fourierft_spectrum);
    if (!gc && !dx) return;
    const T* c = fourierft_spectrum.value().data();
    using detail::trans;
    const T s = T(effective_scaling());
    const matrix<T> Gc =
        detail::gemm_new<T>(trans::n, trans::t, Cu_, dy, T(1), "fourierft.backward");
    const matrix<T> Gs =
        detail::gemm_new<T>(trans::n, trans::t, Su_, dy, T(1), "fourierft.backward");
    T* dc = gc ? gc->data() : nullptr;
    if (!dx) {
      detail::scatter_coefficients_backward<T>(Gc, ctx.m[0], c, s, pos_, dc, nullptr);
      detail::scatter_coefficients_backward<T>(Gs, ctx.m[1], c, T(-s), pos_, dc, nullptr);
      return;
    }
    matrix<T> dP = matrix<T>::Zero(Cv_.rows(), dy.rows());
    matrix<T> dQ = matrix<T>::Zero(Cv_.rows(), dy.rows());
    detail::scatter_coefficients_backward<T>(Gc, ctx.m[0], c, s, pos_, dc, &dP);
    detail::scatter_coefficients_backward<T>(Gs, ctx.m[1], c, T(-s), pos_, dc, &dQ);
    detail::gemm<T>(trans::t, trans::n, T(1), dP, Cv_, T(1), *dx, "fourierft.backward");
    detail::gemm<T>(trans::t, trans::n, T(1), dQ, Sv_, T(1), *dx, "fourierft.backward");
  }

  // ΔW = s·(C_Uᵀ·M·C_V − S_Uᵀ·M·S_V), M the coefficients on the distinct frequencies.
  matrix<T> delta_weight(matrix_cref<T>) const override {
    const matrix<T> M = T(effective_scaling()) *
                        detail::coefficient_matrix(fourierft_spectrum.value().data(), pos_);
    using detail::trans;
    const matrix<T> MC = detail::gemm_new<T>(trans::n, trans::n, M, Cv_);
    const matrix<T> MS = detail::gemm_new<T>(trans::n, trans::n, M, Sv_);
    matrix<T> d = detail::gemm_new<T>(trans::t, trans::n, Cu_, MC);
    detail::gemm<T>(trans::t, trans::n, T(-1), Su_, MS, T(1), d);
    return d;
  }

  // ΔW = [s·C_Uᵀ·M, −s·S_Uᵀ·M] · [C_V; S_V]: inner dimension 2·|V|.
  bool factors(matrix<T>& Bf, matrix<T>& Af) const override {
    const matrix<T> M = T(effective_scaling()) *
                        detail::coefficient_matrix(fourierft_spectrum.value().data(), pos_);
    Bf.resize(Eigen::Index(this->out_features()), 2 * Cv_.rows());
    using detail::trans;
    detail::gemm<T>(trans::t, trans::n, T(1), Cu_, M, T(0), Bf.leftCols(Cv_.rows()));
    detail::gemm<T>(trans::t, trans::n, T(-1), Su_, M, T(0), Bf.rightCols(Cv_.rows()));
    Af.resize(2 * Cv_.rows(), Eigen::Index(this->in_features()));
    Af.topRows(Cv_.rows()) = Cv_;
    Af.bottomRows(Cv_.rows()) = Sv_;
    return true;
  }

  variable<T> fourierft_spectrum;

 private:
  static detail::spectral_positions checked_positions(std::size_t in, std::size_t out,
                                                      const fourierft_config& cfg) {
    cfg.validate("fourierft");
    const std::size_t n = cfg.frequencies("fourierft", in, out);
    return detail::random_spectral_positions("fourierft", out, in, n, cfg.random_loc_seed);
  }

  fourierft(std::size_t in, std::size_t out, const fourierft_config& cfg, detail::spectral_positions pos)
      : adapter<T>(in, out), cfg_(cfg), pos_(std::move(pos)) {
    tensor<T> c = zeros<T>({pos_.size()});
    if (!cfg_.init_weights) {
      rng g = rng(cfg_.seed).fork(0);
      fill_normal(c, 0.0, 1.0, g);
    }
    fourierft_spectrum = this->register_parameter("fourierft_spectrum", std::move(c));
    detail::fourier_tables<T>(in, pos_.col_freqs, Cv_, Sv_);
    detail::fourier_tables<T>(out, pos_.row_freqs, Cu_, Su_);
  }

  fourierft_config cfg_;
  detail::spectral_positions pos_;
  matrix<T> Cv_, Sv_, Cu_, Su_;
};

}  // namespace peft
