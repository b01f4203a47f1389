#include <catch2/catch.hpp>

#include <cmath>

#include "peft/autograd/grad_check.hpp"
#include "peft/core/threads.hpp"
#include "peft/nn/attention.hpp"

using namespace peft;

// Every GEMM here is tiny: OpenMP threads only add overhead, and spin badly on a loaded machine.
static const bool single_threaded = (set_num_threads(1), true);
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

namespace {
nn::linear<double>& as_linear(const std::shared_ptr<nn::unary_module<double>>& m) {
  return dynamic_cast<nn::linear<double>&>(*m);
}

// HF Llama rotary embedding of one head vector at position p, written from the formulas:
// inv_freq[i] = theta^(-2i/d), emb = cat(freqs, freqs), y = x·cos(emb) + rotate_half(x)·sin(emb).
std::vector<double> rope_ref(const std::vector<double>& x, double p, double theta = 10000) {
  const std::size_t d = x.size(), h = d / 2;
  std::vector<double> y(d);
  for (std::size_t j = 0; j < d; ++j) {
    const double ang = p * std::pow(theta, -double(2 * (j % h)) / double(d));
    const double rot = j < h ? -x[j + h] : x[j - h];
    y[j] = x[j] * std::cos(ang) + rot * std::sin(ang);
  }
  return y;
}

// y[r] = W x[r] (no bias) for the rows of x [n, in].
std::vector<std::vector<double>> matvec_rows(const tensor<double>& W, const std::vector<std::vector<double>>& x) {
  std::vector<std::vector<double>> y;
  for (auto& r : x) {
    std::vector<double> o(W.shape()[0], 0.0);
    for (std::size_t i = 0; i < W.shape()[0]; ++i)
      for (std::size_t j = 0; j < W.shape()[1]; ++j) o[i] += W(i, j) * r[j];
    y.push_back(o);
  }
  return y;
}

// Naive causal GQA attention for one batch row, by loops.
tensor<double> attention_ref(nn::causal_self_attention<double>& a, const tensor<double>& x) {
  const auto& c = a.config();
  const std::size_t B = x.shape()[0], S = x.shape()[1], D = c.dim, H = c.n_heads,
                    KV = c.n_kv_heads, hd = D / H, rep = H / KV;
  tensor<double> out = zeros<double>({B, S, D});
  for (std::size_t b = 0; b < B; ++b) {
    std::vector<std::vector<double>> xs(S, std::vector<double>(D));
    for (std::size_t s = 0; s < S; ++s)
      for (std::size_t d = 0; d < D; ++d) xs[s][d] = x(b, s, d);
    auto q = matvec_rows(as_linear(a.q_proj).weight.value(), xs);
    auto k = matvec_rows(as_linear(a.k_proj).weight.value(), xs);
    auto v = matvec_rows(as_linear(a.v_proj).weight.value(), xs);
    std::vector<std::vector<double>> ctx(S, std::vector<double>(H * hd, 0.0));
    for (std::size_t h = 0; h < H; ++h) {
      const std::size_t kh = h / rep;
      auto head = [&](const std::vector<double>& r, std::size_t hh, std::size_t pos) {
        return rope_ref(std::vector<double>(r.begin() + hh * hd, r.begin() + (hh + 1) * hd),
                        double(pos), c.rope_theta);
      };
      for (std::size_t i = 0; i < S; ++i) {
        auto qi = head(q[i], h, i);
        std::vector<double> sc(i + 1);
        double mx = -1e300, z = 0;
        for (std::size_t j = 0; j <= i; ++j) {
          auto kj = head(k[j], kh, j);
          double dot = 0;
          for (std::size_t t = 0; t < hd; ++t) dot += qi[t] * kj[t];
          sc[j] = dot / std::sqrt(double(hd));
          mx = std::max(mx, sc[j]);
        }
        for (auto& s : sc) z += (s = std::exp(s - mx));
        for (std::size_t j = 0; j <= i; ++j)
          for (std::size_t t = 0; t < hd; ++t) ctx[i][h * hd + t] += sc[j] / z * v[j][kh * hd + t];
      }
    }
    auto o = matvec_rows(as_linear(a.o_proj).weight.value(), ctx);
    for (std::size_t s = 0; s < S; ++s)
      for (std::size_t d = 0; d < D; ++d) out(b, s, d) = o[s][d];
  }
  return out;
}
}  // namespace

TEST_CASE("rope rotates halves by position-dependent angles", "[nn][attention][rope]") {
  auto table = nn::functional::make_rope_table<double>(4, 16);
  REQUIRE(table.cos->shape() == std::vector<std::size_t>{16, 2});
  // Rows are positions 0, 1, 2 of one head.
  auto x = constant<double>(make_tensor<double>({3, 4}, {1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4}));
  auto y = nn::functional::rope(x, table);
  // Position 0: identity.
  for (std::size_t j = 0; j < 4; ++j) REQUIRE_THAT(y.value()(0, j), WithinAbs(x.value()(0, j), 1e-15));
  // Position 2, inv_freq = [1, 0.01]: angles [2, 0.02]; x1 = [1, 2], x2 = [3, 4].
  const double c0 = std::cos(2.0), s0 = std::sin(2.0), c1 = std::cos(0.02), s1 = std::sin(0.02);
  REQUIRE_THAT(y.value()(2, 0), WithinAbs(1 * c0 - 3 * s0, 1e-14));
  REQUIRE_THAT(y.value()(2, 1), WithinAbs(2 * c1 - 4 * s1, 1e-14));
  REQUIRE_THAT(y.value()(2, 2), WithinAbs(3 * c0 + 1 * s0, 1e-14));
  REQUIRE_THAT(y.value()(2, 3), WithinAbs(4 * c1 + 2 * s1, 1e-14));
  // Matches the HF formula written out, and the offset shifts positions.
  auto ref = rope_ref({1, 2, 3, 4}, 7);
  auto y7 = nn::functional::rope(x, table, 5);  // row 2 is position 7
  for (std::size_t j = 0; j < 4; ++j) REQUIRE_THAT(y7.value()(2, j), WithinAbs(ref[j], 1e-14));
  // A rotation: norms are preserved.
  double n0 = 0, n1 = 0;
  for (std::size_t j = 0; j < 4; ++j) n0 += x.value()(1, j) * x.value()(1, j), n1 += y.value()(1, j) * y.value()(1, j);
  REQUIRE_THAT(n1, WithinRel(n0, 1e-14));
}

TEST_CASE("rope gradcheck and errors", "[nn][attention][rope][gradcheck]") {
  rng g(1);
  auto table = nn::functional::make_rope_table<double>(6, 8, 500.0);
  auto x = parameter<double>(randn<double>({2, 3, 5, 6}, g));
  auto r = grad_check([&](auto& v) { return nn::functional::rope(v[0], table, 2); }, {x});
  INFO(r.report);
  REQUIRE(r.ok);
  REQUIRE_THROWS_WITH(nn::functional::rope(x, table, 4),
                      Catch::Contains("[2,3,5,6]") && Catch::Contains("max_seq 8"));
  auto bad = constant<double>(zeros<double>({5, 4}));
  REQUIRE_THROWS_WITH(nn::functional::rope(bad, table), Catch::Contains("[5,4]"));
  REQUIRE_THROWS_AS(nn::functional::make_rope_table<double>(5, 8), value_error);
}

TEST_CASE("attention: HF names and GQA shapes", "[nn][attention]") {
  rng g(2);
  nn::causal_self_attention<float> a(8, 4, 2, g);
  REQUIRE(a.type_name() == "causal_self_attention");
  REQUIRE(a.head_dim() == 2);
  std::vector<std::string> names;
  for (auto& [n, v] : a.named_parameters()) names.push_back(n);
  REQUIRE(names == std::vector<std::string>{"q_proj.weight", "k_proj.weight", "v_proj.weight",
                                            "o_proj.weight"});
  auto sd = a.get_state_dict();
  REQUIRE(shape_of(sd["q_proj.weight"]) == shape_t{8, 8});
  REQUIRE(shape_of(sd["k_proj.weight"]) == shape_t{4, 8});
  REQUIRE(shape_of(sd["v_proj.weight"]) == shape_t{4, 8});
  REQUIRE(shape_of(sd["o_proj.weight"]) == shape_t{8, 8});
  nn::attention_config cfg{8, 2, 0, 16, 10000.0, true};
  nn::causal_self_attention<float> ab(cfg, g);
  REQUIRE(ab.config().n_kv_heads == 2);
  REQUIRE(ab.named_parameters().size() == 8);
}

TEST_CASE("attention forward matches a naive reference (MHA and GQA)", "[nn][attention]") {
  rng g(3);
  for (std::size_t kv : {4, 2, 1}) {
    nn::causal_self_attention<double> a(8, 4, kv, g);
    auto x = randn<double>({2, 5, 8}, g);
    auto y = a(constant<double>(x));
    REQUIRE(y.shape() == shape_t{2, 5, 8});
    auto ref = attention_ref(a, x);
    for (std::size_t i = 0; i < ref.size(); ++i)
      REQUIRE_THAT(y.value().data()[i], WithinAbs(ref.data()[i], 1e-12));
  }
  // float agrees with double
  rng gf(3), gd(3);
  nn::causal_self_attention<float> af(8, 2, 1, gf);
  nn::causal_self_attention<double> ad(8, 2, 1, gd);
  rng gx(9);
  auto xd = randn<double>({1, 4, 8}, gx);
  tensor<float> xf = xt::cast<float>(xd);
  auto yf = af(constant<float>(xf)).value();
  auto yd = ad(constant<double>(xd)).value();
  for (std::size_t i = 0; i < yd.size(); ++i) REQUIRE_THAT(yf.data()[i], WithinAbs(yd.data()[i], 1e-5));
}

TEST_CASE("attention is causal", "[nn][attention]") {
  rng g(4);
  nn::causal_self_attention<double> a(8, 2, 1, g);
  auto x = randn<double>({1, 4, 8}, g);
  auto y0 = a(constant<double>(x)).value();
  tensor<double> x2 = x;
  for (std::size_t d = 0; d < 8; ++d) x2(0, 3, d) += 1.0;  // change the last token
  auto y1 = a(constant<double>(x2)).value();
  for (std::size_t t = 0; t < 3; ++t)
    for (std::size_t d = 0; d < 8; ++d) REQUIRE(y1(0, t, d) == y0(0, t, d));
  double diff = 0;
  for (std::size_t d = 0; d < 8; ++d) diff += std::abs(y1(0, 3, d) - y0(0, 3, d));
  REQUIRE(diff > 1e-3);
  // Changing the first token changes every position.
  tensor<double> x3 = x;
  for (std::size_t d = 0; d < 8; ++d) x3(0, 0, d) -= 0.5;
  auto y3 = a(constant<double>(x3)).value();
  for (std::size_t t = 0; t < 4; ++t) {
    double dt = 0;
    for (std::size_t d = 0; d < 8; ++d) dt += std::abs(y3(0, t, d) - y0(0, t, d));
    REQUIRE(dt > 1e-6);
  }
}

TEST_CASE("attention gradcheck (MHA and GQA)", "[nn][attention][gradcheck]") {
  rng g(5);
  for (std::size_t kv : {2, 1}) {
    nn::attention_config cfg{8, 2, kv, 8, 10000.0, kv == 1};  // GQA case with biases too
    nn::causal_self_attention<double> a(cfg, g);
    auto x = parameter<double>(randn<double>({2, 4, 8}, g));
    std::vector<variable<double>> in{x};
    for (auto& p : a.parameters()) in.push_back(p);
    auto r = grad_check([&](auto& v) { return a(v[0]); }, in);
    INFO("n_kv_heads " << kv << "\n" << r.report);
    REQUIRE(r.ok);
  }
}

TEST_CASE("attention projections are replaceable by path", "[nn][attention]") {
  rng g(6);
  nn::causal_self_attention<double> a(8, 2, 2, g);
  auto x = constant<double>(randn<double>({1, 3, 8}, g));
  auto y0 = a(x).value();
  auto old = a.find_module("q_proj");
  REQUIRE(old == a.q_proj);
  // q = 0 makes every score 0: uniform attention over the visible prefix.
  auto zq = std::make_shared<nn::linear<double>>(parameter<double>(zeros<double>({8, 8})));
  a.replace_module("q_proj", zq);
  REQUIRE(a.q_proj == zq);
  REQUIRE(a.find_module("q_proj") == zq);
  auto y1 = a(x).value();
  double diff = 0;
  for (std::size_t i = 0; i < y0.size(); ++i) diff += std::abs(y1.data()[i] - y0.data()[i]);
  REQUIRE(diff > 1e-3);
  // Position 0 only sees itself either way.
  for (std::size_t d = 0; d < 8; ++d) REQUIRE_THAT(y1(0, 0, d), WithinAbs(y0(0, 0, d), 1e-12));
  a.replace_module("q_proj", old);
  auto y2 = a(x).value();
  for (std::size_t i = 0; i < y0.size(); ++i) REQUIRE(y2.data()[i] == y0.data()[i]);
}

TEST_CASE("attention rejects bad shapes and configs", "[nn][attention]") {
  rng g(7);
  nn::causal_self_attention<float> a(nn::attention_config{8, 2, 1, 4}, g);
  REQUIRE_THROWS_WITH(a(constant<float>(zeros<float>({1, 3, 6}))), Catch::Contains("[1,3,6]"));
  REQUIRE_THROWS_WITH(a(constant<float>(zeros<float>({3, 8}))), Catch::Contains("[3,8]"));
  REQUIRE_THROWS_WITH(a(constant<float>(zeros<float>({1, 5, 8}))),
                      Catch::Contains("[1,5,8]") && Catch::Contains("max_seq 4"));
  REQUIRE_THROWS_AS(nn::causal_self_attention<float>(8, 3, 1, g), value_error);   // 3 ∤ 8
  REQUIRE_THROWS_AS(nn::causal_self_attention<float>(8, 4, 3, g), value_error);   // 3 ∤ 4
  REQUIRE_THROWS_AS(nn::causal_self_attention<float>(6, 2, 1, g), value_error);   // odd head_dim
  REQUIRE_THROWS_WITH(nn::causal_self_attention<float>(8, 4, 3, g), Catch::Contains("n_kv_heads=3"));
}
