#include <catch2/catch.hpp>

#include <cmath>

#include "peft/adapters/adapted_linear.hpp"
#include "peft/adapters/nola.hpp"
#include "peft/autograd/grad_check.hpp"

using namespace peft;
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

namespace {
template <class T>
std::shared_ptr<adapted_linear<T>> make_layer(std::size_t in, std::size_t out, nola_config cfg,
                                              bool bias = true) {
  rng g(11);
  auto base = std::make_shared<nn::linear<T>>(in, out, bias, g);
  base->freeze();
  return std::make_shared<adapted_linear<T>>(base, std::make_shared<nola<T>>(in, out, cfg));
}
nola<double>& adapter_of(adapted_linear<double>& l) {
  return static_cast<nola<double>&>(l.get_adapter());
}
void randomise(nola<double>& a, std::uint64_t seed) {
  rng g(seed);
  fill_normal(a.nola_alpha.value(), 0.0, 1.0, g);
  fill_normal(a.nola_beta.value(), 0.0, 1.0, g);
}
double max_abs(const matrix<double>& m) { return m.cwiseAbs().maxCoeff(); }
nola_config small_config(nola_storage st = nola_storage::cached) {
  nola_config c;
  c.r = 3;
  c.alpha = 6;
  c.num_basis_A = 5;
  c.num_basis_B = 4;
  c.seed = 21;
  c.storage = st;
  return c;
}
}  // namespace

TEST_CASE("NOLA forward is h = W0 x + s (Σ β_j B_j)(Σ α_i A_i) x", "[adapters][nola]") {
  // Koohpayegani et al. 2024, eq. (1)-(2): ΔW = A×B with A = Σ_{i=1..k} α_i A_i and
  // B = Σ_{j=1..l} β_j B_j over frozen random bases; only α and β are trained. In our
  // [out, in] layout ΔW = s·B·A with B [out, r], A [r, in], s = alpha / r.
  for (auto st : {nola_storage::cached, nola_storage::regenerate}) {
    auto layer = make_layer<double>(6, 5, small_config(st));
    auto& a = adapter_of(*layer);
    randomise(a, 1);
    matrix<double> A = matrix<double>::Zero(3, 6), B = matrix<double>::Zero(5, 3);
    for (std::size_t i = 0; i < 5; ++i) A += a.nola_alpha.value()(i) * as_matrix(a.basis_A(i));
    for (std::size_t j = 0; j < 4; ++j) B += a.nola_beta.value()(j) * as_matrix(a.basis_B(j));
    const matrix<double> dW = 2.0 * B * A;
    REQUIRE(a.scaling() == 2.0);
    REQUIRE(max_abs(a.combined_A() - A) < 1e-14);
    REQUIRE(max_abs(a.combined_B() - B) < 1e-14);

    rng g(2);
    auto x = constant<double>(randn<double>({2, 3, 6}, g));
    auto y = layer->forward(x);
    const matrix<double> W = as_matrix(layer->base_layer->weight.value());
    matrix<double> ref = as_matrix(x.value()) * (W + dW).transpose();
    ref.rowwise() += as_vector(layer->base_layer->bias.value()).transpose();
    REQUIRE(max_abs(as_matrix(y.value()) - ref) < 1e-12);
    REQUIRE(max_abs(a.delta_weight(W) - dW) < 1e-13);
    matrix<double> Bf, Af;
    REQUIRE(a.factors(Bf, Af));
    REQUIRE(max_abs(Bf * Af - dW) < 1e-13);
  }
}

TEST_CASE("NOLA init: β = 0 gives identity, α = 1/sqrt(k); parameter names", "[adapters][nola]") {
  nola_config d;
  REQUIRE(d.r == 8);
  REQUIRE(d.alpha == 8);
  REQUIRE(d.num_basis_A == 512);
  REQUIRE(d.num_basis_B == 512);
  REQUIRE(d.storage == nola_storage::cached);

  auto layer = make_layer<double>(6, 5, small_config());
  auto& a = adapter_of(*layer);
  REQUIRE(a.peft_type() == "NOLA");
  auto names = a.named_parameters();
  REQUIRE(names.size() == 2);
  REQUIRE(names[0].first == "nola_alpha");
  REQUIRE(names[1].first == "nola_beta");
  REQUIRE(a.nola_alpha.shape() == shape_t{5});
  REQUIRE(a.nola_beta.shape() == shape_t{4});
  REQUIRE(a.num_parameters() == 9);  // independent of in, out and r
  for (double v : a.nola_alpha.value()) REQUIRE_THAT(v, WithinRel(1.0 / std::sqrt(5.0), 1e-15));
  for (double v : a.nola_beta.value()) REQUIRE(v == 0.0);
  rng g(3);
  auto x = constant<double>(randn<double>({4, 6}, g));
  auto y = layer->forward(x);
  auto y0 = layer->base_layer->forward(x);
  REQUIRE(max_abs(as_matrix(y.value()) - as_matrix(y0.value())) == 0.0);
}

TEST_CASE("NOLA bases: kaiming-uniform bounds, one stream per basis, same seed same bits",
          "[adapters][nola]") {
  nola_config c;
  c.r = 4;
  c.num_basis_A = 64;
  c.num_basis_B = 64;
  c.seed = 5;
  nola<double> a(100, 50, c), a2(100, 50, c);
  c.seed = 6;
  nola<double> b(100, 50, c);
  double mA = 0, mB = 0, sA = 0;
  for (std::size_t i = 0; i < 64; ++i) {
    const tensor<double> Ai = a.basis_A(i), Bi = a.basis_B(i);
    REQUIRE(shape_of(Ai) == shape_t{4, 100});
    REQUIRE(shape_of(Bi) == shape_t{50, 4});
    mA = std::max(mA, as_vector(Ai).cwiseAbs().maxCoeff());
    mB = std::max(mB, as_vector(Bi).cwiseAbs().maxCoeff());
    sA += as_vector(Ai).squaredNorm();
    REQUIRE(as_vector(Ai) == as_vector(a2.basis_A(i)));  // same seed: bit-identical
    REQUIRE(as_vector(Bi) == as_vector(a2.basis_B(i)));
    REQUIRE(as_vector(Ai) != as_vector(b.basis_A(i)));   // other seed: different
    REQUIRE(as_vector(Bi) != as_vector(b.basis_B(i)));
    if (i > 0) REQUIRE(as_vector(Ai) != as_vector(a.basis_A(i - 1)));  // bases differ
  }
  REQUIRE(mA <= 0.1);  // 1/sqrt(in)
  REQUIRE(mA > 0.095);
  REQUIRE(mB <= 0.5);  // 1/sqrt(r)
  REQUIRE(mB > 0.475);
  // α = 1/sqrt(k): A starts with the variance of one basis (LoRA's kaiming-uniform A).
  const double var_basis = sA / (64.0 * 400.0);
  const matrix<double> A0 = a.combined_A();
  REQUIRE_THAT(A0.squaredNorm() / 400.0, WithinRel(var_basis, 0.2));
  REQUIRE_THROWS_WITH(a.basis_A(64), Catch::Contains("64"));
}

TEST_CASE("NOLA cached and regenerated bases give bit-identical results", "[adapters][nola]") {
  auto lc = make_layer<double>(7, 4, small_config(nola_storage::cached));
  auto lr = make_layer<double>(7, 4, small_config(nola_storage::regenerate));
  auto& ac = adapter_of(*lc);
  auto& ar = adapter_of(*lr);
  REQUIRE(ac.basis_bytes() == (5 * 3 * 7 + 4 * 4 * 3) * sizeof(double));
  REQUIRE(ar.basis_bytes() == 0);
  randomise(ac, 4);
  randomise(ar, 4);
  rng g(5);
  auto x = parameter<double>(randn<double>({3, 7}, g));
  tensor<double> seed = randn<double>({3, 4}, g);
  auto yc = lc->forward(x);
  yc.backward(seed);
  const tensor<double> gxc = x.grad(), gac = ac.nola_alpha.grad(), gbc = ac.nola_beta.grad();
  x.zero_grad();
  auto yr = lr->forward(x);
  yr.backward(seed);
  // Same bases bit for bit; the combination order differs (GEMV vs loop), so compare closely.
  REQUIRE(max_abs(as_matrix(yc.value()) - as_matrix(yr.value())) < 1e-13);
  REQUIRE(max_abs(as_matrix(x.grad()) - as_matrix(gxc)) < 1e-13);
  REQUIRE((as_vector(ar.nola_alpha.grad()) - as_vector(gac)).cwiseAbs().maxCoeff() < 1e-13);
  REQUIRE((as_vector(ar.nola_beta.grad()) - as_vector(gbc)).cwiseAbs().maxCoeff() < 1e-13);
  for (std::size_t i = 0; i < 5; ++i) REQUIRE(as_vector(ac.basis_A(i)) == as_vector(ar.basis_A(i)));
}

TEST_CASE("NOLA coefficient gradients are ⟨dA, A_i⟩ and ⟨dB, B_j⟩", "[adapters][nola]") {
  // With ΔW = s·B·A: dL/dA = s·Bᵀ·dyᵀ·x, dL/dB = s·dyᵀ·x·Aᵀ, then project onto each basis.
  auto layer = make_layer<double>(6, 5, small_config());
  auto& a = adapter_of(*layer);
  randomise(a, 6);
  rng g(7);
  auto x = constant<double>(randn<double>({4, 6}, g));
  tensor<double> seed = randn<double>({4, 5}, g);
  layer->forward(x).backward(seed);
  const matrix<double> A = a.combined_A(), B = a.combined_B();
  const auto xm = as_matrix(x.value());
  const auto dy = as_matrix(seed);
  const matrix<double> dA = 2.0 * B.transpose() * dy.transpose() * xm;
  const matrix<double> dB = 2.0 * dy.transpose() * xm * A.transpose();
  for (std::size_t i = 0; i < 5; ++i)
    REQUIRE_THAT(a.nola_alpha.grad()(i),
                 WithinAbs((as_matrix(a.basis_A(i)).array() * dA.array()).sum(), 1e-12));
  for (std::size_t j = 0; j < 4; ++j)
    REQUIRE_THAT(a.nola_beta.grad()(j),
                 WithinAbs((as_matrix(a.basis_B(j)).array() * dB.array()).sum(), 1e-12));
}

TEST_CASE("NOLA gradcheck (both storages, with and without dropout)",
          "[adapters][nola][gradcheck]") {
  rng g(8);
  auto x = parameter<double>(randn<double>({2, 2, 4}, g));
  for (auto st : {nola_storage::cached, nola_storage::regenerate}) {
    for (double p : {0.0, 0.4}) {
      INFO("storage " << int(st) << ", dropout " << p);
      nola_config c = small_config(st);
      c.dropout = p;
      auto layer = make_layer<double>(4, 3, c);
      auto& a = adapter_of(*layer);
      randomise(a, 9);
      layer->base_layer->unfreeze();
      const rng saved = a.dropout_rng();
      auto r = grad_check(
          [&](auto&) {
            a.dropout_rng() = saved;  // same mask on every evaluation
            return layer->forward(x);
          },
          {x, a.nola_alpha, a.nola_beta, layer->base_layer->weight, layer->base_layer->bias});
      INFO(r.report);
      REQUIRE(r.ok);
    }
  }
}

TEST_CASE("NOLA in float: only the coefficients get gradients", "[adapters][nola]") {
  nola_config c;
  c.r = 2;
  c.num_basis_A = 3;
  c.num_basis_B = 3;
  auto layer = make_layer<float>(6, 5, c);
  rng g(5);
  auto x = constant<float>(randn<float>({4, 6}, g));
  auto y = layer->forward(x);
  y.backward(ones<float>(y.shape()));
  for (auto& [name, v] : layer->named_parameters()) {
    INFO(name);
    REQUIRE(v.has_grad() == (name.rfind("nola_", 0) == 0));
  }
  // β = 0 at init: dα = 0, dβ ≠ 0 (as LoRA's A and B).
  auto& a = static_cast<nola<float>&>(layer->get_adapter());
  REQUIRE(as_vector(a.nola_alpha.grad()).cwiseAbs().maxCoeff() == 0.0f);
  REQUIRE(as_vector(a.nola_beta.grad()).cwiseAbs().maxCoeff() > 0.0f);
}

TEST_CASE("NOLA bad input gives clear errors", "[adapters][nola]") {
  nola_config c = small_config();
  c.r = 0;
  REQUIRE_THROWS_WITH((nola<float>(4, 4, c)), Catch::Contains("rank"));
  c = small_config();
  c.num_basis_A = 0;
  REQUIRE_THROWS_WITH((nola<float>(4, 4, c)), Catch::Contains("num_basis_A"));
  c = small_config();
  c.num_basis_B = 0;
  REQUIRE_THROWS_WITH((nola<float>(4, 4, c)), Catch::Contains("num_basis_B"));
  c = small_config();
  c.dropout = -0.1;
  REQUIRE_THROWS_WITH((nola<float>(4, 4, c)), Catch::Contains("dropout"));
  c = small_config();
  c.alpha = INFINITY;
  REQUIRE_THROWS_WITH((nola<float>(4, 4, c)), Catch::Contains("alpha"));
  REQUIRE_THROWS_AS((nola<float>(0, 4, small_config())), value_error);
  auto layer = make_layer<float>(4, 3, small_config());
  auto x = constant<float>(zeros<float>({2, 5}));
  REQUIRE_THROWS_WITH(layer->forward(x), Catch::Contains("[2,5]"));
}
