// serve_many: one base model, 64 adapters, a stream of requests that each name their adapter.
//
//   1. a base nn::llama (random, seeded; width --dim) and 64 random adapters on all of its
//      attention and MLP Linears: LoRA of ranks 4/8/16 with different alphas, rsLoRA, DoRA and
//      VeRA (sharing one projection pair), held by a serve::adapter_registry;
//   2. the Linears are swapped for serve::mixed_linear (install_mixed_linears), so one forward
//      runs a batch of sequences each with its own adapter: one base GEMM per layer plus two small
//      GEMMs per adapter present (mixed_batch.hpp);
//   3. it times the same request stream three ways (and the base model alone for reference):
//        single adapter      every request uses adapter 0, batched
//        mixed (64)          every request uses its own adapter, batched in the same forward
//        merge per request   for each request: W += ΔW on every layer, run it alone, W -= ΔW
//      and prints requests/s and tokens/s in a table;
//   4. checks that every request's mixed-batch logits equal its merge-per-request logits (and
//      that the adapters do change them); exits 1 if not.
//
// Build target: serve_many. Run: serve_many [--smoke] [--dim 1024] [--layers 2] [--requests 64]
//   [--batch 16] [--seq 16] [--threads 2] [--seed 1]
// --smoke: a small model and stream (< 5 s), for ctest.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/sysinfo.hpp"
#include "common/table.hpp"
#include "peft/core/random.hpp"
#include "peft/core/threads.hpp"
#include "peft/nn/transformer.hpp"
#include "peft/serve/serve.hpp"

namespace {

using T = float;
using namespace peft;

struct request {
  std::string adapter;  // registry name
  std::vector<std::int64_t> tokens;
};

// Adapter k: a LoRA family member on every Linear of the model. Kinds cycle so that a run of
// 64 has each several times: k % 8 == 5 DoRA, k % 8 == 7 VeRA, k % 8 == 3 rsLoRA, else LoRA.
serve::served_adapter<T> make_adapter(std::size_t k, const serve::base_weights<T>& base,
                                      const std::shared_ptr<const vera_shared<T>>& shared, std::uint64_t seed) {
  rng g = rng(seed).fork(1000 + k);
  const std::size_t ranks[] = {4, 8, 16};
  const std::size_t r = ranks[k % 3];
  const double alpha = double(r) * (0.5 + 0.25 * double(k % 5));
  serve::served_adapter<T> s;
  for (auto& [path, Wv] : base) {
    if (path == "lm_head") continue;
    const std::size_t out = Wv.dim(0), in = Wv.dim(1);
    const tensor<T> A = randn<T>({r, in}, g, 0.0, 1.0 / std::sqrt(double(in)));
    const tensor<T> B = randn<T>({out, r}, g, 0.0, 0.05);
    if (k % 8 == 7) {
      const tensor<T> ld = randn<T>({16}, g, 0.0, 1.0), lb = randn<T>({out}, g, 0.0, 0.05);
      s.layers.emplace(path, serve::layer_adapter<T>::vera_layer(shared, in, as_vector(ld), as_vector(lb)));
    } else if (k % 8 == 5) {
      const auto W = as_matrix(Wv.value());
      vector<T> m = W.rowwise().norm();
      for (Eigen::Index i = 0; i < m.size(); ++i) m[i] *= T(1.0 + 0.2 * (g.uniform() - 0.5));
      s.layers.emplace(path, serve::layer_adapter<T>::dora(as_matrix(A), T(alpha / double(r)) * as_matrix(B), m, W));
    } else {
      const double scale = k % 8 == 3 ? alpha / std::sqrt(double(r)) : alpha / double(r);
      s.layers.emplace(path, serve::layer_adapter<T>::lora(as_matrix(A), as_matrix(B), scale));
    }
  }
  return s;
}

std::vector<std::int64_t> flatten(const std::vector<request>& rs, std::size_t from, std::size_t n) {
  std::vector<std::int64_t> ids;
  for (std::size_t i = from; i < from + n; ++i) ids.insert(ids.end(), rs[i].tokens.begin(), rs[i].tokens.end());
  return ids;
}

double rel_diff(const matrix<T>& a, const matrix<T>& b) {
  return double((a - b).cwiseAbs().maxCoeff()) / std::max(1.0, double(b.cwiseAbs().maxCoeff()));
}

}  // namespace

int main(int argc, char** argv) {
  bool smoke = false;
  std::size_t dim = 1024, layers = 2, n_requests = 64, batch = 16, seq = 16, n_adapters = 64;
  int threads = 2;
  std::uint64_t seed = 1;
  CLI::App app{"serve_many: one base model, 64 adapters, a mixed request stream; throughput and a correctness check."};
  app.add_flag("--smoke", smoke, "small and fast (< 5 s), for ctest");
  app.add_option("--dim", dim, "model width (the MLP is 2.75x wider)")->check(CLI::PositiveNumber);
  app.add_option("--layers", layers, "decoder layers")->check(CLI::PositiveNumber);
  app.add_option("--requests", n_requests, "requests in the stream")->check(CLI::PositiveNumber);
  app.add_option("--batch", batch, "requests per batched forward")->check(CLI::PositiveNumber);
  app.add_option("--seq", seq, "tokens per request")->check(CLI::PositiveNumber);
  app.add_option("--adapters", n_adapters, "distinct adapters (>= 8 covers every kind)")->check(CLI::PositiveNumber);
  app.add_option("--threads", threads, "GEMM threads")->check(CLI::PositiveNumber);
  app.add_option("--seed", seed, "seed for the model, the adapters and the stream");
  CLI11_PARSE(app, argc, argv);
  if (smoke) {
    dim = 128;
    layers = 2;
    n_requests = 32;
    batch = 16;
    seq = 8;
  }
  if (batch > n_requests) batch = n_requests;
  set_num_threads(threads);

  // 1. The base model and the adapters.
  nn::llama_config c;
  c.vocab = 256;
  c.dim = dim;
  c.n_layers = layers;
  c.n_heads = std::max<std::size_t>(1, dim / 64);
  c.hidden_dim = dim * 11 / 4;
  c.max_seq = std::max<std::size_t>(seq, 16);
  rng g(seed);
  auto model = std::make_shared<nn::llama<T>>(c, g);
  model->eval();
  const auto paths = serve::install_mixed_linears<T>(*model);  // all Linears but lm_head
  serve::adapter_registry<T> registry(*model);
  auto shared = std::make_shared<const vera_shared<T>>(16, c.hidden_dim, c.hidden_dim, seed + 7);
  std::vector<std::string> names;
  for (std::size_t k = 0; k < n_adapters; ++k) {
    names.push_back("adapter" + std::to_string(k));
    registry.insert(names.back(), make_adapter(k, registry.base(), shared, seed));
  }
  const auto st = registry.stats();
  std::printf("base: llama dim %zu, %zu layers, MLP %zu, %zu mixed_linear layers; %zu adapters, %s resident\n",
              dim, layers, c.hidden_dim, paths.size(), n_adapters, examples::format_bytes(double(st.bytes)).c_str());

  // 2. The request stream: random tokens, a uniformly random adapter per request.
  std::vector<request> stream(n_requests);
  rng rq = rng(seed).fork(7);
  for (auto& r : stream) {
    r.adapter = names[rq.uniform_int(n_adapters)];
    for (std::size_t t = 0; t < seq; ++t) r.tokens.push_back(std::int64_t(rq.uniform_int(c.vocab)));
  }
  const std::size_t V = c.vocab, rows_per_req = seq;
  matrix<T> out_mixed(Eigen::Index(n_requests * rows_per_req), Eigen::Index(V));
  matrix<T> out_merged = out_mixed, out_single = out_mixed;

  // Batched: requests [i, i + batch) in one forward, each with adapter `pick(request)`.
  auto run_batched = [&](auto pick, matrix<T>* keep) {
    for (std::size_t i = 0; i < n_requests; i += batch) {
      const std::size_t n = std::min(batch, n_requests - i);
      serve::adapter_batch<T> b;
      for (std::size_t j = i; j < i + n; ++j) b.push(pick(stream[j]));
      const tensor<T> y = serve::forward_with_adapters(*model, flatten(stream, i, n), n, seq, b);
      if (keep) keep->middleRows(Eigen::Index(i * rows_per_req), Eigen::Index(n * rows_per_req)) = as_matrix(y);
    }
  };
  auto base_adapter = [](const request&) { return std::shared_ptr<const serve::served_adapter<T>>(); };
  auto adapter0 = [&](const request&) { return registry.get(names[0]); };
  auto own = [&](const request& r) { return registry.get(r.adapter); };

  // Merge per request: W += ΔW for every adapted layer, run the request alone, W -= ΔW.
  std::map<std::string, variable<T>> weights = registry.base();
  auto run_merged = [&](const request& r, matrix<T>* keep, std::size_t at) {
    auto a = registry.get(r.adapter);
    std::vector<std::pair<matrix_map<T>, matrix<T>>> merged;
    for (auto& [path, l] : a->layers) {
      auto W = as_matrix(weights.at(path).value());
      merged.emplace_back(W, l.delta_weight(W));
      W += merged.back().second;
    }
    tensor<T> y;
    {
      no_grad_guard ng;
      y = model->forward(r.tokens, 1, seq).value();
    }
    for (auto& [W, d] : merged) W -= d;
    if (keep) keep->middleRows(Eigen::Index(at * rows_per_req), Eigen::Index(rows_per_req)) = as_matrix(y);
  };

  // 3. Time each mode (after one warm-up batch).
  run_batched(own, nullptr);
  examples::table tab({"mode", "requests", "tokens", "seconds", "requests/s", "tokens/s", "vs single"});
  double single_tps = 0;
  auto row = [&](const std::string& mode, double s) {
    const double tps = double(n_requests * seq) / s;
    if (mode == "single adapter") single_tps = tps;
    tab.add_row({mode, std::to_string(n_requests), std::to_string(n_requests * seq), examples::fmt("%.3f", s),
                 examples::fmt("%.1f", double(n_requests) / s), examples::fmt("%.0f", tps),
                 single_tps > 0 ? examples::fmt("%.2fx", tps / single_tps) : std::string("-")});
  };
  examples::stopwatch sw;
  run_batched(base_adapter, nullptr);
  const double t_base = sw.seconds();
  sw.reset();
  run_batched(adapter0, &out_single);
  row("single adapter", sw.seconds());
  sw.reset();
  run_batched(own, &out_mixed);
  row("mixed (" + std::to_string(n_adapters) + " adapters)", sw.seconds());
  sw.reset();
  for (std::size_t i = 0; i < n_requests; ++i) run_merged(stream[i], &out_merged, i);
  row("merge per request", sw.seconds());
  row("base model, no adapter", t_base);
  std::printf("\nbatch %zu requests x %zu tokens, %d GEMM thread(s)\n", batch, seq, threads);
  tab.print();

  // 4. Correctness: mixed batch == merge per request, for every request; adapters matter.
  double worst = 0, smallest_effect = 1e30;
  matrix<T> out_base = out_mixed;
  run_batched(base_adapter, &out_base);
  for (std::size_t i = 0; i < n_requests; ++i) {
    const auto rows = [&](const matrix<T>& m) {
      return matrix<T>(m.middleRows(Eigen::Index(i * rows_per_req), Eigen::Index(rows_per_req)));
    };
    worst = std::max(worst, rel_diff(rows(out_mixed), rows(out_merged)));
    smallest_effect = std::min(smallest_effect, rel_diff(rows(out_mixed), rows(out_base)));
  }
  // The single-adapter batch against adapter 0 merged, on the first request.
  request r0 = stream[0];
  r0.adapter = names[0];
  matrix<T> ref0 = matrix<T>::Zero(Eigen::Index(rows_per_req), Eigen::Index(V));
  run_merged(r0, &ref0, 0);
  worst = std::max(worst, rel_diff(out_single.topRows(Eigen::Index(rows_per_req)), ref0));
  const bool same = worst < 1e-3;
  const bool matters = smallest_effect > 1e-3;
  std::printf("\nmixed batch vs merge per request: max relative difference %.2e (%s)\n", worst,
              same ? "agree" : "DISAGREE");
  std::printf("smallest change an adapter makes to its request's logits: %.2e (%s)\n", smallest_effect,
              matters ? "every adapter acts" : "SOME ADAPTER DOES NOTHING");
  const auto s2 = registry.stats();
  std::printf("registry: %llu hits, %llu misses, %zu adapters, %s\n", (unsigned long long)s2.hits,
              (unsigned long long)s2.misses, s2.resident, examples::format_bytes(double(s2.bytes)).c_str());
  std::printf("%s\n", same && matters ? "OK" : "FAILED");
  return same && matters ? 0 : 1;
}
