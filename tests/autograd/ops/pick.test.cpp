#include <catch2/catch.hpp>

#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/pick.hpp"

using namespace peft;

TEST_CASE("pick selects one entry per row; ignore_index gives 0", "[autograd][ops][pick]") {
  auto a = constant<float>(make_tensor<float>({3, 4}, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}));
  auto y = pick(a, {1, -100, 3});
  REQUIRE(y.shape() == shape_t{3});
  CHECK(y.value()(0) == 1.f);
  CHECK(y.value()(1) == 0.f);
  CHECK(y.value()(2) == 11.f);
  auto y2 = pick(a, {0, 2, 0}, 0);  // custom ignore_index
  CHECK(y2.value()(0) == 0.f);
  CHECK(y2.value()(1) == 6.f);
  CHECK(y2.value()(2) == 0.f);
}

TEST_CASE("pick gradcheck with an ignored row", "[autograd][ops][pick][gradcheck]") {
  rng g(91);
  auto a = parameter<double>(randn<double>({4, 3}, g));
  auto r = grad_check([](auto& in) { return pick(in[0], {2, -100, 0, 2}); }, {a});
  INFO(r.report);
  REQUIRE(r.ok);
  REQUIRE(r.checked == 12);
  a.zero_grad();
  pick(a, {2, -100, 0, 2}).backward(ones<double>({4}));
  for (std::size_t c = 0; c < 3; ++c) CHECK(a.grad()(1, c) == 0.0);
  CHECK(a.grad()(0, 2) == 1.0);
  CHECK(a.grad()(0, 0) == 0.0);
}

TEST_CASE("pick with bad targets throws", "[autograd][ops][pick]") {
  auto a = constant<float>(zeros<float>({3, 4}));
  REQUIRE_THROWS_AS(pick(a, {0, 4, 1}), value_error);
  REQUIRE_THROWS_WITH(pick(a, {0, 4, 1}), Catch::Contains("pick") && Catch::Contains("target 4") &&
                                              Catch::Contains("[0, 4)"));
  REQUIRE_THROWS_WITH(pick(a, {0, -1, 1}), Catch::Contains("target -1"));
  REQUIRE_THROWS_AS(pick(a, {0, 1}), shape_error);
  REQUIRE_THROWS_WITH(pick(a, {0, 1}), Catch::Contains("pick") && Catch::Contains("[3,4]") &&
                                           Catch::Contains("2 targets"));
  auto v = constant<float>(zeros<float>({4}));
  REQUIRE_THROWS_WITH(pick(v, {0}), Catch::Contains("pick") && Catch::Contains("[4]"));
}
