#include "peft/detail/gemm.hpp"

#include <catch2/catch.hpp>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "peft/core/random.hpp"

using peft::detail::gemm_index;
using peft::detail::trans;

namespace {

// Independent reference: the triple loop, in long double, reading op(X) by index.
template <class T>
T at(const std::vector<T>& x, gemm_index ld, trans t, gemm_index i, gemm_index j) {
  return t == trans::n ? x[std::size_t(i * ld + j)] : x[std::size_t(j * ld + i)];
}

template <class T>
void check_case(trans ta, trans tb, gemm_index m, gemm_index n, gemm_index k, T alpha, T beta,
                gemm_index pad, double tol) {
  peft::rng g(7);
  const gemm_index ar = ta == trans::n ? m : k, ac = ta == trans::n ? k : m;
  const gemm_index br = tb == trans::n ? k : n, bc = tb == trans::n ? n : k;
  const gemm_index lda = ac + pad, ldb = bc + pad, ldc = n + pad;
  std::vector<T> a(std::size_t(ar * lda)), b(std::size_t(br * ldb)), c(std::size_t(m * ldc));
  for (auto& v : a) v = T(g.normal());
  for (auto& v : b) v = T(g.normal());
  for (auto& v : c) v = beta == T(0) ? std::numeric_limits<T>::quiet_NaN() : T(g.normal());
  const std::vector<T> c0 = c;
  peft::detail::gemm<T>(ta, tb, m, n, k, alpha, a.data(), lda, b.data(), ldb, beta, c.data(), ldc);
  for (gemm_index i = 0; i < m; ++i)
    for (gemm_index j = 0; j < ldc; ++j) {
      const T got = c[std::size_t(i * ldc + j)];
      if (j >= n) {  // padding between rows is never written
        if (beta == T(0)) CHECK(std::isnan(got));
        else CHECK(got == c0[std::size_t(i * ldc + j)]);
        continue;
      }
      long double ref = 0;
      for (gemm_index p = 0; p < k; ++p)
        ref += (long double)at(a, lda, ta, i, p) * (long double)at(b, ldb, tb, p, j);
      ref *= alpha;
      if (beta != T(0)) ref += (long double)beta * c0[std::size_t(i * ldc + j)];
      CHECK_THAT(double(got), Catch::Matchers::WithinAbs(double(ref), tol * (1 + std::abs(double(ref)))));
    }
}

}  // namespace

TEST_CASE("gemm: every transpose pair, alpha, beta and leading dimension against the triple loop",
          "[detail][gemm]") {
  for (trans ta : {trans::n, trans::t})
    for (trans tb : {trans::n, trans::t})
      for (gemm_index pad : {0, 3}) {
        check_case<double>(ta, tb, 7, 5, 9, 1.0, 0.0, pad, 1e-13);
        check_case<double>(ta, tb, 33, 41, 70, -0.5, 1.0, pad, 1e-13);
        check_case<double>(ta, tb, 1, 17, 3, 2.0, 0.25, pad, 1e-13);   // a row vector
        check_case<double>(ta, tb, 19, 1, 64, 1.5, 0.0, pad, 1e-13);   // a column vector
        check_case<float>(ta, tb, 130, 70, 257, 1.0, 0.0, pad, 2e-5);  // the blocked kernel
        check_case<float>(ta, tb, 64, 96, 128, 0.5, -1.0, pad, 2e-5);
      }
}

TEST_CASE("gemm: empty sizes and alpha = 0 only scale C", "[detail][gemm]") {
  std::vector<double> c = {1, 2, 3, 4};
  const double a = 0, b = 0;
  peft::detail::gemm<double>(trans::n, trans::n, 2, 2, 0, 1.0, &a, 1, &b, 2, 2.0, c.data(), 2);
  CHECK(c == std::vector<double>{2, 4, 6, 8});
  std::vector<double> x = {std::nan(""), 1, 1, 1};
  peft::detail::gemm<double>(trans::n, trans::n, 2, 2, 2, 0.0, x.data(), 2, x.data(), 2, 0.0, c.data(), 2);
  CHECK(c == std::vector<double>{0, 0, 0, 0});
}

TEST_CASE("gemm: the Eigen-view form checks shapes and names them", "[detail][gemm]") {
  peft::matrix<double> A = peft::matrix<double>::Ones(3, 4), B = peft::matrix<double>::Ones(5, 4);
  peft::matrix<double> C(3, 5);
  peft::detail::gemm<double>(trans::n, trans::t, 2.0, A, B, 0.0, C);
  CHECK(C.isApproxToConstant(8.0));
  try {
    peft::detail::gemm<double>(trans::n, trans::n, 1.0, A, B, 0.0, C, "lora.forward");
    FAIL("no throw");
  } catch (const peft::shape_error& e) {
    const std::string msg = e.what();
    CHECK(msg.find("lora.forward") != std::string::npos);
    CHECK(msg.find("[3,4]") != std::string::npos);
    CHECK(msg.find("[5,4]") != std::string::npos);
  }
  const auto D = peft::detail::gemm_new<double>(trans::t, trans::n, A, A);
  CHECK(D.rows() == 4);
  CHECK(D.isApproxToConstant(3.0));
}

TEST_CASE("gemm_batched: shared and strided operands, same bits as one call per batch",
          "[detail][gemm]") {
  peft::rng g(3);
  const gemm_index m = 6, n = 5, k = 4, batch = 7;
  std::vector<float> a(std::size_t(m * k)), b(std::size_t(batch * k * n));
  for (auto& v : a) v = float(g.normal());
  for (auto& v : b) v = float(g.normal());
  std::vector<float> c(std::size_t(batch * m * n)), ref(c.size());
  peft::detail::gemm_batched<float>(trans::n, trans::n, m, n, k, 1.f, a.data(), k, 0, b.data(), n,
                                    k * n, 0.f, c.data(), n, m * n, batch);
  for (gemm_index i = 0; i < batch; ++i)
    peft::detail::gemm<float>(trans::n, trans::n, m, n, k, 1.f, a.data(), k, b.data() + i * k * n,
                              n, 0.f, ref.data() + i * m * n, n);
  CHECK(c == ref);
  CHECK_THROWS_AS(peft::detail::gemm_batched<float>(trans::n, trans::n, m, n, k, 1.f, a.data(), k,
                                                    0, b.data(), n, k * n, 0.f, c.data(), n, 0, 2),
                  peft::value_error);
}

TEST_CASE("gemm: the compiled-in backend agrees with Eigen's kernel within fp32 rounding, and "
          "repeats its bits at a fixed thread count", "[detail][gemm]") {
  INFO("backend " << peft::detail::gemm_backend());
  peft::rng g(5);
  const gemm_index m = 300, n = 200, k = 500;
  std::vector<float> a(std::size_t(m * k)), b(std::size_t(k * n));
  for (auto& v : a) v = float(g.normal());
  for (auto& v : b) v = float(g.normal());
  for (trans ta : {trans::n, trans::t})
    for (trans tb : {trans::n, trans::t}) {
      const gemm_index lda = ta == trans::n ? k : m, ldb = tb == trans::n ? n : k;
      std::vector<float> c(std::size_t(m * n)), again(c.size()), ref(c.size(), 0.f);
      peft::detail::gemm<float>(ta, tb, m, n, k, 1.f, a.data(), lda, b.data(), ldb, 0.f, c.data(), n);
      peft::detail::gemm<float>(ta, tb, m, n, k, 1.f, a.data(), lda, b.data(), ldb, 0.f, again.data(), n);
      peft::detail::gemm_eigen<float>(ta, tb, m, n, k, 1.f, a.data(), lda, b.data(), ldb, ref.data(), n);
      CHECK(std::memcmp(c.data(), again.data(), c.size() * sizeof(float)) == 0);
      // With the Eigen backend gemm is gemm_eigen: only the run-to-run bits say something.
      if (std::string(peft::detail::gemm_backend()) == "eigen") continue;
      // |error| of a k-term fp32 dot product: a few ulp of sqrt(k) (entries ~ N(0, k)).
      double worst = 0;
      for (std::size_t i = 0; i < c.size(); ++i) worst = std::max(worst, double(std::abs(c[i] - ref[i])));
      CHECK(worst < 2e-6 * double(k));
    }
}
