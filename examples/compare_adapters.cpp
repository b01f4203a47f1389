// compare_adapters: every fine-tuning method of finetune_fashion on the same task, data and seed,
// in one table: trainable parameters, test accuracy, time, peak memory, optimizer state.
//
// The task (examples/common/fashion_task.hpp): an MLP pretrained on Fashion-MNIST classes 0-4
// is adapted to classes 5-9. Each adapter method is trained with AdamW; each projected
// optimizer (GaLore, Flora, COAP, DCT) is run on the full fine-tune, where it has big matrices
// to project. Each run is a fresh child process (this program re-run with --worker), so its peak
// memory is its own: the high-water mark is reset after loading the data and the base model,
// so "peak RSS" is the adaptation phase (data + model + adapter + optimizer + activations).
//
// Run:  compare_adapters                     (all methods, 3 epochs on ~30k images each)
//       compare_adapters --methods lora,dora,vera --epochs 1
//       compare_adapters --smoke             (CI: a few steps each; fails unless every loss fell)
// Writes <out-dir>/compare_adapters.csv and compare_adapters.md.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "peft/core/threads.hpp"

#include "common/datasets.hpp"
#include "common/fashion_task.hpp"
#include "common/methods.hpp"
#include "common/sysinfo.hpp"
#include "common/table.hpp"

namespace fs = std::filesystem;
using namespace examples;

namespace {

struct settings {
  std::size_t epochs = 3, batch = 128, train_subset = 0, proj_rank = 32, proj_gap = 100;
  std::uint64_t seed = 0;
  std::string data_dir = fashion_mnist_default_dir;
  std::string cache_dir = default_cache_dir().string();
  bool smoke = false;
};

// Smoke sizes (shared by the parent's pretraining and every worker, so they agree on the cache).
void apply_smoke(settings& s, pretrain_config& pc, std::size_t& file_train, std::size_t& file_test,
                 std::size_t& max_steps) {
  if (!s.smoke) return;
  file_train = 3000;
  file_test = 600;
  pc.epochs = 1;
  pc.max_steps = 20;
  max_steps = 25;
  s.batch = 64;
}

// One run, in this process: prints a single "RESULT key=value ..." line on stdout.
int worker(settings s, const std::string& method, const std::string& optimizer, double lr) {
  peft::set_num_threads(1);
  pretrain_config pc;
  pc.seed = s.seed;
  std::size_t file_train = 0, file_test = 0, max_steps = 0;
  apply_smoke(s, pc, file_train, file_test, max_steps);
  fashion_task_data data = load_fashion_task(s.data_dir, file_train, file_test);
  if (s.train_subset && s.train_subset < data.adapt_train.n)
    data.adapt_train = select_classes(data.adapt_train, 0, 4, s.train_subset);

  peft::rng g(s.seed);
  mlp_classifier<float> model(784, pc.hidden, 5, g);
  pretrain_or_load(model, data, pc, s.cache_dir, true, nullptr, true);
  const double before = accuracy(model, data.adapt_test);
  data.pretrain = {};  // not needed any more: keep it out of the adaptation's memory
  data.pretrain_test = {};

  method_options mo;
  mo.method = method;
  mo.seed = s.seed;
  apply_method(model, mo);
  optimizer_options oo;
  oo.name = optimizer;
  oo.lr = lr > 0 ? lr : method_by_name(method).lr;
  oo.proj_rank = s.proj_rank;
  oo.proj_gap = s.proj_gap;
  oo.seed = s.seed;
  const bool reset = reset_peak_rss();
  auto opt = make_optimizer<float>(model.trainable_parameters(), oo);
  train_config tc;
  tc.epochs = s.epochs;
  tc.batch = s.batch;
  tc.max_steps = max_steps;
  tc.seed = s.seed + 2;
  tc.quiet = true;
  stopwatch clock;
  const auto res = train_classifier<float>(model, *opt, data.adapt_train, tc, nullptr, {});
  const double seconds = clock.seconds();
  const double after = accuracy(model, data.adapt_test);
  const auto c = peft::count_parameters(model);
  std::printf("RESULT method=%s optimizer=%s lr=%g trainable=%zu total=%zu before=%.6f after=%.6f "
              "seconds=%.3f peak_rss=%zu peak_is_phase=%d opt_state=%zu steps=%zu loss_first=%.6f "
              "loss_last=%.6f\n",
              method.c_str(), optimizer.c_str(), oo.lr, c.trainable, c.total, before, after, seconds,
              peak_rss_bytes(), int(reset), opt->state_bytes(), res.steps, res.first_loss,
              res.last_loss);
  return 0;
}

std::map<std::string, std::string> parse_result(const std::string& out) {
  std::map<std::string, std::string> kv;
  const auto pos = out.rfind("RESULT ");
  if (pos == std::string::npos) return kv;
  std::istringstream is(out.substr(pos + 7));
  std::string item;
  while (is >> item) {
    const auto eq = item.find('=');
    if (eq != std::string::npos) kv[item.substr(0, eq)] = item.substr(eq + 1);
  }
  return kv;
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::string item;
  std::istringstream is(s);
  while (std::getline(is, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  settings s;
  std::string methods_arg, optimizers_arg, out_dir = "fashion_runs", worker_method, worker_optimizer;
  double worker_lr = 0;
  bool is_worker = false;

  std::string all_methods, all_opts;
  for (auto& m : method_names()) all_methods += (all_methods.empty() ? "" : ",") + m;
  for (auto& o : optimizer_names())
    if (o != "adamw") all_opts += (all_opts.empty() ? "" : ",") + o;
  methods_arg = all_methods;
  optimizers_arg = all_opts;

  CLI::App app{"compare_adapters: run every fine-tuning method (and every projected optimizer) on "
               "the same Fashion-MNIST transfer task and seed; print one aligned table and write it "
               "as CSV and Markdown."};
  app.add_option("--methods", methods_arg, "comma-separated adapter methods, each trained with AdamW")
      ->capture_default_str();
  app.add_option("--optimizers", optimizers_arg, "comma-separated projected optimizers, each run "
                 "on the full fine-tune (empty: none)")->capture_default_str();
  app.add_option("--epochs", s.epochs, "adaptation epochs per run")->capture_default_str();
  app.add_option("--batch", s.batch, "mini-batch size")->capture_default_str();
  app.add_option("--train-subset", s.train_subset, "adapt on only the first N images (0 = all ~30000)");
  app.add_option("--proj-rank", s.proj_rank, "rank of the projected optimizers")->capture_default_str();
  app.add_option("--proj-gap", s.proj_gap, "steps between projection refreshes")->capture_default_str();
  app.add_option("--seed", s.seed, "one seed for every run")->capture_default_str();
  app.add_option("--data-dir", s.data_dir, "directory of the Fashion-MNIST .gz files")->capture_default_str();
  app.add_option("--cache-dir", s.cache_dir, "where the pretrained model is cached")->capture_default_str();
  app.add_option("--out-dir", out_dir, "where compare_adapters.csv and .md go")->capture_default_str();
  app.add_flag("--smoke", s.smoke, "CI mode: a few steps of every run on a small subset; fails "
               "unless every run's loss went down");
  app.add_flag("--worker", is_worker, "(internal) run one method and print its RESULT line")->group("");
  app.add_option("--worker-method", worker_method, "(internal)")->group("");
  app.add_option("--worker-optimizer", worker_optimizer, "(internal)")->group("");
  app.add_option("--worker-lr", worker_lr, "(internal)")->group("");
  CLI11_PARSE(app, argc, argv);

  try {
    if (is_worker) return worker(s, worker_method, worker_optimizer, worker_lr);

    struct run_spec {
      std::string method, optimizer;
    };
    std::vector<run_spec> runs;
    for (auto& m : split_list(methods_arg)) {
      method_by_name(m);  // throws on an unknown name
      runs.push_back({m, "adamw"});
    }
    for (auto& o : split_list(optimizers_arg)) {
      bool known = false;
      for (auto& n : optimizer_names()) known = known || n == o;
      if (!known) throw std::invalid_argument("unknown optimizer '" + o + "'");
      runs.push_back({"full", o});
    }

    // The shared base model first (so no run's time includes pretraining).
    {
      settings p = s;
      pretrain_config pc;
      pc.seed = s.seed;
      std::size_t ft = 0, fte = 0, ms = 0;
      apply_smoke(p, pc, ft, fte, ms);
      peft::set_num_threads(1);
      const auto data = load_fashion_task(s.data_dir, ft, fte);
      peft::rng g(s.seed);
      mlp_classifier<float> model(784, pc.hidden, 5, g);
      pretrain_or_load(model, data, pc, s.cache_dir, true, nullptr, false);
      std::printf("base model accuracy on classes 0-4: %.2f%%; before adaptation on classes 5-9: %.2f%%\n",
                  100 * accuracy(model, data.pretrain_test), 100 * accuracy(model, data.adapt_test));
    }

    const std::string exe = self_exe();
    if (exe.empty()) throw std::runtime_error("cannot find this program's path (/proc/self/exe)");
    std::printf("%zu runs, %zu epochs each, seed %llu\n", runs.size(), s.epochs,
                (unsigned long long)s.seed);
    table t({"method", "optimizer", "trainable params", "% of model", "test acc", "time",
             "peak RSS", "optimizer state", "lr"});
    bool all_down = true, peaks_are_phase = true;
    for (auto& r : runs) {
      std::vector<std::string> args = {exe, "--worker", "--worker-method", r.method, "--worker-optimizer",
                                       r.optimizer, "--epochs", std::to_string(s.epochs), "--batch",
                                       std::to_string(s.batch), "--train-subset",
                                       std::to_string(s.train_subset), "--proj-rank",
                                       std::to_string(s.proj_rank), "--proj-gap", std::to_string(s.proj_gap),
                                       "--seed", std::to_string(s.seed), "--data-dir", s.data_dir,
                                       "--cache-dir", s.cache_dir};
      if (s.smoke) args.push_back("--smoke");
      std::printf("  %-10s %-7s ... ", r.method.c_str(), r.optimizer.c_str());
      std::fflush(stdout);
      std::string out;
      const int rc = run_capture(args, out);
      auto kv = parse_result(out);
      if (rc != 0 || kv.empty()) {
        std::printf("FAILED (exit %d)\n", rc);
        all_down = false;
        t.add_row({r.method, r.optimizer, "-", "-", "failed", "-", "-", "-", "-"});
        continue;
      }
      const double acc = std::stod(kv["after"]), secs = std::stod(kv["seconds"]);
      const double first = std::stod(kv["loss_first"]), last = std::stod(kv["loss_last"]);
      const bool down = last < first;
      all_down = all_down && down;
      std::printf("%.2f%% in %.1f s (loss %.3f -> %.3f%s)\n", 100 * acc, secs, first, last,
                  down ? "" : ", DID NOT GO DOWN");
      peaks_are_phase = peaks_are_phase && kv["peak_is_phase"] == "1";
      const std::size_t trainable = std::stoul(kv["trainable"]), total = std::stoul(kv["total"]);
      t.add_row({r.method, r.optimizer, group_digits(trainable),
                 fmt("%.2f%%", 100.0 * double(trainable) / double(total)), fmt("%.2f%%", 100 * acc),
                 fmt("%.1f s", secs), format_bytes(std::stod(kv["peak_rss"])),
                 format_bytes(std::stod(kv["opt_state"])), kv["lr"]});
    }

    std::printf("\nFashion-MNIST classes 5-9, MLP 784-256-256-5 pretrained on classes 0-4; %s, "
                "batch %zu, seed %llu; projected optimizers: rank %zu, refresh every %zu steps\n\n",
                s.smoke ? "smoke run (a few steps)" : (std::to_string(s.epochs) + " epoch(s)").c_str(),
                s.batch, (unsigned long long)s.seed, s.proj_rank, s.proj_gap);
    t.print();
    std::printf("%s\n", peaks_are_phase
                            ? "peak RSS: high-water mark of the adaptation phase (data, model, "
                              "adapter, optimizer, activations)"
                            : "peak RSS: whole-process high-water mark (this kernel cannot reset it)");
    fs::create_directories(out_dir);
    const fs::path csv = fs::path(out_dir) / "compare_adapters.csv";
    const fs::path md = fs::path(out_dir) / "compare_adapters.md";
    table::write_file(csv.string(), t.to_csv());
    table::write_file(md.string(), t.to_markdown());
    std::printf("\nwritten: %s, %s\n", csv.string().c_str(), md.string().c_str());
    if (s.smoke) {
      std::printf("smoke: %s\n", all_down ? "every run's loss went down" : "SOME RUN FAILED");
      return all_down ? 0 : 1;
    }
    return 0;
  } catch (const missing_data& e) {
    std::fprintf(stderr, "compare_adapters: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "compare_adapters: %s\n", e.what());
    return 1;
  }
}
