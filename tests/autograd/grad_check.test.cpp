#include <catch2/catch.hpp>

#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/add.hpp"

using namespace peft;

TEST_CASE("grad_check detects a wrong backward", "[autograd][grad_check]") {
  // A deliberately wrong op (claims dy/dx = 2 for y = x): the check must fail.
  auto wrong = [](const std::vector<variable<double>>& in) {
    tensor<double> v = in[0].value();
    return make_result<double>(std::move(v), {in[0]}, "wrong", [](node<double>& self) {
      tensor<double> g = self.grad;
      g *= 2.0;
      detail::accumulate(*self.parents[0], std::move(g));
    });
  };
  rng g(1);
  auto x = parameter<double>(randn<double>({3, 2}, g));
  auto r = grad_check(wrong, {x});
  REQUIRE_FALSE(r.ok);
  REQUIRE(r.checked == 6);
}
