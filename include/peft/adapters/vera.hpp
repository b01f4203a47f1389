#pragma once
// VeRA (Kopiczko et al. 2024, arXiv:2310.11454):  h = W0·x + Λ_b·B·Λ_d·A·x
// A [r, max_in] and B [max_out, r] are frozen random matrices shared by every adapted layer of a
// model: one vera_shared object, held by shared_ptr in each layer's adapter, regenerated from
// projection_prng_key (or loaded when the checkpoint saved them). A layer [out, in] reads the
// top-left blocks A[:r, :in] and B[:out, :r] as strided views of the shared buffers (no copy),
// as PEFT slices vera_A[:, :in] and vera_B[:out, :]. Trained per layer: vera_lambda_d [r]
// (init d_initial) and vera_lambda_b [out] (init 0, so the adapter starts as the identity).
// The fused path computes u = (x·Aᵀ)⊙λ_d, y += (u·Bᵀ)⊙λ_b and never forms ΔW.
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

struct vera_config {
  std::size_t r = 256;                     // PEFT's default rank (VeRA wants large r)
  double d_initial = 0.1;                  // init value of vera_lambda_d
  double dropout = 0.0;                    // vera_dropout, on the adapter's input
  std::uint64_t projection_prng_key = 0;   // seeds the shared A and B
  bool save_projection = true;             // write base_model.vera_A / vera_B with the adapter
  bool init_weights = true;                // false: lambda_b = 1, lambda_d ~ N(0, 1) (PEFT)
  std::uint64_t seed = 0;                  // dropout stream and the non-default init

  void validate(const std::string& op) const {
    if (r == 0) throw value_error(op + ": rank r must be > 0");
    if (!(dropout >= 0.0 && dropout < 1.0))
      throw value_error(op + ": dropout " + std::to_string(dropout) + " outside [0, 1)");
    if (!std::isfinite(d_initial)) throw value_error(op + ": d_initial is not finite");
  }
};

// The largest [out, in] over the base weights [out, in] of the layers that will share one
// vera_shared (PEFT's _find_dim). Throws on an empty list or a shape that is not 2-D.
inline shape_t vera_max_shape(const std::vector<shape_t>& weight_shapes) {
  if (weight_shapes.empty()) throw value_error("vera_max_shape: no layer shapes given");
  shape_t m{0, 0};
  for (const auto& s : weight_shapes) {
    if (s.size() != 2 || s[0] == 0 || s[1] == 0)
      throw shape_error("vera_max_shape: weight shape " + shape_str(s) + " is not [out, in]");
    m[0] = std::max(m[0], s[0]);
    m[1] = std::max(m[1], s[1]);
  }
  return m;
}

// The model-scope pair of frozen projections. Memory: (r·max_in + max_out·r)·sizeof(T), once per
// model.
template <class T>
class vera_shared {
 public:
  // Row-major view of a block of a shared buffer (outer stride = the buffer's row length).
  using block_view = Eigen::Map<const matrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

  // State-dict names PEFT uses for the saved projections (save_projection=True).
  static constexpr const char* key_A = "base_model.vera_A";
  static constexpr const char* key_B = "base_model.vera_B";

  // Regenerated from `key`: A then B from one stream, each kaiming-uniform as PEFT's
  // _kaiming_init (gain sqrt(2), fan_in = number of columns): A ~ U(±sqrt(6/max_in)),
  // B ~ U(±sqrt(6/r)). Same key, same bits (our generator, not torch's).
  vera_shared(std::size_t r, std::size_t max_in, std::size_t max_out, std::uint64_t key)
      : key_(key), from_key_(true) {
    if (r == 0 || max_in == 0 || max_out == 0)
      throw value_error("vera_shared: r = " + std::to_string(r) + ", max_in = " +
                        std::to_string(max_in) + ", max_out = " + std::to_string(max_out) +
                        " (all must be > 0)");
    A_ = tensor<T>::from_shape({r, max_in});
    B_ = tensor<T>::from_shape({max_out, r});
    rng g(key);
    fill_kaiming_uniform(A_, 0.0, g);
    fill_kaiming_uniform(B_, 0.0, g);
  }
  // Sized for a set of layers (their base weight shapes [out, in]).
  vera_shared(std::size_t r, const std::vector<shape_t>& weight_shapes, std::uint64_t key)
      : vera_shared(r, vera_max_shape(weight_shapes)[1], vera_max_shape(weight_shapes)[0], key) {}

  // From given (e.g. loaded) projections: A [r, max_in], B [max_out, r].
  vera_shared(tensor<T> A, tensor<T> B) : from_key_(false) {
    check_pair("vera_shared", A, B);
    A_ = std::move(A);
    B_ = std::move(B);
  }
  // From a state dict holding base_model.vera_A and base_model.vera_B.
  static std::shared_ptr<vera_shared> from_state_dict(const nn::state_dict<T>& sd) {
    auto a = sd.find(key_A), b = sd.find(key_B);
    if (a == sd.end() || b == sd.end())
      throw value_error(std::string("vera_shared::from_state_dict: missing '") +
                        (a == sd.end() ? key_A : key_B) + "'");
    return std::make_shared<vera_shared>(a->second, b->second);
  }

  // The tensors to save with the adapter when save_projection is on.
  nn::state_dict<T> state_dict() const { return {{key_A, A_}, {key_B, B_}}; }

  // Throws shape_error unless a (loaded) pair has exactly this object's shapes.
  void check_matches(const tensor<T>& A, const tensor<T>& B) const {
    if (shape_of(A) != shape_of(A_) || shape_of(B) != shape_of(B_))
      throw shape_error("vera_shared: loaded vera_A " + shape_str(A.shape()) + ", vera_B " +
                        shape_str(B.shape()) + " do not match vera_A " + shape_str(A_.shape()) +
                        ", vera_B " + shape_str(B_.shape()));
  }
  // Overwrites the projections in place (layers keep their views) after check_matches.
  void load_state_dict(const nn::state_dict<T>& sd) {
    auto a = sd.find(key_A), b = sd.find(key_B);
    if (a == sd.end() || b == sd.end())
      throw value_error(std::string("vera_shared::load_state_dict: missing '") +
                        (a == sd.end() ? key_A : key_B) + "'");
    check_matches(a->second, b->second);
    std::copy(a->second.begin(), a->second.end(), A_.begin());
    std::copy(b->second.begin(), b->second.end(), B_.begin());
    from_key_ = false;
  }

  const tensor<T>& vera_A() const { return A_; }
  const tensor<T>& vera_B() const { return B_; }
  std::size_t rank() const { return A_.shape()[0]; }
  std::size_t max_in() const { return A_.shape()[1]; }
  std::size_t max_out() const { return B_.shape()[0]; }
  std::uint64_t key() const { return key_; }
  bool generated_from_key() const { return from_key_; }

  // A[:r, :in] and B[:out, :r] as views into the shared buffers.
  block_view A_block(std::size_t r, std::size_t in) const {
    check_layer(r, in, max_out());
    return block_view(A_.data(), Eigen::Index(r), Eigen::Index(in),
                      Eigen::OuterStride<>(Eigen::Index(max_in())));
  }
  block_view B_block(std::size_t out, std::size_t r) const {
    check_layer(r, max_in(), out);
    return block_view(B_.data(), Eigen::Index(out), Eigen::Index(r),
                      Eigen::OuterStride<>(Eigen::Index(rank())));
  }

  // Throws shape_error naming the shapes when a layer [out, in] of rank r does not fit.
  void check_layer(std::size_t r, std::size_t in, std::size_t out) const {
    if (r > rank() || in > max_in() || out > max_out())
      throw shape_error("vera: layer [" + std::to_string(out) + "," + std::to_string(in) +
                        "] with r=" + std::to_string(r) + " does not fit the shared vera_A " +
                        shape_str(A_.shape()) + ", vera_B " + shape_str(B_.shape()));
  }

 private:
  static void check_pair(const char* op, const tensor<T>& A, const tensor<T>& B) {
    if (A.dimension() != 2 || B.dimension() != 2 || A.size() == 0 || B.size() == 0 ||
        A.shape()[0] != B.shape()[1])
      throw shape_error(std::string(op) + ": vera_A " + shape_str(A.shape()) + " and vera_B " +
                        shape_str(B.shape()) + " must be [r, in] and [out, r]");
  }

  tensor<T> A_, B_;
  std::uint64_t key_ = 0;
  bool from_key_ = false;
};

template <class T>
class vera : public adapter<T> {
 public:
  using block_view = typename vera_shared<T>::block_view;

  // `shared` must be large enough for this layer (rank >= r, max_in >= in, max_out >= out).
  vera(std::size_t in, std::size_t out, std::shared_ptr<vera_shared<T>> shared,
       const vera_config& cfg = {})
      : adapter<T>(in, out), cfg_(cfg), shared_(std::move(shared)),
        drop_rng_(rng(cfg.seed).fork(1)) {
    cfg_.validate("vera");
    if (!shared_) throw value_error("vera: shared projections are null");
    shared_->check_layer(cfg_.r, in, out);
    vera_lambda_b = this->register_parameter("vera_lambda_b", zeros<T>({out}));
    vera_lambda_d = this->register_parameter("vera_lambda_d", zeros<T>({cfg_.r}));
    reset_parameters();
  }

  // PEFT's reset_vera_parameters: lambda_d = d_initial, lambda_b = 0 (identity at init); with
  // init_weights = false, lambda_b = 1 and lambda_d ~ N(0, 1) as PEFT leaves them.
  void reset_parameters() {
    if (cfg_.init_weights) {
      vera_lambda_d.value().fill(T(cfg_.d_initial));
      vera_lambda_b.value().fill(T(0));
    } else {
      rng g = rng(cfg_.seed).fork(0);
      fill_normal(vera_lambda_d.value(), 0.0, 1.0, g);
      vera_lambda_b.value().fill(T(1));
    }
  }

  std::string peft_type() const override { return "VERA"; }
  std::string method() const override { return "vera"; }
  std::size_t rank() const { return cfg_.r; }
  const vera_config& config() const { return cfg_; }
  const std::shared_ptr<vera_shared<T>>& shared() const { return shared_; }
  rng& dropout_rng() { return drop_rng_; }

  // This layer's blocks of the shared projections (views, no copy).
  block_view A_block() const { return shared_->A_block(cfg_.r, this->in_features()); }
  block_view B_block() const { return shared_->B_block(this->out_features(), cfg_.r); }

  // ctx.m[0] = x·Aᵀ (on the dropped input) [N, r]; ctx.m[1] = dropout mask / (1-p) [N, in]
  // (only when dropout is active).
  void forward_delta(matrix_cref<T> x, matrix_ref<T> y, adapter_ctx<T>& ctx,
                     bool training) override {
    using detail::trans;
    const auto A = A_block();
    const auto B = B_block();
    const auto ld = as_vector(vera_lambda_d.value());
    const auto lb = as_vector(vera_lambda_b.value());
    ctx.m.resize(2);
    if (training && cfg_.dropout > 0) {
      const T keep = T(1) / T(1 - cfg_.dropout);
      matrix<T>& mask = ctx.m[1];
      mask.resize(x.rows(), x.cols());
      T* mp = mask.data();
      for (Eigen::Index i = 0; i < mask.size(); ++i)
        mp[i] = drop_rng_.uniform() < cfg_.dropout ? T(0) : keep;
      const matrix<T> xd = (x.array() * mask.array()).matrix();
      detail::gemm_into<T>(ctx.m[0], trans::n, trans::t, xd, A, T(1), "vera.forward");
    } else {
      ctx.m[1].resize(0, 0);
      detail::gemm_into<T>(ctx.m[0], trans::n, trans::t, x, A, T(1), "vera.forward");
    }
    // ((xa ⊙ λ_d)·Bᵀ) ⊙ λ_b = (xa·diag(λ_d))·(diag(λ_b)·B)ᵀ; diag(λ_b)·B is only [out, r].
    const matrix<T> Bs = lb.asDiagonal() * B;
    const matrix<T> u = ctx.m[0] * ld.asDiagonal();
    detail::gemm<T>(trans::n, trans::t, T(1), u, Bs, T(1), y, "vera.forward");
  }

  // With u = xa·diag(λ_d):  dλ_b[i] = Σ_k B[i,k]·(dyᵀ·u)[i,k]   (no [N, out] temporary)
  //   gu = dy·diag(λ_b)·B   dλ_d = colsum(gu ⊙ xa)   dx += gu·diag(λ_d)·A ⊙ mask
  void backward_delta(matrix_cref<T> dy, matrix_cref<T> x, const adapter_ctx<T>& ctx,
                      matrix_ref<T>* dx) override {
    (void)x;
    using detail::trans;
    const auto A = A_block();
    const auto B = B_block();
    const auto ld = as_vector(vera_lambda_d.value());
    const auto lb = as_vector(vera_lambda_b.value());
    const matrix<T>& xa = ctx.m[0];
    const matrix<T>& mask = ctx.m[1];
    auto* gb = detail::grad_target(vera_lambda_b);
    auto* gd = detail::grad_target(vera_lambda_d);
    if (gb) {
      const matrix<T> u = xa * ld.asDiagonal();
      const matrix<T> M =
          detail::gemm_new<T>(trans::t, trans::n, dy, u, T(1), "vera.backward");  // [out, r]
      as_vector(*gb) += (M.array() * B.array()).rowwise().sum().matrix();
    }
    if (!gd && !dx) return;
    const matrix<T> Bs = lb.asDiagonal() * B;
    const matrix<T> gu =
        detail::gemm_new<T>(trans::n, trans::n, dy, Bs, T(1), "vera.backward");  // [N, r]
    if (gd) as_vector(*gd) += (gu.array() * xa.array()).colwise().sum().transpose().matrix();
    if (dx) {
      const matrix<T> ga = gu * ld.asDiagonal();
      if (mask.size()) {
        const matrix<T> gaA = detail::gemm_new<T>(trans::n, trans::n, ga, A, T(1), "vera.backward");
        dx->array() += gaA.array() * mask.array();
      } else {
        detail::gemm<T>(trans::n, trans::n, T(1), ga, A, T(1), *dx, "vera.backward");
      }
    }
  }

  matrix<T> delta_weight(matrix_cref<T>) const override {
    matrix<T> Bf, Af;
    factors(Bf, Af);
    return detail::gemm_new<T>(detail::trans::n, detail::trans::n, Bf, Af);
  }

  // Δ = (diag(λ_b)·B)·(diag(λ_d)·A).
  bool factors(matrix<T>& Bf, matrix<T>& Af) const override {
    Bf = as_vector(vera_lambda_b.value()).asDiagonal() * B_block();
    Af = as_vector(vera_lambda_d.value()).asDiagonal() * A_block();
    return true;
  }

  variable<T> vera_lambda_b, vera_lambda_d;

 private:
  vera_config cfg_;
  std::shared_ptr<vera_shared<T>> shared_;
  rng drop_rng_;
};

}  // namespace peft
