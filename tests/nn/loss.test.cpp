#include <catch2/catch.hpp>

#include <cmath>

#include "peft/autograd/grad_check.hpp"
#include "peft/nn/loss.hpp"

using namespace peft;
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

TEST_CASE("cross_entropy on hand-computed logits", "[nn][loss]") {
  auto logits = constant<double>(make_tensor<double>({2, 3}, {1, 2, 3, 0, 0, 0}));
  // row 0, target 2: -log(e^3 / (e + e^2 + e^3)); row 1, target 0: log 3
  const double l0 = -3 + std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0));
  const double l1 = std::log(3.0);
  auto loss = nn::cross_entropy(logits, {2, 0});
  REQUIRE(loss.numel() == 1);
  REQUIRE_THAT(loss.item(), WithinRel((l0 + l1) / 2, 1e-12));
  // ignore_index drops a row from the sum and the count.
  REQUIRE_THAT(nn::cross_entropy(logits, {2, -100}).item(), WithinRel(l0, 1e-12));
  REQUIRE_THAT(nn::cross_entropy(logits, {7, 0}, 7).item(), WithinRel(l1, 1e-12));
  REQUIRE(nn::cross_entropy(logits, {-100, -100}).item() == 0.0);
  // [..., C]: leading dims are flattened.
  auto l3 = constant<double>(make_tensor<double>({1, 2, 3}, {1, 2, 3, 0, 0, 0}));
  REQUIRE_THAT(nn::cross_entropy(l3, {2, 0}).item(), WithinRel((l0 + l1) / 2, 1e-12));
  // float, large logits stay finite
  auto big = constant<float>(make_tensor<float>({1, 2}, {1000.f, 0.f}));
  REQUIRE_THAT(nn::cross_entropy(big, {1}).item(), WithinRel(1000.f, 1e-5f));
}

TEST_CASE("cross_entropy gradient is (softmax - onehot) / count", "[nn][loss][gradcheck]") {
  rng g(1);
  auto logits = parameter<double>(randn<double>({2, 3, 5}, g));
  std::vector<std::int64_t> t{0, 4, -100, 2, 2, 1};
  auto r = grad_check([&](auto& v) { return nn::cross_entropy(v[0], t); }, {logits});
  INFO(r.report);
  REQUIRE(r.ok);
  logits.zero_grad();
  nn::cross_entropy(logits, t).backward();
  // ignored row gets no gradient
  for (std::size_t c = 0; c < 5; ++c) REQUIRE(logits.grad()(0, 2, c) == 0.0);
  // row 0: (softmax - onehot(0)) / 5
  double z = 0;
  for (std::size_t c = 0; c < 5; ++c) z += std::exp(logits.value()(0, 0, c));
  REQUIRE_THAT(logits.grad()(0, 0, 0),
               WithinAbs((std::exp(logits.value()(0, 0, 0)) / z - 1) / 5, 1e-12));
}

TEST_CASE("mse_loss", "[nn][loss]") {
  auto p = parameter<double>(make_tensor<double>({2, 2}, {1, 2, 3, 4}));
  auto t = constant<double>(make_tensor<double>({2, 2}, {0, 2, 5, 4}));
  auto l = nn::mse_loss(p, t);
  REQUIRE_THAT(l.item(), WithinRel((1.0 + 0 + 4 + 0) / 4, 1e-12));
  rng g(2);
  auto q = parameter<double>(randn<double>({3, 4}, g));
  auto u = parameter<double>(randn<double>({3, 4}, g));
  auto r = grad_check([](auto& v) { return nn::mse_loss(v[0], v[1]); }, {q, u});
  INFO(r.report);
  REQUIRE(r.ok);
}

TEST_CASE("losses reject bad shapes naming them", "[nn][loss]") {
  auto logits = constant<float>(zeros<float>({4, 3}));
  REQUIRE_THROWS_AS(nn::cross_entropy(logits, {0, 1}), shape_error);
  REQUIRE_THROWS_WITH(nn::cross_entropy(logits, {0, 1}), Catch::Contains("[4,3]") && Catch::Contains("2 targets"));
  REQUIRE_THROWS_AS(nn::cross_entropy(logits, {0, 1, 2, 3}), value_error);  // 3 >= C
  auto a = constant<float>(zeros<float>({2, 3}));
  auto b = constant<float>(zeros<float>({3, 2}));
  REQUIRE_THROWS_WITH(nn::mse_loss(a, b), Catch::Contains("[2,3]") && Catch::Contains("[3,2]"));
}
