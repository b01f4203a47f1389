// One full training step of a small Llama-style decoder (nn::llama): token ids -> logits ->
// cross-entropy -> backward -> AdamW -> zero_grad, in two settings:
//   BM_LlamaLoraStep  LoRA (r = 8, alpha = 16) on q/k/v/o and gate/up/down of every layer,
//                     everything else frozen; AdamW on the adapters only;
//   BM_LlamaFullStep  full fine-tuning: AdamW on every parameter.
// The model is the "2-layer d=256 transformer": vocab 4096, dim 256, 2 layers, 4 heads
// (head dim 64), SwiGLU width 768 (Llama's 8/3·d rounded up to a multiple of 256), untied
// lm_head, RoPE; batch 8 x seq 128 tokens. bench/peers/torch_peer.py builds the same model in
// PyTorch (llama_lora_step / llama_full_step) with the same sizes.
//
//   ./bench_nn_llama_step --benchmark_filter='threads:2'
//
// FLOPS counts the matrix products of forward and backward (the backward of a frozen Linear
// computes dx only), so the two settings' rates compare directly. `tokens` is batch·seq.
//
// bench-smoke-filter: /dim:32/
#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include "peft/adapters/inject.hpp"
#include "peft/core/random.hpp"
#include "peft/core/threads.hpp"
#include "peft/nn/loss.hpp"
#include "peft/nn/transformer.hpp"
#include "peft/optim/adam.hpp"

namespace {

using T = float;

struct config {
  peft::nn::llama_config model;
  std::size_t batch, seq, r = 8;
  explicit config(const benchmark::State& s) {
    const auto d = std::size_t(s.range(0));
    model.dim = d;
    model.n_layers = 2;
    model.n_heads = d >= 256 ? 4 : 2;
    model.hidden_dim = d >= 256 ? 3 * d : 2 * d;  // 768 at d = 256
    model.vocab = d >= 256 ? 4096 : 64;
    batch = d >= 256 ? 8 : 2;
    seq = d >= 256 ? 128 : 16;
    model.max_seq = seq;
    peft::set_num_threads(int(s.range(1)));
  }
  // Products per step: 2·(tokens·params of every Linear) forward, attention's QKᵀ and PV;
  // backward: dx for every product, plus dW where the weight trains (full fine-tuning).
  double flops(bool full) const {
    const double tok = double(batch * seq), d = double(model.dim), h = double(model.hidden_dim);
    const double lin = double(model.n_layers) * (4 * d * d + 3 * d * h);
    const double head = d * double(model.vocab);
    const double attn = double(model.n_layers) * 2.0 * double(seq) * d;  // per token, causal ×½ ignored
    const double fwd = 2 * tok * (lin + head + attn);
    const double bwd_dx = fwd;                           // dx through every product
    const double bwd_dw = full ? 2 * tok * (lin + head) : 0;
    return fwd + bwd_dx + bwd_dw;
  }
};

std::vector<std::int64_t> tokens(std::size_t n, std::size_t vocab, std::uint64_t seed) {
  peft::rng g(seed);
  std::vector<std::int64_t> ids(n);
  for (auto& i : ids) i = std::int64_t(g.uniform_int(vocab));
  return ids;
}

void run(benchmark::State& s, bool full) {
  const config c(s);
  peft::rng g(1);
  peft::nn::llama<T> model(c.model, g);
  if (!full) {
    peft::lora_config lc;
    lc.r = c.r;
    lc.alpha = 2.0 * double(c.r);
    peft::inject_options io;
    io.targets = peft::target_modules::list(
        {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"});
    peft::inject_lora(model, lc, io);
  }
  peft::optim::adamw<T> opt(model.trainable_parameters());
  const auto ids = tokens(c.batch * c.seq, c.model.vocab, 2);
  const auto targets = tokens(c.batch * c.seq, c.model.vocab, 3);
  for (auto _ : s) {
    auto loss = peft::nn::cross_entropy(model(ids, c.batch, c.seq), targets);
    loss.backward();
    opt.step();
    opt.zero_grad();
    benchmark::DoNotOptimize(loss.item());
  }
  s.counters["FLOPS"] =
      benchmark::Counter(c.flops(full) * double(s.iterations()), benchmark::Counter::kIsRate);
  s.counters["tokens"] = double(c.batch * c.seq);
  s.counters["trainable"] = double(model.num_parameters(true));
}

void BM_LlamaLoraStep(benchmark::State& s) { run(s, false); }
void BM_LlamaFullStep(benchmark::State& s) { run(s, true); }

void args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"dim", "threads"});
  b->Args({32, 1});
  for (std::int64_t t : {1, 2}) b->Args({256, t});
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK(BM_LlamaLoraStep)->Apply(args);
BENCHMARK(BM_LlamaFullStep)->Apply(args);

BENCHMARK_MAIN();
