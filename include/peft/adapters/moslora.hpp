#pragma once
// MoSLoRA, mixture-of-subspaces LoRA (Wu et al. 2024, arXiv:2406.11909): a trainable r×r mixer
// M between LoRA's factors,
//   h = W0·x + s·B·M·A·x,   s = alpha / r (alpha / sqrt(r) with rsLoRA)
// fusing the r rank-one subspaces of B·A; with M = I it is plain LoRA.
// Names follow the authors' PEFT fork: "lora_A.weight" [r, in], "lora_AB.weight" [r, r] (the
// mixer, an r→r Linear so y_mid = x_A·Mᵀ), "lora_B.weight" [out, r]. Init as the authors' code:
// A kaiming-uniform(a = sqrt 5) (any LoRA init policy works), B = 0 (identity at init),
// M kaiming-uniform(a = sqrt 5); the paper also reports an orthogonal M (mixer_init::orthogonal).
// Fused path: (x·Aᵀ)·Mᵀ·Bᵀ, never B·M·A. Dropout acts on the adapter's input, as in LoRA.
#include "peft/detail/decompositions.hpp"
#include <cmath>
#include <cstdint>
#include <string>

#include "peft/adapters/adapter.hpp"
#include "peft/core/random.hpp"
#include "peft/detail/gemm.hpp"
#include "peft/detail/mixed_low_rank.hpp"
#include "peft/init/gaussian.hpp"
#include "peft/init/policy.hpp"

namespace peft {

enum class moslora_mixer_init {
  kaiming_uniform,  // nn.init.kaiming_uniform_(a = sqrt 5): U(±1/sqrt(r)), the authors' default
  orthogonal,       // nn.init.orthogonal_: Q of a Gaussian matrix's QR, signs fixed by diag(R)
};

struct moslora_config {
  std::size_t r = 8;
  double alpha = 8;
  bool use_rslora = false;
  double dropout = 0.0;
  moslora_mixer_init mixer_init = moslora_mixer_init::kaiming_uniform;
  std::uint64_t seed = 0;  // init (A, B), dropout and mixer streams derive from it

  void validate(const std::string& op) const {
    if (r == 0) throw value_error(op + ": rank r must be > 0");
    if (!(dropout >= 0.0 && dropout < 1.0))
      throw value_error(op + ": dropout " + std::to_string(dropout) + " outside [0, 1)");
    if (!std::isfinite(alpha)) throw value_error(op + ": alpha is not finite");
  }
  double scaling() const {
    return use_rslora ? alpha / std::sqrt(double(r)) : alpha / double(r);
  }
};

namespace detail {
// torch.nn.init.orthogonal_ for a square [n, n] tensor: QR of a standard normal matrix, columns
// of Q multiplied by sign(diag(R)) so the result is Haar-distributed.
template <class T>
void fill_orthogonal(tensor<T>& t, rng& g) {
  const auto n = Eigen::Index(t.shape()[0]);
  matrix<double> G(n, Eigen::Index(t.size()) / n);
  for (Eigen::Index i = 0; i < G.size(); ++i) G.data()[i] = g.normal();
  auto [Q, R] = peft::detail::thin_qr<double>(G, true);
  for (Eigen::Index j = 0; j < Q.cols() && j < R.rows(); ++j)
    if (R(j, j) < 0) Q.col(j) *= -1.0;
  as_matrix(t) = Q.cast<T>();
}
}  // namespace detail

template <class T>
class moslora : public adapter<T> {
 public:
  template <class Init = init::kaiming_default>
    requires init::lora_init<Init, T>
  moslora(std::size_t in, std::size_t out, const moslora_config& cfg, const Init& init = {},
          tensor<T>* base_weight = nullptr)
      : adapter<T>(in, out), cfg_(cfg), drop_rng_((cfg.validate("moslora"), rng(cfg.seed).fork(1))) {
    if (base_weight && shape_of(*base_weight) != shape_t{out, in})
      throw shape_error("moslora: base weight " + shape_str(base_weight->shape()) +
                        " for in=" + std::to_string(in) + ", out=" + std::to_string(out));
    lora_A = this->register_parameter("lora_A.weight", zeros<T>({cfg_.r, in}));
    lora_AB = this->register_parameter("lora_AB.weight", zeros<T>({cfg_.r, cfg_.r}));
    lora_B = this->register_parameter("lora_B.weight", zeros<T>({out, cfg_.r}));
    reinit(init, base_weight);
  }

  // Re-initialises A and B with a policy and M per config.mixer_init (seeded from config.seed).
  template <class Init>
    requires init::lora_init<Init, T>
  void reinit(const Init& init, tensor<T>* base_weight = nullptr) {
    rng g = rng(cfg_.seed).fork(0);
    init::init_target<T> t{lora_A.value(), lora_B.value(), base_weight, scaling(), g};
    init(t);
    rng gm = rng(cfg_.seed).fork(2);
    if (cfg_.mixer_init == moslora_mixer_init::orthogonal)
      detail::fill_orthogonal(lora_AB.value(), gm);
    else
      fill_kaiming_uniform(lora_AB.value(), std::sqrt(5.0), gm);
  }

  std::string peft_type() const override { return "LORA"; }
  std::string method() const override { return "moslora"; }
  double scaling() const override { return cfg_.scaling(); }
  std::size_t rank() const { return cfg_.r; }
  const moslora_config& config() const { return cfg_; }
  rng& dropout_rng() { return drop_rng_; }

  // ctx slots as detail::mixed_low_rank_forward: m[0] = x_d·Aᵀ, m[1] = dropout mask, m[2] = x_d·Aᵀ·Mᵀ.
  void forward_delta(matrix_cref<T> x, matrix_ref<T> y, adapter_ctx<T>& ctx, bool training) override {
    detail::mixed_low_rank_forward<T>(x, as_matrix(lora_A.value()), as_matrix(lora_AB.value()),
                                      as_matrix(lora_B.value()), T(scaling()), cfg_.dropout,
                                      training, drop_rng_, y, ctx);
  }

  void backward_delta(matrix_cref<T> dy, matrix_cref<T> x, const adapter_ctx<T>& ctx,
                      matrix_ref<T>* dx) override {
    detail::mixed_low_rank_backward<T>(dy, x, as_matrix(lora_A.value()), as_matrix(lora_AB.value()),
                                       as_matrix(lora_B.value()), T(scaling()), ctx,
                                       detail::grad_target(lora_A), detail::grad_target(lora_AB),
                                       detail::grad_target(lora_B), dx);
  }

  matrix<T> delta_weight(matrix_cref<T>) const override {
    using detail::trans;
    const matrix<T> BM = detail::gemm_new<T>(trans::n, trans::n, as_matrix(lora_B.value()),
                                             as_matrix(lora_AB.value()), T(scaling()));  // [out, r]
    return detail::gemm_new<T>(trans::n, trans::n, BM, as_matrix(lora_A.value()));
  }

  bool factors(matrix<T>& Bf, matrix<T>& Af) const override {
    detail::gemm_into<T>(Bf, detail::trans::n, detail::trans::n, as_matrix(lora_B.value()),
                         as_matrix(lora_AB.value()), T(scaling()));
    Af = as_matrix(lora_A.value());
    return true;
  }

  variable<T> lora_A, lora_AB, lora_B;

 private:
  moslora_config cfg_;
  rng drop_rng_;
};

}  // namespace peft
