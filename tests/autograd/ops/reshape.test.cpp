#include <catch2/catch.hpp>

#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/reshape.hpp"

using namespace peft;

TEST_CASE("reshape keeps row-major order and infers -1", "[autograd][ops][reshape]") {
  auto a = constant<float>(make_tensor<float>({2, 3}, {1, 2, 3, 4, 5, 6}));
  auto y = reshape(a, {3, -1});
  REQUIRE(y.shape() == shape_t{3, 2});
  CHECK(y.value()(0, 1) == 2.f);
  CHECK(y.value()(2, 0) == 5.f);
  auto f = reshape(a, {-1});
  REQUIRE(f.shape() == shape_t{6});
  CHECK(f.value()(4) == 5.f);
  auto z = reshape(a, {1, 2, 1, 3});
  REQUIRE(z.shape() == shape_t{1, 2, 1, 3});
  CHECK(z.value()(0, 1, 0, 2) == 6.f);
  auto s = reshape(constant<float>(make_tensor<float>({1, 1}, {7})), {});
  REQUIRE(s.shape() == shape_t{});
  CHECK(s.item() == 7.f);
}

TEST_CASE("reshape gradcheck", "[autograd][ops][reshape][gradcheck]") {
  rng g(51);
  auto a = parameter<double>(randn<double>({2, 3, 4}, g));
  auto r = grad_check([](auto& in) { return reshape(in[0], {4, -1, 2}); }, {a});
  INFO(r.report);
  REQUIRE(r.ok);
  REQUIRE(r.checked == 24);
}

TEST_CASE("reshape with a bad shape throws naming both shapes", "[autograd][ops][reshape]") {
  auto a = constant<float>(zeros<float>({2, 3}));
  REQUIRE_THROWS_AS(reshape(a, {4, 2}), shape_error);
  REQUIRE_THROWS_WITH(reshape(a, {4, 2}), Catch::Contains("reshape: [2,3] to [4,2]"));
  REQUIRE_THROWS_WITH(reshape(a, {-1, -1}), Catch::Contains("reshape") &&
                                                Catch::Contains("[2,3]") &&
                                                Catch::Contains("[-1,-1]"));
  REQUIRE_THROWS_WITH(reshape(a, {4, -1}), Catch::Contains("[4,-1]"));
  REQUIRE_THROWS_WITH(reshape(a, {-2, -3}), Catch::Contains("[-2,-3]"));
}
