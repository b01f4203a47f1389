#include <catch2/catch.hpp>

#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/transpose.hpp"

using namespace peft;

TEST_CASE("transpose swaps the last two dims", "[autograd][ops][transpose]") {
  auto a = constant<float>(make_tensor<float>({2, 3}, {1, 2, 3, 4, 5, 6}));
  auto y = transpose(a);
  REQUIRE(y.shape() == shape_t{3, 2});
  const std::vector<float> e{1, 4, 2, 5, 3, 6};
  for (std::size_t i = 0; i < 6; ++i) CHECK(y.value().data()[i] == e[i]);

  auto b = constant<float>(make_tensor<float>({2, 2, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}));
  auto yb = transpose(b);
  REQUIRE(yb.shape() == shape_t{2, 3, 2});
  const std::vector<float> eb{1, 4, 2, 5, 3, 6, 7, 10, 8, 11, 9, 12};
  for (std::size_t i = 0; i < 12; ++i) CHECK(yb.value().data()[i] == eb[i]);
}

TEST_CASE("transpose gradcheck", "[autograd][ops][transpose][gradcheck]") {
  rng g(31);
  auto a = parameter<double>(randn<double>({3, 4}, g));
  auto r = grad_check([](auto& in) { return transpose(in[0]); }, {a});
  INFO(r.report);
  REQUIRE(r.ok);
  auto b = parameter<double>(randn<double>({2, 2, 3, 4}, g));
  auto r4 = grad_check([](auto& in) { return transpose(in[0]); }, {b});
  INFO(r4.report);
  REQUIRE(r4.ok);
  REQUIRE(r4.checked == 48);
}

TEST_CASE("transpose of fewer than 2 dims throws naming the shape", "[autograd][ops][transpose]") {
  auto a = constant<float>(zeros<float>({3}));
  REQUIRE_THROWS_AS(transpose(a), shape_error);
  REQUIRE_THROWS_WITH(transpose(a), Catch::Contains("transpose") && Catch::Contains("[3]"));
}
