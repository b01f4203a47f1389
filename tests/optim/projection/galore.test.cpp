// GaLore projector: the side rule of galore_projector.py, the basis is the top-r singular
// subspace, exactness on rank-r gradients, scale, refresh at the gap, moment transfer, exact vs
// randomized SVD, checkpoint state, errors.
#include <catch2/catch.hpp>

#include <Eigen/SVD>
#include <cmath>
#include <vector>

#include "peft/optim/projection/galore.hpp"

using namespace peft;
using Catch::Matchers::Contains;
using optim::galore_proj_type;
using optim::projection_side;

namespace {
matrix<double> gaussian(Eigen::Index m, Eigen::Index n, std::uint64_t seed) {
  rng g(seed);
  matrix<double> a(m, n);
  for (Eigen::Index i = 0; i < a.size(); ++i) a.data()[i] = g.normal();
  return a;
}
// A [m, n] matrix with singular values 2^-i.
matrix<double> decaying(Eigen::Index m, Eigen::Index n, std::uint64_t seed) {
  const Eigen::Index k = std::min(m, n);
  const matrix<double> U = detail::orthonormal_basis<double>(gaussian(m, k, seed));
  const matrix<double> V = detail::orthonormal_basis<double>(gaussian(n, k, seed + 1));
  vector<double> s(k);
  for (Eigen::Index i = 0; i < k; ++i) s[i] = std::pow(2.0, -double(i));
  return U * s.asDiagonal() * V.transpose();
}
optim::galore_options opts(std::size_t rank, galore_proj_type t = galore_proj_type::standard,
                           double scale = 1.0) {
  optim::galore_options o;
  o.rank = rank;
  o.proj_type = t;
  o.scale = scale;
  return o;
}
}  // namespace

TEST_CASE("galore side rule follows galore_projector.py", "[optim][galore]") {
  // std: shape[0] >= shape[1] -> right (G @ Vh[:r].T), else left (U[:, :r].T @ G).
  REQUIRE(optim::galore_side(galore_proj_type::standard, 10, 6) == projection_side::right);
  REQUIRE(optim::galore_side(galore_proj_type::standard, 6, 6) == projection_side::right);
  REQUIRE(optim::galore_side(galore_proj_type::standard, 6, 10) == projection_side::left);
  REQUIRE(optim::galore_side(galore_proj_type::reverse_standard, 10, 6) == projection_side::left);
  REQUIRE(optim::galore_side(galore_proj_type::reverse_standard, 6, 10) == projection_side::right);
  REQUIRE(optim::galore_side(galore_proj_type::left, 10, 6) == projection_side::left);
  REQUIRE(optim::galore_side(galore_proj_type::right, 6, 10) == projection_side::right);
  REQUIRE(optim::galore_side(galore_proj_type::full, 6, 10) == projection_side::both);

  optim::galore_projector<double> tall(opts(3), 10, 6), wide(opts(3), 6, 10);
  REQUIRE(tall.low_shape(10, 6) == std::pair<std::size_t, std::size_t>{10, 3});
  REQUIRE(wide.low_shape(6, 10) == std::pair<std::size_t, std::size_t>{3, 10});
  optim::galore_projector<double> both(opts(3, galore_proj_type::full), 6, 10);
  REQUIRE(both.low_shape(6, 10) == std::pair<std::size_t, std::size_t>{3, 3});
}

TEST_CASE("the basis spans the top-r singular vectors of the gradient", "[optim][galore]") {
  const matrix<double> G = decaying(12, 8, 1);
  Eigen::JacobiSVD<matrix<double>> svd(G, Eigen::ComputeThinU | Eigen::ComputeThinV);
  for (auto t : {galore_proj_type::left, galore_proj_type::right, galore_proj_type::full}) {
    optim::galore_projector<double> p(opts(3, t), 12, 8);
    p.refresh(G, 0);
    if (t != galore_proj_type::right) {
      const matrix<double> Ur = svd.matrixU().leftCols(3);
      REQUIRE((p.left_basis() * p.left_basis().transpose() - Ur * Ur.transpose()).norm() < 1e-10);
    }
    if (t != galore_proj_type::left) {
      const matrix<double> Vr = svd.matrixV().leftCols(3);
      REQUIRE((p.right_basis() * p.right_basis().transpose() - Vr * Vr.transpose()).norm() <
              1e-10);
    }
    // Projected back, the gradient is its best rank-3 approximation.
    const matrix<double> best = svd.matrixU().leftCols(3) * svd.singularValues().head(3).asDiagonal() *
                                svd.matrixV().leftCols(3).transpose();
    REQUIRE((p.project_back(p.project(G, 0), 0) - best).norm() < 1e-10);
  }
}

TEST_CASE("a gradient of rank <= r is projected and back-projected exactly", "[optim][galore]") {
  const matrix<double> G = gaussian(20, 3, 2) * gaussian(3, 12, 3);  // rank 3
  for (auto solver : {optim::svd_solver::exact, optim::svd_solver::randomized})
    for (auto t : {galore_proj_type::standard, galore_proj_type::reverse_standard,
                   galore_proj_type::full}) {
      for (std::size_t r : {3, 5}) {
        auto o = opts(r, t, 0.25);
        o.solver = solver;
        optim::galore_projector<double> p(o, 20, 12, 11);
        p.refresh(G, 0);
        const matrix<double> back = p.project_back(p.project(G, 0), 0);
        REQUIRE((back / 0.25 - G).norm() < 1e-10 * G.norm());  // scale multiplies project_back
      }
    }
}

TEST_CASE("refresh happens exactly every update_proj_gap steps", "[optim][galore]") {
  auto o = opts(2);
  o.update_proj_gap = 10;
  optim::galore_projector<double> p(o, 8, 6);
  std::vector<std::size_t> refreshed;
  for (std::size_t step = 0; step < 35; ++step) {
    const matrix<double> G = gaussian(8, 6, 100 + step);
    if (p.needs_refresh(step)) {
      p.refresh(G, step);
      refreshed.push_back(step);
    }
    REQUIRE_FALSE(p.needs_refresh(step));  // no second refresh within a step
    (void)p.project(G, step);
  }
  REQUIRE(refreshed == std::vector<std::size_t>{0, 10, 20, 30});
  REQUIRE(p.refresh_count() == 4);
  REQUIRE(p.last_refresh_step() == 30);
  // A projector first used mid-run refreshes at once (no basis yet).
  optim::galore_projector<double> late(o, 8, 6);
  REQUIRE(late.needs_refresh(7));
}

TEST_CASE("between refreshes the basis is fixed", "[optim][galore]") {
  auto o = opts(2, galore_proj_type::left);
  o.update_proj_gap = 3;
  optim::galore_projector<double> p(o, 6, 9);
  p.refresh(gaussian(6, 9, 1), 0);
  const matrix<double> P0 = p.left_basis();
  const matrix<double> G = gaussian(6, 9, 2);
  REQUIRE((p.project(G, 1) - P0.transpose() * G).norm() < 1e-14);
  REQUIRE((p.project_back(p.project(G, 2), 2) - P0 * P0.transpose() * G).norm() < 1e-12);
}

TEST_CASE("moments are kept by default; rotate_first_moment rotates the first moment",
          "[optim][galore]") {
  for (auto t : {galore_proj_type::left, galore_proj_type::right, galore_proj_type::full}) {
    auto o = opts(3, t);
    const matrix<double> G0 = gaussian(10, 7, 1), G1 = gaussian(10, 7, 2);
    optim::galore_projector<double> keep(o, 10, 7);
    o.rotate_first_moment = true;
    optim::galore_projector<double> rot(o, 10, 7);
    keep.refresh(G0, 0);
    rot.refresh(G0, 0);
    const auto ls = rot.low_shape(10, 7);
    const matrix<double> M = gaussian(Eigen::Index(ls.first), Eigen::Index(ls.second), 3);
    const matrix<double> P0 = rot.left_basis(), Q0 = rot.right_basis();
    keep.refresh(G1, 5);
    rot.refresh(G1, 5);
    matrix<double> a = M, b = M, v = M;
    keep.transfer(a, optim::moment::first);
    rot.transfer(b, optim::moment::first);
    rot.transfer(v, optim::moment::second);
    REQUIRE(a == M);
    REQUIRE(v == M);
    matrix<double> expected = M;
    if (t != galore_proj_type::right) expected = rot.left_basis().transpose() * P0 * expected;
    if (t != galore_proj_type::left) expected = expected * Q0.transpose() * rot.right_basis();
    REQUIRE((b - expected).norm() < 1e-12);
  }
  // Rotation is exact when the new basis spans the same subspace: the full-space moment is kept.
  auto o = opts(3, galore_proj_type::left);
  o.rotate_first_moment = true;
  optim::galore_projector<double> p(o, 10, 7);
  const matrix<double> G = gaussian(10, 3, 4) * gaussian(3, 7, 5);  // rank 3
  p.refresh(G, 0);
  const matrix<double> M = gaussian(3, 7, 6), full_before = p.left_basis() * M;
  p.refresh(G * 2.0 + gaussian(10, 3, 4) * gaussian(3, 7, 7), 1);  // same column space
  matrix<double> m = M;
  p.transfer(m, optim::moment::first);
  REQUIRE((p.left_basis() * m - full_before).norm() < 1e-10);
}

TEST_CASE("randomized SVD finds the exact subspace on a decaying spectrum", "[optim][galore]") {
  const matrix<double> G = decaying(40, 30, 8);
  auto o = opts(4, galore_proj_type::left);
  optim::galore_projector<double> exact(o, 40, 30);
  o.solver = optim::svd_solver::randomized;
  o.power_iters = 2;
  optim::galore_projector<double> fast(o, 40, 30, 5);
  exact.refresh(G, 0);
  fast.refresh(G, 0);
  const auto& A = exact.left_basis();
  const auto& B = fast.left_basis();
  REQUIRE((A * A.transpose() - B * B.transpose()).norm() < 1e-8);
  REQUIRE(fast.state_bytes() == 40 * 4 * sizeof(double) + 32);  // basis + rng words
  REQUIRE(exact.state_bytes() == 40 * 4 * sizeof(double));
  // Same seed, same basis.
  optim::galore_projector<double> again(o, 40, 30, 5);
  again.refresh(G, 0);
  REQUIRE(again.left_basis() == B);
}

TEST_CASE("randomized solver: the fast tail keeps the exact tail's energy on every side",
          "[optim][galore]") {
  REQUIRE(optim::galore_options{}.fast_tail);  // the default
  // σ_i = 1/(i+1): a gradient-like spectrum where the randomized basis is not exact.
  const Eigen::Index m = 90, n = 70, k = 70;
  const matrix<double> U = detail::orthonormal_basis<double>(gaussian(m, k, 20));
  const matrix<double> V = detail::orthonormal_basis<double>(gaussian(n, k, 21));
  vector<double> s(k);
  for (Eigen::Index i = 0; i < k; ++i) s[i] = 1.0 / double(i + 1);
  const double best = s.head(6).squaredNorm();
  for (const matrix<double>& G : {matrix<double>(U * s.asDiagonal() * V.transpose()),
                                  matrix<double>(V * s.asDiagonal() * U.transpose())})
    for (auto t : {galore_proj_type::left, galore_proj_type::right, galore_proj_type::full})
      for (std::size_t iters : {1, 2}) {
        auto o = opts(6, t);
        o.solver = optim::svd_solver::randomized;
        o.power_iters = iters;
        optim::galore_projector<double> fast(o, G.rows(), G.cols(), 3);
        o.fast_tail = false;
        optim::galore_projector<double> exact(o, G.rows(), G.cols(), 3);
        fast.refresh(G, 0);
        exact.refresh(G, 0);
        auto energy = [&](const optim::galore_projector<double>& p) {
          matrix<double> low = G;
          if (t != galore_proj_type::right) low = p.left_basis().transpose() * low;
          if (t != galore_proj_type::left) low = low * p.right_basis();
          return low.squaredNorm() / best;
        };
        INFO("side " << int(t) << ", [" << G.rows() << "," << G.cols() << "], power_iters "
                     << iters << ": fast " << energy(fast) << ", exact " << energy(exact));
        CHECK(energy(fast) > 0.99);
        // One-sided: the basis used is the accurate factor of either tail. Two-sided (full):
        // the fast tail's right basis is half a power iteration behind the exact tail's.
        const double tol = t == galore_proj_type::full && iters == 1 ? 5e-3 : 1e-3;
        CHECK(std::abs(energy(fast) / energy(exact) - 1) < tol);
        // Orthonormal bases of the right shapes, only where used.
        if (t != galore_proj_type::right)
          CHECK((fast.left_basis().transpose() * fast.left_basis() -
                 matrix<double>::Identity(6, 6)).norm() < 1e-12);
        else
          CHECK(fast.left_basis().size() == 0);
        if (t != galore_proj_type::left)
          CHECK((fast.right_basis().transpose() * fast.right_basis() -
                 matrix<double>::Identity(6, 6)).norm() < 1e-12);
        else
          CHECK(fast.right_basis().size() == 0);
      }
}

TEST_CASE("galore works in float", "[optim][galore]") {
  optim::galore_projector<float> p(opts(2), 6, 4);
  const matrix<float> G = gaussian(6, 2, 1).cast<float>() * gaussian(2, 4, 2).cast<float>();
  p.refresh(G, 0);
  REQUIRE((p.project_back(p.project(G, 0), 0) - G).norm() < 1e-4f * G.norm());
  REQUIRE(p.state_bytes() == 4 * 2 * sizeof(float));
  REQUIRE(p.planned_state_bytes(6, 4) == p.state_bytes());
}

TEST_CASE("galore state round-trips and rejects foreign state", "[optim][galore]") {
  auto o = opts(2, galore_proj_type::full);
  o.solver = optim::svd_solver::randomized;
  optim::galore_projector<float> p(o, 6, 5, 3);
  optim::projector_state<float> empty_state;
  p.save_state(empty_state);
  REQUIRE(empty_state.count("P") == 0);  // nothing but meta before the first refresh
  p.refresh(gaussian(6, 5, 1).cast<float>(), 0);
  optim::projector_state<float> st;
  p.save_state(st);
  REQUIRE(shape_of(st.at("P")) == shape_t{6, 2});
  REQUIRE(shape_of(st.at("Q")) == shape_t{5, 2});
  optim::galore_projector<float> q(o, 6, 5, 99);
  q.load_state(st);
  REQUIRE(q.left_basis() == p.left_basis());
  REQUIRE(q.right_basis() == p.right_basis());
  REQUIRE(q.refresh_count() == 1);
  // The rng continues where it was: the next refresh gives the same basis.
  const matrix<float> G = gaussian(6, 5, 2).cast<float>();
  p.refresh(G, 200);
  q.refresh(G, 200);
  REQUIRE(q.left_basis() == p.left_basis());

  auto bad = st;
  bad["P"] = zeros<float>({5, 2});
  REQUIRE_THROWS_WITH(q.load_state(bad), Contains("'P'") && Contains("[5,2]"));
  bad = st;
  bad.erase("meta");
  REQUIRE_THROWS_WITH(q.load_state(bad), Contains("meta"));
  bad = st;
  bad["meta"](0) = 0.5f;
  REQUIRE_THROWS_WITH(q.load_state(bad), Contains("meta"));
  bad = st;
  bad["U"] = zeros<float>({1});
  REQUIRE_THROWS_WITH(q.load_state(bad), Contains("'U'"));
  // A left-only projector refuses a right basis.
  optim::galore_projector<float> left(opts(2, galore_proj_type::left), 6, 5);
  REQUIRE_THROWS_WITH(left.load_state(st), Contains("'Q'"));
}

TEST_CASE("galore rejects bad options and shapes, naming them", "[optim][galore]") {
  auto o = opts(0);
  REQUIRE_THROWS_WITH(optim::galore_projector<float>(o, 8, 8), Contains("rank"));
  o = opts(9);
  REQUIRE_THROWS_WITH(optim::galore_projector<float>(o, 8, 10),
                      Contains("rank 9") && Contains("[8,10]"));
  o = opts(2);
  o.update_proj_gap = 0;
  REQUIRE_THROWS_WITH(optim::galore_projector<float>(o, 8, 8), Contains("update_proj_gap"));
  o = opts(2, galore_proj_type::standard, 0.0);
  REQUIRE_THROWS_WITH(optim::galore_projector<float>(o, 8, 8), Contains("scale"));
  optim::galore_projector<double> p(opts(2), 8, 6);
  REQUIRE_THROWS_WITH(p.project(gaussian(8, 6, 1), 0), Contains("before the first refresh"));
  REQUIRE_THROWS_WITH(p.refresh(gaussian(6, 8, 1), 0), Contains("[6,8]") && Contains("[8,6]"));
  p.refresh(gaussian(8, 6, 1), 0);
  REQUIRE_THROWS_WITH(p.project_back(gaussian(8, 3, 1), 0), Contains("[8,3]") && Contains("[8,2]"));
}
