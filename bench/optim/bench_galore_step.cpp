// GaLore at the size (4096 x 4096, r = 128) on a gradient-like matrix, for the peer
// comparison (bench/peers/torch_peer.py: galore_refresh / galore_step):
//   BM_GaloreRefresh   one basis refresh with the randomized solver as galore_projector runs it
//                      by default (range finder + `niter` power iterations, oversampling 8,
//                      CholeskyQR2 re-orthonormalisation, Rayleigh–Ritz tail: 2·niter + 1
//                      products with G) on G = U·diag(σ)·Vᵀ with σ_i = (i+1)^−a, a = decay/10,
//                      U and V random orthogonal. Counter `energy` = captured energy of the basis
//                      relative to the exact top-r subspace's, ‖G·Q‖²_F / Σ_{i<r} σ_i² (1 =
//                      exact; the target is ≥ 0.99). The exact value is known from σ, so no 4096²
//                      SVD is needed to score it.
//   BM_GaloreRefreshExactTail   the same with fast_tail = false: the exact tail (SVD of Qᵀ·G,
//                      2·niter + 2 products, as torch.svd_lowrank), 1 thread.
//   BM_GaloreStep      projected<adamw, galore_projector> between refreshes (project, AdamW on
//                      the [n, r] moments, project back, decoupled decay, update of W).
//   BM_GaloreStepFloor the same step's arithmetic written directly with Eigen and no temporaries
//                      of W's size (W·(1−lr·wd) then W += (−step·s)·U·Qᵀ as one GEMM): what the
//                      library's step could cost; the gap to BM_GaloreStep is the projector
//                      interface's [n, n] temporary and its extra passes over memory.
// The existing bench_optim_projectors covers the exact (BDCSVD) refresh and 8-bit moments.
//
//   ./bench_optim_galore_step --benchmark_filter='n:4096'
//
// bench-smoke-filter: /n:256/
#include <benchmark/benchmark.h>

#include <Eigen/QR>
#include <cmath>
#include <cstdint>
#include <map>
#include <utility>

#include "peft/autograd/variable.hpp"
#include "peft/core/random.hpp"
#include "peft/core/tensor.hpp"
#include "peft/core/threads.hpp"
#include "peft/detail/svd.hpp"
#include "peft/optim/adam.hpp"
#include "peft/optim/projected.hpp"
#include "peft/optim/projection/galore.hpp"

namespace {

using T = float;
using peft::matrix;

matrix<T> gaussian(Eigen::Index r, Eigen::Index c, std::uint64_t seed) {
  peft::rng g(seed);
  return peft::as_matrix(peft::randn<T>({std::size_t(r), std::size_t(c)}, g));
}

// σ_i = (i+1)^−a, i = 0..n−1.
peft::vector<T> spectrum(Eigen::Index n, double a) {
  peft::vector<T> s(n);
  for (Eigen::Index i = 0; i < n; ++i) s[i] = T(std::pow(double(i + 1), -a));
  return s;
}

// G = U·diag(σ)·Vᵀ, built once per (n, decay) and cached: the QRs of two n x n Gaussians take
// seconds at n = 4096.
const matrix<T>& decaying_matrix(Eigen::Index n, std::int64_t decay) {
  static std::map<std::pair<Eigen::Index, std::int64_t>, matrix<T>> cache;
  static std::map<Eigen::Index, std::pair<matrix<T>, matrix<T>>> bases;
  auto key = std::make_pair(n, decay);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  auto b = bases.find(n);
  if (b == bases.end())
    b = bases.emplace(n, std::make_pair(peft::detail::orthonormal_basis<T>(gaussian(n, n, 11)),
                                        peft::detail::orthonormal_basis<T>(gaussian(n, n, 12))))
            .first;
  const auto& [U, V] = b->second;
  matrix<T> G = (U * spectrum(n, double(decay) / 10).asDiagonal()) * V.transpose();
  return cache.emplace(key, std::move(G)).first->second;
}

void refresh_bench(benchmark::State& state, bool fast_tail) {
  const auto n = Eigen::Index(state.range(0));
  const auto r = std::size_t(state.range(1));
  const auto niter = std::size_t(state.range(2));
  const std::int64_t decay = state.range(3);
  peft::set_num_threads(int(state.range(4)));
  const matrix<T>& G = decaying_matrix(n, decay);
  peft::optim::galore_options o;
  o.rank = r;
  o.solver = peft::optim::svd_solver::randomized;
  o.power_iters = niter;
  o.fast_tail = fast_tail;
  peft::optim::galore_projector<T> p(o, std::size_t(n), std::size_t(n), 7);
  std::size_t t = 0;
  for (auto _ : state) {
    p.refresh(G, t++);
    benchmark::DoNotOptimize(p.right_basis().data());
  }
  // Score the last basis (right side for a square G: Q [n, r]).
  const matrix<T>& Q = p.right_basis();
  const double captured = double((G * Q).squaredNorm());
  const auto s = spectrum(n, double(decay) / 10);
  const double exact = double(s.head(Eigen::Index(r)).squaredNorm());
  state.counters["energy"] = captured / exact;
}

void BM_GaloreRefresh(benchmark::State& state) { refresh_bench(state, true); }
void BM_GaloreRefreshExactTail(benchmark::State& state) { refresh_bench(state, false); }

peft::optim::galore_options step_options(std::size_t r) {
  peft::optim::galore_options o;
  o.rank = r;
  o.update_proj_gap = std::size_t(1) << 40;  // never refresh inside the timed loop
  o.solver = peft::optim::svd_solver::randomized;
  return o;
}

void BM_GaloreStep(benchmark::State& state) {
  const auto n = std::size_t(state.range(0));
  peft::set_num_threads(int(state.range(2)));
  auto W = peft::parameter<T>(peft::to_tensor(gaussian(Eigen::Index(n), Eigen::Index(n), 2)));
  peft::detail::accumulate(*W.get(),
                           peft::to_tensor(gaussian(Eigen::Index(n), Eigen::Index(n), 3)));
  peft::optim::projected<peft::optim::adamw<T>, peft::optim::galore_projector<T>> opt(
      {W}, {}, step_options(std::size_t(state.range(1))));
  opt.step();  // the refresh, before timing
  for (auto _ : state) {
    opt.step();
    benchmark::DoNotOptimize(W.value().data());
    benchmark::ClobberMemory();
  }
  state.counters["state_bytes"] = double(opt.state_bytes());
}

// The steady step's math with no W-sized temporary: low = G·Q; AdamW moments on low;
// W ← W·(1 − lr·wd); W += (−lr/bc1 · scale) · (m / (sqrt(v)/sqrt(bc2) + eps)) · Qᵀ.
void BM_GaloreStepFloor(benchmark::State& state) {
  const auto n = Eigen::Index(state.range(0)), r = Eigen::Index(state.range(1));
  peft::set_num_threads(int(state.range(2)));
  matrix<T> W = gaussian(n, n, 2);
  const matrix<T> G = gaussian(n, n, 3);
  const matrix<T> Q = peft::detail::orthonormal_basis<T>(gaussian(n, r, 4));
  matrix<T> low(n, r), m = matrix<T>::Zero(n, r), v = matrix<T>::Zero(n, r);
  const double lr = 1e-3, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 1e-2, scale = 0.25;
  std::size_t t = 0;
  for (auto _ : state) {
    ++t;
    low.noalias() = G * Q;
    m.array() += T(1 - b1) * (low.array() - m.array());
    v.array() = v.array() * T(b2) + T(1 - b2) * low.array().square();
    const T bc2 = T(std::sqrt(1 - std::pow(b2, double(t))));
    low.array() = m.array() / (v.array().sqrt() / bc2 + T(eps));
    W.array() *= T(1 - lr * wd);
    const T step = T(-lr / (1 - std::pow(b1, double(t))) * scale);
    W.noalias() += (step * low) * Q.transpose();
    benchmark::DoNotOptimize(W.data());
    benchmark::ClobberMemory();
  }
}

void refresh_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"n", "r", "niter", "decay", "threads"});
  b->Args({256, 16, 2, 10, 1});
  // decay 5: a slowly decaying spectrum (a = 0.5), where fewer power iterations lose energy.
  for (std::int64_t t : {1, 2})
    for (std::int64_t decay : {10, 5})
      for (std::int64_t it : {2, 1}) b->Args({4096, 128, it, decay, t});
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}
void exact_tail_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"n", "r", "niter", "decay", "threads"});
  b->Args({256, 16, 2, 10, 1});
  for (std::int64_t decay : {10, 5})
    for (std::int64_t it : {2, 1}) b->Args({4096, 128, it, decay, 1});
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}
void step_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"n", "r", "threads"});
  b->Args({256, 16, 1});
  for (std::int64_t t : {1, 2}) b->Args({4096, 128, t});
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK(BM_GaloreRefresh)->Apply(refresh_args);
BENCHMARK(BM_GaloreRefreshExactTail)->Apply(exact_tail_args);
BENCHMARK(BM_GaloreStep)->Apply(step_args);
BENCHMARK(BM_GaloreStepFloor)->Apply(step_args);

BENCHMARK_MAIN();
