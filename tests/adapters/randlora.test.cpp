#include <catch2/catch.hpp>

#include <Eigen/SVD>
#include <cmath>

#include "peft/adapters/adapted_linear.hpp"
#include "peft/adapters/randlora.hpp"
#include "peft/autograd/grad_check.hpp"

using namespace peft;
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

namespace {
template <class T>
std::shared_ptr<adapted_linear<T>> make_layer(std::size_t in, std::size_t out,
                                              std::shared_ptr<randlora_shared<T>> shared,
                                              randlora_config cfg, bool bias = true) {
  rng g(11);
  auto base = std::make_shared<nn::linear<T>>(in, out, bias, g);
  base->freeze();
  auto a = std::make_shared<randlora<T>>(in, out, std::move(shared), cfg);
  return std::make_shared<adapted_linear<T>>(base, a);
}
randlora<double>& adapter_of(adapted_linear<double>& l) {
  return static_cast<randlora<double>&>(l.get_adapter());
}
void randomise(randlora<double>& a, std::uint64_t seed) {
  rng g(seed);
  fill_normal(a.randlora_lambda.value(), 0.0, 1.0, g);
  fill_normal(a.randlora_gamma.value(), 0.0, 1.0, g);
}
double max_abs(const matrix<double>& m) { return m.cwiseAbs().maxCoeff(); }
randlora_config small_config() {
  randlora_config c;
  c.r = 2;
  c.alpha = 3;  // s = 1.5
  return c;
}
double sample_std(const tensor<double>& t) {
  const auto v = as_vector(t);
  const double m = v.mean();
  return std::sqrt((v.array() - m).square().sum() / double(v.size() - 1));
}

// ΔW by hand, from the paper: s·Σ_j B_j·Λ_j·A·Γ_j (transposed when in > out), with the shared
// buffers sliced as PEFT does and B_j[:, k] = column k·n + j of randlora_B[:max_d, :n, :]
// flattened to [max_d, n·r] (PEFT's pairing of the flattened tensors).
matrix<double> dense_delta(const randlora<double>& a) {
  const auto& sh = *a.shared();
  const std::size_t r = a.rank(), n = a.num_bases(), mn = a.min_dim(), mx = a.max_dim();
  matrix<double> A(r, mn);
  for (std::size_t k = 0; k < r; ++k)
    for (std::size_t i = 0; i < mn; ++i) A(k, i) = sh.randlora_A()(k, 0, i);
  const auto lam = as_matrix(a.randlora_lambda.value());  // [r, n]
  const auto gam = as_matrix(a.randlora_gamma.value());   // [n, min_dim]
  matrix<double> core = matrix<double>::Zero(mx, mn);
  for (std::size_t j = 0; j < n; ++j) {
    matrix<double> Bj(mx, r);
    for (std::size_t k = 0; k < r; ++k) {
      const std::size_t c = k * n + j;
      for (std::size_t i = 0; i < mx; ++i) Bj(i, k) = sh.randlora_B()(i, c / r, c % r);
    }
    const vector<double> lj = lam.col(j), gj = gam.row(j).transpose();
    core += Bj * lj.asDiagonal() * A * gj.asDiagonal();
  }
  core *= a.scaling();
  if (a.in_features() <= a.out_features()) return core;
  return core.transpose();
}
}  // namespace

TEST_CASE("RandLoRA forward is h = W0 x + s Σ_n B_n Λ_n A Γ_n x", "[adapters][randlora]") {
  // Albert et al. 2025, eq. (4): ΔW = Σ_{n=1..N} B_n Λ_n A Γ_n with N = ceil(min(in,out)/r)
  // frozen random bases B_n [max_dim, r], one shared A [r, min_dim], trained diagonals Λ_n
  // (r×r) and Γ_n (min_dim×min_dim); PEFT scales by randlora_alpha / r and applies A to the
  // smaller dimension (ΔW transposed when in > out).
  auto shared = std::make_shared<randlora_shared<double>>(2, 8, 8, 5);
  for (auto [in, out] : {std::pair<std::size_t, std::size_t>{5, 7}, {7, 5}, {6, 6}, {3, 8}}) {
    INFO("in " << in << ", out " << out);
    auto layer = make_layer<double>(in, out, shared, small_config());
    auto& a = adapter_of(*layer);
    REQUIRE(a.num_bases() == (std::min(in, out) + 1) / 2);
    REQUIRE(a.scales_input() == (in <= out));
    randomise(a, 1);
    const matrix<double> dW = dense_delta(a);
    REQUIRE(dW.rows() == Eigen::Index(out));
    REQUIRE(dW.cols() == Eigen::Index(in));
    const matrix<double> W = as_matrix(layer->base_layer->weight.value());
    REQUIRE(max_abs(a.delta_weight(W) - dW) < 1e-12);
    matrix<double> Bf, Af;
    REQUIRE(a.factors(Bf, Af));
    REQUIRE(max_abs(Bf * Af - dW) < 1e-12);

    rng g(2);
    auto x = constant<double>(randn<double>({2, 3, in}, g));
    auto y = layer->forward(x);
    matrix<double> ref = as_matrix(x.value()) * (W + dW).transpose();
    ref.rowwise() += as_vector(layer->base_layer->bias.value()).transpose();
    REQUIRE(max_abs(as_matrix(y.value()) - ref) < 1e-11);
  }
}

TEST_CASE("RandLoRA update is full rank", "[adapters][randlora]") {
  // The point of RandLoRA: n·r >= min(in, out), so ΔW reaches full rank (LoRA cannot).
  auto shared = std::make_shared<randlora_shared<double>>(3, 20, 12, 9);
  for (auto [in, out] : {std::pair<std::size_t, std::size_t>{12, 20}, {20, 12}}) {
    auto layer = make_layer<double>(in, out, shared, [] {
      randlora_config c;
      c.r = 3;
      return c;
    }());
    auto& a = adapter_of(*layer);
    REQUIRE(a.num_bases() == 4);
    randomise(a, 3);
    const matrix<double> dW = a.delta_weight(as_matrix(layer->base_layer->weight.value()));
    Eigen::JacobiSVD<matrix<double>> svd(dW);
    const auto sv = svd.singularValues();
    REQUIRE(sv.size() == 12);
    REQUIRE(sv(11) > 1e-8 * sv(0));
  }
}

TEST_CASE("RandLoRA defaults and init as PEFT; identity at init", "[adapters][randlora]") {
  randlora_config d;
  REQUIRE(d.r == 32);
  REQUIRE(d.alpha == 640);
  REQUIRE(d.scaling() == 20.0);
  REQUIRE(d.dropout == 0.0);
  REQUIRE(d.projection_prng_key == 0);
  REQUIRE(d.save_projection);
  REQUIRE_FALSE(d.sparse);
  REQUIRE_FALSE(d.very_sparse);
  REQUIRE(d.basis() == randlora_basis::dense);

  auto shared = std::make_shared<randlora_shared<double>>(32, std::vector<shape_t>{{40, 70}}, 0);
  REQUIRE(shape_of(shared->randlora_A()) == shape_t{32, 1, 40});
  REQUIRE(shape_of(shared->randlora_B()) == shape_t{70, 2, 32});
  auto layer = make_layer<double>(70, 40, shared, d);
  auto& a = adapter_of(*layer);
  REQUIRE(a.peft_type() == "RANDLORA");
  REQUIRE(a.scaling() == 20.0);
  auto names = a.named_parameters();
  REQUIRE(names.size() == 2);
  REQUIRE(names[0].first == "randlora_lambda");
  REQUIRE(names[1].first == "randlora_gamma");
  REQUIRE(a.randlora_lambda.shape() == shape_t{32, 2});  // [r, n], n = ceil(40 / 32)
  REQUIRE(a.randlora_gamma.shape() == shape_t{2, 40});   // [n, min_dim]
  for (double v : a.randlora_lambda.value()) REQUIRE(v == 0.0);
  for (double v : a.randlora_gamma.value()) REQUIRE(v == 1.0 / 40.0);
  rng g(3);
  auto x = constant<double>(randn<double>({4, 70}, g));
  auto y = layer->forward(x);
  auto y0 = layer->base_layer->forward(x);
  REQUIRE(max_abs(as_matrix(y.value()) - as_matrix(y0.value())) == 0.0);

  d.init_weights = false;  // PEFT's non-default: λ ~ N(0,1), γ = 1/max(in, out)
  randlora<double> b(70, 40, shared, d);
  REQUIRE(as_vector(b.randlora_lambda.value()).cwiseAbs().maxCoeff() > 0.0);
  for (double v : b.randlora_gamma.value()) REQUIRE(v == 1.0 / 70.0);
}

TEST_CASE("RandLoRA shared bases: PEFT shapes, std-normalised, same key same bits",
          "[adapters][randlora]") {
  randlora_shared<double> s1(4, 30, 50, 42), s2(4, 30, 50, 42), s3(4, 30, 50, 43);
  REQUIRE(s1.rank() == 4);
  REQUIRE(s1.min_dim() == 30);
  REQUIRE(s1.max_dim() == 50);
  REQUIRE(s1.num_bases() == 8);
  REQUIRE(shape_of(s1.randlora_A()) == shape_t{4, 1, 30});
  REQUIRE(shape_of(s1.randlora_B()) == shape_t{50, 8, 4});
  // Divided by the (unbiased) std; kaiming-uniform shape kept: |v| <= ~sqrt(3).
  REQUIRE_THAT(sample_std(s1.randlora_A()), WithinAbs(1.0, 1e-12));
  REQUIRE_THAT(sample_std(s1.randlora_B()), WithinAbs(1.0, 1e-12));
  const double mB = as_vector(s1.randlora_B()).cwiseAbs().maxCoeff();
  REQUIRE(mB < 1.9);
  REQUIRE(mB > 1.5);
  REQUIRE(as_vector(s1.randlora_A()) == as_vector(s2.randlora_A()));
  REQUIRE(as_vector(s1.randlora_B()) == as_vector(s2.randlora_B()));
  REQUIRE(as_vector(s1.randlora_A()) != as_vector(s3.randlora_A()));
  REQUIRE(as_vector(s1.randlora_B()) != as_vector(s3.randlora_B()));

  SECTION("sparse: ternary, P(±1) = 1/6 each") {
    randlora_config c;
    c.sparse = true;
    REQUIRE(c.basis() == randlora_basis::sparse);
    randlora_shared<double> sp(8, 200, 300, 1, c.basis()), sp2(8, 200, 300, 1, c.basis());
    REQUIRE(as_vector(sp.randlora_B()) == as_vector(sp2.randlora_B()));
    const auto v = as_vector(sp.randlora_B());
    const double hi = v.maxCoeff();
    std::size_t nz = 0;
    for (Eigen::Index i = 0; i < v.size(); ++i) {
      REQUIRE((v[i] == 0.0 || std::abs(std::abs(v[i]) - hi) < 1e-12));
      nz += v[i] != 0.0;
    }
    REQUIRE_THAT(double(nz) / double(v.size()), WithinAbs(1.0 / 3.0, 0.02));
    REQUIRE_THAT(sample_std(sp.randlora_B()), WithinAbs(1.0, 1e-12));
  }
  SECTION("very sparse: P(±1) = 1/(2 sqrt(min_dim)) each; wins over sparse") {
    randlora_config c;
    c.sparse = true;
    c.very_sparse = true;
    REQUIRE(c.basis() == randlora_basis::very_sparse);
    randlora_shared<double> vs(8, 100, 300, 1, c.basis());
    const auto v = as_vector(vs.randlora_B());
    std::size_t nz = 0;
    for (Eigen::Index i = 0; i < v.size(); ++i) nz += v[i] != 0.0;
    REQUIRE_THAT(double(nz) / double(v.size()), WithinAbs(1.0 / 10.0, 0.01));  // 1/sqrt(100)
  }
}

TEST_CASE("RandLoRA layers of different sizes slice one shared pair without copying",
          "[adapters][randlora]") {
  auto shared = std::make_shared<randlora_shared<double>>(
      2, std::vector<shape_t>{{9, 4}, {5, 7}}, 3);  // weights [out, in]
  REQUIRE(randlora_max_shape({{9, 4}, {5, 7}}) == shape_t{9, 7});
  REQUIRE(shared->min_dim() == 7);
  REQUIRE(shared->max_dim() == 9);
  REQUIRE(shared->num_bases() == 4);
  auto l1 = make_layer<double>(4, 9, shared, small_config());
  auto l2 = make_layer<double>(7, 5, shared, small_config());
  for (auto* l : {l1.get(), l2.get()}) {
    auto& a = adapter_of(*l);
    REQUIRE(a.shared() == shared);
    auto Ab = a.A_block();
    auto Bb = a.B_block();
    REQUIRE(Ab.data() == shared->randlora_A().data());
    REQUIRE(Bb.data() == shared->randlora_B().data());
    REQUIRE(Ab.outerStride() == 7);
    REQUIRE(Bb.outerStride() == 8);  // num_bases · r of the buffer
    REQUIRE(Ab.cols() == Eigen::Index(a.min_dim()));
    REQUIRE(Bb.rows() == Eigen::Index(a.max_dim()));
    REQUIRE(Bb.cols() == Eigen::Index(a.num_bases() * 2));
    for (Eigen::Index i = 0; i < Bb.rows(); ++i)
      for (Eigen::Index c = 0; c < Bb.cols(); ++c)
        REQUIRE(Bb(i, c) == shared->randlora_B()(std::size_t(i), std::size_t(c) / 2,
                                                 std::size_t(c) % 2));
    randomise(a, 4);
    REQUIRE(max_abs(a.delta_weight(as_matrix(l->base_layer->weight.value())) - dense_delta(a)) <
            1e-12);
  }
  // Loading other bases in place changes what the layers compute (views, not copies).
  auto& a1 = adapter_of(*l1);
  const matrix<double> before = dense_delta(a1);
  randlora_shared<double> other(2, 7, 9, 77);
  shared->load_state_dict(other.state_dict());
  REQUIRE(a1.A_block().data() == shared->randlora_A().data());
  REQUIRE(max_abs(a1.delta_weight(as_matrix(l1->base_layer->weight.value())) - before) > 1e-6);
  REQUIRE(max_abs(a1.delta_weight(as_matrix(l1->base_layer->weight.value())) - dense_delta(a1)) <
          1e-12);
}

TEST_CASE("RandLoRA save_projection: PEFT's names, construct from loaded tensors, shape checks",
          "[adapters][randlora][io]") {
  randlora_shared<double> s(2, 6, 5, 8);
  auto sd = s.state_dict();
  REQUIRE(sd.size() == 2);
  REQUIRE(sd.count("base_model.randlora_A") == 1);
  REQUIRE(sd.count("base_model.randlora_B") == 1);
  auto loaded = randlora_shared<double>::from_state_dict(sd);
  REQUIRE_FALSE(loaded->generated_from_key());
  REQUIRE(as_vector(loaded->randlora_A()) == as_vector(s.randlora_A()));
  REQUIRE(as_vector(loaded->randlora_B()) == as_vector(s.randlora_B()));
  REQUIRE(loaded->num_bases() == 3);
  REQUIRE_NOTHROW(s.check_matches(sd["base_model.randlora_A"], sd["base_model.randlora_B"]));
  randlora_shared<double> wrong(2, 7, 5, 8);
  REQUIRE_THROWS_WITH(s.load_state_dict(wrong.state_dict()),
                      Catch::Contains("[2,1,5]") && Catch::Contains("[7,3,2]"));
  REQUIRE_THROWS_AS((randlora_shared<double>(zeros<double>({2, 5}), zeros<double>({6, 3, 2}))),
                    shape_error);
  REQUIRE_THROWS_WITH(
      (randlora_shared<double>(zeros<double>({2, 1, 5}), zeros<double>({6, 3, 4}))),
      Catch::Contains("[6,3,4]"));
  sd.erase("base_model.randlora_A");
  REQUIRE_THROWS_WITH(randlora_shared<double>::from_state_dict(sd),
                      Catch::Contains("base_model.randlora_A"));
}

TEST_CASE("RandLoRA gradcheck (both orientations, with and without dropout)",
          "[adapters][randlora][gradcheck]") {
  auto shared = std::make_shared<randlora_shared<double>>(2, 6, 6, 7);
  rng g(8);
  for (auto [in, out] : {std::pair<std::size_t, std::size_t>{3, 5}, {5, 3}}) {
    for (double p : {0.0, 0.4}) {
      INFO("in " << in << ", out " << out << ", dropout " << p);
      randlora_config c = small_config();
      c.dropout = p;
      c.seed = 3;
      auto layer = make_layer<double>(in, out, shared, c);
      auto& a = adapter_of(*layer);
      randomise(a, 9);
      layer->base_layer->unfreeze();
      auto x = parameter<double>(randn<double>({2, 2, in}, g));
      const rng saved = a.dropout_rng();
      auto r = grad_check(
          [&](auto&) {
            a.dropout_rng() = saved;  // same mask on every evaluation
            return layer->forward(x);
          },
          {x, a.randlora_lambda, a.randlora_gamma, layer->base_layer->weight,
           layer->base_layer->bias});
      INFO(r.report);
      REQUIRE(r.ok);
    }
  }
  SECTION("frozen γ: λ still exact and γ gets no gradient") {
    auto layer = make_layer<double>(3, 5, shared, small_config());
    auto& a = adapter_of(*layer);
    randomise(a, 10);
    a.randlora_gamma.set_requires_grad(false);
    auto x = parameter<double>(randn<double>({4, 3}, g));
    auto r = grad_check([&](auto&) { return layer->forward(x); }, {x, a.randlora_lambda});
    INFO(r.report);
    REQUIRE(r.ok);
    REQUIRE_FALSE(a.randlora_gamma.has_grad());
  }
}

TEST_CASE("RandLoRA in float: only λ and γ get gradients", "[adapters][randlora]") {
  randlora_config c;
  c.r = 2;
  c.alpha = 2;
  auto shared = std::make_shared<randlora_shared<float>>(2, 6, 5, 1);
  auto layer = make_layer<float>(6, 5, shared, c);
  rng g(5);
  auto x = constant<float>(randn<float>({4, 6}, g));
  auto y = layer->forward(x);
  y.backward(ones<float>(y.shape()));
  for (auto& [name, v] : layer->named_parameters()) {
    INFO(name);
    REQUIRE(v.has_grad() == (name.rfind("randlora_", 0) == 0));
  }
  // λ = 0 at init: dγ = 0, dλ ≠ 0.
  auto& a = static_cast<randlora<float>&>(layer->get_adapter());
  REQUIRE(as_vector(a.randlora_gamma.grad()).cwiseAbs().maxCoeff() == 0.0f);
  REQUIRE(as_vector(a.randlora_lambda.grad()).cwiseAbs().maxCoeff() > 0.0f);
}

TEST_CASE("RandLoRA bad input gives clear errors", "[adapters][randlora]") {
  auto shared = std::make_shared<randlora_shared<float>>(2, 6, 5, 0);
  randlora_config c = small_config();
  c.r = 0;
  REQUIRE_THROWS_WITH((randlora<float>(4, 4, shared, c)), Catch::Contains("rank"));
  c = small_config();
  c.dropout = 1.5;
  REQUIRE_THROWS_WITH((randlora<float>(4, 4, shared, c)), Catch::Contains("dropout"));
  c = small_config();
  c.alpha = NAN;
  REQUIRE_THROWS_WITH((randlora<float>(4, 4, shared, c)), Catch::Contains("alpha"));
  c = small_config();
  REQUIRE_THROWS_WITH((randlora<float>(4, 4, nullptr, c)), Catch::Contains("null"));
  // Rank must match the shared bases; the layer must fit them.
  c.r = 3;
  REQUIRE_THROWS_WITH((randlora<float>(4, 4, shared, c)),
                      Catch::Contains("r=3") && Catch::Contains("[2,1,5]"));
  c.r = 2;
  REQUIRE_THROWS_WITH((randlora<float>(7, 6, shared, c)),
                      Catch::Contains("max_dim=7") && Catch::Contains("[6,3,2]"));
  REQUIRE_THROWS_AS((randlora<float>(6, 6, shared, c)), shape_error);  // min_dim 6 > 5
  REQUIRE_THROWS_AS((randlora_shared<float>(2, 0, 5, 0)), value_error);
  REQUIRE_THROWS_WITH((randlora_shared<float>(1, 1, 1, 0)), Catch::Contains("std"));
  REQUIRE_THROWS_AS(randlora_max_shape({}), value_error);
  auto layer = make_layer<float>(6, 5, shared, c);
  auto x = constant<float>(zeros<float>({2, 5}));
  REQUIRE_THROWS_WITH(layer->forward(x), Catch::Contains("[2,5]"));
}
