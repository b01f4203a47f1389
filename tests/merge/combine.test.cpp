#include <catch2/catch.hpp>

#include <Eigen/SVD>
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

#include <unistd.h>

#include "peft/adapters/inject.hpp"
#include "peft/io/peft_dir.hpp"
#include "peft/merge/combine.hpp"
#include "peft/nn/linear.hpp"
#include "../support/temp_dir.hpp"
#include "../support/toy_model.hpp"
#include "../support/thrown.hpp"

using namespace peft;
using merge::combine_method;
using merge::combine_options;
using merge::lora_pair;
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

namespace {
// The toy model without its classifier; output directories are created by the writer.
template <class T>
struct toy : test::toy<T> {
  toy() : test::toy<T>(1, false) {}
};
struct temp_dir : test::temp_dir {
  temp_dir() : test::temp_dir(false) {}
};
using M = matrix<double>;

template <class T>
lora_pair<T> random_pair(std::size_t r, std::size_t in, std::size_t out, double scale, rng& g) {
  lora_pair<T> p;
  p.A = randn<T>({r, in}, g);
  p.B = randn<T>({out, r}, g);
  p.scale = T(scale);
  return p;
}
template <class T>
matrix<T> dense(const lora_pair<T>& p) {
  return p.scale * (as_matrix(p.B) * as_matrix(p.A));
}
template <class A, class B>
double max_diff(const A& a, const B& b) {
  REQUIRE(a.rows() == b.rows());
  REQUIRE(a.cols() == b.cols());
  return (a.template cast<double>() - b.template cast<double>()).cwiseAbs().maxCoeff();
}
combine_options with(combine_method m, double density = 1.0) {
  combine_options o;
  o.method = m;
  o.density = density;
  return o;
}
using test::thrown_message;

// ---- independent, element-by-element versions of PEFT's merge_utils ----
using flat = std::vector<double>;
flat flat_of(const tensor<double>& t) { return flat(t.begin(), t.end()); }
flat flat_of(const M& m) {
  flat f;
  for (Eigen::Index i = 0; i < m.rows(); ++i)
    for (Eigen::Index j = 0; j < m.cols(); ++j) f.push_back(m(i, j));
  return f;
}
M as_m(const flat& f, Eigen::Index rows, Eigen::Index cols) {
  M m(rows, cols);
  for (Eigen::Index i = 0; i < rows; ++i)
    for (Eigen::Index j = 0; j < cols; ++j) m(i, j) = f[std::size_t(i * cols + j)];
  return m;
}
double sgn(double x) { return x > 0 ? 1 : (x < 0 ? -1 : 0); }
// prune(..., "magnitude"): the int(density·n) largest |x| survive (earlier index first on ties).
flat ref_magnitude(const flat& x, double density) {
  if (density >= 1) return x;
  const std::size_t k = std::size_t(density * double(x.size()));
  std::vector<std::size_t> idx(x.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) { return std::abs(x[a]) > std::abs(x[b]); });
  flat out(x.size(), 0.0);
  for (std::size_t i = 0; i < k; ++i) out[idx[i]] = x[idx[i]];
  return out;
}
// prune(..., "random", rescale=True) with the draws of rng g in element order.
flat ref_random(const flat& x, double density, rng& g) {
  if (density >= 1) return x;
  flat out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) out[i] = g.uniform() < density ? x[i] / density : 0.0;
  return out;
}
flat ref_weighted_sum(const std::vector<flat>& Y, const flat& c) {
  flat out(Y[0].size(), 0.0);
  for (std::size_t i = 0; i < Y.size(); ++i)
    for (std::size_t e = 0; e < out.size(); ++e) out[e] += c[i] * Y[i][e];
  return out;
}
// calculate_majority_sign_mask + disjoint_merge.
flat ref_disjoint(const std::vector<flat>& Y, const flat& c, bool frequency) {
  flat out(Y[0].size(), 0.0);
  for (std::size_t e = 0; e < out.size(); ++e) {
    double vote = 0;
    for (auto& y : Y) vote += frequency ? sgn(y[e]) : y[e];
    const double elected = vote >= 0 ? 1 : -1;
    double num = 0, cnt = 0;
    for (std::size_t i = 0; i < Y.size(); ++i)
      if (sgn(Y[i][e]) == elected) {
        num += c[i] * Y[i][e];
        cnt += 1;
      }
    out[e] = num / std::max(cnt, 1.0);
  }
  return out;
}
// Best rank-k approximation by an SVD algorithm other than the library's (Jacobi vs BDC).
M ref_truncate(const M& d, Eigen::Index k) {
  Eigen::JacobiSVD<M> svd(d, Eigen::ComputeThinU | Eigen::ComputeThinV);
  return svd.matrixU().leftCols(k) * svd.singularValues().head(k).asDiagonal() * svd.matrixV().leftCols(k).transpose();
}

// Four adapters of one [out=6, in=5] layer with different scales.
std::vector<lora_pair<double>> four_adapters(std::size_t r = 3) {
  rng g(11);
  return {random_pair<double>(r, 5, 6, 2.0, g), random_pair<double>(r, 5, 6, 0.5, g),
          random_pair<double>(r, 5, 6, 1.0, g), random_pair<double>(r, 5, 6, 3.0, g)};
}
}  // namespace

TEST_CASE("combine: names of methods and sign rules round-trip", "[merge][combine]") {
  for (int i = 0; i <= int(combine_method::magnitude_prune_svd); ++i)
    CHECK(merge::combine_method_from_name(merge::combine_method_name(combine_method(i))) == combine_method(i));
  CHECK(merge::majority_sign_from_name("frequency") == merge::majority_sign::frequency);
  CHECK_THROWS_WITH(merge::combine_method_from_name("svd_ties"), Catch::Contains("svd_ties"));
  CHECK_THROWS_AS(merge::majority_sign_from_name("median"), value_error);
}

TEST_CASE("combine linear: sqrt(weight·scale) on A and on B (hand-computed)", "[merge][combine]") {
  // c1 = sqrt(0.5·2) = 1, c2 = sqrt(4·1) = 2:  A = 1·[1,2] + 2·[2,0] = [5,2],  B = 1·3 + 2·1 = 5.
  lora_pair<double> a{make_tensor<double>({1, 2}, {1, 2}), make_tensor<double>({1, 1}, {3}), 2.0};
  lora_pair<double> b{make_tensor<double>({1, 2}, {2, 0}), make_tensor<double>({1, 1}, {1}), 1.0};
  const auto r = merge::combine<double>({a, b}, {0.5, 4.0}, with(combine_method::linear));
  CHECK(r.scale == 1.0);
  CHECK_THAT(r.A(0, 0), WithinAbs(5.0, 1e-15));
  CHECK_THAT(r.A(0, 1), WithinAbs(2.0, 1e-15));
  CHECK_THAT(r.B(0, 0), WithinAbs(5.0, 1e-15));
}

TEST_CASE("combine linear: matches the independent sum, cross terms included", "[merge][combine]") {
  const auto in = four_adapters();
  const std::vector<double> w{0.3, 1.0, 0.7, 0.2};
  const auto r = merge::combine<double>(in, w, with(combine_method::linear));
  flat c;
  std::vector<flat> As, Bs;
  for (std::size_t i = 0; i < in.size(); ++i) {
    c.push_back(std::sqrt(w[i] * in[i].scale));
    As.push_back(flat_of(in[i].A));
    Bs.push_back(flat_of(in[i].B));
  }
  CHECK(max_diff(as_matrix(r.A), as_m(ref_weighted_sum(As, c), 3, 5)) < 1e-13);
  CHECK(max_diff(as_matrix(r.B), as_m(ref_weighted_sum(Bs, c), 6, 3)) < 1e-13);
  // Not the weighted sum of the products: PEFT's linear mixes B_i with A_j.
  M want = M::Zero(6, 5);
  for (std::size_t i = 0; i < in.size(); ++i) want += w[i] * dense(in[i]);
  CHECK(max_diff(dense(r), want) > 1e-3);
}

TEMPLATE_TEST_CASE("combine: one adapter with weight 1 reproduces it, whatever the method", "[merge][combine]", float,
                   double) {
  rng g(5);
  const auto a = random_pair<TestType>(3, 7, 4, 2.5, g);
  for (auto m : {combine_method::linear, combine_method::svd, combine_method::cat, combine_method::ties,
                 combine_method::dare_ties_svd}) {
    INFO(merge::combine_method_name(m));
    combine_options o = with(m, 0.5);
    o.svd_rank = 1;  // ignored: one adapter is combined with linear, as in PEFT
    const auto r = merge::combine<TestType>({a}, {TestType(1)}, o);
    CHECK(r.A.shape()[0] == 3);
    const double tol = std::is_same_v<TestType, float> ? 1e-5 : 1e-13;
    CHECK(max_diff(dense(r), dense(a)) < tol * as_matrix(a.B).norm() * as_matrix(a.A).norm());
  }
}

TEST_CASE("combine cat: rank is the sum of ranks and B·A is exactly Σ w·s·B·A", "[merge][combine]") {
  rng g(3);
  std::vector<lora_pair<double>> in{random_pair<double>(2, 5, 6, 2.0, g), random_pair<double>(3, 5, 6, 0.5, g),
                                    random_pair<double>(1, 5, 6, 1.5, g)};
  const std::vector<double> w{0.5, -1.0, 2.0};  // cat takes negative weights
  const auto r = merge::combine<double>(in, w, with(combine_method::cat));
  CHECK(r.A.shape() == std::vector<std::size_t>{6, 5});
  CHECK(r.B.shape() == std::vector<std::size_t>{6, 6});
  M want = M::Zero(6, 5);
  for (std::size_t i = 0; i < in.size(); ++i) want += w[i] * dense(in[i]);
  CHECK(max_diff(dense(r), want) < 1e-12);
  // Rows 2..4 of A are w_2·s_2·A_2; columns 2..4 of B are B_2.
  CHECK(max_diff(as_matrix(r.A).middleRows(2, 3), (-1.0 * 0.5) * as_matrix(in[1].A)) == 0.0);
  CHECK(max_diff(as_matrix(r.B).middleCols(2, 3), as_matrix(in[1].B)) == 0.0);
}

TEST_CASE("combine svd: exact at full rank, best rank-k otherwise, s applied twice as PEFT does",
          "[merge][combine]") {
  rng g(4);
  std::vector<lora_pair<double>> in{random_pair<double>(2, 5, 6, 2.0, g), random_pair<double>(3, 5, 6, 0.5, g)};
  const std::vector<double> w{0.7, 1.3};
  // PEFT: dW_i = get_delta_weight = s_i·B_i·A_i, weighted by w_i·s_i.
  const M peft_dw = w[0] * 2.0 * dense(in[0]) + w[1] * 0.5 * dense(in[1]);
  const M once_dw = w[0] * dense(in[0]) + w[1] * dense(in[1]);

  combine_options o = with(combine_method::svd);
  o.svd_rank = 5;  // = min(out, in): the rank-5 sum is reproduced exactly
  auto r = merge::combine<double>(in, w, o);
  CHECK(r.scale == 1.0);
  CHECK(r.A.shape() == std::vector<std::size_t>{5, 5});
  CHECK(max_diff(dense(r), peft_dw) < 1e-12);

  o.svd_double_scaling = false;
  CHECK(max_diff(dense(merge::combine<double>(in, w, o)), once_dw) < 1e-12);

  // Default rank: the largest input rank (3); the result is the best rank-3 approximation.
  o = with(combine_method::svd);
  r = merge::combine<double>(in, w, o);
  CHECK(r.A.shape()[0] == 3);
  CHECK(max_diff(dense(r), ref_truncate(peft_dw, 3)) < 1e-12);

  // A rank beyond min(out, in) is padded with zeros.
  o.svd_rank = 8;
  r = merge::combine<double>(in, w, o);
  CHECK(r.A.shape() == std::vector<std::size_t>{8, 5});
  CHECK(r.B.shape() == std::vector<std::size_t>{6, 8});
  CHECK(as_matrix(r.A).bottomRows(3).isZero(0));
  CHECK(as_matrix(r.B).rightCols(3).isZero(0));
  CHECK(max_diff(dense(r), peft_dw) < 1e-12);
}

TEST_CASE("combine svd: svd_clamp clamps both factors at the quantile of their entries", "[merge][combine]") {
  const auto in = four_adapters();
  const std::vector<double> w{1, 1, 1, 1};
  combine_options o = with(combine_method::svd);
  o.svd_rank = 2;
  const auto plain = merge::combine<double>(in, w, o);
  flat all = flat_of(plain.B);
  const flat a = flat_of(plain.A);
  all.insert(all.end(), a.begin(), a.end());
  std::sort(all.begin(), all.end());
  for (double q : {0.9, 0.5, 1.0}) {
    INFO("q = " << q);
    // torch.quantile's linear interpolation, written out.
    const double pos = q * double(all.size() - 1);
    const std::size_t lo = std::size_t(pos);
    const double h = lo + 1 < all.size() ? all[lo] + (pos - double(lo)) * (all[lo + 1] - all[lo]) : all[lo];
    o.svd_clamp = q;
    const auto r = merge::combine<double>(in, w, o);
    auto clampf = [h](double x) { return std::min(std::max(x, -h), h); };
    CHECK(max_diff(as_matrix(r.A), as_matrix(plain.A).unaryExpr(clampf)) == 0.0);
    CHECK(max_diff(as_matrix(r.B), as_matrix(plain.B).unaryExpr(clampf)) == 0.0);
    if (q == 0.5) CHECK(max_diff(as_matrix(r.B), as_matrix(plain.B)) > 0.0);
  }
  o.svd_clamp = 1.5;
  CHECK_THROWS_WITH(merge::combine<double>(in, w, o), Catch::Contains("svd_clamp 1.5"));
}

TEST_CASE("ties: majority sign by total and by frequency (hand-computed)", "[merge][combine]") {
  // Task tensors [1,-2,3,0] and [-3,1,1,0], weights 1, density 1.
  // total: sums [-2,-1,4,0] elect [-,-,+,+]: [-3/1, -2/1, (3+1)/2, 0/max(0,1)] = [-3,-2,2,0].
  // frequency: sign sums [0,0,2,0] elect [+,+,+,+]: [1/1, 1/1, 4/2, 0] = [1,1,2,0].
  for (auto [sign, want] : {std::pair{merge::majority_sign::total, flat{-3, -2, 2, 0}},
                            std::pair{merge::majority_sign::frequency, flat{1, 1, 2, 0}}}) {
    INFO(merge::majority_sign_name(sign));
    std::vector<M> X{as_m({1, -2, 3, 0}, 1, 4), as_m({-3, 1, 1, 0}, 1, 4)};
    rng g(0);
    const M out = merge::detail::merge_task_tensors<double>(X, {1.0, 1.0}, merge::detail::task_merge::ties, 1.0, sign, g);
    CHECK(flat_of(out) == want);
  }
}

TEST_CASE("magnitude pruning keeps the int(density·n) largest magnitudes (hand-computed)", "[merge][combine]") {
  M x = as_m({0.1, -5, 3, 0.2, -0.3}, 1, 5);
  merge::detail::magnitude_prune_inplace(x, 0.5);  // k = int(2.5) = 2
  CHECK(flat_of(x) == flat{0, -5, 3, 0, 0});
  M y = as_m({1, -1, 1, -1}, 1, 4);
  merge::detail::magnitude_prune_inplace(y, 0.5);  // equal magnitudes: the first ones
  CHECK(flat_of(y) == flat{1, -1, 0, 0});
}

TEST_CASE("combine ties / magnitude_prune (and _svd forms) match the independent merge_utils", "[merge][combine]") {
  const auto in = four_adapters();
  const std::vector<double> w{0.3, 1.0, 0.7, 0.2};
  for (double density : {1.0, 0.6, 0.2}) {
    for (auto sign : {merge::majority_sign::total, merge::majority_sign::frequency}) {
      INFO("density " << density << ", " << merge::majority_sign_name(sign));
      flat c, cs;
      std::vector<flat> As, Bs, Ds;
      for (std::size_t i = 0; i < in.size(); ++i) {
        c.push_back(std::sqrt(w[i] * in[i].scale));
        cs.push_back(w[i] * in[i].scale);
        As.push_back(ref_magnitude(flat_of(in[i].A), density));
        Bs.push_back(ref_magnitude(flat_of(in[i].B), density));
        Ds.push_back(ref_magnitude(flat_of(dense(in[i])), density));
      }
      const bool freq = sign == merge::majority_sign::frequency;
      combine_options o = with(combine_method::ties, density);
      o.sign = sign;
      auto r = merge::combine<double>(in, w, o);
      CHECK(max_diff(as_matrix(r.A), as_m(ref_disjoint(As, c, freq), 3, 5)) < 1e-13);
      CHECK(max_diff(as_matrix(r.B), as_m(ref_disjoint(Bs, c, freq), 6, 3)) < 1e-13);

      o.method = combine_method::ties_svd;
      o.svd_rank = 5;  // full rank: B·A is the merged dW itself
      r = merge::combine<double>(in, w, o);
      CHECK(max_diff(dense(r), as_m(ref_disjoint(Ds, cs, freq), 6, 5)) < 1e-12);

      o.method = combine_method::magnitude_prune;
      r = merge::combine<double>(in, w, o);
      CHECK(max_diff(as_matrix(r.A), as_m(ref_weighted_sum(As, c), 3, 5)) < 1e-13);
      CHECK(max_diff(as_matrix(r.B), as_m(ref_weighted_sum(Bs, c), 6, 3)) < 1e-13);

      o.method = combine_method::magnitude_prune_svd;
      r = merge::combine<double>(in, w, o);
      CHECK(max_diff(dense(r), as_m(ref_weighted_sum(Ds, cs), 6, 5)) < 1e-12);
    }
  }
  // density 1 prunes nothing: ties equals the sign-elected mean of the unpruned tensors and
  // magnitude_prune equals linear.
  CHECK(max_diff(dense(merge::combine<double>(in, w, with(combine_method::magnitude_prune, 1.0))),
                 dense(merge::combine<double>(in, w, with(combine_method::linear)))) == 0.0);
}

TEST_CASE("combine dare: seeded Bernoulli masks rescaled by 1/density, as merge_utils", "[merge][combine]") {
  const auto in = four_adapters();
  const std::vector<double> w{0.3, 1.0, 0.7, 0.2};
  const double d = 0.4;
  for (auto m : {combine_method::dare_linear, combine_method::dare_ties}) {
    INFO(merge::combine_method_name(m));
    combine_options o = with(m, d);
    o.seed = 77;
    const auto r = merge::combine<double>(in, w, o);
    // Draws in PEFT's order: every lora_A tensor, then every lora_B tensor.
    rng g(77);
    flat c;
    std::vector<flat> As, Bs;
    for (std::size_t i = 0; i < in.size(); ++i) {
      c.push_back(std::sqrt(w[i] * in[i].scale));
      As.push_back(ref_random(flat_of(in[i].A), d, g));
    }
    for (std::size_t i = 0; i < in.size(); ++i) Bs.push_back(ref_random(flat_of(in[i].B), d, g));
    const bool ties = m == combine_method::dare_ties;
    CHECK(max_diff(as_matrix(r.A), as_m(ties ? ref_disjoint(As, c, false) : ref_weighted_sum(As, c), 3, 5)) < 1e-13);
    CHECK(max_diff(as_matrix(r.B), as_m(ties ? ref_disjoint(Bs, c, false) : ref_weighted_sum(Bs, c), 6, 3)) < 1e-13);
    // Same seed, same bits; another seed, other masks.
    CHECK(max_diff(as_matrix(merge::combine<double>(in, w, o).A), as_matrix(r.A)) == 0.0);
    o.seed = 78;
    CHECK(max_diff(as_matrix(merge::combine<double>(in, w, o).A), as_matrix(r.A)) > 0.0);
  }
  // dare_linear_svd on dW_i = s_i·B_i·A_i with weights w_i·s_i, at full rank.
  combine_options o = with(combine_method::dare_linear_svd, d);
  o.seed = 5;
  o.svd_rank = 5;
  const auto r = merge::combine<double>(in, w, o);
  rng g(5);
  flat cs;
  std::vector<flat> Ds;
  for (std::size_t i = 0; i < in.size(); ++i) {
    cs.push_back(w[i] * in[i].scale);
    Ds.push_back(ref_random(flat_of(dense(in[i])), d, g));
  }
  CHECK(max_diff(dense(r), as_m(ref_weighted_sum(Ds, cs), 6, 5)) < 1e-12);
}

TEST_CASE("dare keeps about density of the entries and is unbiased in expectation", "[merge][combine]") {
  rng g(9);
  std::vector<lora_pair<double>> in{random_pair<double>(40, 50, 3, 1.0, g), random_pair<double>(40, 50, 3, 1.0, g)};
  combine_options o = with(combine_method::dare_linear_svd, 0.3);
  o.svd_rank = 3;
  const M full = dense(merge::combine<double>(in, {1.0, 1.0}, with(combine_method::svd)));
  M mean = M::Zero(3, 50);
  const int runs = 400;
  for (int s = 0; s < runs; ++s) {
    o.seed = std::uint64_t(s);
    mean += dense(merge::combine<double>(in, {1.0, 1.0}, o)) / runs;
  }
  // Each entry of each dW_i is kept with p = 0.3 and scaled by 1/0.3: the mean tends to Σ dW_i.
  CHECK((mean - full).norm() < 0.15 * full.norm());
  std::vector<M> X{M::Ones(100, 100)};
  rng h(1);
  const M kept = merge::detail::merge_task_tensors<double>(X, {1.0}, merge::detail::task_merge::dare_linear, 0.3,
                                                           merge::majority_sign::total, h);
  const double frac = double((kept.array() != 0).count()) / 1e4;
  CHECK_THAT(frac, WithinAbs(0.3, 0.02));
  CHECK_THAT(kept.maxCoeff(), WithinRel(1 / 0.3, 1e-15));
}

TEST_CASE("combine: density 1 and 0 at the edges", "[merge][combine]") {
  const auto in = four_adapters();
  const std::vector<double> w{0.3, 1.0, 0.7, 0.2};
  // Density 1: dare draws nothing and prunes nothing; dare_ties equals ties.
  const auto lin = merge::combine<double>(in, w, with(combine_method::linear));
  CHECK(max_diff(as_matrix(merge::combine<double>(in, w, with(combine_method::dare_linear, 1.0)).A), as_matrix(lin.A)) == 0.0);
  CHECK(max_diff(as_matrix(merge::combine<double>(in, w, with(combine_method::dare_ties, 1.0)).B),
                 as_matrix(merge::combine<double>(in, w, with(combine_method::ties, 1.0)).B)) == 0.0);
  // Density 0 would prune everything (and dare would divide by zero): refused.
  for (auto m : {combine_method::ties, combine_method::dare_linear, combine_method::dare_ties_svd,
                 combine_method::magnitude_prune_svd}) {
    INFO(merge::combine_method_name(m));
    CHECK_THROWS_WITH(merge::combine<double>(in, w, with(m, 0.0)),
                      Catch::Contains(merge::combine_method_name(m)) && Catch::Contains("density 0 outside (0, 1]"));
    CHECK_THROWS_AS(merge::combine<double>(in, w, with(m, 1.5)), value_error);
    CHECK_THROWS_AS(merge::combine<double>(in, w, with(m, std::nan(""))), value_error);
  }
  // Methods without pruning ignore density, as PEFT does.
  CHECK_NOTHROW(merge::combine<double>(in, w, with(combine_method::svd, 0.0)));
}

TEST_CASE("combine: bad input throws naming the op and the shapes", "[merge][combine]") {
  rng g(2);
  const auto a = random_pair<double>(3, 5, 4, 1.0, g);
  const auto b_in = random_pair<double>(3, 6, 4, 1.0, g);
  const auto b_rank = random_pair<double>(2, 5, 4, 1.0, g);
  const std::string m1 = thrown_message([&] { merge::combine<double>({a, b_in}, {1, 1}, with(combine_method::svd)); });
  CHECK_THAT(m1, Catch::Contains("shape_error") && Catch::Contains("combine(svd)") && Catch::Contains("[3,6]") &&
                     Catch::Contains("[3,5]"));
  const std::string m2 = thrown_message([&] { merge::combine<double>({a, b_rank}, {1, 1}, with(combine_method::ties)); });
  CHECK_THAT(m2, Catch::Contains("combine(ties)") && Catch::Contains("same rank") && Catch::Contains("[2,5]"));
  CHECK_NOTHROW(merge::combine<double>({a, b_rank}, {1, 1}, with(combine_method::cat)));
  CHECK_NOTHROW(merge::combine<double>({a, b_rank}, {1, 1}, with(combine_method::svd)));
  CHECK_THROWS_WITH(merge::combine<double>({a, a}, {1, 1, 1}, with(combine_method::cat)),
                    Catch::Contains("combine(cat)") && Catch::Contains("3 weights for 2 adapters"));
  CHECK_THROWS_WITH(merge::combine<double>({a, a}, {1, -1}, with(combine_method::linear)),
                    Catch::Contains("weight·scale = -1"));
  CHECK_NOTHROW(merge::combine<double>({a, a}, {1, -1}, with(combine_method::svd)));
  lora_pair<double> bad = a;
  bad.B = randn<double>({4, 2}, g);  // B's rank differs from A's
  CHECK_THROWS_WITH(merge::combine<double>({a, bad}, {1, 1}, with(combine_method::cat)),
                    Catch::Contains("adapter 1 has A [3,5], B [4,2]"));
  CHECK_THROWS_AS(merge::combine<double>({}, {}, with(combine_method::cat)), value_error);
}

// ---- PEFT adapter directories ----

namespace {
const std::map<std::string, std::pair<std::size_t, std::size_t>> toy_layers{
    {"encoder.q_proj", {6, 5}}, {"encoder.v_proj", {5, 4}}, {"decoder.q_proj", {4, 7}}, {"decoder.v_proj", {7, 5}}};


// Writes a PEFT LoRA directory by hand: the layers whose path ends with one of `targets`.
std::map<std::string, lora_pair<double>> write_adapter(const std::string& dir, std::vector<std::string> targets,
                                                       std::size_t r, double alpha, bool rslora, std::uint64_t seed,
                                                       io::dtype type = io::dtype::F32) {
  rng g(seed);
  io::adapter_config c = io::adapter_config::lora();
  c.r = r;
  c.lora_alpha = alpha;
  c.use_rslora = rslora;
  c.target_modules = targets;
  c.base_model_name_or_path = "toy";
  io::safetensors_file f;
  std::map<std::string, lora_pair<double>> layers;
  for (auto& [path, io_] : toy_layers) {
    bool hit = false;
    for (auto& t : targets) hit = hit || peft::detail::name_matches(path, t);
    if (!hit) continue;
    lora_pair<double> p = random_pair<double>(r, io_.first, io_.second, rslora ? alpha / std::sqrt(double(r)) : alpha / double(r), g);
    f.add("base_model.model." + path + ".lora_A.weight", p.A, type);
    f.add("base_model.model." + path + ".lora_B.weight", p.B, type);
    // What the file holds, read back (F32 rounding included).
    p.A = f.get<double>("base_model.model." + path + ".lora_A.weight");
    p.B = f.get<double>("base_model.model." + path + ".lora_B.weight");
    layers.emplace(path, p);
  }
  std::filesystem::create_directories(dir);
  f.save(dir + "/adapter_model.safetensors");
  c.save(dir + "/adapter_config.json");
  return layers;
}

// dW of each adapted layer of a model loaded from `dir` with peft_dir's loader.
std::map<std::string, M> loaded_deltas(const std::string& dir, io::peft_load_result* res = nullptr) {
  toy<double> m;
  auto r = io::load_peft_adapter(dir, m);
  if (res) *res = r;
  std::map<std::string, M> out;
  for (auto& [path, al] : adapted_layers(m)) out[path] = al->get_adapter().delta_weight(as_matrix(al->base_layer->weight.value()));
  return out;
}
}  // namespace

TEST_CASE("combine_peft_dirs: every method gives a directory peft_dir loads, equal to the layer-wise combine",
          "[merge][combine][io]") {
  temp_dir d1, d2, out;
  // a1: every layer, r 4, alpha 8 (s = 2). a2: q_proj only, r 4, rsLoRA alpha 6 (s = 3).
  const auto a1 = write_adapter(d1.str(), {"q_proj", "v_proj"}, 4, 8, false, 1);
  const auto a2 = write_adapter(d2.str(), {"q_proj"}, 4, 6, true, 2);
  const std::vector<double> w{0.6, 0.9};
  for (auto m : {combine_method::linear, combine_method::cat, combine_method::svd, combine_method::ties,
                 combine_method::magnitude_prune_svd, combine_method::dare_ties}) {
    INFO(merge::combine_method_name(m));
    combine_options o = with(m, 0.7);
    o.seed = 3;
    std::filesystem::remove_all(out.path);
    merge::combine_peft_dirs({d1.str(), d2.str()}, w, o, out.str());
    io::peft_load_result res;
    const auto got = loaded_deltas(out.str(), &res);
    CHECK(res.config.use_rslora == false);
    CHECK(res.config.lora_alpha == double(res.config.r));  // scale 1, as PEFT's r = lora_alpha = new_rank
    CHECK(res.config.base_model_name_or_path == "toy");
    CHECK(std::get<std::vector<std::string>>(res.config.target_modules) == std::vector<std::string>{"q_proj", "v_proj"});
    REQUIRE(got.size() == 4);
    std::uint64_t index = 0;  // layers in path order
    for (auto& [path, dw] : std::map<std::string, M>(got.begin(), got.end())) {
      INFO(path);
      std::vector<lora_pair<double>> in{a1.at(path)};
      std::vector<double> ww{w[0]};
      if (a2.count(path)) {
        in.push_back(a2.at(path));
        ww.push_back(w[1]);
      }
      rng g = rng(3).fork(index++);
      const auto want = merge::detail::combine_layer<double>(in, ww, o, g);
      CHECK(max_diff(dw, dense(want)) < 1e-5 * (1 + dense(want).norm()));
      // cat: rank 8 where both adapters have the layer, 4 elsewhere; r is the most common
      // (a tie goes to the smaller) and rank_pattern / alpha_pattern hold the others.
      if (m == combine_method::cat) {
        CHECK(res.config.rank_pattern.count(io::detail::regex_escape(path)) == (a2.count(path) ? 1u : 0u));
        CHECK(res.config.alpha_pattern.count(io::detail::regex_escape(path)) == (a2.count(path) ? 1u : 0u));
      }
    }
    CHECK(res.config.r == 4);
    // Written atomically: nothing but the two files remains.
    std::size_t files = 0;
    for (auto& e : std::filesystem::directory_iterator(out.path)) {
      (void)e;
      ++files;
    }
    CHECK(files == 2);
  }
}

TEST_CASE("combine_peft_dirs: one directory with weight 1 reproduces its adapter", "[merge][combine][io]") {
  temp_dir d1, out;
  write_adapter(d1.str(), {"q_proj", "v_proj"}, 3, 6, true, 4, io::dtype::F64);
  merge::combine_peft_dirs({d1.str()}, {1.0}, with(combine_method::svd), out.str());
  const auto a = loaded_deltas(d1.str()), b = loaded_deltas(out.str());
  REQUIRE(a.size() == b.size());
  for (auto& [path, dw] : a) CHECK(max_diff(dw, b.at(path)) < 1e-12);
  CHECK(io::safetensors_file::load(out / "adapter_model.safetensors")
            .at("base_model.model.encoder.q_proj.lora_A.weight")
            .type == io::dtype::F64);  // the input's dtype
}

TEST_CASE("combine_peft_dirs: bad directories throw naming the file, layer and shapes", "[merge][combine][io]") {
  temp_dir d1, d2, d3, out;
  write_adapter(d1.str(), {"q_proj"}, 4, 8, false, 1);
  write_adapter(d2.str(), {"q_proj"}, 2, 8, false, 2);
  CHECK_THROWS_WITH(merge::combine_peft_dirs({d1.str(), d2.str()}, {1.0}, with(combine_method::cat), out.str()),
                    Catch::Contains("1 weights for 2 adapter directories"));
  CHECK_THROWS_WITH(merge::combine_peft_dirs({d1.str(), d2.str()}, {1, 1}, with(combine_method::linear), out.str()),
                    Catch::Contains("layer 'decoder.q_proj'") && Catch::Contains(d2.str()) &&
                        Catch::Contains("same rank") && Catch::Contains("[2,4]"));
  CHECK_THROWS_WITH(merge::combine_peft_dirs({d1.str(), d3.str()}, {1, 1}, with(combine_method::cat), out.str()),
                    Catch::Contains("io_error") && Catch::Contains(d3.str()));
  // A tensor whose rank disagrees with the config.
  {
    auto c = io::adapter_config::load(d2 / "adapter_config.json");
    c.r = 3;
    c.save(d2 / "adapter_config.json");
    CHECK_THROWS_WITH(merge::combine_peft_dirs({d2.str()}, {1}, with(combine_method::cat), out.str()),
                      Catch::Contains("lora_A.weight' has shape [2,") && Catch::Contains("r = 3"));
    c.r = 2;
    c.use_dora = true;
    c.save(d2 / "adapter_config.json");
    CHECK_THROWS_WITH(merge::combine_peft_dirs({d2.str()}, {1}, with(combine_method::cat), out.str()),
                      Catch::Contains("use_dora"));
  }
  CHECK_FALSE(std::filesystem::exists(out / "adapter_config.json"));
}
