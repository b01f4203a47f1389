// Cost of a basis refresh and of one projected step (project + project_back) for the Flora,
// COAP and DCT projectors on an [n, n] gradient at rank r, with GaLore (exact and randomized
// SVD) as the baseline:
//   - Flora "refresh" = a resample: new seed + the first moment carried over (two [n, r] Gaussian
//     draws and an [r, r] product); its step regenerates the matrix (the matrix is never kept).
//   - COAP: a re-projection (warm-started range finder: G·P, QR, SVD of an [r, n] matrix) and a
//     correlation-aware update (refresh + transfer of the first moment: the O(n²·r) gradient of
//     the objective).
//   - DCT: the ranking product G·Dᵀ (n³) over a cached shared DCT matrix, and a top-r sort.
//
//   ./bench_optim_projectors_more --benchmark_filter='n:1024/r:32'
//
// One thread (the machine is shared); wall-clock time. A counter `state_B` reports the bytes the
// projector keeps between steps at this size.
//
// bench-smoke-filter: /n:128/
#include <benchmark/benchmark.h>

#include <cstdint>

#include "peft/core/random.hpp"
#include "peft/core/tensor.hpp"
#include "peft/core/threads.hpp"
#include "peft/optim/projection/coap.hpp"
#include "peft/optim/projection/dct.hpp"
#include "peft/optim/projection/flora.hpp"
#include "peft/optim/projection/galore.hpp"

namespace {

using T = float;
using peft::matrix;
namespace optim = peft::optim;

matrix<T> gaussian(Eigen::Index r, Eigen::Index c, std::uint64_t seed) {
  peft::rng g(seed);
  matrix<T> m(r, c);
  for (Eigen::Index k = 0; k < m.size(); ++k) m.data()[k] = T(g.normal());
  return m;
}

struct sizes {
  std::size_t n, r;
  explicit sizes(const benchmark::State& s) : n(std::size_t(s.range(0))), r(std::size_t(s.range(1))) {
    peft::set_num_threads(1);
  }
};

void BM_FloraRefresh(benchmark::State& state) {
  const sizes z(state);
  optim::flora_options o;
  o.rank = z.r;
  o.kappa = 1;
  optim::flora_projector<T> p(o, z.n, z.n, 1);
  const matrix<T> G = gaussian(Eigen::Index(z.n), Eigen::Index(z.n), 2);
  matrix<T> m = gaussian(Eigen::Index(z.n), Eigen::Index(z.r), 3);
  p.refresh(G, 0);
  std::size_t t = 1;
  for (auto _ : state) {
    p.refresh(G, t++);
    p.transfer(m, optim::moment::first);
    benchmark::DoNotOptimize(m.data());
  }
  state.counters["state_B"] = double(p.state_bytes());
}

void BM_CoapReproject(benchmark::State& state) {
  const sizes z(state);
  optim::coap_options o;
  o.rank = z.r;
  o.update_interval = 1;
  o.reproject_factor = 1;
  optim::coap_projector<T> p(o, z.n, z.n, 1);
  const matrix<T> G = gaussian(Eigen::Index(z.n), Eigen::Index(z.n), 2);
  p.refresh(G, 0);
  std::size_t t = 1;
  for (auto _ : state) {
    p.refresh(G, t++);
    benchmark::DoNotOptimize(p.basis().data());
  }
  state.counters["state_B"] = double(p.state_bytes());
}

void BM_CoapCorrelationUpdate(benchmark::State& state) {
  const sizes z(state);
  optim::coap_options o;
  o.rank = z.r;
  o.update_interval = 1;
  o.reproject_factor = std::size_t(1) << 40;
  optim::coap_projector<T> p(o, z.n, z.n, 1);
  const matrix<T> G = gaussian(Eigen::Index(z.n), Eigen::Index(z.n), 2);
  const matrix<T> M = gaussian(Eigen::Index(z.n), Eigen::Index(z.r), 3);
  p.refresh(G, 0);
  std::size_t t = 1;
  for (auto _ : state) {
    p.refresh(G, t++);
    matrix<T> m = M;
    p.transfer(m, optim::moment::first);
    benchmark::DoNotOptimize(p.basis().data());
  }
  state.counters["state_B"] = double(p.state_bytes());
}

void BM_DctRefresh(benchmark::State& state) {
  const sizes z(state);
  optim::dct_options o;
  o.rank = z.r;
  o.update_interval = 1;
  optim::dct_projector<T> p(o, z.n, z.n);
  const matrix<T> G = gaussian(Eigen::Index(z.n), Eigen::Index(z.n), 2);
  p.refresh(G, 0);  // builds the shared DCT matrix once (not timed)
  std::size_t t = 1;
  for (auto _ : state) {
    p.refresh(G, t++);
    benchmark::DoNotOptimize(p.indices().data());
  }
  state.counters["state_B"] = double(p.state_bytes());
  state.counters["shared_basis_B"] = double(p.shared_basis_bytes());
}

template <optim::svd_solver Solver>
void BM_GaloreRefresh(benchmark::State& state) {
  const sizes z(state);
  optim::galore_options o;
  o.rank = z.r;
  o.update_proj_gap = 1;
  o.solver = Solver;
  optim::galore_projector<T> p(o, z.n, z.n, 1);
  const matrix<T> G = gaussian(Eigen::Index(z.n), Eigen::Index(z.n), 2);
  std::size_t t = 0;
  for (auto _ : state) {
    p.refresh(G, t++);
    benchmark::DoNotOptimize(p.right_basis().data());
  }
  state.counters["state_B"] = double(p.state_bytes());
}

// project + project_back of one step, basis already computed.
template <class P, class O>
void step_bench(benchmark::State& state, O o) {
  const sizes z(state);
  o.rank = z.r;
  P p(o, z.n, z.n, 1);
  const matrix<T> G = gaussian(Eigen::Index(z.n), Eigen::Index(z.n), 2);
  p.refresh(G, 0);
  for (auto _ : state) {
    matrix<T> low = p.project(G, 1);
    matrix<T> back = p.project_back(low, 1);
    benchmark::DoNotOptimize(back.data());
  }
}
void BM_FloraStep(benchmark::State& s) { step_bench<optim::flora_projector<T>>(s, optim::flora_options{}); }
void BM_CoapStep(benchmark::State& s) { step_bench<optim::coap_projector<T>>(s, optim::coap_options{}); }
void BM_DctStep(benchmark::State& s) { step_bench<optim::dct_projector<T>>(s, optim::dct_options{}); }
void BM_GaloreStep(benchmark::State& s) { step_bench<optim::galore_projector<T>>(s, optim::galore_options{}); }

void args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"n", "r"});
  b->Args({128, 8});
  b->Args({1024, 32});
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK(BM_FloraRefresh)->Apply(args);
BENCHMARK(BM_CoapReproject)->Apply(args);
BENCHMARK(BM_CoapCorrelationUpdate)->Apply(args);
BENCHMARK(BM_DctRefresh)->Apply(args);
BENCHMARK(BM_GaloreRefresh<optim::svd_solver::exact>)->Apply(args);
BENCHMARK(BM_GaloreRefresh<optim::svd_solver::randomized>)->Apply(args);
BENCHMARK(BM_FloraStep)->Apply(args);
BENCHMARK(BM_CoapStep)->Apply(args);
BENCHMARK(BM_DctStep)->Apply(args);
BENCHMARK(BM_GaloreStep)->Apply(args);

BENCHMARK_MAIN();
