#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "peft/optim/clip.hpp"

using namespace peft;
using Catch::Matchers::Contains;
using Catch::Matchers::WithinRel;

namespace {
template <class T>
variable<T> with_grad(const shape_t& s, const std::vector<T>& g) {
  auto v = parameter<T>(zeros<T>(s));
  peft::detail::accumulate(*v.get(), make_tensor<T>(s, g));
  return v;
}
}  // namespace

TEMPLATE_TEST_CASE("clip_grad_norm scales all gradients together", "[optim][clip]", float, double) {
  using T = TestType;
  const double tol = sizeof(T) == 4 ? 1e-6 : 1e-12;
  // Gradients [3, 4] and [12]: 2-norm 13, 1-norm 19, inf-norm 12.
  auto a = with_grad<T>({2}, {3, 4});
  auto b = with_grad<T>({1, 1}, {-12});
  auto none = parameter<T>(ones<T>({3}));  // no gradient: ignored
  const std::vector<variable<T>> ps = {a, b, none};
  REQUIRE_THAT(optim::grad_norm(ps), WithinRel(13.0, tol));
  REQUIRE_THAT(optim::grad_norm(ps, 1.0), WithinRel(19.0, tol));
  REQUIRE_THAT(optim::grad_norm(ps, std::numeric_limits<double>::infinity()), WithinRel(12.0, tol));
  REQUIRE_THAT(optim::grad_norm(ps, 3.0), WithinRel(std::cbrt(27.0 + 64 + 1728), tol));

  const double total = optim::clip_grad_norm(ps, 1.0);
  REQUIRE_THAT(total, WithinRel(13.0, tol));
  const double c = 1.0 / (13.0 + 1e-6);
  REQUIRE_THAT(double(a.grad()(0)), WithinRel(3 * c, tol));
  REQUIRE_THAT(double(a.grad()(1)), WithinRel(4 * c, tol));
  REQUIRE_THAT(double(b.grad()(0, 0)), WithinRel(-12 * c, tol));
  REQUIRE_FALSE(none.has_grad());
  REQUIRE_THAT(optim::grad_norm(ps), WithinRel(13.0 * c, tol));
}

TEST_CASE("clip_grad_norm with the inf norm", "[optim][clip]") {
  auto a = with_grad<double>({2}, {3, -4});
  auto b = with_grad<double>({1}, {2});
  const double inf = std::numeric_limits<double>::infinity();
  REQUIRE(optim::clip_grad_norm<double>({a, b}, 2.0, inf) == 4.0);
  const double c = 2.0 / (4.0 + 1e-6);
  REQUIRE_THAT(a.grad()(1), WithinRel(-4 * c, 1e-12));
  REQUIRE_THAT(b.grad()(0), WithinRel(2 * c, 1e-12));
}

TEST_CASE("clip_grad_norm leaves small gradients alone", "[optim][clip]") {
  auto a = with_grad<double>({2}, {0.3, 0.4});
  REQUIRE_THAT(optim::clip_grad_norm<double>({a}, 1.0), WithinRel(0.5, 1e-12));
  REQUIRE(a.grad()(0) == 0.3);  // untouched, not multiplied by a factor near 1
  REQUIRE(a.grad()(1) == 0.4);
  // No gradients at all: norm 0.
  auto n = parameter<double>(zeros<double>({2}));
  REQUIRE(optim::clip_grad_norm<double>({n}, 1.0) == 0.0);
}

TEST_CASE("clip_grad_norm errors", "[optim][clip][errors]") {
  auto a = with_grad<double>({2}, {1, std::numeric_limits<double>::infinity()});
  REQUIRE_THROWS_WITH(optim::clip_grad_norm<double>({a}, -1.0), Contains("max_norm"));
  REQUIRE_THROWS_WITH(optim::clip_grad_norm<double>({a}, 1.0, 0.0), Contains("norm_type"));
  REQUIRE_THROWS_WITH(optim::clip_grad_norm<double>({a}, 1.0, 2.0, true), Contains("non-finite"));
  REQUIRE(std::isinf(optim::clip_grad_norm<double>({a}, 1.0)));
  auto nan = with_grad<double>({2}, {std::nan(""), 1});
  const double inf = std::numeric_limits<double>::infinity();
  REQUIRE(std::isnan(optim::grad_norm<double>({nan}, inf)));
  REQUIRE_THROWS_AS(optim::clip_grad_norm<double>({nan}, 1.0, inf, true), value_error);
}

TEST_CASE("clip_grad_value clamps each element", "[optim][clip]") {
  auto a = with_grad<float>({2, 2}, {-3, 0.5f, 2, -0.25f});
  auto none = parameter<float>(zeros<float>({1}));
  optim::clip_grad_value<float>({a, none}, 1.0);
  REQUIRE((a.grad() == make_tensor<float>({2, 2}, {-1, 0.5f, 1, -0.25f})));
  REQUIRE_FALSE(none.has_grad());
  REQUIRE_THROWS_WITH(optim::clip_grad_value<float>({a}, -0.5), Contains("clip_value"));
}
