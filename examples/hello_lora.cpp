// hello_lora: the smallest complete LoRA fine-tune.
//
//   1. a "pretrained" Linear layer W (frozen);
//   2. wrap it with a LoRA adapter: y = x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ, s = alpha / r, with only A and B
//      trainable (B starts at zero, so the wrapped layer starts out exactly equal to W);
//   3. train A and B for a few steps so the layer matches a target W + ΔW, where ΔW is a random
//      rank-2 change (a rank-4 adapter can represent it exactly);
//   4. merge: W ← W + s·B·A, after which the layer is a plain Linear again (no extra cost at
//      inference), and check that the merged output equals the unmerged one.
//
// Build target: hello_lora. Run: hello_lora [--steps N] [--rank R] [--seed S]
#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdio>
#include <memory>

#include "peft/adapters/adapted_linear.hpp"
#include "peft/adapters/inject.hpp"  // trainable_parameters_summary
#include "peft/adapters/lora.hpp"
#include "peft/core/random.hpp"
#include "peft/core/threads.hpp"
#include "peft/nn/linear.hpp"
#include "peft/nn/loss.hpp"
#include "peft/optim/adam.hpp"

int main(int argc, char** argv) {
  using namespace peft;
  int steps = 300;
  std::size_t rank = 4;
  std::uint64_t seed = 7;
  CLI::App app{"hello_lora: wrap a Linear layer with LoRA, train it, merge it, check the merge."};
  app.add_option("--steps", steps, "optimizer steps (AdamW, lr 1e-2, batch 64)")->check(CLI::PositiveNumber);
  app.add_option("--rank", rank, "LoRA rank r (the target change has rank 2)")->check(CLI::PositiveNumber);
  app.add_option("--seed", seed, "seed for the layer, the target and the data");
  CLI11_PARSE(app, argc, argv);

  set_num_threads(1);  // tiny matrices: threads would only add overhead
  const std::size_t in = 32, out = 16;
  rng g(seed);

  // 1. The pretrained layer, and the layer we want it to become: W + a rank-2 change.
  auto base = std::make_shared<nn::linear<float>>(in, out, g);
  const tensor<float> u = randn<float>({out, 2}, g, 0.0, 0.3), v = randn<float>({2, in}, g, 0.0, 0.3);
  const matrix<float> W_target = as_matrix(base->weight.value()) + as_matrix(u) * as_matrix(v);
  nn::linear<float> target(constant<float>(to_tensor(W_target)), constant<float>(base->bias.value()));

  // 2. Freeze the base layer and wrap it with LoRA (rank r, alpha = 2r so s = 2).
  base->freeze();
  lora_config cfg;
  cfg.r = rank;
  cfg.alpha = 2.0 * double(rank);
  cfg.seed = seed;
  auto layer = std::make_shared<adapted_linear<float>>(base, std::make_shared<lora<float>>(in, out, cfg));
  std::printf("%s\n", trainable_parameters_summary(*layer).c_str());
  for (auto& [name, p] : layer->named_parameters())
    std::printf("  %-18s %-9s %s\n", name.c_str(), shape_str(p.shape()).c_str(),
                p.requires_grad() ? "trainable" : "frozen");

  // 3. Train A and B on random inputs: loss = mean((layer(x) - target(x))²).
  optim::adamw_options o;
  o.lr = 1e-2;
  o.weight_decay = 0;
  optim::adamw<float> opt(layer->trainable_parameters(), o);
  double first = 0, last = 0;
  for (int step = 1; step <= steps; ++step) {
    const auto x = constant<float>(randn<float>({64, in}, g));
    variable<float> want;
    {
      no_grad_guard ng;  // the target needs no graph
      want = target(x);
    }
    auto loss = nn::mse_loss((*layer)(x), want);
    loss.backward();
    opt.step();
    opt.zero_grad();
    last = loss.item();
    if (step == 1) first = last;
    if (step == 1 || step % 50 == 0 || step == steps) std::printf("step %4d  loss %.3e\n", step, last);
  }

  // 4. Merge and compare on fresh inputs.
  no_grad_guard ng;
  layer->eval();
  const auto x = constant<float>(randn<float>({8, in}, g));
  const tensor<float> y_adapter = (*layer)(x).value();
  layer->merge();  // W ← W + s·B·A; forward is now a plain x·Wᵀ + b
  const tensor<float> y_merged = (*layer)(x).value();
  const float diff = (as_matrix(y_adapter) - as_matrix(y_merged)).cwiseAbs().maxCoeff();
  const float scale = as_matrix(y_adapter).cwiseAbs().maxCoeff();
  const float wdiff = (as_matrix(base->weight.value()) - W_target).cwiseAbs().maxCoeff();
  std::printf("merged layer vs adapter: max |difference| = %.2e (outputs up to %.2f)\n", diff, scale);
  std::printf("merged W vs target W:    max |difference| = %.2e\n", wdiff);

  const bool learned = last < 0.01 * first;
  const bool merged_ok = diff <= 1e-5f * std::max(1.0f, scale);
  std::printf("%s\n", learned && merged_ok ? "OK: loss fell 100x and the merged layer matches"
                                           : "FAILED");
  return learned && merged_ok ? 0 : 1;
}
