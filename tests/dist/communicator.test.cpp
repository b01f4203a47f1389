#include <catch2/catch.hpp>

#include <atomic>
#include <stdexcept>
#include <vector>

#include "peft/core/random.hpp"
#include "peft/dist/communicator.hpp"

using namespace peft;
using namespace peft::dist;

TEST_CASE("self_communicator is one rank whose collectives keep the data", "[dist][communicator]") {
  self_communicator c;
  REQUIRE(c.rank() == 0);
  REQUIRE(c.size() == 1);
  std::vector<float> x{1.5f, -2.f, 3.f};
  c.allreduce_sum(std::span<float>(x));
  c.broadcast(std::span<float>(x), 0);
  c.barrier();
  REQUIRE(x == std::vector<float>{1.5f, -2.f, 3.f});
  REQUIRE(c.stats().allreduce_calls == 1);
  REQUIRE(c.stats().allreduce_bytes == 3 * sizeof(float));
  REQUIRE(c.stats().broadcast_bytes == 3 * sizeof(float));
  REQUIRE_THROWS_WITH(c.broadcast(std::span<float>(x), 1),
                      Catch::Contains("broadcast root 1") && Catch::Contains("[0, 1)"));
  c.reset_stats();
  REQUIRE(c.stats().allreduce_calls == 0);
}

TEST_CASE("thread ranks: allreduce_sum gives every rank the same rank-order sum",
          "[dist][communicator]") {
  constexpr int n = 3;
  constexpr std::size_t len = 1000;
  // Each rank's data, and the expected sum computed here in rank order.
  std::vector<std::vector<float>> data(n);
  std::vector<std::vector<double>> ddata(n);
  for (int r = 0; r < n; ++r) {
    rng g(10 + std::uint64_t(r));
    for (std::size_t i = 0; i < len; ++i) {
      data[std::size_t(r)].push_back(float(g.normal()));
      ddata[std::size_t(r)].push_back(g.normal());
    }
  }
  std::vector<float> want(len);
  std::vector<double> dwant(len);
  for (std::size_t i = 0; i < len; ++i) {
    want[i] = data[0][i] + data[1][i] + data[2][i];
    dwant[i] = ddata[0][i] + ddata[1][i] + ddata[2][i];
  }
  std::vector<std::vector<float>> got(n);
  std::vector<std::vector<double>> dgot(n);
  std::vector<int> ranks(n, -1), sizes(n, -1);
  run_threads(n, [&](communicator& c) {
    const auto r = std::size_t(c.rank());
    ranks[r] = c.rank();
    sizes[r] = c.size();
    got[r] = data[r];
    dgot[r] = ddata[r];
    c.allreduce_sum(std::span<float>(got[r]));
    c.allreduce_sum(std::span<double>(dgot[r]));
  });
  REQUIRE(ranks == std::vector<int>{0, 1, 2});
  REQUIRE(sizes == std::vector<int>{3, 3, 3});
  for (int r = 0; r < n; ++r) {
    REQUIRE(got[std::size_t(r)] == want);  // bit for bit, on every rank
    REQUIRE(dgot[std::size_t(r)] == dwant);
  }
}

TEST_CASE("thread ranks: broadcast copies the root's bytes", "[dist][communicator]") {
  std::vector<std::vector<int>> got(4);
  run_threads(4, [&](communicator& c) {
    auto& mine = got[std::size_t(c.rank())];
    mine = {c.rank(), 10 * c.rank(), 100 * c.rank()};
    c.broadcast(std::span<int>(mine), 2);
    c.barrier();
  });
  for (const auto& v : got) REQUIRE(v == std::vector<int>{2, 20, 200});
}

TEST_CASE("thread ranks: mismatched sizes throw naming both sizes", "[dist][communicator]") {
  REQUIRE_THROWS_WITH(run_threads(2,
                                  [&](communicator& c) {
                                    std::vector<float> x(c.rank() == 0 ? 2 : 3, 1.f);
                                    c.allreduce_sum(std::span<float>(x));
                                  }),
                      Catch::Contains("allreduce_sum") && Catch::Contains("2 elements") &&
                          Catch::Contains("has 3"));
}

TEST_CASE("thread ranks: a failing rank releases the others and its error is rethrown",
          "[dist][communicator]") {
  std::atomic<int> released{0};
  REQUIRE_THROWS_WITH(run_threads(3,
                                  [&](communicator& c) {
                                    if (c.rank() == 1) throw std::runtime_error("rank 1 broke");
                                    std::vector<float> x(4, 1.f);
                                    try {
                                      c.allreduce_sum(std::span<float>(x));
                                    } catch (const error&) {
                                      ++released;
                                      throw;
                                    }
                                  }),
                      "rank 1 broke");
  REQUIRE(released == 2);
  REQUIRE_THROWS_WITH(run_threads(0, [](communicator&) {}), Catch::Contains("0 ranks"));
}
