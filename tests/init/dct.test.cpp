#include "peft/init/dct.hpp"

#include <catch2/catch.hpp>
#include <cmath>
#include <numbers>

#include "peft/adapters/lora.hpp"

using namespace peft;
using Catch::Matchers::Contains;
using Catch::Matchers::WithinAbs;

namespace {
double max_abs(const matrix<double>& m) { return m.cwiseAbs().maxCoeff(); }
}  // namespace

TEST_CASE("DCT init: A = lowest DCT-II rows (orthonormal), B = 0", "[init][dct]") {
  // A[i, j] = c_i cos(π (2j + 1) i / (2n)), c_0 = √(1/n), c_i = √(2/n): rows of the orthonormal
  // DCT-II matrix, so A·Aᵀ = I.
  const std::size_t in = 8, out = 5;
  lora_config cfg;
  cfg.r = 3;
  lora<double> a(in, out, cfg, init::dct{});
  const auto A = as_matrix(a.lora_A.value());
  REQUIRE(max_abs(A * A.transpose() - matrix<double>::Identity(3, 3)) < 1e-14);
  for (Eigen::Index i = 0; i < 3; ++i)
    for (Eigen::Index j = 0; j < Eigen::Index(in); ++j) {
      const double c = i == 0 ? std::sqrt(1.0 / 8) : std::sqrt(2.0 / 8);
      REQUIRE_THAT(A(i, j),
                   WithinAbs(c * std::cos(std::numbers::pi * (2 * j + 1) * i / 16.0), 1e-15));
    }
  for (double v : a.lora_B.value()) REQUIRE(v == 0.0);
  // float
  lora<float> af(in, out, cfg, init::dct{});
  REQUIRE((as_matrix(af.lora_A.value()).cast<double>() - A).cwiseAbs().maxCoeff() < 1e-6);
}

TEST_CASE("DCT init by energy picks the frequencies W uses most", "[init][dct]") {
  // W built from frequencies 5 and 2 of the input axis (5 stronger): energy ‖W·d_k‖² ranks 5, 2.
  const std::size_t in = 8, out = 4;
  const matrix<double> D = detail::dct_basis_rows<double>(in, {2, 5});
  rng g(1);
  matrix<double> c(Eigen::Index(out), 2);
  for (Eigen::Index i = 0; i < c.size(); ++i) c.data()[i] = g.normal();
  c.col(1) *= 10.0;
  tensor<double> W = to_tensor(matrix<double>(c * D));
  const tensor<double> W0 = W;
  lora_config cfg;
  cfg.r = 2;
  init::dct pol{init::dct_selection::energy};
  lora<double> a(in, out, cfg, pol, &W);
  const auto A = as_matrix(a.lora_A.value());
  REQUIRE(max_abs(A.row(0) - D.row(1)) < 1e-14);  // frequency 5 first
  REQUIRE(max_abs(A.row(1) - D.row(0)) < 1e-14);
  const bool unchanged = W == W0;
  REQUIRE(unchanged);
}

TEST_CASE("DCT init rejects bad input", "[init][dct]") {
  lora_config cfg;
  cfg.r = 9;
  REQUIRE_THROWS_WITH((lora<double>(8, 4, cfg, init::dct{})),
                      Contains("dct init") && Contains("rank 9") && Contains("8"));
  cfg.r = 2;
  REQUIRE_THROWS_WITH((lora<double>(8, 4, cfg, init::dct{init::dct_selection::energy})),
                      Contains("needs the base weight"));
}
