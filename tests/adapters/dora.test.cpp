#include <catch2/catch.hpp>

#include <cmath>
#include <memory>

#include "peft/adapters/adapted_linear.hpp"
#include "peft/adapters/dora.hpp"
#include "peft/adapters/lora.hpp"
#include "peft/autograd/grad_check.hpp"
#include "peft/autograd/ops/add.hpp"
#include "peft/autograd/ops/div.hpp"
#include "peft/autograd/ops/matmul.hpp"
#include "peft/autograd/ops/mul.hpp"
#include "peft/autograd/ops/sqrt.hpp"
#include "peft/autograd/ops/sum.hpp"
#include "peft/autograd/ops/transpose.hpp"

using namespace peft;
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

namespace {

template <class T>
struct dora_layer {
  std::shared_ptr<adapted_linear<T>> layer;
  std::shared_ptr<dora<T>> a;
  std::shared_ptr<lora<T>> inner;
  variable<T>& W() { return layer->base_layer->weight; }
  variable<T>& b() { return layer->base_layer->bias; }
};

// A frozen Linear with DoRA over LoRA. random_b: both factors random (Δ ≠ 0 at init).
template <class T>
dora_layer<T> make_layer(std::size_t in, std::size_t out, lora_config cfg, dora_config dc = {},
                         bool random_b = true, bool bias = true) {
  rng g(11);
  auto base = std::make_shared<nn::linear<T>>(in, out, bias, g);
  base->freeze();
  std::shared_ptr<lora<T>> inner;
  if (random_b)
    inner = std::make_shared<lora<T>>(in, out, cfg, init::random_both{0.3});
  else
    inner = std::make_shared<lora<T>>(in, out, cfg);
  auto a = std::make_shared<dora<T>>(inner, as_matrix(base->weight.value()), dc);
  return {std::make_shared<adapted_linear<T>>(base, a), a, inner};
}

// Moves m away from its init (m = n there, which would hide m / n mistakes).
template <class T>
void perturb_magnitude(dora<T>& a, std::uint64_t seed) {
  rng g(seed);
  for (auto& e : a.lora_magnitude_vector.value()) e *= T(1 + g.normal(0.0, 0.3));
}

lora_config small_cfg(std::size_t r = 2, double alpha = 3) {
  lora_config c;
  c.r = r;
  c.alpha = alpha;
  return c;
}

// Dense reference: V = W + s·B·A, W' = diag(m / ‖V‖_c)·V.
matrix<double> dense_merged(const dora_layer<double>& L) {
  const matrix<double> W = as_matrix(L.layer->base_layer->weight.value());
  const matrix<double> V =
      W + L.inner->scaling() * as_matrix(L.inner->lora_B.value()) * as_matrix(L.inner->lora_A.value());
  const vector<double> n = V.rowwise().norm();
  return as_vector(L.a->lora_magnitude_vector.value()).cwiseQuotient(n).asDiagonal() * V;
}

// The same layer as an op composition on the tape:
//   y = (m / n) ⊙ (x·Wᵀ + s·(x_d·Aᵀ)·Bᵀ) + b,   n = ‖W + s·B·A‖_c
// with n a constant (detached) or n = sqrt(sum((W + s·B·A)², axis 1)) on the tape (attached).
// x_d = x ⊙ mask when a dropout mask is given.
variable<double> composition(dora_layer<double>& L, const variable<double>& x, bool attached,
                             const tensor<double>* mask = nullptr) {
  auto& A = L.inner->lora_A;
  auto& B = L.inner->lora_B;
  auto& W = L.W();
  const double s = L.inner->scaling();
  const variable<double> xd = mask ? mul(x, constant<double>(*mask)) : x;
  auto z = matmul(x, transpose(W)) + matmul(matmul(xd, transpose(A)), transpose(B)) * s;
  variable<double> n;
  if (attached) {
    auto V = W + matmul(B, A) * s;
    n = sqrt(sum(V * V, {1}));
  } else {
    const matrix<double> V = as_matrix(W.value()) + s * as_matrix(B.value()) * as_matrix(A.value());
    tensor<double> nt = zeros<double>({std::size_t(V.rows())});
    as_vector(nt) = V.rowwise().norm();
    n = constant<double>(nt);
  }
  return z * (L.a->lora_magnitude_vector / n) + L.b();
}

double max_diff(const tensor<double>& a, const tensor<double>& b) {
  return (as_vector(a) - as_vector(b)).cwiseAbs().maxCoeff();
}

// A factored adapter with a different parametrisation than LoRA, to show that the attached-norm
// gradient reaches any inner adapter through its own backward_delta:
//   Δ(x) = ((x·Aᵀ) ⊙ g)·Bᵀ,  Bf = B·diag(g),  Af = A.
template <class T>
class gated_lowrank : public adapter<T> {
 public:
  gated_lowrank(std::size_t in, std::size_t out, std::size_t r, rng& gen) : adapter<T>(in, out) {
    A = this->register_parameter("gate_A", randn<T>({r, in}, gen, 0, 0.4));
    B = this->register_parameter("gate_B", randn<T>({out, r}, gen, 0, 0.4));
    g = this->register_parameter("gate_g", randn<T>({r}, gen, 1, 0.3));
  }
  std::string peft_type() const override { return "TEST"; }
  std::string method() const override { return "gated"; }
  void forward_delta(matrix_cref<T> x, matrix_ref<T> y, adapter_ctx<T>& ctx, bool) override {
    ctx.m.resize(1);
    ctx.m[0].noalias() = x * as_matrix(A.value()).transpose();
    y.noalias() += (ctx.m[0] * as_vector(g.value()).asDiagonal()) * as_matrix(B.value()).transpose();
  }
  void backward_delta(matrix_cref<T> dy, matrix_cref<T> x, const adapter_ctx<T>& ctx,
                      matrix_ref<T>* dx) override {
    const auto gv = as_vector(g.value());
    const matrix<T>& xa = ctx.m[0];
    const matrix<T> t = dy * as_matrix(B.value());  // [N, r]
    if (auto* gB = detail::grad_target(B)) as_matrix(*gB).noalias() += dy.transpose() * (xa * gv.asDiagonal());
    if (auto* gg = detail::grad_target(g)) as_vector(*gg) += (t.array() * xa.array()).colwise().sum().transpose().matrix();
    const matrix<T> tg = t * gv.asDiagonal();
    if (auto* gA = detail::grad_target(A)) as_matrix(*gA).noalias() += tg.transpose() * x;
    if (dx) dx->noalias() += tg * as_matrix(A.value());
  }
  matrix<T> delta_weight(matrix_cref<T>) const override {
    return as_matrix(B.value()) * as_vector(g.value()).asDiagonal() * as_matrix(A.value());
  }
  bool factors(matrix<T>& Bf, matrix<T>& Af) const override {
    Bf = as_matrix(B.value()) * as_vector(g.value()).asDiagonal();
    Af = as_matrix(A.value());
    return true;
  }
  variable<T> A, B, g;
};

// Additive but not factored (a full dense update): DoRA must refuse it.
template <class T>
class dense_delta : public adapter<T> {
 public:
  dense_delta(std::size_t in, std::size_t out) : adapter<T>(in, out) {
    D = this->register_parameter("D", zeros<T>({out, in}));
  }
  std::string peft_type() const override { return "TEST"; }
  std::string method() const override { return "dense"; }
  void forward_delta(matrix_cref<T> x, matrix_ref<T> y, adapter_ctx<T>&, bool) override {
    y.noalias() += x * as_matrix(D.value()).transpose();
  }
  void backward_delta(matrix_cref<T>, matrix_cref<T>, const adapter_ctx<T>&, matrix_ref<T>*) override {}
  matrix<T> delta_weight(matrix_cref<T>) const override { return as_matrix(D.value()); }
  variable<T> D;
};

}  // namespace

TEST_CASE("DoRA forward is W' = m (W0 + sBA) / ||W0 + sBA||_c", "[adapters][dora]") {
  // Liu et al. 2024, eq. (5): W' = m · (W0 + BA) / ‖W0 + BA‖_c, the norm taken per output row of
  // the [out, in] weight as in PEFT (weight_norm over dim=1); y = x·W'ᵀ + b.
  auto L = make_layer<double>(5, 4, small_cfg(3, 6));
  perturb_magnitude(*L.a, 1);
  rng g(2);
  auto x = constant<double>(randn<double>({2, 3, 5}, g));
  auto y = L.layer->forward(x);
  REQUIRE(y.shape() == shape_t{2, 3, 4});
  const matrix<double> Wp = dense_merged(L);
  matrix<double> ref = as_matrix(x.value()) * Wp.transpose();
  ref.rowwise() += as_vector(L.b().value()).transpose();
  REQUIRE((as_matrix(y.value()) - ref).cwiseAbs().maxCoeff() < 1e-12);
  // The merged weight has row norms m (the direction is unit-norm per row).
  const vector<double> rn = Wp.rowwise().norm();
  for (Eigen::Index i = 0; i < rn.size(); ++i)
    REQUIRE_THAT(rn[i], WithinRel(L.a->lora_magnitude_vector.value()(i), 1e-12));
  // delta_weight is W' − W.
  const matrix<double> W = as_matrix(L.W().value());
  REQUIRE((L.a->delta_weight(W) - (Wp - W)).cwiseAbs().maxCoeff() < 1e-12);
}

TEST_CASE("DoRA magnitude init is the row norm; identity at init", "[adapters][dora]") {
  SECTION("PEFT default init (B = 0): m = ||W_i||, output equals the base layer") {
    auto L = make_layer<double>(16, 6, small_cfg(4, 8), {}, /*random_b=*/false);
    const matrix<double> W = as_matrix(L.W().value());
    const auto m = as_vector(L.a->lora_magnitude_vector.value());
    REQUIRE(L.a->lora_magnitude_vector.shape() == shape_t{6});
    for (Eigen::Index i = 0; i < W.rows(); ++i) REQUIRE_THAT(m[i], WithinRel(W.row(i).norm(), 1e-14));
    rng g(3);
    auto x = constant<double>(randn<double>({3, 16}, g));
    auto y = L.layer->forward(x);
    auto y0 = L.layer->base_layer->forward(x);
    REQUIRE(max_diff(y.value(), y0.value()) < 1e-12);
  }
  SECTION("non-zero init: m = ||W_i + dW_i||, output equals the plain LoRA layer") {
    auto L = make_layer<double>(7, 5, small_cfg(3, 2));
    const matrix<double> W = as_matrix(L.W().value());
    const matrix<double> V = W + L.inner->delta_weight(W);
    const auto m = as_vector(L.a->lora_magnitude_vector.value());
    for (Eigen::Index i = 0; i < V.rows(); ++i) REQUIRE_THAT(m[i], WithinRel(V.row(i).norm(), 1e-12));
    rng g(4);
    auto x = constant<double>(randn<double>({4, 7}, g));
    auto y = L.layer->forward(x);
    adapted_linear<double> plain(L.layer->base_layer, L.inner);
    auto yl = plain.forward(x);
    REQUIRE(max_diff(y.value(), yl.value()) < 1e-12);
    REQUIRE(L.a->delta_weight(W).isApprox(L.inner->delta_weight(W), 1e-12));
  }
}

TEST_CASE("DoRA norms from the factors equal the dense row norms", "[adapters][dora]") {
  // n_i² = ‖W_i‖² + 2·(W·Afᵀ)_i·Bf_i + Bf_i·(Af·Afᵀ)·Bf_iᵀ, never forming Bf·Af.
  for (auto [in, out, r] : {std::tuple{6, 4, 2}, std::tuple{3, 5, 4}, std::tuple{9, 9, 9}}) {
    INFO("in=" << in << " out=" << out << " r=" << r);
    rng g(5 + in);
    lora_config c = small_cfg(std::size_t(r), 5);
    auto inner = std::make_shared<lora<double>>(in, out, c, init::random_both{0.5});
    tensor<double> Wt = randn<double>({std::size_t(out), std::size_t(in)}, g);
    dora<double> a(inner, as_matrix(Wt));
    for (auto& e : inner->lora_B.value()) e += g.normal(0.0, 0.7);  // move away from init
    const matrix<double> W = as_matrix(Wt);
    const matrix<double> V = W + inner->delta_weight(W);
    const vector<double> dense = V.rowwise().norm();
    const vector<double> n = a.weight_norm(W);
    for (Eigen::Index i = 0; i < n.size(); ++i) REQUIRE_THAT(n[i], WithinRel(dense[i], 1e-12));
  }
  SECTION("a zero row is clamped to norm_eps, and the layer stays finite and exact") {
    lora_config c = small_cfg(2, 2);
    auto inner = std::make_shared<lora<double>>(4, 3, c);  // B = 0
    tensor<double> Wt = zeros<double>({3, 4});
    as_matrix(Wt).row(0) << 1, 2, 3, 4;
    as_matrix(Wt).row(2) << -1, 0, 1, 0;
    dora_config dc;
    dc.norm_eps = 1e-9;
    dora<double> a(inner, as_matrix(Wt), dc);
    REQUIRE(a.lora_magnitude_vector.value()(1) == 1e-9);
    REQUIRE(a.weight_norm(as_matrix(Wt))[1] == 1e-9);
    adapter_ctx<double> ctx;
    rng g(6);
    tensor<double> x = randn<double>({2, 4}, g);
    matrix<double> y(2, 3);
    a.forward(as_matrix(x), as_matrix(Wt), nullptr, y, ctx, true);
    REQUIRE(y.allFinite());
    REQUIRE((y - as_matrix(x) * as_matrix(Wt).transpose()).cwiseAbs().maxCoeff() < 1e-12);
  }
}

TEST_CASE("DoRA parameters have PEFT's names and are shared with the inner adapter",
          "[adapters][dora]") {
  auto L = make_layer<float>(6, 5, small_cfg(3, 3));
  std::vector<std::string> names;
  for (auto& [n, v] : L.a->named_parameters()) names.push_back(n);
  REQUIRE(names == std::vector<std::string>{"lora_A.weight", "lora_B.weight", "lora_magnitude_vector"});
  auto p = L.a->named_parameters();
  REQUIRE(p[0].second.get() == L.inner->lora_A.get());  // the same node, not a copy
  REQUIRE(p[1].second.get() == L.inner->lora_B.get());
  REQUIRE(p[2].second.shape() == shape_t{5});
  REQUIRE(L.a->peft_type() == "LORA");
  REQUIRE(L.a->method() == "dora");
  REQUIRE(L.layer->type_name() == "dora_linear");
  REQUIRE(L.a->delta_depends_on_weight());
  matrix<float> Bf, Af;
  REQUIRE_FALSE(L.a->factors(Bf, Af));
  REQUIRE(L.a->scaling() == L.inner->scaling());
  REQUIRE(dora_config{}.detach_norm);  // paper §4.3 and PEFT detach the norm
  // The layer exposes base + adapter names as PEFT does in memory.
  std::size_t seen = 0;
  for (auto& [n, v] : L.layer->named_parameters()) seen += n == "lora_magnitude_vector";
  REQUIRE(seen == 1);
}

TEST_CASE("dora_lora builds DoRA over LoRA with an init policy", "[adapters][dora]") {
  rng g(7);
  tensor<float> W = randn<float>({4, 6}, g);
  lora_config c = small_cfg(2, 4);
  auto a = dora_lora<float>(6, 4, c, W);
  REQUIRE(a->in_features() == 6);
  REQUIRE(a->out_features() == 4);
  auto& inner = dynamic_cast<lora<float>&>(a->inner());
  for (float v : inner.lora_B.value()) REQUIRE(v == 0.0f);
  auto ag = dora_lora<float>(6, 4, c, W, init::gaussian{}, dora_config{false, 1e-8});
  REQUIRE_FALSE(ag->config().detach_norm);
  const auto m = as_vector(ag->lora_magnitude_vector.value());
  for (Eigen::Index i = 0; i < 4; ++i) REQUIRE_THAT(m[i], WithinRel(as_matrix(W).row(i).norm(), 1e-6f));
}

TEST_CASE("DoRA fused backward equals the op composition on the tape", "[adapters][dora][gradcheck]") {
  // Detached: n is a constant. Attached: n = sqrt(sum((W + sBA)², 1)) on the tape.
  tensor<double> gA_detached;
  for (bool attached : {false, true}) {
    INFO("attached norm: " << attached);
    dora_config dc;
    dc.detach_norm = !attached;
    auto L = make_layer<double>(5, 4, small_cfg(2, 3), dc);
    perturb_magnitude(*L.a, 2);
    L.layer->base_layer->unfreeze();
    rng g(8);
    auto x = parameter<double>(randn<double>({3, 5}, g));
    const tensor<double> seed = randn<double>({3, 4}, g);
    std::vector<variable<double>> vars{x, L.inner->lora_A, L.inner->lora_B,
                                       L.a->lora_magnitude_vector, L.W(), L.b()};
    for (auto& v : vars) v.zero_grad();
    auto y = L.layer->forward(x);
    y.backward(seed);
    std::vector<tensor<double>> fused;
    for (auto& v : vars) fused.push_back(v.grad());
    for (auto& v : vars) v.zero_grad();
    auto yr = composition(L, x, attached);
    REQUIRE(max_diff(yr.value(), y.value()) < 1e-12);
    yr.backward(seed);
    for (std::size_t k = 0; k < vars.size(); ++k) {
      INFO("variable " << k);
      REQUIRE(max_diff(vars[k].grad(), fused[k]) < 1e-12);
    }
    if (!attached)
      gA_detached = fused[1];
    else
      REQUIRE(max_diff(gA_detached, fused[1]) > 1e-3);  // the detach really changes dA
  }
}

TEST_CASE("DoRA gradcheck", "[adapters][dora][gradcheck]") {
  rng g(9);
  auto x = parameter<double>(randn<double>({2, 2, 4}, g));
  SECTION("detached norm: exact for x and m (n depends on neither)") {
    auto L = make_layer<double>(4, 3, small_cfg(2, 3));
    perturb_magnitude(*L.a, 3);
    auto r = grad_check([&](auto&) { return L.layer->forward(x); }, {x, L.a->lora_magnitude_vector});
    INFO(r.report);
    REQUIRE(r.ok);
    // A and B get the constant-n gradient, so finite differences must disagree with them.
    auto rab = grad_check([&](auto&) { return L.layer->forward(x); }, {L.inner->lora_A, L.inner->lora_B});
    REQUIRE_FALSE(rab.ok);
  }
  SECTION("detached reference (constant n) passes gradcheck in A and B") {
    auto L = make_layer<double>(4, 3, small_cfg(2, 3));
    perturb_magnitude(*L.a, 3);
    const matrix<double> Vd = as_matrix(L.W().value()) + L.inner->delta_weight(as_matrix(L.W().value()));
    tensor<double> nt = zeros<double>({3});
    as_vector(nt) = Vd.rowwise().norm();
    auto n = constant<double>(nt);
    auto ref = [&](auto&) {
      auto& A = L.inner->lora_A;
      auto& B = L.inner->lora_B;
      auto z = matmul(x, transpose(L.W())) + matmul(matmul(x, transpose(A)), transpose(B)) * L.inner->scaling();
      return z * (L.a->lora_magnitude_vector / n) + L.b();
    };
    auto r = grad_check(ref, {L.inner->lora_A, L.inner->lora_B});
    INFO(r.report);
    REQUIRE(r.ok);
    // and the fused detached gradients equal it
    tensor<double> seed = randn<double>({2, 2, 3}, g);
    L.inner->lora_A.zero_grad();
    L.inner->lora_B.zero_grad();
    L.layer->forward(x).backward(seed);
    const tensor<double> fa = L.inner->lora_A.grad(), fb = L.inner->lora_B.grad();
    L.inner->lora_A.zero_grad();
    L.inner->lora_B.zero_grad();
    std::vector<variable<double>> none;
    ref(none).backward(seed);
    REQUIRE(max_diff(fa, L.inner->lora_A.grad()) < 1e-12);
    REQUIRE(max_diff(fb, L.inner->lora_B.grad()) < 1e-12);
  }
  SECTION("attached norm: input, A, B, m, trainable base and bias") {
    dora_config dc;
    dc.detach_norm = false;
    auto L = make_layer<double>(4, 3, small_cfg(2, 3), dc);
    perturb_magnitude(*L.a, 4);
    L.layer->base_layer->unfreeze();
    auto r = grad_check([&](auto&) { return L.layer->forward(x); },
                        {x, L.inner->lora_A, L.inner->lora_B, L.a->lora_magnitude_vector, L.W(), L.b()});
    INFO(r.report);
    REQUIRE(r.ok);
  }
  SECTION("attached norm at the PEFT init (B = 0) and with rank above in/out") {
    dora_config dc;
    dc.detach_norm = false;
    auto L0 = make_layer<double>(4, 3, small_cfg(2, 3), dc, /*random_b=*/false);
    perturb_magnitude(*L0.a, 5);
    auto r0 = grad_check([&](auto&) { return L0.layer->forward(x); },
                         {L0.inner->lora_A, L0.inner->lora_B, L0.a->lora_magnitude_vector});
    INFO(r0.report);
    REQUIRE(r0.ok);
    auto L5 = make_layer<double>(4, 3, small_cfg(5, 3), dc);
    perturb_magnitude(*L5.a, 6);
    auto r5 = grad_check([&](auto&) { return L5.layer->forward(x); },
                         {x, L5.inner->lora_A, L5.inner->lora_B, L5.a->lora_magnitude_vector});
    INFO(r5.report);
    REQUIRE(r5.ok);
  }
  SECTION("attached norm over a non-LoRA factored adapter") {
    rng gg(10);
    auto base = std::make_shared<nn::linear<double>>(4, 5, true, gg);
    base->freeze();
    auto inner = std::make_shared<gated_lowrank<double>>(4, 5, 2, gg);
    dora_config dc;
    dc.detach_norm = false;
    auto a = std::make_shared<dora<double>>(inner, as_matrix(base->weight.value()), dc);
    perturb_magnitude(*a, 7);
    adapted_linear<double> layer(base, a);
    auto r = grad_check([&](auto&) { return layer.forward(x); },
                        {x, inner->A, inner->B, inner->g, a->lora_magnitude_vector});
    INFO(r.report);
    REQUIRE(r.ok);
  }
}

TEST_CASE("DoRA dropout acts on the low-rank branch only; fused backward equals composition",
          "[adapters][dora][dropout]") {
  // y = (m / n) ⊙ (x·Wᵀ + s·(x ⊙ mask)·Aᵀ·Bᵀ) + b, mask ~ Bernoulli(1-p) / (1-p).
  lora_config cfg = small_cfg(2, 2);
  cfg.dropout = 0.5;
  cfg.seed = 9;
  auto L = make_layer<double>(6, 3, cfg);
  perturb_magnitude(*L.a, 8);
  rng g(11);
  auto x = parameter<double>(randn<double>({5, 6}, g));
  rng saved = L.inner->dropout_rng();
  adapter_ctx<double> ctx;
  matrix<double> yf(5, 3);
  L.a->forward(as_matrix(x.value()), as_matrix(L.W().value()), L.b().value().data(), yf, ctx, true);
  tensor<double> mask = zeros<double>({5, 6});
  as_matrix(mask) = ctx.m[1];  // LoRA's slot; DoRA appends its own after it
  int zeros_seen = 0;
  for (double v : mask) zeros_seen += v == 0.0;
  REQUIRE(zeros_seen > 3);
  REQUIRE(zeros_seen < 27);

  L.inner->dropout_rng() = saved;  // replay the same mask on the tape
  auto yt = L.layer->forward(x);
  REQUIRE((as_matrix(yt.value()) - yf).cwiseAbs().maxCoeff() == 0.0);
  const tensor<double> seed = randn<double>({5, 3}, g);
  std::vector<variable<double>> vars{x, L.inner->lora_A, L.inner->lora_B, L.a->lora_magnitude_vector};
  for (auto& v : vars) v.zero_grad();
  yt.backward(seed);
  std::vector<tensor<double>> fused;
  for (auto& v : vars) fused.push_back(v.grad());
  for (auto& v : vars) v.zero_grad();
  auto ref = composition(L, x, false, &mask);
  REQUIRE(max_diff(ref.value(), yt.value()) < 1e-12);
  ref.backward(seed);
  for (std::size_t k = 0; k < vars.size(); ++k) {
    INFO("variable " << k);
    REQUIRE(max_diff(vars[k].grad(), fused[k]) < 1e-12);
  }
}

TEST_CASE("DoRA merge gives the same output; unmerge restores W", "[adapters][dora][merge]") {
  auto L = make_layer<float>(8, 6, small_cfg(3, 6));
  perturb_magnitude(*L.a, 9);
  rng g(12);
  auto x = constant<float>(randn<float>({4, 8}, g));
  const tensor<float> W0 = L.W().value();
  auto y = L.layer->forward(x);
  L.layer->merge();
  REQUIRE(L.layer->merged());
  auto ym = L.layer->forward(x);
  REQUIRE((as_matrix(ym.value()) - as_matrix(y.value())).cwiseAbs().maxCoeff() < 1e-5f);
  // The merged weight's rows have norm m.
  const matrix<float> Wm = as_matrix(L.W().value());
  for (Eigen::Index i = 0; i < Wm.rows(); ++i)
    REQUIRE_THAT(Wm.row(i).norm(), WithinRel(L.a->lora_magnitude_vector.value()(i), 1e-5f));
  L.layer->unmerge();
  REQUIRE((as_matrix(L.W().value()) - as_matrix(W0)).cwiseAbs().maxCoeff() < 1e-6f);
  auto yu = L.layer->forward(x);
  REQUIRE((as_matrix(yu.value()) - as_matrix(y.value())).cwiseAbs().maxCoeff() < 1e-6f);
}

TEST_CASE("DoRA disabled is the base layer", "[adapters][dora]") {
  auto L = make_layer<double>(5, 4, small_cfg(2, 2));
  perturb_magnitude(*L.a, 10);
  L.a->set_enabled(false);
  rng g(13);
  auto x = constant<double>(randn<double>({3, 5}, g));
  REQUIRE(max_diff(L.layer->forward(x).value(), L.layer->base_layer->forward(x).value()) == 0.0);
  adapter_ctx<double> ctx;
  matrix<double> y(3, 4);
  L.a->forward(as_matrix(x.value()), as_matrix(L.W().value()), L.b().value().data(), y, ctx, true);
  REQUIRE((y - as_matrix(L.layer->base_layer->forward(x).value())).cwiseAbs().maxCoeff() < 1e-12);
  REQUIRE_FALSE(ctx.delta_applied);
}

TEST_CASE("DoRA bad input gives clear errors", "[adapters][dora]") {
  lora_config c = small_cfg(2, 2);
  tensor<float> W = zeros<float>({3, 4});
  REQUIRE_THROWS_WITH((dora<float>(nullptr, as_matrix(W))), Catch::Contains("null"));
  auto dense = std::make_shared<dense_delta<float>>(4, 3);
  REQUIRE_THROWS_AS((dora<float>(dense, as_matrix(W))), value_error);
  REQUIRE_THROWS_WITH((dora<float>(dense, as_matrix(W))), Catch::Contains("not factored"));
  auto inner = std::make_shared<lora<float>>(4, 3, c);
  tensor<float> Wbad = zeros<float>({3, 5});
  REQUIRE_THROWS_AS((dora<float>(inner, as_matrix(Wbad))), shape_error);
  REQUIRE_THROWS_WITH((dora<float>(inner, as_matrix(Wbad))), Catch::Contains("[3,5]"));
  REQUIRE_THROWS_AS((dora_lora<float>(4, 3, c, Wbad)), shape_error);
  dora_config dc;
  dc.norm_eps = 0;
  REQUIRE_THROWS_WITH((dora<float>(inner, as_matrix(W), dc)), Catch::Contains("norm_eps"));

  auto L = make_layer<float>(4, 3, c);
  auto x = constant<float>(zeros<float>({2, 5}));
  REQUIRE_THROWS_WITH(L.layer->forward(x), Catch::Contains("[2,5]"));
  adapter_ctx<float> ctx;
  matrix<float> xm = matrix<float>::Zero(2, 5), y(2, 3);
  REQUIRE_THROWS_WITH(L.a->forward(xm, as_matrix(L.W().value()), nullptr, y, ctx, true),
                      Catch::Contains("dora::forward"));
  REQUIRE_THROWS_WITH(L.a->delta_weight(as_matrix(Wbad)), Catch::Contains("[3,5]"));
  REQUIRE_THROWS_AS(L.a->forward_delta(xm, y, ctx, true), error);
  rng g(1);
  auto base = std::make_shared<nn::linear<float>>(5, 3, g);
  REQUIRE_THROWS_AS(adapted_linear<float>(base, L.a), shape_error);
}
