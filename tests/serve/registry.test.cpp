#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "peft/adapters/dora.hpp"
#include "peft/adapters/inject.hpp"
#include "peft/adapters/vera.hpp"
#include "peft/io/gguf_llama.hpp"
#include "peft/io/peft_dir.hpp"
#include "peft/nn/linear.hpp"
#include "peft/nn/transformer.hpp"
#include "peft/serve/mixed_linear.hpp"
#include "peft/serve/registry.hpp"
#include "../support/temp_dir.hpp"
#include "../support/toy_model.hpp"
#include "../support/tiny_llama.hpp"

using namespace peft;
using Catch::Matchers::Contains;

namespace {
using test::block;
using test::temp_dir;
using test::toy;



inject_options targets(std::vector<std::string> names) {
  inject_options o;
  o.targets = target_modules::list(std::move(names));
  return o;
}
lora_config lcfg(std::size_t r, double alpha, bool rs = false) {
  lora_config c;
  c.r = r;
  c.alpha = alpha;
  c.use_rslora = rs;
  return c;
}
void randomize(nn::module<double>& m, std::uint64_t seed) {
  rng g(seed);
  for (auto& [name, v] : m.named_parameters())
    if (name.find("lora_B") != std::string::npos || name.find("vera_lambda") != std::string::npos)
      fill_normal(v.value(), 0.0, 0.5, g);
    else if (name.find("magnitude") != std::string::npos)
      for (auto& x : v.value()) x *= 1.0 + 0.5 * g.uniform();
}

// Every adapted layer of `model` against the served form: the same merged change.
void check_same_deltas(nn::module<double>& model, const serve::served_adapter<double>& s) {
  auto layers = adapted_layers(model);
  CHECK(layers.size() == s.layers.size());
  for (auto& [path, al] : layers) {
    INFO("layer " << path);
    const auto* l = s.find(path);
    REQUIRE(l != nullptr);
    const auto W = as_matrix(al->base_layer->weight.value());
    const matrix<double> theirs = al->get_adapter().delta_weight(W);
    const matrix<double> mine = l->delta_weight(W);
    CHECK((mine - theirs).cwiseAbs().maxCoeff() <= 1e-6 * std::max(1.0, theirs.cwiseAbs().maxCoeff()));
    CHECK(theirs.cwiseAbs().maxCoeff() > 1e-3);  // not a trivial (identity) adapter
  }
}

// Saves model's adapters as a PEFT directory (F64 so the round trip is exact).
void save_dir(nn::module<double>& model, const std::string& dir) {
  io::save_peft_adapter(dir, model, io::make_adapter_config(model), io::dtype::F64);
}

// An in-memory adapter on the toy's encoder.q_proj [5, 6] whose every factor entry is `value`.
serve::served_adapter<double> filled(double value, std::size_t r = 2) {
  serve::served_adapter<double> s;
  s.layers.emplace("encoder.q_proj", serve::layer_adapter<double>::low_rank(matrix<double>::Constant(Eigen::Index(r), 6, value),
                                                                            matrix<double>::Constant(5, Eigen::Index(r), value)));
  return s;
}
bool all_equal(const serve::served_adapter<double>& s, double value) {
  const auto* l = s.find("encoder.q_proj");
  return l && (l->A.array() == value).all() && (l->B.array() == value).all();
}
std::string key(int k) {
  std::string s = "n";  // (not "n" + to_string: g++ 12 warns falsely on that)
  s += std::to_string(k);
  return s;
}
constexpr std::size_t filled_bytes = (2 * 6 + 5 * 2) * sizeof(double);

}  // namespace

TEST_CASE("registry: PEFT directories (LoRA, rsLoRA, patterns, DoRA, VeRA) load into serving form",
          "[serve][registry]") {
  temp_dir tmp;
  auto base = std::make_shared<toy<double>>();
  serve::adapter_registry<double> reg(*base);

  SECTION("LoRA with rank_pattern / alpha_pattern, and rsLoRA") {
    for (bool rs : {false, true}) {
      INFO("rslora " << rs);
      auto m = std::make_shared<toy<double>>();
      inject_options o = targets({"q_proj", "v_proj"});
      o.rank_pattern["decoder.q_proj"] = 3;
      o.alpha_pattern["v_proj"] = 5.0;
      inject_lora<double>(*m, lcfg(2, 4, rs), o);
      randomize(*m, 3);
      const std::string dir = tmp / (rs ? "rslora" : "lora");
      save_dir(*m, dir);
      auto h = reg.load(rs ? "rs" : "plain", dir);
      CHECK(h->name == (rs ? "rs" : "plain"));
      CHECK(h->source == dir);
      check_same_deltas(*m, *h);
      CHECK(h->find("decoder.q_proj")->r == 3);
    }
  }
  SECTION("DoRA: the row scale is computed against the registry's base weights") {
    auto m = std::make_shared<toy<double>>();
    inject_adapters<double>(*m, targets({"q_proj"}), 2, 3.0, [&](const layer_info<double>& info) {
      return std::static_pointer_cast<adapter<double>>(
          dora_lora<double>(info.in, info.out, lcfg(info.r, info.alpha), info.base->weight.value()));
    });
    randomize(*m, 4);
    save_dir(*m, tmp / "dora");
    auto h = reg.load("dora", tmp / "dora");
    check_same_deltas(*m, *h);
    CHECK(h->find("encoder.q_proj")->kind == serve::adapter_kind::dora);
  }
  SECTION("VeRA, projections saved or regenerated from the key") {
    for (bool save : {true, false}) {
      INFO("save_projection " << save);
      auto m = std::make_shared<toy<double>>();
      const std::vector<shape_t> shapes{{5, 6}, {4, 5}, {7, 4}, {5, 7}};
      auto shared = std::make_shared<vera_shared<double>>(3, shapes, 17);
      inject_adapters<double>(*m, targets({"q_proj", "v_proj"}), 3, 0.0, [&](const layer_info<double>& info) {
        vera_config vc;
        vc.r = 3;
        vc.projection_prng_key = 17;
        vc.save_projection = save;
        return std::static_pointer_cast<adapter<double>>(std::make_shared<vera<double>>(info.in, info.out, shared, vc));
      });
      randomize(*m, 5);
      const std::string dir = tmp / (save ? "vera_saved" : "vera_key");
      save_dir(*m, dir);
      auto h = reg.load(save ? "vs" : "vk", dir);
      check_same_deltas(*m, *h);
      // One shared pair for the whole adapter, counted once.
      CHECK(h->find("encoder.q_proj")->vera == h->find("decoder.v_proj")->vera);
      CHECK(h->bytes() == (4 * 3 + (5 + 4 + 7 + 5) + 3 * 7 + 7 * 3) * sizeof(double));
    }
  }
  SECTION("after install_mixed_linears, and run through the model") {
    auto m = std::make_shared<toy<double>>();
    inject_lora<double>(*m, lcfg(2, 4), targets({"encoder.q_proj", "decoder.v_proj"}));
    randomize(*m, 6);
    save_dir(*m, tmp / "run");
    serve::install_mixed_linears<double>(*base, target_modules::all_linear_layers());
    serve::adapter_registry<double> reg2(*base);
    CHECK(reg2.base().count("encoder.q_proj"));
    CHECK(reg2.base().size() == 5);
    auto h = reg2.load("run", tmp / "run");
    rng g(9);
    const tensor<double> x = randn<double>({3, 6}, g);
    serve::adapter_batch<double> b;
    b.push(h);
    b.push(nullptr);
    b.push(h);
    tensor<double> y;
    {
      no_grad_guard ng;
      serve::adapter_batch_scope<double> scope(b);
      y = base->forward(constant(x)).value();
    }
    no_grad_guard ng;
    const tensor<double> ya = m->forward(constant(x)).value();
    const tensor<double> yb = toy<double>().forward(constant(x)).value();
    CHECK((as_matrix(y).row(0) - as_matrix(ya).row(0)).cwiseAbs().maxCoeff() < 1e-12);
    CHECK((as_matrix(y).row(1) - as_matrix(yb).row(1)).cwiseAbs().maxCoeff() < 1e-12);
    CHECK((as_matrix(y).row(2) - as_matrix(ya).row(2)).cwiseAbs().maxCoeff() < 1e-12);
    CHECK((as_matrix(ya) - as_matrix(yb)).cwiseAbs().maxCoeff() > 1e-3);
  }
  SECTION("bad files throw naming the file and the tensor") {
    auto m = std::make_shared<toy<double>>();
    inject_lora<double>(*m, lcfg(2, 4), targets({"q_proj"}));
    save_dir(*m, tmp / "ok");
    // Missing tensor: rewrite the weights without one key.
    {
      auto f = io::safetensors_file::load(tmp / "ok/adapter_model.safetensors");
      f.erase("base_model.model.decoder.q_proj.lora_B.weight");
      std::filesystem::create_directories(tmp / "missing");
      std::filesystem::copy_file(tmp / "ok/adapter_config.json", tmp / "missing/adapter_config.json");
      f.save(tmp / "missing/adapter_model.safetensors");
    }
    CHECK_THROWS_AS(reg.load("x", tmp / "missing"), io_error);
    CHECK_THROWS_WITH(reg.load("x", tmp / "missing"), Contains("decoder.q_proj.lora_B.weight") && Contains("missing"));
    CHECK_FALSE(reg.contains("x"));  // a failed load registers nothing
    // An adapter for another model: the shapes do not fit.
    {
      rng g(1);
      auto small = std::make_shared<block<double>>(6, 5, 4, g);
      inject_lora<double>(*small, lcfg(2, 4), targets({"q_proj"}));
      save_dir(*small, tmp / "small");
      auto wide = std::make_shared<block<double>>(6, 9, 4, g);
      serve::adapter_registry<double> reg3(*wide);
      CHECK_THROWS_WITH(reg3.load("s", tmp / "small"),
                        Contains("q_proj.lora_B.weight' has shape [5,2]") && Contains("needs [9,2]"));
    }
    CHECK_THROWS_AS(reg.load("y", tmp / "nowhere"), io_error);
    CHECK_THROWS_WITH(reg.get("nobody"), Contains("no adapter named 'nobody'"));
  }
}

TEST_CASE("registry: a llama.cpp LoRA GGUF loads with the q/k rows put back", "[serve][registry][gguf]") {
  temp_dir tmp;
  const nn::llama_config c = test::tiny_llama_config(32);
  auto make = [&] {
    rng g(3);
    return std::make_shared<nn::llama<double>>(c, g);
  };
  auto m = make();
  inject_options o = targets({"q_proj", "k_proj", "v_proj", "down_proj"});
  o.alpha_pattern["k_proj"] = 2.0;
  inject_lora<double>(*m, lcfg(4, 8, true), o);
  randomize(*m, 7);
  io::gguf_lora_options go;
  go.weight_type = io::ggml_type::F32;
  io::save_gguf_lora(*m, tmp / "a.gguf", go);
  auto base = make();
  serve::adapter_registry<double> reg(*base);
  auto h = reg.load("g", tmp / "a.gguf");
  check_same_deltas(*m, *h);  // within float rounding of the F32 file
  // A non-llama base cannot read GGUF (no q/k row order).
  toy<double> t;
  serve::adapter_registry<double> reg2(t);
  CHECK_THROWS_WITH(reg2.load("g", tmp / "a.gguf"), Contains("nn::llama"));
}

TEST_CASE("registry: budget, LRU eviction, pinning, snapshots, stats", "[serve][registry]") {
  toy<double> base;
  serve::adapter_registry<double> reg(base, 3 * filled_bytes);
  std::atomic<int> loads{0};
  for (int k = 0; k < 5; ++k)
    reg.add_source("a" + std::to_string(k), [k, &loads] {
      ++loads;
      return filled(k + 1);
    });
  CHECK(reg.stats().resident == 0);
  CHECK(reg.stats().registered == 5);

  auto h0 = reg.get("a0");
  reg.get("a1");
  reg.get("a2");
  CHECK(reg.stats().bytes == 3 * filled_bytes);
  CHECK(reg.get("a0") == h0);  // hit, and a0 is now the most recent
  CHECK(reg.resident_names() == std::vector<std::string>{"a1", "a2", "a0"});
  reg.get("a3");  // evicts a1 (least recently used)
  CHECK(reg.resident_names() == std::vector<std::string>{"a2", "a0", "a3"});
  auto s = reg.stats();
  CHECK(s.hits == 1);
  CHECK(s.misses == 4);
  CHECK(s.loads == 4);
  CHECK(s.evictions == 1);
  CHECK(s.bytes == 3 * filled_bytes);
  CHECK(loads == 4);

  SECTION("pinned adapters are never evicted") {
    reg.pin("a2");
    reg.get("a4");  // evicts a0 (a2 is pinned)
    reg.get("a1");  // evicts a3
    CHECK(reg.resident("a2"));
    CHECK_FALSE(reg.resident("a0"));
    CHECK_FALSE(reg.resident("a3"));
    reg.pin("a4");
    reg.pin("a1");
    // Everything pinned: a new adapter cannot fit and nothing is evicted.
    CHECK_THROWS_WITH(reg.get("a0"), Contains("do not fit the budget"));
    CHECK(reg.stats().resident == 3);
    CHECK_THROWS_WITH(reg.set_budget(filled_bytes), Contains("pinned"));
    reg.unpin("a1");
    reg.set_budget(2 * filled_bytes);
    CHECK_FALSE(reg.resident("a1"));
    CHECK(reg.stats().bytes == 2 * filled_bytes);
  }
  SECTION("an adapter in use is not freed under its batch") {
    std::weak_ptr<const serve::served_adapter<double>> w = h0;
    CHECK(reg.unload("a0"));
    CHECK_FALSE(reg.resident("a0"));
    CHECK(all_equal(*h0, 1.0));  // still valid for the batch holding it
    CHECK(!w.expired());
    h0.reset();
    CHECK(w.expired());          // freed when the last user lets go
    CHECK(reg.get("a0") != nullptr);  // reloaded from its source
    CHECK(loads == 5);
  }
  SECTION("hot swap: the old snapshot stays, new lookups see the new adapter") {
    auto old = reg.get("a2");
    reg.load("a2", [] { return filled(42.0); });  // eager
    CHECK(all_equal(*old, 3.0));
    CHECK(all_equal(*reg.get("a2"), 42.0));
    reg.add_source("a2", [] { return filled(43.0); });  // lazy: dropped now, loaded on next get
    CHECK_FALSE(reg.resident("a2"));
    CHECK(all_equal(*reg.get("a2"), 43.0));
    CHECK(reg.stats().bytes == 3 * filled_bytes);
  }
  SECTION("in-memory adapters, remove, and errors") {
    reg.insert("mem", filled(7.0), true);
    CHECK(reg.resident("mem"));
    CHECK(reg.stats().bytes == 3 * filled_bytes);  // one unpinned adapter was evicted
    reg.unload("mem");
    CHECK_THROWS_WITH(reg.get("mem"), Contains("no source"));
    CHECK(reg.remove("mem"));
    CHECK_FALSE(reg.contains("mem"));
    CHECK_THROWS_WITH(reg.get("mem"), Contains("no adapter named 'mem'"));
    // Layers the base model does not have, or of the wrong shape.
    serve::served_adapter<double> bad;
    bad.layers.emplace("encoder.k_proj", serve::layer_adapter<double>::low_rank(matrix<double>::Ones(1, 6),
                                                                                matrix<double>::Ones(5, 1)));
    CHECK_THROWS_WITH(reg.insert("bad", bad), Contains("'encoder.k_proj'"));
    serve::served_adapter<double> bad2;
    bad2.layers.emplace("encoder.q_proj", serve::layer_adapter<double>::low_rank(matrix<double>::Ones(1, 7),
                                                                                 matrix<double>::Ones(5, 1)));
    CHECK_THROWS_AS(reg.insert("bad2", bad2), shape_error);
    // A failing loader: counted, and the next get tries again.
    int tries = 0;
    reg.add_source("flaky", [&tries]() -> serve::served_adapter<double> {
      if (++tries == 1) throw io_error("flaky: disk on fire");
      return filled(9.0);
    });
    CHECK_THROWS_WITH(reg.get("flaky"), Contains("disk on fire"));
    CHECK(reg.stats().load_failures == 1);
    CHECK(all_equal(*reg.get("flaky"), 9.0));
    // Larger than the whole budget.
    CHECK_THROWS_WITH(reg.insert("huge", filled(1.0, 20)), Contains("do not fit"));
  }
}

TEST_CASE("registry: concurrent misses on one name share one load", "[serve][registry][threads]") {
  toy<double> base;
  serve::adapter_registry<double> reg(base);
  std::atomic<int> runs{0};
  reg.add_source("slow", [&runs] {
    ++runs;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    return filled(5.0);
  });
  std::vector<std::shared_ptr<const serve::served_adapter<double>>> got(4);
  std::vector<std::thread> ts;
  for (std::size_t i = 0; i < 4; ++i) ts.emplace_back([&, i] { got[i] = reg.get("slow"); });
  for (auto& t : ts) t.join();
  CHECK(runs == 1);
  for (auto& h : got) CHECK(h == got[0]);
  const auto s = reg.stats();
  CHECK(s.hits + s.misses == 4);
  CHECK(s.misses >= 1);
}

TEST_CASE("registry: many threads load, get, use, unload and hot-swap at once", "[serve][registry][threads]") {
  // Adapter k, version v is filled with 1000·v + k + 1. Every handle a thread gets must be whole
  // (all entries equal, of its own name) and stay so while the thread holds it, whatever the
  // others evict, unload or swap. The byte count must add up at the end.
  toy<double> base;
  constexpr int n_names = 8, n_threads = 4, n_ops = 3000;
  serve::adapter_registry<double> reg(base, 3 * filled_bytes);
  std::atomic<int> loader_runs{0};
  auto source = [&loader_runs](int k, int version) {
    return [k, version, &loader_runs] {
      ++loader_runs;
      std::this_thread::yield();
      return filled(1000.0 * version + k + 1);
    };
  };
  for (int k = 0; k < n_names; ++k) reg.add_source(key(k), source(k, 0));

  std::atomic<int> bad{0}, gets{0}, failures{0};
  std::atomic<int> version{0};
  auto worker = [&](int t) {
    rng g(std::uint64_t(100 + t));
    std::vector<std::pair<int, std::shared_ptr<const serve::served_adapter<double>>>> held;
    auto whole = [](int k, const serve::served_adapter<double>& s) {
      const double v = s.find("encoder.q_proj")->A(0, 0);
      return all_equal(s, v) && int(std::lround(v)) % 1000 == k + 1;
    };
    for (int op = 0; op < n_ops; ++op) {
      const int k = int(g.uniform_int(n_names));
      const std::string name = key(k);
      const auto dice = g.uniform_int(100);
      try {
        if (dice < 70) {
          ++gets;
          auto h = reg.get(name);
          if (!whole(k, *h)) ++bad;
          held.emplace_back(k, h);
          if (held.size() > 6) held.erase(held.begin());
        } else if (dice < 80) {
          reg.unload(name);
        } else if (dice < 88) {
          reg.add_source(name, source(k, ++version));
        } else if (dice < 93) {
          reg.load(name, source(k, ++version));
        } else if (dice < 96) {
          reg.pin(name, g.uniform_int(2) == 0);
        } else {
          reg.find(name);
          reg.resident_names();
          reg.stats();
        }
      } catch (const value_error&) {
        ++failures;  // budget full of pinned adapters: allowed, counted
      }
      for (auto& [hk, h] : held)
        if (!whole(hk, *h)) ++bad;
    }
  };
  std::vector<std::thread> ts;
  for (int t = 0; t < n_threads; ++t) ts.emplace_back(worker, t);
  for (auto& t : ts) t.join();

  CHECK(bad == 0);
  const auto s = reg.stats();
  INFO("hits " << s.hits << " misses " << s.misses << " evictions " << s.evictions << " failures " << failures);
  CHECK(s.hits + s.misses == std::uint64_t(gets.load()));
  CHECK(s.loads == std::uint64_t(loader_runs.load()));
  CHECK(s.evictions > 0);
  std::size_t held = 0;
  for (int k = 0; k < n_names; ++k)
    if (auto h = reg.find(key(k))) held += h->bytes();
  CHECK(s.bytes == held);
  CHECK(s.bytes <= s.budget);
}
