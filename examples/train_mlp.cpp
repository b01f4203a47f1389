// train_mlp: the smallest end-to-end use of peft's autograd and nn layers.
//
// We generate a 2-D classification task that no straight line can solve (a disk surrounded by a
// ring), build a two-hidden-layer MLP from nn::linear, and train it with plain full-batch
// gradient descent written out by hand:
//
//   loss = cross_entropy(mlp(x), labels);   // build the graph
//   loss.backward();                        // fill p.grad() for every parameter
//   p.value() -= lr * p.grad();             // step, then clear the gradients
//
// Build target: train_mlp (no arguments). Prints the loss as it trains and the final accuracy.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numbers>
#include <vector>

#include "peft/autograd/ops/gelu.hpp"
#include "peft/core/random.hpp"
#include "peft/core/threads.hpp"
#include "peft/nn/linear.hpp"
#include "peft/nn/loss.hpp"

int main() {
  using namespace peft;
  // The matrices here are tiny; extra GEMM threads would only add overhead.
  set_num_threads(1);
  rng g(2024);  // one seed makes the data, the initialisation and so the whole run reproducible

  // ---- data: class 0 inside radius 0.5, class 1 on a ring between 0.7 and 1.0 ----
  const std::size_t n = 400;
  tensor<float> points = tensor<float>::from_shape({n, 2});
  std::vector<std::int64_t> labels(n);
  for (std::size_t i = 0; i < n; ++i) {
    const bool outer = i % 2 == 1;
    const double r = outer ? g.uniform(0.7, 1.0) : g.uniform(0.0, 0.5);
    const double a = g.uniform(0.0, 2 * std::numbers::pi);
    points(i, 0) = float(r * std::cos(a));
    points(i, 1) = float(r * std::sin(a));
    labels[i] = outer ? 1 : 0;
  }
  const auto x = constant<float>(points);  // inputs need no gradient

  // ---- model: 2 -> 32 -> 32 -> 2 logits ----
  nn::linear<float> fc1(2, 32, g), fc2(32, 32, g), fc3(32, 2, g);
  auto mlp = [&](const variable<float>& in) { return fc3(gelu(fc2(gelu(fc1(in))))); };

  std::vector<variable<float>> params;
  for (auto* layer : {&fc1, &fc2, &fc3})
    for (auto& p : layer->parameters()) params.push_back(p);

  // ---- training: plain gradient descent ----
  const float lr = 0.5f;
  const int steps = 1000;
  for (int step = 0; step <= steps; ++step) {
    auto loss = nn::cross_entropy(mlp(x), labels);
    if (step % 100 == 0) std::printf("step %4d  loss %.4f\n", step, double(loss.item()));
    if (step == steps) break;
    loss.backward();
    for (auto& p : params) {
      as_vector(p.value()) -= lr * as_vector(p.grad());
      p.zero_grad();
    }
  }

  // ---- evaluation (no graph needed) ----
  no_grad_guard no_grad;
  const auto logits = mlp(x).value();
  std::size_t correct = 0;
  for (std::size_t i = 0; i < n; ++i)
    correct += (logits(i, 1) > logits(i, 0)) == (labels[i] == 1);
  std::printf("accuracy %.1f%% (%zu / %zu)\n", 100.0 * double(correct) / double(n), correct, n);
  return 0;
}
