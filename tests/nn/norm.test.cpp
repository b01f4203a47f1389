#include <catch2/catch.hpp>

#include <cmath>

#include "peft/autograd/grad_check.hpp"
#include "peft/nn/norm.hpp"

using namespace peft;
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

TEST_CASE("rms_norm on a known vector", "[nn][norm]") {
  nn::rms_norm<double> n(4, 1e-6);
  REQUIRE(n.type_name() == "rms_norm");
  REQUIRE(n.named_parameters().size() == 1);
  REQUIRE(n.named_parameters()[0].first == "weight");
  n.weight.value() = make_tensor<double>({4}, {1, 2, 1, 0.5});
  auto x = constant<double>(make_tensor<double>({1, 4}, {1, 2, 3, 4}));
  auto y = n(x);
  // mean(x²) = 30/4 = 7.5
  const double r = 1.0 / std::sqrt(7.5 + 1e-6);
  REQUIRE(y.shape() == shape_t{1, 4});
  REQUIRE_THAT(y.value()(0, 0), WithinRel(1 * r * 1, 1e-12));
  REQUIRE_THAT(y.value()(0, 1), WithinRel(2 * r * 2, 1e-12));
  REQUIRE_THAT(y.value()(0, 2), WithinRel(3 * r * 1, 1e-12));
  REQUIRE_THAT(y.value()(0, 3), WithinRel(4 * r * 0.5, 1e-12));
  // Rows are normalised independently; float works too.
  nn::rms_norm<float> nf(2);
  auto yf = nf(constant<float>(make_tensor<float>({2, 2}, {3, 4, 0, 2})));
  REQUIRE_THAT(yf.value()(0, 0), WithinRel(3 / std::sqrt(12.5f), 1e-5f));
  REQUIRE_THAT(yf.value()(1, 1), WithinRel(2 / std::sqrt(2.f), 1e-5f));
}

TEST_CASE("layer_norm on a known vector", "[nn][norm]") {
  nn::layer_norm<double> n(4);
  REQUIRE(n.type_name() == "layer_norm");
  auto names = n.named_parameters();
  REQUIRE(names.size() == 2);
  REQUIRE(names[0].first == "weight");
  REQUIRE(names[1].first == "bias");
  n.weight.value() = make_tensor<double>({4}, {1, 2, 1, 1});
  n.bias.value() = make_tensor<double>({4}, {0, 0, 1, 0});
  auto y = n(constant<double>(make_tensor<double>({4}, {1, 2, 3, 4})));
  // mean 2.5, biased variance 1.25
  const double s = 1.0 / std::sqrt(1.25 + 1e-5);
  REQUIRE_THAT(y.value()(0), WithinRel(-1.5 * s, 1e-12));
  REQUIRE_THAT(y.value()(1), WithinRel(-0.5 * s * 2, 1e-12));
  REQUIRE_THAT(y.value()(2), WithinRel(0.5 * s + 1, 1e-12));
  REQUIRE_THAT(y.value()(3), WithinRel(1.5 * s, 1e-12));

  nn::layer_norm<double> plain(4, 1e-5, false);
  REQUIRE(plain.named_parameters().empty());
  auto z = plain(constant<double>(make_tensor<double>({4}, {1, 2, 3, 4})));
  REQUIRE_THAT(z.value()(3), WithinRel(1.5 * s, 1e-12));
}

TEST_CASE("rms_norm and layer_norm gradcheck", "[nn][norm][gradcheck]") {
  rng g(11);
  auto x = parameter<double>(randn<double>({2, 3, 8}, g));
  {
    nn::rms_norm<double> n(8);
    n.weight.value() = randn<double>({8}, g);
    auto r = grad_check([&](auto& v) { return n(v[0]); }, {x, n.weight});
    INFO(r.report);
    REQUIRE(r.ok);
  }
  {
    nn::layer_norm<double> n(8);
    n.weight.value() = randn<double>({8}, g);
    n.bias.value() = randn<double>({8}, g);
    auto r = grad_check([&](auto& v) { return n(v[0]); }, {x, n.weight, n.bias});
    INFO(r.report);
    REQUIRE(r.ok);
  }
  {
    nn::layer_norm<double> n(8, 1e-5, false);
    auto r = grad_check([&](auto& v) { return n(v[0]); }, {x});
    INFO(r.report);
    REQUIRE(r.ok);
  }
  {  // only the weight requires grad
    nn::rms_norm<double> n(8);
    auto xc = constant<double>(randn<double>({3, 8}, g));
    auto r = grad_check([&](auto&) { return n(xc); }, {n.weight});
    INFO(r.report);
    REQUIRE(r.ok);
  }
}

TEST_CASE("norms reject bad shapes naming them", "[nn][norm]") {
  nn::rms_norm<float> r(8);
  nn::layer_norm<float> l(8);
  auto x = constant<float>(zeros<float>({2, 6}));
  REQUIRE_THROWS_AS(r(x), shape_error);
  REQUIRE_THROWS_WITH(r(x), Catch::Contains("[2,6]") && Catch::Contains("dim=8"));
  REQUIRE_THROWS_WITH(l(x), Catch::Contains("[2,6]") && Catch::Contains("dim=8"));
  auto w = constant<float>(zeros<float>({5}));
  REQUIRE_THROWS_WITH(nn::functional::rms_norm(x, w, 1e-6),
                      Catch::Contains("[5]") && Catch::Contains("[2,6]"));
  REQUIRE_THROWS_AS(nn::rms_norm<float>(0), value_error);
}
