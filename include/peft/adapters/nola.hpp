#pragma once
// NOLA (Koohpayegani et al. 2024, arXiv:2310.02556):  h = W0·x + s·B·A·x  with
//   A = Σ_i α_i A_i  (k_A bases A_i [r, in]),   B = Σ_j β_j B_j  (k_B bases B_j [out, r])
// The bases are frozen random matrices regenerated from a seed (never saved); only the mixture
// coefficients nola_alpha [k_A] and nola_beta [k_B] are trained. PEFT has no NOLA, so the names
// are ours; peft_type() is "NOLA". s = alpha / r as LoRA (the reference code scales the same way).
//
// Bases: each one from its own stream rng(seed).fork(0 for A / 1 for B).fork(i), so basis i is
// addressable without generating the others and cached and regenerated bases are bit-identical.
// A_i ~ kaiming-uniform(a = sqrt 5) on [r, in] (bound 1/sqrt(in)), B_j likewise on [out, r]
// (bound 1/sqrt(r)).
// Init: β = 0, so Δ = 0 at init (the reference code also starts B at 0). α_i = 1/sqrt(k_A), so A
// starts with the per-entry variance of LoRA's default A (one kaiming-uniform matrix) — the
// reference code keeps a frozen kaiming A0 plus zero coefficients; folding that into the bases
// keeps the paper's pure linear combination.
//
// Memory (nola_storage):
//   cached     (default) all bases kept: (k_A·r·in + k_B·out·r)·sizeof(T) per layer — e.g.
//              k = 512, r = 8, a 4096×4096 float layer: 134 MB. Fast: combining is one GEMV.
//   regenerate nothing kept; forward regenerates every basis to combine A and B, backward again
//              to get dα_i = ⟨dA, A_i⟩, dβ_j = ⟨dB, B_j⟩. Scratch r·max(in, out).
// Either way the fused path forms the small A [r, in] and B [out, r] (k·r·(in+out) work) and then
// runs LoRA's (x·Aᵀ)·Bᵀ; it never forms ΔW.
#include <cmath>
#include <cstdint>
#include <string>

#include "peft/adapters/adapter.hpp"
#include "peft/core/random.hpp"
#include "peft/detail/gemm.hpp"

namespace peft {

enum class nola_storage { cached, regenerate };

struct nola_config {
  std::size_t r = 8;              // the reference GPT-2 runs: rank 8, alpha 8, 512 bases
  std::size_t num_basis_A = 512;  // k_A: length of nola_alpha
  std::size_t num_basis_B = 512;  // k_B: length of nola_beta
  double alpha = 8;
  double dropout = 0.0;
  std::uint64_t seed = 0;         // bases, dropout
  nola_storage storage = nola_storage::cached;

  void validate(const std::string& op) const {
    if (r == 0) throw value_error(op + ": rank r must be > 0");
    if (num_basis_A == 0) throw value_error(op + ": num_basis_A must be > 0");
    if (num_basis_B == 0) throw value_error(op + ": num_basis_B must be > 0");
    if (!(dropout >= 0.0 && dropout < 1.0))
      throw value_error(op + ": dropout " + std::to_string(dropout) + " outside [0, 1)");
    if (!std::isfinite(alpha)) throw value_error(op + ": alpha is not finite");
  }
  double scaling() const { return alpha / double(r); }
};

template <class T>
class nola : public adapter<T> {
 public:
  nola(std::size_t in, std::size_t out, const nola_config& cfg = {})
      : adapter<T>(in, out), cfg_(cfg), drop_rng_(rng(cfg.seed).fork(2)) {
    cfg_.validate("nola");
    nola_alpha = this->register_parameter(
        "nola_alpha", full<T>({cfg_.num_basis_A}, T(1.0 / std::sqrt(double(cfg_.num_basis_A)))));
    nola_beta = this->register_parameter("nola_beta", zeros<T>({cfg_.num_basis_B}));
    if (cfg_.storage == nola_storage::cached) {
      const std::size_t na = cfg_.r * in, nb = out * cfg_.r;
      bases_A_ = tensor<T>::from_shape({cfg_.num_basis_A, na});
      bases_B_ = tensor<T>::from_shape({cfg_.num_basis_B, nb});
      for (std::size_t i = 0; i < cfg_.num_basis_A; ++i) fill_basis_A(i, bases_A_.data() + i * na);
      for (std::size_t j = 0; j < cfg_.num_basis_B; ++j) fill_basis_B(j, bases_B_.data() + j * nb);
    }
  }

  std::string peft_type() const override { return "NOLA"; }
  std::string method() const override { return "nola"; }
  double scaling() const override { return cfg_.scaling(); }
  std::size_t rank() const { return cfg_.r; }
  const nola_config& config() const { return cfg_; }
  rng& dropout_rng() { return drop_rng_; }
  // Bytes held by cached bases (0 when regenerating).
  std::size_t basis_bytes() const {
    return cached() ? (bases_A_.size() + bases_B_.size()) * sizeof(T) : 0;
  }

  // Basis A_i [r, in] and B_j [out, r], regenerated from the seed.
  tensor<T> basis_A(std::size_t i) const {
    check_index("basis_A", i, cfg_.num_basis_A);
    tensor<T> t = tensor<T>::from_shape({cfg_.r, this->in_features()});
    fill_basis_A(i, t.data());
    return t;
  }
  tensor<T> basis_B(std::size_t j) const {
    check_index("basis_B", j, cfg_.num_basis_B);
    tensor<T> t = tensor<T>::from_shape({this->out_features(), cfg_.r});
    fill_basis_B(j, t.data());
    return t;
  }

  // A = Σ α_i A_i [r, in] and B = Σ β_j B_j [out, r] for the current coefficients.
  matrix<T> combined_A() const {
    matrix<T> A(Eigen::Index(cfg_.r), Eigen::Index(this->in_features()));
    combine(as_vector(nola_alpha.value()), bases_A_, cfg_.num_basis_A, true, A);
    return A;
  }
  matrix<T> combined_B() const {
    matrix<T> B(Eigen::Index(this->out_features()), Eigen::Index(cfg_.r));
    combine(as_vector(nola_beta.value()), bases_B_, cfg_.num_basis_B, false, B);
    return B;
  }

  // ctx.m[0] = x·Aᵀ (dropped input) [N, r]; m[1] = dropout mask / (1-p) [N, in] or empty;
  // m[2] = A [r, in]; m[3] = B [out, r] (combined once per forward, reused by backward).
  void forward_delta(matrix_cref<T> x, matrix_ref<T> y, adapter_ctx<T>& ctx,
                     bool training) override {
    using detail::trans;
    ctx.m.resize(4);
    ctx.m[2] = combined_A();
    ctx.m[3] = combined_B();
    const matrix<T>& A = ctx.m[2];
    const matrix<T>& B = ctx.m[3];
    if (training && cfg_.dropout > 0) {
      const T keep = T(1) / T(1 - cfg_.dropout);
      matrix<T>& mask = ctx.m[1];
      mask.resize(x.rows(), x.cols());
      T* mp = mask.data();
      for (Eigen::Index i = 0; i < mask.size(); ++i)
        mp[i] = drop_rng_.uniform() < cfg_.dropout ? T(0) : keep;
      const matrix<T> xd = (x.array() * mask.array()).matrix();
      detail::gemm_into<T>(ctx.m[0], trans::n, trans::t, xd, A, T(1), "nola.forward");
    } else {
      ctx.m[1].resize(0, 0);
      detail::gemm_into<T>(ctx.m[0], trans::n, trans::t, x, A, T(1), "nola.forward");
    }
    detail::gemm<T>(trans::n, trans::t, T(scaling()), ctx.m[0], B, T(1), y, "nola.forward");
  }

  // dB = s·dyᵀ·xa, dA = s·(dy·B)ᵀ·x_d (as LoRA), then dβ_j = ⟨dB, B_j⟩, dα_i = ⟨dA, A_i⟩;
  // dx += s·(dy·B)·A ⊙ mask.
  void backward_delta(matrix_cref<T> dy, matrix_cref<T> x, const adapter_ctx<T>& ctx,
                      matrix_ref<T>* dx) override {
    using detail::trans;
    const T s = T(scaling());
    const matrix<T>& xa = ctx.m[0];
    const matrix<T>& mask = ctx.m[1];
    const matrix<T>& A = ctx.m[2];
    const matrix<T>& B = ctx.m[3];
    if (auto* gb = detail::grad_target(nola_beta)) {
      const matrix<T> dB = detail::gemm_new<T>(trans::t, trans::n, dy, xa, s, "nola.backward");
      project(dB, bases_B_, cfg_.num_basis_B, false, as_vector(*gb));
    }
    auto* ga = detail::grad_target(nola_alpha);
    if (!ga && !dx) return;
    const matrix<T> t =
        detail::gemm_new<T>(trans::n, trans::n, dy, B, s, "nola.backward");  // [N, r]
    if (ga) {
      matrix<T> dA;
      if (mask.size()) {
        const matrix<T> xd = (x.array() * mask.array()).matrix();
        detail::gemm_into<T>(dA, trans::t, trans::n, t, xd, T(1), "nola.backward");
      } else {
        detail::gemm_into<T>(dA, trans::t, trans::n, t, x, T(1), "nola.backward");
      }
      project(dA, bases_A_, cfg_.num_basis_A, true, as_vector(*ga));
    }
    if (dx) {
      if (mask.size()) {
        const matrix<T> tA = detail::gemm_new<T>(trans::n, trans::n, t, A, T(1), "nola.backward");
        dx->array() += tA.array() * mask.array();
      } else {
        detail::gemm<T>(trans::n, trans::n, T(1), t, A, T(1), *dx, "nola.backward");
      }
    }
  }

  matrix<T> delta_weight(matrix_cref<T>) const override {
    return detail::gemm_new<T>(detail::trans::n, detail::trans::n, combined_B(), combined_A(),
                               T(scaling()));
  }

  bool factors(matrix<T>& Bf, matrix<T>& Af) const override {
    Bf = T(scaling()) * combined_B();
    Af = combined_A();
    return true;
  }

  variable<T> nola_alpha, nola_beta;

 private:
  bool cached() const { return cfg_.storage == nola_storage::cached; }
  static void check_index(const char* op, std::size_t i, std::size_t k) {
    if (i >= k)
      throw value_error(std::string("nola::") + op + ": index " + std::to_string(i) +
                        " out of range for " + std::to_string(k) + " bases");
  }
  // Uniform(±bound) from the basis' own stream, row-major.
  static void fill_uniform_stream(T* p, std::size_t n, double bound, rng g) {
    for (std::size_t e = 0; e < n; ++e) p[e] = T(g.uniform(-bound, bound));
  }
  void fill_basis_A(std::size_t i, T* p) const {  // [r, in], fan_in = in
    fill_uniform_stream(p, cfg_.r * this->in_features(),
                        1.0 / std::sqrt(double(this->in_features())), rng(cfg_.seed).fork(0).fork(i));
  }
  void fill_basis_B(std::size_t j, T* p) const {  // [out, r], fan_in = r
    fill_uniform_stream(p, this->out_features() * cfg_.r, 1.0 / std::sqrt(double(cfg_.r)),
                        rng(cfg_.seed).fork(1).fork(j));
  }

  // out = Σ_i c_i · basis_i (bases of A when is_A, else of B).
  void combine(const_vector_map<T> c, const tensor<T>& cache, std::size_t k, bool is_A,
               matrix<T>& out) const {
    auto o = Eigen::Map<vector<T>>(out.data(), out.size());
    if (cached()) {
      // c and o seen as [k, 1] and [n, 1] row-major matrices (no copy).
      detail::gemm<T>(detail::trans::t, detail::trans::n, T(1), as_matrix(cache),
                      const_matrix_map<T>(c.data(), c.size(), 1), T(0),
                      matrix_map<T>(out.data(), out.size(), 1), "nola.combine");  // [n, k]·[k]
      return;
    }
    o.setZero();
    vector<T> scratch(out.size());
    for (std::size_t i = 0; i < k; ++i) {
      if (is_A)
        fill_basis_A(i, scratch.data());
      else
        fill_basis_B(i, scratch.data());
      o += c[Eigen::Index(i)] * scratch;
    }
  }
  // g_i += ⟨d, basis_i⟩ for every basis.
  void project(const matrix<T>& d, const tensor<T>& cache, std::size_t k, bool is_A,
               vector_map<T> g) const {
    const auto dv = Eigen::Map<const vector<T>>(d.data(), d.size());
    if (cached()) {
      detail::gemm<T>(detail::trans::n, detail::trans::n, T(1), as_matrix(cache),
                      const_matrix_map<T>(d.data(), d.size(), 1), T(1),
                      matrix_map<T>(g.data(), g.size(), 1), "nola.project");  // [k, n]·[n]
      return;
    }
    vector<T> scratch(d.size());
    for (std::size_t i = 0; i < k; ++i) {
      if (is_A)
        fill_basis_A(i, scratch.data());
      else
        fill_basis_B(i, scratch.data());
      g[Eigen::Index(i)] += scratch.dot(dv);
    }
  }

  nola_config cfg_;
  rng drop_rng_;
  tensor<T> bases_A_, bases_B_;  // [k_A, r·in], [k_B, out·r]; unused when regenerating
};

}  // namespace peft
