// peft-test: no-pch
// peft/fwd.hpp: light on its own, and consistent with the real declarations.
// This file is compiled without the tests' precompiled header (see tests/CMakeLists.txt), so the
// first check sees exactly what fwd.hpp pulls in.
#include "peft/fwd.hpp"

#if defined(EIGEN_CORE_H) || defined(EIGEN_CORE_MODULE_H) || defined(XTENSOR_ARRAY_HPP) || \
    defined(XTENSOR_FORWARD_HPP)
#error "peft/fwd.hpp must not include Eigen or xtensor"
#endif

// Usable with incomplete types: a declaration that only names peft types.
float loss_of(const peft::variablef& v);
void visit(peft::nn::modulef& m, peft::rng& g);

// Redeclaring everything through the real headers fails to compile if a declaration in fwd.hpp
// disagrees (template parameters, namespace, alias target).
#include "peft/peft.hpp"
#include "peft/nn/module.hpp"

#include <catch2/catch.hpp>
#include <type_traits>

TEST_CASE("fwd aliases name the real types", "[fwd]") {
  STATIC_REQUIRE(std::is_same_v<peft::variablef, peft::variable<float>>);
  STATIC_REQUIRE(std::is_same_v<peft::variabled, peft::variable<double>>);
  STATIC_REQUIRE(std::is_same_v<peft::nn::modulef, peft::nn::module<float>>);
  STATIC_REQUIRE(std::is_same_v<peft::nn::moduled, peft::nn::module<double>>);
  STATIC_REQUIRE(std::is_base_of_v<peft::error, peft::shape_error>);
  STATIC_REQUIRE(std::is_same_v<peft::shape_t, std::vector<std::size_t>>);

  peft::variablef v(peft::ones<float>({2}), true);
  CHECK(v.numel() == 2);
}
