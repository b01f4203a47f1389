// finetune_mpi: data-parallel LoRA fine-tuning over MPI, with plain and with projected
// all-reduce of the adapter gradients.
//
// Run (from the build directory; built only when CMake finds MPI: libopenmpi-dev openmpi-bin):
//
//   mpirun -np 2 --oversubscribe examples/finetune_mpi
//
// (add --allow-run-as-root when running as root, and --mca mpi_yield_when_idle 1 when the ranks
// share cores with other work: waiting ranks then yield instead of spinning. `examples/finetune_mpi`
// alone is a 1-process run and trains the same model, since each rank only takes its shard of the
// same global batch. Options: --help; e.g. --projector flora, --proj-rank 8, --steps 1000.)
//
// The task: a "pretrained" MLP 64-128-32 (frozen) must come to behave like a target network whose
// two layers differ from it by a rank-4 change. LoRA (r = 16) wraps both layers; the loss is the
// MSE to the target's outputs on fresh random inputs. Every step draws one global batch from a
// seeded stream (the same on every rank), each rank takes its shard, computes the gradients of
// its adapters, and data_parallel::sync averages them over the ranks in ONE all-reduce, so every
// rank takes the same step a single process would take on the whole batch.
//
// Two runs from the same start:
//   1. AdamW:            the LoRA gradients are all-reduced at full size;
//   2. projected AdamW:  GaLore (or Flora) with rank --proj-rank on the LoRA factors, with
//                        dist::synced_projector: between basis refreshes only each factor's
//                        low-rank projection is all-reduced (at a refresh step, the full
//                        gradient, so every rank computes the same SVD).
// Rank 0 prints the loss every --log-every steps and the bytes all-reduced per step.
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "peft/adapters/inject.hpp"
#include "peft/autograd/ops/relu.hpp"
#include "peft/core/random.hpp"
#include "peft/core/threads.hpp"
#include "peft/dist/dist.hpp"
#include "peft/nn/linear.hpp"
#include "peft/nn/loss.hpp"
#include "peft/optim/adam.hpp"
#include "peft/optim/projected.hpp"
#include "peft/optim/projection/flora.hpp"
#include "peft/optim/projection/galore.hpp"

using namespace peft;

namespace {

constexpr std::size_t in_dim = 64, hidden = 128, out_dim = 32;

class mlp : public nn::unary_module<float> {
 public:
  explicit mlp(rng& g) {
    fc1 = std::make_shared<nn::linear<float>>(in_dim, hidden, g);
    fc2 = std::make_shared<nn::linear<float>>(hidden, out_dim, g);
    register_module("fc1", fc1);
    register_module("fc2", fc2);
  }
  variable<float> forward(const variable<float>& x) override {
    return fc2->forward(relu(fc1->forward(x)));
  }
  std::shared_ptr<nn::unary_module<float>> fc1, fc2;
};

struct options {
  int steps = 300;
  std::size_t batch = 256;
  std::size_t rank = 16;
  std::size_t proj_rank = 4;
  std::size_t gap = 50;
  std::string projector = "galore";
  double lr = 1e-2;
  std::uint64_t seed = 1;
  int log_every = 50;
};

struct run_result {
  double first_loss = 0, last_loss = 0, seconds = 0;
  dist::comm_plan plan;
  double measured_bytes_per_step = 0;  // the communicator's all-reduce payload / steps
};

// The pretrained model (the same on every rank: seeded), and the target it should learn to match.
std::unique_ptr<mlp> pretrained(std::uint64_t seed) {
  rng g(seed);
  return std::make_unique<mlp>(g);
}
std::unique_ptr<mlp> target_model(std::uint64_t seed) {
  auto m = pretrained(seed);
  rng g(seed + 100);
  for (auto* layer : {m->fc1.get(), m->fc2.get()}) {
    auto& W = static_cast<nn::linear<float>*>(layer)->weight.value();
    const auto u = randn<float>({W.shape()[0], 4}, g, 0.0, 0.25);
    const auto v = randn<float>({4, W.shape()[1]}, g, 0.0, 0.25);
    as_matrix(W) += as_matrix(u) * as_matrix(v);
  }
  return m;
}

// One training run; `make_opt` builds the optimizer over the trainable parameters.
template <class MakeOpt>
run_result train(dist::communicator& comm, const options& o, const char* title, MakeOpt make_opt) {
  auto model = pretrained(o.seed);
  auto target = target_model(o.seed);
  lora_config cfg;
  cfg.r = o.rank;
  cfg.alpha = double(o.rank);
  cfg.seed = o.seed + 7;
  inject_options io;
  io.targets = target_modules::list({"fc1", "fc2"});
  inject_lora(*model, cfg, io);
  // Every rank starts from rank 0's values (a no-op here, the model is seeded; needed when it is
  // not, e.g. a random initialization drawn from a per-process seed).
  dist::broadcast_module(comm, *model);

  auto opt = make_opt(model->trainable_parameters());
  dist::data_parallel<float> dp(comm, *opt);
  comm.reset_stats();

  const bool root = comm.rank() == 0;
  if (root) std::printf("\n== %s (%d rank%s) ==\n", title, comm.size(), comm.size() > 1 ? "s" : "");
  const auto [begin, end] = dist::shard_range(o.batch, comm.rank(), comm.size());
  run_result r;
  rng data(o.seed + 1000);  // the global batch stream: the same on every rank
  const auto t0 = std::chrono::steady_clock::now();
  for (int step = 1; step <= o.steps; ++step) {
    const auto x_all = randn<float>({o.batch, in_dim}, data);
    tensor<float> x = tensor<float>::from_shape({end - begin, in_dim});
    as_matrix(x) = as_matrix(x_all).middleRows(Eigen::Index(begin), Eigen::Index(end - begin));
    variable<float> want;
    {
      no_grad_guard ng;
      want = (*target)(constant<float>(x));
    }
    auto loss = nn::mse_loss((*model)(constant<float>(x)), want);
    loss.backward();
    // Weight = shard size: the average is the global-batch gradient even for unequal shards.
    const auto st = dp.sync(double(end - begin), double(loss.item()));
    opt->step();
    opt->zero_grad();
    if (step == 1) r.first_loss = st.loss;
    r.last_loss = st.loss;
    if (root && (step == 1 || step % o.log_every == 0 || step == o.steps))
      std::printf("step %4d  loss %.4e  all-reduced %6zu bytes (%zu full, %zu projected tensors)\n",
                  step, st.loss, st.bytes, st.full_tensors, st.projected_tensors);
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.plan = dp.plan();
  r.measured_bytes_per_step = double(comm.stats().allreduce_bytes) / double(o.steps);
  if (dp.divergence() != 0.0 && root) std::printf("WARNING: ranks hold different parameters\n");
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  dist::mpi_environment env(argc, argv);
  dist::mpi_communicator comm;
  const bool root = comm.rank() == 0;

  options o;
  CLI::App app{"finetune_mpi: data-parallel LoRA over MPI, plain vs projected all-reduce"};
  app.add_option("--steps", o.steps, "optimizer steps")->check(CLI::PositiveNumber);
  app.add_option("--batch", o.batch, "global batch (split over the ranks)")->check(CLI::PositiveNumber);
  app.add_option("--rank", o.rank, "LoRA rank r")->check(CLI::PositiveNumber);
  app.add_option("--proj-rank", o.proj_rank, "rank of the gradient projection (<= r)")
      ->check(CLI::PositiveNumber);
  app.add_option("--gap", o.gap, "steps between basis refreshes (GaLore gap, Flora kappa)")
      ->check(CLI::PositiveNumber);
  app.add_option("--projector", o.projector, "galore or flora")
      ->check(CLI::IsMember({"galore", "flora"}));
  app.add_option("--lr", o.lr, "AdamW learning rate");
  app.add_option("--seed", o.seed, "seed of the model, the target and the data");
  app.add_option("--log-every", o.log_every, "print the loss every N steps")->check(CLI::PositiveNumber);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = root ? app.exit(e) : (e.get_exit_code() == 0 ? 0 : 1);
    return rc;
  }
  if (o.batch < std::size_t(comm.size())) {
    if (root) std::fprintf(stderr, "--batch %zu is smaller than the %d ranks\n", o.batch, comm.size());
    return 1;
  }
  set_num_threads(1);  // one process per core: MPI provides the parallelism

  optim::adamw_options ao;
  ao.lr = o.lr;
  ao.weight_decay = 0;

  const run_result plain = train(comm, o, "AdamW-LoRA, plain all-reduce",
                                 [&](const std::vector<variable<float>>& p) {
                                   return std::make_unique<optim::adamw<float>>(p, ao);
                                 });

  run_result proj;
  const std::string ptitle = "projected AdamW-LoRA (" + o.projector + " rank " +
                             std::to_string(o.proj_rank) + "), projected all-reduce";
  if (o.projector == "galore") {
    using P = dist::synced_projector<optim::galore_projector<float>>;
    optim::galore_options go;
    go.rank = o.proj_rank;
    go.update_proj_gap = o.gap;
    go.scale = 1.0;
    proj = train(comm, o, ptitle.c_str(), [&](const std::vector<variable<float>>& p) {
      return std::make_unique<optim::projected<optim::adamw<float>, P>>(p, ao, go);
    });
  } else {
    using P = dist::synced_projector<optim::flora_projector<float>>;
    optim::flora_options fo;
    fo.rank = o.proj_rank;
    fo.kappa = o.gap;
    proj = train(comm, o, ptitle.c_str(), [&](const std::vector<variable<float>>& p) {
      return std::make_unique<optim::projected<optim::adamw<float>, P>>(
          p, ao, fo, optim::projected_options{.seed = o.seed});
    });
  }

  if (root) {
    const std::size_t full_ft =
        (in_dim * hidden + hidden + hidden * out_dim + out_dim) * sizeof(float);
    std::printf("\nAll-reduce payload per step (bytes per rank; a ring all-reduce moves about "
                "2(p-1)/p times this):\n");
    std::printf("  full fine-tuning, every weight (for scale)  %8zu\n", full_ft);
    std::printf("  LoRA, plain all-reduce                      %8zu  (measured %.0f/step)\n",
                plain.plan.full_bytes, plain.measured_bytes_per_step);
    std::printf("  LoRA, projected all-reduce                  %8zu  between refreshes, "
                "%zu at a refresh step (measured %.0f/step, %.2fx less than plain)\n",
                proj.plan.projected_bytes, proj.plan.full_bytes, proj.measured_bytes_per_step,
                plain.measured_bytes_per_step / proj.measured_bytes_per_step);
    std::printf("\nloss: plain %.3e -> %.3e (%.1fs), projected %.3e -> %.3e (%.1fs)\n",
                plain.first_loss, plain.last_loss, plain.seconds, proj.first_loss, proj.last_loss,
                proj.seconds);
  }
  const bool ok = plain.last_loss < 0.1 * plain.first_loss && proj.last_loss < 0.1 * proj.first_loss;
  if (root) std::printf("%s\n", ok ? "OK: both runs cut the loss 10x" : "FAILED: a loss did not fall 10x");
  return ok ? 0 : 1;
}
