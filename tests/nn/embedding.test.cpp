#include <catch2/catch.hpp>

#include "peft/autograd/grad_check.hpp"
#include "peft/nn/embedding.hpp"

using namespace peft;
using Catch::Matchers::WithinAbs;

TEST_CASE("embedding looks up rows", "[nn][embedding]") {
  rng g(5);
  nn::embedding<float> e(10, 3, g);
  REQUIRE(e.type_name() == "embedding");
  REQUIRE(e.num_embeddings() == 10);
  REQUIRE(e.embedding_dim() == 3);
  REQUIRE(e.named_parameters().size() == 1);
  REQUIRE(e.named_parameters()[0].first == "weight");
  // N(0, 1) init: the sample moments of 30 draws are loosely near 0 and 1.
  double m = 0, s2 = 0;
  for (float v : e.weight.value()) m += v, s2 += double(v) * v;
  REQUIRE(std::abs(m / 30) < 0.6);
  REQUIRE(s2 / 30 > 0.4);
  REQUIRE(s2 / 30 < 2.0);

  auto y = e({7, 0, 7, 2}, {2, 2});
  REQUIRE(y.shape() == shape_t{2, 2, 3});
  for (int j = 0; j < 3; ++j) {
    REQUIRE(y.value()(0, 0, j) == e.weight.value()(7, j));
    REQUIRE(y.value()(0, 1, j) == e.weight.value()(0, j));
    REQUIRE(y.value()(1, 0, j) == e.weight.value()(7, j));
    REQUIRE(y.value()(1, 1, j) == e.weight.value()(2, j));
  }
  REQUIRE(e.forward({1, 2, 3}).shape() == shape_t{3, 3});
}

TEST_CASE("embedding gradient scatter-adds repeated ids", "[nn][embedding][gradcheck]") {
  rng g(6);
  nn::embedding<double> e(6, 4, g);
  std::vector<std::int64_t> ids{1, 4, 1, 5, 0, 1};
  auto r = grad_check([&](auto&) { return e(ids, {3, 2}); }, {e.weight});
  INFO(r.report);
  REQUIRE(r.ok);
  e.zero_grad();
  e(ids, {6}).backward(ones<double>({6, 4}));
  REQUIRE_THAT(e.weight.grad()(1, 0), WithinAbs(3.0, 1e-12));
  REQUIRE_THAT(e.weight.grad()(2, 0), WithinAbs(0.0, 1e-12));
}

TEST_CASE("embedding rejects bad ids and shapes", "[nn][embedding]") {
  rng g(7);
  nn::embedding<float> e(5, 2, g);
  REQUIRE_THROWS_AS(e({0, 5}, {2}), value_error);
  REQUIRE_THROWS_WITH(e({0, 5}, {2}), Catch::Contains("5"));
  REQUIRE_THROWS_AS(e({0, 1, 2}, {2, 2}), shape_error);
  REQUIRE_THROWS_WITH(e({0, 1, 2}, {2, 2}), Catch::Contains("[2,2]"));
  REQUIRE_THROWS_AS(nn::embedding<float>(0, 3, g), value_error);
}
