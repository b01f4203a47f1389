// peft merge --base base.safetensors --adapter DIR --out merged.safetensors
// Folds a PEFT adapter (LoRA, rsLoRA, DoRA, VeRA; rank / alpha patterns; modules_to_save) into
// the base weights: for each adapted module, <module>.weight becomes W + ΔW (LoRA: W + s·B·A with
// s = alpha/r or alpha/sqrt(r); DoRA: m ⊙ (W + s·B·A) / ‖W + s·B·A‖ per output row; VeRA:
// W + diag(b)·B·diag(d)·A), computed in double and stored in the base tensor's dtype;
// modules_to_save tensors replace theirs; every other tensor and the metadata are copied
// unchanged. The output is written atomically.
#include <string>

#include "cli_model.hpp"
#include "commands.hpp"

namespace {
struct merge_args {
  std::string base, adapter, out;
  bool allow_nonfinite = false;
};

void run_merge(const merge_args& a) {
  const auto base = peft::io::safetensors_file::load(a.base);
  const auto dir = peft_cli::read_adapter_dir(a.adapter);
  const auto tree = peft_cli::build_adapted_model(dir, &base, /*with_bias=*/false);

  // Replacement values by base key.
  std::map<std::string, const peft::tensor<double>*> merged;
  for (auto& [path, al] : peft::adapted_layers<double>(*tree)) {
    try {
      al->merge(!a.allow_nonfinite);
    } catch (const peft::error& e) {
      throw peft::io_error("cannot merge module '" + path + "' of '" + a.adapter + "': " + e.what());
    }
    merged.emplace(path + ".weight", &al->base_layer->weight.value());
  }
  for (auto& [path, names] : dir.saved)
    for (auto& n : names) {
      auto m = tree->find_module(path);
      for (auto& [pn, v] : m->named_parameters(false))
        if (pn == n) merged.emplace(path + "." + n, &v.value());
    }

  peft::io::safetensors_file out;
  out.metadata() = base.metadata();
  for (const auto& [name, e] : base.entries()) {
    auto it = merged.find(name);
    if (it == merged.end())
      out.add(name, e.type, e.shape, e.data);
    else
      out.add(name, *it->second, e.type);
  }
  out.save(a.out);
  std::cout << "merged " << peft::adapted_layers<double>(*tree).size() << " module(s) of '" << a.adapter << "' ("
            << dir.config.peft_type << (dir.config.use_dora ? ", DoRA" : "")
            << (dir.config.use_rslora ? ", rsLoRA" : "") << ") into '" << a.out << "'\n";
}
}  // namespace

void register_merge(CLI::App& app) {
  auto* sub = app.add_subcommand("merge", "Fold a PEFT adapter into base weights (safetensors -> safetensors).");
  auto a = std::make_shared<merge_args>();
  sub->add_option("--base", a->base,
                  "Base model weights (.safetensors). The weight of an adapted module <path> is the tensor "
                  "'<path>.weight' [out, in]; adapter keys are 'base_model.model.<path>...'.")
      ->required();
  sub->add_option("--adapter", a->adapter,
                  "PEFT adapter directory (adapter_config.json + adapter_model.safetensors): LoRA, rsLoRA, DoRA "
                  "or VeRA, with rank_pattern / alpha_pattern and modules_to_save.")
      ->required();
  sub->add_option("--out", a->out,
                  "Output .safetensors: every base tensor, merged ones replaced (same dtype as in the base), "
                  "written atomically.")
      ->required();
  sub->add_flag("--allow-nonfinite", a->allow_nonfinite,
                "Write merged weights even if they contain inf or NaN (by default such a module is an error).");
  sub->callback([a] { peft_cli::run("merge", [&] { run_merge(*a); }); });
}
