#pragma once
// DoRA (Liu et al. 2024, arXiv:2402.09353), eq. (5):
//   W' = m · (W0 + ΔW) / ‖W0 + ΔW‖_c,    y = x·W'ᵀ + b
// with ‖·‖_c the norm of each output row of the [out, in] weight (PEFT: weight_norm over dim=1
// for Linear) and ΔW = Bf·Af from any factored additive adapter (LoRA: Bf = s·B, Af = A).
// PEFT saves DoRA as peft_type "LORA" with use_dora=true; the magnitude is "lora_magnitude_vector"
// [out], initialised to ‖W0 + ΔW‖_c so that the layer is the identity right after construction,
// whatever the inner adapter's init.
//
// Fused forward:  y = (m / n) ⊙ (x·Wᵀ + Δ(x)) + b,  n_i = ‖W_i + ΔW_i‖ clamped below at norm_eps.
// Δ(x) is the inner adapter's forward_delta, so its dropout acts on the low-rank branch only (the
// paper's formula). PEFT differs in one corner: with dropout active in training it also feeds the
// dropped input to its (m/n − 1)·x·Wᵀ correction; both agree in eval mode and for dropout = 0.
//
// n never needs the dense out×in ΔW:
//   n_i² = ‖W_i‖² + 2·(W·Afᵀ)_i·Bf_i + Bf_i·(Af·Afᵀ)·Bf_iᵀ        (cost out·in·r)
// ‖W_i‖² is recomputed on every call rather than cached: it is O(out·in), below the out·in·r of
// W·Afᵀ, and it stays right when W is trained, rewritten by an init (PiSSA) or replaced by merge.
//
// The norm is detached by default (paper §4.3, PEFT's weight_norm.detach()): no gradient flows
// through n, into the factors or into W (a trainable base gets dW = dzᵀ·x only).
// dora_config::detach_norm = false keeps it attached; see backward() for that gradient.
#include <Eigen/Core>
#include "peft/detail/decompositions.hpp"
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "peft/adapters/adapter.hpp"
#include "peft/adapters/lora.hpp"
#include "peft/detail/gemm.hpp"

namespace peft {

struct dora_config {
  bool detach_norm = true;  // paper §4.3 and PEFT; false = exact gradient through ‖W + ΔW‖_c
  double norm_eps = 1e-12;  // n is clamped to at least this (a zero row would divide by 0)

  void validate(const std::string& op) const {
    if (!(norm_eps > 0.0) || !std::isfinite(norm_eps))
      throw value_error(op + ": norm_eps " + std::to_string(norm_eps) + " must be finite and > 0");
  }
};

namespace detail {
// Row norms of W + Bf·Af from the factors (see the header comment), clamped below at eps.
template <class T>
vector<T> dora_row_norms(matrix_cref<T> W, matrix_cref<T> Bf, matrix_cref<T> Af, T eps) {
  matrix<T> t = gemm_new<T>(trans::n, trans::t, W, Af, T(2), "dora.row_norms");  // [out, r]
  const matrix<T> G = gemm_new<T>(trans::n, trans::t, Af, Af, T(1), "dora.row_norms");  // [r, r]
  gemm<T>(trans::n, trans::n, T(1), Bf, G, T(1), t, "dora.row_norms");
  vector<T> n = W.rowwise().squaredNorm() + t.cwiseProduct(Bf).rowwise().sum();
  // max(0, ·): the expansion can round below zero when W_i + ΔW_i ≈ 0.
  for (Eigen::Index i = 0; i < n.size(); ++i) n[i] = std::max(std::sqrt(std::max(n[i], T(0))), eps);
  return n;
}

inline std::string dims_str(Eigen::Index r, Eigen::Index c) {
  return shape_str(std::vector<Eigen::Index>{r, c});
}
}  // namespace detail

template <class T>
class dora : public adapter<T> {
 public:
  // inner: an additive adapter whose factors(Bf, Af) returns true (lora, ...). Its parameters
  // are registered on this module under their own names, sharing the variables.
  // W: the base weight [out, in] that the magnitude is initialised from (after any init that
  // rewrote it).
  dora(std::shared_ptr<adapter<T>> inner, matrix_cref<T> W, const dora_config& cfg = {})
      : adapter<T>(checked(inner).in_features(), checked(inner).out_features()),
        inner_(std::move(inner)),
        cfg_(cfg) {
    cfg_.validate("dora");
    matrix<T> Bf, Af;
    if (!inner_->factors(Bf, Af))
      throw value_error("dora: inner adapter '" + inner_->method() +
                        "' is not factored (factors() returned false); DoRA needs ΔW = B·A");
    check_factors(Bf, Af);
    const std::size_t in = this->in_features(), out = this->out_features();
    if (std::size_t(W.rows()) != out || std::size_t(W.cols()) != in)
      throw shape_error("dora: base weight " + detail::dims_str(W.rows(), W.cols()) +
                        " for adapter in=" + std::to_string(in) + ", out=" + std::to_string(out));
    for (auto& [name, v] : inner_->named_parameters()) {
      this->register_parameter(name, v);
      inner_params_.push_back(v);
    }
    // m = ‖W + ΔW‖_c with the very arithmetic forward() uses, so m / n == 1 exactly at init.
    tensor<T> m = tensor<T>::from_shape({out});
    as_vector(m) = detail::dora_row_norms<T>(W, Bf, Af, eps());
    lora_magnitude_vector = this->register_parameter("lora_magnitude_vector", std::move(m));
  }

  std::string peft_type() const override { return "LORA"; }
  std::string method() const override { return "dora"; }
  double scaling() const override { return inner_->scaling(); }
  const dora_config& config() const { return cfg_; }
  adapter<T>& inner() { return *inner_; }
  const adapter<T>& inner() const { return *inner_; }
  std::shared_ptr<adapter<T>> inner_ptr() const { return inner_; }

  // n = ‖W + ΔW‖_c [out] for the current parameters (PEFT's get_weight_norm), clamped at norm_eps.
  vector<T> weight_norm(matrix_cref<T> W) const {
    check_weight("dora::weight_norm", W);
    matrix<T> Bf, Af;
    get_factors(Bf, Af);
    return detail::dora_row_norms<T>(W, Bf, Af, eps());
  }

  // Slots appended after the inner adapter's own (which it reads from the front of ctx):
  //   ctx.m: [Bf, Af] (attached norm only, the factors this forward used), then z = x·Wᵀ + Δ(x)
  //          [N, out] last;   ctx.v: n [out], then m / n [out] last.
  void forward(matrix_cref<T> x, matrix_cref<T> W, const T* bias, matrix_ref<T> y,
               adapter_ctx<T>& ctx, bool training) override {
    detail::check_layer_shapes<T>("dora::forward", x, W, this->in_features(), this->out_features());
    ctx.m.clear();
    ctx.v.clear();
    ctx.training = training;
    ctx.delta_applied = this->enabled();
    detail::gemm<T>(detail::trans::n, detail::trans::t, T(1), x, W, T(0), y, "dora.forward");
    const auto b = [&] {
      if (bias) y.rowwise() += const_vector_map<T>(bias, W.rows()).transpose();
    };
    if (!this->enabled()) return b();

    inner_->forward_delta(x, y, ctx, training);  // y = z
    matrix<T> Bf, Af;
    get_factors(Bf, Af);
    vector<T> n = detail::dora_row_norms<T>(W, Bf, Af, eps());
    vector<T> scale = as_vector(lora_magnitude_vector.value()).cwiseQuotient(n);
    if (!cfg_.detach_norm) {
      ctx.m.push_back(std::move(Bf));
      ctx.m.push_back(std::move(Af));
    }
    ctx.m.emplace_back(y);
    y.array().rowwise() *= scale.transpose().array();
    ctx.v.push_back(std::move(n));
    ctx.v.push_back(std::move(scale));
    b();
  }

  // With s = m / n and z = x·Wᵀ + Δ(x):
  //   dz = dy·diag(s)     dm = Σ_rows(dy ⊙ z) / n     dx += dz·W + dΔ/dx(dz)     dW += dzᵀ·x
  // and the inner parameters get their grads from inner.backward_delta(dz).
  // Attached norm adds the path through n. With g = Σ_rows(dy ⊙ z) and V = W + Bf·Af:
  //   dL/dn_i = −m_i·g_i / n_i²,  dn_i/dV_i = V_i / n_i   ⇒  dL/dV = diag(c)·V,  c_i = −m_i g_i / n_i³
  // (c_i = 0 where n was clamped), i.e. dL/dBf = diag(c)·(W·Afᵀ + Bf·Af·Afᵀ), dL/dAf = Bfᵀ·diag(c)·V,
  // and dW += diag(c)·V when the base is trainable. See push_factor_grad for how that reaches the
  // inner adapter's own parameters.
  void backward(matrix_cref<T> dy, matrix_cref<T> x, matrix_cref<T> W, const adapter_ctx<T>& ctx,
                matrix_ref<T>* dx, matrix_ref<T>* dW) override {
    if (!ctx.delta_applied) return adapter<T>::backward(dy, x, W, ctx, dx, dW);
    const bool attached = !cfg_.detach_norm;
    if (ctx.v.size() < 2 || ctx.m.size() < (attached ? 3u : 1u))
      throw error("dora::backward: context was not filled by dora::forward");
    const matrix<T>& z = ctx.m.back();
    const vector<T>& n = ctx.v[ctx.v.size() - 2];
    const vector<T>& scale = ctx.v.back();
    if (dy.rows() != z.rows() || dy.cols() != z.cols())
      throw shape_error("dora::backward: dy " + detail::dims_str(dy.rows(), dy.cols()) +
                        " for output " + detail::dims_str(z.rows(), z.cols()));

    auto* gm = detail::grad_target(lora_magnitude_vector);
    const bool inner_trainable = std::any_of(inner_params_.begin(), inner_params_.end(),
                                             [](const variable<T>& v) { return v.requires_grad(); });
    const bool norm_grad = attached && (inner_trainable || dW);
    vector<T> g;
    if (gm || norm_grad) g = (dy.array() * z.array()).colwise().sum().transpose();
    if (gm) as_vector(*gm) += g.cwiseQuotient(n);

    using detail::trans;
    const matrix<T> dz = dy * scale.asDiagonal();
    if (dx) detail::gemm<T>(trans::n, trans::n, T(1), dz, W, T(1), *dx, "dora.backward");
    if (dW) detail::gemm<T>(trans::t, trans::n, T(1), dz, x, T(1), *dW, "dora.backward");
    inner_->backward_delta(dz, x, ctx, dx);
    if (!norm_grad) return;

    const matrix<T>& Bf = ctx.m[ctx.m.size() - 3];
    const matrix<T>& Af = ctx.m[ctx.m.size() - 2];
    const auto m = as_vector(lora_magnitude_vector.value());
    const T eps_ = eps();
    vector<T> c(n.size());
    for (Eigen::Index i = 0; i < n.size(); ++i)
      c[i] = n[i] > eps_ ? -m[i] * g[i] / (n[i] * n[i] * n[i]) : T(0);
    if (dW) {
      dW->noalias() += c.asDiagonal() * W;
      const matrix<T> cBf = c.asDiagonal() * Bf;  // [out, r]
      detail::gemm<T>(trans::n, trans::n, T(1), cBf, Af, T(1), *dW, "dora.backward");
    }
    if (inner_trainable) push_factor_grad(c, W, Bf, Af);
  }

  // DoRA is not additive; forward/backward above are its whole computation.
  void forward_delta(matrix_cref<T>, matrix_ref<T>, adapter_ctx<T>&, bool) override {
    throw error("dora::forward_delta: DoRA is not additive; call forward()");
  }
  void backward_delta(matrix_cref<T>, matrix_cref<T>, const adapter_ctx<T>&,
                      matrix_ref<T>*) override {
    throw error("dora::backward_delta: DoRA is not additive; call backward()");
  }

  // (m / n) ⊙ (W + ΔW) − W, rows scaled; n from the same factor formula as forward().
  matrix<T> delta_weight(matrix_cref<T> W) const override {
    check_weight("dora::delta_weight", W);
    matrix<T> Bf, Af;
    get_factors(Bf, Af);
    const vector<T> n = detail::dora_row_norms<T>(W, Bf, Af, eps());
    const vector<T> scale = as_vector(lora_magnitude_vector.value()).cwiseQuotient(n);
    matrix<T> V = W;
    detail::gemm<T>(detail::trans::n, detail::trans::n, T(1), Bf, Af, T(1), V, "dora.delta_weight");
    return scale.asDiagonal() * V - W;
  }
  bool delta_depends_on_weight() const override { return true; }
  // The merged update is a row scaling of W + ΔW: not low-rank.
  bool factors(matrix<T>&, matrix<T>&) const override { return false; }

  variable<T> lora_magnitude_vector;

 private:
  static adapter<T>& checked(const std::shared_ptr<adapter<T>>& a) {
    if (!a) throw value_error("dora: inner adapter is null");
    return *a;
  }
  T eps() const { return T(cfg_.norm_eps); }

  void check_weight(const char* op, matrix_cref<T> W) const {
    if (std::size_t(W.rows()) != this->out_features() || std::size_t(W.cols()) != this->in_features())
      throw shape_error(std::string(op) + ": W " + detail::dims_str(W.rows(), W.cols()) +
                        ", adapter expects [" + std::to_string(this->out_features()) + "," +
                        std::to_string(this->in_features()) + "]");
  }
  void check_factors(const matrix<T>& Bf, const matrix<T>& Af) const {
    if (std::size_t(Bf.rows()) != this->out_features() || std::size_t(Af.cols()) != this->in_features() ||
        Bf.cols() != Af.rows() || Bf.cols() == 0)
      throw shape_error("dora: inner factors Bf " + detail::dims_str(Bf.rows(), Bf.cols()) +
                        " x Af " + detail::dims_str(Af.rows(), Af.cols()) + " for in=" +
                        std::to_string(this->in_features()) + ", out=" +
                        std::to_string(this->out_features()));
  }
  void get_factors(matrix<T>& Bf, matrix<T>& Af) const {
    if (!inner_->factors(Bf, Af)) throw error("dora: inner adapter stopped being factored");
    check_factors(Bf, Af);
  }

  // Hands dL/dΔW = G = diag(c)·(W + Bf·Af) to the inner adapter's parameters through its own
  // backward_delta, which only accepts gradients of the form dy'ᵀ·x'. Because the inner's
  // parameters act through Bf and Af alone, its gradient depends on G only via G·Afᵀ and Bfᵀ·G,
  // so any G' with the same two products gives the same parameter grads. With orthonormal bases
  // Q_A ⊇ rows of Af and Q_B ⊇ columns of Bf (thin Householder QR, no rank threshold needed):
  //   G' = G·Q_A·Q_Aᵀ + Q_B·Q_Bᵀ·G·(I − Q_A·Q_Aᵀ)    (rank ≤ 2r, exact for both products)
  //      = dy'ᵀ·x'  with  x' = [Q_Aᵀ ; Q_Bᵀ·G·(I − Q_A·Q_Aᵀ)],  dy' = [(G·Q_A)ᵀ ; Q_Bᵀ].
  // Cost ≈ 2·out·in·r plus the inner adapter on ≤ 2r rows; G itself is never formed.
  void push_factor_grad(const vector<T>& c, matrix_cref<T> W, const matrix<T>& Bf,
                        const matrix<T>& Af) {
    const Eigen::Index in = Af.cols(), out = Bf.rows(), r = Af.rows();
    const Eigen::Index ka = std::min(r, in), kb = std::min(r, out);
    const matrix<T> QA = peft::detail::thin_qr<T>(Af.transpose(), false).Q;  // [in, ka]
    const matrix<T> QB = peft::detail::thin_qr<T>(Bf, false).Q;              // [out, kb]
    using detail::trans;
    // G·Q_A = diag(c)·(W·Q_A + Bf·(Af·Q_A))
    matrix<T> U = detail::gemm_new<T>(trans::n, trans::n, W, QA);
    const matrix<T> AfQA = detail::gemm_new<T>(trans::n, trans::n, Af, QA);  // [r, ka]
    detail::gemm<T>(trans::n, trans::n, T(1), Bf, AfQA, T(1), U);
    U = c.asDiagonal() * U;                             // [out, ka]
    const matrix<T> CB = c.asDiagonal() * QB;           // Q_Bᵀ·G = CBᵀ·W + (CBᵀ·Bf)·Af
    matrix<T> xs(ka + kb, in), dys(ka + kb, out);
    xs.topRows(ka) = QA.transpose();
    dys.topRows(ka) = U.transpose();
    auto x2 = xs.bottomRows(kb);
    detail::gemm<T>(trans::t, trans::n, T(1), CB, W, T(0), x2);
    const matrix<T> CBtBf = detail::gemm_new<T>(trans::t, trans::n, CB, Bf);  // [kb, r]
    detail::gemm<T>(trans::n, trans::n, T(1), CBtBf, Af, T(1), x2);
    const matrix<T> QBtU = detail::gemm_new<T>(trans::t, trans::n, QB, U);    // [kb, ka]
    detail::gemm<T>(trans::n, trans::t, T(-1), QBtU, QA, T(1), x2);
    dys.bottomRows(kb) = QB.transpose();
    // Eval-mode forward on the synthetic rows only to fill the inner's ctx (no dropout, no rng).
    adapter_ctx<T> sctx;
    matrix<T> ys = matrix<T>::Zero(ka + kb, out);
    inner_->forward_delta(xs, ys, sctx, false);
    inner_->backward_delta(dys, xs, sctx, nullptr);
  }

  std::shared_ptr<adapter<T>> inner_;
  std::vector<variable<T>> inner_params_;
  dora_config cfg_;
};

// DoRA over LoRA: builds lora(in, out, lora_cfg, init, &W) (inits such as PiSSA may rewrite W)
// and wraps it; the magnitude is taken from W after the init.
template <class T, class Init = init::kaiming_default>
  requires init::lora_init<Init, T>
std::shared_ptr<dora<T>> dora_lora(std::size_t in, std::size_t out, const lora_config& lora_cfg,
                                   tensor<T>& W, const Init& init = {},
                                   const dora_config& dora_cfg = {}) {
  auto inner = std::make_shared<lora<T>>(in, out, lora_cfg, init, &W);
  return std::make_shared<dora<T>>(std::move(inner), as_matrix(W), dora_cfg);
}

}  // namespace peft
