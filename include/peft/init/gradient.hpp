#pragma once
// Gradient-based initialisations. Each takes G = ∂L/∂W [out, in], the full-weight gradient of
// THIS layer on a batch (collect.hpp: full_weight_gradients), in its constructor.
//
// LoRA-GA (Wang et al. 2024, arXiv:2407.05000; reference code Outsider565/LoRA-GA, PEFT's
// init_lora_weights="lora_ga" with LoraGAConfig(direction="ArB2r", scale="stable",
// stable_gamma=16)): G ≈ U·Σ·Vᵀ (its top 2r triplets); the factors take plain singular vectors,
//   ArB2r (default): A = V[:, :r]ᵀ,       B = U[:, r:2r]
//   A2rBr:           A = V[:, r:2r]ᵀ,     B = U[:, :r]
//   ArBr:            A = V[:, 1::2][:r]ᵀ, B = U[:, 0::2][:r]   (odd / even of the first 2r)
//   random:          a random split of the first 2r indices
// so that one step of LoRA moves W along the best rank-2r approximation of the full gradient.
// Stable scale: A, B ← A, B · out^{1/4} / √γ (the output scale then does not grow with width);
// "gd": A, B ← A, B / s; "unit": none; "weight_s": A, B ← · mean(√(Σ_W[:r] / s)).
// The residual W_res = W − s·B·A keeps the adapted layer equal to the original at init.
//
// LoRA-One (Zhang et al. 2025, arXiv:2502.01235; reference code YuanheZ/LoRA-One): the top-r
// SVD of −G = U·Σ·Vᵀ,
//   B = U_r·√Σ_r / √σ_1 / √γ,   A = √Σ_r·V_rᵀ / √σ_1 / √γ
// so s·B·A = s/(γ·σ_1) · (−G)_r: the adapter starts as one (normalised) best rank-r step of
// full gradient descent. The reference does NOT subtract it from W (W is left unchanged, the
// adapted layer differs from the original at init); subtract_from_weight = true does.
//
// LoRA-SB (Ponkshe et al. 2024, arXiv:2411.19557; reference code RaghavSinghal10/lora-sb), for
// the LoRA-XS form ΔW = s·B·R·A (A, B frozen, R [r, r] trained): approximate the first update of
// full fine-tuning, ΔW ≈ −η·sign(G) (one Adam step, as the reference's gradient processing) or
// −η·G (one SGD step), take its top-r SVD U·Σ·Vᵀ and set
//   B = U_r,   A = V_rᵀ,   R = Σ_r / s
// so s·B·R·A = (ΔW)_r, the best rank-r approximation of the update. W is left unchanged
// (the adapted layer starts as W + (ΔW)_r) unless subtract_from_weight.
//
// SVDs run in double. The randomized SVD (default for LoRA-GA and LoRA-One, as their references
// use torch.svd_lowrank) draws from the adapter's seeded rng.
#include <Eigen/Core>
#include <cmath>
#include <memory>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "peft/adapters/lora_xs.hpp"
#include "peft/detail/gemm.hpp"
#include "peft/init/policy.hpp"
#include "peft/init/svd.hpp"

namespace peft {

namespace detail {
// The gradient of a policy, checked against the target's factor shapes.
inline void init_check_gradient(const char* policy, const matrix<double>& G, std::size_t out,
                                std::size_t in) {
  if (std::size_t(G.rows()) != out || std::size_t(G.cols()) != in)
    throw shape_error(std::string(policy) + ": gradient [" + std::to_string(G.rows()) + "," +
                      std::to_string(G.cols()) + "] for a layer with weight " +
                      init_shape_str(out, in));
  if (!G.allFinite()) throw value_error(std::string(policy) + ": gradient has non-finite values");
}
template <class Derived>
std::shared_ptr<const matrix<double>> init_gradient_copy(const Eigen::MatrixBase<Derived>& G) {
  return std::make_shared<const matrix<double>>(G.template cast<double>());
}
template <class T>
std::shared_ptr<const matrix<double>> init_gradient_copy(const tensor<T>& G, const char* policy) {
  if (G.dimension() != 2)
    throw shape_error(std::string(policy) + ": gradient " + shape_str(G.shape()) + " is not 2-D");
  return init_gradient_copy(as_matrix(G));
}
}  // namespace detail

namespace init {

// ---------------------------------------------------------------- LoRA-GA

enum class lora_ga_direction { arb2r, a2rbr, arbr, random };
enum class lora_ga_scale { stable, gd, unit, weight_s };

struct lora_ga_options {
  lora_ga_direction direction = lora_ga_direction::arb2r;
  lora_ga_scale scale = lora_ga_scale::stable;
  double stable_gamma = 16;
  // Reference: torch.svd_lowrank(G, q=min(4r, min(G.shape)), niter=4).
  svd_kind kind = svd_kind::randomized;
  std::size_t niter = 4;

  void validate(const std::string& op) const {
    if (!(stable_gamma > 0) || !std::isfinite(stable_gamma))
      throw value_error(op + ": stable_gamma " + std::to_string(stable_gamma) + " must be > 0");
  }
};

class lora_ga {
 public:
  template <class Derived>
  explicit lora_ga(const Eigen::MatrixBase<Derived>& G, lora_ga_options opt = {})
      : G_(detail::init_gradient_copy(G)), opt_(opt) {
    opt_.validate("lora_ga");
  }
  template <class T>
  explicit lora_ga(const tensor<T>& G, lora_ga_options opt = {})
      : G_(detail::init_gradient_copy(G, "lora_ga")), opt_(opt) {
    opt_.validate("lora_ga");
  }

  std::string peft_init_name() const { return "lora_ga"; }
  const matrix<double>& gradient() const { return *G_; }
  const lora_ga_options& options() const { return opt_; }

  template <class T>
  void operator()(init_target<T>& t) const {
    tensor<T>& W = detail::init_checked_base(t, "lora_ga");
    const std::size_t r = t.A.shape()[0], out = W.shape()[0], in = W.shape()[1];
    detail::init_check_gradient("lora_ga", *G_, out, in);
    detail::init_check_rank("lora_ga", 2 * r, out, in, "2r");
    const std::size_t q = std::min(4 * r, std::min(out, in));
    const auto d = detail::init_svd(*G_, 2 * r, opt_.kind, opt_.niter, q - 2 * r, t.g);

    std::vector<Eigen::Index> ia(r), ib(r);
    for (std::size_t i = 0; i < r; ++i) {
      const auto I = Eigen::Index(i), R = Eigen::Index(r);
      switch (opt_.direction) {
        case lora_ga_direction::arb2r: ia[i] = I, ib[i] = R + I; break;
        case lora_ga_direction::a2rbr: ia[i] = R + I, ib[i] = I; break;
        case lora_ga_direction::arbr: ia[i] = 2 * I + 1, ib[i] = 2 * I; break;
        case lora_ga_direction::random: break;
      }
    }
    if (opt_.direction == lora_ga_direction::random) {
      // Fisher-Yates shuffle of 0..2r-1: A takes the first half, B the second.
      std::vector<Eigen::Index> perm(2 * r);
      std::iota(perm.begin(), perm.end(), Eigen::Index(0));
      for (std::size_t i = perm.size() - 1; i > 0; --i)
        std::swap(perm[i], perm[std::size_t(t.g.uniform_int(i + 1))]);
      std::copy(perm.begin(), perm.begin() + std::ptrdiff_t(r), ia.begin());
      std::copy(perm.begin() + std::ptrdiff_t(r), perm.end(), ib.begin());
    }
    matrix<double> A(static_cast<Eigen::Index>(r), static_cast<Eigen::Index>(in));
    matrix<double> B(static_cast<Eigen::Index>(out), static_cast<Eigen::Index>(r));
    for (std::size_t i = 0; i < r; ++i) {
      A.row(Eigen::Index(i)) = d.V.col(ia[i]).transpose();
      B.col(Eigen::Index(i)) = d.U.col(ib[i]);
    }

    double c = 1;
    switch (opt_.scale) {
      case lora_ga_scale::stable:
        c = std::pow(double(out), 0.25) / std::sqrt(opt_.stable_gamma);
        break;
      case lora_ga_scale::gd: c = 1.0 / t.scaling; break;
      case lora_ga_scale::unit: break;
      case lora_ga_scale::weight_s: {
        const std::size_t qw = std::min(4 * r, std::min(out, in));
        const auto dw =
            detail::init_svd(detail::init_to_double(W), r, opt_.kind, opt_.niter, qw - r, t.g);
        c = (dw.S / t.scaling).cwiseSqrt().mean();
        break;
      }
    }
    as_matrix(t.A) = (c * A).template cast<T>();
    as_matrix(t.B) = (c * B).template cast<T>();
    detail::init_subtract_scaled(W, t.B, t.A, t.scaling);
  }

 private:
  std::shared_ptr<const matrix<double>> G_;
  lora_ga_options opt_;
};

// ---------------------------------------------------------------- LoRA-One

struct lora_one_options {
  double stable_gamma = 16;  // reference conf/init/gradient.yaml
  bool subtract_from_weight = false;
  // Reference: torch.svd_lowrank(-G, q=512, niter=16).
  svd_kind kind = svd_kind::randomized;
  std::size_t niter = 16;
  std::size_t sketch = 512;  // q, capped at min(out, in)

  void validate(const std::string& op) const {
    if (!(stable_gamma > 0) || !std::isfinite(stable_gamma))
      throw value_error(op + ": stable_gamma " + std::to_string(stable_gamma) + " must be > 0");
  }
};

class lora_one {
 public:
  template <class Derived>
  explicit lora_one(const Eigen::MatrixBase<Derived>& G, lora_one_options opt = {})
      : G_(detail::init_gradient_copy(G)), opt_(opt) {
    opt_.validate("lora_one");
  }
  template <class T>
  explicit lora_one(const tensor<T>& G, lora_one_options opt = {})
      : G_(detail::init_gradient_copy(G, "lora_one")), opt_(opt) {
    opt_.validate("lora_one");
  }

  const matrix<double>& gradient() const { return *G_; }
  const lora_one_options& options() const { return opt_; }

  template <class T>
  void operator()(init_target<T>& t) const {
    const std::size_t r = t.A.shape()[0], out = t.B.shape()[0], in = t.A.shape()[1];
    tensor<T>* W = opt_.subtract_from_weight ? &detail::init_checked_base(t, "lora_one") : nullptr;
    detail::init_check_gradient("lora_one", *G_, out, in);
    detail::init_check_rank("lora_one", r, out, in);
    const std::size_t q = std::max(r, std::min(opt_.sketch, std::min(out, in)));
    const auto d = detail::init_svd(matrix<double>(-*G_), r, opt_.kind, opt_.niter, q - r, t.g);
    if (!(d.S[0] > 0)) throw value_error("lora_one: the gradient is zero");
    const double c = 1.0 / std::sqrt(d.S[0] * opt_.stable_gamma);
    const Eigen::VectorXd sq = c * d.S.cwiseSqrt();
    as_matrix(t.A) = (sq.asDiagonal() * d.V.transpose()).template cast<T>();
    as_matrix(t.B) = (d.U * sq.asDiagonal()).template cast<T>();
    if (W) detail::init_subtract_scaled(*W, t.B, t.A, t.scaling);
  }

 private:
  std::shared_ptr<const matrix<double>> G_;
  lora_one_options opt_;
};

// ---------------------------------------------------------------- LoRA-SB

// How the first update of full fine-tuning is approximated from its gradient.
enum class update_rule {
  adam,  // ΔW = −η·sign(G): Adam's first step (the reference's choice)
  sgd    // ΔW = −η·G
};

struct lora_sb_options {
  double lr = 1e-4;  // η: set it to the learning rate of the optimizer the update imitates
  update_rule rule = update_rule::adam;
  svd_kind kind = svd_kind::exact;
  std::size_t niter = 16;
  std::size_t oversample = 8;
  bool subtract_from_weight = false;

  void validate(const std::string& op) const {
    if (!(lr > 0) || !std::isfinite(lr))
      throw value_error(op + ": lr " + std::to_string(lr) + " must be > 0");
  }
};

template <class T>
struct lora_sb_factors {
  tensor<T> A;  // [r, in]  V_rᵀ
  tensor<T> R;  // [r, r]   Σ_r / s
  tensor<T> B;  // [out, r] U_r
};

// The LoRA-SB factors for a layer whose gradient is G [out, in] and whose adapter scale is s.
template <class T, class Derived>
lora_sb_factors<T> lora_sb_init(const Eigen::MatrixBase<Derived>& G, std::size_t r, double s,
                                const lora_sb_options& opt, rng& g) {
  opt.validate("lora_sb");
  const matrix<double> Gd = G.template cast<double>();
  const std::size_t out = std::size_t(Gd.rows()), in = std::size_t(Gd.cols());
  if (!Gd.allFinite()) throw value_error("lora_sb: gradient has non-finite values");
  detail::init_check_rank("lora_sb", r, out, in);
  matrix<double> dW = -opt.lr * Gd;
  if (opt.rule == update_rule::adam)  // −η·sign(G), sign(0) = 0 as torch.sign
    dW = -opt.lr * Gd.unaryExpr([](double v) { return double((v > 0) - (v < 0)); });
  const auto d = detail::init_svd(dW, r, opt.kind, opt.niter, opt.oversample, g);
  lora_sb_factors<T> f{tensor<T>::from_shape({r, in}), tensor<T>::from_shape({r, r}),
                       tensor<T>::from_shape({out, r})};
  as_matrix(f.A) = d.V.transpose().template cast<T>();
  as_matrix(f.B) = d.U.template cast<T>();
  as_matrix(f.R) = matrix<double>((d.S / s).asDiagonal()).template cast<T>();
  return f;
}

}  // namespace init

// A LoRA-SB adapter: LoRA-XS (B·R·A, only R trained) with A, B, R from init::lora_sb_init, the
// rng seeded by cfg.seed. W is the base weight: required when opt.subtract_from_weight (then
// W ← W − s·B·R·A), otherwise only its shape is checked.
template <class T, class Derived>
std::shared_ptr<lora_xs<T>> make_lora_sb(std::size_t in, std::size_t out, const lora_xs_config& cfg,
                                         const Eigen::MatrixBase<Derived>& G,
                                         tensor<T>* W = nullptr,
                                         const init::lora_sb_options& opt = {}) {
  cfg.validate("lora_sb");
  if (std::size_t(G.rows()) != out || std::size_t(G.cols()) != in)
    throw shape_error("lora_sb: gradient [" + std::to_string(G.rows()) + "," +
                      std::to_string(G.cols()) + "] for in=" + std::to_string(in) +
                      ", out=" + std::to_string(out));
  if (W && shape_of(*W) != shape_t{out, in})
    throw shape_error("lora_sb: base weight " + shape_str(W->shape()) +
                      " for in=" + std::to_string(in) + ", out=" + std::to_string(out));
  if (opt.subtract_from_weight && !W)
    throw value_error("lora_sb: subtract_from_weight needs the base weight W");
  rng g = rng(cfg.seed).fork(0);
  auto f = init::lora_sb_init<T>(G, cfg.r, cfg.scaling(), opt, g);
  // const: a non-const tensor would select lora_xs's (base weight, init policy) constructor.
  auto a = std::make_shared<lora_xs<T>>(in, out, cfg, std::as_const(f.A), std::as_const(f.B));
  a->lora_R.value() = f.R;
  if (opt.subtract_from_weight) {
    const tensor<T> BR = to_tensor(
        detail::gemm_new<T>(detail::trans::n, detail::trans::n, as_matrix(f.B), as_matrix(f.R)));
    detail::init_subtract_scaled(*W, BR, f.A, cfg.scaling());
  }
  return a;
}

}  // namespace peft
