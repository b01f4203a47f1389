// Cost of GaLore on one square weight: the basis refresh (exact BDCSVD vs randomized range
// finder with 2 power iterations) and the steady-state step (project, AdamW on the low-rank
// moments, project back) against plain AdamW, plus the step averaged over a full refresh period
// (update_proj_gap steps including one refresh).
//
//   ./bench_optim_projectors --benchmark_filter='n:1024/'
//
// Sizes: n = 1024 with r = 32, n = 4096 with r = 128 (the 4096 cases are slow: an exact SVD of a
// 4096 x 4096 matrix takes minutes on one core). One thread (set_num_threads(1)): Eigen's GEMM
// and SVD otherwise compete with whatever else runs. Counters: state_bytes of the optimizer.
//
// bench-smoke-filter: n:1024/
#include <benchmark/benchmark.h>

#include <cstdint>
#include <utility>

#include "peft/autograd/variable.hpp"
#include "peft/core/random.hpp"
#include "peft/core/tensor.hpp"
#include "peft/core/threads.hpp"
#include "peft/optim/adam.hpp"
#include "peft/optim/projected.hpp"
#include "peft/optim/projection/galore.hpp"
#include "peft/optim/quant8.hpp"

namespace {

using peft::optim::svd_solver;

peft::tensor<float> gaussian(std::size_t n, std::uint64_t seed) {
  peft::rng g(seed);
  return peft::randn<float>({n, n}, g, 0.0, 1e-2);
}

peft::optim::galore_options galore(std::int64_t r, std::int64_t solver, std::size_t gap) {
  peft::optim::galore_options o;
  o.rank = std::size_t(r);
  o.update_proj_gap = gap;
  o.solver = solver == 0 ? svd_solver::exact : svd_solver::randomized;
  return o;
}

// One basis refresh from an n x n gradient.
void BM_GaloreRefresh(benchmark::State& state) {
  peft::set_num_threads(1);
  const auto n = std::size_t(state.range(0));
  const auto G = gaussian(n, 1);
  peft::optim::galore_projector<float> p(galore(state.range(1), state.range(2), 200), n, n, 7);
  for (auto _ : state) {
    p.refresh(peft::as_matrix(G), 0);
    benchmark::DoNotOptimize(p.right_basis().data());
  }
  state.counters["state_bytes"] = double(p.state_bytes());
}

// Plain AdamW, one step on an n x n weight.
void BM_AdamWStep(benchmark::State& state) {
  peft::set_num_threads(1);
  const auto n = std::size_t(state.range(0));
  auto W = peft::parameter<float>(gaussian(n, 2));
  peft::detail::accumulate(*W.get(), gaussian(n, 3));
  peft::optim::adamw<float> opt({W});
  for (auto _ : state) {
    opt.step();
    benchmark::DoNotOptimize(W.value().data());
  }
  state.counters["state_bytes"] = double(opt.state_bytes());
}

// AdamW with 8-bit moments, one step.
void BM_AdamW8bitStep(benchmark::State& state) {
  peft::set_num_threads(1);
  const auto n = std::size_t(state.range(0));
  auto W = peft::parameter<float>(gaussian(n, 2));
  peft::detail::accumulate(*W.get(), gaussian(n, 3));
  peft::optim::adamw8bit<float> opt({W});
  for (auto _ : state) {
    opt.step();
    benchmark::DoNotOptimize(W.value().data());
  }
  state.counters["state_bytes"] = double(opt.state_bytes());
}

// GaLore-AdamW between refreshes (the basis is computed once, before timing).
template <class Storage>
void galore_step(benchmark::State& state) {
  peft::set_num_threads(1);
  const auto n = std::size_t(state.range(0));
  auto W = peft::parameter<float>(gaussian(n, 2));
  peft::detail::accumulate(*W.get(), gaussian(n, 3));
  peft::optim::projected<peft::optim::adamw<float>, peft::optim::galore_projector<float>, Storage>
      opt({W}, {}, galore(state.range(1), 1, std::size_t(1) << 40));
  opt.step();  // refresh
  for (auto _ : state) {
    opt.step();
    benchmark::DoNotOptimize(W.value().data());
  }
  state.counters["state_bytes"] = double(opt.state_bytes());
}
void BM_GaloreStep(benchmark::State& state) {
  galore_step<peft::optim::full_precision_storage>(state);
}
void BM_Galore8bitStep(benchmark::State& state) { galore_step<peft::optim::q8_storage<>>(state); }

// update_proj_gap = 200 steps including one refresh; time per step is the reported time / 200.
void BM_GalorePeriod(benchmark::State& state) {
  peft::set_num_threads(1);
  const auto n = std::size_t(state.range(0));
  constexpr std::size_t gap = 200;
  auto W = peft::parameter<float>(gaussian(n, 2));
  peft::detail::accumulate(*W.get(), gaussian(n, 3));
  peft::optim::projected<peft::optim::adamw<float>, peft::optim::galore_projector<float>> opt(
      {W}, {}, galore(state.range(1), state.range(2), gap));
  for (auto _ : state) {
    for (std::size_t k = 0; k < gap; ++k) opt.step();
    benchmark::DoNotOptimize(W.value().data());
  }
  state.counters["steps"] = benchmark::Counter(double(state.iterations() * gap),
                                               benchmark::Counter::kIsRate);
}

void refresh_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"n", "r", "randomized"});
  for (auto [n, r] : {std::pair<std::int64_t, std::int64_t>{1024, 32}, {4096, 128}})
    for (std::int64_t s : {0, 1}) b->Args({n, r, s});
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}
void step_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"n", "r"});
  b->Args({1024, 32})->Args({4096, 128});
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}
void adamw_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"n"});
  b->Args({1024})->Args({4096});
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK(BM_GaloreRefresh)->Apply(refresh_args);
BENCHMARK(BM_AdamWStep)->Apply(adamw_args);
BENCHMARK(BM_AdamW8bitStep)->Apply(adamw_args);
BENCHMARK(BM_GaloreStep)->Apply(step_args);
BENCHMARK(BM_Galore8bitStep)->Apply(step_args);
BENCHMARK(BM_GalorePeriod)->Apply(refresh_args)->Iterations(1);

BENCHMARK_MAIN();
