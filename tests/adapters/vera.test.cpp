#include <catch2/catch.hpp>

#include <cmath>

#include "peft/adapters/adapted_linear.hpp"
#include "peft/adapters/vera.hpp"
#include "peft/autograd/grad_check.hpp"

using namespace peft;
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

namespace {
template <class T>
std::shared_ptr<adapted_linear<T>> make_layer(std::size_t in, std::size_t out,
                                              std::shared_ptr<vera_shared<T>> shared,
                                              vera_config cfg, bool bias = true) {
  rng g(11);
  auto base = std::make_shared<nn::linear<T>>(in, out, bias, g);
  base->freeze();
  auto a = std::make_shared<vera<T>>(in, out, std::move(shared), cfg);
  return std::make_shared<adapted_linear<T>>(base, a);
}
vera<double>& adapter_of(adapted_linear<double>& l) {
  return static_cast<vera<double>&>(l.get_adapter());
}
// Random non-trivial scalings (λ_b = 0 at init would hide B).
void randomise(vera<double>& a, std::uint64_t seed) {
  rng g(seed);
  fill_normal(a.vera_lambda_b.value(), 0.0, 1.0, g);
  fill_normal(a.vera_lambda_d.value(), 0.0, 1.0, g);
}
double max_abs(const matrix<double>& m) { return m.cwiseAbs().maxCoeff(); }
}  // namespace

TEST_CASE("VeRA forward is h = W0 x + Λ_b B Λ_d A x", "[adapters][vera]") {
  // Kopiczko et al. 2024, eq. (2): h = W0·x + ΔW·x = W0·x + Λ_b·B·Λ_d·A·x, with A [r, in],
  // B [out, r] frozen random and shared, Λ_b = diag(b), Λ_d = diag(d) trained.
  auto shared = std::make_shared<vera_shared<double>>(4, 9, 7, 5);
  vera_config cfg;
  cfg.r = 4;
  auto layer = make_layer<double>(6, 5, shared, cfg);
  auto& a = adapter_of(*layer);
  randomise(a, 1);
  rng g(2);
  auto x = constant<double>(randn<double>({2, 3, 6}, g));
  auto y = layer->forward(x);
  REQUIRE(y.shape() == shape_t{2, 3, 5});

  // Dense reference built by hand from the shared buffers: A = vera_A[:, :in], B = vera_B[:out, :].
  const matrix<double> A = as_matrix(shared->vera_A()).block(0, 0, 4, 6);
  const matrix<double> B = as_matrix(shared->vera_B()).block(0, 0, 5, 4);
  matrix<double> Lb = as_vector(a.vera_lambda_b.value()).asDiagonal();
  matrix<double> Ld = as_vector(a.vera_lambda_d.value()).asDiagonal();
  const matrix<double> dW = Lb * B * Ld * A;
  const matrix<double> W = as_matrix(layer->base_layer->weight.value());
  matrix<double> ref = as_matrix(x.value()) * (W + dW).transpose();
  ref.rowwise() += as_vector(layer->base_layer->bias.value()).transpose();
  REQUIRE(max_abs(as_matrix(y.value()) - ref) < 1e-12);
  REQUIRE(max_abs(a.delta_weight(W) - dW) < 1e-13);
  matrix<double> Bf, Af;
  REQUIRE(a.factors(Bf, Af));
  REQUIRE(max_abs(Bf * Af - dW) < 1e-13);
  REQUIRE(a.scaling() == 1.0);
}

TEST_CASE("VeRA defaults as PEFT; identity at init", "[adapters][vera]") {
  vera_config d;
  REQUIRE(d.r == 256);
  REQUIRE(d.d_initial == 0.1);
  REQUIRE(d.dropout == 0.0);
  REQUIRE(d.projection_prng_key == 0);
  REQUIRE(d.save_projection);
  REQUIRE(d.init_weights);

  auto shared = std::make_shared<vera_shared<double>>(8, 10, 10, 0);
  vera_config cfg;
  cfg.r = 8;
  auto layer = make_layer<double>(10, 6, shared, cfg);
  auto& a = adapter_of(*layer);
  REQUIRE(a.peft_type() == "VERA");
  REQUIRE(a.vera_lambda_d.shape() == shape_t{8});
  REQUIRE(a.vera_lambda_b.shape() == shape_t{6});
  for (double v : a.vera_lambda_d.value()) REQUIRE(v == 0.1);
  for (double v : a.vera_lambda_b.value()) REQUIRE(v == 0.0);
  // Only the two vectors are this layer's parameters; the projections live at model scope.
  auto names = a.named_parameters();
  REQUIRE(names.size() == 2);
  REQUIRE(names[0].first == "vera_lambda_b");
  REQUIRE(names[1].first == "vera_lambda_d");
  REQUIRE(a.num_parameters() == 8 + 6);

  rng g(3);
  auto x = constant<double>(randn<double>({4, 10}, g));
  auto y = layer->forward(x);
  auto y0 = layer->base_layer->forward(x);
  REQUIRE(max_abs(as_matrix(y.value()) - as_matrix(y0.value())) == 0.0);

  // init_weights = false: PEFT leaves λ_b = 1 and λ_d ~ N(0, 1).
  cfg.init_weights = false;
  vera<double> b(10, 6, shared, cfg);
  for (double v : b.vera_lambda_b.value()) REQUIRE(v == 1.0);
  REQUIRE(as_vector(b.vera_lambda_d.value()).cwiseAbs().maxCoeff() > 0.0);
}

TEST_CASE("VeRA shared projections: kaiming-uniform, same key same bits", "[adapters][vera]") {
  // PEFT's _kaiming_init: gain sqrt(2), bound sqrt(3)·gain/sqrt(fan_in), fan_in = columns.
  vera_shared<double> s1(16, 200, 150, 42), s2(16, 200, 150, 42), s3(16, 200, 150, 43);
  REQUIRE(s1.vera_A().shape()[0] == 16);
  REQUIRE(s1.vera_A().shape()[1] == 200);
  REQUIRE(s1.vera_B().shape()[0] == 150);
  REQUIRE(s1.vera_B().shape()[1] == 16);
  const double bA = std::sqrt(6.0 / 200), bB = std::sqrt(6.0 / 16);
  const double mA = as_vector(s1.vera_A()).cwiseAbs().maxCoeff();
  const double mB = as_vector(s1.vera_B()).cwiseAbs().maxCoeff();
  REQUIRE(mA <= bA);
  REQUIRE(mA > 0.95 * bA);
  REQUIRE(mB <= bB);
  REQUIRE(mB > 0.95 * bB);
  REQUIRE(std::abs(as_vector(s1.vera_A()).mean()) < 0.02);
  // Same key: bit-identical. Different key: different.
  REQUIRE(as_vector(s1.vera_A()) == as_vector(s2.vera_A()));
  REQUIRE(as_vector(s1.vera_B()) == as_vector(s2.vera_B()));
  REQUIRE((as_vector(s1.vera_A()) - as_vector(s3.vera_A())).cwiseAbs().minCoeff() > 0.0);
  REQUIRE(as_vector(s1.vera_B()) != as_vector(s3.vera_B()));
  REQUIRE(s1.generated_from_key());
  REQUIRE(s1.key() == 42);

  // Float regeneration matches the double one up to rounding (same stream).
  vera_shared<float> sf(16, 200, 150, 42);
  REQUIRE((as_vector(sf.vera_A()).cast<double>() - as_vector(s1.vera_A())).cwiseAbs().maxCoeff() <
          1e-7);
}

TEST_CASE("VeRA layers of different sizes slice one shared pair without copying",
          "[adapters][vera]") {
  const shape_t big{12, 7}, small{5, 9};  // [out, in]
  REQUIRE(vera_max_shape({big, small}) == shape_t{12, 9});
  auto shared = std::make_shared<vera_shared<double>>(6, std::vector<shape_t>{big, small}, 3);
  REQUIRE(shared->max_out() == 12);
  REQUIRE(shared->max_in() == 9);
  vera_config cfg;
  cfg.r = 6;
  auto l1 = make_layer<double>(7, 12, shared, cfg);
  auto l2 = make_layer<double>(9, 5, shared, cfg);
  auto& a1 = adapter_of(*l1);
  auto& a2 = adapter_of(*l2);
  REQUIRE(a1.shared() == a2.shared());

  // The blocks alias the shared buffers: same data pointer, the buffer's row stride.
  for (auto* a : {&a1, &a2}) {
    auto Ab = a->A_block();
    auto Bb = a->B_block();
    REQUIRE(Ab.data() == shared->vera_A().data());
    REQUIRE(Bb.data() == shared->vera_B().data());
    REQUIRE(Ab.outerStride() == 9);
    REQUIRE(Bb.outerStride() == 6);
    REQUIRE(Ab.rows() == 6);
    REQUIRE(Ab.cols() == Eigen::Index(a->in_features()));
    REQUIRE(Bb.rows() == Eigen::Index(a->out_features()));
    for (Eigen::Index i = 0; i < Ab.rows(); ++i)
      for (Eigen::Index j = 0; j < Ab.cols(); ++j) REQUIRE(Ab(i, j) == shared->vera_A()(i, j));
    for (Eigen::Index i = 0; i < Bb.rows(); ++i)
      for (Eigen::Index j = 0; j < Bb.cols(); ++j) REQUIRE(Bb(i, j) == shared->vera_B()(i, j));
  }

  // Each layer's output uses its own blocks.
  randomise(a1, 4);
  randomise(a2, 5);
  rng g(6);
  for (auto* l : {l1.get(), l2.get()}) {
    auto& a = adapter_of(*l);
    const std::size_t in = a.in_features(), out = a.out_features();
    auto x = constant<double>(randn<double>({3, in}, g));
    const matrix<double> A = as_matrix(shared->vera_A()).block(0, 0, 6, Eigen::Index(in));
    const matrix<double> B = as_matrix(shared->vera_B()).block(0, 0, Eigen::Index(out), 6);
    const matrix<double> dW = as_vector(a.vera_lambda_b.value()).asDiagonal() * B *
                              as_vector(a.vera_lambda_d.value()).asDiagonal() * A;
    auto y = l->forward(x);
    auto y0 = l->base_layer->forward(x);
    REQUIRE(max_abs(as_matrix(y.value()) - as_matrix(y0.value()) -
                    as_matrix(x.value()) * dW.transpose()) < 1e-12);
  }

  // Loading new projections in place changes what both layers see (they hold views, not copies).
  auto x = constant<double>(randn<double>({2, 7}, g));
  const tensor<double> y_before = l1->forward(x).value();
  vera_shared<double> other(6, 9, 12, 99);
  shared->load_state_dict(other.state_dict());
  REQUIRE(a1.A_block().data() == shared->vera_A().data());
  REQUIRE(as_vector(shared->vera_A()) == as_vector(other.vera_A()));
  REQUIRE(max_abs(as_matrix(l1->forward(x).value()) - as_matrix(y_before)) > 1e-6);
}

TEST_CASE("VeRA save_projection: PEFT's names, construct from loaded tensors, shape checks",
          "[adapters][vera][io]") {
  vera_shared<double> s(4, 6, 5, 8);
  auto sd = s.state_dict();
  REQUIRE(sd.size() == 2);
  REQUIRE(sd.count("base_model.vera_A") == 1);
  REQUIRE(sd.count("base_model.vera_B") == 1);
  auto loaded = vera_shared<double>::from_state_dict(sd);
  REQUIRE_FALSE(loaded->generated_from_key());
  REQUIRE(as_vector(loaded->vera_A()) == as_vector(s.vera_A()));
  REQUIRE(as_vector(loaded->vera_B()) == as_vector(s.vera_B()));
  REQUIRE_NOTHROW(s.check_matches(sd["base_model.vera_A"], sd["base_model.vera_B"]));

  // A loaded pair of different shapes is refused, naming the shapes.
  vera_shared<double> wrong(4, 7, 5, 8);
  REQUIRE_THROWS_AS(s.check_matches(wrong.vera_A(), wrong.vera_B()), shape_error);
  REQUIRE_THROWS_WITH(s.load_state_dict(wrong.state_dict()), Catch::Contains("[4,7]") &&
                                                                 Catch::Contains("[4,6]"));
  // Inconsistent r between A and B, wrong rank of tensor, missing key.
  REQUIRE_THROWS_WITH((vera_shared<double>(zeros<double>({4, 6}), zeros<double>({5, 3}))),
                      Catch::Contains("[4,6]") && Catch::Contains("[5,3]"));
  REQUIRE_THROWS_AS((vera_shared<double>(zeros<double>({4, 6, 1}), zeros<double>({5, 4}))),
                    shape_error);
  sd.erase("base_model.vera_B");
  REQUIRE_THROWS_WITH(vera_shared<double>::from_state_dict(sd),
                      Catch::Contains("base_model.vera_B"));
}

TEST_CASE("VeRA rank below the shared rank uses the first r rows", "[adapters][vera]") {
  auto shared = std::make_shared<vera_shared<double>>(6, 5, 4, 1);
  vera_config cfg;
  cfg.r = 3;
  auto layer = make_layer<double>(5, 4, shared, cfg);
  auto& a = adapter_of(*layer);
  randomise(a, 2);
  const matrix<double> A = as_matrix(shared->vera_A()).block(0, 0, 3, 5);
  const matrix<double> B = as_matrix(shared->vera_B()).block(0, 0, 4, 3);
  const matrix<double> dW = as_vector(a.vera_lambda_b.value()).asDiagonal() * B *
                            as_vector(a.vera_lambda_d.value()).asDiagonal() * A;
  REQUIRE(max_abs(a.delta_weight(as_matrix(layer->base_layer->weight.value())) - dW) < 1e-13);
}

TEST_CASE("VeRA gradcheck: input, λ_b, λ_d, and an unfrozen base", "[adapters][vera][gradcheck]") {
  auto shared = std::make_shared<vera_shared<double>>(3, 5, 6, 7);
  vera_config cfg;
  cfg.r = 3;
  auto layer = make_layer<double>(4, 3, shared, cfg);
  auto& a = adapter_of(*layer);
  randomise(a, 3);
  rng g(4);
  auto x = parameter<double>(randn<double>({2, 2, 4}, g));
  SECTION("frozen base") {
    auto r = grad_check([&](auto&) { return layer->forward(x); },
                        {x, a.vera_lambda_b, a.vera_lambda_d});
    INFO(r.report);
    REQUIRE(r.ok);
  }
  SECTION("trainable base and bias") {
    layer->base_layer->unfreeze();
    auto r = grad_check([&](auto&) { return layer->forward(x); },
                        {x, a.vera_lambda_b, a.vera_lambda_d, layer->base_layer->weight,
                         layer->base_layer->bias});
    INFO(r.report);
    REQUIRE(r.ok);
  }
  SECTION("one scaling frozen: the other still exact, frozen one gets no grad") {
    a.vera_lambda_b.set_requires_grad(false);
    auto r = grad_check([&](auto&) { return layer->forward(x); }, {x, a.vera_lambda_d});
    INFO(r.report);
    REQUIRE(r.ok);
    REQUIRE_FALSE(a.vera_lambda_b.has_grad());
  }
  SECTION("with dropout (mask replayed on every evaluation)") {
    vera_config c2 = cfg;
    c2.dropout = 0.4;
    c2.seed = 5;
    auto l2 = make_layer<double>(4, 3, shared, c2);
    auto& a2 = adapter_of(*l2);
    randomise(a2, 6);
    const rng saved = a2.dropout_rng();
    auto r = grad_check(
        [&](auto&) {
          a2.dropout_rng() = saved;
          return l2->forward(x);
        },
        {x, a2.vera_lambda_b, a2.vera_lambda_d});
    INFO(r.report);
    REQUIRE(r.ok);
    // The mask really drops something: train output differs from eval output.
    a2.dropout_rng() = saved;
    auto yt = l2->forward(x);
    l2->eval();
    auto ye = l2->forward(x);
    REQUIRE(max_abs(as_matrix(yt.value()) - as_matrix(ye.value())) > 1e-6);
  }
}

TEST_CASE("VeRA in float: only the scalings get gradients", "[adapters][vera]") {
  auto shared = std::make_shared<vera_shared<float>>(4, 6, 5, 2);
  vera_config cfg;
  cfg.r = 4;
  auto layer = make_layer<float>(6, 5, shared, cfg);
  rng g(5);
  auto x = constant<float>(randn<float>({4, 6}, g));
  auto y = layer->forward(x);
  y.backward(ones<float>(y.shape()));
  for (auto& [name, v] : layer->named_parameters()) {
    INFO(name);
    REQUIRE(v.has_grad() == (name.rfind("vera_lambda_", 0) == 0));
  }
  // λ_b = 0 at init: dλ_d = 0, dλ_b ≠ 0 (as in LoRA, one side starts the learning).
  auto& a = static_cast<vera<float>&>(layer->get_adapter());
  REQUIRE(as_vector(a.vera_lambda_d.grad()).cwiseAbs().maxCoeff() == 0.0f);
  REQUIRE(as_vector(a.vera_lambda_b.grad()).cwiseAbs().maxCoeff() > 0.0f);
}

TEST_CASE("VeRA bad input gives clear errors", "[adapters][vera]") {
  auto shared = std::make_shared<vera_shared<float>>(4, 6, 5, 0);
  vera_config cfg;
  cfg.r = 0;
  REQUIRE_THROWS_WITH((vera<float>(4, 4, shared, cfg)), Catch::Contains("rank"));
  cfg.r = 4;
  cfg.dropout = 1.0;
  REQUIRE_THROWS_WITH((vera<float>(4, 4, shared, cfg)), Catch::Contains("dropout"));
  cfg.dropout = 0;
  cfg.d_initial = std::nan("");
  REQUIRE_THROWS_WITH((vera<float>(4, 4, shared, cfg)), Catch::Contains("d_initial"));
  cfg.d_initial = 0.1;
  REQUIRE_THROWS_WITH((vera<float>(4, 4, nullptr, cfg)), Catch::Contains("null"));
  // Layer larger than the shared projections: shape_error naming both.
  REQUIRE_THROWS_AS((vera<float>(7, 5, shared, cfg)), shape_error);
  REQUIRE_THROWS_WITH((vera<float>(6, 9, shared, cfg)),
                      Catch::Contains("[9,6]") && Catch::Contains("[4,6]") &&
                          Catch::Contains("[5,4]"));
  cfg.r = 5;  // rank above the shared rank
  REQUIRE_THROWS_WITH((vera<float>(6, 5, shared, cfg)), Catch::Contains("r=5"));
  REQUIRE_THROWS_AS((vera_shared<float>(0, 3, 3, 0)), value_error);
  REQUIRE_THROWS_AS(vera_max_shape({}), value_error);
  REQUIRE_THROWS_WITH(vera_max_shape({shape_t{3, 4, 5}}), Catch::Contains("[3,4,5]"));
  cfg.r = 4;
  auto layer = make_layer<float>(6, 5, shared, cfg);
  auto x = constant<float>(zeros<float>({2, 5}));
  REQUIRE_THROWS_WITH(layer->forward(x), Catch::Contains("[2,5]"));
}
