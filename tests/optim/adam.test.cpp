// Adam and AdamW: update rule by hand and against a scalar reference, defaults, errors, state
// bytes, state save/load, LoRA+-style groups, convergence.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <vector>

#include "peft/optim/adam.hpp"
#include "peft/optim/schedule.hpp"

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
void set_grad_tensor(variable<T>& v, const tensor<T>& g) {
  v.zero_grad();
  peft::detail::accumulate(*v.get(), tensor<T>(g));
}

template <class T>
bool same_bits(const tensor<T>& a, const tensor<T>& b) {
  return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// The textbook form, per element, t = 1, 2, ...:
//   g = (maximize ? -grad : grad) + (decoupled ? 0 : wd*p)
//   p = p * (1 - lr*wd)                       if decoupled
//   m = b1*m + (1-b1)*g;   v = b2*v + (1-b2)*g^2;   vmax = max(vmax, v) if amsgrad
//   p = p - lr/(1-b1^t) * m / (sqrt(v or vmax)/sqrt(1-b2^t) + eps)
struct adam_reference {
  double lr, b1, b2, eps, wd;
  bool decoupled, amsgrad, maximize;
  std::vector<double> m{}, v{}, vmax{};
  int t = 0;
  void step(std::vector<double>& p, const std::vector<double>& grad) {
    m.resize(p.size());
    v.resize(p.size());
    vmax.resize(p.size());
    ++t;
    for (std::size_t i = 0; i < p.size(); ++i) {
      double g = maximize ? -grad[i] : grad[i];
      if (decoupled)
        p[i] *= 1 - lr * wd;
      else
        g += wd * p[i];
      m[i] = b1 * m[i] + (1 - b1) * g;
      v[i] = b2 * v[i] + (1 - b2) * g * g;
      vmax[i] = std::max(vmax[i], v[i]);
      const double second = amsgrad ? vmax[i] : v[i];
      const double denom = std::sqrt(second) / std::sqrt(1 - std::pow(b2, t)) + eps;
      p[i] -= lr / (1 - std::pow(b1, t)) * m[i] / denom;
    }
  }
};

template <class Opt, class O>
adam_reference reference_for(const O& o) {
  return {o.lr, o.betas.first, o.betas.second, o.eps, o.weight_decay,
          O::decoupled_weight_decay, o.amsgrad, o.maximize};
}

// Three steps of Opt against adam_reference; grads change sign and shrink so amsgrad matters.
template <class Opt, class O>
void check_against_reference(const O& o) {
  const std::vector<std::vector<double>> grads = {{0.3, -1.2, 2.0, 0.7, -0.4, 1.1},
                                                  {-0.6, 0.9, 1.5, -0.2, 0.8, 0.05},
                                                  {0.1, 0.2, -0.3, 0.04, 0.02, -0.09}};
  std::vector<double> ref = {1.0, -2.0, 0.5, 3.0, -1.5, 2.5};
  auto p = parameter<double>(make_tensor<double>({2, 3}, ref));
  Opt opt({p}, o);
  auto r = reference_for<Opt>(o);
  for (const auto& g : grads) {
    set_grad(p, g);
    opt.step();
    r.step(ref, g);
    for (std::size_t i = 0; i < ref.size(); ++i)
      REQUIRE_THAT(p.value().data()[i], WithinRel(ref[i], 1e-12));
  }
}

}  // namespace

TEST_CASE("adam and adamw defaults are torch's", "[optim][adam]") {
  const optim::adam_options a;
  const optim::adamw_options w;
  REQUIRE(a.lr == 1e-3);
  REQUIRE(a.betas.first == 0.9);
  REQUIRE(a.betas.second == 0.999);
  REQUIRE(a.eps == 1e-8);
  REQUIRE(a.weight_decay == 0);
  REQUIRE_FALSE(a.amsgrad);
  REQUIRE(w.lr == 1e-3);
  REQUIRE(w.eps == 1e-8);
  REQUIRE(w.weight_decay == 1e-2);
  auto p = parameter<double>(zeros<double>({1}));
  optim::adamw<double> opt({p});
  REQUIRE(opt.group(0).weight_decay == 1e-2);
  REQUIRE(opt.name() == "adamw");
}

TEST_CASE("adam first steps by hand", "[optim][adam]") {
  // p = 1, g = 0.5, lr = 0.1, default betas and eps.
  // t=1: m = 0.05, v = 0.00025, 1-b1 = 0.1, sqrt(1-b2) = sqrt(0.001),
  //      denom = sqrt(0.00025)/sqrt(0.001) + 1e-8 = 0.5 + 1e-8, step = 0.1/0.1 = 1
  //      p = 1 - 0.05/(0.5 + 1e-8)
  auto p = parameter<double>(make_tensor<double>({1}, {1.0}));
  optim::adam<double> opt({p}, {.lr = 0.1});
  set_grad(p, {0.5});
  opt.step();
  const double p1 = 1 - 0.05 / (0.5 + 1e-8);
  REQUIRE_THAT(p.value()(0), WithinRel(p1, 1e-12));
  // t=2, g = -0.25: m = 0.045 - 0.025 = 0.02, v = 0.00024975 + 0.0000625 = 0.00031225,
  //      1-b1^2 = 0.19, 1-b2^2 = 0.001999; p = p1 - (0.1/0.19)*0.02/(sqrt(0.00031225/0.001999)+1e-8)
  set_grad(p, {-0.25});
  opt.step();
  const double p2 = p1 - (0.1 / 0.19) * 0.02 / (std::sqrt(0.00031225) / std::sqrt(0.001999) + 1e-8);
  REQUIRE_THAT(p.value()(0), WithinRel(p2, 1e-12));
  REQUIRE(opt.named_state().at(0).step == 2);
  REQUIRE_THAT(opt.named_state().at(0).tensors.at("exp_avg")(0), WithinRel(0.02, 1e-12));
  REQUIRE_THAT(opt.named_state().at(0).tensors.at("exp_avg_sq")(0), WithinRel(0.00031225, 1e-12));
}

TEST_CASE("adamw decays the weights before the update, adam adds L2 to the gradient",
          "[optim][adam]") {
  // AdamW, p = 2, g = 0.5, lr = 0.1, wd = 0.5: p = 2*(1 - 0.05) = 1.9, then the Adam step
  // (m̂ = g, v̂ = g^2) subtracts 0.1*0.5/(0.5 + 1e-8).
  auto p = parameter<double>(make_tensor<double>({1}, {2.0}));
  optim::adamw<double> w({p}, {.lr = 0.1, .weight_decay = 0.5});
  set_grad(p, {0.5});
  w.step();
  REQUIRE_THAT(p.value()(0), WithinRel(1.9 - 0.05 / (0.5 + 1e-8), 1e-12));
  // Adam with wd = 0.5: g = 0.5 + 0.5*2 = 1.5, first step moves by lr*1.5/(1.5 + 1e-8).
  auto q = parameter<double>(make_tensor<double>({1}, {2.0}));
  optim::adam<double> a({q}, {.lr = 0.1, .weight_decay = 0.5});
  set_grad(q, {0.5});
  a.step();
  REQUIRE_THAT(q.value()(0), WithinRel(2.0 - 0.1 * 1.5 / (1.5 + 1e-8), 1e-12));
}

TEST_CASE("adam and adamw match the scalar reference over three steps", "[optim][adam]") {
  using A = optim::adam<double>;
  using W = optim::adamw<double>;
  SECTION("adam") { check_against_reference<A>(optim::adam_options{.lr = 0.01}); }
  SECTION("adam l2") {
    check_against_reference<A>(
        optim::adam_options{.lr = 0.01, .betas = {0.8, 0.99}, .weight_decay = 0.1});
  }
  SECTION("adam amsgrad maximize") {
    check_against_reference<A>(
        optim::adam_options{.lr = 0.02, .eps = 1e-3, .amsgrad = true, .maximize = true});
  }
  SECTION("adamw") { check_against_reference<W>(optim::adamw_options{.lr = 0.01}); }
  SECTION("adamw amsgrad") {
    check_against_reference<W>(optim::adamw_options{
        .lr = 0.05, .betas = {0.5, 0.9}, .weight_decay = 0.2, .amsgrad = true});
  }
  SECTION("adamw beta1 below one half uses the other lerp branch") {
    check_against_reference<W>(
        optim::adamw_options{.lr = 0.05, .betas = {0.3, 0.9}, .maximize = true});
  }
}

TEST_CASE("amsgrad keeps the running maximum of the second moment", "[optim][adam]") {
  auto p = parameter<double>(make_tensor<double>({2}, {1, 1}));
  optim::adam<double> opt({p}, {.lr = 0.1, .amsgrad = true});
  set_grad(p, {1.0, 0.5});
  opt.step();
  set_grad(p, {0.01, 0.01});  // v shrinks, the maximum stays
  opt.step();
  const auto& s = opt.named_state().at(0).tensors;
  REQUIRE(s.size() == 3);
  for (std::size_t i = 0; i < 2; ++i) {
    REQUIRE(s.at("max_exp_avg_sq")(i) > s.at("exp_avg_sq")(i));
    REQUIRE_THAT(s.at("max_exp_avg_sq")(i), WithinRel(i == 0 ? 0.001 : 0.00025, 1e-12));
  }
}

TEMPLATE_TEST_CASE("adamw works in float and double", "[optim][adam]", float, double) {
  using T = TestType;
  auto p = parameter<T>(make_tensor<T>({3}, {1, 2, 3}));
  const optim::adamw_options o{.lr = 0.01, .weight_decay = 0.1};
  optim::adamw<T> opt({p}, o);
  std::vector<double> ref = {1, 2, 3};
  auto r = reference_for<optim::adamw<T>>(o);
  for (int k = 0; k < 3; ++k) {
    set_grad<T>(p, std::vector<T>{T(0.5), T(-1), T(0.25 * (k + 1))});
    opt.step();
    r.step(ref, {0.5, -1, 0.25 * (k + 1)});
  }
  const double tol = sizeof(T) == 4 ? 1e-6 : 1e-12;
  for (std::size_t i = 0; i < 3; ++i) REQUIRE_THAT(double(p.value()(i)), WithinRel(ref[i], tol));
}

TEST_CASE("adam state_bytes counts the moments", "[optim][adam][state]") {
  auto a = parameter<float>(zeros<float>({4, 8}));
  auto b = parameter<float>(zeros<float>({8}));
  auto c = parameter<float>(zeros<float>({3}));  // never gets a gradient
  optim::adamw<float> opt({a, b, c});
  REQUIRE(opt.state_bytes() == 0);  // state is created on the first update
  set_grad_tensor(a, zeros<float>({4, 8}));
  set_grad_tensor(b, zeros<float>({8}));
  opt.step();
  REQUIRE(opt.state_bytes(0) == 2 * 32 * sizeof(float));
  REQUIRE(opt.state_bytes(1) == 2 * 8 * sizeof(float));
  REQUIRE(opt.state_bytes(2) == 0);
  REQUIRE(opt.state_bytes() == 2 * 40 * sizeof(float));

  auto d = parameter<double>(zeros<double>({5}));
  optim::adam<double> ams({d}, {.amsgrad = true});
  set_grad_tensor(d, zeros<double>({5}));
  ams.step();
  REQUIRE(ams.state_bytes() == 3 * 5 * sizeof(double));
}

TEST_CASE("parameters without a gradient get no update and no weight decay", "[optim][adam]") {
  auto a = parameter<double>(make_tensor<double>({2}, {1, 2}));
  auto frozen = parameter<double>(make_tensor<double>({2}, {3, 4}));
  optim::adamw<double> opt({a, frozen}, {.lr = 0.1, .weight_decay = 0.5});
  set_grad(a, {1, 1});
  opt.step();
  opt.step();
  REQUIRE((frozen.value() == make_tensor<double>({2}, {3, 4})));
  REQUIRE(opt.named_state().count(1) == 0);
  REQUIRE(opt.named_state().at(0).step == 2);
}

TEST_CASE("LoRA+ style groups: B's group has a larger lr", "[optim][adam][groups]") {
  // Adam's first step moves each element by about lr (m̂/sqrt(v̂) = sign(g)), so the update
  // ratio is the lr ratio.
  auto A = parameter<double>(zeros<double>({2, 4}));
  auto B = parameter<double>(zeros<double>({4, 2}));
  const double lr = 1e-3, ratio = 16;
  optim::adamw<double> opt({{.params = {A}}, {.params = {B}, .lr = lr * ratio, .weight_decay = 0.0}},
                           {.lr = lr});
  REQUIRE(opt.group(0).weight_decay == 1e-2);
  REQUIRE(opt.group(1).weight_decay == 0);
  set_grad_tensor(A, ones<double>({2, 4}));
  set_grad_tensor(B, ones<double>({4, 2}));
  opt.step();
  REQUIRE_THAT(A.value()(0, 0), WithinRel(-lr / (1 + 1e-8), 1e-12));
  REQUIRE_THAT(B.value()(0, 0), WithinRel(-lr * ratio / (1 + 1e-8), 1e-12));
  // Per-group fields beyond lr / weight decay are set through group(i).
  opt.group(1).betas = {0.5, 0.9};
  set_grad_tensor(A, ones<double>({2, 4}));
  set_grad_tensor(B, ones<double>({4, 2}));
  REQUIRE_NOTHROW(opt.step());
}

TEST_CASE("adamw state save/load reproduces the next step bit-exactly", "[optim][adam][state]") {
  const optim::adamw_options o{.lr = 0.01, .weight_decay = 0.05, .amsgrad = true};
  rng gen(7);
  auto p = parameter<float>(randn<float>({3, 4}, gen));
  auto q = parameter<float>(randn<float>({6}, gen));
  auto frozen = parameter<float>(randn<float>({2}, gen));
  optim::adamw<float> opt({{.params = {p}}, {.params = {q, frozen}, .lr = 0.03}}, o);
  std::vector<tensor<float>> gp, gq;
  for (int k = 0; k < 4; ++k) {
    gp.push_back(randn<float>({3, 4}, gen));
    gq.push_back(randn<float>({6}, gen));
  }
  for (int k = 0; k < 3; ++k) {
    set_grad_tensor(p, gp[k]);
    set_grad_tensor(q, gq[k]);
    opt.step();
  }
  const optim::state_map<float> saved = opt.named_state();
  REQUIRE(saved.size() == 2);  // the frozen parameter has no state
  REQUIRE(saved.at(1).step == 3);

  auto p2 = parameter<float>(p.value());
  auto q2 = parameter<float>(q.value());
  auto f2 = parameter<float>(frozen.value());
  optim::adamw<float> restored({{.params = {p2}}, {.params = {q2, f2}, .lr = 0.03}}, o);
  restored.load_state(saved);
  for (const auto& [i, s] : saved)
    for (const auto& [name, t] : s.tensors)
      REQUIRE(same_bits(t, restored.named_state().at(i).tensors.at(name)));
  auto p3 = parameter<float>(p.value());
  optim::adamw<float> fresh({p3}, o);

  set_grad_tensor(p, gp[3]);
  set_grad_tensor(q, gq[3]);
  set_grad_tensor(p2, gp[3]);
  set_grad_tensor(q2, gq[3]);
  set_grad_tensor(p3, gp[3]);
  opt.step();
  restored.step();
  fresh.step();
  REQUIRE(same_bits(p.value(), p2.value()));
  REQUIRE(same_bits(q.value(), q2.value()));
  REQUIRE_FALSE(same_bits(p.value(), p3.value()));
  REQUIRE(same_bits(opt.named_state().at(0).tensors.at("exp_avg_sq"),
                    restored.named_state().at(0).tensors.at("exp_avg_sq")));
}

TEST_CASE("adam load_state names the offending tensor", "[optim][adam][state]") {
  auto p = parameter<double>(zeros<double>({2, 3}));
  optim::adam<double> opt({p});
  optim::state_map<double> s;
  s[0].step = 3;
  s[0].tensors["exp_avg"] = zeros<double>({2, 3});
  s[0].tensors["exp_avg_sq"] = zeros<double>({6});
  REQUIRE_THROWS_AS(opt.load_state(s), shape_error);
  REQUIRE_THROWS_WITH(opt.load_state(s), Contains("exp_avg_sq") && Contains("[6]") && Contains("[2,3]"));
  s[0].tensors["exp_avg_sq"] = zeros<double>({2, 3});
  s[0].tensors["max_exp_avg_sq"] = zeros<double>({2, 3});  // amsgrad is off
  REQUIRE_THROWS_WITH(opt.load_state(s), Contains("unexpected") && Contains("max_exp_avg_sq"));
  REQUIRE(opt.named_state().empty());
  s[0].tensors.erase("max_exp_avg_sq");
  opt.load_state(s);
  REQUIRE(opt.named_state().at(0).step == 3);

  optim::adam<double> ams({p}, {.amsgrad = true});
  REQUIRE_THROWS_WITH(ams.load_state(s), Contains("missing") && Contains("max_exp_avg_sq"));
}

TEST_CASE("adam rejects bad hyper-parameters naming the option", "[optim][adam][errors]") {
  auto p = parameter<double>(zeros<double>({2}));
  using O = optim::adam_options;
  using OW = optim::adamw_options;
  REQUIRE_THROWS_AS(optim::adam<double>({p}, O{.lr = -1e-3}), value_error);
  REQUIRE_THROWS_WITH(optim::adam<double>({p}, O{.lr = -1e-3}), Contains("adam") && Contains("lr"));
  REQUIRE_THROWS_WITH(optim::adam<double>({p}, O{.betas = {1.0, 0.999}}), Contains("betas[0]"));
  REQUIRE_THROWS_WITH(optim::adam<double>({p}, O{.betas = {-0.1, 0.999}}), Contains("betas[0]"));
  REQUIRE_THROWS_WITH(optim::adamw<double>({p}, OW{.betas = {0.9, 1.0}}),
                      Contains("adamw") && Contains("betas[1]"));
  REQUIRE_THROWS_WITH(optim::adamw<double>({p}, OW{.eps = -1e-8}), Contains("eps"));
  REQUIRE_THROWS_WITH(optim::adamw<double>({p}, OW{.weight_decay = -0.1}), Contains("weight_decay"));
  REQUIRE_THROWS_WITH(optim::adamw<double>({p}, OW{.lr = std::nan("")}), Contains("lr"));
  REQUIRE_NOTHROW(optim::adam<double>({p}, O{.lr = 0, .betas = {0.0, 0.0}, .eps = 0}));
  optim::adamw<double> opt({p});
  opt.group(0).betas.second = 1.5;
  set_grad(p, {1, 1});
  REQUIRE_THROWS_WITH(opt.step(), Contains("betas[1]"));
}

TEST_CASE("adamw with a cosine schedule minimises a least-squares quadratic",
          "[optim][adam][convergence]") {
  // f(x) = ||A x - b||^2 with b = A x*, gradient 2 A^T (A x - b); the minimum is x*.
  // Weight decay off: it would move the minimum.
  rng gen(5);
  const tensor<double> A = randn<double>({8, 4}, gen);
  const tensor<double> x_star = randn<double>({4}, gen);
  const auto Am = as_matrix(A);
  const vector<double> b = Am * as_vector(x_star);
  auto x = parameter<double>(zeros<double>({4}));
  const std::size_t steps = 2000;
  optim::adamw<double> opt({x}, {.lr = 0.05, .weight_decay = 0});
  optim::lr_scheduler sched(opt, optim::warmup_cosine_schedule(50, steps));
  for (std::size_t k = 0; k < steps; ++k) {
    opt.zero_grad();
    const vector<double> r = Am * as_vector(x.value()) - b;
    tensor<double> g = zeros<double>({4});
    as_vector(g) = 2.0 * Am.transpose() * r;
    peft::detail::accumulate(*x.get(), std::move(g));
    opt.step();
    sched.step();
  }
  REQUIRE(opt.lr(0) == 0.0);  // the schedule reached its end
  const double err = (as_vector(x.value()) - as_vector(x_star)).norm();
  INFO("||x - x*|| = " << err);
  REQUIRE(err < 1e-5);
}
