#pragma once
// EVA, Explained Variance Adaptation (Paischer et al. 2024, arXiv:2410.07170), as Hugging Face
// PEFT's init_lora_weights="eva" (tuners/lora/eva.py):
//   A = the top-r right singular vectors of the layer's input activations X [N, in]
//       (principal components: PEFT feeds X to an IncrementalPCA, which centres the columns),
//   B = 0, W unchanged (the adapted layer equals the original at init).
// Signs follow PEFT's svd_flip (v-based): the largest-magnitude entry of each component is
// positive. whiten = true divides component i by √σ_i as PEFT does.
//
// The paper and PEFT run an incremental SVD over minibatches until the components converge
// (cosine similarity ≥ tau between steps). We compute the decomposition of all collected rows
// exactly instead, which is what that iteration converges to: an eigen-decomposition of the
// centred Gram matrix Xcᵀ·Xc [in, in] when N ≥ in (one GEMM + a symmetric eigensolver, cheap for
// many tokens), a thin SVD of Xc when N < in. tau is kept for config round-trips only.
//
// Rank redistribution (PEFT's _get_rank_distribution): each layer gets at most
// round(r_layer·rho) components; all layers' explained-variance ratios are pooled, the largest
// sum(r_layer) of them are kept, and a layer's new rank is how many of its own were kept (0 means
// the layer is not adapted). With adjust_scaling_factors, lora_alpha ← lora_alpha·r_new/r_layer.
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "peft/detail/gemm.hpp"
#include "peft/init/policy.hpp"
#include "peft/init/svd.hpp"

namespace peft::init {

// PEFT's EvaConfig defaults (the data-side options use_label_mask / label_mask_value belong to
// the caller's choice of which rows to collect).
struct eva_config {
  double rho = 2.0;   // maximum rank of a layer = round(r·rho); 1 disables redistribution
  double tau = 0.99;  // convergence threshold of PEFT's incremental SVD (unused: exact SVD here)
  bool whiten = false;
  bool adjust_scaling_factors = true;
  bool center = true;  // subtract the column means first (PEFT's IncrementalPCA does)

  void validate(const std::string& op) const {
    if (!(rho >= 1.0) || !std::isfinite(rho))
      throw value_error(op + ": rho " + std::to_string(rho) + " must be >= 1");
    if (!(tau > 0.0 && tau <= 1.0))
      throw value_error(op + ": tau " + std::to_string(tau) + " outside (0, 1]");
  }
};

// Principal components of a layer's inputs.
struct eva_decomposition {
  matrix<double> components;                // [k, in], orthonormal rows, largest first
  vector<double> singular_values;           // [k] of the (centred) activations
  vector<double> explained_variance_ratio;  // [k] σ_i² / ‖Xc‖_F²
};

// The top-k principal directions of the rows of X [N, in].
template <class Derived>
eva_decomposition eva_svd(const Eigen::MatrixBase<Derived>& X, std::size_t k, bool center = true) {
  const std::size_t n = std::size_t(X.rows()), in = std::size_t(X.cols());
  if (k == 0 || k > std::min(n, in))
    throw value_error("eva_svd: " + std::to_string(k) + " components from activations [" +
                      std::to_string(n) + "," + std::to_string(in) +
                      "] (need 0 < k <= min(rows, in))");
  matrix<double> Xc = X.template cast<double>();
  if (!Xc.allFinite()) throw value_error("eva_svd: activations have non-finite values");
  if (center) Xc.rowwise() -= Xc.colwise().mean();
  const double total = Xc.squaredNorm();
  if (!(total > 0)) throw value_error("eva_svd: the activations have zero variance");

  const auto K = Eigen::Index(k);
  eva_decomposition d;
  d.components.resize(K, Eigen::Index(in));
  d.singular_values.resize(K);
  if (n >= in) {
    matrix<double> C;  // Xcᵀ·Xc [in, in]
    detail::gemm_into<double>(C, detail::trans::t, detail::trans::n, Xc, Xc);
    const auto es = detail::symmetric_eigen<double>(C);
    if (es.values.size() == 0) throw error("eva_svd: eigen-decomposition did not converge");
    for (Eigen::Index i = 0; i < K; ++i) {  // eigenvalues ascend
      const Eigen::Index j = Eigen::Index(in) - 1 - i;
      d.components.row(i) = es.vectors.col(j).transpose();
      d.singular_values[i] = std::sqrt(std::max(es.values[j], 0.0));
    }
  } else {
    const auto svd = detail::thin_svd<double>(Xc, false, true);
    d.components = svd.V.leftCols(K).transpose();
    d.singular_values = svd.S.head(K);
  }
  // svd_flip(u_based_decision=False): the largest |entry| of each component is positive.
  for (Eigen::Index i = 0; i < K; ++i) {
    Eigen::Index j = 0;
    d.components.row(i).cwiseAbs().maxCoeff(&j);
    if (d.components(i, j) < 0) d.components.row(i) *= -1.0;
  }
  d.explained_variance_ratio = d.singular_values.array().square() / total;
  return d;
}

// PEFT's max_components = round(r·rho) (Python's round: halves to even, as std::nearbyint).
inline std::size_t eva_max_components(std::size_t layer_rank, double rho) {
  return std::size_t(std::nearbyint(double(layer_rank) * rho));
}

// New rank per layer from the pooled explained-variance ratios. `ratios[layer]` holds a layer's
// ratios (largest first; only the first eva_max_components(r_layer, rho) are used) and
// `layer_ranks[layer]` its rank before redistribution; the budget is their sum.
inline std::map<std::string, std::size_t> eva_rank_distribution(
    const std::map<std::string, vector<double>>& ratios,
    const std::map<std::string, std::size_t>& layer_ranks, double rho) {
  if (!(rho >= 1.0))
    throw value_error("eva_rank_distribution: rho " + std::to_string(rho) + " must be >= 1");
  struct entry {
    double ratio;
    const std::string* layer;
  };
  std::vector<entry> pool;
  std::size_t budget = 0;
  std::map<std::string, std::size_t> counts;
  for (auto& [layer, r] : layer_ranks) {
    auto it = ratios.find(layer);
    if (it == ratios.end())
      throw value_error("eva_rank_distribution: no explained variance for layer '" + layer + "'");
    const std::size_t m =
        std::min<std::size_t>(eva_max_components(r, rho), std::size_t(it->second.size()));
    for (std::size_t i = 0; i < m; ++i) pool.push_back({it->second[Eigen::Index(i)], &it->first});
    budget += r;
    counts[layer] = 0;
  }
  // Largest ratios first; equal ratios keep layer order (stable).
  std::stable_sort(pool.begin(), pool.end(),
                   [](const entry& a, const entry& b) { return a.ratio > b.ratio; });
  for (std::size_t i = 0; i < std::min(budget, pool.size()); ++i) ++counts[*pool[i].layer];
  return counts;
}

// A = the first r principal components (÷ √σ_i when whitened), B = 0. W is not touched.
class eva {
 public:
  explicit eva(eva_decomposition d, bool whiten = false)
      : d_(std::make_shared<const eva_decomposition>(std::move(d))), whiten_(whiten) {}
  // Decomposes the activations X [N, in] into k components (k >= the rank it will fill).
  template <class Derived>
  eva(const Eigen::MatrixBase<Derived>& X, std::size_t k, const eva_config& cfg = {})
      : eva(eva_svd(X, k, validated(cfg).center), cfg.whiten) {}

  std::string peft_init_name() const { return "eva"; }
  const eva_decomposition& decomposition() const { return *d_; }

  template <class T>
  void operator()(init_target<T>& t) const {
    const std::size_t r = t.A.shape()[0], in = t.A.shape()[1];
    const auto& C = d_->components;
    if (std::size_t(C.cols()) != in)
      throw shape_error("eva: components [" + std::to_string(C.rows()) + "," +
                        std::to_string(C.cols()) + "] for A " + shape_str(t.A.shape()));
    if (r > std::size_t(C.rows()))
      throw value_error("eva: rank " + std::to_string(r) + " but only " + std::to_string(C.rows()) +
                        " components were computed");
    matrix<double> A = C.topRows(Eigen::Index(r));
    if (whiten_) {
      const vector<double> s = d_->singular_values.head(Eigen::Index(r));
      if (!(s.minCoeff() > 0)) throw value_error("eva: cannot whiten a zero singular value");
      A = s.cwiseSqrt().cwiseInverse().asDiagonal() * A;
    }
    as_matrix(t.A) = A.template cast<T>();
    t.B.fill(T(0));
  }

 private:
  static const eva_config& validated(const eva_config& cfg) {
    cfg.validate("eva");
    return cfg;
  }
  std::shared_ptr<const eva_decomposition> d_;
  bool whiten_;
};

}  // namespace peft::init
