#include <catch2/catch.hpp>

#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/concat.hpp"

using namespace peft;

TEST_CASE("concat along axes 0, 1 and -1", "[autograd][ops][concat]") {
  auto a = constant<float>(make_tensor<float>({2, 2}, {1, 2, 3, 4}));
  auto b = constant<float>(make_tensor<float>({2, 1}, {5, 6}));
  auto c = constant<float>(make_tensor<float>({1, 2}, {7, 8}));

  auto y1 = concat<float>({a, b}, 1);
  REQUIRE(y1.shape() == shape_t{2, 3});
  const std::vector<float> e1{1, 2, 5, 3, 4, 6};
  for (std::size_t i = 0; i < 6; ++i) CHECK(y1.value().data()[i] == e1[i]);
  auto ym = concat<float>({b, a}, -1);
  const std::vector<float> em{5, 1, 2, 6, 3, 4};
  for (std::size_t i = 0; i < 6; ++i) CHECK(ym.value().data()[i] == em[i]);

  auto y0 = concat<float>({a, c, a}, 0);
  REQUIRE(y0.shape() == shape_t{5, 2});
  const std::vector<float> e0{1, 2, 3, 4, 7, 8, 1, 2, 3, 4};
  for (std::size_t i = 0; i < 10; ++i) CHECK(y0.value().data()[i] == e0[i]);

  auto deduced = concat({a, b}, 1);  // initializer_list overload deduces T
  CHECK((deduced.value() == y1.value()));
  auto one = concat<float>({a}, 0);
  CHECK((one.value() == a.value()));
}

TEST_CASE("concat gradcheck along several axes", "[autograd][ops][concat][gradcheck]") {
  rng g(61);
  auto a = parameter<double>(randn<double>({2, 3, 2}, g));
  for (int axis : {0, 1, 2, -2}) {
    shape_t sb{2, 3, 2}, sc{2, 3, 2};
    const std::size_t ax = std::size_t(axis < 0 ? axis + 3 : axis);
    sb[ax] = 1;
    sc[ax] = 3;
    auto b = parameter<double>(randn<double>(sb, g));
    auto c = parameter<double>(randn<double>(sc, g));
    auto r = grad_check([axis](auto& in) { return concat(in, axis); }, {a, b, c});
    INFO("axis " << axis << "\n" << r.report);
    REQUIRE(r.ok);
    REQUIRE(r.checked == 12 + numel(sb) + numel(sc));
  }
}

TEST_CASE("concat with a constant input and a repeated input", "[autograd][ops][concat]") {
  auto a = parameter<double>(make_tensor<double>({1, 2}, {1, 2}));
  auto k = constant<double>(make_tensor<double>({1, 2}, {3, 4}));
  auto y = concat<double>({a, k, a}, 0);
  y.backward(make_tensor<double>({3, 2}, {1, 2, 3, 4, 5, 6}));
  CHECK_FALSE(k.has_grad());
  CHECK(a.grad()(0, 0) == 6.0);  // 1 + 5
  CHECK(a.grad()(0, 1) == 8.0);  // 2 + 6
}

TEST_CASE("concat with mismatched shapes throws naming both", "[autograd][ops][concat]") {
  auto a = constant<float>(zeros<float>({2, 3}));
  auto b = constant<float>(zeros<float>({3, 3}));
  REQUIRE_THROWS_AS(concat<float>({a, b}, 1), shape_error);
  REQUIRE_THROWS_WITH(concat<float>({a, b}, 1), Catch::Contains("concat") &&
                                                    Catch::Contains("[2,3]") &&
                                                    Catch::Contains("[3,3]"));
  auto c = constant<float>(zeros<float>({2, 3, 1}));
  REQUIRE_THROWS_WITH(concat<float>({a, c}, 0), Catch::Contains("[2,3]") &&
                                                    Catch::Contains("[2,3,1]"));
  REQUIRE_THROWS_WITH(concat<float>({a, a}, 2), Catch::Contains("concat") &&
                                                    Catch::Contains("axis 2") &&
                                                    Catch::Contains("[2,3]"));
  REQUIRE_THROWS_AS(concat<float>({}, 0), shape_error);
}
