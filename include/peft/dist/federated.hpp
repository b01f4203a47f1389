#pragma once
// Federated aggregation of LoRA-family adapters: what a server does with the adapter states its
// clients send back after a round of local training. Pure math (no MPI): the helpers take a list
// of client states (nn::state_dict, e.g. from model.get_state_dict()) and update them in place;
// the communicator overloads do the same when each rank holds one client's model, with one
// all-reduce (and for FedSVD one broadcast).
//
// Client weights w_k default to equal; pass the clients' sample counts n_k for FedAvg's n_k / n.
// Every average is  X̄ = Σ_k w_k·X_k / Σ_k w_k  (summed in client order, so the list and the
// communicator versions give the same bits on a thread group).
//
// FedSA-LoRA (Guo et al., "Selective Aggregation for Low-Rank Adaptation in Federated Learning",
// ICLR 2025, arXiv:2410.01463): A learns what clients share, B what is client-specific, so only
// the A matrices go to the server:
//     A_k ← Σ_j w_j·A_j / Σ_j w_j   for every client k;   B_k unchanged (never leaves the client).
//
// Fed-SB (Singhal et al., "Fed-SB: A Silver Bullet for Extreme Communication Efficiency and
// Performance in (Private) Federated LoRA Fine-Tuning", arXiv:2502.15436; built on LoRA-SB /
// LoRA-XS, ΔW = s·B·R·A with A, B frozen and shared, only R [r, r] trained): the server averages
// R alone,  R̄ = Σ_k w_k·R_k / Σ_k w_k,  and the aggregate is EXACT:
//     s·B·R̄·A = Σ_k w_k·(s·B·R_k·A) / Σ_k w_k     (the mean of the clients' updates),
// which averaging LoRA's A and B separately is not (mean(B)·mean(A) ≠ mean(B·A)).
// Communication: r² numbers per layer, independent of the number of clients.
//
// FedSVD (Lee et al., "FedSVD: Adaptive Orthogonalization for Private Federated Learning with
// LoRA", NeurIPS 2025, arXiv:2505.12805; code github.com/seanie12/fed-svd, misc/utils.py
// reinit_lora): clients train only B (A frozen and shared, as FFA-LoRA); the server averages B,
// then re-factorizes the product with the previous A by an SVD,
//     B̄ = Σ_k w_k·B_k / Σ_k w_k,    B̄·A = U·Σ·Vᵀ (rank ≤ r),    A ← V_rᵀ,    B ← U_r·Σ_r,
// so B·A is unchanged while A becomes orthonormal rows (A·Aᵀ = I_r) spanning the principal input
// directions of the aggregate update; the scaling s is untouched. (The reference does this every
// recalculate_svd_period rounds; here `refactor` says whether this round does.) We never form the
// [out, in] product: with Aᵀ = Q·R (thin QR, Q [in, r]) and B̄·Rᵀ = U·Σ·Wᵀ (an [out, r] SVD),
// B̄·A = U·Σ·(Q·W)ᵀ, so A ← (Q·W)ᵀ and B ← U·Σ: O((out + in)·r²) instead of O(out·in·r).
//
// Names (suffixes of the full parameter names, PEFT's): "lora_A.weight", "lora_B.weight",
// "lora_latent_mapping.weight" (LoRA-XS / LoRA-SB's R); a layer's A, B and R share the prefix.
#include <Eigen/Core>
#include "peft/detail/decompositions.hpp"
#include "peft/detail/gemm.hpp"
#include <cmath>
#include <cstddef>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "peft/core/error.hpp"
#include "peft/core/tensor.hpp"
#include "peft/dist/communicator.hpp"
#include "peft/nn/module.hpp"

namespace peft::dist {

struct federated_names {
  std::string a = "lora_A.weight";
  std::string b = "lora_B.weight";
  std::string r = "lora_latent_mapping.weight";
};

namespace detail {

inline bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Validated weights (equal when empty) and their sum.
inline std::pair<std::vector<double>, double> fed_weights(const char* op, std::size_t clients,
                                                          const std::vector<double>& w) {
  if (clients == 0) throw value_error(std::string(op) + ": no clients");
  std::vector<double> out = w.empty() ? std::vector<double>(clients, 1.0) : w;
  if (out.size() != clients)
    throw value_error(std::string(op) + ": " + std::to_string(w.size()) + " weights for " +
                      std::to_string(clients) + " clients");
  double sum = 0;
  for (double x : out) {
    if (!(x >= 0) || !std::isfinite(x))
      throw value_error(std::string(op) + ": invalid client weight " + std::to_string(x) +
                        " (must be finite and >= 0)");
    sum += x;
  }
  if (!(sum > 0)) throw value_error(std::string(op) + ": client weights sum to 0");
  return {std::move(out), sum};
}

template <class T>
const tensor<T>& fed_find(const char* op, const nn::state_dict<T>& sd, std::size_t client,
                          const std::string& key) {
  auto it = sd.find(key);
  if (it == sd.end())
    throw value_error(std::string(op) + ": client " + std::to_string(client) + " has no '" + key +
                      "'");
  return it->second;
}

// Keys of client 0 ending with suffix, in name order.
template <class T>
std::vector<std::string> fed_keys(const nn::state_dict<T>& sd, const std::string& suffix) {
  std::vector<std::string> out;
  for (const auto& [k, v] : sd)
    if (ends_with(k, suffix)) out.push_back(k);
  return out;
}

// Σ w_k·X_k / Σ w_k of `key` over the clients, written back to every client.
template <class T>
void fed_average_key(const char* op, std::vector<nn::state_dict<T>>& clients,
                     const std::vector<double>& w, double wsum, const std::string& key) {
  const tensor<T>& first = fed_find(op, clients[0], 0, key);
  tensor<T> acc = zeros<T>(shape_of(first));
  auto av = as_vector(acc);
  for (std::size_t k = 0; k < clients.size(); ++k) {
    const tensor<T>& x = fed_find(op, clients[k], k, key);
    if (x.shape() != first.shape())
      throw shape_error(std::string(op) + ": '" + key + "' is " + shape_str(x.shape()) +
                        " on client " + std::to_string(k) + " but " + shape_str(first.shape()) +
                        " on client 0");
    av += T(w[k]) * as_vector(x);
  }
  av *= T(1.0 / wsum);
  for (auto& c : clients) c[key] = acc;
}

// Throws unless every client holds client 0's tensor `key` bit for bit (a frozen, shared factor).
template <class T>
void fed_check_shared(const char* op, const std::vector<nn::state_dict<T>>& clients,
                      const std::string& key, const char* why) {
  const tensor<T>& first = fed_find(op, clients[0], 0, key);
  for (std::size_t k = 1; k < clients.size(); ++k) {
    const tensor<T>& x = fed_find(op, clients[k], k, key);
    if (x.shape() != first.shape() || !(as_vector(x).array() == as_vector(first).array()).all())
      throw value_error(std::string(op) + ": client " + std::to_string(k) + "'s '" + key +
                        "' differs from client 0's (" + why + ")");
  }
}

// The parameters of a module whose names end with suffix, in model order.
template <class T>
std::vector<std::pair<std::string, variable<T>>> fed_params(const nn::module<T>& m,
                                                            const std::string& suffix) {
  std::vector<std::pair<std::string, variable<T>>> out;
  for (auto& [n, v] : m.named_parameters())
    if (ends_with(n, suffix)) out.emplace_back(n, v);
  return out;
}
template <class T>
variable<T> fed_param(const char* op, const nn::module<T>& m, const std::string& name) {
  for (auto& [n, v] : m.named_parameters())
    if (n == name) return v;
  throw value_error(std::string(op) + ": the model has no parameter '" + name + "'");
}

// Every rank's tensors ← Σ_k w_k·X_k / Σ_k w_k over ranks, in one all-reduce.
template <class T>
void fed_allreduce_mean(const char* op, communicator& comm,
                        std::vector<std::pair<std::string, variable<T>>>& params, double weight) {
  if (!(weight >= 0) || !std::isfinite(weight))
    throw value_error(std::string(op) + ": invalid client weight " + std::to_string(weight) +
                      " (must be finite and >= 0)");
  std::size_t len = 0;
  for (auto& [n, v] : params) len += v.numel();
  std::vector<T> buf(len + 1);
  std::size_t off = 0;
  const T w = T(weight);
  for (auto& [n, v] : params) {
    vector_map<T>(buf.data() + off, Eigen::Index(v.numel())) = w * as_vector(std::as_const(v).value());
    off += v.numel();
  }
  buf[len] = w;
  comm.allreduce_sum(std::span<T>(buf));
  const double total = double(buf[len]);
  if (!(total > 0)) throw value_error(std::string(op) + ": client weights sum to 0");
  const T inv = T(1.0 / total);
  off = 0;
  for (auto& [n, v] : params) {
    as_vector(v.value()) = inv * const_vector_map<T>(buf.data() + off, Eigen::Index(v.numel()));
    off += v.numel();
  }
}

// A [r, in], B [out, r] with r <= min(in, out).
template <class T>
void fedsvd_check(const tensor<T>& A, const tensor<T>& B) {
  if (A.dimension() != 2 || B.dimension() != 2 || B.shape()[1] != A.shape()[0])
    throw shape_error("fedsvd_refactor: A " + shape_str(A.shape()) + ", B " + shape_str(B.shape()) +
                      " (expected A [r,in], B [out,r])");
  if (A.shape()[0] > A.shape()[1] || A.shape()[0] > B.shape()[0])
    throw shape_error("fedsvd_refactor: rank " + std::to_string(A.shape()[0]) +
                      " exceeds min(in, out) of A " + shape_str(A.shape()) + ", B " +
                      shape_str(B.shape()));
}

}  // namespace detail

// ---------------------------------------------------------------- on lists of client states

// FedAvg of every tensor whose name satisfies `select` (all of them by default): each client's
// tensor ← Σ_k w_k·X_k / Σ_k w_k. Every client must hold client 0's selected keys with the same
// shapes. Returns how many tensors were averaged.
template <class T>
std::size_t fedavg(std::vector<nn::state_dict<T>>& clients, const std::vector<double>& weights = {},
                   const std::function<bool(const std::string&)>& select = {}) {
  auto [w, wsum] = detail::fed_weights("fedavg", clients.size(), weights);
  std::vector<std::string> keys;
  for (const auto& [k, v] : clients[0])
    if (!select || select(k)) keys.push_back(k);
  for (const auto& k : keys) detail::fed_average_key("fedavg", clients, w, wsum, k);
  return keys.size();
}

// FedSA-LoRA: average the A matrices, keep every client's B. Returns the number of layers.
template <class T>
std::size_t fedsa_aggregate(std::vector<nn::state_dict<T>>& clients,
                            const std::vector<double>& weights = {},
                            const federated_names& names = {}) {
  auto [w, wsum] = detail::fed_weights("fedsa", clients.size(), weights);
  const auto keys = detail::fed_keys(clients[0], names.a);
  if (keys.empty()) throw value_error("fedsa: no '" + names.a + "' tensors in the client states");
  for (const auto& k : keys) detail::fed_average_key("fedsa", clients, w, wsum, k);
  return keys.size();
}

// Fed-SB: average only the r×r cores R; A and B must be shared (identical on every client).
// Returns the number of layers.
template <class T>
std::size_t fed_sb_aggregate(std::vector<nn::state_dict<T>>& clients,
                             const std::vector<double>& weights = {},
                             const federated_names& names = {}) {
  auto [w, wsum] = detail::fed_weights("fed_sb", clients.size(), weights);
  const auto keys = detail::fed_keys(clients[0], names.r);
  if (keys.empty()) throw value_error("fed_sb: no '" + names.r + "' tensors in the client states");
  for (const auto& k : keys) {
    const std::string prefix = k.substr(0, k.size() - names.r.size());
    const char* why = "Fed-SB needs frozen A and B shared by all clients";
    detail::fed_check_shared("fed_sb", clients, prefix + names.a, why);
    detail::fed_check_shared("fed_sb", clients, prefix + names.b, why);
    const tensor<T>& R = clients[0].at(k);
    if (R.dimension() != 2 || R.shape()[0] != R.shape()[1])
      throw shape_error("fed_sb: '" + k + "' is " + shape_str(R.shape()) + ", expected [r,r]");
    detail::fed_average_key("fed_sb", clients, w, wsum, k);
  }
  return keys.size();
}

// FedSVD's re-factorization of one layer, in place: B·A is preserved (within rounding) and A
// gets orthonormal rows, A = V_rᵀ, B = U_r·Σ_r from the SVD of B·A (see the top of this file).
// A [r, in], B [out, r], r <= min(in, out). Computed in double.
template <class T>
void fedsvd_refactor(tensor<T>& A, tensor<T>& B) {
  detail::fedsvd_check(A, B);
  const matrix<double> At = as_matrix(A).template cast<double>().transpose();  // [in, r]
  const auto qr = peft::detail::thin_qr<double>(At, true);                     // Q [in, r], R [r, r]
  using peft::detail::trans;
  const matrix<double> Bd = as_matrix(B).template cast<double>();  // [out, r]
  const matrix<double> M =
      peft::detail::gemm_new<double>(trans::n, trans::t, Bd, qr.R, 1.0, "fedsvd");  // [out, r]
  const auto svd = peft::detail::thin_svd<double>(M, true, true);
  // (Q·W)ᵀ = Wᵀ·Qᵀ, formed transposed directly.
  const matrix<double> An =
      peft::detail::gemm_new<double>(trans::t, trans::t, svd.V, qr.Q, 1.0, "fedsvd");  // [r, in]
  const matrix<double> Bn = svd.U * svd.S.asDiagonal();  // [out, r]
  as_matrix(A) = An.template cast<T>();
  as_matrix(B) = Bn.template cast<T>();
}

// FedSVD: average the B matrices (A must be shared), then, when `refactor`, re-factorize every
// layer's B̄·A so A has orthonormal rows. Returns the number of layers.
template <class T>
std::size_t fedsvd_aggregate(std::vector<nn::state_dict<T>>& clients,
                             const std::vector<double>& weights = {}, bool refactor = true,
                             const federated_names& names = {}) {
  auto [w, wsum] = detail::fed_weights("fedsvd", clients.size(), weights);
  const auto keys = detail::fed_keys(clients[0], names.b);
  if (keys.empty()) throw value_error("fedsvd: no '" + names.b + "' tensors in the client states");
  for (const auto& kb : keys) {
    const std::string ka = kb.substr(0, kb.size() - names.b.size()) + names.a;
    detail::fed_check_shared("fedsvd", clients, ka,
                             "FedSVD clients train B only; A is frozen and shared");
    detail::fed_average_key("fedsvd", clients, w, wsum, kb);
    if (!refactor) continue;
    tensor<T> A = clients[0].at(ka), B = clients[0].at(kb);
    fedsvd_refactor(A, B);
    for (auto& c : clients) {
      c[ka] = A;
      c[kb] = B;
    }
  }
  return keys.size();
}

// ---------------------------------------------------------------- one client per rank

// FedSA-LoRA over ranks: this rank's A matrices ← the weighted mean over ranks; B stays.
// Collective (one all-reduce). Returns the number of layers.
template <class T>
std::size_t fedsa_aggregate(communicator& comm, nn::module<T>& client, double weight = 1.0,
                            const federated_names& names = {}) {
  auto ps = detail::fed_params(client, names.a);
  if (ps.empty()) throw value_error("fedsa: the model has no '" + names.a + "' parameters");
  detail::fed_allreduce_mean("fedsa", comm, ps, weight);
  return ps.size();
}

// Fed-SB over ranks: the R cores ← the weighted mean over ranks (A and B are assumed shared:
// same seed / same initialization on every rank). Collective (one all-reduce).
template <class T>
std::size_t fed_sb_aggregate(communicator& comm, nn::module<T>& client, double weight = 1.0,
                             const federated_names& names = {}) {
  auto ps = detail::fed_params(client, names.r);
  if (ps.empty()) throw value_error("fed_sb: the model has no '" + names.r + "' parameters");
  detail::fed_allreduce_mean("fed_sb", comm, ps, weight);
  return ps.size();
}

// FedSVD over ranks: B ← weighted mean over ranks; when `refactor`, rank 0 re-factorizes every
// layer and broadcasts the new A and B (one buffer), so all ranks hold the same bits whatever
// their SVD would have rounded to. Collective (one all-reduce, and one broadcast if refactor).
template <class T>
std::size_t fedsvd_aggregate(communicator& comm, nn::module<T>& client, double weight = 1.0,
                             bool refactor = true, const federated_names& names = {}) {
  auto bs = detail::fed_params(client, names.b);
  if (bs.empty()) throw value_error("fedsvd: the model has no '" + names.b + "' parameters");
  // Checked on every rank before any collective (a rank failing alone would leave the others
  // waiting): each B has its A, with shapes the re-factorization accepts.
  std::vector<variable<T>> as;
  std::size_t len = 0;
  for (auto& [n, b] : bs) {
    as.push_back(detail::fed_param("fedsvd", client, n.substr(0, n.size() - names.b.size()) + names.a));
    if (refactor) detail::fedsvd_check(std::as_const(as.back()).value(), std::as_const(b).value());
    len += as.back().numel() + b.numel();
  }
  detail::fed_allreduce_mean("fedsvd", comm, bs, weight);
  if (!refactor) return bs.size();
  std::vector<T> buf(len);
  if (comm.rank() == 0) {
    std::size_t off = 0;
    for (std::size_t i = 0; i < bs.size(); ++i) {
      tensor<T>& A = as[i].value();
      tensor<T>& B = bs[i].second.value();
      fedsvd_refactor(A, B);
      vector_map<T>(buf.data() + off, Eigen::Index(A.size())) = as_vector(std::as_const(A));
      off += A.size();
      vector_map<T>(buf.data() + off, Eigen::Index(B.size())) = as_vector(std::as_const(B));
      off += B.size();
    }
  }
  comm.broadcast(std::span<T>(buf), 0);
  if (comm.rank() != 0) {
    std::size_t off = 0;
    for (std::size_t i = 0; i < bs.size(); ++i) {
      tensor<T>& A = as[i].value();
      tensor<T>& B = bs[i].second.value();
      as_vector(A) = const_vector_map<T>(buf.data() + off, Eigen::Index(A.size()));
      off += A.size();
      as_vector(B) = const_vector_map<T>(buf.data() + off, Eigen::Index(B.size()));
      off += B.size();
    }
  }
  return bs.size();
}

}  // namespace peft::dist
