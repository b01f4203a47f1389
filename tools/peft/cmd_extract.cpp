// peft extract --base base.safetensors --finetuned ft.safetensors --out DIR (--rank r | --energy f)
//              [--targets a,b] [--alpha a] [--randomized] [--seed s] [--niter n]
// Extracts a PEFT LoRA adapter from a fine-tuned model: for every selected 2-D "<module>.weight",
// the truncated SVD of W_ft − W_base at a fixed rank or at the smallest rank that captures the
// given fraction of its energy (Σ S_i²), split as B = U·sqrt(S/s), A = sqrt(S/s)·Vᵀ (s = alpha/r).
// Prints each layer's rank and captured energy. See include/peft/merge/extract.hpp.
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "commands.hpp"
#include "peft/merge/extract.hpp"

namespace {
struct extract_args {
  std::string base, finetuned, out;
  std::size_t rank = 0;
  double energy = 0, alpha = 0;
  std::vector<std::string> targets;
  bool randomized = false;
  std::uint64_t seed = 0;
  std::size_t niter = 2;
};

void run_extract(const extract_args& a) {
  peft::merge::extract_options o;
  o.rank = a.rank;
  o.energy = a.energy;
  o.targets = a.targets;
  o.alpha = a.alpha;
  o.randomized = a.randomized;
  o.seed = a.seed;
  o.niter = a.niter;
  const auto rep = peft::merge::extract_peft_dir(a.base, a.finetuned, o, a.out);
  std::size_t width = 5;
  for (auto& r : rep) width = std::max(width, r.name.size());
  std::cout << std::string("layer") + std::string(width - 5, ' ') << "  rank  energy\n";
  for (auto& r : rep) {
    char e[32];
    std::snprintf(e, sizeof e, "%.6f", r.captured_energy);
    const std::string rank = std::to_string(r.rank);
    std::cout << r.name << std::string(width - r.name.size(), ' ') << "  " << std::string(rank.size() < 4 ? 4 - rank.size() : 0, ' ')
              << rank << "  " << e << '\n';
  }
  std::cout << "extracted " << rep.size() << " layer(s) into '" << a.out << "'\n";
}
}  // namespace

void register_extract(CLI::App& app) {
  auto* sub = app.add_subcommand(
      "extract", "Extract a PEFT LoRA adapter from base and fine-tuned weights (truncated SVD of the difference).");
  auto a = std::make_shared<extract_args>();
  sub->add_option("--base", a->base, "Base model weights (.safetensors).")->required()->check(CLI::ExistingFile);
  sub->add_option("--finetuned", a->finetuned,
                  "Fine-tuned weights (.safetensors) with the same tensor names and shapes.")
      ->required()
      ->check(CLI::ExistingFile);
  sub->add_option("--out,-o", a->out,
                  "Output PEFT adapter directory (created if needed; files written atomically).")
      ->required();
  auto* rank = sub->add_option("--rank,-r", a->rank,
                               "Rank of every layer (capped at min(out, in), where the factorization is exact).");
  auto* energy = sub->add_option("--energy,-e", a->energy,
                                 "Instead of --rank: per layer, the smallest rank whose singular values capture "
                                 "this fraction (0, 1] of the difference's squared Frobenius norm.");
  rank->excludes(energy);
  sub->add_option("--targets,-t", a->targets,
                  "Modules to extract, comma-separated: a path or its last components (q_proj matches "
                  "model.layers.0.self_attn.q_proj). Default: every 2-D '<module>.weight' that differs, except "
                  "embedding tables.")
      ->delimiter(',');
  sub->add_option("--alpha", a->alpha, "lora_alpha of every layer (default 0: alpha = rank, scale 1).");
  sub->add_flag("--randomized", a->randomized,
                "Randomized SVD (with --rank only): faster on large weights, seeded by --seed.")
      ->excludes(energy);
  sub->add_option("--seed", a->seed, "Seed of the randomized SVD (default 0).");
  sub->add_option("--niter", a->niter, "Power iterations of the randomized SVD (default 2).");
  sub->callback([a, rank, energy] {
    if (rank->count() == 0 && energy->count() == 0) throw CLI::RequiredError("--rank or --energy");
    peft_cli::run("extract", [&] { run_extract(*a); });
  });
}
