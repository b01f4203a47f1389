// Adafactor: steps against a per-element transcription of transformers' Adafactor (factored and
// unfactored, with and without beta1, weight decay, relative step and parameter scaling), 3-D
// parameters, state layout and bytes, errors, convergence, checkpoint resume.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <vector>

#include "peft/optim/adafactor.hpp"

using namespace peft;
using Catch::Matchers::Contains;
using Catch::Matchers::WithinRel;

namespace {

template <class T>
void set_grad(variable<T>& v, const std::vector<T>& g) {
  v.zero_grad();
  peft::detail::accumulate(*v.get(), make_tensor<T>(v.shape(), g));
}

// transformers.optimization.Adafactor.step for one [R, C] matrix (C = 0: a vector of R),
// transcribed element by element in double.
struct adafactor_reference {
  optim::adafactor_options o;
  std::size_t R, C;
  std::vector<double> row, col, v, m;
  int t = 0;
  adafactor_reference(const optim::adafactor_options& opts, std::size_t r, std::size_t c)
      : o(opts), R(r), C(c), row(r, 0), col(c, 0), v(r, 0), m(c ? r * c : r, 0) {}

  void step(std::vector<double>& p, const std::vector<double>& g) {
    ++t;
    const std::size_t n = p.size();
    double rms_p = 0;
    for (double x : p) rms_p += x * x;
    rms_p = std::sqrt(rms_p / double(n));
    double rel = o.lr;
    if (o.relative_step)
      rel = std::min(o.warmup_init ? 1e-6 * t : 1e-2, 1.0 / std::sqrt(double(t)));
    const double lr = (o.scale_parameter ? std::max(o.eps.second, rms_p) : 1.0) * rel;
    const double b2t = 1.0 - std::pow(double(t), o.decay_rate);
    std::vector<double> u(n);
    if (C) {
      for (std::size_t i = 0; i < R; ++i) {
        double s = 0;
        for (std::size_t j = 0; j < C; ++j) s += g[i * C + j] * g[i * C + j] + o.eps.first;
        row[i] = b2t * row[i] + (1 - b2t) * s / double(C);
      }
      for (std::size_t j = 0; j < C; ++j) {
        double s = 0;
        for (std::size_t i = 0; i < R; ++i) s += g[i * C + j] * g[i * C + j] + o.eps.first;
        col[j] = b2t * col[j] + (1 - b2t) * s / double(R);
      }
      double rmean = 0;
      for (double x : row) rmean += x;
      rmean /= double(R);
      for (std::size_t i = 0; i < R; ++i)
        for (std::size_t j = 0; j < C; ++j)
          u[i * C + j] = 1.0 / std::sqrt(row[i] / rmean) / std::sqrt(col[j]) * g[i * C + j];
    } else {
      for (std::size_t i = 0; i < n; ++i) {
        v[i] = b2t * v[i] + (1 - b2t) * (g[i] * g[i] + o.eps.first);
        u[i] = g[i] / std::sqrt(v[i]);
      }
    }
    double rms_u = 0;
    for (double x : u) rms_u += x * x;
    rms_u = std::sqrt(rms_u / double(n));
    const double clip = std::max(rms_u / o.clip_threshold, 1.0);
    for (auto& x : u) x = x / clip * lr;
    if (o.beta1)
      for (std::size_t i = 0; i < n; ++i) {
        m[i] = *o.beta1 * m[i] + (1 - *o.beta1) * u[i];
        u[i] = m[i];
      }
    for (std::size_t i = 0; i < n; ++i) {
      if (o.weight_decay != 0) p[i] += p[i] * (-o.weight_decay * lr);
      p[i] -= u[i];
    }
  }
};

void check_against_reference(const optim::adafactor_options& o, std::size_t R, std::size_t C) {
  INFO("shape [" << R << "," << C << "]");
  const std::size_t n = C ? R * C : R;
  rng g(3);
  std::vector<double> ref(n);
  for (auto& x : ref) x = g.normal();
  auto p = parameter<double>(make_tensor<double>(C ? shape_t{R, C} : shape_t{R}, ref));
  optim::adafactor<double> opt({p}, o);
  adafactor_reference r(o, R, C);
  for (int k = 0; k < 4; ++k) {
    std::vector<double> grad(n);
    for (auto& x : grad) x = g.normal() * (k == 2 ? 1e-3 : 1.0);  // one small step: no clipping
    set_grad(p, grad);
    opt.step();
    r.step(ref, grad);
    for (std::size_t i = 0; i < n; ++i) {
      INFO("step " << k << " element " << i);
      REQUIRE_THAT(p.value().data()[i], WithinRel(ref[i], 1e-12));
    }
  }
}

}  // namespace

TEST_CASE("adafactor matches transformers' Adafactor step by step", "[optim][adafactor]") {
  optim::adafactor_options o;
  o.lr = 0.01;
  SECTION("defaults (manual lr, no first moment)") {
    check_against_reference(o, 3, 4);
    check_against_reference(o, 5, 0);
  }
  SECTION("beta1 and weight decay") {
    o.beta1 = 0.9;
    o.weight_decay = 0.1;
    check_against_reference(o, 4, 3);
    check_against_reference(o, 6, 0);
  }
  SECTION("relative step, parameter scaling, warmup") {
    o.relative_step = true;
    o.scale_parameter = true;
    check_against_reference(o, 3, 5);
    o.warmup_init = true;
    check_against_reference(o, 3, 5);
    check_against_reference(o, 4, 0);
  }
  SECTION("a tight clip threshold and a different decay rate") {
    o.clip_threshold = 0.1;
    o.decay_rate = -0.5;
    check_against_reference(o, 2, 7);
  }
}

TEST_CASE("adafactor's first step by hand", "[optim][adafactor]") {
  // t = 1: β2_t = 0, so R = mean_cols(G²), C = mean_rows(G²) (eps[0] = 1e-30 is negligible) and
  // u = G·rsqrt(R/mean(R))·rsqrt(C). G = [[1, 2], [3, 4]]:
  //   R = [2.5, 12.5], mean 7.5 -> rsqrt(R/7.5) = [sqrt(3), sqrt(0.6)];  C = [5, 10].
  //   u = [[sqrt(3)/sqrt(5), 2·sqrt(3)/sqrt(10)], [3·sqrt(0.6)/sqrt(5), 4·sqrt(0.6)/sqrt(10)]]
  //     = [[0.774597, 1.095445], [1.039230, 0.979796]];  RMS(u) = 0.9797959 < 1: no clipping.
  auto p = parameter<double>(zeros<double>({2, 2}));
  optim::adafactor_options o;
  o.lr = 0.1;
  optim::adafactor<double> opt({p}, o);
  set_grad(p, {1.0, 2.0, 3.0, 4.0});
  opt.step();
  const std::vector<double> expected{-0.1 * std::sqrt(3.0 / 5), -0.2 * std::sqrt(3.0 / 10),
                                     -0.3 * std::sqrt(0.6 / 5), -0.4 * std::sqrt(0.6 / 10)};
  for (std::size_t i = 0; i < 4; ++i) REQUIRE_THAT(p.value().data()[i], WithinRel(expected[i], 1e-12));
  const auto& st = opt.named_state().at(0);
  REQUIRE(st.step == 1);
  REQUIRE_THAT(st.tensors.at("exp_avg_sq_row")(0), WithinRel(2.5, 1e-12));
  REQUIRE_THAT(st.tensors.at("exp_avg_sq_col")(1), WithinRel(10.0, 1e-12));
}

TEST_CASE("adafactor factors the last two dims of a 3-D parameter", "[optim][adafactor]") {
  // Each [3, 4] slice steps like a separate matrix.
  rng g(5);
  const auto v0 = randn<double>({2, 3, 4}, g), grad = randn<double>({2, 3, 4}, g);
  auto p3 = parameter<double>(v0);
  optim::adafactor_options o;
  o.clip_threshold = 1e6;  // clipping is over the whole tensor; keep it out of the comparison
  optim::adafactor<double> opt3({p3}, o);
  peft::detail::accumulate(*p3.get(), tensor<double>(grad));
  opt3.step();
  const auto& st = opt3.named_state().at(0);
  REQUIRE(shape_of(st.tensors.at("exp_avg_sq_row")) == shape_t{2, 3});
  REQUIRE(shape_of(st.tensors.at("exp_avg_sq_col")) == shape_t{2, 4});
  for (std::size_t b = 0; b < 2; ++b) {
    tensor<double> vb = tensor<double>::from_shape({3, 4}), gb = tensor<double>::from_shape({3, 4});
    std::copy(v0.data() + 12 * b, v0.data() + 12 * (b + 1), vb.data());
    std::copy(grad.data() + 12 * b, grad.data() + 12 * (b + 1), gb.data());
    auto p2 = parameter<double>(vb);
    optim::adafactor<double> opt2({p2}, o);
    peft::detail::accumulate(*p2.get(), tensor<double>(gb));
    opt2.step();
    for (std::size_t i = 0; i < 12; ++i)
      REQUIRE_THAT(p3.value().data()[12 * b + i], WithinRel(p2.value().data()[i], 1e-12));
  }
}

TEST_CASE("adafactor state: factored rows and columns, bytes, save and load", "[optim][adafactor]") {
  auto W = parameter<float>(zeros<float>({6, 4}));
  auto b = parameter<float>(zeros<float>({5}));
  optim::adafactor_options o;
  o.beta1 = 0.9;
  optim::adafactor<float> opt({W, b}, o);
  REQUIRE(opt.name() == "adafactor");
  rng g(1);
  for (int k = 0; k < 3; ++k) {
    W.zero_grad();
    b.zero_grad();
    peft::detail::accumulate(*W.get(), randn<float>({6, 4}, g));
    peft::detail::accumulate(*b.get(), randn<float>({5}, g));
    opt.step();
  }
  // W: exp_avg [6,4] + row [6] + col [4]; b: exp_avg [5] + exp_avg_sq [5].
  REQUIRE(opt.state_bytes(0) == (24 + 6 + 4) * sizeof(float));
  REQUIRE(opt.state_bytes(1) == (5 + 5) * sizeof(float));
  REQUIRE(opt.planned_state_bytes(0) == opt.state_bytes(0));

  auto st = opt.named_state();
  auto W2 = parameter<float>(W.value());
  auto b2 = parameter<float>(b.value());
  optim::adafactor<float> opt2({W2, b2}, o);
  opt2.load_state(st);
  for (int k = 0; k < 3; ++k) {
    const auto gw = randn<float>({6, 4}, g), gb = randn<float>({5}, g);
    for (auto* v : {&W, &W2}) {
      v->zero_grad();
      peft::detail::accumulate(*v->get(), tensor<float>(gw));
    }
    for (auto* v : {&b, &b2}) {
      v->zero_grad();
      peft::detail::accumulate(*v->get(), tensor<float>(gb));
    }
    opt.step();
    opt2.step();
  }
  REQUIRE(std::memcmp(W.value().data(), W2.value().data(), 24 * sizeof(float)) == 0);
  REQUIRE(std::memcmp(b.value().data(), b2.value().data(), 5 * sizeof(float)) == 0);

  auto bad = st;
  bad.at(0).tensors["exp_avg_sq_row"] = zeros<float>({4});
  REQUIRE_THROWS_WITH(opt2.load_state(bad), Contains("exp_avg_sq_row") && Contains("[6]"));
  bad = st;
  bad.at(1).tensors.erase("exp_avg_sq");
  REQUIRE_THROWS_WITH(opt2.load_state(bad), Contains("exp_avg_sq"));
}

TEST_CASE("adafactor fits a least-squares problem", "[optim][adafactor]") {
  rng g(2);
  const tensor<double> X = randn<double>({32, 6}, g), Wt = randn<double>({5, 6}, g);
  const matrix<double> Y = as_matrix(X) * as_matrix(Wt).transpose();
  auto W = parameter<double>(zeros<double>({5, 6}));
  optim::adafactor_options o;
  o.lr = 0.05;
  o.beta1 = 0.9;
  optim::adafactor<double> opt({W}, o);
  auto loss = [&] { return 0.5 * (as_matrix(X) * as_matrix(W.value()).transpose() - Y).squaredNorm() / 32; };
  const double l0 = loss();
  for (int k = 0; k < 400; ++k) {
    const matrix<double> R = as_matrix(X) * as_matrix(W.value()).transpose() - Y;
    W.zero_grad();
    peft::detail::accumulate(*W.get(), to_tensor(matrix<double>(R.transpose() * as_matrix(X) / 32.0)));
    opt.step();
  }
  INFO(l0 << " -> " << loss());
  REQUIRE(loss() < 1e-3 * l0);
}

TEST_CASE("adafactor rejects bad options, naming them", "[optim][adafactor]") {
  auto p = parameter<float>(zeros<float>({2, 2}));
  auto bad = [&](auto set, const char* what) {
    optim::adafactor_options o;
    set(o);
    INFO(what);
    REQUIRE_THROWS_WITH(optim::adafactor<float>({p}, o), Contains(what));
  };
  bad([](auto& o) { o.lr = -1; }, "lr");
  bad([](auto& o) { o.eps.first = -1; }, "eps[0]");
  bad([](auto& o) { o.eps.second = -1; }, "eps[1]");
  bad([](auto& o) { o.clip_threshold = 0; }, "clip_threshold");
  bad([](auto& o) { o.decay_rate = 0.5; }, "decay_rate");
  bad([](auto& o) { o.beta1 = 1.0; }, "beta1");
  bad([](auto& o) { o.weight_decay = -0.1; }, "weight_decay");
  bad([](auto& o) { o.warmup_init = true; }, "warmup_init");
  // Checked again at step time (groups are mutable).
  optim::adafactor<float> opt({p});
  opt.group(0).clip_threshold = -1;
  peft::detail::accumulate(*p.get(), zeros<float>({2, 2}));
  REQUIRE_THROWS_WITH(opt.step(), Contains("clip_threshold"));
}
