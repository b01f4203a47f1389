#include <catch2/catch.hpp>

#include <Eigen/SVD>
#include <memory>
#include <vector>

#include "peft/adapters/adapted_linear.hpp"
#include "peft/adapters/lora.hpp"
#include "peft/adapters/lora_xs.hpp"
#include "peft/dist/communicator.hpp"
#include "peft/dist/federated.hpp"
#include "peft/nn/linear.hpp"

using namespace peft;
using Catch::Matchers::WithinAbs;
using sd = nn::state_dict<float>;

namespace {

tensor<float> t2(std::size_t r, std::size_t c, std::vector<float> v) { return make_tensor<float>({r, c}, v); }

double max_abs(const matrix<float>& a, const matrix<float>& b) {
  return double((a - b).cwiseAbs().maxCoeff());
}

// A client model: two LoRA layers "q" [8 -> 6] and "v" [8 -> 5] (or LoRA-XS with given bases).
class two_layers : public nn::module<float> {
 public:
  two_layers(std::shared_ptr<adapter<float>> aq, std::shared_ptr<adapter<float>> av) {
    rng g(1);
    auto bq = std::make_shared<nn::linear<float>>(8, 6, g);
    auto bv = std::make_shared<nn::linear<float>>(8, 5, g);
    bq->freeze();
    bv->freeze();
    q = std::make_shared<adapted_linear<float>>(bq, std::move(aq));
    v = std::make_shared<adapted_linear<float>>(bv, std::move(av));
    register_module("q", q);
    register_module("v", v);
  }
  std::shared_ptr<adapted_linear<float>> q, v;
};

// Client k of a LoRA federation: A from a shared seed (FedSVD) or per client (FedSA); B per client.
std::unique_ptr<two_layers> lora_client(int k, bool shared_a) {
  lora_config c;
  c.r = 3;
  c.seed = shared_a ? 7 : 100 + std::uint64_t(k);
  auto aq = std::make_shared<lora<float>>(8, 6, c);
  c.seed += 1;
  auto av = std::make_shared<lora<float>>(8, 5, c);
  rng g(500 + std::uint64_t(k));
  fill_normal(aq->lora_B.value(), 0.0, 0.5, g);
  fill_normal(av->lora_B.value(), 0.0, 0.5, g);
  return std::make_unique<two_layers>(aq, av);
}

// Client k of a Fed-SB federation: shared A, B (LoRA-XS bases), its own R.
std::unique_ptr<two_layers> sb_client(int k) {
  rng shared(9);
  lora_xs_config c;
  c.r = 3;
  c.r_init_std = 0;
  auto aq = std::make_shared<lora_xs<float>>(8, 6, c, randn<float>({3, 8}, shared),
                                             randn<float>({6, 3}, shared));
  auto av = std::make_shared<lora_xs<float>>(8, 5, c, randn<float>({3, 8}, shared),
                                             randn<float>({5, 3}, shared));
  rng g(700 + std::uint64_t(k));
  fill_normal(aq->lora_R.value(), 0.0, 1.0, g);
  fill_normal(av->lora_R.value(), 0.0, 1.0, g);
  return std::make_unique<two_layers>(aq, av);
}

}  // namespace

TEST_CASE("fedavg: X = sum_k w_k X_k / sum_k w_k over the selected tensors", "[dist][federated]") {
  std::vector<sd> clients{{{"x", t2(2, 2, {1, 2, 3, 4})}, {"y", t2(1, 1, {1})}},
                          {{"x", t2(2, 2, {5, 6, 7, 8})}, {"y", t2(1, 1, {2})}}};
  REQUIRE(dist::fedavg(clients, {1, 3}, [](const std::string& k) { return k == "x"; }) == 1);
  for (auto& c : clients) REQUIRE(as_matrix(c["x"]) == as_matrix(t2(2, 2, {4, 5, 6, 7})));
  REQUIRE(clients[1]["y"](0, 0) == 2.f);  // not selected
  REQUIRE(dist::fedavg(clients) == 2);
  REQUIRE(clients[0]["y"](0, 0) == 1.5f);
  REQUIRE_THROWS_WITH(dist::fedavg(clients, {1}), Catch::Contains("1 weights for 2 clients"));
  REQUIRE_THROWS_WITH(dist::fedavg(clients, {1, -1}), Catch::Contains("invalid client weight"));
  REQUIRE_THROWS_WITH(dist::fedavg(clients, {0, 0}), Catch::Contains("sum to 0"));
  clients[1]["x"] = t2(1, 4, {1, 2, 3, 4});
  REQUIRE_THROWS_WITH(dist::fedavg(clients), Catch::Contains("'x'") && Catch::Contains("[1,4]") &&
                                                 Catch::Contains("[2,2]"));
}

TEST_CASE("FedSA-LoRA averages A with n_k/n and keeps every B", "[dist][federated]") {
  std::vector<sd> clients;
  for (int k = 0; k < 3; ++k) clients.push_back(lora_client(k, false)->get_state_dict());
  const std::vector<sd> before = clients;
  const std::vector<double> n{10, 30, 60};
  REQUIRE(dist::fedsa_aggregate(clients, n) == 2);
  for (const char* layer : {"q.", "v."}) {
    const std::string a = std::string(layer) + "lora_A.weight", b = std::string(layer) + "lora_B.weight";
    // A = 0.1·A_0 + 0.3·A_1 + 0.6·A_2 (paper: A = Σ n_k/n · A_k)
    const matrix<float> want = 0.1f * as_matrix(before[0].at(a)) + 0.3f * as_matrix(before[1].at(a)) +
                               0.6f * as_matrix(before[2].at(a));
    for (std::size_t k = 0; k < 3; ++k) {
      REQUIRE(max_abs(as_matrix(clients[k].at(a)), want) < 1e-6);
      REQUIRE(as_matrix(clients[k].at(b)) == as_matrix(before[k].at(b)));  // B stays local
      REQUIRE(as_matrix(clients[k].at(std::string(layer) + "base_layer.weight")) ==
              as_matrix(before[k].at(std::string(layer) + "base_layer.weight")));
    }
  }
  std::vector<sd> none{{{"w", t2(1, 1, {1})}}};
  REQUIRE_THROWS_WITH(dist::fedsa_aggregate(none), Catch::Contains("no 'lora_A.weight'"));
  clients[2].erase("v.lora_A.weight");
  REQUIRE_THROWS_WITH(dist::fedsa_aggregate(clients),
                      Catch::Contains("client 2") && Catch::Contains("'v.lora_A.weight'"));
}

TEST_CASE("Fed-SB averages only R, and B·mean(R)·A is exactly the mean update", "[dist][federated]") {
  std::vector<sd> clients;
  for (int k = 0; k < 4; ++k) clients.push_back(sb_client(k)->get_state_dict());
  const std::vector<sd> before = clients;
  REQUIRE(dist::fed_sb_aggregate(clients) == 2);
  for (const char* layer : {"q.", "v."}) {
    const std::string p(layer);
    auto A = as_matrix(before[0].at(p + "lora_A.weight"));
    auto B = as_matrix(before[0].at(p + "lora_B.weight"));
    matrix<float> mean_update = matrix<float>::Zero(B.rows(), A.cols());
    for (const auto& c : before)
      mean_update += 0.25f * (B * as_matrix(c.at(p + "lora_latent_mapping.weight")) * A);
    for (const auto& c : clients) {
      const matrix<float> agg = B * as_matrix(c.at(p + "lora_latent_mapping.weight")) * A;
      INFO(layer << " |B R̄ A − mean_k B R_k A| = " << max_abs(agg, mean_update));
      REQUIRE(max_abs(agg, mean_update) < 1e-5);  // exact aggregation
      REQUIRE(as_matrix(c.at(p + "lora_A.weight")) == A);
      REQUIRE(as_matrix(c.at(p + "lora_B.weight")) == B);
    }
  }
  // LoRA's separate averaging of B and A is NOT the mean of B_k·A_k (why Fed-SB trains R only).
  std::vector<sd> lora_clients;
  for (int k = 0; k < 3; ++k) lora_clients.push_back(lora_client(k, false)->get_state_dict());
  matrix<float> mean_ba = matrix<float>::Zero(6, 8);
  for (const auto& c : lora_clients)
    mean_ba += (as_matrix(c.at("q.lora_B.weight")) * as_matrix(c.at("q.lora_A.weight"))) / 3.f;
  dist::fedavg(lora_clients);
  const matrix<float> avg_ba =
      as_matrix(lora_clients[0].at("q.lora_B.weight")) * as_matrix(lora_clients[0].at("q.lora_A.weight"));
  REQUIRE(max_abs(avg_ba, mean_ba) > 1e-2);

  clients[3]["q.lora_A.weight"](0, 0) += 1.f;
  REQUIRE_THROWS_WITH(dist::fed_sb_aggregate(clients),
                      Catch::Contains("client 3") && Catch::Contains("'q.lora_A.weight'") &&
                          Catch::Contains("differs"));
}

TEST_CASE("fedsvd_refactor keeps B·A, gives A orthonormal rows and B = U·Σ", "[dist][federated]") {
  rng g(3);
  auto A = randn<float>({4, 12}, g);
  auto B = randn<float>({10, 4}, g);
  const matrix<float> BA = as_matrix(B) * as_matrix(A);
  dist::fedsvd_refactor(A, B);
  const auto An = as_matrix(A);
  const auto Bn = as_matrix(B);
  REQUIRE(max_abs(Bn * An, BA) < 1e-5 * BA.cwiseAbs().maxCoeff());
  REQUIRE(max_abs(An * An.transpose(), matrix<float>::Identity(4, 4)) < 1e-6);
  // Bᵀ·B = Σ² (columns of U·Σ are orthogonal with norms σ_i, in decreasing order), and the σ_i
  // are the singular values of B·A.
  Eigen::JacobiSVD<Eigen::MatrixXd> svd(BA.cast<double>());
  const matrix<float> BtB = Bn.transpose() * Bn;
  for (Eigen::Index i = 0; i < 4; ++i) {
    const double s = svd.singularValues()(i);
    CHECK_THAT(std::sqrt(double(BtB(i, i))), WithinAbs(s, 1e-5 * s + 1e-6));
    for (Eigen::Index j = 0; j < 4; ++j)
      if (i != j) CHECK(std::abs(BtB(i, j)) < 1e-4f);
  }
  // Rank-deficient (B = 0 as at LoRA's init): A still gets orthonormal rows, B stays 0.
  auto A0 = randn<float>({3, 7}, g);
  auto B0 = zeros<float>({5, 3});
  dist::fedsvd_refactor(A0, B0);
  REQUIRE(max_abs(as_matrix(A0) * as_matrix(A0).transpose(), matrix<float>::Identity(3, 3)) < 1e-6);
  REQUIRE(as_matrix(B0).cwiseAbs().maxCoeff() == 0.f);
  auto Ab = zeros<float>({6, 4});
  auto Bb = zeros<float>({8, 6});
  REQUIRE_THROWS_WITH(dist::fedsvd_refactor(Ab, Bb), Catch::Contains("rank 6") && Catch::Contains("[6,4]"));
  auto Bc = zeros<float>({8, 5});
  REQUIRE_THROWS_WITH(dist::fedsvd_refactor(A0, Bc), Catch::Contains("[3,7]") && Catch::Contains("[8,5]"));
}

TEST_CASE("FedSVD averages B with the shared A, then re-factorizes B̄·A", "[dist][federated]") {
  std::vector<sd> clients;
  for (int k = 0; k < 3; ++k) clients.push_back(lora_client(k, true)->get_state_dict());
  const std::vector<sd> before = clients;
  const std::vector<double> n{2, 1, 1};
  SECTION("without re-factorization: FFA-LoRA's B average") {
    REQUIRE(dist::fedsvd_aggregate(clients, n, false) == 2);
    const matrix<float> want = 0.5f * as_matrix(before[0].at("q.lora_B.weight")) +
                               0.25f * as_matrix(before[1].at("q.lora_B.weight")) +
                               0.25f * as_matrix(before[2].at("q.lora_B.weight"));
    for (auto& c : clients) {
      REQUIRE(max_abs(as_matrix(c.at("q.lora_B.weight")), want) < 1e-6);
      REQUIRE(as_matrix(c.at("q.lora_A.weight")) == as_matrix(before[0].at("q.lora_A.weight")));
    }
  }
  SECTION("with re-factorization") {
    REQUIRE(dist::fedsvd_aggregate(clients, n) == 2);
    for (const char* layer : {"q.", "v."}) {
      const std::string p(layer);
      const auto A = as_matrix(before[0].at(p + "lora_A.weight"));
      const auto out = Eigen::Index(before[0].at(p + "lora_B.weight").shape()[0]);
      matrix<float> Bbar = matrix<float>::Zero(out, 3);
      for (std::size_t k = 0; k < 3; ++k)
        Bbar += float(n[k] / 4) * as_matrix(before[k].at(p + "lora_B.weight"));
      const matrix<float> want = Bbar * A;
      for (auto& c : clients) {
        const auto An = as_matrix(c.at(p + "lora_A.weight"));
        const auto Bn = as_matrix(c.at(p + "lora_B.weight"));
        REQUIRE(max_abs(Bn * An, want) < 1e-5);
        REQUIRE(max_abs(An * An.transpose(), matrix<float>::Identity(3, 3)) < 1e-6);
        REQUIRE(An == as_matrix(clients[0].at(p + "lora_A.weight")));
      }
    }
  }
  SECTION("A must be shared") {
    clients[1]["v.lora_A.weight"](2, 3) *= 2.f;
    REQUIRE_THROWS_WITH(dist::fedsvd_aggregate(clients),
                        Catch::Contains("client 1") && Catch::Contains("'v.lora_A.weight'"));
  }
}

TEST_CASE("one client per rank: the communicator versions equal the list versions bit for bit",
          "[dist][federated]") {
  constexpr int n = 3;
  const std::vector<double> w{1, 2, 5};
  // Expected: the list versions on the clients' states.
  std::vector<sd> fedsa, fedsb, fedsvd;
  for (int k = 0; k < n; ++k) {
    fedsa.push_back(lora_client(k, false)->get_state_dict());
    fedsb.push_back(sb_client(k)->get_state_dict());
    fedsvd.push_back(lora_client(k, true)->get_state_dict());
  }
  dist::fedsa_aggregate(fedsa, w);
  dist::fed_sb_aggregate(fedsb, w);
  dist::fedsvd_aggregate(fedsvd, w);
  std::vector<sd> got_sa(n), got_sb(n), got_svd(n);
  std::vector<std::size_t> layers(n * 3);
  dist::run_threads(n, [&](dist::communicator& c) {
    const int k = c.rank();
    const double wk = w[std::size_t(k)];
    auto a = lora_client(k, false);
    auto b = sb_client(k);
    auto s = lora_client(k, true);
    layers[std::size_t(3 * k)] = dist::fedsa_aggregate(c, *a, wk);
    layers[std::size_t(3 * k + 1)] = dist::fed_sb_aggregate(c, *b, wk);
    layers[std::size_t(3 * k + 2)] = dist::fedsvd_aggregate(c, *s, wk);
    got_sa[std::size_t(k)] = a->get_state_dict();
    got_sb[std::size_t(k)] = b->get_state_dict();
    got_svd[std::size_t(k)] = s->get_state_dict();
  });
  for (std::size_t l : layers) REQUIRE(l == 2);
  auto same = [](const sd& x, const sd& y) {
    if (x.size() != y.size()) return false;
    for (const auto& [k, v] : x)
      if (!(as_matrix(v) == as_matrix(y.at(k)))) return false;
    return true;
  };
  for (std::size_t k = 0; k < std::size_t(n); ++k) {
    INFO("rank " << k);
    REQUIRE(same(got_sa[k], fedsa[k]));
    REQUIRE(same(got_sb[k], fedsb[k]));
    REQUIRE(same(got_svd[k], fedsvd[k]));
  }
  // B stays per client under FedSA.
  REQUIRE_FALSE(as_matrix(got_sa[0].at("q.lora_B.weight")) == as_matrix(got_sa[1].at("q.lora_B.weight")));
}
