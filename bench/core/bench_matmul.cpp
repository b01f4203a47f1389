// GEMM throughput of peft's matmul path (the autograd op on constant variables, so no tape is
// recorded), of the GEMM entry point (detail::gemm, whichever backend PEFT_GEMM compiled in), of
// Eigen's own GEMM on raw maps (what a default build without a backend gets), and of oneDNN's
// sgemm called directly when it is found (PEFT_BENCH_HAVE_DNNL): one binary, so the ratios come
// from one run. BM_Matmul vs BM_Gemm is what peft's wrapping costs (shape checks, allocation of
// the output tensor, the variable handle).
//
//   ./bench_core_matmul --benchmark_filter='n:1024'
//
// Wall-clock time is used (UseRealTime) because Eigen runs the GEMM on its own OpenMP threads.
// The FLOPS counter is 2·n³ per iteration as a rate, printed as e.g. "FLOPS=52.1G/s".
//
// bench-smoke-filter: /n:256/
#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <cstdint>
#include <tuple>
#include <vector>

#include "peft/autograd/ops/matmul.hpp"
#include "peft/autograd/variable.hpp"
#include "peft/core/random.hpp"
#include "peft/core/tensor.hpp"
#include "peft/core/threads.hpp"
#include "peft/detail/gemm.hpp"

#if defined(PEFT_BENCH_HAVE_DNNL)
#include <oneapi/dnnl/dnnl.h>
#include <omp.h>
#endif

namespace {

void set_flops(benchmark::State& state, std::int64_t n) {
  const double flops = 2.0 * double(n) * double(n) * double(n);
  state.counters["FLOPS"] =
      benchmark::Counter(flops * double(state.iterations()), benchmark::Counter::kIsRate);
}

// Random n x n A and B (seed 1) and an output buffer C, as plain vectors.
std::tuple<std::vector<float>, std::vector<float>, std::vector<float>> square_operands(std::size_t n) {
  peft::rng g(1);
  std::vector<float> a(n * n), b(n * n), c(n * n);
  for (auto& v : a) v = float(g.normal());
  for (auto& v : b) v = float(g.normal());
  return {std::move(a), std::move(b), std::move(c)};
}

void BM_Matmul(benchmark::State& state) {
  const auto n = std::size_t(state.range(0));
  peft::set_num_threads(int(state.range(1)));
  peft::rng g(1);
  const auto a = peft::constant(peft::randn<float>({n, n}, g));
  const auto b = peft::constant(peft::randn<float>({n, n}, g));
  for (auto _ : state) {
    auto y = peft::matmul(a, b);
    benchmark::DoNotOptimize(y.value().data());
    benchmark::ClobberMemory();
  }
  set_flops(state, std::int64_t(n));
}

// Baseline: Eigen GEMM into a preallocated output, on maps over plain buffers.
void BM_EigenGemm(benchmark::State& state) {
  const auto n = Eigen::Index(state.range(0));
  peft::set_num_threads(int(state.range(1)));
  auto [a, b, c] = square_operands(std::size_t(n));
  using map = Eigen::Map<Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;
  const map A(a.data(), n, n), B(b.data(), n, n);
  map C(c.data(), n, n);
  for (auto _ : state) {
    C.noalias() = A * B;
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  set_flops(state, std::int64_t(n));
}

// The entry point every product of the library goes through; the backend is in the label.
void BM_Gemm(benchmark::State& state) {
  const auto n = std::ptrdiff_t(state.range(0));
  peft::set_num_threads(int(state.range(1)));
  auto [a, b, c] = square_operands(std::size_t(n));
  using peft::detail::trans;
  for (auto _ : state) {
    peft::detail::gemm<float>(trans::n, trans::n, n, n, n, 1.f, a.data(), n, b.data(), n, 0.f,
                              c.data(), n);
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  state.SetLabel(peft::detail::gemm_backend());
  set_flops(state, std::int64_t(n));
}

#if defined(PEFT_BENCH_HAVE_DNNL)
// oneDNN's sgemm called directly (row-major), its threads set through OpenMP.
void BM_DnnlSgemm(benchmark::State& state) {
  const auto n = dnnl_dim_t(state.range(0));
  omp_set_num_threads(int(state.range(1)));
  auto [a, b, c] = square_operands(std::size_t(n));
  for (auto _ : state) {
    dnnl_sgemm('N', 'N', n, n, n, 1.f, a.data(), n, b.data(), n, 0.f, c.data(), n);
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  set_flops(state, std::int64_t(n));
}
#endif

void matmul_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"n", "threads"});
  for (std::int64_t n : {256, 1024, 4096})
    for (std::int64_t t : {1, 2}) b->Args({n, t});
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK(BM_Matmul)->Apply(matmul_args);
BENCHMARK(BM_Gemm)->Apply(matmul_args);
BENCHMARK(BM_EigenGemm)->Apply(matmul_args);
#if defined(PEFT_BENCH_HAVE_DNNL)
BENCHMARK(BM_DnnlSgemm)->Apply(matmul_args);
#endif

BENCHMARK_MAIN();
