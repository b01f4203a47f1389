#include <catch2/catch.hpp>

#include <limits>

#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/where.hpp"

using namespace peft;

TEST_CASE("where picks a where cond is nonzero, with broadcasting", "[autograd][ops][where]") {
  tensor<std::uint8_t> cond = make_tensor<std::uint8_t>({2, 3}, {1, 0, 1, 0, 2, 0});
  auto a = constant<float>(make_tensor<float>({2, 3}, {1, 2, 3, 4, 5, 6}));
  auto b = constant<float>(make_tensor<float>({2, 3}, {-1, -2, -3, -4, -5, -6}));
  auto y = where(cond, a, b);  // unqualified, non-const lvalues: must not resolve to xt::where
  REQUIRE(y.shape() == shape_t{2, 3});
  const std::vector<float> e{1, -2, 3, -4, 5, -6};
  for (std::size_t i = 0; i < 6; ++i) CHECK(y.value().data()[i] == e[i]);

  // cond [3] and b [2,1] broadcast against a [2,3].
  auto bb = constant<float>(make_tensor<float>({2, 1}, {100, 200}));
  auto y2 = peft::where(make_tensor<std::uint8_t>({3}, {0, 1, 0}), a, bb);
  REQUIRE(y2.shape() == shape_t{2, 3});
  const std::vector<float> e2{100, 2, 100, 200, 5, 200};
  for (std::size_t i = 0; i < 6; ++i) CHECK(y2.value().data()[i] == e2[i]);
}

TEST_CASE("where gradcheck with broadcast operands", "[autograd][ops][where][gradcheck]") {
  rng g(101);
  const tensor<std::uint8_t> cond = make_tensor<std::uint8_t>({2, 1, 3}, {1, 0, 1, 0, 0, 1});
  auto a = parameter<double>(randn<double>({2, 4, 3}, g));
  auto b = parameter<double>(randn<double>({4, 1}, g));
  auto r = grad_check([&](auto& in) { return where(cond, in[0], in[1]); }, {a, b});
  INFO(r.report);
  REQUIRE(r.ok);
  REQUIRE(r.checked == 24 + 4);
  // The same variable on both branches gets the whole gradient.
  auto x = parameter<double>(randn<double>({2, 3}, g));
  tensor<std::uint8_t> c2 = make_tensor<std::uint8_t>({2, 3}, {1, 0, 1, 1, 0, 0});
  where(c2, x, x).backward(ones<double>({2, 3}));
  for (std::size_t i = 0; i < 6; ++i) CHECK(x.grad().data()[i] == 1.0);
}

TEST_CASE("where with incompatible shapes names them", "[autograd][ops][where]") {
  auto a = constant<float>(zeros<float>({2, 3}));
  auto b = constant<float>(zeros<float>({2, 3}));
  tensor<std::uint8_t> cond = zeros<std::uint8_t>({4});
  REQUIRE_THROWS_AS(where(cond, a, b), shape_error);
  REQUIRE_THROWS_WITH(where(cond, a, b), Catch::Contains("where") && Catch::Contains("[4]") &&
                                             Catch::Contains("[2,3]"));
  tensor<std::uint8_t> c3 = zeros<std::uint8_t>({3});
  auto b2 = constant<float>(zeros<float>({5, 1}));
  REQUIRE_THROWS_WITH(where(c3, a, b2), Catch::Contains("[2,3]") && Catch::Contains("[5,1]"));
}

TEST_CASE("masked_fill replaces masked entries, mask broadcasting", "[autograd][ops][where]") {
  auto a = constant<float>(make_tensor<float>({2, 3}, {1, 2, 3, 4, 5, 6}));
  const float ninf = -std::numeric_limits<float>::infinity();
  auto y = masked_fill(a, make_tensor<std::uint8_t>({1, 3}, {0, 0, 1}), ninf);
  REQUIRE(y.shape() == shape_t{2, 3});
  CHECK(y.value()(0, 2) == ninf);
  CHECK(y.value()(1, 2) == ninf);
  CHECK(y.value()(1, 1) == 5.f);
  auto y2 = masked_fill(a, make_tensor<std::uint8_t>({2, 3}, {1, 0, 0, 0, 0, 1}), 0.f);
  CHECK(y2.value()(0, 0) == 0.f);
  CHECK(y2.value()(0, 1) == 2.f);
  CHECK(y2.value()(1, 2) == 0.f);
}

TEST_CASE("masked_fill gradcheck", "[autograd][ops][where][gradcheck]") {
  rng g(102);
  auto a = parameter<double>(randn<double>({2, 3, 3}, g));
  const tensor<std::uint8_t> causal = make_tensor<std::uint8_t>({3, 3}, {0, 1, 1, 0, 0, 1, 0, 0, 0});
  // A moderate fill value: a huge one would swamp the finite differences of sum(w * y).
  auto r = grad_check([&](auto& in) { return masked_fill(in[0], causal, -3.0); }, {a});
  INFO(r.report);
  REQUIRE(r.ok);
  a.zero_grad();
  masked_fill(a, causal, -1e9).backward(ones<double>({2, 3, 3}));
  CHECK(a.grad()(1, 0, 2) == 0.0);
  CHECK(a.grad()(1, 2, 0) == 1.0);
}

TEST_CASE("masked_fill with a mask that does not broadcast throws", "[autograd][ops][where]") {
  auto a = constant<float>(zeros<float>({2, 3}));
  REQUIRE_THROWS_AS(masked_fill(a, zeros<std::uint8_t>({4}), 0.f), shape_error);
  REQUIRE_THROWS_WITH(masked_fill(a, zeros<std::uint8_t>({4}), 0.f),
                      Catch::Contains("masked_fill") && Catch::Contains("[4]") &&
                          Catch::Contains("[2,3]"));
  REQUIRE_THROWS_WITH(masked_fill(a, zeros<std::uint8_t>({2, 2, 3}), 0.f),
                      Catch::Contains("[2,2,3]") && Catch::Contains("[2,3]"));
}
