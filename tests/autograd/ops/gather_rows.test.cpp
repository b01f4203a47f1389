#include <catch2/catch.hpp>

#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/gather_rows.hpp"

using namespace peft;

TEST_CASE("gather_rows looks up rows and shapes them by index_shape",
          "[autograd][ops][gather_rows]") {
  auto table = constant<float>(make_tensor<float>({4, 2}, {0, 1, 10, 11, 20, 21, 30, 31}));
  auto y = gather_rows(table, {3, 0, 3, 1, 2, 2}, {2, 3});
  REQUIRE(y.shape() == shape_t{2, 3, 2});
  const std::vector<float> e{30, 31, 0, 1, 30, 31, 10, 11, 20, 21, 20, 21};
  for (std::size_t i = 0; i < e.size(); ++i) CHECK(y.value().data()[i] == e[i]);
  auto y1 = gather_rows(table, {1}, {1});
  REQUIRE(y1.shape() == shape_t{1, 2});
  CHECK(y1.value()(0, 1) == 11.f);
}

TEST_CASE("gather_rows backward scatter-adds repeated ids", "[autograd][ops][gather_rows]") {
  auto table = parameter<double>(zeros<double>({4, 2}));
  auto y = gather_rows(table, {3, 0, 3, 3}, {4});
  y.backward(make_tensor<double>({4, 2}, {1, 2, 3, 4, 5, 6, 7, 8}));
  CHECK(table.grad()(3, 0) == 13.0);  // 1 + 5 + 7
  CHECK(table.grad()(3, 1) == 16.0);  // 2 + 6 + 8
  CHECK(table.grad()(0, 0) == 3.0);
  CHECK(table.grad()(1, 0) == 0.0);
  CHECK(table.grad()(2, 1) == 0.0);
}

TEST_CASE("gather_rows gradcheck with repeated ids", "[autograd][ops][gather_rows][gradcheck]") {
  rng g(81);
  auto table = parameter<double>(randn<double>({5, 3}, g));
  auto r = grad_check([](auto& in) { return gather_rows(in[0], {4, 1, 4, 0, 1, 4}, {2, 3}); },
                      {table});
  INFO(r.report);
  REQUIRE(r.ok);
  REQUIRE(r.checked == 15);
}

TEST_CASE("gather_rows with a bad id or shape throws", "[autograd][ops][gather_rows]") {
  auto table = constant<float>(zeros<float>({4, 2}));
  REQUIRE_THROWS_AS(gather_rows(table, {0, 4}, {2}), value_error);
  REQUIRE_THROWS_WITH(gather_rows(table, {0, 4}, {2}), Catch::Contains("gather_rows") &&
                                                           Catch::Contains("id 4") &&
                                                           Catch::Contains("[0, 4)"));
  REQUIRE_THROWS_WITH(gather_rows(table, {-1}, {1}), Catch::Contains("id -1"));
  REQUIRE_THROWS_AS(gather_rows(table, {0, 1, 2}, {2, 2}), shape_error);
  REQUIRE_THROWS_WITH(gather_rows(table, {0, 1, 2}, {2, 2}), Catch::Contains("gather_rows") &&
                                                                 Catch::Contains("[2,2]") &&
                                                                 Catch::Contains("[4,2]"));
  auto t3 = constant<float>(zeros<float>({4, 2, 1}));
  REQUIRE_THROWS_WITH(gather_rows(t3, {0}, {1}), Catch::Contains("gather_rows") &&
                                                     Catch::Contains("[4,2,1]"));
}
