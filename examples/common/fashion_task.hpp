#pragma once
// The Fashion-MNIST transfer task shared by finetune_fashion and compare_adapters:
//   - an MLP classifier 784 -> hidden -> hidden -> 5 ("fc1", "fc2", "head": the names adapters
//     target), ReLU between layers;
//   - pretraining on classes 0-4 (T-shirt, Trouser, Pullover, Dress, Coat), cached as a
//     safetensors checkpoint so later runs skip it;
//   - the new task: classes 5-9 (Sandal, Shirt, Sneaker, Bag, Ankle boot) relabelled 0-4, so the
//     same 5-way head is reused for five new classes;
//   - a mini-batch training loop (cross-entropy, AdamW-style optimizer, warmup + cosine lr) and
//     test accuracy.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "peft/adapters/inject.hpp"
#include "peft/autograd/ops/add.hpp"
#include "peft/autograd/ops/mul.hpp"
#include "peft/autograd/ops/relu.hpp"
#include "peft/core/random.hpp"
#include "peft/io/state_dict.hpp"
#include "peft/nn/linear.hpp"
#include "peft/nn/loss.hpp"
#include "peft/nn/module.hpp"
#include "peft/optim/adam.hpp"
#include "peft/optim/optimizer.hpp"
#include "peft/optim/schedule.hpp"

#include "datasets.hpp"
#include "progress.hpp"
#include "run_log.hpp"

namespace examples {

// ---------------------------------------------------------------- model

template <class T>
class mlp_classifier : public peft::nn::unary_module<T> {
 public:
  mlp_classifier(std::size_t in, std::size_t hidden, std::size_t classes, peft::rng& g) {
    fc1 = std::make_shared<peft::nn::linear<T>>(in, hidden, g);
    fc2 = std::make_shared<peft::nn::linear<T>>(hidden, hidden, g);
    head = std::make_shared<peft::nn::linear<T>>(hidden, classes, g);
    // Slots registered by name: inject_adapters can replace "fc1" with an adapted Linear.
    this->register_module("fc1", fc1);
    this->register_module("fc2", fc2);
    this->register_module("head", head);
  }
  std::string type_name() const override { return "mlp_classifier"; }

  peft::variable<T> forward(const peft::variable<T>& x) override {
    return head->forward(peft::relu(fc2->forward(peft::relu(fc1->forward(x)))));
  }

  std::shared_ptr<peft::nn::unary_module<T>> fc1, fc2, head;
};

// ---------------------------------------------------------------- data

struct fashion_task_data {
  image_set pretrain;      // classes 0-4, labels 0-4
  image_set adapt_train;   // classes 5-9, labels 0-4
  image_set adapt_test;    // classes 5-9 of the test set, labels 0-4
  image_set pretrain_test; // classes 0-4 of the test set
};

// train_limit: read at most this many training images from the file (0 = all 60k); the two
// class halves each get about half of them. test_limit likewise for the 10k test images.
inline fashion_task_data load_fashion_task(const std::string& dir, std::size_t train_limit = 0,
                                           std::size_t test_limit = 0) {
  const image_set train = load_fashion_mnist(dir, "train", train_limit);
  const image_set test = load_fashion_mnist(dir, "t10k", test_limit);
  fashion_task_data d;
  d.pretrain = select_classes(train, 0, 4);
  d.adapt_train = select_classes(train, 5, 9);
  d.adapt_test = select_classes(test, 5, 9);
  d.pretrain_test = select_classes(test, 0, 4);
  return d;
}

// Fashion-MNIST pixel statistics (over the training set), to standardise the inputs.
inline constexpr float fashion_mean = 0.2860f, fashion_std = 0.3530f;

// Images idx[begin, end) as a [n, 784] float batch, standardised.
inline peft::tensor<float> image_batch(const image_set& s, const std::vector<std::size_t>& idx,
                                       std::size_t begin, std::size_t end) {
  const std::size_t ppi = s.pixels_per_image(), n = end - begin;
  peft::tensor<float> x = peft::tensor<float>::from_shape({n, ppi});
  float* out = x.data();
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint8_t* px = s.pixels.data() + idx[begin + i] * ppi;
    for (std::size_t j = 0; j < ppi; ++j)
      out[i * ppi + j] = (float(px[j]) * (1.0f / 255.0f) - fashion_mean) / fashion_std;
  }
  return x;
}
inline std::vector<std::int64_t> label_batch(const image_set& s, const std::vector<std::size_t>& idx,
                                             std::size_t begin, std::size_t end) {
  std::vector<std::int64_t> y(end - begin);
  for (std::size_t i = begin; i < end; ++i) y[i - begin] = s.labels[idx[i]];
  return y;
}

// Fraction of correctly classified images (eval mode, no graph).
template <class T>
double accuracy(peft::nn::unary_module<T>& model, const image_set& s, std::size_t batch = 1000) {
  if (s.n == 0) return 0.0;
  peft::no_grad_guard ng;
  const bool was_training = model.is_training();
  model.eval();
  std::vector<std::size_t> idx(s.n);
  std::iota(idx.begin(), idx.end(), 0);
  std::size_t correct = 0;
  for (std::size_t b = 0; b < s.n; b += batch) {
    const std::size_t e = std::min(s.n, b + batch);
    const auto logits = model(peft::constant<float>(image_batch(s, idx, b, e))).value();
    const auto L = peft::as_matrix(logits);
    for (std::size_t i = b; i < e; ++i) {
      Eigen::Index arg = 0;
      L.row(Eigen::Index(i - b)).maxCoeff(&arg);
      correct += std::int64_t(arg) == s.labels[i];
    }
  }
  model.train(was_training);
  return double(correct) / double(s.n);
}

// ---------------------------------------------------------------- training

struct train_config {
  std::string phase = "adapt";  // name in logs and the progress bar
  std::size_t epochs = 3;
  std::size_t batch = 128;
  std::size_t max_steps = 0;      // > 0: stop after this many steps (smoke runs)
  double warmup_fraction = 0.05;  // of the total steps, then cosine decay to 10%
  double aux_loss_weight = 0.01;  // MoE load-balancing loss weight
  std::uint64_t seed = 0;         // shuffling
  bool quiet = false;             // no progress output
};

struct train_result {
  std::size_t steps = 0;
  double seconds = 0;
  double first_loss = 0;  // mean of the first few steps' losses
  double last_loss = 0;   // mean of the last few steps' losses
  std::vector<double> epoch_accuracy;
};

// Sum of the auxiliary losses the adapters produced in the last forward (MoE load balancing),
// or an undefined variable when there are none.
template <class T>
peft::variable<T> adapter_aux_loss(peft::nn::module<T>& model) {
  peft::variable<T> total;
  for (auto& [path, layer] : peft::adapted_layers(model)) {
    const auto& aux = layer->last_aux_loss();
    if (!aux.defined()) continue;
    total = total.defined() ? peft::add(total, aux) : aux;
  }
  return total;
}

// Mini-batch training of `model` on `train` with `opt` (which holds the trainable parameters).
// After every epoch, `evaluate` (if set) returns the metric logged and returned per epoch.
template <class T>
train_result train_classifier(peft::nn::unary_module<T>& model, peft::optim::optimizer<T>& opt,
                              const image_set& train, const train_config& cfg, run_log* log,
                              const std::function<double()>& evaluate) {
  std::size_t steps_per_epoch = (train.n + cfg.batch - 1) / cfg.batch;
  std::size_t total = steps_per_epoch * cfg.epochs;
  if (cfg.max_steps && cfg.max_steps < total) total = cfg.max_steps;
  peft::optim::lr_scheduler<T> sched(
      opt, peft::optim::warmup_cosine_schedule(std::size_t(cfg.warmup_fraction * double(total)),
                                               total, 0.1));
  const bool has_aux = [&] {
    for (auto& [p, l] : peft::adapted_layers(model))
      if (l->get_adapter().has_aux_loss()) return true;
    return false;
  }();

  std::vector<std::size_t> order(train.n);
  std::iota(order.begin(), order.end(), 0);
  peft::rng g(cfg.seed);
  train_result res;
  std::vector<double> losses;
  std::unique_ptr<progress> bar;
  if (!cfg.quiet) bar = std::make_unique<progress>(cfg.phase, total, cfg.batch, "img");
  model.train();
  std::size_t step = 0;
  for (std::size_t epoch = 1; step < total; ++epoch) {
    // Fisher-Yates shuffle from the seeded generator: same seed, same batches.
    for (std::size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[g.uniform_int(i)]);
    for (std::size_t b = 0; b < train.n && step < total; b += cfg.batch) {
      const std::size_t e = std::min(train.n, b + cfg.batch);
      const auto x = peft::constant<T>(image_batch(train, order, b, e));
      auto loss = peft::nn::cross_entropy(model(x), label_batch(train, order, b, e));
      const double ce = loss.item();
      if (has_aux) {
        auto aux = adapter_aux_loss(model);
        if (aux.defined()) loss = peft::add(loss, peft::mul(aux, T(cfg.aux_loss_weight)));
      }
      loss.backward();
      opt.step();
      opt.zero_grad();
      const double lr = opt.lr(0);
      sched.step();
      ++step;
      losses.push_back(ce);
      if (log) log->step(cfg.phase, step, epoch, ce, lr);
      if (bar) bar->update(step, ce, lr);
      if (!std::isfinite(ce)) {
        if (bar) bar->finish();
        throw std::runtime_error(cfg.phase + ": loss is " + std::to_string(ce) + " at step " +
                                 std::to_string(step) + " (learning rate too high?)");
      }
    }
    if (bar) bar->finish();
    if (evaluate) {
      const double acc = evaluate();
      res.epoch_accuracy.push_back(acc);
      if (log) log->eval(cfg.phase, step, epoch, acc);
      if (!cfg.quiet) std::printf("%s epoch %zu: test accuracy %.2f%%\n", cfg.phase.c_str(), epoch, 100 * acc);
    }
  }
  res.steps = step;
  const std::size_t k = std::max<std::size_t>(1, std::min<std::size_t>(20, losses.size() / 4));
  res.first_loss = std::accumulate(losses.begin(), losses.begin() + std::ptrdiff_t(k), 0.0) / double(k);
  res.last_loss = std::accumulate(losses.end() - std::ptrdiff_t(k), losses.end(), 0.0) / double(k);
  return res;
}

// ---------------------------------------------------------------- pretraining with a cache

struct pretrain_config {
  std::size_t hidden = 256;
  std::size_t epochs = 3;
  std::size_t limit = 0;  // images of classes 0-4 used (0 = all ~30k)
  std::size_t max_steps = 0;
  double lr = 1e-3;
  std::uint64_t seed = 0;
};

// File name that identifies a pretraining configuration (a different config, a different file).
inline std::string pretrain_cache_name(const pretrain_config& c, std::size_t n_images) {
  return "fashion_mlp_v1_h" + std::to_string(c.hidden) + "_e" + std::to_string(c.epochs) + "_n" +
         std::to_string(n_images) + (c.max_steps ? "_s" + std::to_string(c.max_steps) : "") +
         "_seed" + std::to_string(c.seed) + ".safetensors";
}

// The pretrained model (step 2 of finetune_fashion), from the cache when a file for this configuration exists.
// The pretrained model: loaded from cache_dir when a file for this configuration exists (its
// name encodes the configuration), else pretrained on classes 0-4 and saved there (use_cache).
// Returns true when it was loaded.
inline bool pretrain_or_load(mlp_classifier<float>& model, const fashion_task_data& data,
                             const pretrain_config& pc, const std::filesystem::path& cache_dir,
                             bool use_cache, run_log* log, bool quiet = false) {
  const std::filesystem::path file = cache_dir / pretrain_cache_name(pc, data.pretrain.n);
  if (use_cache && std::filesystem::exists(file)) {
    try {
      peft::io::load_state_dict(file.string(), model);  // checks every name and shape first
      if (!quiet) std::printf("base model: loaded %s (pretraining skipped)\n", file.string().c_str());
      return true;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "base model: cannot use %s (%s); pretraining again\n", file.string().c_str(),
                   e.what());
    }
  }
  if (!quiet)
    std::printf("base model: pretraining on classes 0-4 (%zu images, %zu epochs)\n", data.pretrain.n,
                pc.epochs);
  model.unfreeze();
  peft::optim::adamw_options ao;
  ao.lr = pc.lr;
  peft::optim::adamw<float> opt(model.parameters(), ao);
  train_config tc;
  tc.phase = "pretrain";
  tc.epochs = pc.epochs;
  tc.max_steps = pc.max_steps;
  tc.seed = pc.seed + 1;
  tc.quiet = quiet;
  train_classifier<float>(model, opt, data.pretrain, tc, log,
                          [&] { return accuracy(model, data.pretrain_test); });
  if (use_cache) {
    std::filesystem::create_directories(cache_dir);
    peft::io::save_state_dict(file.string(), model);  // written atomically
    if (!quiet) std::printf("base model: saved to %s\n", file.string().c_str());
  }
  return false;
}

}  // namespace examples
