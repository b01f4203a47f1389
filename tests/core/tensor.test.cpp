#include <catch2/catch.hpp>

#include "peft/core/tensor.hpp"

using namespace peft;

TEST_CASE("as_matrix views tensor memory without copying", "[core][tensor]") {
  tensor<float> t = make_tensor<float>({2, 3, 4}, std::vector<float>(24, 0.f));
  auto m = as_matrix(t);
  REQUIRE(m.rows() == 6);
  REQUIRE(m.cols() == 4);
  REQUIRE(m.data() == t.data());
  m(5, 3) = 7.f;  // row-major: last element
  REQUIRE(t(1, 2, 3) == 7.f);
  auto m2 = as_matrix(t, 2, 12);
  REQUIRE(m2(1, 11) == 7.f);
}

TEST_CASE("as_matrix with a wrong explicit shape throws naming both shapes", "[core][tensor]") {
  tensor<double> t = zeros<double>({2, 3});
  REQUIRE_THROWS_WITH(as_matrix(t, 4, 2), Catch::Contains("[2,3]") && Catch::Contains("[4,2]"));
}

TEST_CASE("make_tensor checks the value count", "[core][tensor]") {
  REQUIRE_THROWS_AS(make_tensor<float>({2, 2}, {1.f, 2.f, 3.f}), shape_error);
  auto t = make_tensor<float>({2, 2}, {1.f, 2.f, 3.f, 4.f});
  REQUIRE(t(1, 0) == 3.f);
}

TEST_CASE("to_tensor copies an Eigen expression", "[core][tensor]") {
  matrix<double> a(2, 2);
  a << 1, 2, 3, 4;
  auto t = to_tensor(a * 2.0);
  REQUIRE(shape_of(t) == shape_t{2, 2});
  REQUIRE(t(1, 0) == 6.0);
}
