// peft combine DIR... --out DIR [--weights w,...] [--method svd] [--density d] [--majority-sign total]
//              [--svd-rank k] [--svd-clamp q] [--seed s] [--svd-scale-once]
// Combines PEFT LoRA adapter directories into one, as Hugging Face PEFT's add_weighted_adapter
// does (linear, cat, svd, ties, dare and magnitude_prune, and their _svd forms); see
// include/peft/merge/combine.hpp for each method's equation. The output directory loads like any
// PEFT LoRA adapter (scale 1: r = lora_alpha) and its files are written atomically.
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "commands.hpp"
#include "peft/io/adapter_config.hpp"
#include "peft/merge/combine.hpp"

namespace {
struct combine_args {
  std::vector<std::string> adapters;
  std::vector<double> weights;
  std::string out, method = "svd", sign = "total";
  double density = 1.0;
  std::size_t svd_rank = 0;
  double svd_clamp = -1;
  std::uint64_t seed = 0;
  bool scale_once = false;
};

void run_combine(const combine_args& a) {
  peft::merge::combine_options o;
  o.method = peft::merge::combine_method_from_name(a.method);
  o.sign = peft::merge::majority_sign_from_name(a.sign);
  o.density = a.density;
  o.svd_rank = a.svd_rank;
  if (a.svd_clamp >= 0) o.svd_clamp = a.svd_clamp;
  o.seed = a.seed;
  o.svd_double_scaling = !a.scale_once;
  const std::vector<double> w = a.weights.empty() ? std::vector<double>(a.adapters.size(), 1.0) : a.weights;
  if (w.size() != a.adapters.size()) {
    std::string dirs;
    for (auto& d : a.adapters) dirs += (dirs.empty() ? "'" : ", '") + d + "'";
    peft_cli::fail("combine", std::to_string(w.size()) + " weights (--weights) for " +
                                  std::to_string(a.adapters.size()) + " adapter directories (" + dirs + ")");
  }
  peft::merge::combine_peft_dirs(a.adapters, w, o, a.out);
  const auto c = peft::io::adapter_config::load(a.out + "/" + peft::io::adapter_config_file);
  std::cout << "combined " << a.adapters.size() << " adapter(s) with "
            << (a.adapters.size() == 1 ? "linear (one adapter)" : a.method) << " into '" << a.out << "' (r = " << c.r
            << (c.rank_pattern.empty() ? "" : ", per-layer ranks in rank_pattern") << ")\n";
}
}  // namespace

void register_combine(CLI::App& app) {
  auto* sub = app.add_subcommand(
      "combine", "Combine PEFT LoRA adapter directories into one (PEFT's add_weighted_adapter).");
  auto a = std::make_shared<combine_args>();
  sub->add_option("adapters", a->adapters,
                  "PEFT LoRA adapter directories (adapter_config.json + adapter_model.safetensors) of the same "
                  "base model. Plain LoRA / rsLoRA only (no DoRA, VeRA or modules_to_save).")
      ->required()
      ->check(CLI::ExistingDirectory);
  sub->add_option("--out,-o", a->out,
                  "Output adapter directory (created if needed; its two files are written atomically).")
      ->required();
  sub->add_option("--weights,-w", a->weights,
                  "One weight per adapter, comma-separated (default: 1 for each). linear and the pruning "
                  "methods without _svd need weight·scale >= 0 (PEFT splits sqrt(weight·scale) over A and B).")
      ->delimiter(',');
  sub->add_option("--method,-m", a->method,
                  "Combination: svd (default, PEFT's), linear, cat, ties, ties_svd, dare_linear, dare_ties, "
                  "dare_linear_svd, dare_ties_svd, magnitude_prune, magnitude_prune_svd. One adapter alone is "
                  "always combined with linear, as in PEFT.")
      ->check(CLI::IsMember({"linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties",
                             "dare_linear_svd", "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd"}));
  sub->add_option("--density,-d", a->density,
                  "Fraction of entries kept by ties / dare / magnitude_prune (and their _svd forms), in (0, 1]; "
                  "1 keeps everything. Ignored by linear, cat and svd.");
  sub->add_option("--majority-sign", a->sign,
                  "How ties / dare_ties elect each entry's sign: total (sign of the sum, default) or frequency "
                  "(sign of the sum of signs).")
      ->check(CLI::IsMember({"total", "frequency"}));
  sub->add_option("--svd-rank", a->svd_rank,
                  "Rank of the result of the _svd methods (default 0: the largest input rank).");
  sub->add_option("--svd-clamp", a->svd_clamp,
                  "_svd methods: clamp both factors to [-h, h], h = this quantile (0..1) of their entries "
                  "(PEFT's svd_clamp; default: no clamping).");
  sub->add_option("--seed", a->seed, "Seed of dare's random masks (default 0).");
  sub->add_flag("--svd-scale-once", a->scale_once,
                "_svd methods: weight each s·B·A by its weight alone. By default, as PEFT, by weight·s, so the "
                "adapter's scale s = alpha/r enters twice.");
  sub->callback([a] { peft_cli::run("combine", [&] { run_combine(*a); }); });
}
