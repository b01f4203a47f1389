#pragma once
// An adapter in serving form: plain matrices ready for the mixed-adapter kernel (mixed_batch.hpp),
// no autograd, no modules. One layer_adapter per adapted Linear; one served_adapter per model
// (layer path -> layer_adapter), which is what the registry (registry.hpp) loads and shares.
//
// Three kinds cover the adapters the serving path batches:
//   low_rank  y += x·Aᵀ·Bᵀ with the scaling folded into B once at load time (LoRA, rsLoRA and any
//             adapter with factors(): MoSLoRA, LoRA-XS, NOLA, ...: Δ = Bf·Af);
//   dora      y = s ⊙ (x·Wᵀ + x·Aᵀ·Bᵀ) + b with s = m / ‖W + B·A‖_row. s depends only on the
//             weights, never on x, so it is computed ONCE when the adapter is built (against the
//             base weight it will run with) and stored here: serving DoRA then costs what LoRA
//             costs plus one row scaling of the group's outputs;
//   vera      y += ((x·Aᵀ) ⊙ λ_d)·Bᵀ ⊙ λ_b with A, B the blocks of projections shared by every
//             VeRA adapter built from the same vera_shared: the kernel computes x·Aᵀ for the rows
//             of ALL those adapters in one GEMM and the B stage in another.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>

#include "peft/adapters/adapted_linear.hpp"
#include "peft/adapters/adapter.hpp"
#include "peft/adapters/dora.hpp"
#include "peft/adapters/inject.hpp"
#include "peft/adapters/vera.hpp"
#include "peft/core/error.hpp"
#include "peft/core/tensor.hpp"
#include "peft/detail/gemm.hpp"

namespace peft::serve {

enum class adapter_kind { low_rank, dora, vera };

inline const char* kind_name(adapter_kind k) {
  switch (k) {
    case adapter_kind::low_rank: return "low_rank";
    case adapter_kind::dora: return "dora";
    case adapter_kind::vera: return "vera";
  }
  return "?";
}

// One adapter on one Linear layer [out, in].
template <class T>
struct layer_adapter {
  adapter_kind kind = adapter_kind::low_rank;
  std::size_t in = 0, out = 0, r = 0;
  matrix<T> A;          // low_rank, dora: [r, in]
  matrix<T> B;          // low_rank, dora: [out, r], scaling folded in (Bf = s·lora_B)
  vector<T> row_scale;  // dora: m / ‖W + B·A‖_row [out]
  std::shared_ptr<const vera_shared<T>> vera;  // vera: the shared projections
  vector<T> lambda_d;   // vera: [r]
  vector<T> lambda_b;   // vera: [out]

  // Δ = B·A (B already scaled).
  static layer_adapter low_rank(matrix<T> A, matrix<T> B) {
    layer_adapter a;
    a.kind = adapter_kind::low_rank;
    a.set_factors(std::move(A), std::move(B), "serve::layer_adapter::low_rank");
    return a;
  }
  // LoRA: Δ = scaling·B·A (scaling = alpha / r, or alpha / sqrt(r) for rsLoRA).
  static layer_adapter lora(const matrix<T>& A, const matrix<T>& B, double scaling) {
    return low_rank(A, T(scaling) * B);
  }
  // DoRA with factors Bf·Af = ΔW and magnitude m [out], for base weight W [out, in]. The row
  // norms are those of dora.hpp (clamped below at eps), computed here once.
  static layer_adapter dora(matrix<T> A, matrix<T> B, const vector<T>& magnitude, matrix_cref<T> W,
                            double eps = dora_config{}.norm_eps) {
    layer_adapter a;
    a.kind = adapter_kind::dora;
    a.set_factors(std::move(A), std::move(B), "serve::layer_adapter::dora");
    if (std::size_t(magnitude.size()) != a.out || std::size_t(W.rows()) != a.out ||
        std::size_t(W.cols()) != a.in)
      throw shape_error("serve::layer_adapter::dora: magnitude [" + std::to_string(magnitude.size()) +
                        "], W " + peft::detail::dims_str(W.rows(), W.cols()) + " for factors B " +
                        peft::detail::dims_str(a.B.rows(), a.B.cols()) + " x A " +
                        peft::detail::dims_str(a.A.rows(), a.A.cols()));
    a.row_scale = magnitude.cwiseQuotient(peft::detail::dora_row_norms<T>(W, a.B, a.A, T(eps)));
    return a;
  }
  // VeRA on a layer [out, in] of rank r = lambda_d.size(), reading the shared blocks.
  static layer_adapter vera_layer(std::shared_ptr<const vera_shared<T>> shared, std::size_t in,
                                  vector<T> lambda_d, vector<T> lambda_b) {
    if (!shared) throw value_error("serve::layer_adapter::vera_layer: shared projections are null");
    layer_adapter a;
    a.kind = adapter_kind::vera;
    a.in = in;
    a.out = std::size_t(lambda_b.size());
    a.r = std::size_t(lambda_d.size());
    if (a.r == 0 || a.out == 0 || in == 0)
      throw shape_error("serve::layer_adapter::vera_layer: lambda_d [" + std::to_string(a.r) +
                        "], lambda_b [" + std::to_string(a.out) + "], in = " + std::to_string(in));
    shared->check_layer(a.r, in, a.out);
    a.vera = std::move(shared);
    a.lambda_d = std::move(lambda_d);
    a.lambda_b = std::move(lambda_b);
    return a;
  }

  // Bytes this layer owns (VeRA's shared projections are counted once per served_adapter).
  std::size_t bytes() const {
    return std::size_t(A.size() + B.size() + row_scale.size() + lambda_d.size() + lambda_b.size()) *
           sizeof(T);
  }

  // The dense change merging would make: merged − W [out, in]. For tests and merge-per-request
  // baselines only; the serving path never forms it.
  matrix<T> delta_weight(matrix_cref<T> W) const {
    if (std::size_t(W.rows()) != out || std::size_t(W.cols()) != in)
      throw shape_error("serve::layer_adapter::delta_weight: W " + peft::detail::dims_str(W.rows(), W.cols()) +
                        " for an adapter on [" + std::to_string(out) + "," + std::to_string(in) + "]");
    using peft::detail::trans;
    switch (kind) {
      case adapter_kind::low_rank: return peft::detail::gemm_new<T>(trans::n, trans::n, B, A);
      case adapter_kind::dora: {
        matrix<T> V = W;
        peft::detail::gemm<T>(trans::n, trans::n, T(1), B, A, T(1), V);
        return row_scale.asDiagonal() * V - W;
      }
      case adapter_kind::vera: {
        const matrix<T> Bl = lambda_b.asDiagonal() * vera->B_block(out, r);  // diag(λ_b)·B
        const matrix<T> Al = lambda_d.asDiagonal() * vera->A_block(r, in);   // diag(λ_d)·A
        return peft::detail::gemm_new<T>(trans::n, trans::n, Bl, Al);
      }
    }
    return {};
  }

 private:
  void set_factors(matrix<T> A_, matrix<T> B_, const char* op) {
    if (A_.rows() == 0 || A_.cols() == 0 || B_.rows() == 0 || B_.cols() != A_.rows())
      throw shape_error(std::string(op) + ": factors B " + peft::detail::dims_str(B_.rows(), B_.cols()) +
                        " x A " + peft::detail::dims_str(A_.rows(), A_.cols()) +
                        " (need B [out, r], A [r, in], r > 0)");
    in = std::size_t(A_.cols());
    out = std::size_t(B_.rows());
    r = std::size_t(A_.rows());
    A = std::move(A_);
    B = std::move(B_);
  }
};

// The serving form of a library adapter on base weight W [out, in]: DoRA (over any factored
// adapter), VeRA, or any adapter whose factors() gives Δ = Bf·Af. Adapters with an
// input-dependent update (MoE) have no per-row form and are refused (value_error).
template <class T>
layer_adapter<T> make_layer_adapter(const adapter<T>& a, matrix_cref<T> W) {
  if (std::size_t(W.rows()) != a.out_features() || std::size_t(W.cols()) != a.in_features())
    throw shape_error("serve::make_layer_adapter: W " + peft::detail::dims_str(W.rows(), W.cols()) + " for a " +
                      a.method() + " adapter on [" + std::to_string(a.out_features()) + "," +
                      std::to_string(a.in_features()) + "]");
  if (auto* d = dynamic_cast<const dora<T>*>(&a)) {
    matrix<T> Bf, Af;
    if (!d->inner().factors(Bf, Af))
      throw value_error("serve::make_layer_adapter: DoRA over '" + d->inner().method() + "' has no factors");
    return layer_adapter<T>::dora(std::move(Af), std::move(Bf), as_vector(d->lora_magnitude_vector.value()), W,
                                  d->config().norm_eps);
  }
  if (auto* v = dynamic_cast<const vera<T>*>(&a))
    return layer_adapter<T>::vera_layer(v->shared(), a.in_features(), as_vector(v->vera_lambda_d.value()),
                                        as_vector(v->vera_lambda_b.value()));
  matrix<T> Bf, Af;
  if (!a.mergeable() || !a.factors(Bf, Af))
    throw value_error("serve::make_layer_adapter: a '" + a.method() +
                      "' adapter has no low-rank factors (Δ = B·A), so it cannot be served per row");
  return layer_adapter<T>::low_rank(std::move(Af), std::move(Bf));
}

// One adapter over a whole model, by layer path ("layers.0.self_attn.q_proj").
template <class T>
struct served_adapter {
  std::string name;    // informational (the registry's key)
  std::string source;  // where it was loaded from, or "" for in-memory adapters
  std::map<std::string, layer_adapter<T>> layers;

  const layer_adapter<T>* find(const std::string& path) const {
    auto it = layers.find(path);
    return it == layers.end() ? nullptr : &it->second;
  }
  // Owned bytes plus each distinct VeRA projection pair once.
  std::size_t bytes() const {
    std::size_t n = 0;
    std::set<const vera_shared<T>*> seen;
    for (auto& [p, l] : layers) {
      n += l.bytes();
      if (l.vera && seen.insert(l.vera.get()).second)
        n += std::size_t(l.vera->vera_A().size() + l.vera->vera_B().size()) * sizeof(T);
    }
    return n;
  }
};

// The adapters of an injected model (its adapted_linear layers) in serving form, keyed by layer
// path. DoRA's row scale is computed against each layer's current base weight. Merged or
// disabled layers are refused: their base weight no longer is the base.
template <class T>
served_adapter<T> extract_served_adapter(nn::module<T>& model, std::string name = {}) {
  served_adapter<T> s;
  s.name = std::move(name);
  for (auto& [path, al] : adapted_layers(model)) {
    if (al->merged())
      throw value_error("serve::extract_served_adapter: layer '" + path + "' is merged; unmerge it first");
    if (!al->get_adapter().enabled())
      throw value_error("serve::extract_served_adapter: layer '" + path + "' has its adapter disabled");
    s.layers.emplace(path, make_layer_adapter<T>(al->get_adapter(), as_matrix(al->base_layer->weight.value())));
  }
  if (s.layers.empty()) throw value_error("serve::extract_served_adapter: the model has no adapted layers");
  return s;
}

}  // namespace peft::serve
