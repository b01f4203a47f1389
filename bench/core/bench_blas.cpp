// The machine's ceiling, measured in the same run as peft's own benchmarks:
//   BM_BlasSgemm        OpenBLAS (any CBLAS) sgemm, row-major C = A·B at n³, the same sizes and
//                       thread counts as bench_core_matmul (BM_Matmul / BM_EigenGemm);
//   BM_BlasLinearStep   the two big GEMMs of a frozen Linear layer's training step,
//                       y = x·Wᵀ and dx = dy·W at (tokens, in, out): the physical floor of a LoRA
//                       layer step (bench_adapters_lora_step) at the same shape;
//   BM_FmaPeak          independent FMA chains in vector registers, per thread (isa 0 = AVX2+FMA
//                       on 8-float ymm registers, 1 = AVX-512F on 16-float zmm registers): the
//                       theoretical peak that no GEMM can beat.
// Built only when CMake finds a BLAS with cblas.h (bench/CMakeLists.txt). BLAS threads are set
// with openblas_set_num_threads when the BLAS is OpenBLAS (else OPENBLAS_NUM_THREADS / the BLAS's
// own variable applies).
//
//   ./bench_core_blas --benchmark_filter='n:4096/threads:2'
//
// Wall-clock time (UseRealTime); FLOPS is 2·m·n·k per GEMM per iteration as a rate.
//
// bench-smoke-filter: (n:256/|tokens:64/|FmaPeak/isa:0/threads:1)
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <cstdint>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PEFT_BENCH_X86 1
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#include "peft/core/random.hpp"

#if defined(__GNUC__) && !defined(_WIN32)
// Weak: null unless the linked BLAS is OpenBLAS.
extern "C" void openblas_set_num_threads(int) __attribute__((weak));
#endif

namespace {

void blas_threads(int n) {
#if defined(__GNUC__) && !defined(_WIN32)
  if (openblas_set_num_threads) openblas_set_num_threads(n);
#else
  (void)n;
#endif
}

std::vector<float> gaussian(std::size_t n, std::uint64_t seed) {
  peft::rng g(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = float(g.normal());
  return v;
}

void rate(benchmark::State& state, double flops_per_iter) {
  state.counters["FLOPS"] =
      benchmark::Counter(flops_per_iter * double(state.iterations()), benchmark::Counter::kIsRate);
}

void BM_BlasSgemm(benchmark::State& state) {
  const auto n = int(state.range(0));
  blas_threads(int(state.range(1)));
  const auto nn = std::size_t(n) * std::size_t(n);
  const auto a = gaussian(nn, 1), b = gaussian(nn, 2);
  std::vector<float> c(nn);
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(),
                n, 0.0f, c.data(), n);
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  rate(state, 2.0 * double(n) * double(n) * double(n));
}

// y = x·Wᵀ, dx = dy·W: x [N, in], W [out, in], dy [N, out] (row-major, as nn::linear).
void BM_BlasLinearStep(benchmark::State& state) {
  const auto N = int(state.range(0)), in = int(state.range(1)), out = int(state.range(2));
  blas_threads(int(state.range(3)));
  const auto x = gaussian(std::size_t(N) * std::size_t(in), 1);
  const auto W = gaussian(std::size_t(out) * std::size_t(in), 2);
  const auto dy = gaussian(std::size_t(N) * std::size_t(out), 3);
  std::vector<float> y(std::size_t(N) * std::size_t(out)), dx(std::size_t(N) * std::size_t(in));
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, out, in, 1.0f, x.data(), in, W.data(),
                in, 0.0f, y.data(), out);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, in, out, 1.0f, dy.data(), out,
                W.data(), in, 0.0f, dx.data(), in);
    benchmark::DoNotOptimize(y.data());
    benchmark::DoNotOptimize(dx.data());
    benchmark::ClobberMemory();
  }
  rate(state, 2 * 2.0 * double(N) * double(in) * double(out));
}

#ifdef PEFT_BENCH_X86
// `chains` independent accumulators a ← a·m + c: enough of them to cover the FMA latency on
// every FMA port (latency 4 × 2 ports = 8 minimum on current x86), few enough to stay in
// registers (16 ymm; 32 zmm). Returns a sum so nothing is dead code.
__attribute__((target("avx2,fma"))) float fma_chains_avx2(std::int64_t iters) {
  constexpr int chains = 12;
  __m256 acc[chains];
  for (int i = 0; i < chains; ++i) acc[i] = _mm256_set1_ps(float(i) * 1e-3f);
  const __m256 m = _mm256_set1_ps(0.9999999f), c = _mm256_set1_ps(1e-7f);
  for (std::int64_t k = 0; k < iters; ++k)
#pragma GCC unroll 12
    for (int i = 0; i < chains; ++i) acc[i] = _mm256_fmadd_ps(acc[i], m, c);
  __m256 s = acc[0];
  for (int i = 1; i < chains; ++i) s = _mm256_add_ps(s, acc[i]);
  alignas(32) float out[8];
  _mm256_store_ps(out, s);
  return out[0] + out[7];
}
__attribute__((target("avx512f"))) float fma_chains_avx512(std::int64_t iters) {
  constexpr int chains = 24;
  __m512 acc[chains];
  for (int i = 0; i < chains; ++i) acc[i] = _mm512_set1_ps(float(i) * 1e-3f);
  const __m512 m = _mm512_set1_ps(0.9999999f), c = _mm512_set1_ps(1e-7f);
  for (std::int64_t k = 0; k < iters; ++k)
#pragma GCC unroll 24
    for (int i = 0; i < chains; ++i) acc[i] = _mm512_fmadd_ps(acc[i], m, c);
  __m512 s = acc[0];
  for (int i = 1; i < chains; ++i) s = _mm512_add_ps(s, acc[i]);
  alignas(64) float out[16];
  _mm512_store_ps(out, s);
  return out[0] + out[15];
}
#endif

void BM_FmaPeak(benchmark::State& state) {
  const bool avx512 = state.range(0) == 1;
  const int threads = int(state.range(1));
#ifdef PEFT_BENCH_X86
  __builtin_cpu_init();
  const bool ok = avx512 ? __builtin_cpu_supports("avx512f")
                         : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (!ok) {
    state.SkipWithError(avx512 ? "no AVX-512F on this CPU" : "no AVX2+FMA on this CPU");
    return;
  }
  constexpr std::int64_t iters = std::int64_t(1) << 20;
  const double lanes = avx512 ? 16 : 8, chains = avx512 ? 24 : 12;
  float sink = 0;
  for (auto _ : state) {
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) reduction(+ : sink)
#endif
    sink += avx512 ? fma_chains_avx512(iters) : fma_chains_avx2(iters);
    benchmark::DoNotOptimize(sink);
  }
#ifndef _OPENMP
  if (threads > 1) state.SkipWithError("built without OpenMP: one thread only");
#endif
  rate(state, double(threads) * chains * lanes * 2.0 * double(iters));
#else
  (void)avx512;
  (void)threads;
  state.SkipWithError("FMA peak is measured on x86 only");
#endif
}

void gemm_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"n", "threads"});
  for (std::int64_t n : {256, 1024, 4096})
    for (std::int64_t t : {1, 2}) b->Args({n, t});
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}
void linear_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"tokens", "in", "out", "threads"});
  b->Args({64, 256, 256, 1});
  for (std::int64_t t : {1, 2}) {
    b->Args({512, 1024, 1024, t});
    b->Args({512, 4096, 4096, t});
  }
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}
void peak_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"isa", "threads"});
  for (std::int64_t isa : {0, 1})
    for (std::int64_t t : {1, 2}) b->Args({isa, t});
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK(BM_BlasSgemm)->Apply(gemm_args);
BENCHMARK(BM_BlasLinearStep)->Apply(linear_args);
BENCHMARK(BM_FmaPeak)->Apply(peak_args);

BENCHMARK_MAIN();
