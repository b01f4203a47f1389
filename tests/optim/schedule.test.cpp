#include <catch2/catch.hpp>

#include <cmath>
#include <numbers>

#include "peft/optim/adam.hpp"
#include "peft/optim/schedule.hpp"
#include "peft/optim/sgd.hpp"

using namespace peft;
using Catch::Matchers::Contains;
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

static_assert(optim::lr_schedule<optim::constant_schedule>);
static_assert(optim::lr_schedule<optim::warmup_cosine_schedule>);
static_assert(!optim::lr_schedule<int>);

TEST_CASE("constant schedules", "[optim][schedule]") {
  optim::constant_schedule c;
  REQUIRE(c.factor(0) == 1.0);
  REQUIRE(c.factor(12345) == 1.0);
  REQUIRE(c.lr(7, 3e-4) == 3e-4);
  optim::warmup_constant_schedule w(4);
  REQUIRE(w.factor(0) == 0.0);
  REQUIRE(w.factor(1) == 0.25);
  REQUIRE(w.factor(4) == 1.0);
  REQUIRE(w.factor(100) == 1.0);
  REQUIRE(optim::warmup_constant_schedule(0).factor(0) == 1.0);
}

TEST_CASE("linear warmup then linear decay (get_linear_schedule_with_warmup)", "[optim][schedule]") {
  optim::warmup_linear_schedule s(10, 110);
  REQUIRE(s.factor(0) == 0.0);   // warmup start
  REQUIRE_THAT(s.factor(5), WithinRel(0.5, 1e-15));
  REQUIRE(s.factor(10) == 1.0);  // warmup end
  REQUIRE_THAT(s.factor(60), WithinRel(0.5, 1e-15));   // (110-60)/100
  REQUIRE_THAT(s.factor(85), WithinRel(0.25, 1e-15));
  REQUIRE(s.factor(110) == 0.0);  // end
  REQUIRE(s.factor(500) == 0.0);
  REQUIRE_THAT(s.lr(60, 2e-4), WithinRel(1e-4, 1e-15));
  // No warmup: starts at 1.
  REQUIRE(optim::warmup_linear_schedule(0, 4).factor(0) == 1.0);
  REQUIRE(optim::warmup_linear_schedule(0, 4).factor(1) == 0.75);
}

TEST_CASE("linear warmup then cosine decay (get_cosine_schedule_with_warmup)", "[optim][schedule]") {
  optim::warmup_cosine_schedule s(10, 110);
  REQUIRE(s.factor(0) == 0.0);
  REQUIRE_THAT(s.factor(3), WithinRel(0.3, 1e-15));
  REQUIRE(s.factor(10) == 1.0);
  REQUIRE_THAT(s.factor(60), WithinRel(0.5, 1e-12));  // midpoint of the cosine
  // a quarter into the decay: 0.5*(1 + cos(pi/4))
  REQUIRE_THAT(s.factor(35), WithinRel(0.5 * (1 + std::cos(std::numbers::pi / 4)), 1e-12));
  REQUIRE_THAT(s.factor(110), WithinAbs(0.0, 1e-15));  // end
  REQUIRE_THAT(s.factor(200), WithinAbs(0.0, 1e-15));  // stays at the end value

  // Decay to a floor: factor*(1 - min) + min.
  optim::warmup_cosine_schedule m(10, 110, 0.1);
  REQUIRE(m.factor(0) == 0.0);  // warmup is not floored, as transformers
  REQUIRE(m.factor(10) == 1.0);
  REQUIRE_THAT(m.factor(60), WithinRel(0.55, 1e-12));
  REQUIRE_THAT(m.factor(110), WithinRel(0.1, 1e-12));
  REQUIRE_THAT(m.factor(1000), WithinRel(0.1, 1e-12));

  // A full cosine cycle comes back up at the end.
  optim::warmup_cosine_schedule full(0, 100, 0.0, 1.0);
  REQUIRE_THAT(full.factor(50), WithinAbs(0.0, 1e-15));
  REQUIRE_THAT(full.factor(100), WithinRel(1.0, 1e-15));
}

TEST_CASE("schedules reject invalid arguments", "[optim][schedule][errors]") {
  REQUIRE_THROWS_WITH(optim::warmup_cosine_schedule(20, 10), Contains("warmup_steps 20") &&
                                                                   Contains("total_steps 10"));
  REQUIRE_THROWS_WITH(optim::warmup_linear_schedule(20, 10), Contains("warmup_steps"));
  REQUIRE_THROWS_WITH(optim::warmup_linear_schedule(0, 0), Contains("total_steps"));
  REQUIRE_THROWS_WITH(optim::warmup_cosine_schedule(0, 10, -0.1), Contains("min_lr_ratio"));
  REQUIRE_THROWS_WITH(optim::warmup_cosine_schedule(0, 10, 1.5), Contains("min_lr_ratio"));
  REQUIRE_THROWS_WITH(optim::warmup_cosine_schedule(0, 10, 0.0, 0.0), Contains("num_cycles"));
  REQUIRE_NOTHROW(optim::warmup_cosine_schedule(10, 10));
}

TEST_CASE("lr_scheduler drives every group from its base lr", "[optim][schedule]") {
  auto a = parameter<double>(zeros<double>({2}));
  auto b = parameter<double>(zeros<double>({2}));
  optim::adamw<double> opt({{.params = {a}}, {.params = {b}, .lr = 1.6e-2}}, {.lr = 1e-3});
  optim::lr_scheduler sched(opt, optim::warmup_linear_schedule(4, 12));
  REQUIRE(sched.base_lrs() == std::vector<double>{1e-3, 1.6e-2});
  // LambdaLR semantics: the lr of step 0 is set at construction.
  REQUIRE(opt.lr(0) == 0.0);
  REQUIRE(opt.lr(1) == 0.0);
  sched.step();
  REQUIRE(sched.current_step() == 1);
  REQUIRE_THAT(opt.lr(0), WithinRel(0.25e-3, 1e-15));
  REQUIRE_THAT(opt.lr(1), WithinRel(0.25 * 1.6e-2, 1e-15));
  for (int k = 0; k < 7; ++k) sched.step();  // step 8: (12-8)/8 = 0.5
  REQUIRE_THAT(opt.lr(0), WithinRel(0.5e-3, 1e-15));
  REQUIRE_THAT(opt.lr(1), WithinRel(0.8e-2, 1e-15));
  REQUIRE(opt.lr(1) / opt.lr(0) == Approx(16));  // the LoRA+ ratio is kept
  sched.set_step(4);
  REQUIRE(opt.lr(0) == 1e-3);
  REQUIRE(sched.factor() == 1.0);

  // Any type with factor(step) is a schedule.
  struct halving {
    double factor(std::size_t step) const { return std::pow(0.5, double(step)); }
  };
  optim::sgd<double> s({a}, {.lr = 0.8});
  optim::lr_scheduler h(s, halving{}, 2);
  REQUIRE(s.lr(0) == 0.2);
  h.step();
  REQUIRE(s.lr(0) == 0.1);
}
