// COAP projector: the correlation-aware objective and its closed-form gradient (finite
// differences in double), the warm-started range finder, the update / re-projection schedule,
// the correlation step through transfer(first), moment restore, state save/load, options.
#include <catch2/catch.hpp>

#include <cstring>
#include <vector>

#include "peft/core/random.hpp"
#include "peft/optim/projection/coap.hpp"

using namespace peft;
using namespace peft::optim;
using Catch::Matchers::Contains;

namespace {

template <class T>
matrix<T> gaussian(Eigen::Index r, Eigen::Index c, std::uint64_t seed, double scale = 1.0) {
  rng g(seed);
  matrix<T> m(r, c);
  for (Eigen::Index k = 0; k < m.size(); ++k) m.data()[k] = T(g.normal() * scale);
  return m;
}

template <class T>
bool same_bits(const matrix<T>& a, const matrix<T>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), std::size_t(a.size()) * sizeof(T)) == 0;
}

coap_options opts(std::size_t rank, std::size_t ui = 32, std::size_t rf = 5) {
  coap_options o;
  o.rank = rank;
  o.update_interval = ui;
  o.reproject_factor = rf;
  return o;
}

// The objective written out the slow way: X formed, cosines per row of [m, n].
double objective_reference(const matrix<double>& G, const matrix<double>& P, const matrix<double>* M,
                           bool left) {
  const matrix<double> recon = left ? matrix<double>(P * P.transpose() * G)
                                    : matrix<double>(G * P * P.transpose());
  const double mse = (recon - G).squaredNorm() / double(G.size());
  if (!M) return mse;
  const matrix<double> X = left ? matrix<double>(P * *M) : matrix<double>(*M * P.transpose());
  double c = 0;
  for (Eigen::Index i = 0; i < G.rows(); ++i)
    c += X.row(i).dot(G.row(i)) / (std::max(X.row(i).norm(), 1e-8) * std::max(G.row(i).norm(), 1e-8));
  c /= double(G.rows());
  return mse * (1 - c);
}

}  // namespace

TEST_CASE("coap: options are validated and errors name the option", "[optim][coap]") {
  auto bad = [](auto mutate, const char* what) {
    coap_options o = opts(2);
    mutate(o);
    CHECK_THROWS_WITH(coap_projector<double>(o, 6, 4), Contains(what));
  };
  bad([](coap_options& o) { o.rank = 0; }, "rank 0");
  bad([](coap_options& o) { o.update_interval = 0; }, "update_interval 0");
  bad([](coap_options& o) { o.reproject_factor = 0; }, "reproject_factor 0");
  bad([](coap_options& o) { o.proj_lr = -1; }, "proj_lr -1");
  bad([](coap_options& o) { o.proj_max_grad_norm = -0.5; }, "proj_max_grad_norm -0.5");
  bad([](coap_options& o) { o.scale = 0; }, "scale 0");
  CHECK_THROWS_WITH(coap_projector<double>(opts(5), 6, 4), Contains("rank 5") && Contains("[6,4]"));
  // Defaults of the reference optimizer.
  const coap_options d;
  CHECK(d.update_interval == 32);
  CHECK(d.reproject_factor == 5);
  CHECK(d.proj_lr == 0.1);
  CHECK_FALSE(d.restore_state);
}

TEST_CASE("coap: objective value and closed-form gradient (finite differences, double)",
          "[optim][coap][gradcheck]") {
  for (bool left : {false, true}) {
    for (bool with_m : {false, true}) {
      INFO((left ? "left" : "right") << (with_m ? ", with moment" : ", without moment"));
      const Eigen::Index m = left ? 5 : 7, n = left ? 7 : 5, r = 2, d = left ? m : n;
      const matrix<double> G = gaussian<double>(m, n, 1);
      // A non-orthonormal P (as after correlation steps), not near a stationary point.
      const matrix<double> P = gaussian<double>(d, r, 2, 0.6);
      const matrix<double> M = left ? gaussian<double>(r, n, 3) : gaussian<double>(m, r, 3);
      const matrix<double>* Mp = with_m ? &M : nullptr;
      matrix<double> grad;
      const double L = peft::detail::coap_objective<double>(G, P, Mp, left, &grad);
      CHECK_THAT(L, Catch::Matchers::WithinRel(objective_reference(G, P, Mp, left), 1e-12));
      REQUIRE(grad.rows() == d);
      REQUIRE(grad.cols() == r);
      double max_err = 0;
      const double h = 1e-6;
      for (Eigen::Index k = 0; k < P.size(); ++k) {
        matrix<double> Pp = P, Pm = P;
        Pp.data()[k] += h;
        Pm.data()[k] -= h;
        const double fd = (objective_reference(G, Pp, Mp, left) - objective_reference(G, Pm, Mp, left)) / (2 * h);
        max_err = std::max(max_err, std::abs(fd - grad.data()[k]) / std::max(1.0, std::abs(fd)));
      }
      INFO("max error " << max_err);
      CHECK(max_err < 1e-7);
      // A small step against the gradient lowers the objective.
      const matrix<double> P2 = P - 1e-3 * grad;
      CHECK(peft::detail::coap_objective<double>(G, P2, Mp, left) < L);
    }
  }
}

TEST_CASE("coap: a rank-r gradient is projected and back-projected exactly", "[optim][coap]") {
  for (auto [rows, cols] : {std::pair<Eigen::Index, Eigen::Index>{14, 9}, {9, 14}}) {
    const matrix<double> G = gaussian<double>(rows, 3, 1) * gaussian<double>(3, cols, 2);
    coap_projector<double> p(opts(3), std::size_t(rows), std::size_t(cols), 4);
    p.refresh(G, 0);
    CHECK(p.side() == (rows < cols ? projection_side::left : projection_side::right));
    const matrix<double>& P = p.basis();
    CHECK(P.rows() == std::min(rows, cols));
    CHECK((P.transpose() * P - matrix<double>::Identity(3, 3)).norm() < 1e-12);
    const matrix<double> back = p.project_back(p.project(G, 0), 0);
    CHECK((back - G).norm() < 1e-10 * G.norm());
  }
}

TEST_CASE("coap: updates every update_interval, re-projections every interval x factor",
          "[optim][coap]") {
  coap_projector<double> p(opts(2, 3, 2), 8, 5, 1);
  std::vector<std::size_t> reproj, upd;
  for (std::size_t t = 0; t < 16; ++t) {
    const matrix<double> G = gaussian<double>(8, 5, 100 + t);
    if (p.needs_refresh(t)) {
      const std::size_t r0 = p.reprojection_count(), u0 = p.update_count();
      p.refresh(G, t);
      if (p.reprojection_count() > r0) reproj.push_back(t);
      if (p.update_count() > u0) upd.push_back(t);
    }
    CHECK_FALSE(p.needs_refresh(t));
    (void)p.project(G, t);
    CHECK_FALSE(p.update_pending());
  }
  CHECK(reproj == std::vector<std::size_t>{0, 6, 12});
  CHECK(upd == std::vector<std::size_t>{3, 9, 15});
  CHECK(p.refresh_count() == 6);
}

TEST_CASE("coap: the re-projection is the range finder warm-started at the previous basis",
          "[optim][coap]") {
  for (auto [rows, cols] : {std::pair<Eigen::Index, Eigen::Index>{12, 8}, {8, 12}}) {
    const bool left = rows < cols;
    coap_projector<double> p(opts(3, 1, 1), std::size_t(rows), std::size_t(cols), 6);
    p.refresh(gaussian<double>(rows, cols, 1), 0);
    const matrix<double> P_old = p.basis();
    const matrix<double> G = gaussian<double>(rows, cols, 2);
    REQUIRE(p.needs_refresh(1));
    p.refresh(G, 1);  // 1 % (1·1) == 0: re-projection
    CHECK(p.reprojection_count() == 2);
    CHECK(same_bits(p.basis(), peft::detail::coap_range_finder<double>(G, P_old, left)));
    // It is warm-started: a cold start from another Ω spans another subspace.
    const matrix<double> cold =
        peft::detail::coap_range_finder<double>(G, gaussian<double>(P_old.rows(), 3, 9), left);
    CHECK((cold * cold.transpose() - p.basis() * p.basis().transpose()).norm() > 1e-3);
  }
}

TEST_CASE("coap: the correlation step uses the first moment from transfer()", "[optim][coap]") {
  for (auto [rows, cols] : {std::pair<Eigen::Index, Eigen::Index>{10, 6}, {6, 10}}) {
    const bool left = rows < cols;
    INFO((left ? "left" : "right"));
    coap_options o = opts(2, 2, 100);
    o.proj_lr = 0.3;
    o.proj_max_grad_norm = 0;  // no clipping: the step is exactly −lr·∇L
    coap_projector<double> p(o, std::size_t(rows), std::size_t(cols), 3);
    p.refresh(gaussian<double>(rows, cols, 1), 0);
    (void)p.project(gaussian<double>(rows, cols, 1), 0);
    const matrix<double> P_old = p.basis();
    const matrix<double> G = gaussian<double>(rows, cols, 2);
    const auto ls = p.low_shape(std::size_t(rows), std::size_t(cols));
    const matrix<double> M = gaussian<double>(Eigen::Index(ls.first), Eigen::Index(ls.second), 5);

    p.refresh(G, 2);
    CHECK(p.update_pending());
    CHECK(same_bits(p.basis(), P_old));  // waits for the moment
    matrix<double> m = M;
    p.transfer(m, moment::first);
    CHECK_FALSE(p.update_pending());
    CHECK(same_bits(m, M));  // no restore_state: the moment itself is untouched
    matrix<double> grad;
    peft::detail::coap_objective<double>(G, P_old, &M, left, &grad);
    CHECK(p.basis().isApprox(P_old - 0.3 * grad, 1e-13));

    // Without a first moment (SGD without momentum), project() takes the step on the mse alone.
    coap_projector<double> q(o, std::size_t(rows), std::size_t(cols), 3);
    q.refresh(gaussian<double>(rows, cols, 1), 0);
    (void)q.project(gaussian<double>(rows, cols, 1), 0);
    q.refresh(G, 2);
    const matrix<double> low = q.project(G, 2);
    matrix<double> grad0;
    peft::detail::coap_objective<double>(G, P_old, nullptr, left, &grad0);
    CHECK(q.basis().isApprox(P_old - 0.3 * grad0, 1e-13));
    CHECK_FALSE(q.basis().isApprox(p.basis(), 1e-6));  // the cosine factor mattered
    CHECK(low.isApprox(left ? matrix<double>(q.basis().transpose() * G) : matrix<double>(G * q.basis()), 1e-14));
  }
  // With clipping, a large gradient moves P by exactly proj_lr (norm clipped to 1).
  coap_options o = opts(2, 2, 100);
  coap_projector<double> p(o, 10, 6, 3);
  p.refresh(gaussian<double>(10, 6, 1), 0);
  const matrix<double> P_old = p.basis();
  const matrix<double> G = gaussian<double>(10, 6, 2, 300.0);
  p.refresh(G, 2);
  (void)p.project(G, 2);
  CHECK_THAT((p.basis() - P_old).norm(), Catch::Matchers::WithinRel(0.1, 1e-5));
}

TEST_CASE("coap: restore_state carries the moments through the full shape", "[optim][coap]") {
  for (auto [rows, cols] : {std::pair<Eigen::Index, Eigen::Index>{10, 6}, {6, 10}}) {
    const bool left = rows < cols;
    INFO((left ? "left" : "right"));
    for (std::size_t t1 : {2, 4}) {  // 2: correlation step, 4: re-projection
      coap_options o = opts(2, 2, 2);
      o.restore_state = true;
      coap_projector<double> p(o, std::size_t(rows), std::size_t(cols), 3);
      p.refresh(gaussian<double>(rows, cols, 1), 0);
      (void)p.project(gaussian<double>(rows, cols, 1), 0);
      const matrix<double> P_old = p.basis();
      const auto ls = p.low_shape(std::size_t(rows), std::size_t(cols));
      const matrix<double> M = gaussian<double>(Eigen::Index(ls.first), Eigen::Index(ls.second), 5);
      const matrix<double> V =
          gaussian<double>(Eigen::Index(ls.first), Eigen::Index(ls.second), 6).cwiseAbs2();
      p.refresh(gaussian<double>(rows, cols, 2), t1);
      matrix<double> m = M, v = V;
      p.transfer(m, moment::first);
      p.transfer(v, moment::second);
      const matrix<double>& P = p.basis();
      CHECK_FALSE(P.isApprox(P_old, 1e-6));
      matrix<double> em, ev;
      if (left) {
        em = P.transpose() * (P_old * M);
        ev = (P.transpose() * (P_old * V.cwiseSqrt())).cwiseAbs2();
      } else {
        em = (M * P_old.transpose()) * P;
        ev = ((V.cwiseSqrt() * P_old.transpose()) * P).cwiseAbs2();
      }
      CHECK(m.isApprox(em, 1e-12));
      CHECK(v.isApprox(ev, 1e-12));
      CHECK((v.array() >= 0).all());
    }
  }
}

TEST_CASE("coap: state is the basis; save/load round-trips", "[optim][coap]") {
  coap_options o = opts(3, 2, 2);
  coap_projector<float> p(o, 12, 8, 7);
  CHECK(p.state_bytes() == 0);
  CHECK(p.planned_state_bytes(4096, 4096) == 4096 * 3 * sizeof(float));
  projector_state<float> st0;
  p.save_state(st0);
  CHECK(st0.count("P") == 0);
  for (std::size_t t = 0; t < 5; ++t) {
    const matrix<float> G = gaussian<float>(12, 8, 10 + t);
    if (p.needs_refresh(t)) {
      p.refresh(G, t);
      matrix<float> m = gaussian<float>(12, 3, 20 + t);
      p.transfer(m, moment::first);
    }
    (void)p.project(G, t);
  }
  CHECK(p.state_bytes() == 8 * 3 * sizeof(float));
  projector_state<float> st;
  p.save_state(st);
  coap_projector<float> q(o, 12, 8, 0);
  q.load_state(st);
  CHECK(same_bits(q.basis(), p.basis()));
  CHECK(q.reprojection_count() == p.reprojection_count());
  CHECK(q.update_count() == p.update_count());
  for (std::size_t t = 5; t < 9; ++t) {
    const matrix<float> G = gaussian<float>(12, 8, 10 + t);
    CHECK(q.needs_refresh(t) == p.needs_refresh(t));
    if (p.needs_refresh(t)) {
      matrix<float> m = gaussian<float>(12, 3, 20 + t), m2 = m;
      p.refresh(G, t);
      q.refresh(G, t);
      p.transfer(m, moment::first);
      q.transfer(m2, moment::first);
    }
    CHECK(same_bits<float>(q.project(G, t), p.project(G, t)));
  }
  // Malformed states.
  projector_state<float> bad = st;
  bad["P"] = zeros<float>({8, 2});
  CHECK_THROWS_WITH(q.load_state(bad), Contains("'P' has shape [8,2]"));
  bad = st;
  bad.erase("P");
  CHECK_THROWS_WITH(q.load_state(bad), Contains("missing tensor 'P'"));
  bad = st0;
  bad["P"] = st.at("P");
  CHECK_THROWS_WITH(q.load_state(bad), Contains("unexpected tensor 'P'"));
  bad = st;
  bad["Q"] = zeros<float>({1});
  CHECK_THROWS_WITH(q.load_state(bad), Contains("unexpected tensor 'Q'"));
}
