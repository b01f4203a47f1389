#pragma once
// RandLoRA (Albert et al. 2025, arXiv:2502.00987): a full-rank update from n = ceil(min(in,out)/r)
// frozen random low-rank bases with trained diagonal scalings,
//   ΔW = s · Σ_{n=1..N} B_n · Λ_n · A · Γ_n      (for in ≤ out; the transpose for in > out)
// A [r, min_dim] is one random basis shared by every term, B_n [max_dim, r] are random, Λ_n =
// diag(randlora_lambda[:, n]) (r×r) and Γ_n = diag(randlora_gamma[n, :]) (min_dim×min_dim) are
// trained, s = randlora_alpha / r. As in PEFT the scaled side A always acts on the smaller
// dimension: for in > out the layer computes ΔW = s·(Σ_n B_n Λ_n A Γ_n)ᵀ with B_n over `in`.
//
// Parametrisation and names follow PEFT's tuners/randlora: shared buffers randlora_A
// [r, 1, min_dim] and randlora_B [max_dim, num_bases, r] (model scope, randlora_shared),
// per-layer randlora_lambda [r, n] (init 0: identity at init) and randlora_gamma [n, min_dim]
// (init 1/max(n, min_dim)). PEFT contracts the flattened buffers: column c of randlora_B seen as
// [max_dim, n·r] (c = j·r + k) with row c of the scaled A seen as [r·n, min_dim] (c = k·n + j).
// We keep exactly that pairing, so a PEFT checkpoint (bases + λ, γ) gives PEFT's ΔW; in the
// paper's notation B_j is made of the columns {k·n + j : k < r} of the flattened randlora_B.
//
// A layer reads the top-left blocks randlora_A[:, :, :min_dim] ([r, min_dim]) and
// randlora_B[:max_dim, :n, :] ([max_dim, n·r]) as views of the shared buffers (no copy). The
// fused path never forms ΔW or the [n·r, min_dim] scaled basis: it loops over the r rows of A
// with an [n, min_dim] temporary (Γ ⊙ A_k), so per-call memory is O(N·n·r + n·min_dim).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "peft/adapters/adapter.hpp"
#include "peft/core/random.hpp"
#include "peft/detail/gemm.hpp"

namespace peft {

// Basis distribution (PEFT: sparse / very_sparse flags; very_sparse wins when both are set).
enum class randlora_basis {
  dense,       // kaiming-uniform (a = sqrt 5), then divided by the tensor's std
  sparse,      // ternary {-1, 0, 1} with P(±1) = 1/6 each, divided by the std
  very_sparse  // ternary with P(±1) = 1/(2·sqrt(min_dim)) each, divided by the std
};

struct randlora_config {
  std::size_t r = 32;                     // PEFT default; smaller r = more bases, more params
  double alpha = 640;                     // randlora_alpha ("typically 20 times the rank")
  double dropout = 0.0;                   // randlora_dropout, on the adapter's input
  std::uint64_t projection_prng_key = 0;  // seeds the shared bases
  bool save_projection = true;            // write base_model.randlora_A / _B with the adapter
  bool sparse = false;
  bool very_sparse = false;
  bool init_weights = true;  // false: lambda ~ N(0,1), gamma = 1/max(in, out) (PEFT's non-default)
  std::uint64_t seed = 0;    // dropout stream and the non-default init

  void validate(const std::string& op) const {
    if (r == 0) throw value_error(op + ": rank r must be > 0");
    if (!(dropout >= 0.0 && dropout < 1.0))
      throw value_error(op + ": dropout " + std::to_string(dropout) + " outside [0, 1)");
    if (!std::isfinite(alpha)) throw value_error(op + ": alpha is not finite");
  }
  double scaling() const { return alpha / double(r); }
  randlora_basis basis() const {
    return very_sparse ? randlora_basis::very_sparse
                       : (sparse ? randlora_basis::sparse : randlora_basis::dense);
  }
};

// Number of bases for full rank: ceil(min_dim / r).
inline std::size_t randlora_num_bases(std::size_t min_dim, std::size_t r) {
  if (r == 0) throw value_error("randlora_num_bases: r = 0");
  return (min_dim + r - 1) / r;
}

// The largest [out, in] over the base weights [out, in] of the layers that will share one
// randlora_shared (PEFT's _find_dim). Throws on an empty list or a shape that is not 2-D.
inline shape_t randlora_max_shape(const std::vector<shape_t>& weight_shapes) {
  if (weight_shapes.empty()) throw value_error("randlora_max_shape: no layer shapes given");
  shape_t m{0, 0};
  for (const auto& s : weight_shapes) {
    if (s.size() != 2 || s[0] == 0 || s[1] == 0)
      throw shape_error("randlora_max_shape: weight shape " + shape_str(s) + " is not [out, in]");
    m[0] = std::max(m[0], s[0]);
    m[1] = std::max(m[1], s[1]);
  }
  return m;
}

// The model-scope frozen bases. Memory: (r·min_dim + max_dim·n·r)·sizeof(T) once per model.
template <class T>
class randlora_shared {
 public:
  using block_view = Eigen::Map<const matrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

  static constexpr const char* key_A = "base_model.randlora_A";
  static constexpr const char* key_B = "base_model.randlora_B";

  // Regenerated from `key` for layers up to [max_out, max_in]: min_dim = min(max_in, max_out),
  // max_dim = max(...), n = ceil(min_dim / r). Dense (PEFT's _init_randlora_A_randlora_B): A
  // [r, 1, min_dim] kaiming-uniform (fan_in min_dim), then n blocks [max_dim, 1, r] (fan_in r)
  // making B, each tensor divided by its (unbiased) std. Sparse: uniform draws for A then B
  // mapped to -1 / 0 / +1, divided by the std. Same key, same bits (our generator, not torch's).
  randlora_shared(std::size_t r, std::size_t max_in, std::size_t max_out, std::uint64_t key,
                  randlora_basis kind = randlora_basis::dense)
      : key_(key), kind_(kind), from_key_(true) {
    if (r == 0 || max_in == 0 || max_out == 0)
      throw value_error("randlora_shared: r = " + std::to_string(r) + ", max_in = " +
                        std::to_string(max_in) + ", max_out = " + std::to_string(max_out) +
                        " (all must be > 0)");
    const std::size_t min_dim = std::min(max_in, max_out), max_dim = std::max(max_in, max_out);
    const std::size_t n = randlora_num_bases(min_dim, r);
    A_ = tensor<T>::from_shape({r, 1, min_dim});
    B_ = tensor<T>::from_shape({max_dim, n, r});
    rng g(key);
    if (kind == randlora_basis::dense) {
      fill_kaiming_uniform(A_, std::sqrt(5.0), g, min_dim);
      const double bound = 1.0 / std::sqrt(double(r));  // kaiming a=sqrt5, fan_in r
      for (std::size_t j = 0; j < n; ++j)                // one [max_dim, 1, r] block per basis
        for (std::size_t i = 0; i < max_dim; ++i)
          for (std::size_t k = 0; k < r; ++k) B_(i, j, k) = T(g.uniform(-bound, bound));
    } else {
      const double sp = kind == randlora_basis::sparse ? 3.0 : std::sqrt(double(min_dim));
      const double lo = 1.0 / (2.0 * sp), hi = 1.0 - 1.0 / (2.0 * sp);
      auto ternary = [&](tensor<T>& t) {
        for (auto& v : t) {
          const double u = g.uniform();
          v = u < lo ? T(-1) : (u > hi ? T(1) : T(0));
        }
      };
      ternary(A_);
      ternary(B_);
    }
    std_normalise("randlora_A", A_);
    std_normalise("randlora_B", B_);
  }
  // Sized for a set of layers (their base weight shapes [out, in]).
  randlora_shared(std::size_t r, const std::vector<shape_t>& weight_shapes, std::uint64_t key,
                  randlora_basis kind = randlora_basis::dense)
      : randlora_shared(r, randlora_max_shape(weight_shapes)[1],
                        randlora_max_shape(weight_shapes)[0], key, kind) {}

  // From given (e.g. loaded) bases: A [r, 1, min_dim], B [max_dim, n, r].
  randlora_shared(tensor<T> A, tensor<T> B) : from_key_(false) {
    if (A.dimension() != 3 || B.dimension() != 3 || A.size() == 0 || B.size() == 0 ||
        A.shape()[1] != 1 || B.shape()[2] != A.shape()[0])
      throw shape_error("randlora_shared: randlora_A " + shape_str(A.shape()) +
                        " and randlora_B " + shape_str(B.shape()) +
                        " must be [r, 1, min_dim] and [max_dim, n, r]");
    A_ = std::move(A);
    B_ = std::move(B);
  }
  static std::shared_ptr<randlora_shared> from_state_dict(const nn::state_dict<T>& sd) {
    auto a = sd.find(key_A), b = sd.find(key_B);
    if (a == sd.end() || b == sd.end())
      throw value_error(std::string("randlora_shared::from_state_dict: missing '") +
                        (a == sd.end() ? key_A : key_B) + "'");
    return std::make_shared<randlora_shared>(a->second, b->second);
  }

  nn::state_dict<T> state_dict() const { return {{key_A, A_}, {key_B, B_}}; }

  // Throws shape_error unless a (loaded) pair has exactly this object's shapes.
  void check_matches(const tensor<T>& A, const tensor<T>& B) const {
    if (shape_of(A) != shape_of(A_) || shape_of(B) != shape_of(B_))
      throw shape_error("randlora_shared: loaded randlora_A " + shape_str(A.shape()) +
                        ", randlora_B " + shape_str(B.shape()) + " do not match randlora_A " +
                        shape_str(A_.shape()) + ", randlora_B " + shape_str(B_.shape()));
  }
  // Overwrites the bases in place (layers keep their views) after check_matches.
  void load_state_dict(const nn::state_dict<T>& sd) {
    auto a = sd.find(key_A), b = sd.find(key_B);
    if (a == sd.end() || b == sd.end())
      throw value_error(std::string("randlora_shared::load_state_dict: missing '") +
                        (a == sd.end() ? key_A : key_B) + "'");
    check_matches(a->second, b->second);
    std::copy(a->second.begin(), a->second.end(), A_.begin());
    std::copy(b->second.begin(), b->second.end(), B_.begin());
    from_key_ = false;
  }

  const tensor<T>& randlora_A() const { return A_; }
  const tensor<T>& randlora_B() const { return B_; }
  std::size_t rank() const { return A_.shape()[0]; }
  std::size_t min_dim() const { return A_.shape()[2]; }
  std::size_t max_dim() const { return B_.shape()[0]; }
  std::size_t num_bases() const { return B_.shape()[1]; }
  std::uint64_t key() const { return key_; }
  randlora_basis kind() const { return kind_; }
  bool generated_from_key() const { return from_key_; }

  // randlora_A[:, 0, :min_d] as [r, min_d] and randlora_B[:max_d, :n, :] as [max_d, n·r].
  block_view A_block(std::size_t min_d) const {
    check_layer(rank(), min_d, max_dim(), 1);
    return block_view(A_.data(), Eigen::Index(rank()), Eigen::Index(min_d),
                      Eigen::OuterStride<>(Eigen::Index(min_dim())));
  }
  block_view B_block(std::size_t max_d, std::size_t n) const {
    check_layer(rank(), 1, max_d, n);
    return block_view(B_.data(), Eigen::Index(max_d), Eigen::Index(n * rank()),
                      Eigen::OuterStride<>(Eigen::Index(num_bases() * rank())));
  }

  void check_layer(std::size_t r, std::size_t min_d, std::size_t max_d, std::size_t n) const {
    if (r != rank() || min_d > min_dim() || max_d > max_dim() || n > num_bases())
      throw shape_error("randlora: layer with r=" + std::to_string(r) + ", min_dim=" +
                        std::to_string(min_d) + ", max_dim=" + std::to_string(max_d) +
                        ", bases=" + std::to_string(n) + " does not fit the shared randlora_A " +
                        shape_str(A_.shape()) + ", randlora_B " + shape_str(B_.shape()));
  }

 private:
  // PEFT divides each basis tensor by its std (torch.std: unbiased).
  static void std_normalise(const char* name, tensor<T>& t) {
    const auto v = as_vector(t);
    const double n = double(v.size());
    const double mean = double(v.sum()) / n;
    double ss = 0;
    for (Eigen::Index i = 0; i < v.size(); ++i) ss += (double(v[i]) - mean) * (double(v[i]) - mean);
    const double sd = v.size() > 1 ? std::sqrt(ss / (n - 1)) : 0.0;
    if (!(sd > 0))
      throw value_error(std::string("randlora_shared: ") + name + " " + shape_str(t.shape()) +
                        " has zero spread and cannot be std-normalised (too small or all zero; "
                        "use another key or dense bases)");
    as_vector(t) /= T(sd);
  }

  tensor<T> A_, B_;
  std::uint64_t key_ = 0;
  randlora_basis kind_ = randlora_basis::dense;
  bool from_key_ = false;
};

template <class T>
class randlora : public adapter<T> {
 public:
  using block_view = typename randlora_shared<T>::block_view;

  // cfg.r must equal shared->rank(); the layer must fit the shared bases.
  randlora(std::size_t in, std::size_t out, std::shared_ptr<randlora_shared<T>> shared,
           const randlora_config& cfg = {})
      : adapter<T>(in, out), cfg_(cfg), shared_(std::move(shared)),
        drop_rng_(rng(cfg.seed).fork(1)) {
    cfg_.validate("randlora");
    if (!shared_) throw value_error("randlora: shared bases are null");
    min_d_ = std::min(in, out);
    max_d_ = std::max(in, out);
    n_ = randlora_num_bases(min_d_, cfg_.r);
    shared_->check_layer(cfg_.r, min_d_, max_d_, n_);
    randlora_lambda = this->register_parameter("randlora_lambda", zeros<T>({cfg_.r, n_}));
    randlora_gamma = this->register_parameter("randlora_gamma", zeros<T>({n_, min_d_}));
    reset_parameters();
  }

  // PEFT's reset_randlora_parameters: λ = 0 (identity at init), γ = 1/max(γ.shape). With
  // init_weights = false: λ ~ N(0, 1), γ = 1/max(in, out), as PEFT creates them.
  void reset_parameters() {
    if (cfg_.init_weights) {
      randlora_lambda.value().fill(T(0));
      randlora_gamma.value().fill(T(1.0 / double(std::max(n_, min_d_))));
    } else {
      rng g = rng(cfg_.seed).fork(0);
      fill_normal(randlora_lambda.value(), 0.0, 1.0, g);
      randlora_gamma.value().fill(T(1.0 / double(max_d_)));
    }
  }

  std::string peft_type() const override { return "RANDLORA"; }
  std::string method() const override { return "randlora"; }
  double scaling() const override { return cfg_.scaling(); }
  std::size_t rank() const { return cfg_.r; }
  std::size_t num_bases() const { return n_; }
  std::size_t min_dim() const { return min_d_; }
  std::size_t max_dim() const { return max_d_; }
  // True when the scaled basis A acts on the input (in <= out); false: on the output.
  bool scales_input() const { return this->in_features() <= this->out_features(); }
  const randlora_config& config() const { return cfg_; }
  const std::shared_ptr<randlora_shared<T>>& shared() const { return shared_; }
  rng& dropout_rng() { return drop_rng_; }

  // This layer's views of the shared bases: A [r, min_dim], B flattened [max_dim, n·r].
  block_view A_block() const { return shared_->A_block(min_d_); }
  block_view B_block() const { return shared_->B_block(max_d_, n_); }

  // ctx.m[0] = P = project(x_d) [N, r·n] when the input is the min side, else Z = x_d·B [N, n·r];
  // ctx.m[1] = dropout mask / (1-p) [N, in] or empty.
  void forward_delta(matrix_cref<T> x, matrix_ref<T> y, adapter_ctx<T>& ctx,
                     bool training) override {
    using detail::trans;
    const T s = T(scaling());
    const auto lam = lambda_row();
    ctx.m.resize(2);
    matrix<T> xd;
    const bool drop = training && cfg_.dropout > 0;
    if (drop) {
      const T keep = T(1) / T(1 - cfg_.dropout);
      matrix<T>& mask = ctx.m[1];
      mask.resize(x.rows(), x.cols());
      T* mp = mask.data();
      for (Eigen::Index i = 0; i < mask.size(); ++i)
        mp[i] = drop_rng_.uniform() < cfg_.dropout ? T(0) : keep;
      xd = x.array() * mask.array();
    } else {
      ctx.m[1].resize(0, 0);
    }
    const matrix_cref<T> v = drop ? matrix_cref<T>(xd) : x;
    if (scales_input()) {
      // y += s·(P ⊙ λ)·Bᵀ
      ctx.m[0] = project(v);
      const matrix<T> pl = ctx.m[0] * lam.asDiagonal();
      detail::gemm<T>(trans::n, trans::t, s, pl, B_block(), T(1), y, "randlora.forward");
    } else {
      // y += s·expand(Z ⊙ λ),  Z = x_d·B
      detail::gemm_into<T>(ctx.m[0], trans::n, trans::n, v, B_block(), T(1),
                           "randlora.forward");
      const matrix<T> zl = s * (ctx.m[0] * lam.asDiagonal());
      expand_add(zl, y);
    }
  }

  // Input is the min side:  dU = s·dy·B, dλ = colsum(dU ⊙ P), G = dU ⊙ λ,
  //   dγ = Σ_k (G_kᵀ·x_d) ⊙ A_k, dx += expand(G) ⊙ mask.
  // Output is the min side: Q = project(dy), dλ = s·colsum(Q ⊙ Z),
  //   dγ = s·Σ_k ((Z⊙λ)_kᵀ·dy) ⊙ A_k, dx += (s·Q ⊙ λ)·Bᵀ ⊙ mask.
  void backward_delta(matrix_cref<T> dy, matrix_cref<T> x, const adapter_ctx<T>& ctx,
                      matrix_ref<T>* dx) override {
    using detail::trans;
    const T s = T(scaling());
    const auto lam = lambda_row();
    const matrix<T>& saved = ctx.m[0];
    const matrix<T>& mask = ctx.m[1];
    auto* gl = detail::grad_target(randlora_lambda);
    auto* gg = detail::grad_target(randlora_gamma);
    if (!gl && !gg && !dx) return;
    if (scales_input()) {
      const matrix<T> dU =
          detail::gemm_new<T>(trans::n, trans::n, dy, B_block(), s, "randlora.backward");
      if (gl) as_vector(*gl) += (dU.array() * saved.array()).colwise().sum().transpose().matrix();
      if (!gg && !dx) return;
      const matrix<T> G = dU * lam.asDiagonal();
      if (gg) {
        if (mask.size()) {
          const matrix<T> xd = x.array() * mask.array();
          grad_gamma_add(G, xd, as_matrix(*gg));
        } else {
          grad_gamma_add(G, x, as_matrix(*gg));
        }
      }
      if (dx) {
        matrix<T> R = matrix<T>::Zero(x.rows(), x.cols());
        expand_add(G, R);
        if (mask.size())
          dx->array() += R.array() * mask.array();
        else
          *dx += R;
      }
    } else {
      if (gg) {
        const matrix<T> zl = s * (saved * lam.asDiagonal());
        grad_gamma_add(zl, dy, as_matrix(*gg));
      }
      if (!gl && !dx) return;
      const matrix<T> Q = project(dy);
      if (gl)
        as_vector(*gl) += (s * (Q.array() * saved.array()).colwise().sum()).transpose().matrix();
      if (dx) {
        const matrix<T> dz = s * (Q * lam.asDiagonal());
        if (mask.size()) {
          const matrix<T> dzB = detail::gemm_new<T>(trans::n, trans::t, dz, B_block());
          dx->array() += dzB.array() * mask.array();
        } else {
          detail::gemm<T>(trans::n, trans::t, T(1), dz, B_block(), T(1), *dx, "randlora.backward");
        }
      }
    }
  }

  matrix<T> delta_weight(matrix_cref<T>) const override {
    const matrix<T> M = detail::gemm_new<T>(detail::trans::n, detail::trans::n, B_block(),
                                            scaled_A(), T(scaling()));  // [max_d, min_d]
    if (scales_input()) return M;
    return M.transpose();
  }

  // Exact factorisation Δ = Bf·Af with inner dimension n·r >= min(in, out): RandLoRA is
  // full rank by design, so these factors are not smaller than Δ itself.
  bool factors(matrix<T>& Bf, matrix<T>& Af) const override {
    if (scales_input()) {
      Bf = T(scaling()) * B_block();
      Af = scaled_A();
    } else {
      Bf = T(scaling()) * scaled_A().transpose();
      Af = B_block().transpose();
    }
    return true;
  }

  variable<T> randlora_lambda, randlora_gamma;

 private:
  using row_map = Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>;
  // λ flattened row-major [r·n]: entry k·n + j, the index c of the PEFT pairing.
  row_map lambda_row() const {
    return row_map(randlora_lambda.value().data(), Eigen::Index(cfg_.r * n_));
  }
  // Γ ⊙ A_k (row k of A broadcast over the n rows of Γ) [n, min_dim].
  void gamma_times_row(std::size_t k, matrix<T>& out) const {
    const auto gam = as_matrix(randlora_gamma.value());
    out = gam.array().rowwise() * A_block().row(Eigen::Index(k)).array();
  }
  // P[:, k·n + j] = Σ_i v[:, i]·A[k, i]·Γ[j, i]   (v [N, min_dim] -> [N, r·n])
  matrix<T> project(matrix_cref<T> v) const {
    using detail::trans;
    const Eigen::Index n = Eigen::Index(n_);
    matrix<T> P(v.rows(), Eigen::Index(cfg_.r * n_));
    matrix<T> gk;
    for (std::size_t k = 0; k < cfg_.r; ++k) {
      gamma_times_row(k, gk);
      detail::gemm<T>(trans::n, trans::t, T(1), v, gk, T(0), P.middleCols(Eigen::Index(k) * n, n));
    }
    return P;
  }
  // R[:, i] += Σ_{k,j} G[:, k·n + j]·A[k, i]·Γ[j, i]   (G [N, r·n] -> R [N, min_dim])
  void expand_add(const matrix<T>& G, matrix_ref<T> R) const {
    using detail::trans;
    const Eigen::Index n = Eigen::Index(n_);
    matrix<T> gk;
    for (std::size_t k = 0; k < cfg_.r; ++k) {
      gamma_times_row(k, gk);
      detail::gemm<T>(trans::n, trans::n, T(1), G.middleCols(Eigen::Index(k) * n, n), gk, T(1), R);
    }
  }
  // dΓ[j, i] += Σ_k A[k, i]·(G_kᵀ·v)[j, i]   (G [N, r·n], v [N, min_dim])
  void grad_gamma_add(const matrix<T>& G, matrix_cref<T> v, matrix_map<T> dG) const {
    using detail::trans;
    const Eigen::Index n = Eigen::Index(n_);
    const auto A = A_block();
    for (std::size_t k = 0; k < cfg_.r; ++k) {
      const auto Gk = G.middleCols(Eigen::Index(k) * n, n);                  // [N, n]
      const matrix<T> t = detail::gemm_new<T>(trans::t, trans::n, Gk, v);  // [n, min_dim]
      dG.array() += t.array().rowwise() * A.row(Eigen::Index(k)).array();
    }
  }
  // The scaled basis [r·n, min_dim]: row k·n + j = λ[k, j]·(A_k ⊙ Γ_j). Only for merge/export.
  matrix<T> scaled_A() const {
    const Eigen::Index n = Eigen::Index(n_);
    const auto lam = as_matrix(randlora_lambda.value());  // [r, n]
    matrix<T> out(Eigen::Index(cfg_.r * n_), Eigen::Index(min_d_));
    matrix<T> gk;
    for (std::size_t k = 0; k < cfg_.r; ++k) {
      gamma_times_row(k, gk);
      out.middleRows(Eigen::Index(k) * n, n) = lam.row(Eigen::Index(k)).transpose().asDiagonal() * gk;
    }
    return out;
  }

  randlora_config cfg_;
  std::shared_ptr<randlora_shared<T>> shared_;
  rng drop_rng_;
  std::size_t min_d_ = 0, max_d_ = 0, n_ = 0;
};

}  // namespace peft
