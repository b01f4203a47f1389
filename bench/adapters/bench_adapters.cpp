// Every adapter's fused fast path, forward and forward+backward, against the plain Linear it
// wraps, at (tokens, in, out, r). The base weight is frozen (PEFT's setting): backward computes
// the adapter's parameter gradients and dx, not dW.
//
//   ./bench_adapters_adapters --benchmark_filter='tokens:512/in:4096'
//
// Ratios to report: BM_Forward<lora>/BM_LinearForward and BM_ForwardBackward<lora>/BM_LinearForward.
// FLOPS counts the base GEMMs only (2·N·in·out forward, twice that with dx), so an adapter's
// FLOPS rate below the Linear's is its overhead.
//
// bench-smoke-filter: tokens:64/
#include <benchmark/benchmark.h>

#include <cstdint>
#include <memory>

#include "peft/adapters/lora.hpp"
#include "peft/adapters/moe.hpp"
#include "peft/core/random.hpp"
#include "peft/core/threads.hpp"

namespace {

using T = float;

struct lora_kind {
  static std::shared_ptr<peft::adapter<T>> make(std::size_t in, std::size_t out, std::size_t r,
                                                peft::tensor<T>&) {
    peft::lora_config c;
    c.r = r;
    c.alpha = 2.0 * double(r);
    return std::make_shared<peft::lora<T>>(in, out, c, peft::init::random_both{0.02});
  }
};
struct moe_kind {  // 4 LoRA experts of rank r/2, top-2
  static std::shared_ptr<peft::adapter<T>> make(std::size_t in, std::size_t out, std::size_t r,
                                                peft::tensor<T>&) {
    peft::moe_config mc;
    mc.num_experts = 4;
    mc.top_k = 2;
    std::vector<std::shared_ptr<peft::adapter<T>>> ex;
    for (std::size_t e = 0; e < 4; ++e) {
      peft::lora_config c;
      c.r = std::max<std::size_t>(1, r / 2);
      c.seed = e;
      ex.push_back(std::make_shared<peft::lora<T>>(in, out, c, peft::init::random_both{0.02}));
    }
    return std::make_shared<peft::moe<T>>(in, out, mc, ex);
  }
};

struct setup {
  std::size_t n, in, out, r;
  peft::tensor<T> x, W, y, dy, dx;
  explicit setup(benchmark::State& s)
      : n(std::size_t(s.range(0))), in(std::size_t(s.range(1))), out(std::size_t(s.range(2))),
        r(std::size_t(s.range(3))) {
    peft::set_num_threads(int(s.range(4)));
    peft::rng g(1);
    x = peft::randn<T>({n, in}, g);
    W = peft::randn<T>({out, in}, g, 0.0, 0.02);
    y = peft::zeros<T>({n, out});
    dy = peft::randn<T>({n, out}, g);
    dx = peft::zeros<T>({n, in});
  }
  void flops(benchmark::State& s, double passes) const {
    s.counters["FLOPS"] = benchmark::Counter(passes * 2.0 * double(n) * double(in) * double(out) *
                                                 double(s.iterations()),
                                             benchmark::Counter::kIsRate);
  }
};

void BM_LinearForward(benchmark::State& s) {
  setup u(s);
  auto xm = peft::as_matrix(u.x);
  auto Wm = peft::as_matrix(u.W);
  auto ym = peft::as_matrix(u.y);
  for (auto _ : s) {
    ym.noalias() = xm * Wm.transpose();
    benchmark::ClobberMemory();
  }
  u.flops(s, 1);
}

void BM_LinearForwardBackward(benchmark::State& s) {
  setup u(s);
  auto xm = peft::as_matrix(u.x);
  auto Wm = peft::as_matrix(u.W);
  auto ym = peft::as_matrix(u.y);
  auto dym = peft::as_matrix(u.dy);
  auto dxm = peft::as_matrix(u.dx);
  for (auto _ : s) {
    ym.noalias() = xm * Wm.transpose();
    dxm.noalias() = dym * Wm;
    benchmark::ClobberMemory();
  }
  u.flops(s, 2);
}

template <class Kind>
void BM_Forward(benchmark::State& s) {
  setup u(s);
  auto a = Kind::make(u.in, u.out, u.r, u.W);
  peft::adapter_ctx<T> ctx;
  for (auto _ : s) {
    a->forward(peft::as_matrix(u.x), peft::as_matrix(u.W), nullptr, peft::as_matrix(u.y), ctx,
               true);
    benchmark::ClobberMemory();
  }
  u.flops(s, 1);
}

template <class Kind>
void BM_ForwardBackward(benchmark::State& s) {
  setup u(s);
  auto a = Kind::make(u.in, u.out, u.r, u.W);
  peft::adapter_ctx<T> ctx;
  for (auto _ : s) {
    a->forward(peft::as_matrix(u.x), peft::as_matrix(u.W), nullptr, peft::as_matrix(u.y), ctx,
               true);
    auto dxm = peft::as_matrix(u.dx);
    dxm.setZero();
    peft::matrix_ref<T> dxr(dxm);
    a->backward(peft::as_matrix(u.dy), peft::as_matrix(u.x), peft::as_matrix(u.W), ctx, &dxr,
                nullptr);
    for (auto& [name, v] : a->named_parameters()) v.zero_grad();
    benchmark::ClobberMemory();
  }
  u.flops(s, 2);
}

void shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"tokens", "in", "out", "r", "threads"});
  b->Args({64, 256, 256, 8, 1});
  for (std::int64_t t : {1, 2}) {
    b->Args({512, 1024, 1024, 16, t});
    b->Args({512, 4096, 4096, 16, t});
  }
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK(BM_LinearForward)->Apply(shapes);
BENCHMARK(BM_LinearForwardBackward)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_Forward, lora_kind)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_ForwardBackward, lora_kind)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_Forward, moe_kind)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_ForwardBackward, moe_kind)->Apply(shapes);
// ---- add new adapter kinds above this line ----

BENCHMARK_MAIN();
