// One training step of a single LoRA layer, as a user runs it: forward through the adapted
// Linear (one node on the tape), backward from dL/dy with the input needing its gradient (the
// layer sits inside a network), AdamW on lora_A and lora_B, gradients dropped. The base weight
// is frozen (no dW). At (tokens, in, out, r):
//   BM_LoraStep       the autograd path (adapted_linear + variable::backward + optim::adamw);
//   BM_LoraStepFused  the same math on the fast path with no tape (adapter::forward/backward on
//                     matrices, AdamW on the factors): what the tape costs is the difference;
//   BM_TwoGemms       the floor: the two big GEMMs such a step cannot avoid, y = x·Wᵀ and
//                     dx = dy·W, by this build's Eigen (bench_core_blas's BM_BlasLinearStep is
//                     the same by OpenBLAS).
// bench/peers/torch_peer.py times the same step in PyTorch (lora_step).
//
//   ./bench_adapters_lora_step --benchmark_filter='tokens:512/in:4096'
//
// FLOPS counts the two big GEMMs only (4·N·in·out), so the rates of the three compare directly.
//
// bench-smoke-filter: tokens:64/
#include <benchmark/benchmark.h>

#include <cstdint>
#include <memory>
#include <utility>

#include "peft/adapters/adapted_linear.hpp"
#include "peft/adapters/lora.hpp"
#include "peft/core/random.hpp"
#include "peft/core/threads.hpp"
#include "peft/nn/linear.hpp"
#include "peft/optim/adam.hpp"

namespace {

using T = float;

struct layer {
  std::size_t n, in, out, r;
  std::shared_ptr<peft::nn::linear<T>> base;
  std::shared_ptr<peft::lora<T>> ad;
  std::shared_ptr<peft::adapted_linear<T>> lin;
  peft::variable<T> x;
  peft::tensor<T> dy;

  explicit layer(benchmark::State& s)
      : n(std::size_t(s.range(0))), in(std::size_t(s.range(1))), out(std::size_t(s.range(2))),
        r(std::size_t(s.range(3))) {
    peft::set_num_threads(int(s.range(4)));
    peft::rng g(1);
    base = std::make_shared<peft::nn::linear<T>>(in, out, false, g);
    base->freeze();
    peft::lora_config c;
    c.r = r;
    c.alpha = 2.0 * double(r);
    // Both factors random (not B = 0) so every product does real work, as after a few steps.
    ad = std::make_shared<peft::lora<T>>(in, out, c, peft::init::random_both{0.02});
    lin = std::make_shared<peft::adapted_linear<T>>(base, ad);
    x = peft::variable<T>(peft::randn<T>({n, in}, g), true);
    dy = peft::randn<T>({n, out}, g);
  }
  void flops(benchmark::State& s) const {
    s.counters["FLOPS"] = benchmark::Counter(
        4.0 * double(n) * double(in) * double(out) * double(s.iterations()),
        benchmark::Counter::kIsRate);
  }
};

void BM_LoraStep(benchmark::State& s) {
  layer L(s);
  peft::optim::adamw<T> opt({L.ad->lora_A, L.ad->lora_B});
  for (auto _ : s) {
    auto y = L.lin->forward(L.x);
    y.backward(L.dy);
    opt.step();
    opt.zero_grad();
    benchmark::DoNotOptimize(L.x.grad().data());
    L.x.zero_grad();
    benchmark::ClobberMemory();
  }
  L.flops(s);
}

void BM_LoraStepFused(benchmark::State& s) {
  layer L(s);
  peft::optim::adamw<T> opt({L.ad->lora_A, L.ad->lora_B});
  peft::tensor<T> y = peft::zeros<T>({L.n, L.out}), dx = peft::zeros<T>({L.n, L.in});
  const auto W = peft::as_matrix(std::as_const(L.base->weight.value()));
  const auto xm = peft::as_matrix(std::as_const(L.x.value()));
  peft::adapter_ctx<T> ctx;
  for (auto _ : s) {
    L.ad->forward(xm, W, nullptr, peft::as_matrix(y), ctx, true);
    auto dxm = peft::as_matrix(dx);
    dxm.setZero();
    peft::matrix_ref<T> dxr(dxm);
    L.ad->backward(peft::as_matrix(std::as_const(L.dy)), xm, W, ctx, &dxr, nullptr);
    opt.step();
    opt.zero_grad();
    benchmark::DoNotOptimize(dx.data());
    benchmark::ClobberMemory();
  }
  L.flops(s);
}

// Args (tokens, in, out, threads): no adapter.
void BM_TwoGemms(benchmark::State& s) {
  const auto n = std::size_t(s.range(0)), in = std::size_t(s.range(1)),
             out = std::size_t(s.range(2));
  peft::set_num_threads(int(s.range(3)));
  peft::rng g(1);
  const auto x = peft::randn<T>({n, in}, g), W = peft::randn<T>({out, in}, g, 0.0, 0.02),
             dy = peft::randn<T>({n, out}, g);
  peft::tensor<T> y = peft::zeros<T>({n, out}), dx = peft::zeros<T>({n, in});
  const auto Wm = peft::as_matrix(W), xm = peft::as_matrix(x), dym = peft::as_matrix(dy);
  auto ym = peft::as_matrix(y);
  auto dxm = peft::as_matrix(dx);
  for (auto _ : s) {
    ym.noalias() = xm * Wm.transpose();
    dxm.noalias() = dym * Wm;
    benchmark::DoNotOptimize(dx.data());
    benchmark::ClobberMemory();
  }
  s.counters["FLOPS"] = benchmark::Counter(
      4.0 * double(n) * double(in) * double(out) * double(s.iterations()),
      benchmark::Counter::kIsRate);
}

void shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"tokens", "in", "out", "r", "threads"});
  b->Args({64, 256, 256, 8, 1});
  for (std::int64_t t : {1, 2})
    for (std::int64_t d : {1024, 4096})
      for (std::int64_t r : {8, 16}) b->Args({512, d, d, r, t});
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}
void gemm_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"tokens", "in", "out", "threads"});
  b->Args({64, 256, 256, 1});
  for (std::int64_t t : {1, 2})
    for (std::int64_t d : {1024, 4096}) b->Args({512, d, d, t});
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK(BM_LoraStep)->Apply(shapes);
BENCHMARK(BM_LoraStepFused)->Apply(shapes);
BENCHMARK(BM_TwoGemms)->Apply(gemm_shapes);

BENCHMARK_MAIN();
