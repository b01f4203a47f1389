#include <catch2/catch.hpp>

#include "peft/autograd/grad_check.hpp"
#include "peft/core/threads.hpp"
#include "peft/nn/linear.hpp"

using namespace peft;

// Every GEMM here is tiny: OpenMP threads only add overhead, and spin badly on a loaded machine.
static const bool single_threaded = (set_num_threads(1), true);
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

static bool same(const tensor<float>& a, const tensor<float>& b) { return a == b; }

TEST_CASE("nn::linear has PyTorch names, shapes and init bounds", "[nn][linear]") {
  rng g(1);
  nn::linear<float> fc(16, 4, g);
  REQUIRE(fc.type_name() == "linear");
  REQUIRE(fc.in_features() == 16);
  REQUIRE(fc.out_features() == 4);
  REQUIRE(fc.has_bias());
  auto named = fc.named_parameters();
  REQUIRE(named.size() == 2);
  REQUIRE(named[0].first == "weight");
  REQUIRE(named[1].first == "bias");
  REQUIRE(fc.weight.shape() == shape_t{4, 16});
  REQUIRE(fc.bias.shape() == shape_t{4});
  REQUIRE(fc.weight.requires_grad());
  // kaiming_uniform(a=sqrt(5)) and the bias both have bound 1/sqrt(in) = 0.25.
  float wmax = 0, bmax = 0;
  for (float v : fc.weight.value()) wmax = std::max(wmax, std::abs(v));
  for (float v : fc.bias.value()) bmax = std::max(bmax, std::abs(v));
  REQUIRE(wmax <= 0.25f);
  REQUIRE(wmax > 0.2f);  // 64 draws fill most of the range
  REQUIRE(bmax <= 0.25f);
  REQUIRE(fc.num_parameters() == 68);

  // Same seed, same bits.
  rng g2(1);
  nn::linear<float> fc2(16, 4, g2);
  REQUIRE(same(fc2.weight.value(), fc.weight.value()));
  REQUIRE(same(fc2.bias.value(), fc.bias.value()));

  rng g3(1);
  nn::linear<float> nb(16, 4, false, g3);
  REQUIRE_FALSE(nb.has_bias());
  REQUIRE(nb.named_parameters().size() == 1);
  REQUIRE(same(nb.weight.value(), fc.weight.value()));  // weight drawn first either way
}

TEST_CASE("nn::linear forward matches x W^T + b", "[nn][linear]") {
  auto W = parameter<double>(make_tensor<double>({2, 3}, {1, 2, 3, -1, 0, 1}));
  auto b = parameter<double>(make_tensor<double>({2}, {0.5, -0.5}));
  nn::linear<double> fc(W, b);
  auto x = constant<double>(make_tensor<double>({2, 1, 3}, {1, 1, 1, 2, -1, 0.5}));
  auto y = fc(x);
  REQUIRE(y.shape() == shape_t{2, 1, 2});
  REQUIRE_THAT(y.value()(0, 0, 0), WithinAbs(6.5, 1e-12));
  REQUIRE_THAT(y.value()(0, 0, 1), WithinAbs(-0.5, 1e-12));
  REQUIRE_THAT(y.value()(1, 0, 0), WithinAbs(2 - 2 + 1.5 + 0.5, 1e-12));
  REQUIRE_THAT(y.value()(1, 0, 1), WithinAbs(-2 + 0.5 - 0.5, 1e-12));
  // Module and parameters share nodes: changing the handle changes the module.
  W.value()(0, 0) = 0;
  REQUIRE_THAT(fc(x).value()(0, 0, 0), WithinAbs(5.5, 1e-12));
}

TEST_CASE("nn::linear gradcheck (with and without bias)", "[nn][linear][gradcheck]") {
  rng g(7);
  for (bool bias : {true, false}) {
    nn::linear<double> fc(5, 3, bias, g);
    auto x = parameter<double>(randn<double>({2, 4, 5}, g));
    auto in = bias ? std::vector{x, fc.weight, fc.bias} : std::vector{x, fc.weight};
    auto r = grad_check([&](auto& v) { return fc(v[0]); }, in);
    INFO(r.report);
    REQUIRE(r.ok);
  }
}

TEST_CASE("nn::linear freeze stops weight gradients", "[nn][linear]") {
  rng g(2);
  nn::linear<double> fc(3, 2, g);
  fc.freeze();
  REQUIRE(fc.trainable_parameters().empty());
  auto x = parameter<double>(randn<double>({4, 3}, g));
  auto y = fc(x);
  y.backward(ones<double>({4, 2}));
  REQUIRE(x.has_grad());
  REQUIRE_FALSE(fc.weight.has_grad());
  fc.unfreeze();
  REQUIRE(fc.trainable_parameters().size() == 2);
}

TEST_CASE("nn::linear rejects bad shapes naming them", "[nn][linear]") {
  rng g(3);
  nn::linear<float> fc(8, 4, g);
  auto x = constant<float>(zeros<float>({2, 5}));
  REQUIRE_THROWS_AS(fc(x), shape_error);
  REQUIRE_THROWS_WITH(fc(x), Catch::Contains("[2,5]") && Catch::Contains("in=8"));
  REQUIRE_THROWS_AS(nn::linear<float>(0, 4, g), value_error);
  auto w1 = parameter<float>(zeros<float>({4}));
  REQUIRE_THROWS_WITH(nn::linear<float>(w1), Catch::Contains("[4]"));
  auto w = parameter<float>(zeros<float>({4, 8}));
  auto b = parameter<float>(zeros<float>({3}));
  REQUIRE_THROWS_WITH(nn::linear<float>(w, b), Catch::Contains("[3]") && Catch::Contains("[4,8]"));
}
