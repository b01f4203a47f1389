// Mixed-adapter batched forward of one Linear layer (serve/mixed_batch.hpp): `rows` rows, each
// with one of `adapters` distinct LoRA adapters of rank r, against the same batch with a single
// adapter (adapters = 1: every row the same adapter, the plain fused LoRA forward) and against
// the base Linear alone.
//
//   BM_MixedBatch        rows assigned to adapters at random (worst case: every group gathered
//                        and scattered)
//   BM_MixedBatchSorted  rows grouped per request (each adapter's rows consecutive: no gather)
//   BM_BaseLinear        y = x·Wᵀ + b, the floor
//
//   ./bench_serve_serve --benchmark_filter='in:4096'
//
// The target (issue 8): 32 distinct adapters ≥ 0.8× the single-adapter throughput (items/s =
// rows/s) at rows 512, 4096x4096 (or 1024x1024), r = 16. One GEMM thread, so the ratio reflects
// the algorithm rather than how a loaded machine schedules threads.
//
// bench-smoke-filter: rows:64/
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "peft/core/random.hpp"
#include "peft/core/threads.hpp"
#include "peft/serve/mixed_batch.hpp"
#include "peft/serve/served_adapter.hpp"

namespace {

using T = float;

struct setup {
  std::size_t rows, in, out, r, n_adapters;
  peft::tensor<T> x, W, b, y;
  std::vector<peft::serve::layer_adapter<T>> adapters;
  std::vector<const peft::serve::layer_adapter<T>*> ptrs;
  std::vector<int> ids;

  setup(benchmark::State& s, bool sorted)
      : rows(std::size_t(s.range(0))), in(std::size_t(s.range(1))), out(std::size_t(s.range(2))),
        r(std::size_t(s.range(3))), n_adapters(std::size_t(s.range(4))) {
    peft::set_num_threads(1);
    peft::rng g(1);
    x = peft::randn<T>({rows, in}, g);
    W = peft::randn<T>({out, in}, g, 0.0, 0.02);
    b = peft::randn<T>({out}, g);
    y = peft::zeros<T>({rows, out});
    for (std::size_t k = 0; k < n_adapters; ++k) {
      const auto A = peft::randn<T>({r, in}, g, 0.0, 0.02), B = peft::randn<T>({out, r}, g, 0.0, 0.02);
      adapters.push_back(peft::serve::layer_adapter<T>::lora(peft::as_matrix(A), peft::as_matrix(B), 2.0));
    }
    for (auto& a : adapters) ptrs.push_back(&a);
    // Every adapter present (as evenly as rows allow); shuffled unless sorted.
    ids.resize(rows);
    for (std::size_t i = 0; i < rows; ++i) ids[i] = int(i * n_adapters / rows);
    if (!sorted)
      for (std::size_t i = rows; i > 1; --i) std::swap(ids[i - 1], ids[g.uniform_int(i)]);
  }
  void counters(benchmark::State& s) const {
    s.SetItemsProcessed(std::int64_t(rows) * s.iterations());
    s.counters["FLOPS"] = benchmark::Counter(2.0 * double(rows) * double(out) * double(in + r) * double(s.iterations()) +
                                                 2.0 * double(rows) * double(r) * double(in) * double(s.iterations()),
                                             benchmark::Counter::kIsRate);
  }
};

template <bool Sorted>
void mixed(benchmark::State& s) {
  setup u(s, Sorted);
  peft::serve::mixed_workspace<T> ws;
  for (auto _ : s) {
    peft::serve::mixed_linear_forward<T>(peft::as_matrix(u.x), peft::as_matrix(u.W), u.b.data(), u.ids, u.ptrs,
                                         peft::as_matrix(u.y), ws);
    benchmark::ClobberMemory();
  }
  u.counters(s);
}
void BM_MixedBatch(benchmark::State& s) { mixed<false>(s); }
void BM_MixedBatchSorted(benchmark::State& s) { mixed<true>(s); }

void BM_BaseLinear(benchmark::State& s) {
  setup u(s, true);
  auto xm = peft::as_matrix(u.x);
  auto Wm = peft::as_matrix(u.W);
  auto ym = peft::as_matrix(u.y);
  for (auto _ : s) {
    ym.noalias() = xm * Wm.transpose();
    ym.rowwise() += peft::as_vector(u.b).transpose();
    benchmark::ClobberMemory();
  }
  s.SetItemsProcessed(std::int64_t(u.rows) * s.iterations());
}

void shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "in", "out", "r", "adapters"});
  for (std::int64_t a : {1, 8}) b->Args({64, 256, 256, 8, a});
  for (std::int64_t a : {1, 8, 32, 64}) {
    b->Args({512, 1024, 1024, 16, a});
    b->Args({512, 4096, 4096, 16, a});
  }
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}
void base_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "in", "out", "r", "adapters"});
  b->Args({64, 256, 256, 8, 1});
  b->Args({512, 1024, 1024, 16, 1});
  b->Args({512, 4096, 4096, 16, 1});
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK(BM_BaseLinear)->Apply(base_shapes);
BENCHMARK(BM_MixedBatch)->Apply(shapes);
BENCHMARK(BM_MixedBatchSorted)->Apply(shapes);

BENCHMARK_MAIN();
