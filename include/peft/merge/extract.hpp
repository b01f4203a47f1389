#pragma once
// Extracting a LoRA from a fine-tuned weight (post-hoc, PHLoRA-style): the difference
// D = W_ft − W_base [out, in] is truncated by SVD, D ≈ U_k·S_k·V_kᵀ (the best rank-k
// approximation in the Frobenius norm, Eckart–Young), and split evenly between the factors:
//   B = U_k·sqrt(S_k / s) [out, k],  A = sqrt(S_k / s)·V_kᵀ [k, in],  s = alpha / k,
// so that s·B·A = U_k·S_k·V_kᵀ. The captured energy is Σ_{i<k} S_i² / ‖D‖_F² (1 when D = 0).
// Rank mode takes k = rank (at most min(out, in), where the factorization is exact); energy
// mode takes the smallest k whose captured energy reaches the requested fraction (up to
// rounding of the singular values).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "peft/core/error.hpp"
#include "peft/core/random.hpp"
#include "peft/core/tensor.hpp"
#include "peft/detail/svd.hpp"
#include "peft/io/adapter_config.hpp"
#include "peft/io/safetensors.hpp"
#include "peft/merge/combine.hpp"

namespace peft::merge {

struct extract_options {
  std::size_t rank = 0;  // exactly one of rank (> 0) ...
  double energy = 0;     // ... and energy (in (0, 1]) is set
  std::vector<std::string> targets;  // module paths or suffixes (PEFT's list matching); empty:
                                     // every 2-D weight that differs, except embedding tables
  double alpha = 0;         // lora_alpha of every layer; 0: alpha = the layer's rank (scale 1)
  bool randomized = false;  // randomized SVD (rank mode only: energy mode needs the spectrum)
  std::uint64_t seed = 0;   // randomized SVD's Gaussian test matrix (layer j: rng(seed).fork(j))
  std::size_t niter = 2;    // randomized SVD's power iterations
};

template <class T>
struct extracted {
  lora_pair<T> lora;  // dW = lora.scale·B·A ≈ W_ft − W_base
  double captured_energy = 0;
  std::size_t rank = 0;
};

struct extract_layer_report {
  std::string name;  // module path ("model.layers.0.self_attn.q_proj")
  std::size_t rank = 0;
  double captured_energy = 0;
};

namespace detail {

inline void check_extract_options(const extract_options& o, const std::string& op) {
  if ((o.rank > 0) == (o.energy != 0))
    throw value_error(op + ": give exactly one of rank (" + std::to_string(o.rank) + ") and energy (" +
                      weight_str(o.energy) + ")");
  if (o.energy != 0 && !(o.energy > 0 && o.energy <= 1))
    throw value_error(op + ": energy " + weight_str(o.energy) + " outside (0, 1]");
  if (!(o.alpha >= 0 && std::isfinite(o.alpha)))
    throw value_error(op + ": alpha " + weight_str(o.alpha) + " (must be >= 0; 0 means alpha = rank)");
  if (o.randomized && o.energy != 0)
    throw value_error(op + ": randomized SVD needs a rank; energy mode needs the whole spectrum");
}

template <class T>
extracted<T> extract_impl(matrix_cref<T> w_ft, matrix_cref<T> w_base, const extract_options& o, rng& g,
                          const std::string& op) {
  check_extract_options(o, op);
  if (w_ft.rows() != w_base.rows() || w_ft.cols() != w_base.cols() || w_ft.size() == 0)
    throw shape_error(op + ": fine-tuned [" + std::to_string(w_ft.rows()) + "," + std::to_string(w_ft.cols()) +
                      "] vs base [" + std::to_string(w_base.rows()) + "," + std::to_string(w_base.cols()) + "]");
  const matrix<T> D = w_ft - w_base;
  const double total = D.template cast<double>().squaredNorm();
  const std::size_t full = std::size_t(std::min(D.rows(), D.cols()));
  peft::detail::svd_result<T> svd;
  std::size_t k = 0;
  if (o.rank > 0) {
    k = std::min(o.rank, full);
    svd = o.randomized ? peft::detail::randomized_svd<T>(D, k, o.niter, g) : peft::detail::truncated_svd<T>(D, k);
  } else {
    svd = peft::detail::truncated_svd<T>(D, full);
    // The singular values carry relative rounding of about full·eps, so a fraction of 1 must
    // not demand more than they can resolve.
    const double tol = total * 4.0 * double(full) * double(std::numeric_limits<T>::epsilon());
    double cum = 0;
    k = full;
    for (std::size_t i = 0; i < full; ++i) {
      cum += double(svd.S[Eigen::Index(i)]) * double(svd.S[Eigen::Index(i)]);
      if (cum >= o.energy * total - tol) {
        k = i + 1;
        break;
      }
    }
  }
  const Eigen::Index kk = Eigen::Index(k);
  double captured = 0;
  for (Eigen::Index i = 0; i < kk; ++i) captured += double(svd.S[i]) * double(svd.S[i]);
  extracted<T> res;
  res.rank = k;
  res.captured_energy = total > 0 ? std::min(1.0, captured / total) : 1.0;
  const double alpha = o.alpha > 0 ? o.alpha : double(k);
  const double s = alpha / double(k);
  const vector<T> root = (svd.S.head(kk).template cast<double>() / s).cwiseSqrt().template cast<T>();
  res.lora.B = to_tensor(svd.U.leftCols(kk) * root.asDiagonal());
  res.lora.A = to_tensor(root.asDiagonal() * svd.V.leftCols(kk).transpose());
  res.lora.scale = T(s);
  return res;
}

// Embedding tables get PEFT's lora_embedding_A / _B layout, not a Linear's; skipped unless targeted.
inline bool looks_like_embedding(const std::string& path) {
  const std::string last = peft::detail::last_component(path);
  return last.find("embed") != std::string::npos || last == "wte" || last == "wpe";
}

}  // namespace detail

// LoRA factors of W_ft − W_base (both [out, in]). Throws shape_error when the shapes differ,
// value_error when not exactly one of rank / energy is set, energy is outside (0, 1], alpha is
// negative, or randomized is asked for in energy mode.
template <class T>
extracted<T> extract(matrix_cref<T> w_finetuned, matrix_cref<T> w_base, const extract_options& o) {
  rng g(o.seed);
  return detail::extract_impl<T>(w_finetuned, w_base, o, g, "extract");
}

// Extracts a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors, F32)
// from two safetensors files of a model's weights. Each selected "<module>.weight" (2-D) gives
// the layer "<module>"; target_modules lists the layers' exact paths, r / lora_alpha are the most
// common per-layer values with rank_pattern / alpha_pattern for the rest. Returns each layer's
// rank and captured energy, in name order. Files are written atomically.
inline std::vector<extract_layer_report> extract_peft_dir(const std::string& base_safetensors,
                                                          const std::string& finetuned_safetensors,
                                                          const extract_options& o, const std::string& out_dir) {
  const std::string op = "extract_peft_dir";
  detail::check_extract_options(o, op);
  const auto base = io::safetensors_file::load(base_safetensors);
  const auto ft = io::safetensors_file::load(finetuned_safetensors);
  const std::string bw = "'" + base_safetensors + "'", fw = "'" + finetuned_safetensors + "'";

  // Candidate layers: 2-D float "<module>.weight" tensors of the base file.
  auto module_of = [](const std::string& name) -> std::string {
    const std::string suf = ".weight";
    if (name.size() <= suf.size() || name.compare(name.size() - suf.size(), suf.size(), suf) != 0) return "";
    return name.substr(0, name.size() - suf.size());
  };
  std::map<std::string, std::string> candidates;  // module path -> tensor name
  for (auto& name : base.names()) {
    const auto& e = base.at(name);
    const std::string path = module_of(name);
    if (!path.empty() && e.shape.size() == 2 && io::is_float_dtype(e.type)) candidates.emplace(path, name);
  }
  auto check_pair = [&](const std::string& name) {
    if (!ft.contains(name)) throw io_error(op + ": tensor '" + name + "' of " + bw + " is missing from " + fw);
    const auto& a = base.at(name);
    const auto& b = ft.at(name);
    if (a.shape != b.shape)
      throw shape_error(op + ": tensor '" + name + "' is " + shape_str(a.shape) + " in " + bw + " but " +
                        shape_str(b.shape) + " in " + fw);
  };

  std::vector<std::string> selected;  // module paths
  if (o.targets.empty()) {
    for (auto& [path, name] : candidates) {
      if (detail::looks_like_embedding(path)) continue;
      check_pair(name);
      const auto& a = base.at(name);
      const auto& b = ft.at(name);
      const bool differs = a.type == b.type ? a.data != b.data : base.get<double>(name) != ft.get<double>(name);
      if (differs) selected.push_back(path);
    }
    if (selected.empty()) throw value_error(op + ": no 2-D weight differs between " + bw + " and " + fw);
  } else {
    std::set<std::string> chosen;
    for (auto& t : o.targets) {
      bool found = false;
      for (auto& [path, name] : candidates)
        if (peft::detail::name_matches(path, t)) {
          check_pair(name);
          chosen.insert(path);
          found = true;
        }
      if (!found) throw value_error(op + ": target '" + t + "' matches no 2-D weight '<module>.weight' in " + bw);
    }
    selected.assign(chosen.begin(), chosen.end());
  }

  std::map<std::string, lora_pair<double>> layers;
  std::vector<detail::layer_rank> ranks;
  std::vector<extract_layer_report> report;
  std::uint64_t index = 0;
  for (auto& path : selected) {
    const std::string& name = candidates.at(path);
    const tensor<double> wb = base.get<double>(name), wf = ft.get<double>(name);
    rng g = rng(o.seed).fork(index++);
    auto ex = detail::extract_impl<double>(as_matrix(wf), as_matrix(wb), o, g, op + ": tensor '" + name + "'");
    ranks.push_back({path, ex.rank, o.alpha > 0 ? o.alpha : double(ex.rank)});
    report.push_back({path, ex.rank, ex.captured_energy});
    layers.emplace(path, std::move(ex.lora));
  }
  io::adapter_config c = io::adapter_config::lora();
  c.target_modules = selected;
  io::detail::set_rank_patterns(c, ranks);
  detail::write_lora_dir(out_dir, c, layers, io::dtype::F32, op);
  return report;
}

}  // namespace peft::merge
