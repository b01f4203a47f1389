// memory_report: state bytes by hand for a 4096 x 4096 weight at rank 128 (AdamW, AdamW 8-bit,
// GaLore, GaLore 8-bit), agreement with the optimizers' own state_bytes() after a step, the table
// layout, and reports from a model's named parameters.
#include <catch2/catch.hpp>

#include <sstream>
#include <string>
#include <vector>

#include "peft/nn/transformer.hpp"
#include "peft/optim/adafactor.hpp"
#include "peft/optim/memory.hpp"
#include "peft/optim/projected.hpp"
#include "peft/optim/projection/galore.hpp"
#include "peft/optim/projection/identity.hpp"
#include "peft/optim/quant8.hpp"

using namespace peft;
using Catch::Matchers::Contains;

TEST_CASE("state bytes of a 4096 x 4096 weight at rank 128", "[optim][memory]") {
  optim::galore_options go;
  go.rank = 128;
  const auto rep =
      optim::compare_state_memory<float, optim::galore_projector<float>>({{4096, 4096}}, go);
  const std::size_t n = 4096 * 4096, low = 4096 * 128;
  // AdamW: m and v, 4 bytes each.
  REQUIRE(rep.total("AdamW") == 2 * 4 * n);  // 128 MiB
  // 8-bit: one byte per element + a float absmax per 256-element block, twice.
  REQUIRE(rep.total("AdamW 8-bit") == 2 * (n + n / 256 * 4));  // 32.5 MiB
  // GaLore (square: right projection): m, v of [4096, 128] + the basis Q [4096, 128].
  REQUIRE(rep.total("galore r=128") == 2 * 4 * low + 4 * 4096 * 128);  // 6 MiB
  REQUIRE(rep.total("galore r=128 8-bit") == 2 * (low + low / 256 * 4) + 4 * 4096 * 128);
  const std::string t = rep.table();
  INFO(t);
  REQUIRE_THAT(t, Contains("128.00 MiB") && Contains("32.50 MiB") && Contains("6.00 MiB"));
  REQUIRE_THAT(t, Contains("4.7%"));  // GaLore / AdamW = 6 / 128
}

TEST_CASE("the report agrees with state_bytes() after a step", "[optim][memory]") {
  // Shapes exercising projection on either side, fallback, and the 8-bit size threshold.
  const std::vector<shape_t> shapes{{40, 24}, {24, 40}, {3, 50}, {50}, {2, 3, 4}};
  std::vector<variable<float>> ps;
  rng g(1);
  for (const auto& s : shapes) ps.push_back(parameter<float>(randn<float>(s, g)));
  auto step_all = [&](optim::optimizer<float>& opt) {
    for (auto& p : ps) {
      p.zero_grad();
      peft::detail::accumulate(*p.get(), randn<float>(p.shape(), g));
    }
    opt.step();
    return opt.state_bytes();
  };
  optim::galore_options go;
  go.rank = 4;
  optim::projected_options po;
  po.min_8bit_size = 64;
  optim::adafactor_options af;
  af.beta1 = 0.9;
  optim::memory_report<float> rep(ps);
  rep.add<optim::adamw<float>>("adamw")
      .add<optim::adamw8bit<float>>("adamw8bit", {}, 64)
      .add<optim::adafactor<float>>("adafactor", af)
      .add<optim::sgd<float>>("sgd", {.lr = 0.1, .momentum = 0.9})
      .add_projected<optim::adamw<float>, optim::galore_projector<float>>("galore", go)
      .add_projected<optim::adamw<float>, optim::galore_projector<float>, optim::q8_storage<>>(
          "galore8", go, {}, po)
      .add_projected<optim::adafactor<float>, optim::galore_projector<float>>("galore-af", go, af)
      .add_projected<optim::adamw<float>, optim::identity_projector<float>>(
          "identity", optim::identity_options{});
  {
    optim::adamw<float> o(ps);
    REQUIRE(step_all(o) == rep.total("adamw"));
  }
  {
    optim::adamw8bit<float> o(ps, {}, 64);
    REQUIRE(step_all(o) == rep.total("adamw8bit"));
  }
  {
    optim::adafactor<float> o(ps, af);
    REQUIRE(step_all(o) == rep.total("adafactor"));
  }
  {
    optim::sgd<float> o(ps, {.lr = 0.1, .momentum = 0.9});
    REQUIRE(step_all(o) == rep.total("sgd"));
  }
  {
    optim::projected<optim::adamw<float>, optim::galore_projector<float>> o(ps, {}, go);
    REQUIRE(step_all(o) == rep.total("galore"));
  }
  {
    optim::projected<optim::adamw<float>, optim::galore_projector<float>, optim::q8_storage<>> o(
        ps, {}, go, po);
    REQUIRE(step_all(o) == rep.total("galore8"));
    REQUIRE(rep.total("galore8") < rep.total("galore"));
  }
  {
    optim::projected<optim::adafactor<float>, optim::galore_projector<float>> o(ps, af, go);
    REQUIRE(step_all(o) == rep.total("galore-af"));
  }
  {
    optim::projected<optim::adamw<float>, optim::identity_projector<float>> o(
        ps, {}, optim::identity_options{});
    REQUIRE(step_all(o) == rep.total("identity"));
    REQUIRE(rep.total("identity") == rep.total("adamw"));
  }
  // Per-parameter view: one row per parameter, one column per method.
  const std::string t = rep.table_by_parameter();
  INFO(t);
  REQUIRE_THAT(t, Contains("[40,24]") && Contains("galore-af"));
  REQUIRE(rep.rows()[4].bytes[2] == rep.rows()[0].bytes[2]);  // [3,50] falls back under GaLore
}

TEST_CASE("the table is aligned", "[optim][memory]") {
  optim::galore_options go;
  go.rank = 8;
  const auto rep = optim::compare_state_memory<float, optim::galore_projector<float>>(
      {{64, 32}, {32}}, go);
  std::istringstream in(rep.table());
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  REQUIRE(lines.size() == 2 + 4);  // header, rule, 4 methods
  REQUIRE(lines[1].find_first_not_of('-') == std::string::npos);
  // Numbers are right-aligned: every line ends at the same column.
  for (const auto& l : lines) REQUIRE(l.size() == lines[0].size());
  REQUIRE(lines[2].rfind("AdamW", 0) == 0);
  REQUIRE(lines[5].rfind("galore r=8 8-bit", 0) == 0);
}

TEST_CASE("a report from a model's named parameters", "[optim][memory]") {
  rng g(1);
  nn::llama<float> model(nn::llama_config{11, 8, 2, 2, 1, 12, 16, 1e-6, 10000.0, false}, g);
  optim::galore_options go;
  go.rank = 4;
  optim::memory_report<float> rep(model.named_parameters());
  rep.add<optim::adamw<float>>("AdamW")
      .add_projected<optim::adamw<float>, optim::galore_projector<float>>("GaLore", go);
  REQUIRE(rep.total("AdamW") == 2 * sizeof(float) * model.num_parameters());
  REQUIRE(rep.total("GaLore") < rep.total("AdamW"));
  const std::string t = rep.table_by_parameter();
  REQUIRE_THAT(t, Contains("layers.1.mlp.down_proj.weight") && Contains("[8,12]"));
  REQUIRE_THROWS_WITH(rep.total("nope"), Contains("nope"));
}
