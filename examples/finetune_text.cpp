// finetune_text: LoRA on a small transformer language model.
//
//   1. A byte-level Llama-style decoder (peft::nn::llama: RMSNorm, rotary attention, SwiGLU MLP,
//      Hugging Face parameter names) is pretrained on the King James Bible (Debian: bible-kjv),
//      or loaded from a checkpoint (see "Where the base model comes from" below).
//   2. It is adapted to Ambrose Bierce's The Devil's Dictionary (Debian: dict-devil) with LoRA on
//      every attention projection (q, k, v, o) and every MLP projection (gate, up, down):
//      inject_lora wraps those Linear layers by name, exactly as PEFT's target_modules.
//   3. We report bits per byte (bpb: the model's average code length for the held-out last 10%
//      of the dictionary; lower is better) before and after, and print a sample of generated
//      text before and after. The Bible's held-out bpb shows how much the adapter moved the
//      model away from its original style; disabling the adapter restores it exactly.
//
// Where the base model comes from, in order: --base FILE; the checkpoint committed in
// examples/data/ (written by this program with --pretrain-only, see below); the cache
// (~/.cache/peft); otherwise it is pretrained now (a few minutes) and cached.
//
// Run:   finetune_text                          (adapt the committed/cached base model)
//        finetune_text --rank 16 --adapt-steps 600
//        finetune_text --pretrain-only --pretrain-steps 3000 --out examples/data/kjv_byte_llama.safetensors
//        finetune_text --help
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numbers>
#include <string>
#include <vector>

#include "peft/adapters/inject.hpp"
#include "peft/core/threads.hpp"
#include "peft/io/safetensors.hpp"
#include "peft/io/state_dict.hpp"
#include "peft/nn/loss.hpp"
#include "peft/nn/transformer.hpp"
#include "peft/optim/adam.hpp"
#include "peft/optim/clip.hpp"
#include "peft/optim/schedule.hpp"

#include "common/datasets.hpp"
#include "common/progress.hpp"
#include "common/run_log.hpp"
#include "common/sysinfo.hpp"
#include "common/table.hpp"

namespace fs = std::filesystem;
using namespace examples;
using model_t = peft::nn::llama<float>;

namespace {

// The committed base model, next to this source file.
const fs::path committed_base = fs::path(__FILE__).parent_path() / "data" / "kjv_byte_llama.safetensors";

// ---------------------------------------------------------------- bytes -> batches

// Random windows of seq + 1 bytes: inputs are the first seq, targets the last seq (next byte).
struct byte_batches {
  const std::string* text;
  std::size_t seq;
  peft::rng g;

  void next(std::size_t batch, std::vector<std::int64_t>& ids, std::vector<std::int64_t>& targets) {
    ids.resize(batch * seq);
    targets.resize(batch * seq);
    for (std::size_t b = 0; b < batch; ++b) {
      const std::size_t start = g.uniform_int(text->size() - seq - 1);
      for (std::size_t t = 0; t < seq; ++t) {
        ids[b * seq + t] = static_cast<unsigned char>((*text)[start + t]);
        targets[b * seq + t] = static_cast<unsigned char>((*text)[start + t + 1]);
      }
    }
  }
};

// Bits per byte of `text` (at most max_bytes of it): consecutive windows of seq bytes, each
// predicting its next bytes from the window's start. Mean cross-entropy (nats) / ln 2.
double bits_per_byte(model_t& model, const std::string& text, std::size_t seq, std::size_t max_bytes) {
  peft::no_grad_guard ng;
  model.eval();
  const std::size_t usable = std::min(text.size() - 1, max_bytes);
  const std::size_t windows = usable / seq, batch = 16;
  double nats = 0;
  std::size_t count = 0;
  std::vector<std::int64_t> ids, targets;
  for (std::size_t w = 0; w < windows; w += batch) {
    const std::size_t nb = std::min(batch, windows - w);
    ids.resize(nb * seq);
    targets.resize(nb * seq);
    for (std::size_t b = 0; b < nb; ++b)
      for (std::size_t t = 0; t < seq; ++t) {
        const std::size_t i = (w + b) * seq + t;
        ids[b * seq + t] = static_cast<unsigned char>(text[i]);
        targets[b * seq + t] = static_cast<unsigned char>(text[i + 1]);
      }
    const double ce = peft::nn::cross_entropy(model(ids, nb, seq), targets).item();
    nats += ce * double(nb * seq);
    count += nb * seq;
  }
  model.train();
  return count ? nats / double(count) / std::numbers::ln2 : 0.0;
}

// Continues `prompt` byte by byte: temperature 0 = greedy (always the most likely byte), else
// sampling from softmax(logits / temperature). The context is the last max_seq bytes.
std::string generate(model_t& model, const std::string& prompt, std::size_t n, double temperature,
                     std::uint64_t seed) {
  peft::no_grad_guard ng;
  model.eval();
  peft::rng g(seed);
  std::vector<std::int64_t> ctx;
  for (unsigned char c : prompt) ctx.push_back(c);
  std::string out;
  const std::size_t max_seq = model.config().max_seq;
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t len = std::min(ctx.size(), max_seq);
    std::vector<std::int64_t> window(ctx.end() - std::ptrdiff_t(len), ctx.end());
    const auto logits = model(window, 1, len).value();
    const auto last = peft::as_matrix(logits, len, 256).row(Eigen::Index(len - 1));
    Eigen::Index next = 0;
    if (temperature <= 0) {
      last.maxCoeff(&next);
    } else {
      Eigen::ArrayXd p = ((last.cast<double>().array() - double(last.maxCoeff())) / temperature).exp();
      double u = g.uniform() * p.sum();
      for (next = 0; next < p.size() - 1 && (u -= p[next]) > 0; ++next) {
      }
    }
    ctx.push_back(next);
    out += char(next);
  }
  model.train();
  return out;
}

// Printable form of a sample: newlines shown as such, other control bytes as '?'.
std::string printable(const std::string& s) {
  std::string o;
  for (unsigned char c : s) o += (c == '\n' || (c >= 32 && c < 127)) ? char(c) : '?';
  return o;
}

// ---------------------------------------------------------------- training loop

struct loop_config {
  std::string phase;
  std::size_t steps = 0, batch = 16, seq = 64;
  double lr = 3e-3;
  double clip = 1.0;
  std::uint64_t seed = 0;
};
struct loop_result {
  double first_loss = 0, last_loss = 0, seconds = 0;
};

loop_result train_lm(model_t& model, const std::string& text, const loop_config& c, run_log& log,
                     const std::function<double()>& evaluate) {
  peft::optim::adamw_options o;
  o.lr = c.lr;
  o.weight_decay = c.phase == "pretrain" ? 0.01 : 0.0;
  auto params = model.trainable_parameters();
  peft::optim::adamw<float> opt(params, o);
  peft::optim::lr_scheduler<float> sched(
      opt, peft::optim::warmup_cosine_schedule(std::max<std::size_t>(1, c.steps / 20), c.steps, 0.1));
  byte_batches data{&text, c.seq, peft::rng(c.seed)};
  std::vector<std::int64_t> ids, targets;
  std::vector<double> losses;
  progress bar(c.phase, c.steps, c.batch * c.seq, "tok");
  model.train();
  const std::size_t eval_every = std::max<std::size_t>(1, c.steps / 5);
  for (std::size_t step = 1; step <= c.steps; ++step) {
    data.next(c.batch, ids, targets);
    auto loss = peft::nn::cross_entropy(model(ids, c.batch, c.seq), targets);
    loss.backward();
    peft::optim::clip_grad_norm(params, c.clip);
    const double lr = opt.lr(0);
    opt.step();
    opt.zero_grad();
    sched.step();
    const double l = loss.item();
    if (!std::isfinite(l)) throw std::runtime_error(c.phase + ": loss is not finite at step " + std::to_string(step));
    losses.push_back(l);
    log.step(c.phase, step, 0, l, lr);
    bar.update(step, l, lr);
    if (evaluate && (step % eval_every == 0 || step == c.steps)) {
      bar.finish();
      const double bpb = evaluate();
      log.eval(c.phase, step, 0, bpb);
      std::printf("%s step %zu: held-out %.3f bits/byte\n", c.phase.c_str(), step, bpb);
    }
  }
  bar.finish();
  loop_result r;
  r.seconds = bar.seconds();
  const std::size_t k = std::max<std::size_t>(1, std::min<std::size_t>(20, losses.size() / 4));
  for (std::size_t i = 0; i < k; ++i) {
    r.first_loss += losses[i] / double(k);
    r.last_loss += losses[losses.size() - 1 - i] / double(k);
  }
  return r;
}

// ---------------------------------------------------------------- checkpoints

// The architecture travels in the safetensors metadata, so a checkpoint is self-describing.
std::map<std::string, std::string> config_metadata(const peft::nn::llama_config& c) {
  return {{"format", "pt"},
          {"peft_example", "finetune_text byte-level llama"},
          {"vocab", std::to_string(c.vocab)},
          {"dim", std::to_string(c.dim)},
          {"n_layers", std::to_string(c.n_layers)},
          {"n_heads", std::to_string(c.n_heads)},
          {"hidden_dim", std::to_string(c.hidden_dim)},
          {"max_seq", std::to_string(c.max_seq)}};
}
peft::nn::llama_config config_from_file(const std::string& path) {
  const auto f = peft::io::safetensors_file::load(path);
  const auto& m = f.metadata();
  auto get = [&](const char* k) -> std::size_t {
    auto it = m.find(k);
    if (it == m.end()) throw std::runtime_error(path + ": no '" + k + "' in the metadata (not written by finetune_text?)");
    return std::stoul(it->second);
  };
  peft::nn::llama_config c;
  c.vocab = get("vocab");
  c.dim = get("dim");
  c.n_layers = get("n_layers");
  c.n_heads = get("n_heads");
  c.hidden_dim = get("hidden_dim");
  c.max_seq = get("max_seq");
  return c;
}
std::string cache_name(const peft::nn::llama_config& c, std::size_t steps, std::size_t batch,
                       std::uint64_t seed) {
  return "kjv_byte_llama_v1_d" + std::to_string(c.dim) + "_l" + std::to_string(c.n_layers) + "_h" +
         std::to_string(c.n_heads) + "_f" + std::to_string(c.hidden_dim) + "_s" +
         std::to_string(c.max_seq) + "_steps" + std::to_string(steps) + "x" + std::to_string(batch) + "_seed" +
         std::to_string(seed) + ".safetensors";
}

}  // namespace

int main(int argc, char** argv) {
  peft::nn::llama_config mc;
  mc.vocab = 256;
  mc.dim = 128;
  mc.n_layers = 3;
  mc.n_heads = 4;
  mc.hidden_dim = 256;
  mc.max_seq = 64;
  std::size_t pretrain_steps = 1500, adapt_steps = 300, batch = 16;
  double pretrain_lr = 3e-3, lr = 3e-3;
  std::size_t rank = 8;
  double alpha = 16;
  std::uint64_t seed = 0;
  std::string base, out, cache_dir = default_cache_dir().string(), out_dir = "text_runs";
  std::string prompt = "RELIGION, n.";
  std::size_t sample_bytes = 240, eval_bytes = 16384;
  double temperature = 0.7;
  int threads = 1;
  bool pretrain_only = false, no_cache = false, no_plot = false, smoke = false;

  CLI::App app{"finetune_text: LoRA-adapt a byte-level transformer pretrained on the King James "
               "Bible to The Devil's Dictionary; reports bits per byte and samples before/after."};
  app.add_option("--base", base, "load the base model from this safetensors file (written by "
                 "--pretrain-only) instead of the committed checkpoint / cache");
  app.add_flag("--pretrain-only", pretrain_only, "pretrain on the Bible, write --out, and stop");
  app.add_option("--out", out, "with --pretrain-only: the checkpoint to write");
  app.add_option("--pretrain-steps", pretrain_steps, "pretraining steps (batch x seq bytes each)")->capture_default_str();
  app.add_option("--pretrain-lr", pretrain_lr, "pretraining peak learning rate")->capture_default_str();
  app.add_option("--dim", mc.dim, "model width (new base models only)")->capture_default_str();
  app.add_option("--layers", mc.n_layers, "decoder layers (new base models only)")->capture_default_str();
  app.add_option("--heads", mc.n_heads, "attention heads (new base models only)")->capture_default_str();
  app.add_option("--ffn", mc.hidden_dim, "SwiGLU hidden width (new base models only)")->capture_default_str();
  app.add_option("--seq", mc.max_seq, "context length in bytes (new base models only)")->capture_default_str();
  app.add_option("--adapt-steps", adapt_steps, "LoRA training steps on the dictionary")->capture_default_str();
  app.add_option("--batch", batch, "sequences per step")->capture_default_str();
  app.add_option("--lr", lr, "LoRA peak learning rate")->capture_default_str();
  app.add_option("--rank", rank, "LoRA rank r")->capture_default_str();
  app.add_option("--alpha", alpha, "LoRA alpha (update scaled by alpha/r)")->capture_default_str();
  app.add_option("--prompt", prompt, "text the samples continue")->capture_default_str();
  app.add_option("--sample-bytes", sample_bytes, "bytes generated per sample")->capture_default_str();
  app.add_option("--temperature", temperature, "sampling temperature (the greedy sample uses 0)")->capture_default_str();
  app.add_option("--eval-bytes", eval_bytes, "held-out bytes scored for bits per byte")->capture_default_str();
  app.add_option("--seed", seed, "seed for initialisation, batches and sampling")->capture_default_str();
  app.add_option("--cache-dir", cache_dir, "where a freshly pretrained base model is cached")->capture_default_str();
  app.add_flag("--no-cache", no_cache, "ignore the committed checkpoint and the cache; pretrain now");
  app.add_option("--out-dir", out_dir, "where the CSV log and PNG plot go")->capture_default_str();
  app.add_flag("--no-plot", no_plot, "do not call gnuplot");
  app.add_option("--threads", threads, "GEMM threads (extra threads rarely help at this size)")->capture_default_str();
  app.add_flag("--smoke", smoke, "CI mode: a tiny model, a few steps; fails unless the loss went down");
  CLI11_PARSE(app, argc, argv);
  if (pretrain_only && out.empty()) {
    std::fprintf(stderr, "finetune_text: --pretrain-only needs --out FILE\n");
    return 2;
  }
  if (smoke) {
    mc.dim = 32;
    mc.n_layers = 1;
    mc.n_heads = 2;
    mc.hidden_dim = 64;
    mc.max_seq = 32;
    pretrain_steps = 30;
    adapt_steps = 30;
    batch = 8;
    sample_bytes = 60;
    eval_bytes = 4000;
    no_cache = true;
  }
  peft::set_num_threads(threads > 0 ? threads : 1);
  stopwatch total_clock;

  // ---- data
  std::string bible, devil;
  try {
    bible = load_bible_kjv();
    if (!pretrain_only) devil = load_devils_dictionary();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "finetune_text: %s\n", e.what());
    return 2;
  }
  // Held-out splits: the last 10% of each corpus is never trained on.
  const std::string bible_train = bible.substr(0, bible.size() * 9 / 10), bible_test = bible.substr(bible.size() * 9 / 10);
  const std::string devil_train = devil.substr(0, devil.size() * 9 / 10), devil_test = devil.substr(devil.size() * 9 / 10);
  std::printf("corpora: King James Bible %zu bytes, The Devil's Dictionary %zu bytes (last 10%% of each held out)\n",
              bible.size(), devil.size());
  const std::string tag = smoke ? "_smoke" : pretrain_only ? "_pretrain" : "";
  run_log log(fs::path(out_dir) / ("finetune_text" + tag + ".csv"), "held-out bits per byte");

  // ---- the base model
  std::string from = base;
  if (from.empty() && !no_cache && !pretrain_only) {
    if (fs::exists(committed_base)) from = committed_base.string();
    else if (fs::exists(fs::path(cache_dir) / cache_name(mc, pretrain_steps, batch, seed)))
      from = (fs::path(cache_dir) / cache_name(mc, pretrain_steps, batch, seed)).string();
  }
  if (!from.empty()) mc = config_from_file(from);
  peft::rng g(seed);
  model_t model(mc, g);
  if (!from.empty()) {
    peft::io::load_state_dict(from, model);
    std::printf("base model: loaded %s\n", from.c_str());
  }
  std::printf("model: byte-level llama, dim %zu, %zu layers, %zu heads, ffn %zu, context %zu bytes, %s parameters\n",
              mc.dim, mc.n_layers, mc.n_heads, mc.hidden_dim, mc.max_seq,
              group_digits(model.num_parameters()).c_str());
  if (from.empty()) {
    std::printf("base model: pretraining on the Bible, %zu steps of %zu x %zu bytes\n", pretrain_steps, batch, mc.max_seq);
    loop_config pc{"pretrain", pretrain_steps, batch, mc.max_seq, pretrain_lr, 1.0, seed + 1};
    const auto r = train_lm(model, bible_train, pc, log, smoke ? std::function<double()>{} : [&] {
      return bits_per_byte(model, bible_test, mc.max_seq, eval_bytes);
    });
    std::printf("pretraining: %.0f s, loss %.3f -> %.3f\n", r.seconds, r.first_loss, r.last_loss);
    if (smoke && !(r.last_loss < r.first_loss)) {
      std::printf("smoke: pretraining loss did not go down\n");
      return 1;
    }
    const std::string file = pretrain_only ? out : (fs::path(cache_dir) / cache_name(mc, pretrain_steps, batch, seed)).string();
    if (pretrain_only || !no_cache) {
      if (fs::path(file).has_parent_path()) fs::create_directories(fs::path(file).parent_path());
      // float16 halves the file; the small loss of precision does not matter for a base model.
      peft::io::save_state_dict(file, model, pretrain_only ? peft::io::dtype::F16 : peft::io::dtype::F32,
                                config_metadata(mc));
      std::printf("base model: saved to %s\n", file.c_str());
    }
  }
  if (pretrain_only) {
    std::printf("held-out Bible: %.3f bits/byte\n", bits_per_byte(model, bible_test, mc.max_seq, eval_bytes));
    return 0;
  }

  const std::uint64_t sample_seed = seed + 99;
  const double devil_before = bits_per_byte(model, devil_test, mc.max_seq, eval_bytes);
  const double bible_before = bits_per_byte(model, bible_test, mc.max_seq, eval_bytes);
  const std::string greedy_before = generate(model, prompt, sample_bytes, 0.0, sample_seed);
  const std::string sample_before = generate(model, prompt, sample_bytes, temperature, sample_seed);

  // ---- LoRA on every attention and MLP projection
  peft::lora_config lc;
  lc.r = rank;
  lc.alpha = alpha;
  lc.seed = seed;
  peft::inject_options io;
  io.targets = peft::target_modules::list({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"});
  const auto rep = peft::inject_lora(model, lc, io);
  std::printf("\nLoRA r=%zu alpha=%g on %zu layers (%s, ...)\n%s\n", rank, alpha, rep.wrapped.size(),
              rep.wrapped.front().c_str(), peft::trainable_parameters_summary(model).c_str());

  loop_config ac{"adapt", adapt_steps, batch, mc.max_seq, lr, 1.0, seed + 2};
  const auto r = train_lm(model, devil_train, ac, log, smoke ? std::function<double()>{} : [&] {
    return bits_per_byte(model, devil_test, mc.max_seq, eval_bytes);
  });
  const double devil_after = bits_per_byte(model, devil_test, mc.max_seq, eval_bytes);
  const double bible_after = bits_per_byte(model, bible_test, mc.max_seq, eval_bytes);
  const std::string greedy_after = generate(model, prompt, sample_bytes, 0.0, sample_seed);
  const std::string sample_after = generate(model, prompt, sample_bytes, temperature, sample_seed);
  peft::set_adapters_enabled(model, false);  // the frozen base is untouched underneath
  const double bible_disabled = bits_per_byte(model, bible_test, mc.max_seq, eval_bytes);
  peft::set_adapters_enabled(model, true);

  std::printf("\n");
  table t({"held-out bits per byte", "before LoRA", "after LoRA"});
  t.add_row({"The Devil's Dictionary (target)", fmt("%.3f", devil_before), fmt("%.3f", devil_after)});
  t.add_row({"King James Bible (source)", fmt("%.3f", bible_before), fmt("%.3f", bible_after)});
  t.print();
  std::printf("(adapter disabled again: Bible %.3f bits/byte)\n", bible_disabled);
  std::printf("adaptation: %zu steps in %.1f s; total %.1f s; peak memory %s\n", adapt_steps, r.seconds,
              total_clock.seconds(), format_bytes(double(peak_rss_bytes())).c_str());

  auto show = [&](const char* title, const std::string& s) {
    std::printf("\n--- %s ---\n%s%s\n", title, prompt.c_str(), printable(s).c_str());
  };
  show("before LoRA, greedy", greedy_before);
  show(("before LoRA, temperature " + fmt("%.2g", temperature)).c_str(), sample_before);
  show("after LoRA, greedy", greedy_after);
  show(("after LoRA, temperature " + fmt("%.2g", temperature)).c_str(), sample_after);

  log.flush();
  std::printf("\nlog: %s\n", log.path().string().c_str());
  if (!no_plot && !smoke) {
    const fs::path png = fs::path(log.path()).replace_extension(".png");
    if (plot_run(log.path(), png, "finetune_text: LoRA r=" + std::to_string(rank), "held-out bits per byte",
                 {"pretrain", "adapt"}))
      std::printf("plot: %s\n", png.string().c_str());
  }
  if (smoke) {
    const bool down = r.last_loss < r.first_loss && devil_after < devil_before;
    std::printf("smoke: adaptation loss %.4f -> %.4f, held-out %.3f -> %.3f bits/byte: %s\n", r.first_loss,
                r.last_loss, devil_before, devil_after, down ? "went down" : "DID NOT GO DOWN");
    return down ? 0 : 1;
  }
  return 0;
}
