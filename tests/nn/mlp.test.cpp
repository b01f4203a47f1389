#include <catch2/catch.hpp>

#include <cmath>
#include <numbers>

#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/relu.hpp"
#include "peft/core/threads.hpp"
#include "peft/nn/loss.hpp"
#include "peft/nn/mlp.hpp"

using namespace peft;

// Every GEMM here is tiny: OpenMP threads only add overhead, and spin badly on a loaded machine.
static const bool single_threaded = (set_num_threads(1), true);
using Catch::Matchers::WithinAbs;

namespace {
// Reference SiLU / GELU on plain numbers.
double silu_ref(double v) { return v / (1 + std::exp(-v)); }
double gelu_ref(double v) { return 0.5 * v * (1 + std::erf(v / std::sqrt(2.0))); }

nn::linear<double>& as_linear(const std::shared_ptr<nn::unary_module<double>>& m) {
  return dynamic_cast<nn::linear<double>&>(*m);
}

// Minimal Adam over a parameter list (the optimizers live elsewhere; this keeps the test
// self-contained).
struct adam_ref {
  std::vector<variable<float>> params;
  double lr, b1 = 0.9, b2 = 0.999, eps = 1e-8;
  std::vector<tensor<float>> m, v;
  int t = 0;
  adam_ref(std::vector<variable<float>> p, double lr_) : params(std::move(p)), lr(lr_) {
    for (auto& q : params) m.push_back(zeros<float>(q.shape())), v.push_back(zeros<float>(q.shape()));
  }
  void step() {
    ++t;
    const double c1 = 1 - std::pow(b1, t), c2 = 1 - std::pow(b2, t);
    for (std::size_t i = 0; i < params.size(); ++i) {
      if (!params[i].has_grad()) continue;
      auto g = as_vector(params[i].grad()).array();
      auto M = as_vector(m[i]).array();
      auto V = as_vector(v[i]).array();
      M = float(b1) * M + float(1 - b1) * g;
      V = float(b2) * V + float(1 - b2) * g.square();
      as_vector(params[i].value()).array() -=
          float(lr) * (M / float(c1)) / ((V / float(c2)).sqrt() + float(eps));
      params[i].zero_grad();
    }
  }
};
}  // namespace

TEST_CASE("gelu_mlp: names and forward = fc2(gelu(fc1(x)))", "[nn][mlp]") {
  rng g(1);
  nn::gelu_mlp<double> m(3, 5, 2, g);
  REQUIRE(m.type_name() == "gelu_mlp");
  std::vector<std::string> names;
  for (auto& [n, v] : m.named_parameters()) names.push_back(n);
  REQUIRE(names == std::vector<std::string>{"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"});
  auto x = constant<double>(randn<double>({4, 3}, g));
  auto y = m(x);
  REQUIRE(y.shape() == shape_t{4, 2});
  auto &f1 = as_linear(m.fc1), &f2 = as_linear(m.fc2);
  for (std::size_t r = 0; r < 4; ++r)
    for (std::size_t o = 0; o < 2; ++o) {
      double acc = f2.bias.value()(o);
      for (std::size_t h = 0; h < 5; ++h) {
        double z = f1.bias.value()(h);
        for (std::size_t i = 0; i < 3; ++i) z += f1.weight.value()(h, i) * x.value()(r, i);
        acc += f2.weight.value()(o, h) * gelu_ref(z);
      }
      REQUIRE_THAT(y.value()(r, o), WithinAbs(acc, 1e-12));
    }
}

TEST_CASE("swiglu_mlp: llama names, no biases, forward = down(silu(gate x) * up x)", "[nn][mlp]") {
  rng g(2);
  nn::swiglu_mlp<double> m(4, 6, g);
  REQUIRE(m.type_name() == "swiglu_mlp");
  std::vector<std::string> names;
  for (auto& [n, v] : m.named_parameters()) names.push_back(n);
  REQUIRE(names == std::vector<std::string>{"gate_proj.weight", "up_proj.weight",
                                            "down_proj.weight"});
  auto &G = as_linear(m.gate_proj), &U = as_linear(m.up_proj), &D = as_linear(m.down_proj);
  REQUIRE(G.weight.shape() == shape_t{6, 4});
  REQUIRE(D.weight.shape() == shape_t{4, 6});
  auto x = constant<double>(randn<double>({1, 2, 4}, g));
  auto y = m(x);
  REQUIRE(y.shape() == shape_t{1, 2, 4});
  for (std::size_t r = 0; r < 2; ++r)
    for (std::size_t o = 0; o < 4; ++o) {
      double acc = 0;
      for (std::size_t h = 0; h < 6; ++h) {
        double a = 0, b = 0;
        for (std::size_t i = 0; i < 4; ++i) {
          a += G.weight.value()(h, i) * x.value()(0, r, i);
          b += U.weight.value()(h, i) * x.value()(0, r, i);
        }
        acc += D.weight.value()(o, h) * silu_ref(a) * b;
      }
      REQUIRE_THAT(y.value()(0, r, o), WithinAbs(acc, 1e-12));
    }
}

TEST_CASE("mlp gradcheck", "[nn][mlp][gradcheck]") {
  rng g(3);
  auto x = parameter<double>(randn<double>({2, 3, 4}, g));
  {
    nn::gelu_mlp<double> m(4, 8, 4, g);
    std::vector<variable<double>> in{x};
    for (auto& p : m.parameters()) in.push_back(p);
    auto r = grad_check([&](auto& v) { return m(v[0]); }, in);
    INFO(r.report);
    REQUIRE(r.ok);
  }
  {
    nn::gelu_mlp<double> m(4, 8, 4, g, false, gelu_approx::tanh);
    REQUIRE(m.named_parameters().size() == 2);
    std::vector<variable<double>> in{x};
    for (auto& p : m.parameters()) in.push_back(p);
    auto r = grad_check([&](auto& v) { return m(v[0]); }, in);
    INFO(r.report);
    REQUIRE(r.ok);
  }
  {
    nn::swiglu_mlp<double> m(4, 8, g);
    std::vector<variable<double>> in{x};
    for (auto& p : m.parameters()) in.push_back(p);
    auto r = grad_check([&](auto& v) { return m(v[0]); }, in);
    INFO(r.report);
    REQUIRE(r.ok);
  }
}

TEST_CASE("mlp linears are replaceable by path", "[nn][mlp]") {
  rng g(4);
  nn::swiglu_mlp<double> m(4, 6, g);
  auto x = constant<double>(randn<double>({3, 4}, g));
  auto before = m(x).value();
  auto zero_up = std::make_shared<nn::linear<double>>(parameter<double>(zeros<double>({6, 4})));
  m.replace_module("up_proj", zero_up);
  REQUIRE(m.up_proj == zero_up);
  auto after = m(x).value();
  REQUIRE(std::abs(before(0, 0)) > 1e-6);
  for (double v : after) REQUIRE(v == 0.0);
  REQUIRE_THROWS_WITH(m(constant<double>(zeros<double>({3, 5}))), Catch::Contains("[3,5]"));
}

TEST_CASE("an MLP learns two spirals with plain Adam", "[nn][mlp][train]") {
  // Two interleaved spirals, 100 points each (one and a half turns): not linearly separable.
  const std::size_t n = 100;
  tensor<float> X = tensor<float>::from_shape({2 * n, 2});
  std::vector<std::int64_t> y(2 * n);
  rng g(42);
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t c = 0; c < 2; ++c) {
      const double t = double(i) / n, r = 0.1 + 0.9 * t;
      const double a = 3 * std::numbers::pi * t + c * std::numbers::pi;
      X(c * n + i, 0) = float(r * std::cos(a) + 0.01 * g.normal());
      X(c * n + i, 1) = float(r * std::sin(a) + 0.01 * g.normal());
      y[c * n + i] = std::int64_t(c);
    }
  auto x = constant<float>(X);

  nn::linear<float> l1(2, 64, g), l2(64, 64, g), l3(64, 2, g);
  auto net = [&](const variable<float>& in) { return l3(gelu(l2(relu(l1(in))))); };
  std::vector<variable<float>> params;
  for (auto* l : {&l1, &l2, &l3})
    for (auto& p : l->parameters()) params.push_back(p);
  adam_ref opt(params, 0.01);

  float first = 0, last = 0;
  for (int step = 0; step < 600; ++step) {
    auto loss = nn::cross_entropy(net(x), y);
    if (step == 0) first = loss.item();
    last = loss.item();
    loss.backward();
    opt.step();
  }
  std::size_t correct = 0;
  {
    no_grad_guard ng;
    auto logits = net(x).value();
    for (std::size_t i = 0; i < 2 * n; ++i)
      correct += (logits(i, 1) > logits(i, 0)) == (y[i] == 1);
  }
  INFO("loss " << first << " -> " << last << ", accuracy " << correct << "/" << 2 * n);
  REQUIRE(first > 0.5f);
  REQUIRE(last < 0.1f);
  REQUIRE(correct >= 2 * n * 98 / 100);
}
