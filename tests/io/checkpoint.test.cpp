#include <catch2/catch.hpp>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <sys/resource.h>
#include <unistd.h>

#include "peft/adapters/inject.hpp"
#include "peft/autograd/autograd.hpp"
#include "peft/io/checkpoint.hpp"
#include "peft/nn/linear.hpp"
#include "peft/nn/loss.hpp"
#include "peft/optim/adam.hpp"
#include "peft/optim/projected.hpp"
#include "peft/optim/projection/flora.hpp"
#include "peft/optim/projection/galore.hpp"
#include "peft/optim/quant8.hpp"
#include "peft/optim/schedule.hpp"
#include "../support/thrown.hpp"

using namespace peft;
using Catch::Matchers::Contains;

namespace {
// x -> fc2(tanh(fc1(x))), 6 -> 10 -> 8.
struct net : nn::unary_module<float> {
  explicit net(std::uint64_t seed) {
    rng g(seed);
    fc1 = std::make_shared<nn::linear<float>>(6, 10, true, g);
    fc2 = std::make_shared<nn::linear<float>>(10, 8, true, g);
    this->register_module("fc1", fc1);
    this->register_module("fc2", fc2);
  }
  variable<float> forward(const variable<float>& x) override { return fc2->forward(tanh(fc1->forward(x))); }
  std::shared_ptr<nn::unary_module<float>> fc1, fc2;
};

std::string temp_file(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("peft_io_ckpt_" + std::to_string(::getpid()) + "_" + name)).string();
}
std::vector<char> file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}
using test::thrown_message;
bool same_bits(const tensor<float>& a, const tensor<float>& b) {
  return shape_of(a) == shape_of(b) && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// One training setup: the model, its optimizer and schedule, and the data stream.
struct run {
  std::shared_ptr<net> model;
  std::unique_ptr<optim::optimizer<float>> opt;
  std::unique_ptr<optim::lr_scheduler<float>> sched;
  rng data{1234};

  void train(std::size_t steps) {
    model->train();
    for (std::size_t s = 0; s < steps; ++s) {
      const auto x = constant(randn<float>({5, 6}, data));
      const auto y = constant(randn<float>({5, 8}, data));
      auto loss = nn::mse_loss(model->forward(x), y);
      loss.backward();
      opt->step();
      opt->zero_grad();
      if (sched) sched->step();
    }
  }
  io::checkpoint<float> ck(bool with_rngs = true) {
    io::checkpoint<float> c;
    c.add_parameters(*model).set_optimizer(*opt);
    if (sched) c.set_scheduler(*sched);
    if (with_rngs) c.add_rng("data", data).add_rngs(io::adapter_rngs(*model));
    return c;
  }
};
using factory = std::function<run(std::uint64_t adapter_seed)>;

// Runs N steps straight through, and k steps + save + fresh objects (built with another adapter
// seed, so everything the resumed run needs must come from the file) + load + N - k steps.
struct outcome {
  run full, resumed;
};
outcome full_and_resumed(const factory& make, std::size_t k, std::size_t n, const std::string& path,
                         bool with_rngs = true) {
  outcome o{make(1), make(99)};
  o.full.train(n);
  {
    run first = make(1);
    first.train(k);
    first.ck(with_rngs).save(path, k, {{"note", "after k"}});
  }
  const auto info = o.resumed.ck(with_rngs).load(path);
  CHECK(info.step == k);
  CHECK(info.metadata.at("note") == "after k");
  o.resumed.train(n - k);
  return o;
}

bool same_parameters(const run& a, const run& b) {
  const auto pa = a.model->named_parameters(), pb = b.model->named_parameters();
  if (pa.size() != pb.size()) return false;
  for (std::size_t i = 0; i < pa.size(); ++i)
    if (pa[i].first != pb[i].first || !same_bits(pa[i].second.value(), pb[i].second.value())) return false;
  return true;
}
void check_identical(const run& a, const run& b) {
  CHECK(same_parameters(a, b));
  const auto& sa = a.opt->named_state();
  const auto sb = b.opt->named_state();  // copy: rule optimizers rebuild the snapshot per call
  REQUIRE(sa.size() == sb.size());
  for (const auto& [i, s] : sa) {
    INFO("optimizer state of parameter " << i);
    REQUIRE(sb.count(i));
    CHECK(s.step == sb.at(i).step);
    REQUIRE(s.tensors.size() == sb.at(i).tensors.size());
    for (const auto& [name, t] : s.tensors) {
      INFO(name);
      REQUIRE(sb.at(i).tensors.count(name));
      CHECK(same_bits(t, sb.at(i).tensors.at(name)));
    }
  }
  for (std::size_t g = 0; g < a.opt->num_groups(); ++g) CHECK(a.opt->lr(g) == b.opt->lr(g));
  CHECK(a.data == b.data);
}

// (a) AdamW on LoRA adapters with dropout, warmup + cosine schedule.
run lora_adamw(std::uint64_t adapter_seed) {
  run r;
  r.model = std::make_shared<net>(7);
  lora_config lc;
  lc.r = 3;
  lc.alpha = 6;
  lc.dropout = 0.25;
  lc.seed = adapter_seed;
  inject_options io;
  io.targets = target_modules::list({"fc1", "fc2"});
  inject_lora<float>(*r.model, lc, io);
  // B starts at zero; give it values so both factors move from the first step.
  for (auto& [name, v] : r.model->named_parameters())
    if (name.find("lora_B") != std::string::npos) {
      rng g(adapter_seed + 5);
      fill_normal(v.value(), 0.0, 0.1, g);
    }
  optim::adamw_options o;
  o.lr = 0.02;
  o.weight_decay = 0.01;
  r.opt = std::make_unique<optim::adamw<float>>(r.model->trainable_parameters(), o);
  r.sched = std::make_unique<optim::lr_scheduler<float>>(*r.opt, optim::warmup_cosine_schedule(2, 10));
  return r;
}

// (b) GaLore-AdamW on full weights: projector refreshed every 3 updates (t = 0, 3, 6).
run galore_adamw(std::uint64_t) {
  run r;
  r.model = std::make_shared<net>(8);
  optim::galore_options go;
  go.rank = 2;
  go.update_proj_gap = 3;
  go.scale = 0.5;
  optim::adamw_options o;
  o.lr = 0.01;
  r.opt = std::make_unique<optim::projected<optim::adamw<float>, optim::galore_projector<float>>>(
      r.model->trainable_parameters(), o, go);
  return r;
}

// (c) AdamW with 8-bit states, and Flora-projected AdamW with 8-bit low-rank moments.
run adamw_8bit(std::uint64_t) {
  run r;
  r.model = std::make_shared<net>(9);
  optim::adamw_options o;
  o.lr = 0.01;
  r.opt = std::make_unique<optim::adamw8bit<float>>(r.model->trainable_parameters(), o, /*min_8bit_size=*/16);
  r.sched = std::make_unique<optim::lr_scheduler<float>>(*r.opt, optim::warmup_linear_schedule(1, 20));
  return r;
}
run flora_adamw(std::uint64_t) {
  run r;
  r.model = std::make_shared<net>(10);
  optim::flora_options fo;
  fo.rank = 3;
  fo.kappa = 3;
  optim::adamw_options o;
  o.lr = 0.01;
  optim::projected_options po;
  po.seed = 77;
  po.min_8bit_size = 8;
  r.opt = std::make_unique<optim::projected<optim::adamw<float>, optim::flora_projector<float>, optim::q8_storage<>>>(
      r.model->trainable_parameters(), o, fo, po);
  return r;
}
// (d) MoE of LoRA experts with router noise and expert dropout, AdamW.
run moe_adamw(std::uint64_t adapter_seed) {
  run r;
  r.model = std::make_shared<net>(11);
  inject_options io;
  io.targets = target_modules::list({"fc1", "fc2"});
  inject_adapters<float>(*r.model, io, 2, 4, [&](const layer_info<float>& info) {
    moe_config mc;
    mc.num_experts = 3;
    mc.top_k = 2;
    mc.noise_std = 0.5;
    mc.seed = adapter_seed + info.index;
    std::vector<std::shared_ptr<adapter<float>>> experts;
    for (std::size_t e = 0; e < mc.num_experts; ++e) {
      lora_config lc;
      lc.r = 2;
      lc.alpha = 4;
      lc.dropout = 0.2;
      lc.seed = adapter_seed * 10 + e;
      experts.push_back(std::make_shared<lora<float>>(info.in, info.out, lc, init::random_both{0.3}));
    }
    return std::make_shared<moe<float>>(info.in, info.out, mc, std::move(experts));
  });
  optim::adamw_options o;
  o.lr = 0.02;
  r.opt = std::make_unique<optim::adamw<float>>(r.model->trainable_parameters(), o);
  return r;
}
}  // namespace

TEST_CASE("checkpoint: MoE-LoRA with router noise and expert dropout resumes bit for bit",
          "[io][checkpoint]") {
  const std::string path = temp_file("moe.ckpt");
  auto o = full_and_resumed(moe_adamw, 3, 7, path);
  check_identical(o.full, o.resumed);
  const auto f = io::safetensors_file::load(path);
  CHECK_THAT(f.metadata().at("checkpoint"), Contains("fc1.router_noise"));
  CHECK_THAT(f.metadata().at("checkpoint"), Contains("fc2.experts.2.dropout"));
  SECTION("the test can fail: without the rng states the resumed run differs") {
    auto p = full_and_resumed(moe_adamw, 3, 7, path, /*with_rngs=*/false);
    CHECK_FALSE(same_parameters(p.full, p.resumed));
  }
  std::filesystem::remove(path);
}

TEST_CASE("checkpoint: LoRA + dropout + AdamW + schedule resumes bit for bit", "[io][checkpoint]") {
  const std::string path = temp_file("lora.ckpt");
  auto o = full_and_resumed(lora_adamw, 3, 8, path);
  check_identical(o.full, o.resumed);
  CHECK(o.full.sched->current_step() == o.resumed.sched->current_step());
  // The file holds the trainable parameters only (A, B of both layers), the moments and the rngs.
  const auto f = io::safetensors_file::load(path);
  CHECK(f.contains("param/fc1.lora_A.weight"));
  CHECK_FALSE(f.contains("param/fc1.base_layer.weight"));
  CHECK(f.contains("optim/0/exp_avg"));
  CHECK(f.metadata().at("format") == "peft.checkpoint");
  CHECK_THAT(f.metadata().at("checkpoint"), Contains("fc2.dropout"));

  SECTION("the test can fail: without the rng states the resumed run differs") {
    auto p = full_and_resumed(lora_adamw, 3, 8, path, /*with_rngs=*/false);
    CHECK_FALSE(same_parameters(p.full, p.resumed));
  }
  std::filesystem::remove(path);
}

TEST_CASE("checkpoint: GaLore-AdamW resumes bit for bit across a projector refresh", "[io][checkpoint]") {
  const std::string path = temp_file("galore.ckpt");
  auto o = full_and_resumed(galore_adamw, 4, 9, path);  // refresh at t = 6, between k and N
  check_identical(o.full, o.resumed);
  auto* p = dynamic_cast<optim::projected<optim::adamw<float>, optim::galore_projector<float>>*>(o.resumed.opt.get());
  REQUIRE(p);
  CHECK(p->is_projected(0));  // fc1.weight [10,6]
  CHECK(p->step_count(0) == 9);
  std::filesystem::remove(path);
}

TEST_CASE("checkpoint: 8-bit AdamW and Flora with 8-bit moments resume bit for bit", "[io][checkpoint]") {
  const std::string path = temp_file("q8.ckpt");
  SECTION("adamw8bit") {
    auto o = full_and_resumed(adamw_8bit, 2, 6, path);
    check_identical(o.full, o.resumed);
    const auto f = io::safetensors_file::load(path);
    CHECK(f.contains("optim/0/exp_avg.codes"));  // fc1.weight: 60 elements >= 16, quantized
  }
  SECTION("flora, resampled every 3 updates") {
    auto o = full_and_resumed(flora_adamw, 4, 8, path);
    check_identical(o.full, o.resumed);
  }
  std::filesystem::remove(path);
}

TEST_CASE("checkpoint: double parameters and state round-trip too", "[io][checkpoint]") {
  rng g(3);
  auto w = parameter(randn<double>({3, 4}, g));
  optim::adamw<double> opt(std::vector<variable<double>>{w}, optim::adamw_options{});
  detail::accumulate(*w.get(), randn<double>({3, 4}, g));
  opt.step();
  const std::string path = temp_file("double.ckpt");
  io::checkpoint<double> ck;
  ck.add_parameter("w", w).set_optimizer(opt);
  ck.save(path, 1);
  const auto saved = w.value();
  w.value() = zeros<double>({3, 4});
  CHECK(ck.load(path).step == 1);
  CHECK(std::memcmp(w.value().data(), saved.data(), saved.size() * sizeof(double)) == 0);
  CHECK(io::read_checkpoint_info<double>(path).step == 1);
  // float cannot load a double checkpoint.
  auto wf = parameter(zeros<float>({3, 4}));
  io::checkpoint<float> cf;
  cf.add_parameter("w", wf);
  CHECK_THAT(thrown_message([&] { (void)cf.load(path); }), Contains("saved from F64 tensors, loading into F32"));
  std::filesystem::remove(path);
}

TEST_CASE("checkpoint: bad files give clear errors and leave the training objects untouched", "[io][checkpoint]") {
  const std::string path = temp_file("bad.ckpt");
  run a = lora_adamw(1);
  a.train(2);
  a.ck().save(path, 2);
  run b = lora_adamw(2);
  const auto before = b.model->get_state_dict();
  const rng data_before = b.data;
  auto untouched = [&] {
    const auto now = b.model->get_state_dict();
    for (auto& [k, t] : before)
      if (!same_bits(t, now.at(k))) return false;
    return b.opt->named_state().empty() && b.data == data_before;
  };
  auto load_msg = [&](io::checkpoint<float> c, const std::string& p) {
    return thrown_message([&] { (void)c.load(p); });
  };

  SECTION("truncated") {
    const auto bytes = file_bytes(path);
    const std::string cut = temp_file("cut.ckpt");
    for (std::size_t n : {std::size_t(0), std::size_t(5), bytes.size() / 2, bytes.size() - 1}) {
      std::ofstream(cut, std::ios::binary | std::ios::trunc).write(bytes.data(), std::streamsize(n));
      const auto m = load_msg(b.ck(), cut);
      INFO(m);
      CHECK_THAT(m, Contains("'" + cut + "'"));
      CHECK_THAT(m, Contains("io_error"));
    }
    std::filesystem::remove(cut);
  }
  SECTION("a parameter of another shape") {
    auto f = io::safetensors_file::load(path);
    f.erase("param/fc1.lora_A.weight");
    f.add("param/fc1.lora_A.weight", zeros<float>({4, 6}));
    f.save(path);
    CHECK_THAT(load_msg(b.ck(), path), Contains("parameter 'fc1.lora_A.weight' has shape [4,6], the model's is [3,6]"));
  }
  SECTION("a missing parameter") {
    auto f = io::safetensors_file::load(path);
    f.erase("param/fc2.lora_B.weight");
    f.save(path);
    CHECK_THAT(load_msg(b.ck(), path), Contains("missing parameter 'fc2.lora_B.weight'"));
  }
  SECTION("an unexpected parameter") {
    auto f = io::safetensors_file::load(path);
    f.add("param/extra", zeros<float>({2}));
    f.save(path);
    CHECK_THAT(load_msg(b.ck(), path), Contains("unexpected parameter 'extra'"));
  }
  SECTION("a state tensor of another dtype") {
    auto f = io::safetensors_file::load(path);
    const auto t = f.get<float>("optim/0/exp_avg");
    f.erase("optim/0/exp_avg");
    f.add("optim/0/exp_avg", t, io::dtype::F16);
    f.save(path);
    CHECK_THAT(load_msg(b.ck(), path), Contains("tensor 'optim/0/exp_avg' is F16, expected F32"));
  }
  SECTION("a state tensor the optimizer does not know") {
    auto f = io::safetensors_file::load(path);
    f.add("optim/1/bogus", zeros<float>({2}));
    f.save(path);
    CHECK_THAT(load_msg(b.ck(), path), Contains("optimizer state does not fit the optimizer"));
    CHECK_THAT(load_msg(b.ck(), path), Contains("unexpected tensor 'bogus'"));
  }
  SECTION("another optimizer, missing rngs, a scheduler with other base lrs") {
    run c = galore_adamw(0);
    io::checkpoint<float> cc;
    cc.add_parameters(*b.model).set_optimizer(*c.opt);
    CHECK_THAT(load_msg(cc, path), Contains("optimizer is 'adamw', the given optimizer is 'projected adamw'"));
    io::checkpoint<float> no_rng;
    no_rng.add_parameters(*b.model).set_optimizer(*b.opt).set_scheduler(*b.sched).add_rng("data", b.data);
    CHECK_THAT(load_msg(no_rng, path), Contains("unexpected rng 'fc1.dropout'"));
    io::checkpoint<float> extra_rng = b.ck();
    rng other(5);
    extra_rng.add_rng("other", other);
    CHECK_THAT(load_msg(extra_rng, path), Contains("missing rng 'other'"));
    b.opt->set_lr(0.5);
    optim::lr_scheduler<float> s2(*b.opt, optim::constant_schedule{});
    io::checkpoint<float> cs;
    cs.add_parameters(*b.model).set_optimizer(*b.opt).set_scheduler(s2).add_rng("data", b.data).add_rngs(
        io::adapter_rngs(*b.model));
    CHECK_THAT(load_msg(cs, path), Contains("scheduler base lrs [0.02] differ from the given scheduler's [0.5]"));
  }
  SECTION("not a checkpoint") {
    io::save_safetensors<float>(path, {{"x", zeros<float>({2})}});
    CHECK_THAT(load_msg(b.ck(), path), Contains("not a peft checkpoint"));
  }
  CHECK(untouched());
  std::filesystem::remove(path);
}

TEST_CASE("checkpoint: a failed write leaves the previous checkpoint as it was", "[io][checkpoint]") {
  const std::string path = temp_file("atomic.ckpt");
  run a = lora_adamw(1);
  a.train(1);
  a.ck().save(path, 1);
  const auto original = file_bytes(path);
  a.train(1);

  SECTION("the temporary cannot be created") {
    const std::string tmp = path + ".tmp." + std::to_string(::getpid());
    std::filesystem::create_directory(tmp);  // open(O_WRONLY) on a directory fails
    CHECK_THAT(thrown_message([&] { a.ck().save(path, 2); }), Contains("cannot create '" + tmp + "'"));
    std::filesystem::remove(tmp);
  }
  SECTION("the disk fills up in the middle of the write") {
    // RLIMIT_FSIZE makes write() fail with EFBIG past 1 KiB (SIGXFSZ ignored), like a full disk.
    struct rlimit old{};
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &old) == 0);
    auto prev = std::signal(SIGXFSZ, SIG_IGN);
    struct rlimit small = old;
    small.rlim_cur = 1024;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &small) == 0);
    const std::string m = thrown_message([&] { a.ck().save(path, 2); });
    ::setrlimit(RLIMIT_FSIZE, &old);
    std::signal(SIGXFSZ, prev);
    CHECK_THAT(m, Contains("write '" + path + ".tmp."));
  }
  CHECK(file_bytes(path) == original);
  for (auto& e : std::filesystem::directory_iterator(std::filesystem::path(path).parent_path()))
    CHECK(e.path().string().rfind(path + ".tmp", 0) != 0);  // no temporary left behind
  CHECK(io::read_checkpoint_info<float>(path).step == 1);
  std::filesystem::remove(path);
}
