#pragma once
// Data-parallel training: every rank holds the same model, trains on its own shard of the global
// batch, and before each optimizer step the ranks average their gradients. Only the parameters
// the optimizer updates (the adapter's) are exchanged, packed into ONE buffer and reduced with
// ONE all-reduce per step:
//
//   dist::data_parallel<float> dp(comm, model.trainable_parameters());   // or (comm, optimizer)
//   dp.broadcast_parameters();                     // every rank starts from rank 0's values
//   for (...) {
//     auto loss = loss_fn(model(x_shard), y_shard);   // mean over this rank's shard
//     loss.backward();
//     auto s = dp.sync(n_shard, loss.item());          // grads ← weighted mean over ranks
//     opt.step(); opt.zero_grad();
//   }
//
// sync(weight): each rank contributes weight·g; the result is Σ weight_k·g_k / Σ weight_k. With a
// loss that is a mean over the shard, weight = the shard's sample count makes the result the
// gradient of the mean over the global batch even for unequal shards; equal shards may pass 1.
// A parameter without a gradient on some rank counts as a zero gradient there; one without a
// gradient on every rank stays without one (the optimizer skips it, as one process would).
//
// Projected optimizers (projected<Base, synced_projector<P>>): between basis refreshes, each
// projected parameter sends its low-rank projection instead of the full gradient (the
// communication drops by the projection ratio); see synced_projector.hpp for why this is exact.
// At a parameter's refresh step (its optimizer step count is a refresh step of its projector,
// including the first step) its FULL gradient is all-reduced instead, so a data-dependent basis
// (GaLore's SVD, COAP, DCT column selection) is computed on every rank from the same averaged
// gradient: identical inputs, identical bases, no broadcast needed. Weight decay and maximize
// are folded in before projecting exactly as rule_optimizer does. Flora's seeded bases agree
// because projected_options::seed is the same on every rank (pass the same options everywhere).
//
// Requirements: all ranks construct the same model and optimizer and call sync in lockstep (the
// buffer layout depends on the step counts). Payload per sync: see plan().
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "peft/autograd/variable.hpp"
#include "peft/core/error.hpp"
#include "peft/core/tensor.hpp"
#include "peft/dist/communicator.hpp"
#include "peft/dist/synced_projector.hpp"
#include "peft/nn/module.hpp"
#include "peft/optim/rule_optimizer.hpp"

namespace peft::dist {

// What one sync did.
struct sync_stats {
  std::size_t bytes = 0;              // all-reduce payload (this rank's buffer)
  std::size_t full_tensors = 0;       // gradients sent at full size
  std::size_t projected_tensors = 0;  // gradients sent as low-rank projections
  double loss = 0;                    // Σ weight_k·loss_k / Σ weight_k
  double weight = 0;                  // Σ weight_k
};

// All-reduce payload per step, in bytes. Both figures include header_bytes (one flag per tensor,
// the weight and the loss, which ride in the same buffer).
struct comm_plan {
  std::size_t full_bytes = 0;       // every gradient at full size: plain data parallel, and a
                                    // projected run at a refresh step of every projector
  std::size_t projected_bytes = 0;  // between refreshes (== full_bytes without projection)
  std::size_t header_bytes = 0;
  std::size_t projected_tensors = 0;
  double ratio() const { return projected_bytes ? double(full_bytes) / double(projected_bytes) : 0; }
};

// [begin, end) of rank's contiguous share of n items; the first n % size ranks get one more.
inline std::pair<std::size_t, std::size_t> shard_range(std::size_t n, int rank, int size) {
  if (size < 1 || rank < 0 || rank >= size)
    throw value_error("shard_range: rank " + std::to_string(rank) + " of " + std::to_string(size));
  const std::size_t r = std::size_t(rank), s = std::size_t(size);
  const std::size_t base = n / s, extra = n % s;
  const std::size_t begin = r * base + std::min(r, extra);
  return {begin, begin + base + (r < extra ? 1 : 0)};
}

// Every parameter of `m` (frozen ones included) ← root's values, in one broadcast.
template <class T>
void broadcast_module(communicator& comm, nn::module<T>& m, int root = 0);

template <class T>
class data_parallel {
 public:
  using value_type = T;

  // Plain: the gradients of `params` (the optimizer's parameters) at full size.
  data_parallel(communicator& comm, std::vector<variable<T>> params)
      : comm_(&comm), params_(std::move(params)) {
    init_sites();
  }

  // Any optimizer: its parameters, at full size.
  data_parallel(communicator& comm, const optim::optimizer<T>& opt)
      : data_parallel(comm, opt.parameters()) {}

  // A projected optimizer whose projectors are synced_projector<P>: low-rank exchange between
  // refreshes. The optimizer must outlive this object.
  template <class Rule, class P, class Storage>
  data_parallel(communicator& comm,
                optim::rule_optimizer<T, Rule, synced_projector<P>, Storage>& opt)
      : comm_(&comm), params_(opt.parameters()) {
    init_sites();
    using engine = optim::rule_optimizer<T, Rule, synced_projector<P>, Storage>;
    std::vector<std::size_t> group_of;
    for (std::size_t g = 0; g < opt.num_groups(); ++g)
      group_of.insert(group_of.end(), opt.group(g).params.size(), g);
    for (std::size_t i = 0; i < sites_.size(); ++i) {
      if (!opt.is_projected(i)) continue;
      auto& s = sites_[i];
      const shape_t shape = params_[i].shape();
      s.projected = true;
      s.rows = shape[0];
      s.cols = shape[1];
      const auto ls = opt.projector(i).low_shape(s.rows, s.cols);
      s.low_rows = ls.first;
      s.low_cols = ls.second;
    }
    engine* o = &opt;
    // The hooks below only make the calls the optimizer's own step would make, one step early.
    auto proj = [o](std::size_t i) -> synced_projector<P>& { return o->projector(i); };
    needs_full_ = [o](std::size_t i) { return o->projector(i).needs_refresh(o->step_count(i)); };
    project_ = [o, proj, group_of](std::size_t i, const tensor<T>* grad, const tensor<T>& w,
                                   std::size_t rows, std::size_t cols) -> matrix<T> {
      const auto& g = o->group(group_of[i]);
      const bool neg = Rule::grad_sign(g) < 0;
      const double l2 = Rule::l2_decay(g);
      const std::size_t t = o->step_count(i);
      if (grad && !neg && l2 == 0) return proj(i).project_local(as_matrix(*grad, rows, cols), t);
      // G' = sign·G + l2·W, with the very expressions rule_optimizer uses (same rounding).
      matrix<T> zero;
      if (!grad) zero.setZero(static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols));
      const matrix_cref<T> gm =
          grad ? matrix_cref<T>(as_matrix(*grad, rows, cols)) : matrix_cref<T>(zero);
      const auto wm = as_matrix(w, rows, cols);
      matrix<T> G(static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols));
      if (l2 != 0) {
        const T wd = T(l2);
        if (neg)
          G.array() = -gm.array() + wd * wm.array();
        else
          G.array() = gm.array() + wd * wm.array();
      } else {
        if (neg)
          G.array() = -gm.array();
        else
          G = gm;
      }
      return proj(i).project_local(G, t);
    };
    set_synced_ = [o, proj](std::size_t i, matrix<T> low) {
      proj(i).set_synced(std::move(low), o->step_count(i));
    };
  }

  communicator& comm() const { return *comm_; }
  const std::vector<variable<T>>& parameters() const { return params_; }
  bool projected() const { return static_cast<bool>(project_); }

  // Every tracked parameter ← root's values (one broadcast). Collective.
  void broadcast_parameters(int root = 0) {
    pack_values();
    comm_->broadcast(std::span<T>(vbuf_), root);
    if (comm_->rank() != root) unpack_values();
  }

  // Grads ← weighted mean over ranks (see the top of this file); call after backward and before
  // the optimizer step. loss is this rank's loss, averaged the same way for logging. Collective.
  sync_stats sync(double weight = 1.0, double loss = 0.0) {
    if (!(weight >= 0) || !std::isfinite(weight))
      throw value_error("data_parallel::sync: invalid weight " + peft::detail::hparam_str(weight) +
                        " (must be finite and >= 0)");
    const std::size_t n = params_.size();
    const std::size_t len = layout();
    buf_.assign(len + n + 2, T(0));
    const T w = T(weight);
    sync_stats st;
    for (std::size_t i = 0; i < n; ++i) {
      auto& p = params_[i];
      const auto& s = sites_[i];
      const bool has = p.has_grad();
      if (has && shape_of(p.grad()) != p.shape())
        throw shape_error("data_parallel::sync: parameter " + std::to_string(i) + " has value " +
                          shape_str(p.value().shape()) + " but gradient " +
                          shape_str(p.grad().shape()));
      T* out = buf_.data() + offset_[i];
      if (full_[i]) {
        ++st.full_tensors;
        if (has) vmap(out, s.numel) = w * as_vector(std::as_const(p).grad());
      } else {
        ++st.projected_tensors;
        const matrix<T> low = project_(i, has ? &std::as_const(p).grad() : nullptr,
                                       std::as_const(p).value(), s.rows, s.cols);
        if (std::size_t(low.rows()) != s.low_rows || std::size_t(low.cols()) != s.low_cols)
          throw shape_error("data_parallel::sync: projector of parameter " + std::to_string(i) +
                            " returned [" + std::to_string(low.rows()) + "," +
                            std::to_string(low.cols()) + "], low_shape says [" +
                            std::to_string(s.low_rows) + "," + std::to_string(s.low_cols) + "]");
        vmap(out, s.low_numel()) = w * cvmap(low.data(), s.low_numel());
      }
      buf_[len + i] = has ? T(1) : T(0);
    }
    buf_[len + n] = w;
    buf_[len + n + 1] = T(weight * loss);

    comm_->allreduce_sum(std::span<T>(buf_));

    const double total = double(buf_[len + n]);
    if (!(total > 0))
      throw value_error("data_parallel::sync: the ranks' weights sum to " + peft::detail::hparam_str(total) +
                        " (must be > 0)");
    const T inv = T(1.0 / total);
    for (std::size_t i = 0; i < n; ++i) {
      if (buf_[len + i] == T(0)) continue;  // no rank has a gradient for it
      auto& p = params_[i];
      const auto& s = sites_[i];
      const T* in = buf_.data() + offset_[i];
      tensor<T>& g = peft::detail::grad_buffer(*p.get());
      if (full_[i]) {
        as_vector(g) = inv * cvmap(in, s.numel);
      } else {
        matrix<T> low(static_cast<Eigen::Index>(s.low_rows), static_cast<Eigen::Index>(s.low_cols));
        vmap(low.data(), s.low_numel()) = inv * cvmap(in, s.low_numel());
        set_synced_(i, std::move(low));
      }
    }
    st.bytes = buf_.size() * sizeof(T);
    st.weight = total;
    st.loss = double(buf_[len + n + 1]) / total;
    return st;
  }

  // Payload of the next sync (depends on which projectors refresh at the current step).
  std::size_t next_sync_bytes() {
    return (layout() + params_.size() + 2) * sizeof(T);
  }

  comm_plan plan() const {
    comm_plan p;
    p.header_bytes = (params_.size() + 2) * sizeof(T);
    std::size_t full = 0, low = 0;
    for (const auto& s : sites_) {
      full += s.numel;
      low += s.projected ? s.low_numel() : s.numel;
      p.projected_tensors += s.projected ? 1 : 0;
    }
    p.full_bytes = full * sizeof(T) + p.header_bytes;
    p.projected_bytes = low * sizeof(T) + p.header_bytes;
    return p;
  }

  // Σ over ranks of max |this rank's parameter − rank 0's|: 0 exactly when every rank holds
  // rank 0's values bit for bit. Collective (a broadcast and an all-reduce); for tests/checks.
  double divergence() {
    pack_values();
    std::vector<T> root = vbuf_;
    comm_->broadcast(std::span<T>(root), 0);
    double d = 0;
    for (std::size_t k = 0; k < root.size(); ++k)
      d = std::max(d, double(std::abs(vbuf_[k] - root[k])));
    double sum[1] = {d};
    comm_->allreduce_sum(std::span<double>(sum));
    return sum[0];
  }

 private:
  struct site {
    std::size_t numel = 0;
    bool projected = false;
    std::size_t rows = 0, cols = 0, low_rows = 0, low_cols = 0;
    std::size_t low_numel() const { return low_rows * low_cols; }
  };

  static vector_map<T> vmap(T* p, std::size_t n) { return vector_map<T>(p, Eigen::Index(n)); }
  static const_vector_map<T> cvmap(const T* p, std::size_t n) {
    return const_vector_map<T>(p, Eigen::Index(n));
  }

  void init_sites() {
    if (!comm_) throw value_error("data_parallel: null communicator");
    sites_.resize(params_.size());
    for (std::size_t i = 0; i < params_.size(); ++i) {
      if (!params_[i].defined())
        throw value_error("data_parallel: parameter " + std::to_string(i) + " is undefined");
      for (std::size_t j = 0; j < i; ++j)
        if (params_[j].get() == params_[i].get())
          throw value_error("data_parallel: parameter " + std::to_string(i) +
                            " appears twice (also at " + std::to_string(j) + ")");
      sites_[i].numel = params_[i].numel();
    }
  }

  // Decides full vs projected per parameter for this step; returns the gradient part's length.
  std::size_t layout() {
    const std::size_t n = params_.size();
    full_.assign(n, true);
    offset_.assign(n, 0);
    std::size_t len = 0;
    for (std::size_t i = 0; i < n; ++i) {
      full_[i] = !sites_[i].projected || needs_full_(i);
      offset_[i] = len;
      len += full_[i] ? sites_[i].numel : sites_[i].low_numel();
    }
    return len;
  }

  void pack_values() {
    std::size_t len = 0;
    for (const auto& s : sites_) len += s.numel;
    vbuf_.resize(len);
    std::size_t off = 0;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      vmap(vbuf_.data() + off, sites_[i].numel) = as_vector(std::as_const(params_[i]).value());
      off += sites_[i].numel;
    }
  }
  void unpack_values() {
    std::size_t off = 0;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      as_vector(params_[i].value()) = cvmap(vbuf_.data() + off, sites_[i].numel);
      off += sites_[i].numel;
    }
  }

  communicator* comm_;
  std::vector<variable<T>> params_;
  std::vector<site> sites_;
  // Projected mode only (set by the rule_optimizer constructor).
  std::function<bool(std::size_t)> needs_full_;
  std::function<matrix<T>(std::size_t, const tensor<T>*, const tensor<T>&, std::size_t,
                          std::size_t)>
      project_;
  std::function<void(std::size_t, matrix<T>)> set_synced_;
  // Scratch kept between steps (no allocation per step once sized).
  std::vector<bool> full_;
  std::vector<std::size_t> offset_;
  std::vector<T> buf_, vbuf_;
};

template <class T>
void broadcast_module(communicator& comm, nn::module<T>& m, int root) {
  auto named = m.named_parameters();
  std::size_t len = 0;
  for (auto& [name, v] : named) len += v.numel();
  std::vector<T> buf(len);
  std::size_t off = 0;
  for (auto& [name, v] : named) {
    vector_map<T>(buf.data() + off, Eigen::Index(v.numel())) = as_vector(std::as_const(v).value());
    off += v.numel();
  }
  comm.broadcast(std::span<T>(buf), root);
  if (comm.rank() == root) return;
  off = 0;
  for (auto& [name, v] : named) {
    as_vector(v.value()) = const_vector_map<T>(buf.data() + off, Eigen::Index(v.numel()));
    off += v.numel();
  }
}

}  // namespace peft::dist
