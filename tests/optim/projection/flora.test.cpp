// Flora projector: seeded regeneration, the explicit projection formulas, the span property,
// unbiasedness E[P·Pᵀ] = I over seeds, the resample schedule, momentum transfer, state
// save/load, option validation.
#include <catch2/catch.hpp>

#include <Eigen/LU>
#include <cstring>

#include "peft/core/random.hpp"
#include "peft/optim/projection/flora.hpp"

using namespace peft;
using namespace peft::optim;
using Catch::Matchers::Contains;

namespace {

template <class T>
matrix<T> gaussian(Eigen::Index r, Eigen::Index c, std::uint64_t seed) {
  rng g(seed);
  matrix<T> m(r, c);
  for (Eigen::Index k = 0; k < m.size(); ++k) m.data()[k] = T(g.normal());
  return m;
}

template <class T>
bool same_bits(const matrix<T>& a, const matrix<T>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), std::size_t(a.size()) * sizeof(T)) == 0;
}

flora_options opts(std::size_t rank, std::size_t kappa = 1000) {
  flora_options o;
  o.rank = rank;
  o.kappa = kappa;
  return o;
}

}  // namespace

TEST_CASE("flora: options are validated and errors name the option", "[optim][flora]") {
  auto bad = [](auto mutate, const char* what) {
    flora_options o = opts(2);
    mutate(o);
    CHECK_THROWS_WITH(flora_projector<double>(o, 6, 4), Contains(what));
  };
  bad([](flora_options& o) { o.rank = 0; }, "rank 0");
  bad([](flora_options& o) { o.kappa = 0; }, "kappa 0");
  bad([](flora_options& o) { o.scale = 0; }, "scale 0");
  bad([](flora_options& o) { o.scale = std::nan(""); }, "scale");
  CHECK_THROWS_AS(flora_projector<double>(opts(5), 6, 4), value_error);
  CHECK_THROWS_WITH(flora_projector<double>(opts(5), 6, 4), Contains("rank 5") && Contains("[6,4]"));
  CHECK_NOTHROW(flora_projector<double>(opts(4), 6, 4));
}

TEST_CASE("flora: side, low shape and shape errors", "[optim][flora]") {
  flora_projector<double> right(opts(2), 6, 4, 1), left(opts(2), 4, 6, 1);
  CHECK(right.side() == projection_side::right);
  CHECK(left.side() == projection_side::left);
  CHECK(right.low_shape(6, 4) == std::pair<std::size_t, std::size_t>{6, 2});
  CHECK(left.low_shape(4, 6) == std::pair<std::size_t, std::size_t>{2, 6});
  CHECK_THROWS_WITH(right.project(gaussian<double>(6, 4, 1), 0), Contains("before the first refresh"));
  CHECK_THROWS_WITH(right.refresh(gaussian<double>(4, 6, 1), 0),
                    Contains("refresh") && Contains("[4,6]") && Contains("[6,4]"));
  right.refresh(gaussian<double>(6, 4, 1), 0);
  CHECK_THROWS_AS(right.project_back(gaussian<double>(2, 4, 1), 0), shape_error);
}

TEST_CASE("flora: the same seed regenerates a bit-identical matrix", "[optim][flora]") {
  const matrix<float> G = gaussian<float>(12, 8, 3);
  flora_projector<float> a(opts(3), 12, 8, 42), b(opts(3), 12, 8, 42), c(opts(3), 12, 8, 43);
  a.refresh(G, 0);
  b.refresh(G, 0);
  c.refresh(G, 0);
  CHECK(same_bits(a.basis(), b.basis()));
  CHECK(same_bits(a.basis(), a.basis()));  // regenerated on every call
  CHECK_FALSE(same_bits(a.basis(), c.basis()));
  CHECK(same_bits<float>(a.project(G, 0), b.project(G, 0)));
  // Entries ~ N(0, 1/r): scale check on a large draw.
  flora_projector<double> big(opts(16), 2000, 2000, 7);
  const matrix<double> P = big.matrix_for(7);
  CHECK(P.rows() == 2000);
  CHECK(P.cols() == 16);
  const double var = P.squaredNorm() / double(P.size());
  CHECK(std::abs(var - 1.0 / 16) < 0.05 / 16);
  CHECK(std::abs(P.mean()) < 0.01);
}

TEST_CASE("flora: project and project_back are the explicit products", "[optim][flora]") {
  for (auto [rows, cols] : {std::pair<Eigen::Index, Eigen::Index>{10, 7}, {7, 10}}) {
    flora_options o = opts(3);
    o.scale = 0.5;
    flora_projector<double> p(o, std::size_t(rows), std::size_t(cols), 9);
    const matrix<double> G = gaussian<double>(rows, cols, 5);
    p.refresh(G, 0);
    const matrix<double> P = p.basis();
    const matrix<double> low = p.project(G, 0);
    const matrix<double> back = p.project_back(low, 0);
    if (rows < cols) {
      CHECK(P.rows() == rows);
      CHECK(low.isApprox(P.transpose() * G, 1e-14));
      CHECK(back.isApprox(0.5 * P * low, 1e-14));
    } else {
      CHECK(P.rows() == cols);
      CHECK(low.isApprox(G * P, 1e-14));
      CHECK(back.isApprox(0.5 * low * P.transpose(), 1e-14));
    }
    // project_back without a preceding project regenerates the same matrix.
    CHECK(p.project_back(low, 0).isApprox(back, 1e-15));
  }
}

// What holds exactly for one draw: a gradient in the span of P (G = P·C, left side) comes back
// from the round trip inside that span, as P·(PᵀP)·C; undoing the Gram matrix (PᵀP)⁻¹ in the low
// space recovers C, and so G, exactly. P·Pᵀ itself is not a projection (only E[P·Pᵀ] = I).
TEST_CASE("flora: a gradient in the span of P round-trips within the span", "[optim][flora]") {
  flora_projector<double> p(opts(3), 8, 20, 11);  // left: P [8, 3]
  p.refresh(matrix<double>::Zero(8, 20), 0);
  const matrix<double> P = p.basis();
  const matrix<double> C = gaussian<double>(3, 20, 2);
  const matrix<double> G = P * C;
  const matrix<double> low = p.project(G, 0);
  const matrix<double> back = p.project_back(low, 0);
  const matrix<double> gram = P.transpose() * P;
  CHECK(back.isApprox(P * gram * C, 1e-12));
  // back lies in span(P): its residual off the span vanishes.
  const matrix<double> proj_span = P * gram.inverse() * P.transpose();
  CHECK((back - proj_span * back).norm() < 1e-12 * back.norm());
  // The low coordinates determine G exactly.
  const matrix<double> Crec = gram.inverse() * low;
  CHECK((P * Crec - G).norm() < 1e-12 * G.norm());
  // But one draw is not an orthogonal projection: P·Pᵀ·G != G in general.
  CHECK((back - G).norm() > 1e-3 * G.norm());
}

// Johnson–Lindenstrauss-style unbiasedness: over many seeds, the mean of P·Pᵀ is the identity.
// Each entry of the mean has standard deviation <= sqrt(2/(r·N)) = 0.035 here; the bound 0.2 is
// about 5.7 of those (loose, and fixed seeds make the test deterministic).
TEST_CASE("flora: E[P Pt] = I over seeds (statistical)", "[optim][flora]") {
  const std::size_t d = 8, r = 4, N = 400;
  matrix<double> mean = matrix<double>::Zero(d, d);
  flora_projector<double> p(opts(r), d, 30, 0);
  for (std::size_t s = 0; s < N; ++s) {
    const matrix<double> P = p.matrix_for(1000 + s);
    mean += P * P.transpose();
  }
  mean /= double(N);
  const double err = (mean - matrix<double>::Identity(d, d)).cwiseAbs().maxCoeff();
  INFO("max |mean(P Pt) - I| = " << err);
  CHECK(err < 0.2);
  // And the round trip is unbiased for a fixed G (same statistic, through the projector API).
  const matrix<double> G = gaussian<double>(d, 30, 4);
  matrix<double> acc = matrix<double>::Zero(d, 30);
  flora_projector<double> q(opts(r, 1), d, 30, 77);
  for (std::size_t s = 0; s < N; ++s) {
    if (q.needs_refresh(s)) q.refresh(G, s);
    acc += q.project_back(q.project(G, s), s);
  }
  acc /= double(N);
  INFO("relative error of the mean round trip: " << (acc - G).norm() / G.norm());
  CHECK((acc - G).norm() < 0.25 * G.norm());
  CHECK(q.refresh_count() == N);
}

// The transfer is unbiased but grows norms: E‖P·Pᵀ·x‖² = (d + r + 1)/r·‖x‖² (flora.hpp's
// stability note). Mean over 2000 draws, d = 12, r = 4: 17/4 = 4.25 (standard error ~0.1).
TEST_CASE("flora: second moment of the round trip (statistical)", "[optim][flora]") {
  const std::size_t d = 12, r = 4, N = 2000;
  flora_projector<double> p(opts(r), d, 40, 0);
  const vector<double> x = gaussian<double>(Eigen::Index(d), 1, 5).col(0);
  double acc = 0;
  for (std::size_t s = 0; s < N; ++s) {
    const matrix<double> P = p.matrix_for(5000 + s);
    acc += (P * (P.transpose() * x)).squaredNorm();
  }
  const double ratio = acc / double(N) / x.squaredNorm();
  INFO("E|P Pt x|^2 / |x|^2 = " << ratio);
  CHECK(std::abs(ratio - 17.0 / 4) < 0.5);
}

TEST_CASE("flora: resampling happens exactly every kappa steps", "[optim][flora]") {
  flora_projector<double> p(opts(2, 5), 6, 4, 123);
  const matrix<double> G = gaussian<double>(6, 4, 1);
  std::vector<std::size_t> at;
  std::vector<std::uint64_t> seeds;
  for (std::size_t t = 0; t < 17; ++t) {
    if (p.needs_refresh(t)) {
      p.refresh(G, t);
      at.push_back(t);
      seeds.push_back(p.seed());
    }
    CHECK_FALSE(p.needs_refresh(t));  // not twice at the same step
    (void)p.project(G, t);
  }
  CHECK(at == std::vector<std::size_t>{0, 5, 10, 15});
  CHECK(seeds[0] == 123);  // the first draw uses the site seed
  for (std::size_t i = 1; i < seeds.size(); ++i) CHECK(seeds[i] == flora_detail::next_seed(seeds[i - 1]));
  CHECK(p.refresh_count() == 4);
  CHECK(p.last_refresh_step() == 15);
  // A projector starting late still draws before its first projection.
  flora_projector<double> q(opts(2, 5), 6, 4, 1);
  CHECK(q.needs_refresh(7));
}

TEST_CASE("flora: transfer is up with the old matrix, down with the new one", "[optim][flora]") {
  for (auto [rows, cols] : {std::pair<std::size_t, std::size_t>{9, 5}, {5, 9}}) {
    flora_options o = opts(3, 2);
    flora_projector<double> p(o, rows, cols, 5);
    const matrix<double> G = gaussian<double>(Eigen::Index(rows), Eigen::Index(cols), 8);
    p.refresh(G, 0);
    const matrix<double> P_old = p.basis();
    const auto ls = p.low_shape(rows, cols);
    matrix<double> m = gaussian<double>(Eigen::Index(ls.first), Eigen::Index(ls.second), 3);
    matrix<double> v = gaussian<double>(Eigen::Index(ls.first), Eigen::Index(ls.second), 4).cwiseAbs();
    // No transfer on the first draw.
    matrix<double> m0 = m;
    p.transfer(m0, moment::first);
    CHECK(same_bits(m0, m));
    (void)p.project(G, 0);
    REQUIRE(p.needs_refresh(2));
    p.refresh(G, 2);
    const matrix<double> P_new = p.basis();
    CHECK_FALSE(P_new.isApprox(P_old));
    const matrix<double> expected = rows < cols
                                        ? matrix<double>(P_new.transpose() * (P_old * m))
                                        : matrix<double>((m * P_old.transpose()) * P_new);
    matrix<double> m1 = m, v1 = v;
    p.transfer(m1, moment::first);
    p.transfer(v1, moment::second);
    CHECK(m1.isApprox(expected, 1e-12));
    CHECK(same_bits(v1, v));  // second moments are kept
    matrix<double> bad(2, 2);
    CHECK_THROWS_AS(p.transfer(bad, moment::first), shape_error);
  }
}

TEST_CASE("flora: state is the seed; save/load round-trips", "[optim][flora]") {
  flora_projector<float> p(opts(3, 4), 10, 6, 99);
  CHECK(p.state_bytes() == 0);
  CHECK(p.planned_state_bytes(4096, 4096) == 8);
  const matrix<float> G = gaussian<float>(10, 6, 1);
  for (std::size_t t = 0; t < 6; ++t) {
    if (p.needs_refresh(t)) p.refresh(G, t);
    (void)p.project(G, t);
  }
  CHECK(p.state_bytes() == 8);
  projector_state<float> st;
  p.save_state(st);
  CHECK(st.size() == 1);
  CHECK(st.count("meta") == 1);

  flora_projector<float> q(opts(3, 4), 10, 6, 0);
  q.load_state(st);
  CHECK(q.seed() == p.seed());
  CHECK(same_bits(q.basis(), p.basis()));
  CHECK(q.last_refresh_step() == 4);
  CHECK(q.refresh_count() == 2);
  for (std::size_t t = 6; t < 10; ++t) {
    CHECK(q.needs_refresh(t) == p.needs_refresh(t));
    if (p.needs_refresh(t)) {
      p.refresh(G, t);
      q.refresh(G, t);
    }
    CHECK(same_bits<float>(q.project(G, t), p.project(G, t)));
  }

  // Malformed states are rejected.
  projector_state<float> extra = st;
  extra["P"] = zeros<float>({3});
  CHECK_THROWS_WITH(q.load_state(extra), Contains("unexpected tensor 'P'"));
  CHECK_THROWS_WITH(q.load_state({}), Contains("missing tensor 'meta'"));
  projector_state<float> bad;
  bad["meta"] = zeros<float>({5});
  CHECK_THROWS_AS(q.load_state(bad), shape_error);
}
