#include <catch2/catch.hpp>

#include <numeric>

#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/slice.hpp"

using namespace peft;

TEST_CASE("slice along axes 0, 1 and -1", "[autograd][ops][slice]") {
  tensor<float> t = tensor<float>::from_shape({3, 4});
  std::iota(t.begin(), t.end(), 0.f);
  auto a = constant<float>(t);
  auto y1 = slice(a, 1, 1, 3);
  REQUIRE(y1.shape() == shape_t{3, 2});
  const std::vector<float> e1{1, 2, 5, 6, 9, 10};
  for (std::size_t i = 0; i < 6; ++i) CHECK(y1.value().data()[i] == e1[i]);
  auto y0 = slice(a, 0, 2, 3);
  REQUIRE(y0.shape() == shape_t{1, 4});
  const std::vector<float> e0{8, 9, 10, 11};
  for (std::size_t i = 0; i < 4; ++i) CHECK(y0.value().data()[i] == e0[i]);
  auto ym = slice(a, -1, 3, 4);
  REQUIRE(ym.shape() == shape_t{3, 1});
  CHECK(ym.value()(2, 0) == 11.f);
  auto empty = slice(a, 0, 1, 1);
  CHECK(empty.shape() == shape_t{0, 4});
}

TEST_CASE("slice gradcheck along several axes", "[autograd][ops][slice][gradcheck]") {
  rng g(71);
  auto a = parameter<double>(randn<double>({3, 4, 5}, g));
  for (int axis : {0, 1, 2, -1}) {
    auto r = grad_check([axis](auto& in) { return slice(in[0], axis, 1, 3); }, {a});
    INFO("axis " << axis << "\n" << r.report);
    REQUIRE(r.ok);
    REQUIRE(r.checked == 60);
  }
  // Untouched elements get an exact zero gradient.
  a.zero_grad();
  slice(a, 1, 1, 3).backward(ones<double>({3, 2, 5}));
  CHECK(a.grad()(0, 0, 0) == 0.0);
  CHECK(a.grad()(2, 3, 4) == 0.0);
  CHECK(a.grad()(1, 2, 3) == 1.0);
}

TEST_CASE("slice out of range throws naming the shape", "[autograd][ops][slice]") {
  auto a = constant<float>(zeros<float>({3, 4}));
  REQUIRE_THROWS_AS(slice(a, 1, 2, 5), shape_error);
  REQUIRE_THROWS_WITH(slice(a, 1, 2, 5), Catch::Contains("slice") && Catch::Contains("[3,4]") &&
                                             Catch::Contains("[2, 5)"));
  REQUIRE_THROWS_WITH(slice(a, 0, 2, 1), Catch::Contains("slice") && Catch::Contains("[2, 1)"));
  REQUIRE_THROWS_WITH(slice(a, 2, 0, 1), Catch::Contains("slice") && Catch::Contains("axis 2") &&
                                             Catch::Contains("[3,4]"));
  REQUIRE_THROWS_WITH(slice(a, -3, 0, 1), Catch::Contains("axis -3"));
}
