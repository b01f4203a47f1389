// finetune_fashion: parameter-efficient transfer learning on real images.
//
// The story, in five steps:
//   1. Load Fashion-MNIST (Debian package dataset-fashion-mnist) and split it in two tasks:
//      classes 0-4 (T-shirt, Trouser, Pullover, Dress, Coat) and classes 5-9 (Sandal, Shirt,
//      Sneaker, Bag, Ankle boot), each relabelled 0-4.
//   2. Pretrain an MLP 784-256-256-5 on the first task, or load it from the cache (a
//      safetensors file written by peft::io::save_state_dict) so a second run skips this.
//   3. Choose what to train for the second task (--adapter): an adapter on the hidden layers
//      fc1 and fc2 (LoRA, DoRA, VeRA, ...; the head is retrained as PEFT's modules_to_save),
//      only the head, or everything. The pretrained weights stay frozen under an adapter.
//   4. Train with AdamW, or with AdamW on low-rank projected gradients (--optimizer galore,
//      flora, coap, dct: they project each trainable weight matrix whose dimensions are both
//      >= --proj-rank, so they matter mainly with --adapter full, where fc1/fc2 are trained).
//   5. Report test accuracy on classes 5-9 before and after, the number of trainable
//      parameters, time and peak memory; merge the adapter into the weights and check the
//      merged model gives the same accuracy. Every step's loss goes to a CSV log, and to a PNG
//      plot when gnuplot is installed.
//
// Run:  finetune_fashion                       (LoRA r=4, about a minute on 2 cores)
//       finetune_fashion --adapter dora --rank 8
//       finetune_fashion --adapter full --optimizer galore --proj-rank 32
//       finetune_fashion --help
#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>

#include "peft/core/threads.hpp"

#include "common/datasets.hpp"
#include "common/fashion_task.hpp"
#include "common/methods.hpp"
#include "common/run_log.hpp"
#include "common/sysinfo.hpp"
#include "common/table.hpp"

namespace fs = std::filesystem;
using namespace examples;

int main(int argc, char** argv) {
  method_options mo;
  optimizer_options oo;
  pretrain_config pc;
  double lr = 0;
  std::size_t epochs = 3, batch = 128, train_subset = 0;
  int threads = 1;
  std::string data_dir = fashion_mnist_default_dir;
  std::string cache_dir = default_cache_dir().string();
  std::string out_dir = "fashion_runs";
  bool no_cache = false, no_plot = false, smoke = false;

  std::string method_help = "what to train for the new classes:";
  for (auto& m : methods()) method_help += std::string("\n  ") + m.name + ": " + m.summary;
  CLI::App app{"finetune_fashion: pretrain an MLP on Fashion-MNIST classes 0-4, then adapt it to "
               "classes 5-9 with a parameter-efficient method, and report accuracy, trainable "
               "parameters, time and memory."};
  app.add_option("--adapter", mo.method, method_help)->check(CLI::IsMember(method_names()))->capture_default_str();
  app.add_option("--rank", mo.rank, "the method's size: LoRA-family rank r, VeRA/RandLoRA rank, "
                 "LoRA-XS r (trains r×r), FourierFT/DCT number of coefficients (0 = method default)");
  app.add_option("--alpha", mo.alpha, "the method's scale: LoRA alpha (update scaled by alpha/r), "
                 "FourierFT/DCT scaling (0 = method default)");
  app.add_option("--optimizer", oo.name, "adamw, or AdamW on projected gradients: galore (SVD basis), "
                 "flora (random basis), coap (correlation-aware basis), dct (DCT columns); projection "
                 "applies to trainable matrices with both dims >= --proj-rank")
      ->check(CLI::IsMember(optimizer_names()))->capture_default_str();
  app.add_option("--proj-rank", oo.proj_rank, "rank of the projected gradients")->capture_default_str();
  app.add_option("--proj-gap", oo.proj_gap, "steps between projection basis refreshes")->capture_default_str();
  app.add_option("--lr", lr, "peak learning rate (0 = the method's default; warmup then cosine decay)");
  app.add_option("--weight-decay", oo.weight_decay, "AdamW decoupled weight decay")->capture_default_str();
  app.add_option("--epochs", epochs, "adaptation epochs")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--batch", batch, "mini-batch size")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--seed", mo.seed, "seed for initialisation, adapters and shuffling")->capture_default_str();
  app.add_option("--train-subset", train_subset, "adapt on only the first N images of classes 5-9 "
                 "(0 = all ~30000)");
  app.add_option("--hidden", pc.hidden, "hidden width of the MLP")->capture_default_str();
  app.add_option("--pretrain-epochs", pc.epochs, "epochs of pretraining on classes 0-4")->capture_default_str();
  app.add_option("--data-dir", data_dir, "directory of the Fashion-MNIST .gz files")->capture_default_str();
  app.add_option("--cache-dir", cache_dir, "where the pretrained model is cached")->capture_default_str();
  app.add_flag("--no-cache", no_cache, "always pretrain, and do not write the cache");
  app.add_option("--out-dir", out_dir, "where the CSV log and the PNG plot go")->capture_default_str();
  app.add_flag("--no-plot", no_plot, "do not call gnuplot");
  app.add_option("--threads", threads, "GEMM threads (0 = all cores). The matrices here are small: "
                 "extra threads rarely help, and on a busy machine they can be much slower")
      ->capture_default_str();
  app.add_flag("--smoke", smoke, "CI mode: a few steps on a small subset; fails unless the loss "
               "went down");
  CLI11_PARSE(app, argc, argv);

  stopwatch total_clock;
  peft::set_num_threads(threads > 0 ? threads : int(std::max(1u, std::thread::hardware_concurrency())));
  pc.seed = mo.seed;
  oo.seed = mo.seed;
  oo.lr = lr > 0 ? lr : method_by_name(mo.method).lr;

  // ---- 1. data
  std::size_t file_train_limit = 0, file_test_limit = 0, max_steps = 0;
  if (smoke) {
    file_train_limit = 4000;  // ~2000 images per task
    file_test_limit = 1000;
    pc.epochs = 1;
    pc.max_steps = 30;
    max_steps = 40;
    batch = 64;
  }
  fashion_task_data data;
  try {
    data = load_fashion_task(data_dir, file_train_limit, file_test_limit);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "finetune_fashion: %s\n", e.what());
    return 2;
  }
  if (train_subset && train_subset < data.adapt_train.n)
    data.adapt_train = select_classes(data.adapt_train, 0, 4, train_subset);
  std::printf("Fashion-MNIST: pretrain on classes 0-4 (%zu images), adapt to classes 5-9 "
              "(%zu training, %zu test images)\n",
              data.pretrain.n, data.adapt_train.n, data.adapt_test.n);

  const std::string run_name = "finetune_fashion_" + mo.method + "_" + oo.name + (smoke ? "_smoke" : "");
  run_log log(fs::path(out_dir) / (run_name + ".csv"), "accuracy");

  // ---- 2. the pretrained model
  peft::rng g(mo.seed);
  mlp_classifier<float> model(784, pc.hidden, 5, g);
  pretrain_or_load(model, data, pc, cache_dir, !no_cache, &log);
  std::printf("base model accuracy on classes 0-4: %.2f%%\n", 100 * accuracy(model, data.pretrain_test));
  const double before = accuracy(model, data.adapt_test);

  // ---- 3. what to train
  const std::string what = apply_method(model, mo);
  std::printf("\nmethod: %s (%s)", mo.method.c_str(), what.c_str());
  if (method_by_name(mo.method).rank) std::printf(", rank %zu, alpha %g", mo.rank_or_default(), mo.alpha_or_default());
  std::printf("\n%s\n", peft::trainable_parameters_summary(model).c_str());

  // ---- 4. train
  auto opt = make_optimizer<float>(model.trainable_parameters(), oo);
  std::printf("optimizer: %s, lr %.1e, %zu epochs of batch %zu\n", oo.name.c_str(), oo.lr, epochs, batch);
  train_config tc;
  tc.epochs = epochs;
  tc.batch = batch;
  tc.max_steps = max_steps;
  tc.seed = mo.seed + 2;
  stopwatch adapt_clock;
  const train_result res = train_classifier<float>(model, *opt, data.adapt_train, tc, &log,
                                                   [&] { return accuracy(model, data.adapt_test); });
  const double adapt_seconds = adapt_clock.seconds();
  const double after = res.epoch_accuracy.empty() ? accuracy(model, data.adapt_test) : res.epoch_accuracy.back();
  const std::size_t opt_bytes = opt->state_bytes();
  const auto counts = peft::count_parameters(model);

  // ---- 5. merge (where the method allows it) and report
  std::string merged = "n/a (input-dependent update)";
  bool merge_ok = true;
  auto layers = peft::adapted_layers(model);
  if (!layers.empty() && layers.front().second->get_adapter().mergeable()) {
    peft::merge_adapters(model);  // W <- W + dW: the model is plain Linear layers again
    const double acc_merged = accuracy(model, data.adapt_test);
    merge_ok = std::abs(acc_merged - after) <= 2.0 / double(data.adapt_test.n);
    merged = fmt("%.2f%%", 100 * acc_merged) + (merge_ok ? " (same as unmerged)" : " (DIFFERS)");
  } else if (layers.empty()) {
    merged = "n/a (no adapter)";
  }

  table t({"", ""});
  t.add_row({"test accuracy on classes 5-9, before", fmt("%.2f%%", 100 * before)});
  t.add_row({"test accuracy on classes 5-9, after", fmt("%.2f%%", 100 * after)});
  t.add_row({"after merging the adapter", merged});
  t.add_row({"trainable parameters", group_digits(counts.trainable) + fmt(" (%.2f%% of ", counts.percent()) +
                                         group_digits(counts.total) + ")"});
  t.add_row({"optimizer state", format_bytes(double(opt_bytes))});
  t.add_row({"adaptation time", fmt("%.1f s (%zu steps)", adapt_seconds, res.steps)});
  t.add_row({"total wall time", fmt("%.1f s", total_clock.seconds())});
  t.add_row({"peak memory (max RSS)", format_bytes(double(peak_rss_bytes()))});
  t.add_row({"training loss, first -> last steps", fmt("%.4f -> %.4f", res.first_loss, res.last_loss)});
  std::printf("\n");
  t.print();

  log.flush();
  std::printf("\nlog: %s\n", log.path().string().c_str());
  if (!no_plot && !smoke) {
    const fs::path png = fs::path(log.path()).replace_extension(".png");
    if (plot_run(log.path(), png, "finetune_fashion: " + mo.method + " + " + oo.name, "test accuracy",
                 {"pretrain", "adapt"}))
      std::printf("plot: %s\n", png.string().c_str());
  }

  if (smoke) {
    const bool down = res.last_loss < res.first_loss;
    std::printf("smoke: loss %.4f -> %.4f: %s\n", res.first_loss, res.last_loss,
                down ? "went down" : "DID NOT GO DOWN");
    if (!down || !merge_ok) return 1;
  }
  return merge_ok ? 0 : 1;
}
