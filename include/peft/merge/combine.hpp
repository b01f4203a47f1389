#pragma once
// Combining LoRA adapters as Hugging Face PEFT's LoraModel.add_weighted_adapter does
// (peft/tuners/lora/model.py; the task-tensor merges are peft/utils/merge_utils.py).
// Inputs: adapters i with factors A_i [r_i, in], B_i [out, r_i], scale s_i (dW_i = s_i·B_i·A_i)
// and user weights w_i. The result has scale 1: PEFT writes the combined adapter with
// r = lora_alpha = new_rank and use_rslora = False, and folds every s_i into the factors.
//
// cat:  A = [w_1·s_1·A_1; ...; w_n·s_n·A_n] (rows), B = [B_1, ..., B_n] (columns);
//       rank Σ r_i; exactly B·A = Σ w_i·s_i·B_i·A_i.
// Non-SVD forms act on the A and on the B tensors separately, each with c_i = sqrt(w_i·s_i)
// (so w_i·s_i must be >= 0: PEFT takes math.sqrt); all r_i must be equal:
//   linear:          A = Σ c_i·A_i,  B = Σ c_i·B_i  (cross terms B_i·A_j are PEFT's behaviour)
//   magnitude_prune: A = Σ c_i·P(A_i), P keeps the k = int(density·numel) largest |x|
//   dare_linear:     A = Σ c_i·R(A_i), R keeps each entry with probability density, then / density
//   ties:            Y_i = P(A_i); e = sign(Σ_i Y_i) ("total") or sign(Σ_i sign(Y_i))
//                    ("frequency"), with e = +1 where that sum is >= 0; m_i = [sign(Y_i) == e];
//                    A = Σ c_i·m_i·Y_i / max(1, Σ m_i)   (elementwise)
//   dare_ties:       as ties with Y_i = R(A_i)
//   (and likewise for B.) Density >= 1 prunes nothing (and draws no random numbers).
// SVD forms act on dW_i = s_i·B_i·A_i with weights c_i = w_i·s_i (PEFT multiplies by s_i in
// the weight although get_delta_weight already includes it, so s_i enters twice; set
// svd_double_scaling = false for c_i = w_i), merge them with the rule of the same name
// (svd: Σ c_i·dW_i), then truncate: dW ≈ U·S·Vᵀ at k = svd_rank (default max r_i),
// B = U_k·S_k, A = V_kᵀ; svd_clamp = q clamps B and A to [-h, h], h = the q-quantile
// (linear interpolation, as torch.quantile) of all their entries. A rank beyond min(out, in)
// is padded with zero rows/columns (the factorization is already exact there).
// One adapter alone is always combined with `linear` (PEFT's _check_add_weighted_adapter).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <numeric>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "peft/core/error.hpp"
#include "peft/core/random.hpp"
#include "peft/core/tensor.hpp"
#include "peft/detail/gemm.hpp"
#include "peft/detail/svd.hpp"
#include "peft/io/adapter_config.hpp"
#include "peft/io/peft_dir.hpp"
#include "peft/io/safetensors.hpp"

namespace peft::merge {

enum class combine_method {
  linear, cat, svd, ties, ties_svd, dare_linear, dare_ties, dare_linear_svd, dare_ties_svd,
  magnitude_prune, magnitude_prune_svd
};
enum class majority_sign { total, frequency };

inline const char* combine_method_name(combine_method m) {
  switch (m) {
    case combine_method::linear: return "linear";
    case combine_method::cat: return "cat";
    case combine_method::svd: return "svd";
    case combine_method::ties: return "ties";
    case combine_method::ties_svd: return "ties_svd";
    case combine_method::dare_linear: return "dare_linear";
    case combine_method::dare_ties: return "dare_ties";
    case combine_method::dare_linear_svd: return "dare_linear_svd";
    case combine_method::dare_ties_svd: return "dare_ties_svd";
    case combine_method::magnitude_prune: return "magnitude_prune";
    case combine_method::magnitude_prune_svd: return "magnitude_prune_svd";
  }
  return "?";
}
// PEFT's combination_type strings.
inline combine_method combine_method_from_name(const std::string& s) {
  for (int i = 0; i <= int(combine_method::magnitude_prune_svd); ++i)
    if (s == combine_method_name(combine_method(i))) return combine_method(i);
  throw value_error("combine: unknown method '" + s +
                    "' (linear, cat, svd, ties, ties_svd, dare_linear, dare_ties, dare_linear_svd, "
                    "dare_ties_svd, magnitude_prune, magnitude_prune_svd)");
}
inline const char* majority_sign_name(majority_sign m) { return m == majority_sign::total ? "total" : "frequency"; }
inline majority_sign majority_sign_from_name(const std::string& s) {
  if (s == "total") return majority_sign::total;
  if (s == "frequency") return majority_sign::frequency;
  throw value_error("combine: unknown majority sign method '" + s + "' (total, frequency)");
}

struct combine_options {
  combine_method method = combine_method::svd;  // PEFT's default combination_type
  double density = 1.0;      // ties / dare / magnitude_prune (and _svd): fraction kept, in (0, 1]
  majority_sign sign = majority_sign::total;  // ties / dare_ties (and _svd)
  std::size_t svd_rank = 0;  // _svd forms; 0: the largest input rank (PEFT's svd_rank=None)
  std::optional<double> svd_clamp;  // _svd forms: quantile in [0, 1] (PEFT's svd_clamp)
  std::uint64_t seed = 0;    // dare's Bernoulli masks
  bool svd_double_scaling = true;  // PEFT: _svd forms weight s_i·B_i·A_i by w_i·s_i
  // PEFT's svd_full_matrices / svd_driver do not change the truncated result (the driver is a
  // CUDA solver choice) and have no counterpart here.
};

// One adapted layer: dW = scale·B·A, A [r, in], B [out, r].
template <class T>
struct lora_pair {
  tensor<T> A;
  tensor<T> B;
  T scale = T(1);
};

inline bool is_svd_method(combine_method m) {
  return m == combine_method::svd || m == combine_method::ties_svd || m == combine_method::dare_linear_svd ||
         m == combine_method::dare_ties_svd || m == combine_method::magnitude_prune_svd;
}
inline bool uses_density(combine_method m) {
  return m != combine_method::linear && m != combine_method::cat && m != combine_method::svd;
}
// Methods that need every input at the same rank (PEFT checks this for them).
inline bool needs_equal_ranks(combine_method m) {
  return m == combine_method::linear || m == combine_method::ties || m == combine_method::dare_linear ||
         m == combine_method::dare_ties || m == combine_method::magnitude_prune;
}

namespace detail {

enum class task_merge { sum, magnitude, ties, dare_linear, dare_ties };

inline task_merge task_merge_of(combine_method m) {
  switch (m) {
    case combine_method::ties: case combine_method::ties_svd: return task_merge::ties;
    case combine_method::dare_linear: case combine_method::dare_linear_svd: return task_merge::dare_linear;
    case combine_method::dare_ties: case combine_method::dare_ties_svd: return task_merge::dare_ties;
    case combine_method::magnitude_prune: case combine_method::magnitude_prune_svd: return task_merge::magnitude;
    default: return task_merge::sum;
  }
}

// merge_utils.magnitude_based_pruning: keeps the k = int(density·numel) entries of largest |x|
// (equal magnitudes: the earlier entry wins; torch.topk leaves that order unspecified).
template <class T>
void magnitude_prune_inplace(matrix<T>& x, double density) {
  if (density >= 1) return;
  const std::size_t n = std::size_t(x.size());
  const std::size_t k = std::size_t(density * double(n));
  if (k >= n) return;
  T* p = x.data();
  std::vector<std::size_t> idx(n);
  std::iota(idx.begin(), idx.end(), std::size_t(0));
  std::nth_element(idx.begin(), idx.begin() + std::ptrdiff_t(k), idx.end(), [p](std::size_t a, std::size_t b) {
    const T fa = std::abs(p[a]), fb = std::abs(p[b]);
    return fa > fb || (fa == fb && a < b);
  });
  for (std::size_t i = k; i < n; ++i) p[idx[i]] = T(0);
}

// merge_utils.random_pruning with rescale: Bernoulli(density) mask, kept entries / density.
template <class T>
void random_prune_inplace(matrix<T>& x, double density, rng& g) {
  if (density >= 1) return;
  T* p = x.data();
  for (Eigen::Index i = 0; i < x.size(); ++i) p[i] = g.bernoulli(density) ? T(p[i] / T(density)) : T(0);
}

// The merge_utils function of `kind` on task tensors X (pruned in place) with weights c.
template <class T>
matrix<T> merge_task_tensors(std::vector<matrix<T>>& X, const std::vector<T>& c, task_merge kind, double density,
                             majority_sign sign, rng& g) {
  for (auto& x : X) {
    if (kind == task_merge::magnitude || kind == task_merge::ties) magnitude_prune_inplace(x, density);
    if (kind == task_merge::dare_linear || kind == task_merge::dare_ties) random_prune_inplace(x, density, g);
  }
  matrix<T> out = matrix<T>::Zero(X[0].rows(), X[0].cols());
  if (kind != task_merge::ties && kind != task_merge::dare_ties) {
    for (std::size_t i = 0; i < X.size(); ++i) out.noalias() += c[i] * X[i];
    return out;
  }
  // calculate_majority_sign_mask + disjoint_merge.
  matrix<T> votes = matrix<T>::Zero(out.rows(), out.cols());
  for (auto& x : X) {
    if (sign == majority_sign::total) votes += x;
    else votes += x.array().sign().matrix();
  }
  const auto elected = ((votes.array() >= T(0)).template cast<T>() * T(2) - T(1)).eval();
  matrix<T> count = matrix<T>::Zero(out.rows(), out.cols());
  for (std::size_t i = 0; i < X.size(); ++i) {
    const auto agree = (X[i].array().sign() == elected).eval();
    out.array() += agree.select(c[i] * X[i].array(), T(0));
    count.array() += agree.template cast<T>();
  }
  out.array() /= count.array().max(T(1));
  return out;
}

// torch.quantile(v, q) with linear interpolation.
template <class T>
T quantile(std::vector<T> v, double q) {
  std::sort(v.begin(), v.end());
  const double pos = q * double(v.size() - 1);
  const std::size_t lo = std::size_t(std::floor(pos)), hi = std::min(lo + 1, v.size() - 1);
  return T(double(v[lo]) + (pos - double(lo)) * (double(v[hi]) - double(v[lo])));
}

// An error's message without its "peft::..._error: " prefix, to wrap it with more context.
inline std::string bare_message(const error& e) {
  const std::string s = e.what();
  const auto at = s.find("_error: ");
  return s.rfind("peft::", 0) == 0 && at != std::string::npos ? s.substr(at + 8) : s;
}

inline std::string weight_str(double w) {
  std::ostringstream os;
  os << w;
  return os.str();
}

// Checks the inputs of one layer; `op` names the operation in messages.
template <class T>
void check_layer(const std::vector<lora_pair<T>>& in, const std::vector<T>& weights, const combine_options& o,
                 const std::string& op) {
  if (in.empty()) throw value_error(op + ": no adapters to combine");
  if (weights.size() != in.size())
    throw value_error(op + ": " + std::to_string(weights.size()) + " weights for " + std::to_string(in.size()) +
                      " adapters");
  const auto& a0 = in[0];
  if (a0.A.dimension() != 2 || a0.B.dimension() != 2 || a0.A.shape()[0] != a0.B.shape()[1] || a0.A.shape()[0] == 0)
    throw shape_error(op + ": adapter 0 has A " + shape_str(a0.A.shape()) + ", B " + shape_str(a0.B.shape()) +
                      " (need A [r,in], B [out,r], r > 0)");
  for (std::size_t i = 0; i < in.size(); ++i) {
    const auto& a = in[i];
    const std::string ai = "adapter " + std::to_string(i);
    if (a.A.dimension() != 2 || a.B.dimension() != 2 || a.A.shape()[0] != a.B.shape()[1] || a.A.shape()[0] == 0)
      throw shape_error(op + ": " + ai + " has A " + shape_str(a.A.shape()) + ", B " + shape_str(a.B.shape()) +
                        " (need A [r,in], B [out,r], r > 0)");
    if (a.A.shape()[1] != a0.A.shape()[1] || a.B.shape()[0] != a0.B.shape()[0])
      throw shape_error(op + ": " + ai + " has A " + shape_str(a.A.shape()) + ", B " + shape_str(a.B.shape()) +
                        " but adapter 0 has A " + shape_str(a0.A.shape()) + ", B " + shape_str(a0.B.shape()) +
                        " (in / out differ)");
    if (needs_equal_ranks(o.method) && a.A.shape()[0] != a0.A.shape()[0])
      throw shape_error(op + ": all adapters need the same rank: " + ai + " has A " + shape_str(a.A.shape()) +
                        ", adapter 0 has A " + shape_str(a0.A.shape()) + " (use cat or an _svd method)");
    if (!std::isfinite(double(weights[i])) || !std::isfinite(double(a.scale)))
      throw value_error(op + ": " + ai + " has weight " + weight_str(double(weights[i])) + ", scale " +
                        weight_str(double(a.scale)) + " (must be finite)");
    if (!is_svd_method(o.method) && o.method != combine_method::cat && double(weights[i]) * double(a.scale) < 0)
      throw value_error(op + ": " + ai + " has weight·scale = " + weight_str(double(weights[i]) * double(a.scale)) +
                        " < 0; PEFT splits it as sqrt(weight·scale) over A and B (use cat or an _svd method)");
  }
  if (uses_density(o.method) && !(o.density > 0 && o.density <= 1))
    throw value_error(op + ": density " + weight_str(o.density) + " outside (0, 1]");
  if (o.svd_clamp && !(*o.svd_clamp >= 0 && *o.svd_clamp <= 1))
    throw value_error(op + ": svd_clamp " + weight_str(*o.svd_clamp) + " outside [0, 1]");
}

// add_weighted_adapter on one layer, without the single-adapter switch to linear (at file
// level that switch depends on the number of adapters, not on how many have this layer).
template <class T>
lora_pair<T> combine_layer(const std::vector<lora_pair<T>>& in, const std::vector<T>& weights,
                           const combine_options& o, rng& g) {
  const std::string op = std::string("combine(") + combine_method_name(o.method) + ")";
  check_layer(in, weights, o, op);
  const std::size_t n = in.size(), d_in = in[0].A.shape()[1], d_out = in[0].B.shape()[0];
  lora_pair<T> res;
  res.scale = T(1);

  if (o.method == combine_method::cat) {
    std::size_t r = 0;
    for (auto& a : in) r += a.A.shape()[0];
    res.A = tensor<T>::from_shape({r, d_in});
    res.B = tensor<T>::from_shape({d_out, r});
    auto A = as_matrix(res.A);
    auto B = as_matrix(res.B);
    Eigen::Index at = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const auto Ai = as_matrix(in[i].A);
      A.middleRows(at, Ai.rows()) = (weights[i] * in[i].scale) * Ai;
      B.middleCols(at, Ai.rows()) = as_matrix(in[i].B);
      at += Ai.rows();
    }
    return res;
  }

  const task_merge kind = task_merge_of(o.method);
  if (!is_svd_method(o.method)) {
    std::vector<T> c(n);
    std::vector<matrix<T>> As(n), Bs(n);
    for (std::size_t i = 0; i < n; ++i) {
      c[i] = T(std::sqrt(double(weights[i]) * double(in[i].scale)));
      As[i] = as_matrix(in[i].A);
      Bs[i] = as_matrix(in[i].B);
    }
    // PEFT merges the lora_A tensors first, then the lora_B tensors (the order of dare's draws).
    res.A = to_tensor(merge_task_tensors(As, c, kind, o.density, o.sign, g));
    res.B = to_tensor(merge_task_tensors(Bs, c, kind, o.density, o.sign, g));
    return res;
  }

  std::vector<T> c(n);
  std::vector<matrix<T>> dW(n);
  std::size_t max_r = 0;
  for (std::size_t i = 0; i < n; ++i) {
    c[i] = o.svd_double_scaling ? T(weights[i] * in[i].scale) : weights[i];
    peft::detail::gemm_into<T>(dW[i], peft::detail::trans::n, peft::detail::trans::n, as_matrix(in[i].B),
                               as_matrix(in[i].A), in[i].scale, op.c_str());  // s_i·B_i·A_i
    max_r = std::max(max_r, in[i].A.shape()[0]);
  }
  const matrix<T> delta = merge_task_tensors(dW, c, kind, o.density, o.sign, g);
  const std::size_t rank = o.svd_rank ? o.svd_rank : max_r;
  const std::size_t k = std::min<std::size_t>(rank, std::min(d_out, d_in));
  const auto svd = peft::detail::truncated_svd<T>(delta, k);
  matrix<T> U = svd.U * svd.S.asDiagonal();  // [out, k]
  matrix<T> Vt = svd.V.transpose();          // [k, in]
  if (o.svd_clamp) {
    std::vector<T> all(U.data(), U.data() + U.size());
    all.insert(all.end(), Vt.data(), Vt.data() + Vt.size());
    const T hi = quantile(std::move(all), *o.svd_clamp), lo = -hi;
    // torch.clamp(x, lo, hi) = min(max(x, lo), hi), also when lo > hi.
    U = U.array().max(lo).min(hi).matrix();
    Vt = Vt.array().max(lo).min(hi).matrix();
  }
  res.A = zeros<T>({rank, d_in});
  res.B = zeros<T>({d_out, rank});
  as_matrix(res.A).topRows(Eigen::Index(k)) = Vt;
  as_matrix(res.B).leftCols(Eigen::Index(k)) = U;
  return res;
}

}  // namespace detail

// Combines the adapters of one layer (inputs with dW_i = scale_i·B_i·A_i, user weights w_i).
// The result has scale 1 (its B·A is the combined dW). Shapes must agree (same in and out;
// the same rank for linear, ties, dare_linear, dare_ties, magnitude_prune), else shape_error;
// a weights count that differs, a density outside (0, 1] for the methods that prune, a
// negative weight·scale for the non-SVD forms, or svd_clamp outside [0, 1] is a value_error.
template <class T>
lora_pair<T> combine(const std::vector<lora_pair<T>>& in, const std::vector<T>& weights, const combine_options& o) {
  combine_options eff = o;
  if (in.size() == 1) eff.method = combine_method::linear;
  rng g(o.seed);
  return detail::combine_layer(in, weights, eff, g);
}

// ---- PEFT adapter directories ----

namespace detail {

struct layer_rank {
  std::string path;
  std::size_t r = 0;
  double alpha = 0;
};

// Writes <dir>/adapter_model.safetensors (PEFT keys, `type`, metadata format=pt) then
// <dir>/adapter_config.json, each atomically (temporary file, then rename), as
// io::save_peft_adapter does.
inline void write_lora_dir(const std::string& dir, io::adapter_config c,
                           const std::map<std::string, lora_pair<double>>& layers, io::dtype type,
                           const std::string& op) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw io_error(op + ": cannot create directory '" + dir + "': " + ec.message());
  io::safetensors_file f;
  for (auto& [path, L] : layers) {
    f.add(io::peft_key_prefix + path + ".lora_A.weight", L.A, type);
    f.add(io::peft_key_prefix + path + ".lora_B.weight", L.B, type);
  }
  f.metadata()["format"] = "pt";
  f.save((std::filesystem::path(dir) / io::adapter_weights_file).string());
  c.inference_mode = true;
  c.save((std::filesystem::path(dir) / io::adapter_config_file).string());
}

// A plain LoRA adapter directory read for combining: per layer A, B (as double) and scale.
struct lora_dir {
  std::string dir;
  io::adapter_config config;
  io::dtype type = io::dtype::F32;  // of its tensors
  std::map<std::string, lora_pair<double>> layers;
};

inline lora_dir read_lora_dir(const std::string& dir, const std::string& op) {
  lora_dir d;
  d.dir = dir;
  const std::string cfg_path = (std::filesystem::path(dir) / io::adapter_config_file).string();
  const std::string st_path = (std::filesystem::path(dir) / io::adapter_weights_file).string();
  d.config = io::adapter_config::load(cfg_path);
  const io::adapter_config& c = d.config;
  const std::string w = op + ": adapter '" + dir + "'";
  if (!c.is_lora()) throw io_error(w + ": peft_type is '" + c.peft_type + "', combine needs LORA");
  if (c.use_dora)
    throw io_error(w + ": use_dora = true; combining folds the scale into B·A, which DoRA's magnitude "
                   "normalisation does not allow (PEFT gives a wrong adapter there)");
  io::check_supported(c, "adapter_config '" + cfg_path + "'");
  if (c.modules_to_save && !c.modules_to_save->empty())
    throw io_error(w + ": modules_to_save is set; combining saved modules is not supported");
  const auto file = io::safetensors_file::load(st_path);
  const std::string prefix = io::peft_key_prefix;
  std::map<std::string, std::pair<std::string, std::string>> keys;  // path -> (A key, B key)
  for (auto& k : file.names()) {
    auto ends = [&](const std::string& s) {
      return k.size() > prefix.size() + s.size() && k.compare(0, prefix.size(), prefix) == 0 &&
             k.compare(k.size() - s.size(), s.size(), s) == 0;
    };
    if (ends(".lora_A.weight"))
      keys[k.substr(prefix.size(), k.size() - prefix.size() - 14)].first = k;
    else if (ends(".lora_B.weight"))
      keys[k.substr(prefix.size(), k.size() - prefix.size() - 14)].second = k;
    else
      throw io_error(w + ": tensor '" + k + "' in '" + st_path +
                     "' is not a lora_A / lora_B weight (combine handles plain LoRA on Linear layers)");
  }
  if (keys.empty()) throw io_error(w + ": '" + st_path + "' holds no LoRA tensors");
  for (auto& [path, ab] : keys) {
    if (ab.first.empty() || ab.second.empty())
      throw io_error(w + ": layer '" + path + "' has " + (ab.first.empty() ? "lora_B but no lora_A" : "lora_A but no lora_B") +
                     " in '" + st_path + "'");
    const auto& ea = file.at(ab.first);
    const auto& eb = file.at(ab.second);
    if (ea.shape.size() != 2 || eb.shape.size() != 2 || ea.shape[0] != eb.shape[1] || ea.shape[0] == 0)
      throw io_error(w + ": layer '" + path + "' has lora_A " + shape_str(ea.shape) + " and lora_B " +
                     shape_str(eb.shape) + " in '" + st_path + "' (need [r,in] and [out,r])");
    std::size_t r = c.r;
    double alpha = c.lora_alpha;
    if (auto* rv = peft::detail::pattern_value(c.rank_pattern, path)) r = *rv;
    if (auto* av = peft::detail::pattern_value(c.alpha_pattern, path)) alpha = *av;
    if (ea.shape[0] != r)
      throw io_error(w + ": tensor '" + ab.first + "' has shape " + shape_str(ea.shape) +
                     " but the config (r / rank_pattern) gives r = " + std::to_string(r));
    if (d.layers.empty()) d.type = io::is_float_dtype(ea.type) ? ea.type : io::dtype::F32;
    lora_pair<double> L;
    L.A = file.get<double>(ab.first);
    L.B = file.get<double>(ab.second);
    L.scale = c.use_rslora ? alpha / std::sqrt(double(r)) : alpha / double(r);
    d.layers.emplace(path, std::move(L));
  }
  return d;
}

// PEFT's target_modules of the combined adapter: the union of the sets, or "(a)|(b)|..." of
// the regexes; a mix is an error, as in PEFT.
inline io::module_spec combined_targets(const std::vector<lora_dir>& ds, const std::string& op) {
  bool lists = false, strings = false;
  for (auto& d : ds) {
    if (std::holds_alternative<std::vector<std::string>>(d.config.target_modules)) lists = true;
    else if (std::holds_alternative<std::string>(d.config.target_modules)) strings = true;
    else throw io_error(op + ": adapter '" + d.dir + "' has target_modules null");
  }
  if (lists && strings)
    throw value_error(op + ": the adapters mix target_modules lists and regex strings (PEFT refuses this too)");
  if (lists) {
    std::set<std::string> u;
    for (auto& d : ds)
      for (auto& t : std::get<std::vector<std::string>>(d.config.target_modules)) u.insert(t);
    return std::vector<std::string>(u.begin(), u.end());
  }
  bool all_linear = true;
  for (auto& d : ds) all_linear = all_linear && std::get<std::string>(d.config.target_modules) == "all-linear";
  if (all_linear) return std::string("all-linear");
  std::string re;
  for (auto& d : ds) {
    const auto& s = std::get<std::string>(d.config.target_modules);
    if (s == "all-linear")
      throw value_error(op + ": adapter '" + d.dir + "' targets all-linear and another a regex; cannot join them");
    re += (re.empty() ? "(" : "|(") + s + ")";
  }
  return re;
}

}  // namespace detail

// Combines PEFT LoRA adapter directories (adapter_config.json + adapter_model.safetensors) into
// one at out_dir, layer by layer as add_weighted_adapter does. Every layer that any adapter
// adapts is combined from the adapters that have it. The new config is the first adapter's
// with r = lora_alpha = the new rank (scale 1; per-layer ranks that differ go to rank_pattern /
// alpha_pattern), use_rslora = false, target_modules joined as PEFT joins them; tensors keep
// the first adapter's dtype. DoRA, VeRA and modules_to_save inputs are refused.
// dare's masks for layer j (in path order) come from rng(seed).fork(j).
inline void combine_peft_dirs(const std::vector<std::string>& dirs, const std::vector<double>& weights,
                              const combine_options& o, const std::string& out_dir) {
  const std::string op = std::string("combine_peft_dirs(") + combine_method_name(o.method) + ")";
  if (dirs.empty()) throw value_error(op + ": no adapter directories");
  if (weights.size() != dirs.size())
    throw value_error(op + ": " + std::to_string(weights.size()) + " weights for " + std::to_string(dirs.size()) +
                      " adapter directories");
  combine_options eff = o;
  if (dirs.size() == 1) eff.method = combine_method::linear;
  std::vector<detail::lora_dir> ds;
  for (auto& d : dirs) ds.push_back(detail::read_lora_dir(d, op));

  std::set<std::string> paths;
  for (auto& d : ds)
    for (auto& [p, L] : d.layers) paths.insert(p);
  std::map<std::string, lora_pair<double>> out;
  std::vector<detail::layer_rank> ranks;
  std::uint64_t index = 0;
  for (auto& path : paths) {
    std::vector<lora_pair<double>> in;
    std::vector<double> w;
    std::string who;
    for (std::size_t i = 0; i < ds.size(); ++i) {
      auto it = ds[i].layers.find(path);
      if (it == ds[i].layers.end()) continue;
      in.push_back(it->second);
      w.push_back(weights[i]);
      who += (who.empty() ? "'" : ", '") + ds[i].dir + "'";
    }
    rng g = rng(o.seed).fork(index++);
    try {
      out.emplace(path, detail::combine_layer(in, w, eff, g));
    } catch (const shape_error& e) {
      throw shape_error(op + ": layer '" + path + "' of " + who + ": " + detail::bare_message(e));
    } catch (const value_error& e) {
      throw value_error(op + ": layer '" + path + "' of " + who + ": " + detail::bare_message(e));
    }
    ranks.push_back({path, out[path].A.shape()[0], double(out[path].A.shape()[0])});
  }
  io::adapter_config c = ds.front().config;
  c.target_modules = detail::combined_targets(ds, op);
  c.use_rslora = false;
  c.use_dora = false;
  io::detail::set_rank_patterns(c, ranks);
  detail::write_lora_dir(out_dir, c, out, ds.front().type, op);
}

}  // namespace peft::merge
