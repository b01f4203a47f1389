#include <catch2/catch.hpp>

#include <numeric>

#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/permute.hpp"

using namespace peft;

namespace {
tensor<double> arange(const shape_t& s) {
  tensor<double> t = tensor<double>::from_shape(s);
  std::iota(t.begin(), t.end(), 0.0);
  return t;
}
}  // namespace

TEST_CASE("permute reorders dims", "[autograd][ops][permute]") {
  auto a = constant<double>(arange({2, 3, 4}));
  auto y = permute(a, {2, 0, 1});
  REQUIRE(y.shape() == shape_t{4, 2, 3});
  for (std::size_t i = 0; i < 4; ++i)
    for (std::size_t j = 0; j < 2; ++j)
      for (std::size_t k = 0; k < 3; ++k) CHECK(y.value()(i, j, k) == a.value()(j, k, i));
  CHECK(y.value()(1, 0, 2) == 9.0);  // a[0,2,1] = 0*12 + 2*4 + 1

  // The attention reshuffle [b,s,h,d] -> [b,h,s,d] (contiguous inner runs).
  auto x = constant<double>(arange({2, 3, 2, 4}));
  auto yx = permute(x, {0, 2, 1, 3});
  REQUIRE(yx.shape() == shape_t{2, 2, 3, 4});
  CHECK(yx.value()(1, 1, 2, 3) == x.value()(1, 2, 1, 3));
  CHECK(yx.value()(0, 1, 0, 2) == 6.0);

  // Swapping the last two dims (Eigen transpose path) and the identity.
  auto yt = permute(a, {0, 2, 1});
  REQUIRE(yt.shape() == shape_t{2, 4, 3});
  CHECK(yt.value()(1, 3, 2) == a.value()(1, 2, 3));
  auto yi = permute(a, {0, 1, 2});
  CHECK((yi.value() == a.value()));
}

TEST_CASE("permute gradcheck on 4-D permutations", "[autograd][ops][permute][gradcheck]") {
  rng g(41);
  auto a = parameter<double>(randn<double>({2, 3, 2, 4}, g));
  for (const auto& perm : std::vector<std::vector<std::size_t>>{
           {3, 1, 0, 2}, {0, 2, 1, 3}, {0, 1, 3, 2}, {1, 0, 2, 3}, {0, 1, 2, 3}}) {
    auto r = grad_check([&](auto& in) { return permute(in[0], perm); }, {a});
    INFO(shape_str(perm) << "\n" << r.report);
    REQUIRE(r.ok);
    REQUIRE(r.checked == 48);
  }
}

TEST_CASE("permute with a bad permutation throws naming shape and perm",
          "[autograd][ops][permute]") {
  auto a = constant<double>(zeros<double>({2, 3, 4}));
  REQUIRE_THROWS_AS(permute(a, {0, 0, 1}), shape_error);
  REQUIRE_THROWS_WITH(permute(a, {0, 0, 1}), Catch::Contains("permute") &&
                                                 Catch::Contains("[2,3,4]") &&
                                                 Catch::Contains("[0,0,1]"));
  REQUIRE_THROWS_WITH(permute(a, {1, 0}), Catch::Contains("permute") &&
                                              Catch::Contains("[2,3,4]") && Catch::Contains("[1,0]"));
  REQUIRE_THROWS_WITH(permute(a, {0, 1, 3}), Catch::Contains("[0,1,3]"));
}
