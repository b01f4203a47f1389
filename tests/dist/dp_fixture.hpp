#pragma once
// Shared by the data-parallel tests (threads: data_parallel.test.cpp; MPI: mpi_data_parallel.cpp):
// a two-layer MLP with LoRA on both layers, a deterministic global batch per step, and a
// training loop that runs either on the whole batch (the 1-rank reference, no communicator) or
// on this rank's shard with data_parallel::sync before each step.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "peft/adapters/adapted_linear.hpp"
#include "peft/adapters/lora.hpp"
#include "peft/autograd/ops/relu.hpp"
#include "peft/core/random.hpp"
#include "peft/dist/data_parallel.hpp"
#include "peft/dist/synced_projector.hpp"
#include "peft/nn/linear.hpp"
#include "peft/nn/loss.hpp"
#include "peft/optim/adam.hpp"
#include "peft/optim/projected.hpp"
#include "peft/optim/projection/flora.hpp"
#include "peft/optim/projection/galore.hpp"

namespace dp_fixture {

constexpr std::size_t in_dim = 16, hidden = 24, out_dim = 8, lora_rank = 8, global_batch = 32;
constexpr std::size_t proj_rank = 4;  // projected optimizers: LoRA factors [8, *] -> [4, *]

template <class T>
class net : public peft::nn::unary_module<T> {
 public:
  explicit net(std::uint64_t seed) {
    peft::rng g(seed);
    auto l1 = std::make_shared<peft::nn::linear<T>>(in_dim, hidden, g);
    auto l2 = std::make_shared<peft::nn::linear<T>>(hidden, out_dim, g);
    l1->freeze();
    l2->freeze();
    peft::lora_config c;
    c.r = lora_rank;
    c.alpha = 16;
    c.seed = seed + 1;
    auto a1 = std::make_shared<peft::lora<T>>(in_dim, hidden, c);
    c.seed = seed + 2;
    auto a2 = std::make_shared<peft::lora<T>>(hidden, out_dim, c);
    // Nonzero B, so every factor has a gradient from the first step.
    peft::fill_normal(a1->lora_B.value(), 0.0, 0.1, g);
    peft::fill_normal(a2->lora_B.value(), 0.0, 0.1, g);
    fc1 = std::make_shared<peft::adapted_linear<T>>(l1, a1);
    fc2 = std::make_shared<peft::adapted_linear<T>>(l2, a2);
    this->register_module("fc1", fc1);
    this->register_module("fc2", fc2);
  }
  peft::variable<T> forward(const peft::variable<T>& x) override {
    return fc2->forward(peft::relu(fc1->forward(x)));
  }
  std::shared_ptr<peft::nn::unary_module<T>> fc1, fc2;
};

// Rows [begin, end) of t.
template <class T>
peft::tensor<T> rows(const peft::tensor<T>& t, std::size_t begin, std::size_t end) {
  peft::tensor<T> r = peft::tensor<T>::from_shape({end - begin, t.shape()[1]});
  peft::as_matrix(r) = peft::as_matrix(t).middleRows(Eigen::Index(begin), Eigen::Index(end - begin));
  return r;
}

// The global batch of a step: the same on every rank.
template <class T>
std::pair<peft::tensor<T>, peft::tensor<T>> batch_at(int step) {
  peft::rng g(1000 + std::uint64_t(step));
  auto x = peft::randn<T>({global_batch, in_dim}, g);
  auto y = peft::randn<T>({global_batch, out_dim}, g, 0.0, 0.5);
  return {std::move(x), std::move(y)};
}

struct run_options {
  int steps = 20;
  bool weighted = false;  // sync weight = shard size (needed for unequal shards)
  // Custom shard sizes per rank (sum = global_batch); empty = shard_range.
  std::vector<std::size_t> shards{};
};

// Trains m with opt; with dp, on this rank's shard (synced), else on the whole batch.
// Returns the mean loss reported by the last sync (or the last full-batch loss).
template <class T, class Opt>
double train(net<T>& m, Opt& opt, const run_options& ro,
             peft::dist::data_parallel<std::type_identity_t<T>>* dp,
             std::vector<std::size_t>* bytes = nullptr) {
  double last = 0;
  for (int s = 0; s < ro.steps; ++s) {
    auto [x, y] = batch_at<T>(s);
    std::size_t b = 0, e = global_batch;
    if (dp) {
      const int r = dp->comm().rank(), n = dp->comm().size();
      if (ro.shards.empty()) {
        std::tie(b, e) = peft::dist::shard_range(global_batch, r, n);
      } else {
        for (int k = 0; k < r; ++k) b += ro.shards[std::size_t(k)];
        e = b + ro.shards[std::size_t(r)];
      }
    }
    auto loss = peft::nn::mse_loss(m(peft::constant<T>(rows(x, b, e))),
                                   peft::constant<T>(rows(y, b, e)));
    loss.backward();
    last = double(loss.item());
    if (dp) {
      const auto st = dp->sync(ro.weighted ? double(e - b) : 1.0, last);
      last = st.loss;
      if (bytes) bytes->push_back(st.bytes);
    }
    opt.step();
    opt.zero_grad();
  }
  return last;
}

// max |a − b| over the trainable parameters of two nets.
template <class T>
double max_param_diff(const net<T>& a, const net<T>& b) {
  const auto pa = a.trainable_parameters(), pb = b.trainable_parameters();
  double d = 0;
  for (std::size_t i = 0; i < pa.size(); ++i)
    d = std::max(d, double((peft::as_vector(pa[i].value()) - peft::as_vector(pb[i].value()))
                               .cwiseAbs()
                               .maxCoeff()));
  return d;
}

template <class T>
peft::optim::adamw_options adamw_opts() {
  peft::optim::adamw_options o;
  o.lr = 1e-2;
  o.weight_decay = 0.01;
  return o;
}

// projected AdamW with Flora (kappa 5: resamples inside a 20-step run) or GaLore (gap 5).
template <class T, class Proj>
auto make_flora(const std::vector<peft::variable<T>>& params) {
  peft::optim::flora_options fo;
  fo.rank = proj_rank;
  fo.kappa = 5;
  return std::make_unique<peft::optim::projected<peft::optim::adamw<T>, Proj>>(
      params, adamw_opts<T>(), fo, peft::optim::projected_options{.seed = 3});
}
template <class T, class Proj>
auto make_galore(const std::vector<peft::variable<T>>& params) {
  peft::optim::galore_options go;
  go.rank = proj_rank;
  go.update_proj_gap = 5;
  go.scale = 1.0;
  return std::make_unique<peft::optim::projected<peft::optim::adamw<T>, Proj>>(
      params, adamw_opts<T>(), go, peft::optim::projected_options{.seed = 3});
}

}  // namespace dp_fixture
