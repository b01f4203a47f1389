#pragma once
// LoRA (Hu et al. 2021, arXiv:2106.09685):  h = W0·x + ΔW·x,  ΔW = s·B·A,  s = alpha / r
// rsLoRA (Kalajdzievska 2023, arXiv:2312.03732): s = alpha / sqrt(r).
// Shapes as Hugging Face PEFT: lora_A [r, in], lora_B [out, r]. Dropout acts on the adapter's
// input only. The fused path never forms B·A: it computes (x·Aᵀ)·Bᵀ.
#include <cmath>
#include <cstdint>
#include <string>

#include "peft/adapters/adapter.hpp"
#include "peft/core/random.hpp"
#include "peft/detail/gemm.hpp"
#include "peft/init/gaussian.hpp"
#include "peft/init/policy.hpp"

namespace peft {

struct lora_config {
  std::size_t r = 8;
  double alpha = 8;
  bool use_rslora = false;
  double dropout = 0.0;
  std::uint64_t seed = 0;  // init and dropout streams derive from it

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

template <class T>
class lora : public adapter<T> {
 public:
  // Init is a policy type (peft::init::kaiming_default, gaussian, pissa, olora, ...). Policies
  // that rewrite the base weight (PiSSA) need base_weight.
  template <class Init = init::kaiming_default>
    requires init::lora_init<Init, T>
  lora(std::size_t in, std::size_t out, const lora_config& cfg, const Init& init = {},
       tensor<T>* base_weight = nullptr)
      : adapter<T>(in, out), cfg_(cfg), drop_rng_(rng(cfg.seed).fork(1)) {
    cfg_.validate("lora");
    if (base_weight && shape_of(*base_weight) != shape_t{out, in})
      throw shape_error("lora: base weight " + shape_str(base_weight->shape()) +
                        " for in=" + std::to_string(in) + ", out=" + std::to_string(out));
    lora_A = this->register_parameter("lora_A.weight", zeros<T>({cfg_.r, in}));
    lora_B = this->register_parameter("lora_B.weight", zeros<T>({out, cfg_.r}));
    reinit(init, base_weight);
  }

  // Re-initialises A and B with a policy (seeded from the config's seed).
  template <class Init>
    requires init::lora_init<Init, T>
  void reinit(const Init& init, tensor<T>* base_weight = nullptr) {
    rng g = rng(cfg_.seed).fork(0);
    init::init_target<T> t{lora_A.value(), lora_B.value(), base_weight, scaling(), g};
    init(t);
  }

  std::string peft_type() const override { return "LORA"; }
  std::string method() const override { return cfg_.use_rslora ? "rslora" : "lora"; }
  double scaling() const override { return cfg_.scaling(); }
  std::size_t rank() const { return cfg_.r; }
  const lora_config& config() const { return cfg_; }
  // Dropout stream state (for checkpoints).
  rng& dropout_rng() { return drop_rng_; }

  // ctx.m[0] = x·Aᵀ (on the dropped input) [N, r]; ctx.m[1] = dropout mask scaled by 1/(1-p)
  // [N, in] (only when dropout is active).
  void forward_delta(matrix_cref<T> x, matrix_ref<T> y, adapter_ctx<T>& ctx,
                     bool training) override {
    using detail::trans;
    const auto A = as_matrix(lora_A.value());
    const auto B = as_matrix(lora_B.value());
    const T s = T(scaling());
    ctx.m.resize(2);
    if (training && cfg_.dropout > 0) {
      const T keep = T(1) / T(1 - cfg_.dropout);
      matrix<T>& mask = ctx.m[1];
      mask.resize(x.rows(), x.cols());
      T* mp = mask.data();
      for (Eigen::Index i = 0; i < mask.size(); ++i)
        mp[i] = drop_rng_.uniform() < cfg_.dropout ? T(0) : keep;
      const matrix<T> xd = (x.array() * mask.array()).matrix();
      detail::gemm_into<T>(ctx.m[0], trans::n, trans::t, xd, A, T(1), "lora.forward");
    } else {
      ctx.m[1].resize(0, 0);
      detail::gemm_into<T>(ctx.m[0], trans::n, trans::t, x, A, T(1), "lora.forward");
    }
    detail::gemm<T>(trans::n, trans::t, s, ctx.m[0], B, T(1), y, "lora.forward");
  }

  // dB = s·dyᵀ·(xA)   dA = s·(dy·B)ᵀ·x_d   dx += s·(dy·B)·A ⊙ mask
  void backward_delta(matrix_cref<T> dy, matrix_cref<T> x, const adapter_ctx<T>& ctx,
                      matrix_ref<T>* dx) override {
    using detail::trans;
    const auto A = as_matrix(lora_A.value());
    const auto B = as_matrix(lora_B.value());
    const T s = T(scaling());
    const matrix<T>& xa = ctx.m[0];
    const matrix<T>& mask = ctx.m[1];
    if (auto* gB = detail::grad_target(lora_B))
      detail::gemm<T>(trans::t, trans::n, s, dy, xa, T(1), as_matrix(*gB), "lora.backward");
    auto* gA = detail::grad_target(lora_A);
    if (!gA && !dx) return;
    const matrix<T> t =
        detail::gemm_new<T>(trans::n, trans::n, dy, B, s, "lora.backward");  // [N, r]
    if (gA) {
      if (mask.size()) {
        const matrix<T> xd = (x.array() * mask.array()).matrix();
        detail::gemm<T>(trans::t, trans::n, T(1), t, xd, T(1), as_matrix(*gA), "lora.backward");
      } else {
        detail::gemm<T>(trans::t, trans::n, T(1), t, x, T(1), as_matrix(*gA), "lora.backward");
      }
    }
    if (dx) {
      if (mask.size()) {
        const matrix<T> tA = detail::gemm_new<T>(trans::n, trans::n, t, A, T(1), "lora.backward");
        dx->array() += tA.array() * mask.array();
      } else {
        detail::gemm<T>(trans::n, trans::n, T(1), t, A, T(1), *dx, "lora.backward");
      }
    }
  }

  matrix<T> delta_weight(matrix_cref<T>) const override {
    return detail::gemm_new<T>(detail::trans::n, detail::trans::n, as_matrix(lora_B.value()),
                               as_matrix(lora_A.value()), T(scaling()), "lora.delta_weight");
  }

  bool factors(matrix<T>& Bf, matrix<T>& Af) const override {
    Bf = T(scaling()) * as_matrix(lora_B.value());
    Af = as_matrix(lora_A.value());
    return true;
  }

  variable<T> lora_A, lora_B;

 private:
  lora_config cfg_;
  rng drop_rng_;
};

}  // namespace peft
