#include <catch2/catch.hpp>

#include <vector>

#include "dp_fixture.hpp"
#include "peft/core/threads.hpp"
#include "peft/dist/communicator.hpp"
#include "peft/dist/data_parallel.hpp"
#include "peft/optim/sgd.hpp"

using namespace peft;
using namespace dp_fixture;
using dist::communicator;
using dist::data_parallel;
using dist::synced_projector;

namespace {

using flora = optim::flora_projector<float>;
using galore = optim::galore_projector<float>;

// The 1-rank reference: the whole global batch, no communicator.
template <class MakeOpt>
std::unique_ptr<net<float>> reference_run(MakeOpt make, const run_options& ro = {}) {
  auto m = std::make_unique<net<float>>(5);
  auto opt = make(m->trainable_parameters());
  train(*m, *opt, ro, nullptr);
  return m;
}

// n thread ranks, each on its shard; returns each rank's max |param − reference| and the
// ranks' divergence (0 when they agree bit for bit).
template <class MakeOpt>
std::pair<std::vector<double>, double> parallel_run(int n, MakeOpt make, const net<float>& ref,
                                                    const run_options& ro = {},
                                                    std::vector<std::size_t>* bytes = nullptr,
                                                    dist::comm_plan* plan = nullptr) {
  std::vector<double> diff(std::size_t(n), -1);
  double divergence = -1;
  dist::run_threads(n, [&](communicator& c) {
    // A different seed off rank 0: broadcast_parameters must make it irrelevant.
    net<float> m(c.rank() == 0 ? 5 : 99);
    auto opt = make(m.trainable_parameters());
    data_parallel<float> dp(c, *opt);
    dist::broadcast_module(c, m);
    std::vector<std::size_t> mine;
    train(m, *opt, ro, &dp, &mine);
    diff[std::size_t(c.rank())] = max_param_diff(m, ref);
    const double d = dp.divergence();
    if (c.rank() == 0) {
      divergence = d;
      if (bytes) *bytes = mine;
      if (plan) *plan = dp.plan();
    }
  });
  return {diff, divergence};
}

auto make_adamw = [](const std::vector<variable<float>>& p) {
  return std::make_unique<optim::adamw<float>>(p, adamw_opts<float>());
};

// Adam (L2 decay added to the gradient, so the projected path must fold it in) with GaLore.
template <class P>
std::unique_ptr<optim::projected<optim::adam<float>, P>> make_adam_galore(
    const std::vector<variable<float>>& p) {
  optim::adam_options o;
  o.lr = 1e-2;
  o.weight_decay = 0.05;
  optim::galore_options go;
  go.rank = proj_rank;
  go.update_proj_gap = 5;
  return std::make_unique<optim::projected<optim::adam<float>, P>>(p, o, go);
}

}  // namespace

TEST_CASE("shard_range splits n items into contiguous shares", "[dist][data_parallel]") {
  REQUIRE(dist::shard_range(10, 0, 3) == std::pair<std::size_t, std::size_t>{0, 4});
  REQUIRE(dist::shard_range(10, 1, 3) == std::pair<std::size_t, std::size_t>{4, 7});
  REQUIRE(dist::shard_range(10, 2, 3) == std::pair<std::size_t, std::size_t>{7, 10});
  REQUIRE(dist::shard_range(32, 1, 2) == std::pair<std::size_t, std::size_t>{16, 32});
  REQUIRE_THROWS_WITH(dist::shard_range(10, 3, 3), Catch::Contains("rank 3 of 3"));
}

TEST_CASE("data parallel on one rank is bit-identical to plain training", "[dist][data_parallel]") {
  set_num_threads(1);
  dist::self_communicator c;
  SECTION("AdamW-LoRA") {
    auto ref = reference_run(make_adamw);
    net<float> m(5);
    auto opt = make_adamw(m.trainable_parameters());
    data_parallel<float> dp(c, *opt);
    REQUIRE_FALSE(dp.projected());
    train(m, *opt, {}, &dp);
    REQUIRE(max_param_diff(m, *ref) == 0.0);
  }
  SECTION("projected Flora and GaLore") {
    auto ref_f = reference_run(make_flora<float, flora>);
    auto ref_g = reference_run(make_galore<float, galore>);
    net<float> mf(5), mg(5);
    auto of = make_flora<float, synced_projector<flora>>(mf.trainable_parameters());
    auto og = make_galore<float, synced_projector<galore>>(mg.trainable_parameters());
    data_parallel<float> df(c, *of), dg(c, *og);
    REQUIRE(df.projected());
    train(mf, *of, {}, &df);
    train(mg, *og, {}, &dg);
    REQUIRE(max_param_diff(mf, *ref_f) == 0.0);
    REQUIRE(max_param_diff(mg, *ref_g) == 0.0);
  }
}

TEST_CASE("2 ranks match the 1-rank run: AdamW-LoRA", "[dist][data_parallel]") {
  set_num_threads(1);
  auto ref = reference_run(make_adamw);
  auto [diff, divergence] = parallel_run(2, make_adamw, *ref);
  INFO("max |2-rank - 1-rank| = " << diff[0] << ", " << diff[1]);
  REQUIRE(diff[0] < 1e-5);
  REQUIRE(diff[1] < 1e-5);
  REQUIRE(divergence == 0.0);  // the ranks agree bit for bit
  // The parameters moved: the comparison is not trivially passing.
  net<float> init(5);
  REQUIRE(max_param_diff(init, *ref) > 1e-2);
}

TEST_CASE("2 ranks match the 1-rank run: projected AdamW with Flora and with GaLore",
          "[dist][data_parallel]") {
  set_num_threads(1);
  SECTION("Flora (seeded bases, resampled every 5 steps)") {
    auto ref = reference_run(make_flora<float, flora>);
    std::vector<std::size_t> bytes;
    dist::comm_plan plan;
    auto [diff, divergence] =
        parallel_run(2, make_flora<float, synced_projector<flora>>, *ref, {}, &bytes, &plan);
    INFO("max |2-rank - 1-rank| = " << diff[0] << ", " << diff[1]);
    REQUIRE(diff[0] < 1e-5);
    REQUIRE(diff[1] < 1e-5);
    REQUIRE(divergence == 0.0);
    // LoRA factors A1 [8,16], B1 [24,8], A2 [8,24], B2 [8,8] -> 576 gradient floats; Flora rank 4
    // compresses the smaller side: [4,16], [24,4], [4,24], [8,4] -> 288. Header: 4 flags + 2.
    REQUIRE(plan.projected_tensors == 4);
    REQUIRE(plan.header_bytes == 6 * sizeof(float));
    REQUIRE(plan.full_bytes == (576 + 6) * sizeof(float));
    REQUIRE(plan.projected_bytes == (288 + 6) * sizeof(float));
    // Full gradients at the refresh steps 0, 5, 10, 15; projections in between.
    REQUIRE(bytes.size() == 20);
    for (std::size_t s = 0; s < bytes.size(); ++s) {
      INFO("step " << s);
      REQUIRE(bytes[s] == (s % 5 == 0 ? plan.full_bytes : plan.projected_bytes));
    }
  }
  SECTION("GaLore (SVD of the all-reduced gradient every 5 steps)") {
    auto ref = reference_run(make_galore<float, galore>);
    auto [diff, divergence] = parallel_run(2, make_galore<float, synced_projector<galore>>, *ref);
    INFO("max |2-rank - 1-rank| = " << diff[0] << ", " << diff[1]);
    REQUIRE(diff[0] < 1e-5);
    REQUIRE(diff[1] < 1e-5);
    REQUIRE(divergence == 0.0);
  }
  SECTION("Adam with L2 weight decay (folded into the gradient before projecting)") {
    auto ref = reference_run(make_adam_galore<galore>);
    auto [diff, divergence] = parallel_run(2, make_adam_galore<synced_projector<galore>>, *ref);
    INFO("max |2-rank - 1-rank| = " << diff[0] << ", " << diff[1]);
    REQUIRE(diff[0] < 1e-5);
    REQUIRE(diff[1] < 1e-5);
    REQUIRE(divergence == 0.0);
  }
}

TEST_CASE("unequal shards: weights = shard sizes give the global-batch gradient",
          "[dist][data_parallel]") {
  set_num_threads(1);
  auto ref = reference_run(make_adamw);
  run_options ro;
  ro.shards = {14, 10, 8};
  ro.weighted = true;
  auto [diff, divergence] = parallel_run(3, make_adamw, *ref, ro);
  INFO("weighted: " << diff[0]);
  REQUIRE(diff[0] < 1e-5);
  REQUIRE(divergence == 0.0);
  // The same shards averaged with equal weights are a different (wrong) gradient.
  ro.weighted = false;
  auto [bad, bad_div] = parallel_run(3, make_adamw, *ref, ro);
  INFO("unweighted: " << bad[0]);
  REQUIRE(bad[0] > 1e-4);
  REQUIRE(bad_div == 0.0);
}

TEST_CASE("sync: gradients missing on some ranks count as zeros; missing everywhere stay missing",
          "[dist][data_parallel]") {
  // Catch's assertions are not thread-safe: the ranks record, the main thread checks.
  std::vector<std::vector<float>> g0(2), g1(2);
  std::vector<int> has2(2, -1);
  std::vector<dist::sync_stats> stats(2);
  dist::run_threads(2, [&](communicator& c) {
    const auto r = std::size_t(c.rank());
    auto p0 = parameter<float>(zeros<float>({2}));
    auto p1 = parameter<float>(zeros<float>({3}));
    auto p2 = parameter<float>(zeros<float>({1}));
    peft::detail::grad_buffer(*p0.get()) = make_tensor<float>({2}, {1.f + float(r), 4.f});
    if (r == 1) peft::detail::grad_buffer(*p1.get()) = make_tensor<float>({3}, {2.f, 4.f, 6.f});
    data_parallel<float> dp(c, std::vector<variable<float>>{p0, p1, p2});
    stats[r] = dp.sync(1.0, r == 0 ? 1.0 : 3.0);
    g0[r] = {p0.grad().begin(), p0.grad().end()};
    g1[r] = {p1.grad().begin(), p1.grad().end()};
    has2[r] = p2.has_grad() ? 1 : 0;
  });
  for (std::size_t r = 0; r < 2; ++r) {
    REQUIRE(g0[r] == std::vector<float>{1.5f, 4.f});
    REQUIRE(g1[r] == std::vector<float>{1.f, 2.f, 3.f});  // (0 + [2,4,6]) / 2
    REQUIRE(has2[r] == 0);
    REQUIRE(stats[r].full_tensors == 3);
    REQUIRE(stats[r].bytes == (2 + 3 + 1 + 3 + 2) * sizeof(float));
    REQUIRE(stats[r].loss == 2.0);
    REQUIRE(stats[r].weight == 2.0);
  }
}

TEST_CASE("sync and construction reject bad input", "[dist][data_parallel]") {
  dist::self_communicator c;
  auto p = parameter<float>(zeros<float>({2}));
  data_parallel<float> dp(c, std::vector<variable<float>>{p});
  REQUIRE_THROWS_WITH(dp.sync(-1.0), Catch::Contains("invalid weight -1"));
  REQUIRE_THROWS_WITH(dp.sync(0.0), Catch::Contains("weights sum to 0"));
  const std::vector<variable<float>> twice{p, p};
  REQUIRE_THROWS_WITH(data_parallel<float>(c, twice), Catch::Contains("appears twice"));
  peft::detail::grad_buffer(*p.get()) = zeros<float>({3});
  REQUIRE_THROWS_WITH(dp.sync(), Catch::Contains("parameter 0") && Catch::Contains("[2]") &&
                                     Catch::Contains("[3]"));
}

TEST_CASE("broadcast_parameters copies rank 0's trainable values", "[dist][data_parallel]") {
  std::vector<std::vector<float>> got(3);
  dist::run_threads(3, [&](communicator& c) {
    auto p = parameter<float>(full<float>({4}, float(c.rank() + 1)));
    data_parallel<float> dp(c, std::vector<variable<float>>{p});
    dp.broadcast_parameters(0);
    got[std::size_t(c.rank())] = {p.value().begin(), p.value().end()};
  });
  for (const auto& v : got) REQUIRE(v == std::vector<float>{1.f, 1.f, 1.f, 1.f});
}

TEST_CASE("data_parallel works in double, with a synced projector", "[dist][data_parallel]") {
  // Two ranks with different gradients for one [6, 4] parameter, GaLore rank 2 (gap 2): step 0
  // sends the full gradient (refresh), step 1 its [6, 2] projection; both equal what one process
  // gets from the mean gradient.
  using P = optim::galore_projector<double>;
  optim::galore_options go;
  go.rank = 2;
  go.update_proj_gap = 2;
  optim::sgd_options so;
  so.lr = 0.1;
  rng g0(4);
  const tensor<double> w0 = randn<double>({6, 4}, g0);
  const tensor<double> ga = randn<double>({6, 4}, g0), gb = randn<double>({6, 4}, g0);
  auto ref = parameter<double>(w0);
  optim::projected<optim::sgd<double>, P> ref_opt({ref}, so, go);
  tensor<double> mean = ga;
  as_matrix(mean) = 0.5 * (as_matrix(ga) + as_matrix(gb));
  for (int s = 0; s < 2; ++s) {
    peft::detail::grad_buffer(*ref.get()) = mean;
    ref_opt.step();
    ref_opt.zero_grad();
  }
  std::vector<tensor<double>> got(2);
  std::vector<std::vector<std::size_t>> bytes(2);
  dist::run_threads(2, [&](communicator& c) {
    auto p = parameter<double>(w0);
    optim::projected<optim::sgd<double>, synced_projector<P>> opt({p}, so, go);
    data_parallel<double> dp(c, opt);
    for (int s = 0; s < 2; ++s) {
      peft::detail::grad_buffer(*p.get()) = c.rank() == 0 ? ga : gb;
      bytes[std::size_t(c.rank())].push_back(dp.sync().bytes);
      opt.step();
      opt.zero_grad();
    }
    got[std::size_t(c.rank())] = p.value();
  });
  for (std::size_t r = 0; r < 2; ++r) {
    REQUIRE((as_matrix(got[r]) - as_matrix(ref.value())).cwiseAbs().maxCoeff() < 1e-14);
    REQUIRE(bytes[r] == std::vector<std::size_t>{(24 + 3) * sizeof(double), (12 + 3) * sizeof(double)});
  }
}
