// projected<Base, Projector>: the generic checks every projector runs through (contract, loss
// goes down under AdamW / Adafactor / SGD-momentum, 32- and 8-bit moments, bit-exact resume),
// identity projection == the base optimizer bit for bit, full-rank GaLore vs the bases, fallback
// of vectors and small matrices, errors, and a tiny Llama whose loss goes down.
#include <catch2/catch.hpp>
#include <Eigen/SVD>  // the independent reference below

#include <cmath>
#include <cstring>
#include <memory>
#include <tuple>
#include <vector>

#include "peft/nn/loss.hpp"
#include "peft/nn/transformer.hpp"
#include "peft/optim/adafactor.hpp"
#include "peft/optim/adam.hpp"
#include "peft/optim/projected.hpp"
#include "peft/optim/projection/coap.hpp"
#include "peft/optim/projection/dct.hpp"
#include "peft/optim/projection/flora.hpp"
#include "peft/optim/projection/galore.hpp"
#include "peft/optim/projection/identity.hpp"
#include "peft/optim/quant8.hpp"
#include "peft/optim/sgd.hpp"
#include "../support/thrown.hpp"

using namespace peft;
using Catch::Matchers::Contains;
using peft::test::thrown_message;

namespace {

// ---- projector cases: one struct per projector configuration ----
// A case names itself, gives the projector type for a scalar T, and builds one for a site.
// `exact_on_rank_r`: projecting and projecting back a rank-<=r gradient is exact.
struct identity_case {
  static constexpr const char* name = "identity";
  static constexpr bool exact_on_rank_r = true;
  template <class T>
  using type = optim::identity_projector<T>;
  template <class T>
  static type<T> make(std::size_t rank, const optim::projector_site& s) {
    optim::identity_options o;
    o.rank = rank;
    return type<T>(o, s.rows, s.cols, s.seed);
  }
};

template <optim::galore_proj_type Side, optim::svd_solver Solver>
struct galore_case {
  static constexpr const char* name = "galore";
  static constexpr bool exact_on_rank_r = true;
  template <class T>
  using type = optim::galore_projector<T>;
  template <class T>
  static type<T> make(std::size_t rank, const optim::projector_site& s) {
    optim::galore_options o;
    o.rank = rank;
    o.update_proj_gap = 5;
    o.scale = 1.0;
    o.proj_type = Side;
    o.solver = Solver;
    return type<T>(o, s.rows, s.cols, s.seed);
  }
};
using galore_exact_case = galore_case<optim::galore_proj_type::standard, optim::svd_solver::exact>;
using galore_randomized_case =
    galore_case<optim::galore_proj_type::standard, optim::svd_solver::randomized>;
using galore_two_sided_case = galore_case<optim::galore_proj_type::full, optim::svd_solver::exact>;

// Flora: P·Pᵀ is unbiased (E[P·Pᵀ] = I over draws) but not a projection for one draw, so a
// rank-r gradient does not survive exactly (tests/optim/projection/flora.test.cpp checks the
// span property instead). Resampled every 10 steps (at 10 inside the checkpoint test): with
// kappa = 5 the momentum transfer grows faster than momentum decays at d = 12, r = 4 and the fit
// diverges (the stability condition in flora.hpp).
struct flora_case {
  static constexpr const char* name = "flora";
  static constexpr bool exact_on_rank_r = false;
  template <class T>
  using type = optim::flora_projector<T>;
  template <class T>
  static type<T> make(std::size_t rank, const optim::projector_site& s) {
    optim::flora_options o;
    o.rank = rank;
    o.kappa = 10;
    return type<T>(o, s.rows, s.cols, s.seed);
  }
};

// COAP: correlation-aware update of P at step 5, re-projection at step 10 (interval 5, factor 2).
template <bool Restore>
struct coap_case {
  static constexpr const char* name = Restore ? "coap (restore_state)" : "coap";
  static constexpr bool exact_on_rank_r = true;
  template <class T>
  using type = optim::coap_projector<T>;
  template <class T>
  static type<T> make(std::size_t rank, const optim::projector_site& s) {
    optim::coap_options o;
    o.rank = rank;
    o.update_interval = 5;
    o.reproject_factor = 2;
    o.restore_state = Restore;
    return type<T>(o, s.rows, s.cols, s.seed);
  }
};

// DCT: exact only for gradients in r DCT frequencies (tests/optim/projection/dct.test.cpp), not
// for any rank-r gradient. Columns re-selected every 5 steps.
template <bool Rotate>
struct dct_case {
  static constexpr const char* name = Rotate ? "dct (rotate_moments)" : "dct";
  static constexpr bool exact_on_rank_r = false;
  template <class T>
  using type = optim::dct_projector<T>;
  template <class T>
  static type<T> make(std::size_t rank, const optim::projector_site& s) {
    optim::dct_options o;
    o.rank = rank;
    o.update_interval = 5;
    o.rotate_moments = Rotate;
    return type<T>(o, s.rows, s.cols, s.seed);
  }
};

// ---- add new projector cases above this line ----
using projector_cases = std::tuple<identity_case,
                                   galore_exact_case,
                                   galore_randomized_case,
                                   galore_two_sided_case,
                                   flora_case,
                                   coap_case<false>,
                                   coap_case<true>,
                                   dct_case<false>,
                                   dct_case<true>>;

template <class Case, class T>
auto factory_of(std::size_t rank) {
  return [rank](const optim::projector_site& s) { return Case::template make<T>(rank, s); };
}

template <class T>
void set_grad(variable<T>& v, const tensor<T>& g) {
  v.zero_grad();
  peft::detail::accumulate(*v.get(), tensor<T>(g));
}

template <class T>
bool same_bits(const tensor<T>& a, const tensor<T>& b) {
  return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

template <class T>
double max_abs_diff(const tensor<T>& a, const tensor<T>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    m = std::max(m, std::abs(double(a.data()[i]) - double(b.data()[i])));
  return m;
}

// Least squares: loss(W, b) = 0.5/N · ||X·Wᵀ + b − Y||², W [m, n], b [m], a target of full rank.
template <class T>
struct least_squares {
  matrix<T> X, Y;
  least_squares(std::size_t N, std::size_t m, std::size_t n, std::uint64_t seed) {
    rng g(seed);
    X.resize(Eigen::Index(N), Eigen::Index(n));
    matrix<T> Wt(static_cast<Eigen::Index>(m), static_cast<Eigen::Index>(n));
    vector<T> bt(static_cast<Eigen::Index>(m));
    for (Eigen::Index i = 0; i < X.size(); ++i) X.data()[i] = T(g.normal());
    for (Eigen::Index i = 0; i < Wt.size(); ++i) Wt.data()[i] = T(g.normal());
    for (Eigen::Index i = 0; i < bt.size(); ++i) bt[i] = T(g.normal());
    Y = X * Wt.transpose();
    Y.rowwise() += bt.transpose();
  }
  matrix<T> residual(const variable<T>& W, const variable<T>& b) const {
    matrix<T> R = X * as_matrix(W.value()).transpose();
    R.rowwise() += as_vector(b.value()).transpose();
    return R - Y;
  }
  double loss(const variable<T>& W, const variable<T>& b) const {
    return 0.5 * double(residual(W, b).squaredNorm()) / double(X.rows());
  }
  void set_grads(variable<T>& W, variable<T>& b) const {
    const matrix<T> R = residual(W, b);
    const T inv = T(1.0 / double(X.rows()));
    set_grad(W, to_tensor(matrix<T>(R.transpose() * X * inv)));
    tensor<T> gb = tensor<T>::from_shape({std::size_t(R.cols())});
    as_vector(gb) = R.colwise().sum().transpose() * inv;
    set_grad(b, gb);
  }
};

// Runs `steps` steps and returns {initial loss, final loss}.
template <class T>
std::pair<double, double> fit(optim::optimizer<T>& opt, variable<T>& W, variable<T>& b,
                              const least_squares<T>& ls, int steps) {
  const double l0 = ls.loss(W, b);
  for (int k = 0; k < steps; ++k) {
    ls.set_grads(W, b);
    opt.step();
  }
  return {l0, ls.loss(W, b)};
}

template <class T>
tensor<T> random_tensor(const shape_t& s, std::uint64_t seed, double scale = 1.0) {
  rng g(seed);
  return randn<T>(s, g, 0.0, scale);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Generic checks, run for every projector case.

TEMPLATE_LIST_TEST_CASE("projector contract", "[optim][projected][projector]", projector_cases) {
  using P = typename TestType::template type<double>;
  INFO(TestType::name);
  for (auto [m, n] : {std::pair<std::size_t, std::size_t>{12, 20}, {20, 12}, {9, 9}}) {
    const std::size_t r = 4;
    P p = TestType::template make<double>(r, {0, m, n, 17});
    REQUIRE(p.needs_refresh(0));
    const tensor<double> G0 = random_tensor<double>({m, n}, 1);
    p.refresh(as_matrix(G0), 0);
    REQUIRE_FALSE(p.needs_refresh(0));
    const auto ls = p.low_shape(m, n);
    const matrix<double> low = p.project(as_matrix(G0), 0);
    REQUIRE(std::size_t(low.rows()) == ls.first);
    REQUIRE(std::size_t(low.cols()) == ls.second);
    const matrix<double> back = p.project_back(low, 0);
    REQUIRE(std::size_t(back.rows()) == m);
    REQUIRE(std::size_t(back.cols()) == n);
    // The optimizer's fused path: project_back_add(low, W, α) = W + α·project_back(low), written
    // into W with no temporary of W's size.
    {
      const tensor<double> W0 = random_tensor<double>({m, n}, 3);
      matrix<double> W = as_matrix(W0);
      p.project_back_add(low, 0, W, -0.75);
      const matrix<double> want = as_matrix(W0) - 0.75 * back;
      REQUIRE((W - want).cwiseAbs().maxCoeff() < 1e-12 * (1 + want.cwiseAbs().maxCoeff()));
      matrix<double> wrong(Eigen::Index(m + 1), Eigen::Index(n));
      const std::string msg = thrown_message<shape_error>([&] { p.project_back_add(low, 0, wrong, 1.0); });
      CHECK_THAT(msg, Contains("project_back_add") &&
                          Contains("[" + std::to_string(m + 1) + "," + std::to_string(n) + "]"));
    }
    if constexpr (optim::plans_state_bytes<P>) REQUIRE(p.state_bytes() == p.planned_state_bytes(m, n));

    // A saved projector restored into a fresh one projects the same bits.
    optim::projector_state<double> st;
    p.save_state(st);
    P q = TestType::template make<double>(r, {0, m, n, 99});
    q.load_state(st);
    const tensor<double> G1 = random_tensor<double>({m, n}, 2);
    REQUIRE(q.needs_refresh(1) == p.needs_refresh(1));
    const matrix<double> a = p.project(as_matrix(G1), 1), b = q.project(as_matrix(G1), 1);
    REQUIRE(a == b);
    REQUIRE(p.project_back(a, 1) == q.project_back(b, 1));
    REQUIRE(q.state_bytes() == p.state_bytes());
  }
}

TEMPLATE_LIST_TEST_CASE("a rank-r gradient survives projection and back-projection",
                        "[optim][projected][projector]", projector_cases) {
  if (!TestType::exact_on_rank_r) return;
  using P = typename TestType::template type<double>;
  INFO(TestType::name);
  rng g(5);
  const tensor<double> A = randn<double>({14, 3}, g), B = randn<double>({3, 10}, g);
  const matrix<double> G = as_matrix(A) * as_matrix(B);
  P p = TestType::template make<double>(3, {0, 14, 10, 1});
  p.refresh(G, 0);
  const matrix<double> back = p.project_back(p.project(G, 0), 0);
  REQUIRE((back - G).norm() < 1e-10 * G.norm());
}

TEMPLATE_LIST_TEST_CASE("projected AdamW, Adafactor and SGD-momentum fit a least-squares problem",
                        "[optim][projected][convergence]", projector_cases) {
  using P = typename TestType::template type<double>;
  INFO(TestType::name);
  const least_squares<double> ls(64, 16, 12, 3);
  const std::size_t rank = 4;
  auto run = [&](auto make_opt, const char* what, double factor, int steps) {
    INFO(what);
    auto W = parameter<double>(zeros<double>({16, 12}));
    auto b = parameter<double>(zeros<double>({16}));
    auto opt = make_opt(std::vector<variable<double>>{W, b});
    REQUIRE(opt->is_projected(0));
    REQUIRE_FALSE(opt->is_projected(1));
    auto [l0, l1] = fit(*opt, W, b, ls, steps);
    INFO("loss " << l0 << " -> " << l1);
    REQUIRE(l1 < factor * l0);
  };
  auto f = factory_of<TestType, double>(rank);
  run(
      [&](auto ps) {
        optim::adamw_options o;
        o.lr = 0.05;
        o.weight_decay = 0;
        return std::make_unique<optim::projected<optim::adamw<double>, P>>(ps, o, rank, f);
      },
      "adamw", 0.05, 300);
  run(
      [&](auto ps) {
        optim::adamw_options o;
        o.lr = 0.05;
        o.weight_decay = 0;
        optim::projected_options po;
        po.min_8bit_size = 0;  // quantize even these small moments
        return std::make_unique<optim::projected<optim::adamw<double>, P, optim::q8_storage<>>>(
            ps, o, rank, f, po);
      },
      "adamw, 8-bit moments", 0.1, 300);
  run(
      [&](auto ps) {
        optim::adafactor_options o;
        o.lr = 0.05;
        o.beta1 = 0.9;
        return std::make_unique<optim::projected<optim::adafactor<double>, P>>(ps, o, rank, f);
      },
      "adafactor", 0.05, 300);
  run(
      [&](auto ps) {
        optim::sgd_options o;
        o.lr = 0.05;
        o.momentum = 0.9;
        return std::make_unique<optim::projected<optim::sgd<double>, P>>(ps, o, rank, f);
      },
      "sgd-momentum", 0.05, 300);
}

namespace {
// Runs two optimizers built by `make` on identical parameters: the first for k1 steps, then a
// fresh one resumed from its named_state; both continue k2 steps; parameters must agree bitwise.
template <class T, class Make>
void check_resume(Make make, int k1, int k2) {
  auto params = [] {
    return std::vector<variable<T>>{parameter<T>(random_tensor<T>({16, 12}, 1)),
                                    parameter<T>(random_tensor<T>({16}, 2)),
                                    parameter<T>(random_tensor<T>({3, 10}, 3)),
                                    parameter<T>(random_tensor<T>({10, 20}, 4))};
  };
  auto pa = params();
  auto a = make(pa);
  auto grads = [](std::vector<variable<T>>& ps, int k) {
    for (std::size_t i = 0; i < ps.size(); ++i)
      set_grad(ps[i], random_tensor<T>(ps[i].shape(), 1000 + 10 * std::uint64_t(k) + i, 0.1));
  };
  for (int k = 0; k < k1; ++k) {
    grads(pa, k);
    a->step();
  }
  auto pb = params();
  for (std::size_t i = 0; i < pa.size(); ++i) pb[i].value() = pa[i].value();
  auto b = make(pb);
  b->load_state(a->named_state());
  REQUIRE(b->state_bytes() == a->state_bytes());
  for (int k = k1; k < k1 + k2; ++k) {
    grads(pa, k);
    grads(pb, k);
    a->step();
    b->step();
  }
  for (std::size_t i = 0; i < pa.size(); ++i) {
    INFO("parameter " << i);
    REQUIRE(same_bits(pa[i].value(), pb[i].value()));
  }
}
}  // namespace

TEMPLATE_LIST_TEST_CASE("a checkpoint resumes bit-exactly", "[optim][projected][checkpoint]",
                        projector_cases) {
  using P = typename TestType::template type<float>;
  INFO(TestType::name);
  const std::size_t rank = 4;
  auto f = factory_of<TestType, float>(rank);
  // 7 + 8 steps cross the refreshes at steps 5 and 10 on both sides of the checkpoint.
  SECTION("adamw") {
    check_resume<float>([&](auto ps) {
      optim::adamw_options o;
      o.amsgrad = true;
      return std::make_unique<optim::projected<optim::adamw<float>, P>>(ps, o, rank, f);
    }, 7, 8);
  }
  SECTION("adamw, 8-bit moments") {
    check_resume<float>([&](auto ps) {
      optim::projected_options po;
      po.min_8bit_size = 0;
      return std::make_unique<optim::projected<optim::adamw<float>, P, optim::q8_storage<>>>(
          ps, optim::adamw_options{}, rank, f, po);
    }, 7, 8);
  }
  SECTION("adafactor") {
    check_resume<float>([&](auto ps) {
      optim::adafactor_options o;
      o.beta1 = 0.9;
      o.scale_parameter = true;
      return std::make_unique<optim::projected<optim::adafactor<float>, P>>(ps, o, rank, f);
    }, 7, 8);
  }
  SECTION("sgd-momentum") {
    check_resume<float>([&](auto ps) {
      optim::sgd_options o;
      o.momentum = 0.9;
      o.lr = 0.01;
      return std::make_unique<optim::projected<optim::sgd<float>, P>>(ps, o, rank, f);
    }, 7, 8);
  }
}

TEMPLATE_LIST_TEST_CASE("state bytes count moments in the low shape plus the projector",
                        "[optim][projected][memory]", projector_cases) {
  using P = typename TestType::template type<float>;
  INFO(TestType::name);
  auto W = parameter<float>(random_tensor<float>({16, 12}, 1));
  auto b = parameter<float>(random_tensor<float>({16}, 2));
  optim::projected<optim::adamw<float>, P> opt({W, b}, {}, 4, factory_of<TestType, float>(4));
  REQUIRE(opt.state_bytes() == 0);
  set_grad(W, random_tensor<float>({16, 12}, 3));
  set_grad(b, random_tensor<float>({16}, 4));
  opt.step();
  const shape_t low = opt.update_shape(0);
  REQUIRE(opt.state_bytes(0) == 2 * numel(low) * sizeof(float) + opt.projector(0).state_bytes());
  REQUIRE(opt.state_bytes(1) == 2 * 16 * sizeof(float));
  REQUIRE(opt.state_bytes() == opt.state_bytes(0) + opt.state_bytes(1));
  REQUIRE(opt.state_bytes(0) == opt.planned_state_bytes(0));
  REQUIRE(opt.state_bytes(1) == opt.planned_state_bytes(1));
  // The checkpoint carries the projector's state under "proj.".
  const auto& st = opt.named_state();
  REQUIRE(st.at(0).tensors.count("exp_avg"));
  bool has_proj = false;
  for (const auto& [k, v] : st.at(0).tensors) has_proj = has_proj || k.rfind("proj.", 0) == 0;
  REQUIRE(has_proj);
}

// ---------------------------------------------------------------------------------------------
// Identity projection and the full-rank fallback are the base optimizer, bit for bit.

namespace {
template <class Base, class Opts>
void check_identity_matches_base(const Opts& o) {
  auto make = [] {
    return std::vector<variable<float>>{parameter<float>(random_tensor<float>({6, 5}, 1)),
                                        parameter<float>(random_tensor<float>({5}, 2))};
  };
  auto pa = make(), pb = make();
  Base base(pa, o);
  optim::projected<Base, optim::identity_projector<float>> proj(pb, o, optim::identity_options{});
  REQUIRE(proj.is_projected(0));
  REQUIRE_FALSE(proj.is_projected(1));
  for (int k = 0; k < 6; ++k) {
    for (std::size_t i = 0; i < 2; ++i) {
      const auto g = random_tensor<float>(pa[i].shape(), 50 + 7 * std::uint64_t(k) + i);
      set_grad(pa[i], g);
      set_grad(pb[i], g);
    }
    base.step();
    proj.step();
    for (std::size_t i = 0; i < 2; ++i) {
      INFO("step " << k << " parameter " << i);
      REQUIRE(same_bits(pa[i].value(), pb[i].value()));
    }
  }
  REQUIRE(proj.state_bytes() == base.state_bytes());
}
}  // namespace

TEST_CASE("identity projection takes the base optimizer's steps bit for bit",
          "[optim][projected]") {
  SECTION("adamw with weight decay and amsgrad") {
    optim::adamw_options o;
    o.lr = 0.01;
    o.weight_decay = 0.1;
    o.amsgrad = true;
    check_identity_matches_base<optim::adamw<float>>(o);
  }
  SECTION("adamw with beta1 >= 0.5 (the other lerp branch) and maximize") {
    optim::adamw_options o;
    o.betas = {0.3, 0.99};
    o.maximize = true;
    check_identity_matches_base<optim::adamw<float>>(o);
  }
  SECTION("adam with L2 decay") {
    optim::adam_options o;
    o.weight_decay = 0.05;
    check_identity_matches_base<optim::adam<float>>(o);
  }
  SECTION("sgd nesterov with L2 decay") {
    optim::sgd_options o;
    o.lr = 0.1;
    o.momentum = 0.9;
    o.nesterov = true;
    o.weight_decay = 0.01;
    check_identity_matches_base<optim::sgd<float>>(o);
  }
  SECTION("sgd with dampening and maximize") {
    optim::sgd_options o;
    o.lr = 0.1;
    o.momentum = 0.5;
    o.dampening = 0.3;
    o.maximize = true;
    check_identity_matches_base<optim::sgd<float>>(o);
  }
  SECTION("plain sgd") {
    optim::sgd_options o;
    o.lr = 0.1;
    check_identity_matches_base<optim::sgd<float>>(o);
  }
}

TEST_CASE("vectors and small matrices fall back to the base update", "[optim][projected]") {
  // rank 4: [10, 8] is projected; [3, 10] (3 < 4), [10] and [2, 3, 4] are not.
  auto make = [] {
    return std::vector<variable<double>>{parameter<double>(random_tensor<double>({10, 8}, 1)),
                                         parameter<double>(random_tensor<double>({3, 10}, 2)),
                                         parameter<double>(random_tensor<double>({10}, 3)),
                                         parameter<double>(random_tensor<double>({2, 3, 4}, 4))};
  };
  auto pa = make(), pb = make();
  optim::adamw_options o;
  o.weight_decay = 0.1;
  optim::galore_options go;
  go.rank = 4;
  optim::projected<optim::adamw<double>, optim::galore_projector<double>> proj(pa, o, go);
  optim::adamw<double> base(pb, o);
  REQUIRE(proj.is_projected(0));
  for (std::size_t i = 1; i < 4; ++i) REQUIRE_FALSE(proj.is_projected(i));
  REQUIRE(proj.update_shape(0) == shape_t{10, 4});  // 10 >= 8: right projection
  REQUIRE(proj.update_shape(2) == shape_t{10});
  REQUIRE_THROWS_WITH(proj.projector(1), Contains("not projected") && Contains("[3,10]"));
  for (int k = 0; k < 4; ++k) {
    for (std::size_t i = 0; i < 4; ++i) {
      const auto g = random_tensor<double>(pa[i].shape(), 70 + 5 * std::uint64_t(k) + i);
      set_grad(pa[i], g);
      set_grad(pb[i], g);
    }
    proj.step();
    base.step();
  }
  for (std::size_t i = 1; i < 4; ++i) REQUIRE(same_bits(pa[i].value(), pb[i].value()));
  REQUIRE_FALSE(same_bits(pa[0].value(), pb[0].value()));

  // `select` keeps an eligible matrix out of the projection.
  optim::projected_options po;
  po.select = [](std::size_t i, const shape_t&) { return i != 0; };
  optim::projected<optim::adamw<double>, optim::galore_projector<double>> none(make(), o, go, po);
  REQUIRE_FALSE(none.is_projected(0));
}

// ---------------------------------------------------------------------------------------------
// Full-rank GaLore.

TEST_CASE("full-rank GaLore with exact SVD: SGD-momentum is SGD-momentum",
          "[optim][projected][galore]") {
  // Q is a square orthogonal matrix, so Q·Qᵀ = I and the linear momentum commutes with it. Across
  // a refresh the buffer must be rotated (Q_newᵀ·Q_old, exact at full rank); GaLore's default of
  // keeping it as is reinterprets it in the new basis.
  const bool rotate = GENERATE(true, false);
  INFO("rotate_first_moment " << rotate);
  auto Wa = parameter<double>(random_tensor<double>({8, 6}, 1));
  auto Wb = parameter<double>(random_tensor<double>({8, 6}, 1));
  optim::sgd_options o;
  o.lr = 0.05;
  o.momentum = 0.9;
  o.weight_decay = 0.01;
  o.nesterov = true;
  optim::galore_options go;
  go.rank = 6;
  go.scale = 1;
  go.update_proj_gap = 3;
  go.rotate_first_moment = rotate;
  optim::projected<optim::sgd<double>, optim::galore_projector<double>> proj({Wa}, o, go);
  optim::sgd<double> base({Wb}, o);
  for (int k = 0; k < 8; ++k) {
    const auto g = random_tensor<double>({8, 6}, 200 + std::uint64_t(k));
    set_grad(Wa, g);
    set_grad(Wb, g);
    proj.step();
    base.step();
  }
  REQUIRE(proj.projector(0).refresh_count() == 3);
  if (rotate)
    REQUIRE(max_abs_diff(Wa.value(), Wb.value()) < 1e-12);
  else
    REQUIRE(max_abs_diff(Wa.value(), Wb.value()) > 1e-3);
}

TEST_CASE("full-rank GaLore with exact SVD: AdamW is AdamW in the gradient's singular basis",
          "[optim][projected][galore]") {
  optim::adamw_options o;
  o.lr = 0.01;
  o.weight_decay = 0.1;
  optim::galore_options go;
  go.rank = 5;
  go.scale = 1;
  go.update_proj_gap = 1000;

  SECTION("equals AdamW when every gradient is diagonal (the basis is a signed permutation)") {
    // Adam is elementwise, so it commutes with permutations and sign flips of coordinates, not
    // with general rotations: this is the case where projected AdamW == AdamW at full rank.
    auto Wa = parameter<double>(random_tensor<double>({7, 5}, 1));
    auto Wb = parameter<double>(random_tensor<double>({7, 5}, 1));
    optim::projected<optim::adamw<double>, optim::galore_projector<double>> proj({Wa}, o, go);
    optim::adamw<double> base({Wb}, o);
    rng g(9);
    for (int k = 0; k < 10; ++k) {
      tensor<double> G = zeros<double>({7, 5});
      for (std::size_t i = 0; i < 5; ++i)
        G(i, i) = k == 0 ? double(i + 1) * (i % 2 ? -1 : 1) : g.normal();
      set_grad(Wa, G);
      set_grad(Wb, G);
      proj.step();
      base.step();
    }
    REQUIRE(max_abs_diff(Wa.value(), Wb.value()) < 1e-9);
  }

  SECTION("for dense gradients it is Adam on G·Q (and differs from AdamW)") {
    auto Wa = parameter<double>(random_tensor<double>({7, 5}, 1));
    auto Wb = parameter<double>(random_tensor<double>({7, 5}, 1));
    optim::projected<optim::adamw<double>, optim::galore_projector<double>> proj({Wa}, o, go);
    optim::adamw<double> base({Wb}, o);
    // Reference: Q from an independent SVD of the first gradient (column signs may differ; Adam
    // is sign-equivariant per coordinate), Adam on low = G·Q, W += step·Qᵀ.
    matrix<double> W = as_matrix(Wa.value()), Q, m, v;
    for (int k = 0; k < 6; ++k) {
      const auto G = random_tensor<double>({7, 5}, 300 + std::uint64_t(k));
      const matrix<double> Gm = as_matrix(G);
      if (k == 0) {
        Eigen::JacobiSVD<matrix<double>> svd(Gm, Eigen::ComputeThinV);
        Q = svd.matrixV();
        m = v = matrix<double>::Zero(7, 5);
      }
      const matrix<double> low = Gm * Q;
      m = 0.9 * m + 0.1 * low;
      v = 0.999 * v + 0.001 * low.cwiseProduct(low);
      const double t = k + 1, bc1 = 1 - std::pow(0.9, t), bc2 = 1 - std::pow(0.999, t);
      const matrix<double> step =
          (m.array() / (v.array().sqrt() / std::sqrt(bc2) + 1e-8)).matrix() * (-0.01 / bc1);
      W *= 1 - 0.01 * 0.1;
      W += step * Q.transpose();
      set_grad(Wa, G);
      set_grad(Wb, G);
      proj.step();
      base.step();
    }
    REQUIRE((as_matrix(Wa.value()) - W).cwiseAbs().maxCoeff() < 1e-12);
    REQUIRE(max_abs_diff(Wa.value(), Wb.value()) > 1e-4);
  }
}

TEST_CASE("GaLore refreshes per parameter exactly at the gap under projected<>",
          "[optim][projected][galore]") {
  auto W = parameter<float>(random_tensor<float>({12, 8}, 1));
  auto V = parameter<float>(random_tensor<float>({8, 12}, 2));
  optim::galore_options go;
  go.rank = 3;
  go.update_proj_gap = 4;
  optim::projected<optim::adamw<float>, optim::galore_projector<float>> opt({W, V}, {}, go);
  std::vector<std::size_t> seen;
  for (int k = 0; k < 10; ++k) {
    set_grad(W, random_tensor<float>({12, 8}, 400 + std::uint64_t(k)));
    if (k != 5) set_grad(V, random_tensor<float>({8, 12}, 500 + std::uint64_t(k)));  // V skips one
    else V.zero_grad();
    const auto before = opt.projector(0).refresh_count();
    opt.step();
    if (opt.projector(0).refresh_count() != before) seen.push_back(std::size_t(k));
  }
  REQUIRE(seen == std::vector<std::size_t>{0, 4, 8});
  REQUIRE(opt.step_count(1) == 9);
  // V's counter is its own: updates 0..8 -> refreshes at its steps 0, 4, 8.
  REQUIRE(opt.projector(1).refresh_count() == 3);
  REQUIRE(opt.projector(1).last_refresh_step() == 8);
  REQUIRE(opt.projector(0).side() == optim::projection_side::right);
  REQUIRE(opt.projector(1).side() == optim::projection_side::left);
}

TEST_CASE("projected<adamw8bit> keeps its low-rank moments in 8 bits", "[optim][projected]") {
  auto W = parameter<float>(random_tensor<float>({64, 96}, 1));
  optim::galore_options go;
  go.rank = 64;
  optim::projected<optim::adamw8bit<float>, optim::galore_projector<float>> opt({W}, {}, go);
  REQUIRE(opt.name() == "projected adamw (8-bit states)");
  set_grad(W, random_tensor<float>({64, 96}, 2));
  opt.step();
  // low [64, 96] -> left side (64 < 96): [64, 96] moments of 6144 elements >= 4096: 8-bit.
  REQUIRE(opt.update_shape(0) == shape_t{64, 96});
  REQUIRE(opt.state_bytes(0) == 2 * (6144 + 24 * 4) + 64 * 64 * sizeof(float));
  REQUIRE(opt.named_state().at(0).tensors.count("exp_avg.codes") == 1);
}

TEST_CASE("per-parameter projector seeds are reproducible and distinct", "[optim][projected]") {
  std::vector<std::uint64_t> seeds;
  auto f = [&](const optim::projector_site& s) {
    seeds.push_back(s.seed);
    return optim::identity_projector<float>(optim::identity_options{}, s.rows, s.cols, s.seed);
  };
  auto ps = std::vector<variable<float>>{parameter<float>(zeros<float>({4, 4})),
                                         parameter<float>(zeros<float>({4, 4}))};
  optim::projected_options po;
  po.seed = 42;
  optim::projected<optim::adamw<float>, optim::identity_projector<float>> a(ps, {}, 1, f, po);
  optim::projected<optim::adamw<float>, optim::identity_projector<float>> b(ps, {}, 1, f, po);
  REQUIRE(seeds.size() == 4);
  REQUIRE(seeds[0] == seeds[2]);
  REQUIRE(seeds[1] == seeds[3]);
  REQUIRE(seeds[0] != seeds[1]);
}

// ---------------------------------------------------------------------------------------------
// Errors.

TEST_CASE("bad options and bad checkpoints throw with the option or tensor named",
          "[optim][projected][errors]") {
  auto W = parameter<float>(zeros<float>({8, 6}));
  using opt_t = optim::projected<optim::adamw<float>, optim::galore_projector<float>>;
  optim::galore_options go;
  go.rank = 0;
  REQUIRE_THROWS_WITH(opt_t({W}, {}, go), Contains("rank"));
  go.rank = 2;
  go.update_proj_gap = 0;
  REQUIRE_THROWS_WITH(opt_t({W}, {}, go), Contains("update_proj_gap"));
  go.update_proj_gap = 10;
  go.scale = std::nan("");
  REQUIRE_THROWS_WITH(opt_t({W}, {}, go), Contains("scale"));
  go.scale = 1;
  optim::adamw_options ao;
  ao.betas = {1.5, 0.9};
  REQUIRE_THROWS_WITH(opt_t({W}, ao, go), Contains("betas[0]"));
  REQUIRE_THROWS_WITH(opt_t(std::vector<variable<float>>{}, {}, go), Contains("empty"));
  REQUIRE_THROWS_WITH(opt_t({W, W}, {}, go), Contains("more than once"));
  REQUIRE_THROWS_WITH(opt_t({W}, {}, 2, {}), Contains("factory"));

  opt_t opt({W}, {}, go);
  set_grad(W, random_tensor<float>({8, 6}, 1));
  opt.step();
  auto st = opt.named_state();
  auto bad = st;
  bad.at(0).tensors.erase("exp_avg");
  REQUIRE_THROWS_WITH(opt.load_state(bad), Contains("exp_avg"));
  bad = st;
  bad.at(0).tensors["exp_avg"] = zeros<float>({8, 6});  // the full shape, not the low one
  REQUIRE_THROWS_WITH(opt.load_state(bad), Contains("exp_avg") && Contains("[8,6]"));
  bad = st;
  bad.at(0).tensors.erase("proj.Q");
  REQUIRE_THROWS_WITH(opt.load_state(bad), Contains("'Q'"));
  bad = st;
  bad.at(0).tensors["stray"] = zeros<float>({1});
  REQUIRE_THROWS_WITH(opt.load_state(bad), Contains("stray"));
  bad = st;
  bad[3] = bad.at(0);
  REQUIRE_THROWS_WITH(opt.load_state(bad), Contains("parameter 3"));
  // A failed load changed nothing.
  REQUIRE(opt.step_count(0) == 1);
  REQUIRE(opt.projector(0).has_basis());

  // The gradient must match the value.
  set_grad(W, zeros<float>({8, 6}));
  W.grad() = zeros<float>({6, 8});
  REQUIRE_THROWS_WITH(opt.step(), Contains("[8,6]") && Contains("[6,8]"));
}

// ---------------------------------------------------------------------------------------------
// A small Llama-style model.

TEST_CASE("GaLore-AdamW lowers the loss of a tiny Llama", "[optim][projected][llama]") {
  rng g(7);
  // vocab, dim, n_layers, n_heads, n_kv_heads, hidden_dim, max_seq, norm_eps, rope_theta, tie
  nn::llama<float> model(nn::llama_config{11, 8, 2, 2, 1, 12, 16, 1e-6, 10000.0, false}, g);
  const std::vector<std::int64_t> ids{1, 5, 2, 9, 0, 10, 3, 3, 4, 7, 6, 8};  // [2, 6]
  std::vector<std::int64_t> targets(ids.size());
  for (std::size_t i = 0; i < ids.size(); ++i) targets[i] = (ids[i] * 3 + 1) % 11;
  optim::adamw_options o;
  o.lr = 0.02;
  optim::galore_options go;
  go.rank = 4;
  go.update_proj_gap = 10;
  optim::projected<optim::adamw<float>, optim::galore_projector<float>> opt(model.parameters(), o,
                                                                          go);
  std::size_t projected = 0;
  for (std::size_t i = 0; i < opt.num_parameters(); ++i) projected += opt.is_projected(i);
  REQUIRE(projected == 16);  // every 2-D weight (norm weights fall back)
  auto loss_now = [&] {
    auto loss = nn::cross_entropy(model.forward(ids, 2, 6), targets);
    return loss;
  };
  const double l0 = loss_now().item();
  double l = l0;
  for (int k = 0; k < 60; ++k) {
    opt.zero_grad();
    auto loss = loss_now();
    loss.backward();
    opt.step();
    l = loss.item();
  }
  INFO("loss " << l0 << " -> " << l);
  REQUIRE(l < 0.5 * l0);
}
