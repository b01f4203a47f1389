// SGD, and the optimizer base it shares with Adam: parameter groups, skipped parameters,
// zero_grad, state bytes, state save/load, errors.
#include <catch2/catch.hpp>

#include <cstring>
#include <memory>
#include <vector>

#include "peft/nn/module.hpp"
#include "peft/optim/sgd.hpp"

using namespace peft;
using Catch::Matchers::Contains;
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

namespace {

template <class T>
void set_grad(variable<T>& v, const std::vector<T>& g) {
  v.zero_grad();
  peft::detail::accumulate(*v.get(), make_tensor<T>(v.shape(), g));
}

template <class T>
bool same_bits(const tensor<T>& a, const tensor<T>& b) {
  return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// torch.optim.SGD written out per element:
//   d = (maximize ? -g : g) + wd*p
//   if momentum: buf = first ? d : momentum*buf + (1-dampening)*d
//                d   = nesterov ? d + momentum*buf : buf
//   p -= lr*d
struct sgd_reference {
  optim::sgd_options o;
  std::vector<double> buf{};
  bool first = true;
  void step(std::vector<double>& p, const std::vector<double>& g) {
    buf.resize(p.size());
    for (std::size_t i = 0; i < p.size(); ++i) {
      double d = (o.maximize ? -g[i] : g[i]) + o.weight_decay * p[i];
      if (o.momentum != 0) {
        buf[i] = first ? d : o.momentum * buf[i] + (1 - o.dampening) * d;
        d = o.nesterov ? d + o.momentum * buf[i] : buf[i];
      }
      p[i] -= o.lr * d;
    }
    first = false;
  }
};

// A module with two parameters, to check that the optimizer updates the model's own nodes.
struct two_params : nn::module<double> {
  variable<double> w, b;
  two_params() {
    w = register_parameter("weight", make_tensor<double>({2, 2}, {1, 2, 3, 4}));
    b = register_parameter("bias", make_tensor<double>({2}, {0.5, -0.5}), false);
  }
};

}  // namespace

TEST_CASE("sgd plain step by hand", "[optim][sgd]") {
  // p = p - lr*g:  [1, -2] - 0.1*[0.5, 0.25] = [0.95, -2.025]
  auto p = parameter<double>(make_tensor<double>({2}, {1, -2}));
  optim::sgd<double> opt({p}, {.lr = 0.1});
  set_grad(p, {0.5, 0.25});
  opt.step();
  REQUIRE_THAT(p.value()(0), WithinRel(0.95, 1e-12));
  REQUIRE_THAT(p.value()(1), WithinRel(-2.025, 1e-12));
  REQUIRE(opt.state_bytes() == 0);  // no momentum, no buffer
}

TEST_CASE("sgd momentum, dampening and nesterov by hand", "[optim][sgd]") {
  // p0 = 1, g = 0.5 every step, lr = 0.1.
  auto run = [](optim::sgd_options o, int steps) {
    auto p = parameter<double>(make_tensor<double>({1}, {1.0}));
    optim::sgd<double> opt({p}, o);
    for (int k = 0; k < steps; ++k) {
      set_grad(p, {0.5});
      opt.step();
    }
    return p.value()(0);
  };
  // momentum 0.9: buf1 = 0.5 -> p = 0.95; buf2 = 0.45 + 0.5 = 0.95 -> p = 0.855;
  // buf3 = 0.855 + 0.5 = 1.355 -> p = 0.7195
  REQUIRE_THAT(run({.lr = 0.1, .momentum = 0.9}, 1), WithinRel(0.95, 1e-12));
  REQUIRE_THAT(run({.lr = 0.1, .momentum = 0.9}, 2), WithinRel(0.855, 1e-12));
  REQUIRE_THAT(run({.lr = 0.1, .momentum = 0.9}, 3), WithinRel(0.7195, 1e-12));
  // dampening 0.5 (not applied on the first step): buf2 = 0.45 + 0.25 = 0.7 -> p = 0.95 - 0.07
  REQUIRE_THAT(run({.lr = 0.1, .momentum = 0.9, .dampening = 0.5}, 2), WithinRel(0.88, 1e-12));
  // nesterov: d1 = 0.5 + 0.9*0.5 = 0.95 -> p = 0.905; buf2 = 0.95, d2 = 0.5 + 0.855 = 1.355
  // -> p = 0.905 - 0.1355 = 0.7695
  REQUIRE_THAT(run({.lr = 0.1, .momentum = 0.9, .nesterov = true}, 1), WithinRel(0.905, 1e-12));
  REQUIRE_THAT(run({.lr = 0.1, .momentum = 0.9, .nesterov = true}, 2), WithinRel(0.7695, 1e-12));
  // weight decay 0.1: d = 0.5 + 0.1*1 = 0.6 -> p = 0.94; maximize: d = -0.5 -> p = 1.05
  REQUIRE_THAT(run({.lr = 0.1, .weight_decay = 0.1}, 1), WithinRel(0.94, 1e-12));
  REQUIRE_THAT(run({.lr = 0.1, .maximize = true}, 1), WithinRel(1.05, 1e-12));
}

TEST_CASE("sgd matches the scalar reference over three steps", "[optim][sgd]") {
  const std::vector<optim::sgd_options> configs = {
      {.lr = 0.1},
      {.lr = 0.05, .momentum = 0.9},
      {.lr = 0.05, .momentum = 0.8, .dampening = 0.3, .weight_decay = 0.01},
      {.lr = 0.02, .momentum = 0.9, .weight_decay = 0.1, .nesterov = true},
      {.lr = 0.03, .momentum = 0.5, .weight_decay = 0.2, .maximize = true},
      {.lr = 0.03, .momentum = 0.7, .nesterov = true, .maximize = true},
  };
  const std::vector<std::vector<double>> grads = {
      {0.3, -1.2, 2.0, 0.7, -0.4, 1.1}, {-0.6, 0.9, 1.5, -0.2, 0.8, 0.05}, {1.0, 1.0, -3.0, 0.4, 0.2, -0.9}};
  for (std::size_t c = 0; c < configs.size(); ++c) {
    INFO("config " << c);
    std::vector<double> ref = {1.0, -2.0, 0.5, 3.0, -1.5, 2.5};
    auto p = parameter<double>(make_tensor<double>({2, 3}, ref));
    optim::sgd<double> opt({p}, configs[c]);
    sgd_reference r{configs[c]};
    for (const auto& g : grads) {
      set_grad(p, g);
      opt.step();
      r.step(ref, g);
      for (std::size_t i = 0; i < ref.size(); ++i)
        REQUIRE_THAT(p.value().data()[i], WithinRel(ref[i], 1e-12));
    }
  }
}

TEMPLATE_TEST_CASE("sgd works in float and double", "[optim][sgd]", float, double) {
  using T = TestType;
  auto p = parameter<T>(make_tensor<T>({3}, {1, 2, 3}));
  optim::sgd<T> opt({p}, {.lr = 0.1, .momentum = 0.9, .weight_decay = 0.01});
  std::vector<double> ref = {1, 2, 3};
  sgd_reference r{{.lr = 0.1, .momentum = 0.9, .weight_decay = 0.01}};
  for (int k = 0; k < 3; ++k) {
    set_grad<T>(p, {T(0.5), T(-1), T(0.25)});
    opt.step();
    r.step(ref, {0.5, -1, 0.25});
  }
  const double tol = sizeof(T) == 4 ? 1e-6 : 1e-12;
  for (std::size_t i = 0; i < 3; ++i) REQUIRE_THAT(double(p.value()(i)), WithinRel(ref[i], tol));
  REQUIRE(opt.state_bytes() == 3 * sizeof(T));
}

TEST_CASE("parameter groups have their own lr and weight decay", "[optim][sgd][groups]") {
  auto a = parameter<double>(make_tensor<double>({2}, {1, 1}));
  auto b = parameter<double>(make_tensor<double>({2}, {1, 1}));
  auto c = parameter<double>(make_tensor<double>({1}, {1}));
  optim::sgd<double> opt({{.params = {a}}, {.params = {b}, .lr = 1.0, .weight_decay = 0.5}, {.params = {c}, .lr = 0.2}},
                         {.lr = 0.1, .momentum = 0.9});
  REQUIRE(opt.num_groups() == 3);
  REQUIRE(opt.num_parameters() == 3);
  REQUIRE(opt.group(0).lr == 0.1);
  REQUIRE(opt.group(0).weight_decay == 0);
  REQUIRE(opt.group(1).lr == 1.0);
  REQUIRE(opt.group(1).weight_decay == 0.5);
  REQUIRE(opt.group(1).momentum == 0.9);  // from the defaults
  REQUIRE(opt.lr(2) == 0.2);
  REQUIRE(opt.index_of(b) == 1);
  REQUIRE(opt.index_of(c) == 2);

  set_grad(a, {1, 1});
  set_grad(b, {1, 1});
  set_grad(c, {1});
  opt.step();
  REQUIRE_THAT(a.value()(0), WithinRel(1 - 0.1 * 1, 1e-12));
  REQUIRE_THAT(b.value()(0), WithinRel(1 - 1.0 * (1 + 0.5 * 1), 1e-12));
  REQUIRE_THAT(c.value()(0), WithinRel(1 - 0.2 * 1, 1e-12));

  opt.set_lr(0.5);
  for (std::size_t g = 0; g < 3; ++g) REQUIRE(opt.lr(g) == 0.5);
  opt.set_lr(1, 0.25);
  REQUIRE(opt.group(1).lr == 0.25);
  opt.group(2).lr = 0.125;  // direct access works too
  REQUIRE(opt.lr(2) == 0.125);
  REQUIRE_THROWS_WITH(opt.set_lr(1, -1.0), Contains("lr") && Contains("-1") && Contains("group 1"));
  REQUIRE_THROWS_AS(opt.group(3), value_error);

  // An invalid value written through group(i) is caught at the next step.
  opt.group(2).lr = -0.5;
  REQUIRE_THROWS_WITH(opt.step(), Contains("sgd group 2") && Contains("lr"));
}

TEST_CASE("parameters without a gradient are skipped", "[optim][sgd]") {
  auto a = parameter<double>(make_tensor<double>({2}, {1, 2}));
  auto b = parameter<double>(make_tensor<double>({3}, {3, 4, 5}));
  optim::sgd<double> opt({a, b}, {.lr = 0.1, .momentum = 0.9, .weight_decay = 0.1});
  set_grad(a, {1, 1});
  opt.step();
  REQUIRE(a.value()(0) != 1.0);
  REQUIRE((b.value() == make_tensor<double>({3}, {3, 4, 5})));  // weight decay not applied either
  REQUIRE(opt.state_bytes(0) == 2 * sizeof(double));
  REQUIRE(opt.state_bytes(1) == 0);
  REQUIRE(opt.named_state().count(0) == 1);
  REQUIRE(opt.named_state().count(1) == 0);
  REQUIRE(opt.named_state().at(0).step == 1);
  REQUIRE_THROWS_AS(opt.state_bytes(2), value_error);
}

TEST_CASE("zero_grad drops every gradient", "[optim][sgd]") {
  auto a = parameter<double>(make_tensor<double>({2}, {1, 2}));
  auto b = parameter<double>(make_tensor<double>({1}, {3}));
  optim::sgd<double> opt({{.params = {a}}, {.params = {b}, .lr = 1.0}});
  set_grad(a, {1, 1});
  set_grad(b, {1});
  opt.zero_grad();
  REQUIRE_FALSE(a.has_grad());
  REQUIRE_FALSE(b.has_grad());
  opt.step();  // nothing to do
  REQUIRE((a.value() == make_tensor<double>({2}, {1, 2})));
}

TEST_CASE("sgd updates a module's parameters in place", "[optim][sgd]") {
  auto m = std::make_shared<two_params>();
  optim::sgd<double> opt(m->trainable_parameters(), {.lr = 0.5});
  REQUIRE(opt.num_parameters() == 1);  // the frozen bias is not handed to the optimizer
  set_grad(m->w, {1, 1, 1, 1});
  opt.step();
  REQUIRE((m->get_state_dict().at("weight") == make_tensor<double>({2, 2}, {0.5, 1.5, 2.5, 3.5})));
}

TEST_CASE("sgd state save/load reproduces the next step bit-exactly", "[optim][sgd][state]") {
  const optim::sgd_options o{.lr = 0.05, .momentum = 0.9, .dampening = 0.1, .weight_decay = 0.01};
  rng gen(11);
  auto p = parameter<double>(randn<double>({3, 4}, gen));
  auto q = parameter<double>(randn<double>({5}, gen));
  optim::sgd<double> opt({p, q}, o);
  std::vector<tensor<double>> gp, gq;
  for (int k = 0; k < 4; ++k) {
    gp.push_back(randn<double>({3, 4}, gen));
    gq.push_back(randn<double>({5}, gen));
  }
  for (int k = 0; k < 3; ++k) {
    p.zero_grad();
    q.zero_grad();
    peft::detail::accumulate(*p.get(), tensor<double>(gp[k]));
    peft::detail::accumulate(*q.get(), tensor<double>(gq[k]));
    opt.step();
  }
  const optim::state_map<double> saved = opt.named_state();  // a copy, as a checkpoint would hold
  REQUIRE(saved.at(0).tensors.count("momentum_buffer") == 1);

  auto p2 = parameter<double>(p.value());
  auto q2 = parameter<double>(q.value());
  optim::sgd<double> restored({p2, q2}, o);
  restored.load_state(saved);
  REQUIRE(restored.state_bytes() == opt.state_bytes());
  auto p3 = parameter<double>(p.value());  // same values, fresh state: must differ
  optim::sgd<double> fresh({p3}, o);

  for (auto* v : {&p, &q, &p2, &q2, &p3}) v->zero_grad();
  for (auto* v : {&p, &p2, &p3}) peft::detail::accumulate(*v->get(), tensor<double>(gp[3]));
  for (auto* v : {&q, &q2}) peft::detail::accumulate(*v->get(), tensor<double>(gq[3]));
  opt.step();
  restored.step();
  fresh.step();
  REQUIRE(same_bits(p.value(), p2.value()));
  REQUIRE(same_bits(q.value(), q2.value()));
  REQUIRE_FALSE(same_bits(p.value(), p3.value()));
}

TEST_CASE("sgd load_state validates before changing anything", "[optim][sgd][state]") {
  auto p = parameter<double>(zeros<double>({2, 3}));
  optim::sgd<double> opt({p}, {.lr = 0.1, .momentum = 0.9});
  optim::state_map<double> bad;
  bad[0].step = 1;
  bad[0].tensors["momentum_buffer"] = zeros<double>({3, 2});
  REQUIRE_THROWS_AS(opt.load_state(bad), shape_error);
  REQUIRE_THROWS_WITH(opt.load_state(bad),
                      Contains("momentum_buffer") && Contains("[3,2]") && Contains("[2,3]"));
  REQUIRE(opt.named_state().empty());

  optim::state_map<double> missing;
  missing[0].step = 1;
  REQUIRE_THROWS_WITH(opt.load_state(missing), Contains("missing") && Contains("momentum_buffer"));

  optim::state_map<double> extra;
  extra[0].tensors["momentum_buffer"] = zeros<double>({2, 3});
  extra[0].tensors["exp_avg"] = zeros<double>({2, 3});
  REQUIRE_THROWS_WITH(opt.load_state(extra), Contains("unexpected") && Contains("exp_avg"));

  optim::state_map<double> out_of_range;
  out_of_range[1].tensors["momentum_buffer"] = zeros<double>({2, 3});
  REQUIRE_THROWS_WITH(opt.load_state(out_of_range), Contains("parameter 1"));

  optim::state_map<double> good;
  good[0].step = 7;
  good[0].tensors["momentum_buffer"] = ones<double>({2, 3});
  opt.load_state(good);
  REQUIRE(opt.named_state().at(0).step == 7);
  REQUIRE(opt.state_bytes() == 6 * sizeof(double));
}

TEST_CASE("sgd rejects bad hyper-parameters and parameter lists", "[optim][sgd][errors]") {
  auto p = parameter<double>(zeros<double>({2}));
  using O = optim::sgd_options;
  REQUIRE_THROWS_AS(optim::sgd<double>({p}, O{.lr = -0.1}), value_error);
  REQUIRE_THROWS_WITH(optim::sgd<double>({p}, O{.lr = -0.1}), Contains("lr") && Contains("-0.1"));
  REQUIRE_THROWS_WITH(optim::sgd<double>({p}, O{.momentum = -1}), Contains("momentum"));
  REQUIRE_THROWS_WITH(optim::sgd<double>({p}, O{.weight_decay = -1e-5}),
                      Contains("weight_decay") && Contains("-1e-05"));
  // As PyTorch: nesterov needs momentum > 0 and zero dampening.
  REQUIRE_THROWS_WITH(optim::sgd<double>({p}, O{.nesterov = true}), Contains("nesterov"));
  REQUIRE_THROWS_WITH(optim::sgd<double>({p}, O{.momentum = 0.9, .dampening = 0.1, .nesterov = true}),
                      Contains("nesterov") && Contains("dampening"));
  REQUIRE_NOTHROW(optim::sgd<double>({p}, O{.momentum = 0.9, .nesterov = true}));

  REQUIRE_THROWS_WITH(optim::sgd<double>(std::vector<variable<double>>{}), Contains("empty"));
  REQUIRE_THROWS_WITH(optim::sgd<double>({p, p}), Contains("more than once"));
  auto q = parameter<double>(zeros<double>({1}));
  REQUIRE_THROWS_WITH(optim::sgd<double>({{.params = {p}}, {.params = {q, p}}}),
                      Contains("group 1") && Contains("more than once"));
  REQUIRE_THROWS_WITH(optim::sgd<double>({{.params = {q}, .lr = -2.0}}),
                      Contains("group 0") && Contains("lr"));
  REQUIRE_THROWS_WITH(optim::sgd<double>({p, variable<double>()}), Contains("undefined"));
  optim::sgd<double> opt({p});
  REQUIRE_THROWS_AS(opt.index_of(q), value_error);
}

TEST_CASE("sgd reports a gradient of the wrong shape", "[optim][sgd][errors]") {
  auto p = parameter<double>(zeros<double>({2, 3}));
  optim::sgd<double> opt({p});
  p.get()->grad = zeros<double>({6});  // bypasses accumulate's check on purpose
  p.get()->has_grad = true;
  REQUIRE_THROWS_AS(opt.step(), shape_error);
  REQUIRE_THROWS_WITH(opt.step(), Contains("[2,3]") && Contains("[6]"));
}

TEST_CASE("sgd with momentum minimises a least-squares quadratic", "[optim][sgd][convergence]") {
  // f(x) = ||A x - b||^2 with b = A x*, gradient 2 A^T (A x - b); the minimum is x*.
  rng gen(5);
  const tensor<double> A = randn<double>({8, 4}, gen);
  const tensor<double> x_star = randn<double>({4}, gen);
  const auto Am = as_matrix(A);
  const vector<double> b = Am * as_vector(x_star);
  auto x = parameter<double>(zeros<double>({4}));
  optim::sgd<double> opt({x}, {.lr = 0.01, .momentum = 0.9});
  for (int k = 0; k < 600; ++k) {
    opt.zero_grad();
    const vector<double> r = Am * as_vector(x.value()) - b;
    tensor<double> g = zeros<double>({4});
    as_vector(g) = 2.0 * Am.transpose() * r;
    peft::detail::accumulate(*x.get(), std::move(g));
    opt.step();
  }
  const double err = (as_vector(x.value()) - as_vector(x_star)).norm();
  INFO("||x - x*|| = " << err);
  REQUIRE(err < 1e-8);
}
