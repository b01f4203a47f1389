// Block-wise 8-bit quantization: the bitsandbytes code books, nearest rounding, the linear and
// dynamic error bounds, blocks and absmax; adamw8bit against AdamW, its state layout and bytes,
// the min_8bit_size rule, and a bit-exact resume from its checkpoint.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <vector>

#include "peft/optim/adam.hpp"
#include "peft/optim/quant8.hpp"

using namespace peft;
using Catch::Matchers::Contains;
using Catch::Matchers::WithinRel;
using optim::quant_map;

namespace {
// Values spread over many decades, both signs, several blocks and a partial last block.
std::vector<double> spread(std::size_t n, std::uint64_t seed, bool nonnegative = false) {
  rng g(seed);
  std::vector<double> v(n);
  for (auto& x : v) {
    x = std::pow(10.0, -6.0 * g.uniform()) * (0.5 + g.uniform());
    if (!nonnegative && g.uniform() < 0.5) x = -x;
  }
  return v;
}
double block_absmax(const std::vector<double>& v, std::size_t i) {
  const std::size_t lo = i / 256 * 256, hi = std::min(v.size(), lo + 256);
  double a = 0;
  for (std::size_t k = lo; k < hi; ++k) a = std::max(a, std::abs(v[k]));
  return a;
}
}  // namespace

TEST_CASE("the dynamic code books are bitsandbytes' create_dynamic_map", "[optim][quant8]") {
  const auto& s = detail::quant_code(quant_map::dynamic, true);
  const auto& u = detail::quant_code(quant_map::dynamic, false);
  REQUIRE(std::is_sorted(s.begin(), s.end()));
  REQUIRE(std::is_sorted(u.begin(), u.end()));
  // signed: 127 positive, 127 negative, 0, 1; unsigned: 254 positive (decade i has 2^(i+1)), 0, 1
  REQUIRE(std::count_if(s.begin(), s.end(), [](float x) { return x > 0; }) == 128);
  REQUIRE(std::count_if(s.begin(), s.end(), [](float x) { return x < 0; }) == 127);
  REQUIRE(std::count_if(u.begin(), u.end(), [](float x) { return x < 0; }) == 0);
  REQUIRE(std::count_if(u.begin(), u.end(), [](float x) { return x == 0; }) == 1);
  REQUIRE(s[255] == 1.0f);
  REQUIRE(u[255] == 1.0f);
  // Largest below 1: the last midpoint of linspace(0.1, 1, 65) = 1 - 0.9/128.
  REQUIRE(s[254] == float(1 - 0.9 / 128));
  REQUIRE(s[0] == float(-(1 - 0.9 / 128)));
  REQUIRE(u[254] == float(1 - 0.9 / 256));
  // Smallest magnitudes: decade 0 is 1e-6 × midpoints of linspace(0.1, 1, 2) (signed) or of
  // linspace(0.1, 1, 3) (unsigned).
  REQUIRE(*std::upper_bound(s.begin(), s.end(), 0.0f) == float(0.55e-6));
  REQUIRE(u[1] == float(0.325e-6));
  REQUIRE(u[2] == float(0.775e-6));
}

TEST_CASE("the linear code books", "[optim][quant8]") {
  const auto& s = detail::quant_code(quant_map::linear, true);
  const auto& u = detail::quant_code(quant_map::linear, false);
  REQUIRE(s[0] == -1.0f);
  REQUIRE(s[255] == 1.0f);
  REQUIRE(s[127] == 0.0f);
  REQUIRE(s[128] == 0.0f);  // linspace's 0 and the padding 0
  REQUIRE(s[129] == float(1.0 / 127));
  REQUIRE(u[0] == 0.0f);
  REQUIRE(u[1] == float(1.0 / 255));
  REQUIRE(u[255] == 1.0f);
}

TEST_CASE("codes are the nearest code-book values", "[optim][quant8]") {
  for (auto m : {quant_map::dynamic, quant_map::linear})
    for (bool sgn : {true, false}) {
      const auto v = spread(700, 3, !sgn);
      tensor<double> t = tensor<double>::from_shape({700});
      std::copy(v.begin(), v.end(), t.data());
      const auto q = optim::quantize_blockwise(t, m, sgn);
      const auto& code = detail::quant_code(m, sgn);
      std::size_t wrong = 0;
      for (std::size_t i = 0; i < v.size(); ++i) {
        const float y = float(v[i] / double(q.absmax[i / 256]));
        float best = std::abs(code[0] - y);
        for (float c : code) best = std::min(best, std::abs(c - y));
        wrong += std::abs(code[q.codes[i]] - y) != best;
      }
      REQUIRE(wrong == 0);
    }
}

TEST_CASE("the table-driven search agrees with binary search everywhere", "[optim][quant8]") {
  rng g(8);
  std::vector<float> ys{0.0f, -0.0f, 1.0f, -1.0f, 2.0f, -2.0f, 1e-30f, -1e-30f, 0.55e-6f};
  for (int k = 0; k < 200000; ++k) {
    const double mag = std::pow(10.0, -9.0 * g.uniform()) * 1.1;
    ys.push_back(float(g.uniform() < 0.5 ? -mag : mag));
  }
  for (auto m : {quant_map::dynamic, quant_map::linear})
    for (bool sgn : {true, false}) {
      const auto& book = detail::quant_book(m, sgn);
      std::size_t wrong = 0;
      float first = 0;
      for (float y : ys)
        if (book.nearest(y) != detail::nearest_code(book.values, y) && wrong++ == 0) first = y;
      INFO("first mismatch at y = " << first);
      REQUIRE(wrong == 0);
      // Every code value maps to itself (or to an equal value).
      for (std::size_t i = 0; i < 256; ++i)
        REQUIRE(book.values[book.nearest(book.values[i])] == book.values[i]);
    }
}

TEST_CASE("linear map: error <= absmax / 127 / 2 (signed), absmax / 255 / 2 (unsigned)",
          "[optim][quant8]") {
  for (bool sgn : {true, false}) {
    rng g(4);
    tensor<double> t = tensor<double>::from_shape({1000});
    for (auto& x : t) x = sgn ? g.normal() : std::abs(g.normal());
    const auto q = optim::quantize_blockwise(t, quant_map::linear, sgn);
    REQUIRE(q.absmax.size() == 4);  // 256 + 256 + 256 + 232
    const auto d = optim::dequantize_blockwise<double>(q);
    std::vector<double> v(t.begin(), t.end());
    double worst = 0;
    for (std::size_t i = 0; i < v.size(); ++i) {
      const double bound = block_absmax(v, i) / (sgn ? 127.0 : 255.0) / 2;
      // (+ the float32 rounding of absmax and of the code value)
      REQUIRE(std::abs(d(i) - v[i]) <= bound + 1e-6 * block_absmax(v, i));
      worst = std::max(worst, std::abs(d(i) - v[i]) / bound);
    }
    REQUIRE(worst > 0.5);  // the bound is tight, not vacuous
  }
}

TEST_CASE("dynamic map: relative error bound per decade", "[optim][quant8]") {
  // In decade i (|y| = |x|/absmax in [10^(i-7), 10^(i-6)]) with n_i codes per sign:
  // half a code gap over the smaller neighbour, within the decade or across its lower edge.
  auto bound = [](double y, bool sgn) {
    const int i = std::clamp(int(std::floor(std::log10(y))) + 7, 0, 6);
    const double n = sgn ? std::pow(2.0, i) : std::pow(2.0, i + 1);
    double b = 0.45 / (0.1 * n + 0.45);
    if (n > 1) b = std::max(b, 2.7 / (n - 0.9));
    return b;
  };
  for (bool sgn : {true, false}) {
    const auto v = spread(3000, 5, !sgn);
    tensor<double> t = tensor<double>::from_shape({3000});
    std::copy(v.begin(), v.end(), t.data());
    const auto q = optim::quantize_blockwise(t, quant_map::dynamic, sgn);
    const auto d = optim::dequantize_blockwise<double>(q);
    double top_worst = 0;
    for (std::size_t i = 0; i < v.size(); ++i) {
      const double a = block_absmax(v, i), y = std::abs(v[i]) / a;
      if (y < 1e-6) continue;  // decade 0 and below: absolute error <= 0.5e-6·absmax
      const double rel = std::abs(d(i) - v[i]) / std::abs(v[i]);
      INFO("y = " << y << " rel = " << rel);
      REQUIRE(rel <= bound(y, sgn) * (1 + 1e-4) + 1e-6);
      if (y >= 0.1) top_worst = std::max(top_worst, rel);
    }
    // Top decade: 6.6% (signed, 64 codes) / 3.4% (unsigned, 128 codes).
    REQUIRE(top_worst <= (sgn ? 0.0657 : 0.0340));
    REQUIRE(top_worst > (sgn ? 0.02 : 0.01));
  }
}

TEST_CASE("absmax round-trips, zero blocks stay zero, blocks are independent", "[optim][quant8]") {
  tensor<float> t = zeros<float>({600});
  t(3) = 5.0f;     // block 0 max
  t(10) = -2.5f;
  t(300) = 1e-3f;  // block 1: a tiny block keeps its own scale
  t(301) = 4e-4f;
  const auto q = optim::quantize_blockwise(t);
  REQUIRE(q.absmax == std::vector<float>{5.0f, 1e-3f, 0.0f});
  REQUIRE(q.bytes() == 600 + 3 * 4);
  const auto d = optim::dequantize_blockwise<float>(q);
  REQUIRE(d(3) == 5.0f);
  REQUIRE(d(300) == 1e-3f);
  REQUIRE_THAT(d(301), WithinRel(4e-4f, 0.05f));
  REQUIRE_THAT(d(10), WithinRel(-2.5f, 0.05f));
  for (std::size_t i = 512; i < 600; ++i) REQUIRE(d(i) == 0.0f);
  REQUIRE(d(0) == 0.0f);
}

TEST_CASE("adamw8bit stays close to AdamW and fits a regression", "[optim][quant8]") {
  // 64 x 64 = 4096 elements: quantized (min_8bit_size 4096); the bias [64] stays 32-bit.
  rng g(6);
  const tensor<float> X = randn<float>({128, 64}, g), Wt = randn<float>({64, 64}, g, 0, 0.1);
  const matrix<float> Y = as_matrix(X) * as_matrix(Wt).transpose();
  auto W8 = parameter<float>(zeros<float>({64, 64}));
  auto W32 = parameter<float>(zeros<float>({64, 64}));
  auto b8 = parameter<float>(zeros<float>({64}));
  optim::adamw_options o;
  o.lr = 0.01;
  optim::adamw8bit<float> opt8({W8, b8}, o);
  optim::adamw<float> opt32({W32}, o);
  REQUIRE(opt8.name() == "adamw (8-bit states)");
  auto grad = [&](variable<float>& W) {
    const matrix<float> R = as_matrix(X) * as_matrix(W.value()).transpose() - Y;
    W.zero_grad();
    peft::detail::accumulate(*W.get(), to_tensor(matrix<float>(R.transpose() * as_matrix(X) / 128.0f)));
  };
  auto loss = [&](const variable<float>& W) {
    return 0.5 * double((as_matrix(X) * as_matrix(W.value()).transpose() - Y).squaredNorm()) / 128;
  };
  const double l0 = loss(W8);
  for (int k = 0; k < 150; ++k) {
    grad(W8);
    grad(W32);
    b8.zero_grad();
    peft::detail::accumulate(*b8.get(), full<float>({64}, 0.1f));
    opt8.step();
    opt32.step();
  }
  INFO(l0 << " -> " << loss(W8) << " (32-bit: " << loss(W32) << ")");
  REQUIRE(loss(W8) < 0.02 * l0);
  const double rel = (as_matrix(W8.value()) - as_matrix(W32.value())).norm() / as_matrix(W32.value()).norm();
  INFO("relative distance to AdamW " << rel);
  REQUIRE(rel < 0.05);

  // State: W in 8 bits (codes + absmax of 16 blocks, twice), the bias in 32 bits.
  REQUIRE(opt8.state_bytes(0) == 2 * (4096 + 16 * 4));
  REQUIRE(opt8.state_bytes(1) == 2 * 64 * 4);
  const auto& st = opt8.named_state();
  REQUIRE(shape_of(st.at(0).tensors.at("exp_avg.codes")) == shape_t{64, 64});
  REQUIRE(shape_of(st.at(0).tensors.at("exp_avg_sq.absmax")) == shape_t{16});
  REQUIRE(st.at(1).tensors.count("exp_avg") == 1);
}

TEST_CASE("adamw8bit resumes bit-exactly and validates its checkpoint", "[optim][quant8]") {
  rng g(7);
  auto W = parameter<float>(randn<float>({40, 30}, g));
  optim::adamw8bit<float> a({W}, {}, /*min_8bit_size=*/256);
  for (int k = 0; k < 3; ++k) {
    W.zero_grad();
    peft::detail::accumulate(*W.get(), randn<float>({40, 30}, g));
    a.step();
  }
  auto W2 = parameter<float>(W.value());
  optim::adamw8bit<float> b({W2}, {}, 256);
  const auto st = a.named_state();
  b.load_state(st);
  for (int k = 0; k < 3; ++k) {
    const auto gr = randn<float>({40, 30}, g);
    for (auto* v : {&W, &W2}) {
      v->zero_grad();
      peft::detail::accumulate(*v->get(), tensor<float>(gr));
    }
    a.step();
    b.step();
  }
  REQUIRE(std::memcmp(W.value().data(), W2.value().data(), 1200 * sizeof(float)) == 0);

  auto bad = st;
  bad.at(0).tensors.at("exp_avg.codes")(0) = 256.0f;
  REQUIRE_THROWS_WITH(b.load_state(bad), Contains("exp_avg.codes") && Contains("256"));
  bad = st;
  bad.at(0).tensors["exp_avg_sq.absmax"] = zeros<float>({4});
  REQUIRE_THROWS_WITH(b.load_state(bad), Contains("exp_avg_sq.absmax") && Contains("[5]"));
  bad = st;
  bad.at(0).tensors.erase("exp_avg.absmax");
  REQUIRE_THROWS_WITH(b.load_state(bad), Contains("exp_avg"));
  // A 32-bit moment is accepted in place of an 8-bit one (e.g. a different min_8bit_size).
  auto mixed = st;
  mixed.at(0).tensors.erase("exp_avg.codes");
  mixed.at(0).tensors.erase("exp_avg.absmax");
  mixed.at(0).tensors["exp_avg"] = zeros<float>({40, 30});
  REQUIRE_NOTHROW(b.load_state(mixed));
}
