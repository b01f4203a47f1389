#pragma once
// Mixture of LoRA experts (MoE-LoRA; e.g. MoLA / MixLoRA / "LoRAMoE"-style token routing):
//   h = W0·x + Σ_{e ∈ TopK(x)} g_e(x) · Δ_e(x),   g(x) = softmax(R·x) restricted to the top-k
//   experts (renormalised to sum to 1 by default), with optional Gaussian noise on the router
//   logits while training (noisy top-k gating, Shazeer et al. 2017).
// Experts are any additive adapters (LoRA, VeRA, ...). Tokens are grouped per expert: each
// expert runs once on the gathered rows it was routed (never a loop over single tokens).
// Load balancing (Switch Transformer, Fedus et al. 2021, eq. 4):
//   L_aux = E · Σ_e f_e · P_e,  f_e = fraction of routing slots sent to e, P_e = mean_i p_{i,e};
// f is not differentiable, the gradient flows through P. adapted_linear exposes it on the tape
// (last_aux_loss()).
#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "peft/adapters/adapter.hpp"
#include "peft/core/random.hpp"
#include "peft/detail/gemm.hpp"

namespace peft {

struct moe_config {
  std::size_t num_experts = 4;
  std::size_t top_k = 2;
  bool normalize_top_k = true;  // renormalise the selected gates to sum to 1
  double noise_std = 0.0;       // router logit noise while training (0 = off)
  std::uint64_t seed = 0;       // router init and noise

  void validate(const std::string& op) const {
    if (num_experts == 0) throw value_error(op + ": num_experts must be > 0");
    if (top_k == 0 || top_k > num_experts)
      throw value_error(op + ": top_k " + std::to_string(top_k) + " outside [1, num_experts=" +
                        std::to_string(num_experts) + "]");
    if (!(noise_std >= 0)) throw value_error(op + ": noise_std must be >= 0");
  }
};

template <class T>
class moe : public adapter<T> {
 public:
  // Experts must all be additive adapters of the same [out, in] as the layer. The router
  // ("router.weight" [E, in]) starts like nn.Linear (kaiming-uniform a = sqrt 5).
  moe(std::size_t in, std::size_t out, const moe_config& cfg,
      std::vector<std::shared_ptr<adapter<T>>> experts)
      : adapter<T>(in, out), cfg_(cfg), experts_(std::move(experts)),
        noise_rng_(rng(cfg.seed).fork(1)) {
    cfg_.validate("moe");
    if (experts_.size() != cfg_.num_experts)
      throw value_error("moe: " + std::to_string(experts_.size()) + " experts for num_experts=" +
                        std::to_string(cfg_.num_experts));
    for (std::size_t e = 0; e < experts_.size(); ++e) {
      auto& x = experts_[e];
      if (!x) throw value_error("moe: expert " + std::to_string(e) + " is null");
      if (x->in_features() != in || x->out_features() != out)
        throw shape_error("moe: expert " + std::to_string(e) + " is [" +
                          std::to_string(x->out_features()) + "," + std::to_string(x->in_features()) +
                          "], layer is [" + std::to_string(out) + "," + std::to_string(in) + "]");
      for (auto& [name, v] : x->named_parameters())
        this->register_parameter("experts." + std::to_string(e) + "." + name, v);
    }
    tensor<T> r = zeros<T>({cfg_.num_experts, in});
    rng g = rng(cfg_.seed).fork(0);
    fill_kaiming_uniform(r, std::sqrt(5.0), g);
    router = this->register_parameter("router.weight", std::move(r));
  }

  std::string peft_type() const override { return "MOE_LORA"; }
  std::string method() const override { return "moe"; }
  bool mergeable() const override { return false; }
  bool has_aux_loss() const override { return true; }
  const moe_config& config() const { return cfg_; }
  adapter<T>& expert(std::size_t e) { return *experts_.at(e); }
  std::size_t num_experts() const { return experts_.size(); }
  // The router-noise stream (training with noise_std > 0); checkpoints save and restore it.
  rng& noise_rng() { return noise_rng_; }

  // ctx.m[0] = router probabilities p [N, E]; ctx.m[1] = gates [N, k]; ctx.m[2+e] = Δ_e on the
  // rows routed to e [n_e, out]; ctx.idx[i] = the k experts of row i... stored flat as
  // ctx.idx[0] (N·k expert ids) and ctx.idx[1+e] = rows routed to e, ctx.v[0][e] = slot of e
  // in each of those rows' top-k list (parallel to idx[1+e]); ctx.sub[e] = expert contexts.
  void forward_delta(matrix_cref<T> x, matrix_ref<T> y, adapter_ctx<T>& ctx,
                     bool training) override {
    const Eigen::Index N = x.rows();
    const std::size_t E = experts_.size(), K = cfg_.top_k;
    const auto R = as_matrix(router.value());
    ctx.m.assign(2 + E, matrix<T>());
    ctx.idx.assign(1 + E, {});
    ctx.sub.assign(E, adapter_ctx<T>());
    ctx.v.assign(E, vector<T>());
    matrix<T>& p = ctx.m[0];
    // logits [N, E]
    detail::gemm_into<T>(p, detail::trans::n, detail::trans::t, x, R, T(1), "moe.forward");
    if (training && cfg_.noise_std > 0)
      for (Eigen::Index i = 0; i < p.size(); ++i) p.data()[i] += T(noise_rng_.normal(0, cfg_.noise_std));
    for (Eigen::Index i = 0; i < N; ++i) {  // row-wise stable softmax
      auto row = p.row(i);
      row.array() = (row.array() - row.maxCoeff()).exp();
      row /= row.sum();
    }
    // Top-k per row (ties broken by the lower expert index, deterministic).
    matrix<T>& gates = ctx.m[1];
    gates.resize(N, Eigen::Index(K));
    auto& sel = ctx.idx[0];
    sel.resize(std::size_t(N) * K);
    std::vector<std::size_t> order(E);
    std::vector<std::vector<T>> slot(E);
    for (Eigen::Index i = 0; i < N; ++i) {
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + Eigen::Index(K), order.end(),
                        [&](std::size_t a, std::size_t b) {
                          return p(i, a) > p(i, b) || (p(i, a) == p(i, b) && a < b);
                        });
      T s = 0;
      for (std::size_t j = 0; j < K; ++j) s += p(i, order[j]);
      for (std::size_t j = 0; j < K; ++j) {
        const std::size_t e = order[j];
        sel[std::size_t(i) * K + j] = e;
        gates(i, Eigen::Index(j)) = cfg_.normalize_top_k ? p(i, e) / s : p(i, e);
        ctx.idx[1 + e].push_back(std::size_t(i));
        slot[e].push_back(T(j));
      }
    }
    // Each expert once on its gathered rows; outputs scattered back scaled by the gate.
    for (std::size_t e = 0; e < E; ++e) {
      const auto& rows = ctx.idx[1 + e];
      ctx.v[e] = Eigen::Map<const vector<T>>(slot[e].data(), Eigen::Index(slot[e].size()));
      if (rows.empty()) continue;
      matrix<T> xe(Eigen::Index(rows.size()), x.cols());
      for (std::size_t r = 0; r < rows.size(); ++r) xe.row(Eigen::Index(r)) = x.row(Eigen::Index(rows[r]));
      matrix<T>& de = ctx.m[2 + e];
      de.setZero(Eigen::Index(rows.size()), y.cols());
      matrix_ref<T> de_ref(de);
      experts_[e]->forward_delta(xe, de_ref, ctx.sub[e], training);
      for (std::size_t r = 0; r < rows.size(); ++r)
        y.row(Eigen::Index(rows[r])) += gates(Eigen::Index(rows[r]), Eigen::Index(ctx.v[e][Eigen::Index(r)])) *
                                        de.row(Eigen::Index(r));
    }
  }

  void backward_delta(matrix_cref<T> dy, matrix_cref<T> x, const adapter_ctx<T>& ctx,
                      matrix_ref<T>* dx) override {
    const Eigen::Index N = x.rows();
    const std::size_t E = experts_.size(), K = cfg_.top_k;
    const matrix<T>& p = ctx.m[0];
    const matrix<T>& gates = ctx.m[1];
    matrix<T> dgate = matrix<T>::Zero(N, Eigen::Index(K));
    for (std::size_t e = 0; e < E; ++e) {
      const auto& rows = ctx.idx[1 + e];
      if (rows.empty()) continue;
      const matrix<T>& de = ctx.m[2 + e];
      const Eigen::Index n = Eigen::Index(rows.size());
      matrix<T> dde(n, dy.cols()), xe(n, x.cols());
      for (Eigen::Index r = 0; r < n; ++r) {
        const Eigen::Index i = Eigen::Index(rows[std::size_t(r)]);
        const Eigen::Index j = Eigen::Index(ctx.v[e][r]);
        dde.row(r) = gates(i, j) * dy.row(i);
        dgate(i, j) = dy.row(i).dot(de.row(r));
        xe.row(r) = x.row(i);
      }
      if (dx) {
        matrix<T> dxe = matrix<T>::Zero(n, x.cols());
        matrix_ref<T> dxe_ref(dxe);
        experts_[e]->backward_delta(dde, xe, ctx.sub[e], &dxe_ref);
        for (Eigen::Index r = 0; r < n; ++r) dx->row(Eigen::Index(rows[std::size_t(r)])) += dxe.row(r);
      } else {
        experts_[e]->backward_delta(dde, xe, ctx.sub[e], nullptr);
      }
    }
    // Gates -> router probabilities p (only selected entries), then through the softmax.
    matrix<T> dp = matrix<T>::Zero(N, Eigen::Index(E));
    const auto& sel = ctx.idx[0];
    for (Eigen::Index i = 0; i < N; ++i) {
      if (cfg_.normalize_top_k) {
        // g_j = p_j / S, S = Σ_sel p:  dp_j = dg_j / S − Σ_l dg_l p_l / S²
        T s = 0, c = 0;
        for (std::size_t j = 0; j < K; ++j) s += p(i, Eigen::Index(sel[std::size_t(i) * K + j]));
        for (std::size_t j = 0; j < K; ++j)
          c += dgate(i, Eigen::Index(j)) * p(i, Eigen::Index(sel[std::size_t(i) * K + j]));
        for (std::size_t j = 0; j < K; ++j)
          dp(i, Eigen::Index(sel[std::size_t(i) * K + j])) = dgate(i, Eigen::Index(j)) / s - c / (s * s);
      } else {
        for (std::size_t j = 0; j < K; ++j)
          dp(i, Eigen::Index(sel[std::size_t(i) * K + j])) = dgate(i, Eigen::Index(j));
      }
    }
    router_backward(dp, p, x, dx);
  }

  T aux_loss(const adapter_ctx<T>& ctx) const override {
    const vector<T> f = routed_fraction(ctx), P = ctx.m[0].colwise().mean().transpose();
    return T(experts_.size()) * f.dot(P);
  }
  // d L_aux / d p_{i,e} = E · f_e / N
  void aux_backward(T g, matrix_cref<T> x, const adapter_ctx<T>& ctx, matrix_ref<T>* dx) override {
    const matrix<T>& p = ctx.m[0];
    const vector<T> f = routed_fraction(ctx);
    const T c = g * T(experts_.size()) / T(p.rows());
    matrix<T> dp = (c * f).transpose().replicate(p.rows(), 1);
    router_backward(dp, p, x, dx);
  }

  matrix<T> delta_weight(matrix_cref<T>) const override {
    throw error("moe: the update depends on the input (token routing) and has no single ΔW");
  }

  variable<T> router;

 private:
  vector<T> routed_fraction(const adapter_ctx<T>& ctx) const {
    const std::size_t E = experts_.size();
    vector<T> f(static_cast<Eigen::Index>(E));
    const T slots = T(ctx.m[0].rows()) * T(cfg_.top_k);
    for (std::size_t e = 0; e < E; ++e) f[Eigen::Index(e)] = T(ctx.idx[1 + e].size()) / slots;
    return f;
  }
  // Softmax backward (dlogits = p ⊙ (dp − Σ dp⊙p)), then logits = x·Rᵀ.
  void router_backward(const matrix<T>& dp, const matrix<T>& p, matrix_cref<T> x, matrix_ref<T>* dx) {
    const vector<T> inner = (dp.array() * p.array()).rowwise().sum();
    const matrix<T> dlogits = (p.array() * (dp.colwise() - inner).array()).matrix();
    using detail::trans;
    if (auto* gR = detail::grad_target(router))
      detail::gemm<T>(trans::t, trans::n, T(1), dlogits, x, T(1), as_matrix(*gR),
                      "moe.router_backward");
    if (dx)
      detail::gemm<T>(trans::n, trans::n, T(1), dlogits, as_matrix(router.value()), T(1), *dx,
                      "moe.router_backward");
  }

  moe_config cfg_;
  std::vector<std::shared_ptr<adapter<T>>> experts_;
  rng noise_rng_;
};

}  // namespace peft
