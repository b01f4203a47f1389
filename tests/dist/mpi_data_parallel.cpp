// Data parallel over real MPI: run by ctest as
//   mpirun -np 2 --oversubscribe [--allow-run-as-root] test_dist_mpi_data_parallel
// and with -np 1. Every rank also computes the 1-rank reference itself (the whole global batch,
// no communicator), so one mpirun checks "N ranks == 1 rank":
//   - AdamW-LoRA, projected AdamW + Flora, projected AdamW + GaLore: max |param − reference| <
//     1e-5 after 20 steps (exactly 0 on one rank), and all ranks hold the same bits;
//   - the projected runs send fewer bytes between refreshes (checked against plan());
//   - FedSA / Fed-SB / FedSVD through MPI equal the list versions.
// Exit code 0 only if every check passed on every rank.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "dp_fixture.hpp"
#include "peft/adapters/lora_xs.hpp"
#include "peft/core/threads.hpp"
#include "peft/dist/dist.hpp"

using namespace peft;
using namespace dp_fixture;

namespace {

int failures = 0;

void check(dist::communicator& c, bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::printf("[rank %d] FAILED: %s\n", c.rank(), what.c_str());
  }
}

template <class MakeRef, class MakeDp>
void compare(dist::communicator& c, const char* name, MakeRef make_ref, MakeDp make_dp,
             bool projected) {
  net<float> ref(5);
  auto ro = make_ref(ref.trainable_parameters());
  train(ref, *ro, {}, nullptr);

  net<float> m(c.rank() == 0 ? 5 : 77);  // broadcast_module must make the seed irrelevant
  auto opt = make_dp(m.trainable_parameters());
  dist::data_parallel<float> dp(c, *opt);
  dist::broadcast_module(c, m);
  std::vector<std::size_t> bytes;
  run_options dp_ro;
  dp_ro.weighted = true;  // shard sizes as weights: exact for any number of ranks
  const double loss = train(m, *opt, dp_ro, &dp, &bytes);
  const double diff = max_param_diff(m, ref);
  const double div = dp.divergence();
  const auto plan = dp.plan();
  if (c.rank() == 0)
    std::printf("%-26s ranks %d  max|N-rank - 1-rank| %.3e  divergence %g  loss %.5f  "
                "bytes/step: full %zu, projected %zu\n",
                name, c.size(), diff, div, loss, plan.full_bytes, plan.projected_bytes);
  check(c, c.size() == 1 ? diff == 0.0 : diff < 1e-5,
        std::string(name) + ": parameters differ from the 1-rank run by " + std::to_string(diff));
  check(c, div == 0.0, std::string(name) + ": ranks diverged");
  check(c, projected == dp.projected(), std::string(name) + ": projected mode");
  for (std::size_t s = 0; s < bytes.size(); ++s) {
    const std::size_t want = projected && s % 5 != 0 ? plan.projected_bytes : plan.full_bytes;
    check(c, bytes[s] == want, std::string(name) + ": step " + std::to_string(s) + " sent " +
                                   std::to_string(bytes[s]) + " bytes, plan says " +
                                   std::to_string(want));
  }
  // Rank-4 projections of rank-8 LoRA factors: half the gradient floats.
  if (projected)
    check(c, 2 * (plan.projected_bytes - plan.header_bytes) == plan.full_bytes - plan.header_bytes,
          std::string(name) + ": projection did not halve the gradient payload");
}

// Client k's adapter states for the federated checks (deterministic, so every rank can build
// every client's state for the list version).
std::unique_ptr<net<float>> client(int k) {
  auto m = std::make_unique<net<float>>(5);
  rng g(900 + std::uint64_t(k));
  for (auto& [n, p] : m->named_parameters())
    if (n.find("lora_B") != std::string::npos) fill_normal(p.value(), 0.0, 0.3, g);
  return m;
}

void federated(dist::communicator& c) {
  // FedSA and FedSVD on the LoRA nets (A shared: same seed on every client), weights k + 1.
  std::vector<nn::state_dict<float>> sa, svd;
  std::vector<double> w;
  for (int k = 0; k < c.size(); ++k) {
    sa.push_back(client(k)->get_state_dict());
    svd.push_back(client(k)->get_state_dict());
    w.push_back(k + 1);
  }
  dist::fedsa_aggregate(sa, w);
  dist::fedsvd_aggregate(svd, w);
  auto a = client(c.rank());
  auto s = client(c.rank());
  dist::fedsa_aggregate(c, *a, double(c.rank() + 1));
  dist::fedsvd_aggregate(c, *s, double(c.rank() + 1));
  double d = 0;
  for (auto& [n, p] : a->named_parameters())
    d = std::max(d, double((as_vector(p.value()) - as_vector(sa[std::size_t(c.rank())].at(n)))
                               .cwiseAbs()
                               .maxCoeff()));
  for (auto& [n, p] : s->named_parameters())
    d = std::max(d, double((as_vector(p.value()) - as_vector(svd[std::size_t(c.rank())].at(n)))
                               .cwiseAbs()
                               .maxCoeff()));
  if (c.rank() == 0) std::printf("federated (FedSA, FedSVD) over MPI vs lists: max diff %.3e\n", d);
  // MPI may sum 3+ ranks in another order than the list: allow rounding there.
  check(c, c.size() <= 2 ? d == 0.0 : d < 1e-6, "federated over MPI differs by " + std::to_string(d));
}

}  // namespace

int main(int argc, char** argv) {
  dist::mpi_environment env(argc, argv);
  dist::mpi_communicator comm;
  set_num_threads(1);
  using flora = optim::flora_projector<float>;
  using galore = optim::galore_projector<float>;
  try {
    auto adamw = [](const std::vector<variable<float>>& p) {
      return std::make_unique<optim::adamw<float>>(p, adamw_opts<float>());
    };
    compare(comm, "AdamW-LoRA", adamw, adamw, false);
    compare(comm, "projected AdamW + Flora", make_flora<float, flora>,
            make_flora<float, dist::synced_projector<flora>>, true);
    compare(comm, "projected AdamW + GaLore", make_galore<float, galore>,
            make_galore<float, dist::synced_projector<galore>>, true);
    federated(comm);
  } catch (const std::exception& e) {
    std::printf("[rank %d] exception: %s\n", comm.rank(), e.what());
    std::fflush(stdout);
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  // Every rank learns whether any rank failed, so all exit with the same code.
  double f[1] = {double(failures)};
  comm.allreduce_sum(std::span<double>(f));
  if (comm.rank() == 0) std::printf("%s\n", f[0] == 0 ? "OK" : "FAILED");
  return f[0] == 0 ? 0 : 1;
}
