// DCT projector: the shared orthonormal basis, column selection by ℓ1 (or ℓ2) norm, exact
// round trip of a gradient in the selected frequencies, the refresh schedule, moment reindexing
// against the dense rotation, state save/load, options.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>
#include <set>
#include <vector>

#include "peft/core/random.hpp"
#include "peft/optim/projection/dct.hpp"

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

dct_options opts(std::size_t rank, std::size_t gap = 200) {
  dct_options o;
  o.rank = rank;
  o.update_interval = gap;
  return o;
}

// A [rows, cols] gradient whose projected-side DCT coefficients are nonzero only at `freqs`,
// with weights `w` (row/column k of the coefficient matrix scaled by w[k]).
matrix<double> in_span(Eigen::Index rows, Eigen::Index cols, const std::vector<std::size_t>& freqs,
                       const std::vector<double>& w, std::uint64_t seed) {
  const bool left = rows < cols;
  const std::size_t s = std::size_t(left ? rows : cols);
  const matrix<double> D = peft::detail::dct_matrix<double>(s);
  if (left) {
    matrix<double> C = matrix<double>::Zero(Eigen::Index(s), cols);  // coefficients D·G
    const matrix<double> R = gaussian<double>(Eigen::Index(freqs.size()), cols, seed);
    for (std::size_t i = 0; i < freqs.size(); ++i) C.row(Eigen::Index(freqs[i])) = w[i] * R.row(Eigen::Index(i));
    return D.transpose() * C;
  }
  matrix<double> C = matrix<double>::Zero(rows, Eigen::Index(s));  // coefficients G·Dᵀ
  const matrix<double> R = gaussian<double>(rows, Eigen::Index(freqs.size()), seed);
  for (std::size_t i = 0; i < freqs.size(); ++i) C.col(Eigen::Index(freqs[i])) = w[i] * R.col(Eigen::Index(i));
  return C * D;
}

std::set<std::uint32_t> as_set(const std::vector<std::uint32_t>& v) { return {v.begin(), v.end()}; }

}  // namespace

TEST_CASE("dct: options are validated and errors name the option", "[optim][dct]") {
  auto bad = [](auto mutate, const char* what) {
    dct_options o = opts(2);
    mutate(o);
    CHECK_THROWS_WITH(dct_projector<double>(o, 6, 4), Contains(what));
  };
  bad([](dct_options& o) { o.rank = 0; }, "rank 0");
  bad([](dct_options& o) { o.update_interval = 0; }, "update_interval 0");
  bad([](dct_options& o) { o.norm = 3; }, "norm 3");
  bad([](dct_options& o) { o.scale = 0; }, "scale 0");
  CHECK_THROWS_WITH(dct_projector<double>(opts(5), 6, 4), Contains("rank 5") && Contains("[6,4]"));
}

TEST_CASE("dct: one orthonormal basis per size, shared by the projectors", "[optim][dct]") {
  dct_projector<double> a(opts(2), 9, 8), b(opts(3), 20, 8), c(opts(2), 8, 20), d(opts(2), 12, 10);
  CHECK(a.basis_size() == 8);
  CHECK(c.basis_size() == 8);  // left side: rows
  CHECK(a.shared_basis().get() == b.shared_basis().get());
  CHECK(a.shared_basis().get() == c.shared_basis().get());
  CHECK(a.shared_basis().get() != d.shared_basis().get());
  const matrix<double>& D = *a.shared_basis();
  CHECK((D * D.transpose() - matrix<double>::Identity(8, 8)).norm() < 1e-13);
  CHECK((D.transpose() * D - matrix<double>::Identity(8, 8)).norm() < 1e-13);
  CHECK(a.shared_basis_bytes() == 8 * 8 * sizeof(double));
  // Orthonormal in float too.
  dct_projector<float> f(opts(2), 64, 64);
  const matrix<float>& Df = *f.shared_basis();
  CHECK((Df * Df.transpose() - matrix<float>::Identity(64, 64)).cwiseAbs().maxCoeff() < 1e-5f);
}

TEST_CASE("dct: a gradient in r frequencies is found and round-trips exactly", "[optim][dct]") {
  for (auto [rows, cols] : {std::pair<Eigen::Index, Eigen::Index>{14, 10}, {10, 14}}) {
    const std::vector<std::size_t> freqs{7, 2, 9};
    const matrix<double> G = in_span(rows, cols, freqs, {3.0, 2.0, 1.0}, 1);
    dct_options o = opts(3);
    o.scale = 1.0;
    dct_projector<double> p(o, std::size_t(rows), std::size_t(cols));
    p.refresh(G, 0);
    CHECK(as_set(p.indices()) == std::set<std::uint32_t>{2, 7, 9});
    const matrix<double> Q = p.basis();  // [s, r]
    CHECK(Q.cols() == 3);
    CHECK((Q.transpose() * Q - matrix<double>::Identity(3, 3)).norm() < 1e-13);
    const matrix<double> low = p.project(G, 0);
    if (rows < cols)
      CHECK(low.isApprox(Q.transpose() * G, 1e-14));
    else
      CHECK(low.isApprox(G * Q, 1e-14));
    const matrix<double> back = p.project_back(low, 0);
    CHECK((back - G).norm() < 1e-12 * G.norm());
  }
}

TEST_CASE("dct: columns are ranked by l1 norm (l2 on request), in descending order",
          "[optim][dct]") {
  // Coefficients of frequency 2: four entries of 1 (l1 = 4, l2 = 2); of frequency 5: one entry of
  // 3 (l1 = 3, l2 = 3); everything else 0.1 at most.
  for (bool left : {true, false}) {
    INFO((left ? "left" : "right"));
    const std::size_t s = 8, other = 12;
    matrix<double> C = 0.01 * gaussian<double>(Eigen::Index(s), Eigen::Index(other), 3);
    C.row(2).setZero();
    C.row(2).head(4).setOnes();
    C.row(5).setZero();
    C(5, 0) = 3;
    const matrix<double> D = peft::detail::dct_matrix<double>(s);
    const matrix<double> G = left ? matrix<double>(D.transpose() * C) : matrix<double>((D.transpose() * C).transpose());
    const std::size_t rows = std::size_t(G.rows()), cols = std::size_t(G.cols());
    dct_options o1 = opts(2), o2 = opts(2);
    o2.norm = 2;
    dct_projector<double> p1(o1, rows, cols), p2(o2, rows, cols);
    p1.refresh(G, 0);
    p2.refresh(G, 0);
    CHECK(p1.indices() == std::vector<std::uint32_t>{2, 5});
    CHECK(p2.indices() == std::vector<std::uint32_t>{5, 2});
    dct_options o3 = opts(1);
    dct_projector<double> q1(o3, rows, cols);
    q1.refresh(G, 0);
    CHECK(q1.indices() == std::vector<std::uint32_t>{2});
  }
}

TEST_CASE("dct: refreshes exactly every update_interval steps", "[optim][dct]") {
  dct_projector<double> p(opts(2, 4), 9, 6);
  std::vector<std::size_t> at;
  for (std::size_t t = 0; t < 13; ++t) {
    const matrix<double> G = gaussian<double>(9, 6, t);
    if (p.needs_refresh(t)) {
      p.refresh(G, t);
      at.push_back(t);
    }
    CHECK_FALSE(p.needs_refresh(t));
    (void)p.project(G, t);
  }
  CHECK(at == std::vector<std::size_t>{0, 4, 8, 12});
  CHECK(p.refresh_count() == 4);
}

TEST_CASE("dct: moment rotation is the reindexing Q_new^T Q_old", "[optim][dct]") {
  for (auto [rows, cols] : {std::pair<Eigen::Index, Eigen::Index>{14, 10}, {10, 14}}) {
    const bool left = rows < cols;
    INFO((left ? "left" : "right"));
    dct_options o = opts(3, 1);
    o.rotate_moments = true;
    dct_projector<double> p(o, std::size_t(rows), std::size_t(cols));
    p.refresh(in_span(rows, cols, {1, 3, 5}, {100, 10, 1}, 1), 0);
    REQUIRE(p.indices() == std::vector<std::uint32_t>{1, 3, 5});
    (void)p.project(gaussian<double>(rows, cols, 1), 0);
    const matrix<double> Q_old = p.basis();
    const auto ls = p.low_shape(std::size_t(rows), std::size_t(cols));
    const matrix<double> M = gaussian<double>(Eigen::Index(ls.first), Eigen::Index(ls.second), 4);
    const matrix<double> V = M.cwiseAbs2();
    p.refresh(in_span(rows, cols, {7, 5, 1}, {100, 10, 1}, 2), 1);
    REQUIRE(p.indices() == std::vector<std::uint32_t>{7, 5, 1});
    const matrix<double> Q_new = p.basis();
    matrix<double> m = M, v = V;
    p.transfer(m, moment::first);
    p.transfer(v, moment::second);
    const matrix<double> R = Q_new.transpose() * Q_old;  // [r, r], 0/1 up to rounding
    const matrix<double> em = left ? matrix<double>(R * M) : matrix<double>(M * R.transpose());
    const matrix<double> ev = left ? matrix<double>(R * V) : matrix<double>(V * R.transpose());
    CHECK((m - em).norm() < 1e-12);
    CHECK((v - ev).norm() < 1e-12);
    // Frequency 7 is new: its moment starts at zero; 5 and 1 moved from positions 2 and 0.
    if (left) {
      CHECK(m.row(0).isZero());
      CHECK(same_bits<double>(m.row(1), M.row(2)));
      CHECK(same_bits<double>(m.row(2), M.row(0)));
    } else {
      CHECK(m.col(0).isZero());
      CHECK(same_bits<double>(m.col(1), M.col(2)));
      CHECK(same_bits<double>(m.col(2), M.col(0)));
    }
  }
  // Without rotate_moments the moments are kept as they are.
  dct_projector<double> p(opts(3, 1), 14, 10);
  p.refresh(in_span(14, 10, {1, 3, 5}, {100, 10, 1}, 1), 0);
  (void)p.project(gaussian<double>(14, 10, 1), 0);
  p.refresh(in_span(14, 10, {7, 5, 1}, {100, 10, 1}, 2), 1);
  const matrix<double> M = gaussian<double>(14, 3, 4);
  matrix<double> m = M;
  p.transfer(m, moment::first);
  CHECK(same_bits(m, M));
}

TEST_CASE("dct: state is the r indices; save/load round-trips", "[optim][dct]") {
  dct_projector<float> p(opts(4, 3), 16, 12);
  CHECK(p.state_bytes() == 0);
  CHECK(p.planned_state_bytes(4096, 4096) == 4 * sizeof(std::uint32_t));
  for (std::size_t t = 0; t < 5; ++t) {
    const matrix<float> G = gaussian<float>(16, 12, 30 + t);
    if (p.needs_refresh(t)) p.refresh(G, t);
    (void)p.project(G, t);
  }
  CHECK(p.state_bytes() == 4 * sizeof(std::uint32_t));
  projector_state<float> st;
  p.save_state(st);
  CHECK(st.at("indices").size() == 4);
  dct_projector<float> q(opts(4, 3), 16, 12);
  q.load_state(st);
  CHECK(q.indices() == p.indices());
  CHECK(q.last_refresh_step() == p.last_refresh_step());
  for (std::size_t t = 5; t < 8; ++t) {
    const matrix<float> G = gaussian<float>(16, 12, 30 + t);
    CHECK(q.needs_refresh(t) == p.needs_refresh(t));
    if (p.needs_refresh(t)) {
      p.refresh(G, t);
      q.refresh(G, t);
    }
    const matrix<float> a = p.project(G, t), b = q.project(G, t);
    CHECK(same_bits(a, b));
    CHECK(same_bits<float>(p.project_back(a, t), q.project_back(b, t)));
  }
  // Malformed states.
  auto with_indices = [&](std::vector<float> v) {
    projector_state<float> s = st;
    s["indices"] = make_tensor<float>({v.size()}, v);
    return s;
  };
  CHECK_THROWS_WITH(q.load_state(with_indices({0, 1, 2, 12})), Contains("entry 3 is 12"));
  CHECK_THROWS_WITH(q.load_state(with_indices({0, 1, 2, 1.5f})), Contains("entry 3"));
  CHECK_THROWS_WITH(q.load_state(with_indices({0, 1, 2, 1})), Contains("repeats frequency 1"));
  CHECK_THROWS_AS(q.load_state(with_indices({0, 1, 2})), shape_error);
  projector_state<float> bad = st;
  bad["P"] = zeros<float>({1});
  CHECK_THROWS_WITH(q.load_state(bad), Contains("unexpected tensor 'P'"));
  CHECK(q.indices() == p.indices());  // failed loads changed nothing
}
